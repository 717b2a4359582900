"""Snapshots: canonical bytes, strict restore, and a restored replica continues identically."""

from __future__ import annotations

import msgpack
import pytest

from node.state import (
    AdvanceEpoch,
    DecodeError,
    Machine,
    RecordResult,
    RequestRotate,
    RequestSign,
    State,
)
from node.state.snapshot import decode_state, encode_state


@pytest.fixture
def busy(ready):
    ready.active_key("k1")
    ready.active_key("kek", "encrypt")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"m1"))
    ready.approve("s1", "alice")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    return ready


def tail(world):
    world.approve("s1", "bob")
    world.ok(RecordResult("res", "node-1", "s1", bytes(64)))
    world.approve("rot", "alice")
    world.approve("rot", "carol")
    world.post_dkg("rot")
    world.advance(at=5)


def test_roundtrip_is_byte_identical(busy):
    snap = busy.snap()
    restored = Machine.from_snapshot(snap)
    assert restored.snapshot() == snap
    assert restored.audit_head() == busy.m.audit_head()
    assert restored.state == busy.m.state


def test_empty_state_roundtrips():
    snap = Machine().snapshot()
    assert Machine.from_snapshot(snap).state == State()


def test_insertion_order_does_not_change_bytes(busy):
    snap = busy.snap()
    st = decode_state(snap)
    for name in ("members", "principals", "policies", "keys", "requests", "outcomes"):
        table = getattr(st, name)
        setattr(st, name, dict(reversed(list(table.items()))))
    assert encode_state(st) == snap


def test_restored_replica_continues_identically(busy):
    restored = type(busy)()
    restored.m = Machine.from_snapshot(busy.snap())
    restored.n = busy.n
    tail(busy)
    tail(restored)
    assert restored.snap() == busy.snap()
    assert restored.m.active_version("k1") == busy.m.active_version("k1") == 2


def raw_snapshot(world) -> dict:
    return msgpack.unpackb(world.snap(), raw=False, strict_map_key=False)


def repack(raw) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def test_tampered_audit_chain_refused(busy):
    raw = raw_snapshot(busy)
    raw["state"]["audit"][2]["outcome"] = "ok-but-forged"
    with pytest.raises(DecodeError, match="audit chain"):
        decode_state(repack(raw))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(v=2), "version"),
        (lambda r: r.update(extra=1), "map"),
        (lambda r: r["state"].update(surprise=1), "fields"),
        (lambda r: r["state"].update(epoch="3"), "int"),
        (lambda r: r["state"].update(epoch=-1), "range"),
        (lambda r: r["state"]["keys"]["k1"].update(purpose="mint"), "Purpose"),
        (lambda r: r["state"]["keys"]["k1"].update(key_id="k2"), "wrong name"),
        (
            lambda r: r["state"]["keys"]["k1"]["versions"].update(
                {7: r["state"]["keys"]["k1"]["versions"][1]}
            ),
            "wrong number",
        ),
        (lambda r: r["state"]["outcomes"]["s1"]["outcome"].update(seq=10**6), "outcome"),
        (lambda r: r["state"]["open"].pop("s1"), "open requests"),
    ],
)
def test_schema_violations_refused(busy, mutate, message):
    raw = raw_snapshot(busy)
    mutate(raw)
    with pytest.raises(DecodeError, match=message):
        decode_state(repack(raw))


def test_non_canonical_encoding_refused(busy):
    raw = raw_snapshot(busy)
    raw["state"]["keys"] = dict(reversed(list(raw["state"]["keys"].items())))
    with pytest.raises(DecodeError, match="canonical"):
        decode_state(repack(raw))


def test_garbage_refused_and_state_kept(busy):
    before = busy.snap()
    for data in (b"", b"\xc1", repack([1]), before[:-3], before + b"\x00"):
        with pytest.raises(DecodeError):
            busy.m.restore(data)
    assert busy.snap() == before


def test_restore_replaces_state(busy):
    other = Machine()
    other.restore(busy.snap())
    other.apply_command(busy.signed(AdvanceEpoch("e-x", "node-2", 50, 0)))
    assert other.state.epoch == 50 and busy.m.state.epoch != 50
