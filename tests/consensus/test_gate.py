"""The handshake gate on loopback with real certificates and real sockets.

Clients come from several loopback addresses (127.0.0.2, 127.0.0.3, ...: the
whole 127/8 is local on Linux) to exercise the per-address cap. No timing
thresholds: every wait is "until a condition holds", bounded only by a
generous safety timeout so a broken build fails instead of hanging."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from consensus import tls
from consensus.gate import LOG_LIMIT, HandshakeGate

SAFETY = 30.0
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def until(cond: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), SAFETY)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Server:
    """A gate whose handler reports the peer's node id and echoes byte counts."""

    def __init__(self, pki: Path, **caps) -> None:
        server_ctx, _ = tls.contexts_from_dir(pki, 1)
        self.peers: list[int] = []
        self.gate = HandshakeGate(self.handle, server_ctx, **caps)
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(tls.peer_node_id(writer.get_extra_info("peercert")))
        writer.write(b"hello\n")
        while line := await reader.readline():  # "<n>\n" then n bytes; answers "<n>\n"
            n = int(line)
            await reader.readexactly(n)
            writer.write(b"%d\n" % n)
            await writer.drain()

    async def raw(self, src: str) -> Conn:
        """A plain TCP client from `src` that never sends a ClientHello."""
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(src, 0))

    async def member(self, pki: Path, node_id: int = 2, src: str = "127.0.0.1") -> Conn:
        """A real mTLS client; returns once the server has greeted it."""
        _, client_ctx = tls.contexts_from_dir(pki, node_id)
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port, ssl=client_ctx, local_addr=(src, 0)),
            SAFETY,
        )
        assert await asyncio.wait_for(r.readline(), SAFETY) == b"hello\n"
        return r, w

    async def accepted(self, n: int) -> None:
        await until(lambda: self.gate.stats["accepted"] >= n, f"{n} accepted connections")


@pytest.fixture
async def server(cluster_certs) -> AsyncIterator[Callable[..., Server]]:
    made: list[Server] = []

    async def make(**caps) -> Server:
        s = Server(cluster_certs, **caps)
        srv = await s.gate.start("127.0.0.1", 0)
        s.port = srv.sockets[0].getsockname()[1]
        made.append(s)
        return s

    yield make
    for s in made:
        s.gate.close()
        await s.gate.wait_closed()


async def closed_at_once(conn: Conn) -> bool:
    """True when the server closed the connection without a word."""
    try:
        data = await asyncio.wait_for(conn[0].read(1), SAFETY)
    except ConnectionResetError:
        return True
    return data == b""


async def refused_tls(port: int, client_ctx: ssl.SSLContext) -> bool:
    """True when a TLS client is turned away: the connection fails, or closes
    before the server's greeting."""
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), SAFETY
        )
        line = await asyncio.wait_for(r.readline(), SAFETY)
    except (OSError, asyncio.IncompleteReadError):
        return True
    w.transport.abort()
    return line == b""


def close(*conns: Conn) -> None:
    for _, w in conns:
        w.transport.abort()


async def test_handshakes_in_progress_are_capped(server):
    s = await server(max_handshakes=4, max_handshakes_per_ip=100, handshake_timeout=SAFETY)
    silent = []
    for i in range(4):  # from four addresses: the global cap, not the per-address one
        silent.append(await s.raw(f"127.0.0.{2 + i}"))
        await s.accepted(i + 1)
    await until(lambda: s.gate.handshaking == 4, "4 handshakes pending")
    extra = await s.raw("127.0.0.9")
    assert await closed_at_once(extra)
    assert s.gate.stats["refused_handshake_cap"] == 1
    assert s.gate.handshaking == 4
    # a slot frees when its client goes away, and the next client is admitted
    close(silent.pop())
    await until(lambda: s.gate.handshaking == 3, "a slot to be released")
    silent.append(await s.raw("127.0.0.10"))
    await until(lambda: s.gate.handshaking == 4, "the next client admitted")
    assert s.gate.stats["refused_handshake_cap"] == 1
    assert s.gate.stats["handshake_failures"] == 1  # the client that left
    close(extra, *silent)


async def test_one_address_cannot_take_every_slot(server, cluster_certs, caplog):
    caplog.set_level(logging.DEBUG)
    suppressed = LOG_LIMIT.stats["suppressed"]
    s = await server(max_handshakes=8, max_handshakes_per_ip=2, handshake_timeout=SAFETY)
    flood = []
    for i in range(20):  # a host trying to take all the handshake slots
        flood.append(await s.raw("127.0.0.2"))
        await s.accepted(i + 1)
    await until(lambda: s.gate.stats["refused_ip_cap"] == 18, "18 refusals")
    assert s.gate.handshaking_from("127.0.0.2") == 2
    assert all([await closed_at_once(c) for c in flood[2:]])
    # another host still gets a slot, and a real member completes its handshake
    other = await s.raw("127.0.0.3")
    await until(lambda: s.gate.handshaking_from("127.0.0.3") == 1, "127.0.0.3 admitted")
    r, w = await s.member(cluster_certs, node_id=2, src="127.0.0.1")
    assert s.peers == [2]
    w.write(b"5\nabcde")
    assert await asyncio.wait_for(r.readline(), SAFETY) == b"5\n"
    assert s.gate.established == 1
    assert s.gate.stats["handshakes"] == 1
    close(other, (r, w), *flood)
    # refusals are logged, but rate-limited; asyncio itself logged nothing
    refusals = [x for x in caplog.records if x.name == "consensus.gate" and "refused" in x.msg]
    assert len(refusals) <= 10
    assert LOG_LIMIT.stats["suppressed"] >= suppressed + 8
    assert not [x for x in caplog.records if x.name == "asyncio" and x.levelno >= logging.WARNING]


