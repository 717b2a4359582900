"""A handshake gate for the TLS listener: caps what unauthenticated clients
can hold before they prove who they are.

`asyncio.start_server(..., ssl=ctx)` starts a TLS handshake for every TCP
connection it accepts and nothing caps how many are in progress: a client
that connects and never sends a ClientHello holds a file descriptor (and a
task) until the handshake timeout, so a few thousand of them exhaust the
process's descriptors and every accept then fails ("Too many open files").

`HandshakeGate` listens with plain TCP instead and, before any byte is read,
decides in the protocol's `connection_made`:

- at most `max_handshakes` connections in their handshake at once, and at most
  `max_handshakes_per_ip` from one source address, so one host cannot take
  all the slots;
- at most `max_established` connections past their handshake (a backstop:
  the transport itself keeps one inbound connection per peer);

a connection over a cap is closed at once and counted, without a task or a
stream being created. The others are upgraded with `loop.start_tls` (the
handshake timeout applies) and handed to the handler as `(reader, writer)`,
with the verified certificate at `writer.get_extra_info("peercert")` as
before. Reading stays paused until TLS owns the socket, so no ClientHello
byte can be stranded in a plaintext buffer (CPython gh-142352).

`raise_nofile_limit()` lifts RLIMIT_NOFILE's soft limit to the hard limit at
process start, so the caps, not the descriptor limit, are what binds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from .ratelog import limit_logger

log = logging.getLogger(__name__)
# refusals are caused by remote hosts: at most 10 lines a minute per message
LOG_LIMIT = limit_logger(log, burst=10, interval=60.0)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

STREAM_LIMIT = 64 * 1024  # asyncio's default StreamReader buffer limit


class _Unauthenticated(asyncio.Protocol):
    """The protocol of a connection before TLS: reads nothing, lets the gate decide."""

    def __init__(self, gate: HandshakeGate) -> None:
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # before the loop registers the socket for reading
        self._gate._admit(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    def eof_received(self) -> bool:
        return False


class HandshakeGate:
    """Plain-TCP listener that admits TLS handshakes under caps; see the module
    docstring. Counters are in `stats`; `handshaking` and `established` are the
    current numbers. The caps are attributes and may be changed at run time."""

    def __init__(
        self,
        handler: Handler,
        server_ctx: ssl.SSLContext,
        *,
        max_handshakes: int = 64,
        max_handshakes_per_ip: int = 8,
        max_established: int = 64,
        handshake_timeout: float = 5.0,
    ) -> None:
        if min(max_handshakes, max_handshakes_per_ip, max_established) < 1:
            raise ValueError("caps must be positive")
        self.handler = handler
        self.server_ctx = server_ctx
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_ip = max_handshakes_per_ip
        self.max_established = max_established
        self.handshake_timeout = handshake_timeout
        self.stats: Counter[str] = Counter()
        self.established = 0
        self._per_ip: Counter[str] = Counter()  # handshakes in progress by source address
        # connections in their handshake: task -> (raw transport, source address)
        self._pending: dict[asyncio.Task[None], tuple[asyncio.Transport, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every admitted connection's task
        self._server: asyncio.Server | None = None
        self._closing = False

    @property
    def handshaking(self) -> int:
        return len(self._pending)

    def handshaking_from(self, ip: str) -> int:
        return self._per_ip[ip]

    async def start(self, host: str | None, port: int, **kw: Any) -> asyncio.Server:
        """Listen on (host, port); `kw` goes to `loop.create_server` (not `ssl`)."""
        if "ssl" in kw:
            raise ValueError("the gate does TLS itself; pass the context to the constructor")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Unauthenticated(self), host, port, **kw)
        return self._server

    def close(self) -> None:
        """Stop listening and abort every connection still in its handshake.
        Established connections belong to the handler, which closes them."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for raw, _ in list(self._pending.values()):
            raw.abort()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait for the admitted connections' tasks (handlers included) to end."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # --- admission ------------------------------------------------------------------

    def _refuse(self, raw: asyncio.Transport, ip: str, why: str) -> None:
        raw.abort()
        self.stats[f"refused_{why}"] += 1
        log.warning("refused a connection from %s: %s", ip, why.replace("_", " "))

    def _admit(self, raw: asyncio.Transport) -> None:
        self.stats["accepted"] += 1
        peer = raw.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        if self._closing:
            self._refuse(raw, ip, "closing")
        elif len(self._pending) >= self.max_handshakes:
            self._refuse(raw, ip, "handshake_cap")
        elif self._per_ip[ip] >= self.max_handshakes_per_ip:
            self._refuse(raw, ip, "ip_cap")
        elif self.established >= self.max_established:
            self._refuse(raw, ip, "established_cap")
        else:
            task = asyncio.get_running_loop().create_task(self._run(raw, ip))
            self._per_ip[ip] += 1
            self._pending[task] = (raw, ip)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    async def _run(self, raw: asyncio.Transport, ip: str) -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            tls = await loop.start_tls(
                raw,
                protocol,
                self.server_ctx,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (TimeoutError, ConnectionAbortedError) as exc:
            raw.abort()
            # asyncio reports its handshake timeout as ConnectionAbortedError
            timed_out = isinstance(exc, TimeoutError) or "longer than" in str(exc)
            self.stats["handshake_timeouts" if timed_out else "handshake_failures"] += 1
            return
        except Exception as exc:  # ssl.SSLError, resets, EOF: all "not a peer"
            raw.abort()
            self.stats["handshake_failures"] += 1
            log.debug("handshake from %s failed: %s", ip, type(exc).__name__)
            return
        finally:
            self._release(task)
        if tls is None or self._closing or self.established >= self.max_established:
            if tls is not None:
                tls.abort()
            self._refuse(raw, ip, "closing" if self._closing else "established_cap")
            return
        protocol.connection_made(tls)  # start_tls does not call it; it sets the reader's transport
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        self.stats["handshakes"] += 1
        self.established += 1
        try:
            await self.handler(reader, writer)
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("connection handler failed")
        finally:
            self.established -= 1
            tls.abort()  # the connection lives as long as its handler

    def _release(self, task: asyncio.Task[None] | None) -> None:
        """Free a handshake slot (idempotent)."""
        entry = self._pending.pop(task, None) if task is not None else None
        if entry is not None:
            ip = entry[1]
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    def _done(self, task: asyncio.Task[None]) -> None:
        self._release(task)  # a task cancelled before it ran still held a slot
        self._tasks.discard(task)


def raise_nofile_limit() -> tuple[int, int] | None:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (call at process
    start); returns the (soft, hard) limits now in force, or None where there
    is no such limit. A soft limit of 1,024 is the default on many systems."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # an infinite hard limit is refused for NOFILE on Linux and macOS: try finite ones
    wanted = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 65536, 10240]
    for target in wanted:
        if target <= soft and soft != resource.RLIM_INFINITY:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)
