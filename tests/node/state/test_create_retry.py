"""Safe retry of key creation: `create_key` on an existing key id starts over only when
its DKG never produced a version that was ever active (every version destroyed), with the
same purpose and policy and no create/rotate request open; otherwise `key_exists`."""

from __future__ import annotations

import pytest

from node.state import (
    Approve,
    CreateKey,
    Machine,
    Reason,
    RecordDkgResult,
    RecordFailure,
    RequestDestroy,
    RequestRevoke,
    RequestSign,
    RequestState,
    VersionState,
)
from node.state.rules import may_retry_create, never_active

VS = VersionState


def approve(w, rid: str) -> None:
    w.approve(rid, "alice")
    assert w.approve(rid, "bob").code == "approved"


def failed_create(w, rid: str = "ck", how: str = "report") -> None:
    """A create_key whose DKG failed: its version is aborted (destroyed)."""
    w.ok(CreateKey(rid, "ops", "k1", "sign", "p1"))
    approve(w, rid)
    if how == "report":
        assert w.ok(RecordFailure(w.rid("f"), "node-2", rid, "dkg timeout")).code == "failed"
    else:
        w.post_dkg(rid, ("node-1", "node-2"))
        bad = w.do(RecordDkgResult(w.rid("d"), "node-3", rid, bytes(32), w.VSHARES))
        assert bad.code == "failed"
    assert w.req(rid).state is RequestState.FAILED
    assert w.m.state.keys["k1"].lifecycle_request == ""


def end_version(w, number: int) -> None:
    """Revoke, then destroy, version `number` of k1 (each approved by two approvers)."""
    for cls in (RequestRevoke, RequestDestroy):
        rid = w.rid("end")
        w.ok(cls(rid, "ops", "k1", number))
        w.approve(rid, "alice")
        assert w.approve(rid, "bob").code == "executed"


@pytest.mark.parametrize("how", ["report", "mismatch"])
def test_retry_after_failed_dkg_activates(ready, how):
    w = ready
    failed_create(w, how=how)
    key = w.m.state.keys["k1"]
    assert key.versions[1].state is VS.DESTROYED
    out = w.ok(CreateKey("ck2", "ops", "k1", "sign", "p1"))
    assert (out.code, out.detail) == ("pending", "retry")
    assert key.lifecycle_request == "ops:ck2" and w.m.state.keys["k1"] is key
    approve(w, "ck2")
    assert w.req("ck2").version == 2 and key.versions[2].state is VS.PENDING
    assert [o.code for o in w.post_dkg("ck2")] == ["ok", "ok", "executed"]
    w.advance()
    assert w.m.active_version("k1") == 2 and key.primary == 2
    assert key.versions[1].state is VS.DESTROYED
    # the key works like any other, and the result survives a snapshot
    w.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert w.req("s1").version == 2
    assert Machine.from_snapshot(w.snap()).snapshot() == w.snap()


def test_retry_after_two_failures(ready):
    w = ready
    failed_create(w, "ck")
    w.ok(CreateKey("ck2", "ops", "k1", "sign", "p1"))
    approve(w, "ck2")
    w.ok(RecordFailure("f2", "node-1", "ck2", "dkg timeout"))
    w.ok(CreateKey("ck3", "ops", "k1", "sign", "p1", 0))
    approve(w, "ck3")
    assert w.req("ck3").version == 3


def test_old_approvals_do_not_carry_over(ready):
    """The retry is a new request with its own digest: approvals of the failed one fail."""
    w = ready
    failed_create(w)
    old = w.req("ck")
    w.ok(CreateKey("ck2", "ops", "k1", "sign", "p1"))
    w.rejects(Approve("a-old", "alice", "ops:ck2", old.approvals["alice"]), Reason.BAD_SIGNATURE)


def test_retry_after_version_revoked_before_activation(ready):
    """A version whose DKG completed but which was revoked before its activation epoch
    (then destroyed) was never active: a retry is allowed."""
    w = ready
    w.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    approve(w, "ck")
    w.post_dkg("ck")
    v1 = w.m.state.keys["k1"].versions[1]
    assert v1.activation_epoch == w.m.state.epoch + 1 and v1.state is VS.PENDING
    end_version(w, 1)
    w.advance()
    assert v1.state is VS.DESTROYED and w.m.active_version("k1") is None
    assert never_active(v1)
    assert w.ok(CreateKey("ck2", "ops", "k1", "sign", "p1")).detail == "retry"


def test_retry_refused_when_a_version_was_ever_active(ready):
    """Even once destroyed, and although the activating vote carried `at` = 0 (so
    `activated_at` is 0: it is not what the rule reads)."""
    w = ready
    w.active_key("k1", at=0)
    v1 = w.m.state.keys["k1"].versions[1]
    assert v1.activated_at == 0
    end_version(w, 1)
    assert v1.state is VS.DESTROYED and not never_active(v1)
    w.rejects(CreateKey("x", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)


def test_retry_refused_while_a_version_is_active(ready):
    ready.active_key("k1")
    ready.rejects(CreateKey("x", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)


def test_retry_refused_while_a_version_is_not_destroyed(ready):
    """A version revoked while pending was never active, but it is not destroyed yet."""
    w = ready
    w.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    approve(w, "ck")
    w.ok(RequestRevoke("rv", "ops", "k1", 1))
    w.approve("rv", "alice")
    w.approve("rv", "bob")
    v1 = w.m.state.keys["k1"].versions[1]
    assert v1.state is VS.REVOKED and w.req("ck").state is RequestState.FAILED
    w.rejects(CreateKey("x", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)


def test_retry_refused_while_a_lifecycle_request_is_open(ready):
    w = ready
    w.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    w.rejects(CreateKey("x1", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)  # pending
    approve(w, "ck")
    w.rejects(CreateKey("x2", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)  # DKG running
    w.ok(RecordFailure("f", "node-1", "ck", "dkg timeout"))
    w.ok(CreateKey("ck2", "ops", "k1", "sign", "p1"))
    w.rejects(CreateKey("x3", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)  # the retry's


def test_retry_refused_with_another_purpose_or_policy(ready):
    w = ready
    w.govern(w.policy_command("pol2", policy_id="p2"))
    failed_create(w)
    w.rejects(CreateKey("x1", "ops", "k1", "encrypt", "p1"), Reason.KEY_EXISTS)
    w.rejects(CreateKey("x2", "ops", "k1", "sign", "p2"), Reason.KEY_EXISTS)
    w.rejects(CreateKey("x3", "ops", "k1", "sign", "nope"), Reason.KEY_EXISTS)
    assert w.ok(CreateKey("x4", "ops", "k1", "sign", "p1")).code == "pending"


def test_retry_rule_table():
    from node.state.model import Version

    aborted = Version(1, VS.DESTROYED, "ops:ck", destroyed_epoch=3)
    revoked_early = Version(2, VS.DESTROYED, "ops:ck", activation_epoch=5, revoked_epoch=4,
                            destroyed_epoch=4)  # fmt: skip
    revoked_after = Version(3, VS.DESTROYED, "ops:ck", activation_epoch=5, revoked_epoch=5,
                            destroyed_epoch=6)  # fmt: skip
    retired = Version(4, VS.DESTROYED, "ops:ck", activation_epoch=5, retired_epoch=8,
                      destroyed_epoch=9)  # fmt: skip
    pending = Version(5, VS.PENDING, "ops:ck")
    assert may_retry_create([]) and may_retry_create([aborted, revoked_early])
    for bad in (revoked_after, retired, pending):
        assert not may_retry_create([aborted, bad])
