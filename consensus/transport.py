"""asyncio TCP transport for Raft messages: TLS 1.3, mutual certificate
authentication, length-prefixed msgpack frames, bounded queues.

Each node dials every peer once for its *outbound* traffic and accepts the
peers' connections for *inbound* traffic, so every connection carries one
direction only and needs no request/response matching.

Trust rules, all enforced here before a message reaches the core:

- a peer is the node id its verified certificate names (CN `node-<id>`);
  inbound connections from ids not in `peers` are closed at once, and an
  outbound connection whose server presents another id is closed;
- a frame whose decoded `msg.frm` differs from the authenticated id, or
  whose `msg.to` is not this node, is dropped and counted;
- a length prefix above `max_frame` closes the connection before any of the
  body is read; any other bad frame is dropped (`codec.decode_message`).

`send()` never blocks: it appends to the peer's bounded queue (the oldest
message is dropped when full; Raft retransmits). While the peer is connected,
a flush callback scheduled once per loop iteration writes everything queued
in one TLS write, so a Raft hop costs no task wake-up on the sending side;
the peer's sender task only dials (exponential backoff and jitter) and waits
for the socket to drain when the kernel buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import Counter, deque
from collections.abc import Callable, Mapping

from .codec import (
    DEFAULT_MAX_FRAME,
    DecodeError,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    decode_message,
    encode_frame,
)
from .messages import Message
from .tls import PeerIdentityError, peer_node_id

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024  # bytes buffered in the transport before the sender waits


class _Peer:
    """Outbound state for one peer: its queue, wake-up event and sender task."""

    def __init__(self, node_id: int, addr: tuple[str, int], queue_size: int) -> None:
        self.id = node_id
        self.addr = addr
        self.queue: deque[Message] = deque(maxlen=queue_size)
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.writer: asyncio.StreamWriter | None = None  # set while the sender pumps
        self.flush_scheduled = False


class Transport:
    """See the module docstring. Counters are in `stats` (a Counter of names)."""

    def __init__(
        self,
        node_id: int,
        listen_addr: tuple[str, int],
        peers: Mapping[int, tuple[str, int]],
        server_ctx: ssl.SSLContext,
        client_ctx: ssl.SSLContext,
        on_message: Callable[[Message], None],
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        queue_size: int = 4096,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self.node_id = node_id
        self.listen_addr = listen_addr
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.on_message = on_message
        self.limits = Limits(max_frame=max_frame)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._rng = rng or random.Random()
        self._queue_size = queue_size
        self._started = False
        self._retired: set[asyncio.Task[None]] = set()  # senders of removed peers
        self._peers = {i: _Peer(i, a, queue_size) for i, a in peers.items() if i != node_id}
        self._server: asyncio.Server | None = None
        self._inbound: dict[int, asyncio.StreamWriter] = {}
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = False
        self.stats: Counter[str] = Counter()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        host, port = self.listen_addr
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            ssl=self.server_ctx,
            ssl_handshake_timeout=self.connect_timeout,
        )
        self._started = True
        for p in self._peers.values():
            self._start_peer(p)

    def _start_peer(self, p: _Peer) -> None:
        p.task = asyncio.create_task(self._run_peer(p), name=f"raft-peer-{p.id}")

    def peers(self) -> dict[int, tuple[str, int]]:
        """The current peer map (this node excluded)."""
        return {i: p.addr for i, p in self._peers.items()}

    def add_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """Start talking to `node_id` at `addr` (a node joining the cluster), or
        move it to a new address. Its inbound connections are accepted from now on."""
        if node_id == self.node_id or node_id < 1:
            raise ValueError(f"invalid peer id {node_id}")
        old = self._peers.get(node_id)
        if old is not None:
            if old.addr == addr:
                return
            self._drop_peer(old)
        p = _Peer(node_id, addr, self._queue_size)
        self._peers[node_id] = p
        if self._started and not self._stopping:
            self._start_peer(p)

    def remove_peer(self, node_id: int) -> None:
        """Stop talking to `node_id` (a node removed from the cluster): its queue
        is dropped, its outbound and inbound connections are closed."""
        p = self._peers.pop(node_id, None)
        if p is not None:
            self._drop_peer(p)
        inbound = self._inbound.pop(node_id, None)
        if inbound is not None:
            inbound.transport.abort()

    def _drop_peer(self, p: _Peer) -> None:
        p.queue.clear()
        if p.writer is not None:
            p.writer.transport.abort()
        if p.task is not None:
            p.task.cancel()
            self._retired.add(p.task)
            p.task.add_done_callback(self._retired.discard)

    @property
    def bound_addr(self) -> tuple[str, int]:
        """The address actually listened on (useful with port 0)."""
        assert self._server is not None
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop(self) -> None:
        """Stop listening and dialing; close every connection. Queued messages are lost."""
        self._stopping = True
        if self._server is not None:
            self._server.close()  # listening sockets close now; wait_closed() is not
            self._server = None  # awaited: it also waits for half-open handshakes
        peers = [p.task for p in self._peers.values() if p.task is not None]
        peers += list(self._retired)
        for p in self._peers.values():
            p.wake.set()  # a sender that missed its cancellation still sees _stopping
        for t in peers:
            t.cancel()
        for w in list(self._handlers.values()):
            w.transport.abort()  # handlers then finish on their own (not cancelled:
        handlers = list(self._handlers)  # asyncio logs cancelled connection callbacks)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self.connect_timeout)
            for t in pending:
                t.cancel()
        await asyncio.gather(*peers, return_exceptions=True)

    # --- sending --------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue `msg` for `msg.to`; never blocks, never raises for a bad peer."""
        peer = self._peers.get(msg.to)
        if peer is None or self._stopping:
            self.stats["dropped_unknown_dest"] += 1
            return
        if len(peer.queue) == peer.queue.maxlen:
            self.stats["dropped_queue_full"] += 1  # deque drops the oldest
        peer.queue.append(msg)  # while dialling, the sender flushes it once connected
        if peer.writer is not None and not peer.flush_scheduled:
            peer.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, peer)

    def _flush(self, peer: _Peer) -> None:
        """Write what is queued for a connected peer, unless its buffer is full
        (then the sender task waits for the drain and calls this again)."""
        peer.flush_scheduled = False
        writer = peer.writer
        if writer is None or self._stopping or writer.transport.is_closing():
            return
        while peer.queue:
            if writer.transport.get_write_buffer_size() > HIGH_WATER:
                peer.wake.set()
                return
            frames: list[bytes] = []
            size = 0
            while peer.queue and size < MAX_BATCH_BYTES:
                m = peer.queue.popleft()
                try:
                    f = encode_frame(m, self.limits.max_frame)
                except FrameTooLarge:
                    self.stats["dropped_too_large"] += 1
                    log.warning("dropped a %s to %d: larger than max_frame", m.type.name, m.to)
                    continue
                frames.append(f)
                size += len(f)
            if frames:
                writer.write(b"".join(frames))
                self.stats["sent"] += len(frames)

    def connected(self, peer_id: int) -> bool:
        p = self._peers.get(peer_id)
        return p is not None and p.connected

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2 ** min(attempt, 30)))
        return self._rng.uniform(cap / 2, cap)  # "equal jitter"

    async def _run_peer(self, peer: _Peer) -> None:
        attempt = 0
        while not self._stopping:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        *peer.addr,
                        ssl=self.client_ctx,
                        ssl_handshake_timeout=self.connect_timeout,
                    ),
                    self.connect_timeout,
                )
                got = peer_node_id(writer.get_extra_info("peercert"))
                if got != peer.id:
                    self.stats["rejected_server_identity"] += 1
                    log.warning("peer %d at %s presented node id %d", peer.id, peer.addr, got)
                    raise PeerIdentityError("server identity mismatch")
                if self._stopping:
                    return
                self.stats["connects"] += 1
                peer.connected = True
                attempt = 0
                await self._pump(peer, reader, writer)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ssl.SSLError, PeerIdentityError, EOFError) as exc:
                self.stats["connect_failures" if not peer.connected else "disconnects"] += 1
                log.debug("peer %d: %s", peer.id, type(exc).__name__)
            finally:
                peer.connected = False
                if writer is not None:
                    writer.transport.abort()
            if self._stopping:
                return
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _pump(
        self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hand the connection to `_flush`; wait for the socket when it is full,
        until the connection fails or the peer closes it."""
        # The peer never writes on this connection: any read completing means EOF/error.
        closed = asyncio.ensure_future(reader.read(1))
        peer.writer = writer
        try:
            while not self._stopping:
                peer.wake.clear()
                self._flush(peer)  # what queued while we were dialling, or a backlog
                if peer.queue:  # the transport's buffer is full: wait for the kernel
                    self.stats["send_waits"] += 1
                    waiter = asyncio.ensure_future(writer.drain())
                else:
                    waiter = asyncio.ensure_future(peer.wake.wait())
                done, _ = await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if closed in done:
                    raise EOFError("peer closed the connection")
                if waiter in done and waiter.exception() is not None:
                    raise waiter.exception()  # type: ignore[misc]
        finally:
            peer.writer = None
            closed.cancel()

    # --- receiving ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._stopping or task is None:
            writer.transport.abort()
            return
        self._handlers[task] = writer
        try:
            await self._serve_inner(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            self.stats["inbound_errors"] += 1
        except Exception:
            self.stats["inbound_errors"] += 1
            log.exception("inbound connection handler failed")
        finally:
            writer.transport.abort()
            self._handlers.pop(task, None)

    async def _serve_inner(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            pid = peer_node_id(writer.get_extra_info("peercert"))
        except PeerIdentityError:
            self.stats["rejected_identity"] += 1
            return
        if pid not in self._peers:
            self.stats["rejected_unknown_peer"] += 1
            log.warning("closed a connection from unknown node %d", pid)
            return
        old = self._inbound.get(pid)
        if old is not None:
            old.transport.abort()  # a reconnecting peer replaces its old connection
        self._inbound[pid] = writer
        dec = FrameDecoder(self.limits.max_frame)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                try:
                    bodies = dec.feed(data)
                except FrameTooLarge as exc:
                    for body in exc.complete:
                        self._deliver(pid, body)
                    self.stats["closed_oversized"] += 1
                    log.warning("closed connection from node %d: oversized frame", pid)
                    return
                for body in bodies:
                    self._deliver(pid, body)
        finally:
            if self._inbound.get(pid) is writer:
                del self._inbound[pid]

    def _deliver(self, pid: int, body: bytes) -> None:
        try:
            msg = decode_message(body, self.limits)
        except DecodeError as exc:
            self.stats["dropped_decode"] += 1
            log.warning("dropped a frame from node %d: %s", pid, exc)
            return
        if msg.frm != pid:
            self.stats["dropped_spoofed"] += 1
            log.warning("dropped a frame from node %d claiming to be %d", pid, msg.frm)
            return
        if msg.to != self.node_id:
            self.stats["dropped_misaddressed"] += 1
            return
        self.stats["received"] += 1
        try:
            self.on_message(msg)
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("on_message failed for a %s from node %d", msg.type.name, pid)
