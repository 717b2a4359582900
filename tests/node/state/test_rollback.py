"""Rollback of a rotation and the dual-sign window (issue 11 §2; docs/lifecycle.md)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from node.state import (
    DecodeError,
    Machine,
    Op,
    Reason,
    RecordResult,
    RequestRevoke,
    RequestRollback,
    RequestRotate,
    RequestSign,
    RequestState,
    VersionState,
    rules,
)
from node.state.commands import SetPolicy, decode_command, encode_command
from node.state.digest import digest_of, policy_hash, policy_hash_of
from node.state.model import Policy
from node.state.snapshot import decode_state, encode_state

from .conftest import private_key, public_key

GROUP2 = private_key("group2")  # version 2's group key (version 1 has the world's GROUP)
GPK2 = public_key("group2")
VS = VersionState


def rotated(world, *, at: int = 0, key: str = "k1"):
    """Rotate `key` to a new version (version 2 gets its own group key); return the
    epoch the new version activated at."""
    old = world.m.state.keys[key].primary
    rid = world.rid("rot")
    world.ok(RequestRotate(rid, "ops", key, 0))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    world.post_dkg(rid, gpk=GPK2)
    world.advance(at=at)
    k = world.m.state.keys[key]
    assert k.primary == max(k.versions) and k.versions[old].state is VS.RETIRED
    assert k.versions[k.primary].replaced == old
    return world.m.state.epoch


def rollback(world, version: int = 1, approvers=("alice", "bob"), key: str = "k1"):
    rid = world.rid("rb")
    out = world.ok(RequestRollback(rid, "ops", key, version))
    assert out.code == "pending"
    last = None
    for name in approvers:
        last = world.approve(rid, name)
    return rid, last


@pytest.fixture
def two(ready):
    """k1 (policy p1: grace 2 epochs) rotated from version 1 to version 2."""
    ready.active_key("k1")
    rotated(ready)
    return ready


# ------------------------------------------------------------------- rollback


def test_rollback_within_grace_makes_the_previous_version_primary_again(two):
    key = two.m.state.keys["k1"]
    rid, out = rollback(two, approvers=("alice",))
    assert out.code == "pending" and key.primary == 2  # one approver is not the quorum
    assert key.lifecycle_request == two.req(rid).ref
    out = two.approve(rid, "bob")
    assert out.ok and out.code == "executed", out
    e = two.m.state.epoch
    v1, v2 = key.versions[1], key.versions[2]
    assert key.primary == 1 and key.lifecycle_request == ""
    assert v1.state is VS.ACTIVE and v1.rolled_back_epoch == e and v1.retired_epoch == 0
    assert v2.state is VS.RETIRED and v2.retired_epoch == e
    assert two.m.active_version("k1") == 1
    assert two.m.may_use("k1", 1, Op.SIGN) and not two.m.may_use("k1", 2, Op.SIGN)
    assert two.m.may_use("k1", 2, Op.VERIFY)  # the rolled-back version still verifies
    rec = two.m.state.audit[-1]
    assert (rec.kind, rec.key_id, rec.version, rec.outcome) == ("approve", "k1", 1, "executed")
    # The previous primary signs again (its old group key), under version 0.
    two.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert two.req("s1").version == 1 and two.req("s1").dual_version == 0


def test_rollback_after_grace_is_refused_and_changes_nothing(two):
    two.advance(by=3)  # grace 2: the window was epochs A..A+2
    out = two.rejects(RequestRollback("rb", "ops", "k1", 1), Reason.ROLLBACK_NOT_ALLOWED)
    assert "grace" in out.detail
    assert two.m.state.keys["k1"].primary == 2


def test_rollback_at_the_last_epoch_of_grace_is_allowed(two):
    two.advance(by=2)  # epoch = A + grace
    _, out = rollback(two)
    assert out.code == "executed"


def test_rollback_of_a_revoked_version_is_refused(two):
    two.ok(RequestRevoke("rv", "ops", "k1", 1))
    two.approve("rv", "alice")
    two.approve("rv", "bob")
    out = two.rejects(RequestRollback("rb", "ops", "k1", 1), Reason.ROLLBACK_NOT_ALLOWED)
    assert "revoked" in out.detail


def test_rollback_only_to_the_version_the_primary_replaced(ready):
    ready.active_key("k1")
    ready.rejects(RequestRollback("rb0", "ops", "k1", 1), Reason.ROLLBACK_NOT_ALLOWED)
    rotated(ready)
    ready.rejects(RequestRollback("rb1", "ops", "k1", 2), Reason.ROLLBACK_NOT_ALLOWED)
    ready.rejects(RequestRollback("rb2", "ops", "k1", 7), Reason.UNKNOWN_VERSION)
    rotated_again = rotated(ready)  # 2 -> 3: version 1 is no longer the replaced one
    assert rotated_again
    ready.rejects(RequestRollback("rb3", "ops", "k1", 1), Reason.ROLLBACK_NOT_ALLOWED)
    ready.rejects(RequestRollback("rb4", "ops", "k1", 99), Reason.UNKNOWN_VERSION)
    _, out = rollback(ready, version=2)
    assert out.code == "executed" and ready.m.state.keys["k1"].primary == 2


def test_no_second_rollback_from_a_rolled_back_primary(two):
    rollback(two)
    # Version 1 is primary by a rollback: neither back to 2 nor further back.
    two.rejects(RequestRollback("rb", "ops", "k1", 2), Reason.ROLLBACK_NOT_ALLOWED)


def test_rollback_occupies_the_lifecycle_slot(two):
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    two.rejects(RequestRotate("rot", "ops", "k1", 0), Reason.ROTATION_IN_PROGRESS)
    two.rejects(RequestRollback("rb2", "ops", "k1", 1), Reason.ROTATION_IN_PROGRESS)


def test_no_rollback_while_a_rotation_is_open_or_a_version_pending(two):
    two.ok(RequestRotate("rot", "ops", "k1", 0))
    two.rejects(RequestRollback("rb", "ops", "k1", 1), Reason.ROTATION_IN_PROGRESS)
    two.approve("rot", "alice")
    two.approve("rot", "bob")
    two.post_dkg("rot")  # the rotation is done, version 3 pending
    out = two.rejects(RequestRollback("rb2", "ops", "k1", 1), Reason.ROLLBACK_NOT_ALLOWED)
    assert "pending" in out.detail


def test_rollback_needs_an_operator_and_the_quorum(two):
    two.rejects(RequestRollback("rb-a", "alice", "k1", 1), Reason.UNAUTHORIZED)
    two.rejects(RequestRollback("rb-c", "app", "k1", 1), Reason.UNAUTHORIZED)
    two.rejects(RequestRollback("rb-n", "node-1", "k1", 1), Reason.UNAUTHORIZED)
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    assert two.approve("rb", "alice").code == "pending"
    assert two.approve("rb", "alice", rid="again").code == Reason.DUPLICATE_APPROVAL.value
    assert not two.approve("rb", "ops").ok  # not an approver
    assert two.approve("rb", "bob", signer="alice").code == Reason.BAD_SIGNATURE.value
    assert two.m.state.keys["k1"].primary == 2
    assert two.req("rb").state is RequestState.PENDING


def test_rollback_digest_binds_the_version(two):
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    req = two.req("rb")
    assert req.kind.value == "rollback" and req.version == 1
    other = dataclasses.replace(req, version=2)
    assert digest_of(other, two.m.state.cluster_id, b"") != req.digest
    assert digest_of(req, two.m.state.cluster_id, b"") == req.digest


def test_rollback_is_rechecked_on_approval(two):
    """The primary was revoked while the rollback waited: the quorum's approval fails it."""
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    two.approve("rb", "alice")
    two.ok(RequestRevoke("rv", "ops", "k1", 2))
    two.approve("rv", "alice")
    two.approve("rv", "bob")
    out = two.approve("rb", "bob")
    assert out.ok and out.code == "failed" and "rollback not allowed" in out.detail
    req = two.req("rb")
    assert req.state is RequestState.FAILED and req.failure == "rollback_not_allowed"
    key = two.m.state.keys["k1"]
    assert key.primary == 0 and key.versions[1].state is VS.RETIRED
    assert key.lifecycle_request == ""


