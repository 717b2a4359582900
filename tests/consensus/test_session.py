"""Exactly-once session table: pure tests of dedup, expiry by index and snapshots."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.session import (
    MAX_BATCH,
    MalformedEnvelope,
    Outcome,
    Proposal,
    ReplicatedMachine,
    SequenceReused,
    SessionTable,
    StaleRequest,
    decode_batch,
    decode_proposal,
    encode_batch,
    encode_proposal,
    proposal_row,
)


class Counter:
    """A tiny deterministic state machine: adds the command's int, returns the total."""

    def __init__(self) -> None:
        self.total = 0
        self.applied = 0

    def apply(self, command: bytes) -> bytes:
        self.total += int(command)
        self.applied += 1
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return msgpack.packb([self.total, self.applied])

    def restore(self, data: bytes) -> None:
        self.total, self.applied = msgpack.unpackb(data)


def env(payload: bytes, cid: bytes = b"", seq: int = 0, tag: bytes = b"") -> bytes:
    return encode_proposal(Proposal(payload=payload, tag=tag, client_id=cid, seq=seq))


class One:
    """A ReplicatedMachine whose entries each hold one proposal (most tests)."""

    def __init__(self, app: Counter, window: int = 10_000, max_sessions: int = 100_000) -> None:
        self.m = ReplicatedMachine(app, window=window, max_sessions=max_sessions)
        self.app = app

    @property
    def sessions(self) -> SessionTable:
        return self.m.sessions

    def apply(self, index: int, data: bytes) -> tuple[bytes, Outcome]:
        (res,) = self.m.apply(index, data)
        return res

    def snapshot(self) -> bytes:
        return self.m.snapshot()

    def restore(self, data: bytes) -> None:
        self.m.restore(data)


def test_envelope_round_trip_and_bounds() -> None:
    p = Proposal(payload=b"x" * 10, tag=b"t1", client_id=b"c", seq=7)
    assert decode_proposal(encode_proposal(p), 1024) == p
    with pytest.raises(MalformedEnvelope):
        decode_proposal(encode_proposal(p), 5)
    for bad in (b"", b"\xc1", msgpack.packb([2, [[b"", 0, b"", b""]]]), msgpack.packb({"a": 1}),
                msgpack.packb([1, []]), msgpack.packb([1, [[b"", 0, b""]]]),
                msgpack.packb([1, [["str", 1, b"", b""]]]),
                msgpack.packb([1, [[b"c", 0, b"", b""]]]),
                msgpack.packb([1, [[b"c" * 65, 1, b"", b""]]]),
                msgpack.packb([1, [[b"c", -1, b"", b""]]]),
                msgpack.packb([1, [[b"", 0, b"", b""]] * (MAX_BATCH + 1)])):
        with pytest.raises(MalformedEnvelope):
            decode_proposal(bad, 1024)
    with pytest.raises(ValueError):
        Proposal(payload=b"", client_id=b"c", seq=0)


def test_retry_applies_once_and_returns_first_result() -> None:
    m = One(Counter())
    tag, out = m.apply(1, env(b"5", b"alice", 1, b"t"))
    assert tag == b"t" and out.unwrap() == b"5" and not out.duplicate
    _, out = m.apply(2, env(b"5", b"alice", 1, b"t2"))
    assert out.unwrap() == b"5" and out.duplicate
    assert m.app.total == 5 and m.app.applied == 1
    _, out = m.apply(3, env(b"3", b"alice", 2))
    assert out.unwrap() == b"8"


def test_stale_and_reused_sequences_are_errors() -> None:
    m = One(Counter())
    m.apply(1, env(b"1", b"c", 1))
    m.apply(2, env(b"1", b"c", 2))
    _, out = m.apply(3, env(b"1", b"c", 1))
    with pytest.raises(StaleRequest):
        out.unwrap()
    _, out = m.apply(4, env(b"9", b"c", 2))
    with pytest.raises(SequenceReused):
        out.unwrap()
    assert m.app.total == 2


def test_anonymous_proposals_are_never_deduplicated() -> None:
    m = One(Counter())
    m.apply(1, env(b"1"))
    m.apply(2, env(b"1"))
    assert m.app.total == 2 and len(m.sessions) == 0


