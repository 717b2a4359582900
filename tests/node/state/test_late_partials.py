"""An executed decrypt request lingers: members that have not confirmed may still confirm
(and give a partial), so that one member's bad partial does not force a new request."""

from __future__ import annotations

import dataclasses

import pytest

from node.state import Machine, RecordResult, RequestDecrypt, RequestRevoke
from node.state.errors import DecodeError, Reason
from node.state.machine import LATE_PARTIAL_EPOCHS
from node.state.model import RequestState


def _executed(w, rid: str = "dc") -> str:
    """A decrypt request executed by node-1 and node-2 (threshold 2 of 3)."""
    if "kek" not in w.m.state.keys:
        w.active_key("kek", "encrypt")
    w.ok(RequestDecrypt(rid, "app", "kek", 1, "dek:db", b"\x01" * 80))
    w.approve(rid, "alice")
    w.approve(rid, "bob")
    w.ok(RecordResult(f"{rid}-1", "node-1", rid, w.result(rid)))
    assert w.ok(RecordResult(f"{rid}-2", "node-2", rid, w.result(rid))).code == "executed"
    return w.ref(rid)


def test_the_third_member_may_still_confirm_after_execution(ready):
    ref = _executed(ready)
    req = ready.req("dc")
    assert req.state is RequestState.EXECUTED and req.payload == b"\x01" * 80
    assert ready.m.state.lingering == {ref: ready.m.state.epoch + LATE_PARTIAL_EPOCHS}
    assert ready.m.late_partial(ref, "node-3") is req
    assert ready.m.late_partial(ref, "node-1") is None  # it confirmed already
    out = ready.ok(RecordResult("dc-3", "node-3", "dc", ready.result("dc")))
    assert out.code == "ok" and out.detail == "late confirmation 3/3"
    assert req.state is RequestState.EXECUTED and set(req.confirmations) == {
        "node-1", "node-2", "node-3"}
    assert ref not in ready.m.state.lingering and req.payload == b""  # all confirmed: gone
    assert ready.m.state.keys["kek"].versions[1].uses == 1  # one decryption, not two
    ready.rejects(RecordResult("dc-4", "node-3", "dc", b"\x02" * 32), Reason.REQUEST_DECIDED)


def test_one_late_confirmation_per_member(ready):
    _executed(ready)
    ready.rejects(RecordResult("again", "node-2", "dc", b"\x02" * 32), Reason.DUPLICATE_POST)
    ready.rejects(RecordResult("big", "node-3", "dc", b"\x02" * 65), Reason.BAD_RESULT)


def test_the_window_ends_at_the_second_epoch_step(ready):
    ref = _executed(ready)
    ready.advance()
    assert ready.m.late_partial(ref, "node-3") is not None  # still within the window
    ready.advance()
    assert ref not in ready.m.state.lingering and ready.req("dc").payload == b""
    assert ready.m.late_partial(ref, "node-3") is None
    ready.rejects(RecordResult("late", "node-3", "dc", b"\x02" * 32), Reason.REQUEST_DECIDED)


def test_a_revoked_version_gives_no_late_partial(ready):
    ref = _executed(ready)
    ready.ok(RequestRevoke("rv", "ops", "kek", 1))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    assert ready.m.late_partial(ref, "node-3") is None


def test_sign_requests_never_linger(ready):
    from node.state import RequestSign

    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordResult("r", "node-1", "s1", ready.result("s1")))
    assert ready.m.state.lingering == {}
    assert ready.m.late_partial(ready.ref("s1"), "node-2") is None


def test_lingering_survives_a_snapshot_and_is_checked(ready):
    ref = _executed(ready)
    restored = Machine(genesis=ready.m.state.genesis)
    restored.restore(ready.snap())
    assert restored.state.lingering == ready.m.state.lingering
    assert restored.late_partial(ref, "node-3") is not None
    from node.state.snapshot import decode_state, encode_state

    state = ready.m.state
    for forged in ({"nobody:x": state.epoch}, {ref: state.epoch + 5}):
        with pytest.raises(DecodeError, match="lingering"):
            decode_state(encode_state(dataclasses.replace(state, lingering=forged)))


def test_a_decided_request_keeping_its_payload_is_refused_at_restore(ready):
    from node.state.snapshot import decode_state, encode_state

    ref = _executed(ready)
    state = ready.m.state
    state.lingering.pop(ref)  # the payload stays: no longer explained by the window
    with pytest.raises(DecodeError, match="still holds its payload"):
        decode_state(encode_state(state))


def test_lingering_is_bounded_and_evicts_deterministically(ready, monkeypatch):
    import node.state.machine as machine

    monkeypatch.setattr(machine, "MAX_LINGERING", 2)
    refs = [_executed(ready, f"d{i}") for i in range(3)]
    # all three end at the same epoch: the smallest ref goes, on every replica alike
    assert sorted(ready.m.state.lingering) == sorted(refs[1:])
    evicted = set(refs) - set(ready.m.state.lingering)
    assert len(evicted) == 1 and ready.req(evicted.pop()).payload == b""