def test_an_open_rollback_fails_when_its_grace_ends(two):
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    two.approve("rb", "alice")
    two.advance(by=3)
    req = two.req("rb")
    assert req.state is RequestState.FAILED and req.failure == "rollback_not_allowed"
    key = two.m.state.keys["k1"]
    assert key.lifecycle_request == "" and key.primary == 2
    assert two.approve("rb", "bob").code == Reason.REQUEST_DECIDED.value
    two.ok(RequestRotate("rot", "ops", "k1", 0))  # the key is free for a rotation again


def test_revoking_the_target_fails_an_open_rollback(two):
    two.ok(RequestRollback("rb", "ops", "k1", 1))
    two.ok(RequestRevoke("rv", "ops", "k1", 1))
    two.approve("rv", "alice")
    two.approve("rv", "bob")
    req = two.req("rb")
    assert req.state is RequestState.FAILED and req.failure == "version_revoked"
    assert two.m.state.keys["k1"].lifecycle_request == ""


def test_rollback_fails_sign_requests_on_the_demoted_primary(two):
    two.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert two.req("s1").version == 2
    rollback(two)
    assert two.req("s1").state is RequestState.FAILED
    assert two.req("s1").failure == "version_retired"


def test_a_rolled_back_version_is_not_due_for_rotation_at_once(world):
    world.setup(max_uses=1, rotation_interval_s=100)
    world.active_key("k1", at=1000)
    world.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    world.approve("s1", "alice")
    world.approve("s1", "bob")
    world.ok(RecordResult("r1", "node-1", "s1", world.result("s1")))
    assert world.m.rotation_due("k1", 1001)  # by use
    rotated(world, at=1500)
    rollback(world)
    v1 = world.m.state.keys["k1"].versions[1]
    assert v1.uses == 1 and v1.rollback_uses == 1 and v1.activated_at == 1500
    assert not world.m.rotation_due("k1", 1599)  # neither its old uses nor its old age
    assert world.m.rotation_due("k1", 1600)  # the interval counts from the switch undone
    world.ok(RequestSign("s2", "app", "k1", 0, "", b"m2"))
    world.approve("s2", "alice")
    world.approve("s2", "bob")
    world.ok(RecordResult("r2", "node-1", "s2", world.result("s2")))
    assert world.m.rotation_due("k1", 1501)  # one use since the rollback


