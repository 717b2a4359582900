"""The TLS transport on loopback, with real certificates and real sockets.

No timing thresholds: every wait is "until a condition holds", bounded only
by a generous safety timeout so a broken build fails instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import struct

import pytest
from cryptography import x509

from consensus import certs, tls
from consensus.codec import encode_frame
from consensus.messages import Entry, Message, MsgType
from consensus.transport import Transport
from tests.consensus.transports import Node, free_port, until

SAFETY = 30.0







@pytest.fixture
async def cluster(cluster_certs):
    addrs = {i: ("127.0.0.1", free_port()) for i in (1, 2, 3)}
    nodes = {i: Node(i, addrs, cluster_certs, max_frame=64 * 1024) for i in addrs}
    for n in nodes.values():
        await n.t.start()
    yield nodes, addrs
    for n in nodes.values():
        await n.t.stop()


def hb(frm: int, to: int, n: int = 0) -> Message:
    return Message(MsgType.HEARTBEAT, to=to, frm=frm, term=1, commit=n)


async def test_certificates_have_the_promised_shape(cluster_certs):
    cert = x509.load_pem_x509_certificate((cluster_certs / "node-3.pem").read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "node-3"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    for name in ("ca.key", "node-1.key", "node-3.key"):
        assert stat.S_IMODE(os.stat(cluster_certs / name).st_mode) == 0o600
    assert tls.node_id_from_cn("node-42") == 42
    for bad in ("node-0", "node-01", "node-", "node-1x", "Node-1", "node-99999999999999999999"):
        with pytest.raises(tls.PeerIdentityError):
            tls.node_id_from_cn(bad)
    with pytest.raises(ValueError):
        certs.node_cn(0)


async def test_contexts_are_tls13_only_with_client_certs(cluster_certs):
    server, client = tls.contexts_from_dir(cluster_certs, 1)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED


async def test_messages_flow_between_all_pairs(cluster):
    nodes, _ = cluster
    for a in nodes:
        for b in nodes:
            if a != b:
                for k in range(5):
                    nodes[a].t.send(hb(a, b, k))
    app = Message(MsgType.APPEND, to=3, frm=1, term=2, entries=(Entry(2, 1, data=b"x" * 1000),))
    nodes[1].t.send(app)
    await until(lambda: all(len(n.inbox) >= 10 for n in nodes.values()), "delivery")
    await until(lambda: app in nodes[3].inbox, "the append")
    for b, n in nodes.items():
        assert {m.frm for m in n.inbox} == set(nodes) - {b}
        assert all(m.to == b for m in n.inbox)
        # per-peer order is preserved on one connection
        for a in set(nodes) - {b}:
            assert [m.commit for m in n.inbox if m.frm == a and m.type is MsgType.HEARTBEAT] == [
                0,
                1,
                2,
                3,
                4,
            ]
    assert nodes[2].t.stats["received"] == 10



async def test_a_backlog_beyond_the_high_water_mark_drains_in_order(cluster, monkeypatch):
    """More than the transport buffers at once: the sender waits for the socket
    to drain and then goes on; nothing is lost or reordered."""
    from consensus import transport as transport_module

    monkeypatch.setattr(transport_module, "HIGH_WATER", 256 * 1024)
    nodes, _ = cluster
    await until(lambda: nodes[1].t.connected(2), "connection")
    blob = os.urandom(60 * 1024)
    n = 200  # ~12 MB, far beyond what the kernel buffers on loopback
    for k in range(n):
        entry = Entry(1, k + 1, data=blob)
        nodes[1].t.send(Message(MsgType.APPEND, to=2, frm=1, term=1, commit=k, entries=(entry,)))
    await until(lambda: len(nodes[2].inbox) == n, "the whole backlog")
    assert [m.commit for m in nodes[2].inbox] == list(range(n))
    assert nodes[1].t.stats["sent"] == n and nodes[1].t.stats["dropped_queue_full"] == 0
    assert nodes[1].t.stats["send_waits"] > 0  # the back-pressure path was taken


async def test_peers_are_removed_and_added_at_run_time(cluster):
    nodes, addrs = cluster
    nodes[2].t.send(hb(2, 1, 0))
    await until(lambda: len(nodes[1].inbox) == 1, "delivery before the removal")
    nodes[1].t.remove_peer(2)
    assert 2 not in nodes[1].t.peers()
    nodes[1].t.send(hb(1, 2))
    assert nodes[1].t.stats["dropped_unknown_dest"] == 1
    nodes[2].t.send(hb(2, 1, 1))  # node 2 reconnects and is turned away
    await until(lambda: nodes[1].t.stats["rejected_unknown_peer"] >= 1, "the refusal")
    assert [m.commit for m in nodes[1].inbox] == [0]
    nodes[1].t.add_peer(2, addrs[2])
    nodes[1].t.send(hb(1, 2, 7))
    await until(lambda: any(m.commit == 7 for m in nodes[2].inbox), "delivery after re-adding")
    nodes[2].t.send(hb(2, 1, 2))
    await until(lambda: any(m.commit == 2 for m in nodes[1].inbox), "inbound accepted again")
    with pytest.raises(ValueError):
        nodes[1].t.add_peer(1, addrs[1])  # not itself

async def test_send_never_blocks_and_drops_oldest_when_full(cluster_certs):
    addrs = {1: ("127.0.0.1", free_port()), 2: ("127.0.0.1", free_port())}
    n1 = Node(1, addrs, cluster_certs, queue_size=3)  # node 2 is down
    await n1.t.start()
    try:
        for k in range(10):
            n1.t.send(hb(1, 2, k))
        n1.t.send(hb(1, 9))  # unknown destination
        assert n1.t.stats["dropped_queue_full"] == 7
        assert n1.t.stats["dropped_unknown_dest"] == 1
        await until(lambda: n1.t.stats["connect_failures"] >= 2, "reconnect attempts")
        n2 = Node(2, addrs, cluster_certs)
        await n2.t.start()
        try:
            await until(lambda: len(n2.inbox) == 3, "queued messages after the peer came up")
            assert [m.commit for m in n2.inbox] == [7, 8, 9]  # the newest survived
        finally:
            await n2.t.stop()
    finally:
        await n1.t.stop()


async def test_client_cert_from_another_ca_is_refused(cluster, rogue_certs):
    nodes, addrs = cluster
    rogue = Node(2, {2: ("127.0.0.1", free_port()), 1: addrs[1]}, rogue_certs)
    await rogue.t.start()
    try:
        rogue.t.send(hb(2, 1, 77))
        # the rogue's handshake (or its first write) fails; it keeps retrying
        await until(
            lambda: rogue.t.stats["connect_failures"] + rogue.t.stats["disconnects"] >= 3,
            "the rogue to be refused repeatedly",
        )
        nodes[2].t.send(hb(2, 1, 78))  # the genuine node 2 still gets through
        await until(lambda: any(m.commit == 78 for m in nodes[1].inbox), "the genuine node")
        assert not any(m.commit == 77 for m in nodes[1].inbox)
    finally:
        await rogue.t.stop()


async def test_server_refuses_a_foreign_client_cert_even_if_the_client_trusts_it(
    cluster, cluster_certs, rogue_certs
):
    """The client trusts the real CA (so its side of the handshake succeeds) but
    presents node-2 from another CA: the server must refuse it."""
    nodes, addrs = cluster
    ctx = tls.client_context(
        cluster_certs / "ca.pem", rogue_certs / "node-2.pem", rogue_certs / "node-2.key"
    )
    try:
        reader, writer = await asyncio.open_connection(*addrs[1], ssl=ctx)
    except (OSError, ssl.SSLError):
        pass  # refused during the handshake: fine
    else:
        writer.write(encode_frame(hb(2, 1, 66)))
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.drain()
        with pytest.raises((OSError, ssl.SSLError)):
            data = await asyncio.wait_for(reader.read(), SAFETY)
            if data == b"":
                raise ConnectionResetError("closed by the server")  # also a refusal
        writer.transport.abort()
    nodes[2].t.send(hb(2, 1, 67))
    await until(lambda: any(m.commit == 67 for m in nodes[1].inbox), "the genuine node")
    assert not any(m.commit == 66 for m in nodes[1].inbox)
    assert nodes[1].t.stats["received"] == 1


async def test_server_from_another_ca_is_refused_by_the_client(cluster_certs, rogue_certs):
    port = free_port()
    server, _ = tls.contexts_from_dir(rogue_certs, 2)
    got: list[Message] = []
    rogue = Transport(2, ("127.0.0.1", port), {}, server, server, got.append)
    await rogue.start()
    addrs = {1: ("127.0.0.1", free_port()), 2: ("127.0.0.1", port)}
    n1 = Node(1, addrs, cluster_certs)
    await n1.t.start()
    try:
        n1.t.send(hb(1, 2))
        await until(lambda: n1.t.stats["connect_failures"] >= 2, "failed handshakes")
        assert n1.t.stats["connects"] == 0 and got == []
    finally:
        await n1.t.stop()
        await rogue.stop()


async def test_a_peer_claiming_another_id_is_dropped(cluster):
    nodes, _ = cluster
    nodes[2].t.send(Message(MsgType.HEARTBEAT, to=1, frm=3, term=1, commit=55))  # spoofed frm
    nodes[2].t.send(hb(2, 1, 56))
    await until(lambda: any(m.commit == 56 for m in nodes[1].inbox), "the honest frame")
    assert nodes[1].t.stats["dropped_spoofed"] == 1
    assert not any(m.commit == 55 for m in nodes[1].inbox)


async def test_server_presenting_the_wrong_node_id_is_refused(cluster_certs):
    # node 1 believes node 2 lives where node 3 listens
    p3 = free_port()
    n3 = Node(3, {3: ("127.0.0.1", p3), 1: ("127.0.0.1", 1)}, cluster_certs)
    await n3.t.start()
    n1 = Node(1, {1: ("127.0.0.1", free_port()), 2: ("127.0.0.1", p3)}, cluster_certs)
    await n1.t.start()
    try:
        n1.t.send(hb(1, 2))
        await until(lambda: n1.t.stats["rejected_server_identity"] >= 1, "identity check")
        assert n3.inbox == [] and n1.t.stats["sent"] == 0
    finally:
        await n1.t.stop()
        await n3.t.stop()


async def test_unknown_peer_with_a_valid_cert_is_dropped(cluster, cluster_certs):
    nodes, addrs = cluster
    stranger = Node(4, {4: ("127.0.0.1", free_port()), 1: addrs[1]}, cluster_certs)
    await stranger.t.start()
    try:
        stranger.t.send(hb(4, 1, 99))
        await until(lambda: nodes[1].t.stats["rejected_unknown_peer"] >= 1, "the rejection")
        assert not any(m.frm == 4 for m in nodes[1].inbox)
    finally:
        await stranger.t.stop()


async def raw_client(cluster_certs, node_id: int, addr):
    _, client = tls.contexts_from_dir(cluster_certs, node_id)
    return await asyncio.open_connection(*addr, ssl=client)


async def test_oversized_frame_closes_the_connection_and_node_keeps_serving(cluster, cluster_certs):
    nodes, addrs = cluster
    reader, writer = await raw_client(cluster_certs, 2, addrs[1])
    # a valid frame first, then a length prefix far above the 64 KiB limit
    writer.write(encode_frame(hb(2, 1, 1)) + struct.pack(">I", 10**9) + b"x" * 100)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), SAFETY) == b""  # server closed it
    writer.close()
    assert nodes[1].t.stats["closed_oversized"] == 1
    assert any(m.commit == 1 and m.frm == 2 for m in nodes[1].inbox)
    # garbage inside a well-sized frame is dropped without closing
    reader, writer = await raw_client(cluster_certs, 3, addrs[1])
    writer.write(struct.pack(">I", 3) + b"\xc1\xc1\xc1" + encode_frame(hb(3, 1, 2)))
    await writer.drain()
    await until(lambda: any(m.commit == 2 and m.frm == 3 for m in nodes[1].inbox), "next frame")
    assert nodes[1].t.stats["dropped_decode"] == 1
    writer.close()
    # and the transports still talk
    nodes[2].t.send(hb(2, 1, 3))
    await until(lambda: any(m.commit == 3 and m.frm == 2 for m in nodes[1].inbox), "service")


async def test_reconnect_after_the_peer_restarts(cluster, cluster_certs):
    nodes, addrs = cluster
    nodes[1].t.send(hb(1, 2, 1))
    await until(lambda: len(nodes[2].inbox) == 1, "first delivery")
    await nodes[2].t.stop()
    await until(lambda: not nodes[1].t.connected(2), "node 1 to notice")
    fresh = Node(2, addrs, cluster_certs)
    nodes[2] = fresh  # the fixture stops the new one
    await fresh.t.start()
    nodes[1].t.send(hb(1, 2, 2))
    await until(lambda: any(m.commit == 2 for m in fresh.inbox), "delivery after restart")
    assert nodes[1].t.stats["connects"] >= 2
