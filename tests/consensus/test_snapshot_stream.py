"""Snapshots larger than a frame, streamed in chunks over real TLS on loopback
(`consensus.snapstream` + `consensus.transport`), and end to end through real
kv processes.

No timing thresholds: every wait is "until a condition holds", bounded only
by a generous safety timeout so a broken build fails instead of hanging."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from pathlib import Path

import aiohttp
import msgpack
import pytest

from consensus import snapstream as ss
from consensus import tls, wal
from consensus.codec import encode_frame
from consensus.filestore import K_SNAPMARK
from consensus.messages import ConfState, Message, MsgType, Snapshot, SnapshotMeta
from tests.consensus.kvcluster import ELECTION_S, ProcCluster
from tests.consensus.transports import Node, free_port, until

SAFETY = 60.0
MIB = 1024 * 1024







@pytest.fixture
def addrs() -> dict[int, tuple[str, int]]:
    return {i: ("127.0.0.1", free_port()) for i in (1, 2, 3)}


@pytest.fixture
async def trio(cluster_certs, addrs, tmp_path):
    """Three transports with 1 MiB frames; node i spools into tmp/spool<i>."""
    nodes = {
        i: Node(i, addrs, cluster_certs, max_frame=MIB, spool_dir=tmp_path / f"spool{i}")
        for i in addrs
    }
    for n in nodes.values():
        await n.t.start()
    yield nodes
    for n in nodes.values():
        await n.t.stop()


def snap_msg(data: bytes, frm: int = 1, to: int = 2, index: int = 500, term: int = 3) -> Message:
    meta = SnapshotMeta(index, term - 1, ConfState(frozenset({1, 2, 3}), frozenset({4})))
    return Message(MsgType.SNAPSHOT, to=to, frm=frm, term=term, snapshot=Snapshot(meta, data))


def hb(frm: int, to: int, n: int) -> Message:
    return Message(MsgType.HEARTBEAT, to=to, frm=frm, term=3, commit=n)


def spooled(d: Path) -> list[Path]:
    return sorted(d.glob("*")) if d.exists() else []


# --- 1. delivery of a snapshot far larger than a frame ---------------------------------


async def test_a_snapshot_far_larger_than_a_frame_is_delivered_whole(trio, tmp_path):
    data = os.urandom(40 * MIB)
    msg = snap_msg(data)
    await until(lambda: trio[1].t.connected(2) and trio[2].t.connected(1), "connections")
    t0 = time.perf_counter()
    trio[1].t.send(msg)
    await until(lambda: trio[2].snapshots(), "the snapshot")
    elapsed = time.perf_counter() - t0
    (got,) = trio[2].snapshots()
    assert got == msg  # type, to, frm, term, meta (index, term, voters, learners), data
    assert spooled(tmp_path / "spool2") == []
    s1, s2 = trio[1].t.stats, trio[2].t.stats
    assert s1["snap_out_started"] == s1["snap_out_completed"] == 1
    assert s1["snap_out_bytes"] == len(data) and s1["dropped_too_large"] == 0
    assert s2["snap_in_started"] == s2["snap_in_completed"] == 1
    assert s2["snap_in_bytes"] == len(data) and s2["snap_in_failed"] == 0
    assert s2["received"] == 1
    print(f"40 MiB in {elapsed:.2f} s = {40 / elapsed:.0f} MiB/s over loopback TLS")


async def test_small_snapshots_stream_too_and_inline_ones_are_still_accepted(cluster_certs, addrs):
    """Every SNAPSHOT is streamed, whatever its size (one path for all); the
    receiver still accepts the old single-frame form. Without a spool_dir the
    receiver spools into a private temp directory that stop() removes."""
    n1 = Node(1, addrs, cluster_certs, max_frame=64 * 1024)
    n2 = Node(2, addrs, cluster_certs, max_frame=64 * 1024)
    await n1.t.start()
    await n2.t.start()
    try:
        small = snap_msg(b"tiny")
        n1.t.send(small)
        await until(lambda: n2.snapshots() == [small], "the small snapshot")
        assert n1.t.stats["snap_out_completed"] == 1 and n1.t.stats["sent"] == 0
        empty = snap_msg(b"", index=501)
        n1.t.send(empty)
        await until(lambda: n2.snapshots()[-1:] == [empty], "an empty-data snapshot")
        _, writer = await raw_client(cluster_certs, 1, addrs[2])
        inline = snap_msg(b"inline", index=502)
        writer.write(encode_frame(inline))
        await writer.drain()
        await until(lambda: n2.snapshots()[-1:] == [inline], "the inline snapshot")
        writer.close()
        temp = n2.t._spool.directory
        assert temp is not None and stat.S_IMODE(temp.stat().st_mode) == 0o700
    finally:
        await n1.t.stop()
        await n2.t.stop()
    assert not temp.exists()


# --- 2. other traffic keeps flowing during a stream ------------------------------------


async def test_heartbeats_to_the_same_peer_are_not_stuck_behind_a_stream(trio):
    """Ping-pong heartbeats 1 -> 2 (and 3 -> 2) while 1 streams 40 MiB
    to 2: several complete before the snapshot does, i.e. each waits behind a
    couple of chunks, not behind the whole stream."""
    data = os.urandom(40 * MIB)
    await until(lambda: trio[1].t.connected(2), "connection")
    trio[1].t.send(snap_msg(data))
    await until(lambda: trio[2].t.stats["snap_in_bytes"] > 0, "the stream to start")
    k = 0
    lat: list[float] = []
    while not trio[2].snapshots():
        k += 1
        t0 = time.perf_counter()
        trio[1].t.send(hb(1, 2, k))
        trio[3].t.send(hb(3, 2, k))
        await until(lambda k=k: sum(m.commit == k for m in trio[2].inbox) == 2, f"heartbeat {k}")
        lat.append(time.perf_counter() - t0)
    order = [m.type for m in trio[2].inbox if m.frm == 1]
    before = order.index(MsgType.SNAPSHOT)
    assert before >= 3, f"only {before} heartbeats overtook a 40 MiB stream"
    assert trio[2].snapshots()[0].snapshot.data == data
    print(f"{before} heartbeat round trips during the stream, max {max(lat) * 1000:.0f} ms")


async def test_duplicates_are_dropped_and_a_newer_snapshot_replaces_the_stream(trio):
    old, new = snap_msg(os.urandom(8 * MIB), index=10), snap_msg(os.urandom(8 * MIB), index=20)
    trio[1].t.send(old)
    trio[1].t.send(old)  # the core's re-send of the one in flight
    trio[1].t.send(new)
    trio[1].t.send(new)
    await until(lambda: trio[2].snapshots(), "the newer snapshot")
    await until(lambda: trio[1].t.stats["snap_out_completed"] >= 1, "the sender to finish")
    assert trio[2].snapshots() == [new]
    assert trio[1].t.stats["snap_out_duplicates"] == 2
    assert trio[1].t.stats["snap_out_replaced"] == 1


# --- 3. resume after the receiver restarts ------------------------------------------


async def test_a_stream_cut_by_a_receiver_restart_resumes(cluster_certs, addrs, tmp_path):
    spool = tmp_path / "spool2"
    data = os.urandom(40 * MIB)
    msg = snap_msg(data)
    n1 = Node(1, addrs, cluster_certs, max_frame=MIB)
    n2 = Node(2, addrs, cluster_certs, max_frame=MIB, spool_dir=spool)
    await n1.t.start()
    await n2.t.start()
    fresh: Node | None = None
    try:
        await until(lambda: n1.t.connected(2) and n2.t.connected(1), "connections")
        n1.t.send(msg)
        await until(lambda: n2.t.stats["snap_in_bytes"] >= 4 * MIB, "some chunks")
        await n2.t.stop()  # mid-stream
        assert n2.snapshots() == [] and n2.t.stats["snap_in_completed"] == 0
        (part,) = spooled(spool)
        held = part.stat().st_size
        assert 0 < held < len(data)
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700

        fresh = Node(2, addrs, cluster_certs, max_frame=MIB, spool_dir=spool)
        await fresh.t.start()
        n1.t.send(msg)  # the core re-sends after its timeout (a duplicate if still in flight)
        await until(lambda: fresh.snapshots(), "the resumed snapshot")
        assert fresh.snapshots() == [msg]
        s1, s2 = n1.t.stats, fresh.t.stats
        assert s2["snap_in_resumed"] == 1 and s1["snap_out_resumed"] == 1
        assert s1["snap_out_skipped_bytes"] == held
        assert s2["snap_in_bytes"] == len(data) - held < len(data)  # only the rest re-sent
        # one header before the restart, one after: from the interrupted stream, or
        # from the re-send if the first had already handed its last byte to the kernel
        assert s1["snap_out_started"] == 2
        assert spooled(spool) == []
        print(
            f"receiver held {held / MIB:.1f} MiB at restart; re-sent "
            f"{s2['snap_in_bytes'] / MIB:.1f} of {len(data) / MIB:.0f} MiB; "
            f"sender wrote {s1['snap_out_bytes'] / MIB:.1f} MiB in all"
        )
    finally:
        await n1.t.stop()
        if fresh is not None:
            await fresh.t.stop()


def test_spool_keeps_the_newest_partial_per_known_sender(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    dig = hashlib.sha256(b"x").hexdigest()
    keep = d / f"snap-from-2-90-3-100-{dig}.part"
    names = {
        keep: 10,
        d / f"snap-from-2-80-3-100-{dig}.part": 10,  # older, same sender
        d / f"snap-from-3-10-1-100-{dig}.part": 10,  # sender not a peer
        d / f"snap-from-2-95-3-5-{dig}.part": 10,  # longer than it claims
        d / "snap-from-2-x.part": 1,  # not ours
    }
    for p, n in names.items():
        p.write_bytes(b"a" * n)
    (d / "unrelated.txt").write_bytes(b"kept")
    found = ss.Spool(d).open([1, 2])
    assert set(found) == {2} and found[2].path == keep and found[2].offset == 10
    assert found[2].header is None  # waits for a header before any chunk counts
    assert sorted(p.name for p in d.iterdir()) == sorted([keep.name, "unrelated.txt"])


# --- 4. hostile or broken streams --------------------------------------------------


async def raw_client(pki: Path, node_id: int, addr):
    _, client = tls.contexts_from_dir(pki, node_id)
    return await asyncio.open_connection(*addr, ssl=client)


def header(data: bytes, *, sid: int = 7, frm: int = 2, to: int = 1, **kw) -> ss.Header:
    fields = dict(
        sid=sid, term=3, frm=frm, to=to, index=40, snap_term=2, voters=frozenset({1, 2, 3}),
        learners=frozenset(), total=len(data), digest=hashlib.sha256(data).digest(),
    )  # fmt: skip
    fields.update(kw)
    return ss.Header(**fields)


def chunks(data: bytes, sid: int = 7, size: int = 64 * 1024) -> list[bytes]:
    return [ss.encode_chunk(sid, o, data[o : o + size]) for o in range(0, len(data), size)]


@pytest.fixture
async def target(cluster_certs, addrs, tmp_path):
    """Node 1 alone (its peers 2 and 3 are not running), 256 KiB frames, 1 MiB
    snapshot bound; the test speaks to it through raw TLS clients."""
    n1 = Node(
        1, addrs, cluster_certs, max_frame=256 * 1024, max_snapshot_bytes=MIB,
        spool_dir=tmp_path / "spool1",
    )  # fmt: skip
    await n1.t.start()
    yield n1
    await n1.t.stop()


async def test_a_bad_digest_is_dropped_counted_and_discarded(target, cluster_certs, addrs):
    data = os.urandom(300 * 1024)
    _, w = await raw_client(cluster_certs, 2, addrs[1])
    w.write(ss.encode_header(header(data, digest=hashlib.sha256(b"other").digest())))
    w.write(b"".join(chunks(data)))
    await w.drain()
    await until(lambda: target.t.stats["snap_in_failed"] == 1, "the digest check")
    assert target.t.stats["snap_in_digest_mismatch"] == 1
    assert target.inbox == [] and spooled(target.t._spool.directory) == []
    w.close()


async def test_bad_offsets_are_refused_and_change_nothing(target, cluster_certs, addrs):
    data = os.urandom(300 * 1024)
    part = chunks(data)
    _, w = await raw_client(cluster_certs, 2, addrs[1])
    w.write(ss.encode_header(header(data)) + part[0])
    w.write(ss.encode_chunk(7, 3 * 64 * 1024, b"gap"))  # beyond what is held
    w.write(ss.encode_chunk(7, 64 * 1024, os.urandom(len(data) - 64 * 1024 + 1)))  # past total
    w.write(ss.encode_chunk(8, 64 * 1024, data[64 * 1024 :]))  # another stream id
    await w.drain()
    await until(lambda: target.t.stats["snap_chunks_refused"] == 2, "the refusals")
    await until(lambda: target.t.stats["snap_chunks_unexpected"] == 1, "the foreign sid")
    (p,) = spooled(target.t._spool.directory)
    assert p.read_bytes() == data[: 64 * 1024]  # untouched by the bad chunks
    w.write(b"".join(part[1:]))  # the honest remainder completes the stream
    await w.drain()
    await until(lambda: target.snapshots(), "the snapshot")
    assert target.snapshots()[0].snapshot.data == data
    assert target.t.stats["snap_in_failed"] == 0
    w.close()


async def test_sizes_over_the_bound_are_refused_before_any_byte_is_stored(
    target, cluster_certs, addrs
):
    big = ss.Header(**{**_fields(header(b"")), "total": MIB + 1})
    _, w = await raw_client(cluster_certs, 2, addrs[1])
    w.write(ss.encode_header(big))
    w.write(ss.encode_chunk(7, MIB - 10, b"x" * 11))  # ends past the bound
    await w.drain()
    await until(lambda: target.t.stats["snap_dropped_decode"] == 2, "the refusals")
    assert target.t._spool.directory is not None
    assert spooled(target.t._spool.directory) == [] and target.inbox == []
    # the connection survives a well-framed bad body: a heartbeat still gets through
    w.write(encode_frame(hb(2, 1, 5)))
    await w.drain()
    await until(lambda: target.inbox == [hb(2, 1, 5)], "the heartbeat")
    w.close()


def _fields(h: ss.Header) -> dict:
    return {f: getattr(h, f) for f in h.__slots__}


async def test_a_peer_cannot_stream_as_another_or_into_anothers_stream(
    target, cluster_certs, addrs
):
    data = os.urandom(200 * 1024)
    part = chunks(data)
    _, w2 = await raw_client(cluster_certs, 2, addrs[1])
    _, w3 = await raw_client(cluster_certs, 3, addrs[1])
    w3.write(ss.encode_header(header(data, frm=2)))  # node 3 claiming to be node 2
    w3.write(ss.encode_header(header(data, frm=3, to=2)))  # not addressed to node 1
    await w3.drain()
    await until(lambda: target.t.stats["snap_dropped_spoofed"] == 1, "the spoofed header")
    await until(lambda: target.t.stats["snap_dropped_misaddressed"] == 1, "the misaddressed")
    w2.write(ss.encode_header(header(data)) + part[0])  # node 2's honest stream starts
    await w2.drain()
    await until(lambda: target.t.stats["snap_in_bytes"] == 64 * 1024, "node 2's first chunk")
    w3.write(part[1])  # node 3 injects a chunk with node 2's stream id
    await w3.drain()
    await until(lambda: target.t.stats["snap_chunks_unexpected"] == 1, "the injection")
    w2.write(b"".join(part[1:]))
    await w2.drain()
    await until(lambda: target.snapshots(), "node 2's snapshot")
    (got,) = target.snapshots()
    assert got.frm == 2 and got.snapshot.data == data
    assert target.t.stats["snap_in_bytes"] == len(data)
    w2.close()
    w3.close()


async def test_frames_with_bad_types_are_dropped(target, cluster_certs, addrs):
    _, w = await raw_client(cluster_certs, 2, addrs[1])
    good = header(b"abc")
    bad_header = msgpack.packb([1, 1, 7, "3", 2, 1, 40, 2, [1], [], 3, good.digest])
    bad_chunk = msgpack.packb([1, 2, 7, 0, "abc"])
    for body in (bad_header, bad_chunk, b"\x93\xc1\xc1\xc1"):
        w.write(len(body).to_bytes(4, "big") + body)
    w.write(ss.encode_chunk(7, 0, b"abc"))  # well formed, but no header came first
    await w.drain()
    await until(lambda: target.t.stats["snap_dropped_decode"] == 3, "the refusals")
    await until(lambda: target.t.stats["snap_chunks_unexpected"] == 1, "the headless chunk")
    assert target.inbox == [] and target.t.stats["snap_in_started"] == 0
    w.close()


# --- decoder unit tests: one malformed field at a time -----------------------------

LIM = ss.StreamLimits(max_chunk=1024, max_snapshot_bytes=10_000, max_members=4)
DIG = bytes(32)
HEADER = [1, 1, 7, 3, 2, 1, 40, 2, [1, 2], [3], 100, DIG]
CHUNK = [1, 2, 7, 0, b"data"]
HAVE = [1, 3, 7, 40, 2, DIG, 50]


def test_valid_frames_round_trip():
    h = ss.decode_frame(msgpack.packb(HEADER), LIM)
    assert h == ss.Header(7, 3, 2, 1, 40, 2, frozenset({1, 2}), frozenset({3}), 100, DIG)
    assert ss.decode_frame(ss.encode_header(h)[4:], LIM) == h
    assert ss.decode_frame(msgpack.packb(CHUNK), LIM) == ss.Chunk(7, 0, b"data")
    hv = ss.decode_frame(msgpack.packb(HAVE), LIM)
    assert hv == ss.Have(7, 40, 2, DIG, 50)
    assert ss.decode_frame(ss.encode_have(hv)[4:], LIM) == hv
    assert ss.is_stream_frame(msgpack.packb(HAVE))
    assert not ss.is_stream_frame(encode_frame(hb(1, 2, 0))[4:])  # messages are maps


def _with(frame: list, i: int, v) -> bytes:
    f = list(frame)
    f[i] = v
    return msgpack.packb(f, use_bin_type=True)


@pytest.mark.parametrize(
    ("frame", "i", "value", "error"),
    [
        (HEADER, 0, 2, "unknown version"),
        (HEADER, 0, True, "unknown version"),
        (HEADER, 1, 9, "unknown stream frame kind"),
        (HEADER, 1, -1, "kind"),
        (HEADER, 2, 0, "sid"),
        (HEADER, 2, 1 << 63, "sid"),
        (HEADER, 3, 3.0, "header.term"),
        (HEADER, 4, 0, "header.from"),
        (HEADER, 4, "2", "max_str_len"),  # no strings anywhere
        (HEADER, 5, -1, "header.to"),
        (HEADER, 6, 0, "header.index"),
        (HEADER, 7, 4, "header.snap_term"),  # above the message term
        (HEADER, 8, [1, 1], "duplicate member"),
        (HEADER, 8, [0], "header.voters"),
        (HEADER, 8, {"a": 1}, "malformed"),
        (HEADER, 8, [1, 2, 3, 4, 5], "limit"),
        (HEADER, 9, [1], "both voter and learner"),
        (HEADER, 9, [5, 6, 7], "too many members"),
        (HEADER, 9, "x", "malformed"),
        (HEADER, 10, 10_001, "header.total"),
        (HEADER, 10, False, "header.total"),
        (HEADER, 11, b"short", "header.digest"),
        (HEADER, 11, None, "header.digest"),
        (CHUNK, 2, None, "sid"),
        (CHUNK, 3, -5, "chunk.offset"),
        (CHUNK, 3, 10_001, "chunk.offset"),
        (CHUNK, 3, 9_999, "past the"),
        (CHUNK, 4, b"", "chunk.data"),
        (CHUNK, 4, b"x" * 1025, "malformed"),  # msgpack's own max_bin_len
        (CHUNK, 4, [1], "chunk.data"),
        (HAVE, 3, 0, "have.index"),
        (HAVE, 4, -1, "have.snap_term"),
        (HAVE, 5, b"x" * 31, "have.digest"),
        (HAVE, 6, 10_001, "have.offset"),
    ],
)
def test_each_malformed_field_is_refused(frame, i, value, error):
    with pytest.raises(ss.StreamDecodeError, match=error):
        ss.decode_frame(_with(frame, i, value), LIM)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "not a stream frame"),
        (msgpack.packb({"v": 1}), "not a stream frame"),
        (msgpack.packb([1]), r"\[version, kind"),
        (msgpack.packb(HEADER[:-1]), "expected 12 fields"),
        (msgpack.packb([*CHUNK, 0]), "expected 5 fields"),
        (msgpack.packb(HAVE) + b"\x00", "malformed"),  # trailing bytes
        (b"\x92\x01", "malformed"),  # truncated
        (b"\x92\x01\xc1", "malformed"),  # a byte msgpack never uses
    ],
)
def test_unknown_shapes_are_refused(body, error):
    with pytest.raises(ss.StreamDecodeError, match=error):
        ss.decode_frame(body, LIM)


# --- 5. end to end: a restarted kv follower catches up through a streamed snapshot --


def installed_snapshots(data_dir: Path) -> list[int]:
    """Indexes of the SNAPMARK records in a node's WAL: snapshots it received
    and installed (its own periodic snapshots write none)."""
    marks = []
    segs = wal.list_segments(data_dir)
    for n, (seq, path) in enumerate(segs):
        for rec in wal.read_segment(path, seq, n == len(segs) - 1).records:
            if rec.kind == K_SNAPMARK:
                marks.append(msgpack.unpackb(rec.payload)[0])
    return marks


@pytest.mark.slow
async def test_a_restarted_kv_follower_catches_up_through_a_streamed_snapshot(
    tmp_path, monkeypatch
):
    """Frames of 256 KiB, a snapshot every 50 entries. A follower is down while
    48 x 64 KiB values (3 MiB: twelve frames' worth of state) and enough other
    writes land that the leader compacts its log past everything the follower
    can get from appends, so it must be sent a snapshot. Before streaming, that
    single-frame SNAPSHOT was dropped and the follower never caught up.

    What the follower can get from appends: the leader's transport still holds
    the appends it sent while the follower was down, at most `max_inflight_msgs`
    (256) of them. The first 300 writes are sequential, one entry per append,
    so those cover at most ~265 entries; the leader keeps `keep_entries`
    (1000) behind its snapshot, so a snapshot index above 1400 leaves a gap."""
    scratch = tmp_path / "tmp"  # the nodes' TMPDIR: a spool_dir=None spool goes here
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    c = ProcCluster(tmp_path, extra=["--max-frame", "262144", "--snapshot-every", "50"])
    try:
        for i in (1, 2, 3):
            c.start(i)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            leader = await c.leader(s, budget=20 * ELECTION_S + 10)
            follower = next(i for i in (1, 2, 3) if i != leader)
            c.kill(follower)

            async def put(key: str, value: bytes) -> None:
                async with asyncio.timeout(SAFETY):
                    while True:
                        try:
                            async with s.put(c.url(leader, f"/kv/{key}"), data=value) as r:
                                await r.read()
                                if r.status == 200:
                                    return
                        except (aiohttp.ClientError, OSError, TimeoutError):
                            pass
                        await asyncio.sleep(0.05)

            for k in range(300):
                await put(f"seq-{k}", b"s")
            # one at a time: a batch of several 64 KiB entries would not fit one APPEND frame
            for k in range(48):
                await put(f"big-{k}", bytes([65 + k % 26]) * (64 * 1024))

            async def small_writer(w: int, n: int) -> None:
                for k in range(50):
                    await put(f"small-{w}-{n}-{k}", f"{w}:{k}".encode())

            n = 0
            while True:
                st = await c.status(s, leader)
                assert st is not None
                if st["snapshot_index"] > 1400:
                    break
                await asyncio.gather(*(small_writer(w, n) for w in range(4)))
                n += 1
            await put("last", b"L" * (64 * 1024))

            c.start(follower)
            async with asyncio.timeout(SAFETY):
                while True:
                    a, b = await c.status(s, leader), await c.status(s, follower)
                    if a and b and b["applied"] >= a["commit"]:
                        break
                    await asyncio.sleep(0.1)
            async with s.get(c.url(follower, "/kv/last")) as r:
                assert r.status == 200 and await r.read() == b"L" * (64 * 1024)
            async with s.get(c.url(follower, "/kv/big-47")) as r:
                assert r.status == 200 and await r.read() == b"V" * (64 * 1024)
        c.close()
        marks = installed_snapshots(c.data[follower])
        assert marks and marks[-1] > 1400, marks  # it caught up through a snapshot
        assert list(scratch.rglob("*.part")) == []  # nothing left in a spool
        print(f"follower applied={b['applied']} after installing the snapshot at {marks[-1]}")
    finally:
        c.close()


def test_a_frame_of_nested_arrays_is_refused_cheaply():
    """The codec's total-budget fix applies to stream frames too: a 15 MiB frame
    of nested small arrays cost 18.6 s and 969 MiB before it was refused."""
    import struct
    import tracemalloc

    n = 1000
    item = b"\xdc\x04\x00" + (b"\xdc" + struct.pack(">H", n) + b"\x90" * n) * 1024
    body = b"\x9f" + item * 15  # ~15 MiB
    tracemalloc.start()
    try:
        with pytest.raises(ss.StreamDecodeError, match="more than 3 arrays"):
            ss.decode_frame(body, ss.StreamLimits(max_chunk=16 * 1024 * 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