def test_rollback_then_rotation_then_rollback_again(two):
    rollback(two)
    rotated_to = rotated(two)  # 1 -> 3
    assert rotated_to and two.m.state.keys["k1"].versions[3].replaced == 1
    _, out = rollback(two, version=1)
    assert out.code == "executed" and two.m.state.keys["k1"].primary == 1


def test_snapshot_roundtrip_after_rollback(two):
    rollback(two)
    data = two.snap()
    m = Machine.from_snapshot(data, genesis=two.m.genesis)
    assert m.snapshot() == data
    assert m.state.keys["k1"].versions[1].rolled_back_epoch == two.m.state.epoch


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda st: setattr(st.keys["k1"].versions[2], "replaced", 2), "replaced"),
        (lambda st: setattr(st.keys["k1"].versions[2], "replaced", 5), "replaced"),
        (lambda st: setattr(st.keys["k1"].versions[1], "rollback_uses", 9), "over-used"),
        (lambda st: setattr(st.keys["k1"], "lifecycle_request", "app:s1"), "lifecycle"),
    ],
)
def test_broken_rollback_fields_refused_at_restore(two, mutate, message):
    two.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    st = decode_state(two.snap())
    mutate(st)
    with pytest.raises(DecodeError, match=message):
        Machine(genesis=two.m.genesis).restore(encode_state(st))


# ------------------------------------------------------------------ dual-sign


@pytest.fixture
def dual(world):
    """p1 with grace 3 and a dual-sign window of 2 epochs; k1 rotated 1 -> 2."""
    world.setup(grace_epochs=3, dual_sign_epochs=2)
    world.active_key("k1")
    world.activated = rotated(world)
    return world


def dual_result(world, request: str) -> bytes:
    payload = world.req(request).payload
    return GROUP2.sign(payload) + world.GROUP.sign(payload)


def test_sign_in_the_window_records_both_versions(dual):
    out = dual.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert "dual-sign with version 1" in out.detail
    req = dual.req("s1")
    assert (req.version, req.dual_version) == (2, 1)
    single = dataclasses.replace(req, dual_version=0)
    assert digest_of(single, dual.m.state.cluster_id, req.payload_hash) != req.digest
    assert not dual.m.dual_signable("k1", 1)  # not approved yet
    dual.approve("s1", "alice")
    dual.approve("s1", "bob")
    assert dual.m.executable(req.ref) is req
    assert dual.m.dual_signable("k1", 1) and not dual.m.dual_signable("k1", 2)
    assert not dual.m.may_use("k1", 1, Op.SIGN)  # only as the second signer
    good = dual_result(dual, "s1")
    dual.rejects(RecordResult("r0", "node-1", "s1", good[:64]), Reason.BAD_RESULT)
    dual.rejects(RecordResult("r1", "node-1", "s1", good[64:] + good[:64]), Reason.BAD_RESULT)
    dual.rejects(RecordResult("r2", "node-1", "s1", good[:64] * 2), Reason.BAD_RESULT)
    assert dual.ok(RecordResult("r3", "node-1", "s1", good)).code == "executed"
    key = dual.m.state.keys["k1"]
    assert req.result == good and key.versions[2].uses == 1 and key.versions[1].uses == 1
    assert not dual.m.dual_signable("k1", 1)


def test_after_the_window_one_signature(dual):
    dual.advance()  # A + 1: still inside
    dual.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert dual.req("s1").dual_version == 1
    dual.advance()  # A + 2: the window is over
    dual.ok(RequestSign("s2", "app", "k1", 0, "", b"m"))
    assert dual.req("s2").dual_version == 0
    # The open request keeps its second signer while that version is retired.
    dual.approve("s1", "alice")
    dual.approve("s1", "bob")
    assert dual.ok(RecordResult("r", "node-1", "s1", dual_result(dual, "s1"))).code == "executed"