def test_expiry_is_by_log_index() -> None:
    m = One(Counter(), window=3)
    m.apply(1, env(b"1", b"a", 1))
    m.apply(2, env(b"1", b"b", 1))
    m.apply(3, env(b"1"))  # index 3: a is idle 2 entries, kept
    assert len(m.sessions) == 2
    _, out = m.apply(4, env(b"1", b"a", 1))  # index 4 = 1 + 3: a expired first, so applies again
    assert not out.duplicate and m.app.total == 4
    # b expires at index 5; the session of a was refreshed at 4.
    m.apply(5, env(b"0"))
    assert len(m.sessions) == 1


def test_snapshot_restore_keeps_sessions() -> None:
    m = One(Counter())
    m.apply(1, env(b"4", b"c", 1))
    snap = m.snapshot()
    r = One(Counter())
    r.restore(snap)
    _, out = r.apply(2, env(b"4", b"c", 1))
    assert out.duplicate and out.unwrap() == b"4" and r.app.total == 4
    with pytest.raises(MalformedEnvelope):
        r.restore(msgpack.packb([1, [[b"c", 0, b"x" * 16, b"", "", 1]], b""]))
    with pytest.raises(MalformedEnvelope):  # more sessions than the cap
        small = ReplicatedMachine(Counter(), max_sessions=1)
        small.restore(msgpack.packb([1, [[b"a", 1, b"x" * 16, b"", "", 1],
                                         [b"b", 1, b"x" * 16, b"", "", 2]], b""]))
    with pytest.raises(MalformedEnvelope):
        r.restore(b"\x93\x02\x90\xc4\x00")


ops = st.lists(
    st.tuples(st.sampled_from([b"", b"a", b"b", b"c"]), st.integers(1, 4), st.integers(0, 3)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(1, 8), st.integers(0, 60))
def test_replicas_agree_with_and_without_snapshot(seq_ops, window, cut) -> None:
    """A replica restored from a snapshot at any point produces the same outcomes."""
    entries = [env(str(n).encode(), cid, seq if cid else 0) for cid, seq, n in seq_ops]
    a = One(Counter(), window=window)
    outs_a = [a.apply(i + 1, e)[1] for i, e in enumerate(entries)]
    b = One(Counter(), window=window)
    cut = min(cut, len(entries))
    for i in range(cut):
        b.apply(i + 1, entries[i])
    c = One(Counter(), window=window)
    c.restore(b.snapshot())
    outs_c = [c.apply(i + 1, entries[i])[1] for i in range(cut, len(entries))]
    assert outs_c == outs_a[cut:]
    assert c.app.total == a.app.total
    assert c.snapshot() == a.snapshot()


def test_session_table_window_validation() -> None:
    with pytest.raises(ValueError):
        SessionTable(0)
    assert Outcome(result=b"r").unwrap() == b"r"


def test_batch_applies_in_order_and_dedups_within_the_batch() -> None:
    m = ReplicatedMachine(Counter())
    rows = [proposal_row(Proposal(payload=p, tag=t, client_id=c, seq=q))[0]
            for p, t, c, q in [(b"1", b"a", b"x", 1), (b"2", b"b", b"", 0),
                               (b"1", b"c", b"x", 1), (b"4", b"d", b"x", 2)]]
    data = encode_batch(rows)
    assert [p.tag for p in decode_batch(data, 1 << 20)] == [b"a", b"b", b"c", b"d"]
    out = m.apply(7, data)
    assert [t for t, _ in out] == [b"a", b"b", b"c", b"d"]
    assert [o.unwrap() for _, o in out] == [b"1", b"3", b"1", b"7"]
    assert out[2][1].duplicate and m.app.applied == 3
    with pytest.raises(MalformedEnvelope):
        decode_proposal(data, 1 << 20)  # not a batch of one


def test_session_cap_evicts_least_recently_used() -> None:
    m = One(Counter(), max_sessions=2)
    m.apply(1, env(b"1", b"a", 1))
    m.apply(2, env(b"1", b"b", 1))
    m.apply(3, env(b"1", b"a", 2))  # a is now the most recent
    m.apply(4, env(b"1", b"c", 1))  # evicts b
    assert len(m.sessions) == 2
    _, out = m.apply(5, env(b"1", b"a", 2))
    assert out.duplicate
    _, out = m.apply(6, env(b"1", b"b", 1))
    assert not out.duplicate  # b was forgotten: applied as new