async def test_slots_are_released_after_the_handshake_timeout(server):
    s = await server(max_handshakes=4, max_handshakes_per_ip=2, handshake_timeout=0.2)
    silent = [await s.raw("127.0.0.2"), await s.raw("127.0.0.2")]
    await s.accepted(2)
    await until(lambda: s.gate.stats["handshake_timeouts"] == 2, "both handshakes to time out")
    assert s.gate.handshaking == 0
    assert s.gate.handshaking_from("127.0.0.2") == 0
    assert all([await closed_at_once(c) for c in silent])
    again = [await s.raw("127.0.0.2"), await s.raw("127.0.0.2")]
    await until(
        lambda: s.gate.stats["handshake_timeouts"] == 4, "the new pair admitted and timed out"
    )
    assert s.gate.stats["refused_ip_cap"] == 0
    close(*silent, *again)


async def test_established_connections_are_capped(server, cluster_certs):
    s = await server(max_established=2, handshake_timeout=SAFETY)
    a = await s.member(cluster_certs, 2)
    b = await s.member(cluster_certs, 3)
    assert s.gate.established == 2
    _, client_ctx = tls.contexts_from_dir(cluster_certs, 3)
    assert await refused_tls(s.port, client_ctx)  # closed before its handshake
    assert s.gate.stats["refused_established_cap"] == 1
    close(a)
    await until(lambda: s.gate.established == 1, "the handler of a closed connection to end")
    c = await s.member(cluster_certs, 2)
    assert s.gate.established == 2
    assert s.peers == [2, 3, 2]
    close(b, c)


async def test_bulk_data_flows_after_the_upgrade(server, cluster_certs):
    """Megabytes through the upgraded stream: the reader's flow control
    (pause/resume above its buffer limit) must not stall the connection."""
    s = await server()
    r, w = await s.member(cluster_certs)
    for n in (1, 4 << 20, 100, 1 << 20):
        w.write(b"%d\n" % n + b"z" * n)
        assert await asyncio.wait_for(r.readline(), SAFETY) == b"%d\n" % n
    close((r, w))


async def test_failed_handshakes_are_counted_and_release_their_slot(
    server, cluster_certs, rogue_certs
):
    s = await server(max_handshakes=2, max_handshakes_per_ip=1, handshake_timeout=SAFETY)
    _, rogue_ctx = tls.contexts_from_dir(rogue_certs, 2)  # a certificate from another CA
    assert await refused_tls(s.port, rogue_ctx)
    await until(lambda: s.gate.stats["handshake_failures"] == 1, "the rogue handshake to fail")
    garbage = await s.raw("127.0.0.1")
    garbage[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_at_once(garbage)
    await until(lambda: s.gate.stats["handshake_failures"] == 2, "the plain-text client to fail")
    assert s.gate.handshaking == 0
    r, w = await s.member(cluster_certs)  # the per-address slot is free again
    assert s.peers == [2]
    close((r, w))


async def test_close_aborts_pending_handshakes_and_stops_listening(server):
    s = await server(handshake_timeout=SAFETY)
    silent = [await s.raw("127.0.0.2"), await s.raw("127.0.0.3")]
    await until(lambda: s.gate.handshaking == 2, "2 handshakes pending")
    s.gate.close()
    assert all([await closed_at_once(c) for c in silent])
    await until(lambda: s.gate.handshaking == 0, "the pending handshakes to end")
    await s.gate.wait_closed()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", s.port), SAFETY)


def test_caps_must_be_positive(cluster_certs):
    server_ctx, _ = tls.contexts_from_dir(cluster_certs, 1)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        return None

    with pytest.raises(ValueError):
        HandshakeGate(handler, server_ctx, max_handshakes_per_ip=0)


async def test_start_refuses_an_ssl_argument(cluster_certs):
    server_ctx, _ = tls.contexts_from_dir(cluster_certs, 1)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        return None

    gate = HandshakeGate(handler, server_ctx)
    with pytest.raises(ValueError):
        await gate.start("127.0.0.1", 0, ssl=server_ctx)


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one():
    """In a child process, so this test run's own limits are left alone."""
    code = (
        "import resource\n"
        "from consensus.gate import raise_nofile_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "got = raise_nofile_limit()\n"
        "assert got == resource.getrlimit(resource.RLIMIT_NOFILE), got\n"
        "assert got[0] == hard or hard == resource.RLIM_INFINITY, (got, hard)\n"
        "assert got[0] > 256 or hard <= 256, got\n"
        "print('ok', got)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=SAFETY, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