def test_explicit_versions_are_single(dual):
    dual.ok(RequestSign("s1", "app", "k1", 2, "", b"m"))
    assert dual.req("s1").dual_version == 0
    dual.rejects(RequestSign("s2", "app", "k1", 1, "", b"m"), Reason.VERSION_NOT_USABLE)


def test_revoking_the_previous_version_stops_dual_signing(dual):
    dual.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    dual.approve("s1", "alice")
    dual.approve("s1", "bob")
    dual.ok(RequestRevoke("rv", "ops", "k1", 1))
    dual.approve("rv", "alice")
    dual.approve("rv", "bob")
    req = dual.req("s1")
    assert req.state is RequestState.FAILED and req.failure == "version_revoked"
    assert not dual.m.dual_signable("k1", 1)
    dual.ok(RequestSign("s2", "app", "k1", 0, "", b"m"))
    assert dual.req("s2").dual_version == 0


def test_no_dual_sign_without_a_window(two):
    two.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert two.req("s1").dual_version == 0  # policy without a window


def test_no_dual_sign_after_a_rollback(dual):
    rollback(dual)
    dual.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    assert dual.req("s1").dual_version == 0  # primary by rollback: nothing dual-signs


def test_dual_sign_policy_rules(world):
    world.setup()
    world.rejects(
        world.policy_command("bad", grace_epochs=1, dual_sign_epochs=2), Reason.INVALID_POLICY
    )
    old = Policy("p", (), (), ("alice",), 1, 0, 0, 4, 1, False)
    assert rules.weaker_fields(rules.POLICY_WEAKER, old, dataclasses.replace(
        old, dual_sign_epochs=2)) == ["dual_sign_epochs"]  # fmt: skip
    assert rules.weaker_fields(
        rules.POLICY_WEAKER, dataclasses.replace(old, dual_sign_epochs=2), old
    ) == []
    # A lengthened window waits the governance time lock like any weakening change.
    world.govern(world.policy_command("p2", policy_id="p1", grace_epochs=4))
    req = world.govern(world.policy_command("p3", policy_id="p1", grace_epochs=4,
                                            dual_sign_epochs=2))  # fmt: skip
    assert req.effective_epoch  # it was time-locked
    assert world.m.state.policies["p1"].dual_sign_epochs == 2


def test_dual_sign_epochs_encoding_is_optional_and_bounded(world):
    plain = world.signed(world.policy_command())
    assert "dual_sign_epochs" not in msgpack.unpackb(encode_command(plain))
    assert decode_command(encode_command(plain)).dual_sign_epochs == 0
    with_window = world.signed(world.policy_command(dual_sign_epochs=5, grace_epochs=5))
    assert decode_command(encode_command(with_window)).dual_sign_epochs == 5
    with pytest.raises(DecodeError):
        encode_command(dataclasses.replace(plain, dual_sign_epochs=65_537))
    assert isinstance(plain, SetPolicy)


def test_policy_hash_covers_the_dual_sign_window():
    p = Policy("p", ("app",), ("sign",), ("alice",), 1, 0, 0, 4, 1, False)
    fields = {f: getattr(p, f) for f in ("policy_id", "requesters", "operations", "approvers",
              "k", "rotation_interval_s", "max_uses", "grace_epochs", "waiting_epochs",
              "escrow")}  # fmt: skip
    assert policy_hash_of(p) == policy_hash(**fields)  # unchanged without a window
    assert policy_hash_of(dataclasses.replace(p, dual_sign_epochs=2)) != policy_hash_of(p)


def test_snapshot_keeps_and_checks_dual_versions(dual):
    dual.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    data = dual.snap()
    assert Machine.from_snapshot(data, genesis=dual.m.genesis).snapshot() == data
    st = decode_state(data)
    st.requests["app:s1"].dual_version = 2  # not what version 2 replaced
    with pytest.raises(DecodeError, match="dual version"):
        Machine(genesis=dual.m.genesis).restore(encode_state(st))


def test_a_decrypt_confirmation_stays_at_most_64_bytes(ready):
    from node.state import RequestDecrypt

    ready.active_key("kek", "encrypt")
    ready.ok(RequestDecrypt("d1", "app", "kek", 1, "", b"c"))
    ready.approve("d1", "alice")
    ready.approve("d1", "bob")
    ready.rejects(RecordResult("r", "node-1", "d1", bytes(65)), Reason.BAD_RESULT)
    assert ready.ok(RecordResult("r2", "node-1", "d1", bytes(64))).code == "approved"
