"""One test per transition and per rejection of the custody state machine."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from node.state import (
    AddPrincipal,
    AdvanceEpoch,
    CreateKey,
    Machine,
    Op,
    Reason,
    RecordDkgResult,
    RecordFailure,
    RecordResult,
    Rejected,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRotate,
    RequestSign,
    RequestState,
    VersionState,
)
from node.state.commands import MemberSpec, PrincipalSpec, SetPolicy

RESULT = hashlib.sha512(b"a signature").digest()
MEMBERS = ("node-1", "node-2", "node-3")


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_registers_cluster_and_starts_epoch_1(world):
    out = world.ok(world.bootstrap_command())
    st = world.m.state
    assert out.code == "ok" and out.seq == 0
    assert st.cluster_id == "cluster-a" and st.threshold == 2 and st.epoch == 1
    assert sorted(st.members) == ["node-1", "node-2", "node-3"]
    assert st.members["node-2"].index == 2 and st.principals["alice"].role.value == "approver"


def test_bootstrap_twice_rejected(world):
    world.ok(world.bootstrap_command())
    world.rejects(world.bootstrap_command("boot2"), Reason.ALREADY_BOOTSTRAPPED)


def test_bootstrap_by_non_operator_rejected(world):
    world.rejects(lambda: world.boot_with(world.bootstrap_command(author="alice")),
                  Reason.UNAUTHORIZED)  # fmt: skip


def test_bootstrap_bad_threshold_rejected(world):
    world.rejects(lambda: world.boot_with(world.bootstrap_command(threshold=4)),
                  Reason.INVALID_CLUSTER)  # fmt: skip


def test_bootstrap_duplicate_names_and_indices_rejected(world):
    good = world.bootstrap_command()
    extra = PrincipalSpec("alice", "client", b"")
    dup_name = dataclasses.replace(good, request_id="b1", principals=(*good.principals, extra))
    world.rejects(lambda: world.boot_with(dup_name), Reason.DUPLICATE_NAME)
    m = good.members
    dup_index = dataclasses.replace(
        good, request_id="b2", members=(m[0], MemberSpec("node-2", 1, world.public_key("x")))
    )
    world.rejects(lambda: world.boot_with(dup_index), Reason.INVALID_CLUSTER)


def test_bootstrap_approver_without_key_rejected(world):
    good = world.bootstrap_command()
    bad = dataclasses.replace(
        good, request_id="b", principals=(*good.principals, PrincipalSpec("dan", "approver", b""))
    )
    world.rejects(lambda: world.boot_with(bad), Reason.INVALID_PRINCIPAL)


def test_bootstrap_must_match_the_configured_genesis(world):
    """Regression (issue 9.3): bootstrap was first-come: anyone's self-signed bootstrap
    won. Only the bootstrap whose digest cluster initialisation configured is accepted."""
    from node.state import Machine

    rogue = dataclasses.replace(world.bootstrap_command(), cluster_id="rogue")
    world.rejects(rogue, Reason.INVALID_CLUSTER)
    assert world.m.state.outcomes == {}  # not remembered: nobody proved anything
    world.ok(world.bootstrap_command())
    unconfigured = Machine()
    out = unconfigured.apply_command(world.signed(world.bootstrap_command()))
    assert out.code == Reason.INVALID_CLUSTER.value and not unconfigured.state.bootstrapped


def test_threshold_one_needs_the_loud_option(world):
    """Regression (issue 9.3): a 1-of-3 cluster was accepted."""
    one = world.bootstrap_command(threshold=1)
    world.rejects(lambda: world.boot_with(one), Reason.INVALID_CLUSTER)
    out = world.boot_with(dataclasses.replace(one, unsafe=True))
    assert out.ok and "UNSAFE" in out.detail
    assert world.m.state.unsafe and world.m.state.audit[-1].outcome == "ok!unsafe"


def test_member_name_must_match_its_index(world):
    good = world.bootstrap_command()
    m = good.members
    swapped = (MemberSpec("node-1", 2, m[0].public_key), MemberSpec("node-2", 1, m[1].public_key))
    bad = dataclasses.replace(good, members=(*swapped, m[2]))
    world.rejects(lambda: world.boot_with(bad), Reason.INVALID_CLUSTER)


def test_commands_before_bootstrap_rejected(world):
    world.rejects(world.policy_command(), Reason.NOT_BOOTSTRAPPED)


# --------------------------------------------------------- principals, policy


def test_add_principal(ready):
    ready.govern(AddPrincipal("ap", "ops", "dave", "approver", ready.public_key("dave")))
    assert ready.m.state.principals["dave"].public_key == ready.public_key("dave")


def test_add_principal_duplicate_rejected(ready):
    ready.rejects(AddPrincipal("ap", "ops", "alice", "client", b""), Reason.DUPLICATE_NAME)


def test_principal_names_follow_the_pki_rule(ready):
    """Regression (issue 9.3): "Alice" and "alice", or a principal called "node-1", were
    distinct valid names in the state but cannot both map to a certificate identity."""
    from node.state import DecodeError, encode_command

    for name in ("Alice", "node-1", "node-9", "a.b", "1abc", "x" * 33, "al@ice"):
        with pytest.raises(DecodeError, match="principal name"):
            encode_command(ready.signed(AddPrincipal("ap", "ops", name, "client", b"")))
    for member in ("node-0", "node-01", "node-16", "Node-1"):
        raw = dataclasses.replace(ready.bootstrap_command(), members=(
            MemberSpec(member, 1, ready.public_key("node-1")),))  # fmt: skip
        with pytest.raises(DecodeError):
            encode_command(ready.signed(raw))


def test_unknown_author_rejected(ready):
    ready.rejects(AddPrincipal("ap", "mallory", "m", "client", b""), Reason.UNKNOWN_AUTHOR)


def test_roles_enforced(ready):
    ready.rejects(AddPrincipal("x1", "app", "m", "client", b""), Reason.UNAUTHORIZED)
    by_approver = SetPolicy(
        "x2", "alice", "p2", ("app",), ("sign",), ("alice",), 1, 0, 0, 0, 1, False
    )
    ready.rejects(by_approver, Reason.UNAUTHORIZED)
    ready.rejects(CreateKey("x3", "app", "k9", "sign", "p1"), Reason.UNAUTHORIZED)


def test_auditor_is_read_only(ready):
    for cmd in [
        AddPrincipal("q1", "aud", "m", "client", b""),
        AdvanceEpoch("q2", "aud", 2, 0),
        CreateKey("q3", "aud", "k9", "sign", "p1"),
        RequestSign("q4", "aud", "k9", 0, "", b"m"),
        RequestRevoke("q5", "aud", "k9", 1),
    ]:
        ready.rejects(cmd, Reason.UNAUTHORIZED)


def test_set_policy_and_replace(ready):
    pol = ready.m.state.policies["p1"]
    assert pol.k == 2 and pol.approvers == ("alice", "bob", "carol")
    ready.govern(ready.policy_command("pol2", k=3))
    assert ready.m.state.policies["p1"].k == 3


def test_set_policy_rejections(ready):
    ready.rejects(ready.policy_command("x1", k=4), Reason.INVALID_POLICY)
    ready.rejects(ready.policy_command("x2", approvers=("alice", "zed")), Reason.UNKNOWN_PRINCIPAL)
    ready.rejects(ready.policy_command("x3", approvers=("alice", "app")), Reason.INVALID_POLICY)
    ready.rejects(ready.policy_command("x4", requesters=("alice",)), Reason.INVALID_POLICY)


# -------------------------------------------------------------------- epochs


def test_advance_epoch_only_forward(ready):
    ready.advance(by=3)
    assert ready.m.state.epoch == 4
    ready.rejects(AdvanceEpoch("e-same", "node-1", 4, 0), Reason.EPOCH_NOT_FORWARD)
    ready.rejects(AdvanceEpoch("e-back", "node-2", 2, 0), Reason.EPOCH_NOT_FORWARD)
    ready.rejects(AdvanceEpoch("e-ops", "ops", 5, 0), Reason.UNAUTHORIZED)


def test_epoch_moves_on_threshold_votes_with_median_clock(ready):
    assert ready.ok(AdvanceEpoch("v1", "node-1", 2, 900)).code == "pending"
    assert ready.m.state.epoch == 1
    ready.rejects(AdvanceEpoch("v1b", "node-1", 2, 5), Reason.DUPLICATE_POST)
    assert ready.ok(AdvanceEpoch("v2", "node-3", 2, 100)).code == "ok"
    assert ready.m.state.epoch == 2 and ready.m.state.epoch_votes == {}
    ready.rejects(AdvanceEpoch("v3", "node-2", 2, 0), Reason.EPOCH_NOT_FORWARD)  # late vote


def test_one_member_cannot_jump_the_epoch(ready):
    """Regression (issue 9.1): one member's signed advance_epoch to 2^62 - 1 ended every
    grace period at once and pushed every later activation epoch out of the schema."""
    from node.state.commands import MAX_EPOCH, U62, DecodeError, encode_command

    with pytest.raises(DecodeError):
        encode_command(ready.signed(AdvanceEpoch("far", "node-1", U62, 0)))
    ready.rejects(AdvanceEpoch("jump", "node-1", MAX_EPOCH, 0), Reason.INVALID_ARGUMENT)
    ready.rejects(AdvanceEpoch("skip", "node-1", 3, 0), Reason.INVALID_ARGUMENT)
    assert ready.m.state.epoch == 1


def test_one_member_cannot_skip_a_grace_period(ready):
    """Regression (issue 9.1): advancing alone, step by step, does not move the epoch."""
    ready.active_key("k1")
    rotate_to_pending(ready, posts=MEMBERS)
    ready.advance()  # v1 retires; grace is 2 epochs
    start = ready.m.state.epoch
    ready.ok(AdvanceEpoch("solo-0", "node-1", start + 1, 0))
    for i in range(1, 5):  # repeating the vote, or voting further ahead, does not help
        ready.do(AdvanceEpoch(f"solo-{i}", "node-1", start + i, 0))
    assert ready.m.state.epoch == start
    ready.rejects(RequestDestroy("ds", "ops", "k1", 1), Reason.GRACE_PERIOD)


def test_derived_epochs_stay_inside_the_schema():
    from node.state.commands import MAX_EPOCH, U32, U62

    assert MAX_EPOCH + U32 + U32 < U62  # activation, grace and time-lock sums all fit


# ---------------------------------------------------------- key creation, DKG


def test_create_key_full_lifecycle_to_active(ready):
    out = ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    assert out.code == "pending"
    assert ready.approve("ck", "alice").code == "pending"
    assert ready.approve("ck", "bob").code == "approved"
    key = ready.m.state.keys["k1"]
    assert key.versions[1].state is VersionState.PENDING
    outs = ready.post_dkg("ck")
    assert [o.code for o in outs] == ["ok", "ok", "executed"]
    v = key.versions[1]
    assert (
        v.activation_epoch == 2
        and v.group_public_key == ready.GPK
        and v.verification_shares == ready.VSHARES
    )
    assert ready.m.active_version("k1") is None  # pending until its epoch
    assert ready.m.active_version("k1", epoch=2) == 1  # scheduled
    ready.advance(at=1000)
    assert v.state is VersionState.ACTIVE and key.primary == 1 and v.activated_at == 1000
    assert ready.req("ck").state is RequestState.EXECUTED


def test_create_key_rejections(ready):
    ready.active_key("k1")
    ready.rejects(CreateKey("x1", "ops", "k1", "sign", "p1"), Reason.KEY_EXISTS)
    ready.rejects(CreateKey("x2", "ops", "k2", "sign", "nope"), Reason.UNKNOWN_POLICY)


def test_dkg_post_before_approval_rejected(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.rejects(
        RecordDkgResult("d", "node-1", "ck", ready.GPK, ready.VSHARES), Reason.NOT_APPROVED
    )


def test_dkg_post_rejections(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    ready.ok(RecordDkgResult("d1", "node-1", "ck", ready.GPK, ready.VSHARES))
    ready.rejects(
        RecordDkgResult("d2", "node-1", "ck", ready.GPK, ready.VSHARES), Reason.DUPLICATE_POST
    )
    ready.rejects(
        RecordDkgResult("d3", "node-2", "ck", ready.GPK, ready.VSHARES[:2]), Reason.INVALID_ARGUMENT
    )
    ready.rejects(RecordDkgResult("d4", "ops", "ck", ready.GPK, ready.VSHARES), Reason.UNAUTHORIZED)
    ready.rejects(
        RecordDkgResult("d5", "node-2", "nope", ready.GPK, ready.VSHARES), Reason.UNKNOWN_REQUEST
    )


def test_dkg_mismatch_aborts_version(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    ready.post_dkg("ck", ("node-1", "node-2"))
    out = ready.do(RecordDkgResult("d3", "node-3", "ck", bytes(32), ready.VSHARES))
    assert out.ok and out.code == "failed"
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.DESTROYED
    req = ready.req("ck")
    assert req.state is RequestState.FAILED and req.failure == "dkg_mismatch"
    ready.advance()
    assert ready.m.active_version("k1") is None


def test_record_failure_of_dkg_aborts_version(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.rejects(RecordFailure("f0", "node-1", "ck", "dkg timeout"), Reason.NOT_APPROVED)
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    out = ready.ok(RecordFailure("f1", "node-1", "ck", "dkg timeout"))
    assert out.code == "failed"
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.DESTROYED
    # The key can be given a version again by a rotation.
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    assert ready.m.state.keys["k1"].lifecycle_request == "ops:rot"


# ------------------------------------------------------------ sign / decrypt


def test_sign_request_lifecycle(ready):
    ready.active_key("k1")
    out = ready.ok(RequestSign("s1", "app", "k1", 0, "release", b"artifact"))
    assert out.code == "pending"
    req = ready.req("s1")
    assert req.version == 1 and req.payload == b"artifact"
    ready.approve("s1", "carol")
    assert ready.approve("s1", "alice").code == "approved"
    assert ready.m.executable("app:s1") is req
    sig = ready.result("s1")
    out = ready.ok(RecordResult("res", "node-2", "s1", sig))
    assert out.code == "executed"
    assert req.result == sig and req.payload == b""  # payload not kept
    assert ready.m.state.keys["k1"].versions[1].uses == 1


def test_decrypt_request_lifecycle(ready):
    ready.active_key("kek", "encrypt")
    ready.ok(RequestDecrypt("dc", "app", "kek", 1, "dek:db", b"\x01" * 80))
    ready.approve("dc", "alice")
    ready.approve("dc", "bob")
    out = ready.ok(RecordResult("res", "node-1", "dc", ready.result("dc")))
    assert out.code == "approved" and out.detail == "confirmations 1/2"
    ready.rejects(RecordResult("res-again", "node-1", "dc", b"\x02" * 64), Reason.DUPLICATE_POST)
    assert ready.ok(RecordResult("res2", "node-3", "dc", ready.result("dc"))).code == "executed"
    assert ready.m.state.keys["kek"].versions[1].uses == 1


def test_sign_request_rejections(ready):
    ready.active_key("k1")
    ready.active_key("kek", "encrypt")
    ready.rejects(RequestSign("x1", "app", "nokey", 0, "", b"m"), Reason.UNKNOWN_KEY)
    ready.rejects(RequestSign("x2", "app", "kek", 0, "", b"m"), Reason.WRONG_PURPOSE)
    ready.rejects(RequestDecrypt("x3", "app", "k1", 1, "", b"c"), Reason.WRONG_PURPOSE)
    ready.rejects(RequestSign("x4", "app", "k1", 7, "", b"m"), Reason.UNKNOWN_VERSION)
    ready.govern(AddPrincipal("ap", "ops", "app2", "client", b""))
    ready.rejects(RequestSign("x5", "app2", "k1", 0, "", b"m"), Reason.OPERATION_NOT_ALLOWED)


def test_policy_operations_restrict_requests(ready):
    ready.active_key("k1")
    ready.govern(ready.policy_command("pol2", operations=("decrypt",)))
    ready.rejects(RequestSign("x", "app", "k1", 0, "", b"m"), Reason.OPERATION_NOT_ALLOWED)


def test_sign_without_active_version_rejected(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.rejects(RequestSign("x", "app", "k1", 0, "", b"m"), Reason.VERSION_NOT_USABLE)


def test_result_rejections(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.rejects(RecordResult("x1", "node-1", "s1", ready.result("s1")), Reason.NOT_APPROVED)
    create_rid = ready.m.state.keys["k1"].versions[1].request_id
    ready.rejects(RecordResult("x2", "node-1", create_rid, RESULT), Reason.WRONG_REQUEST_KIND)
    ready.rejects(RecordResult("x3", "app", "s1", ready.result("s1")), Reason.UNAUTHORIZED)
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordResult("r1", "node-1", "s1", ready.result("s1")))
    ready.rejects(RecordResult("x4", "node-2", "s1", ready.result("s1")), Reason.REQUEST_DECIDED)
    ready.rejects(RecordFailure("x5", "node-2", "s1", "late"), Reason.REQUEST_DECIDED)


def test_one_member_cannot_complete_a_sign_request_without_the_signature(ready):
    """Regression (issue 9.3): any member's record_result marked any approved sign request
    executed, for everyone. A sign result is the signature, verified on apply."""
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    other_msg = ready.GROUP.sign(b"another message")
    for i, bad in enumerate((RESULT, other_msg, ready.private_key("node-1").sign(b"m"))):
        ready.rejects(RecordResult(f"fake{i}", "node-1", "s1", bad), Reason.BAD_RESULT)
    assert ready.req("s1").state is RequestState.APPROVED


def test_one_member_cannot_fail_a_request_for_everyone(ready):
    """Regression (issue 9.3): one member's record_failure cancelled a request that the
    other members could still execute."""
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordFailure("f1", "node-3", "s1", "I refuse"))
    assert ready.m.executable("app:s1").state is RequestState.APPROVED
    ready.ok(RecordResult("res", "node-1", "s1", ready.result("s1")))


def test_record_failure_of_sign(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    out = ready.ok(RecordFailure("f", "node-3", "s1", "too few nodes"))
    assert out.code == "approved"  # n=3, t=2: node-1 and node-2 can still sign
    ready.rejects(RecordFailure("f-again", "node-3", "s1", "still"), Reason.DUPLICATE_POST)
    assert ready.ok(RecordFailure("f2", "node-1", "s1", "too few nodes")).code == "failed"
    req = ready.req("s1")
    assert req.failure == "too few nodes" and req.payload == b""
    assert ready.m.state.keys["k1"].versions[1].uses == 0


# -------------------------------------------------------------- rotation


def test_rotation_retires_previous_version(ready):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    key = ready.m.state.keys["k1"]
    assert key.versions[2].state is VersionState.PENDING
    ready.post_dkg("rot")
    e = ready.m.state.epoch
    ready.advance()
    assert key.primary == 2
    assert key.versions[1].state is VersionState.RETIRED and key.versions[1].retired_epoch == e + 1
    assert ready.m.active_version("k1") == 2
    assert ready.m.active_version("k1", epoch=e) == 1  # history is preserved
    assert ready.m.may_use("k1", 1, Op.VERIFY) and not ready.m.may_use("k1", 1, Op.SIGN)
    assert ready.m.may_use("k1", 1, Op.SIGN, epoch=e)


def test_rotation_fails_open_sign_requests_on_retired_version(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.post_dkg("rot")
    ready.advance()
    req = ready.req("s1")
    assert req.state is RequestState.FAILED and req.failure == "version_retired"


def test_decrypt_on_retired_version_still_allowed(ready):
    ready.active_key("kek", "encrypt")
    ready.ok(RequestRotate("rot", "ops", "kek", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.post_dkg("rot")
    ready.advance()
    ready.ok(RequestDecrypt("dc", "app", "kek", 1, "", b"c"))
    assert ready.m.may_use("kek", 1, Op.DECRYPT) and not ready.m.may_use("kek", 1, Op.ENCRYPT)


def test_rotation_in_progress_rejected(ready):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.rejects(RequestRotate("rot2", "ops", "k1", 0), Reason.ROTATION_IN_PROGRESS)
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.post_dkg("rot")  # done but not yet active: still in progress
    ready.rejects(RequestRotate("rot3", "ops", "k1", 0), Reason.ROTATION_IN_PROGRESS)


def test_scheduled_rotation_by_node_when_due(world):
    world.setup(rotation_interval_s=100)
    world.active_key("k1", at=1000)
    world.rejects(RequestRotate("early", "node-1", "k1", 1099), Reason.ROTATION_NOT_DUE)
    assert not world.m.rotation_due("k1", 1099) and world.m.rotation_due("k1", 1100)
    out = world.ok(RequestRotate("due", "node-1", "k1", 1100))
    assert out.code == "approved"  # the policy schedule is its approval
    assert world.m.state.keys["k1"].versions[2].state is VersionState.PENDING


def test_usage_based_rotation_due(world):
    world.setup(max_uses=1)
    world.active_key("k1")
    assert not world.m.rotation_due("k1", 0)
    world.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    world.approve("s1", "alice")
    world.approve("s1", "bob")
    world.ok(RecordResult("r", "node-1", "s1", world.result("s1")))
    assert world.m.rotation_due("k1", 0)


# ---------------------------------------------------- revocation, destruction


def test_revoke_active_version(ready):
    ready.active_key("k1")
    ready.advance()
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    e = ready.m.state.epoch
    assert ready.approve("rv", "bob").code == "executed"
    key = ready.m.state.keys["k1"]
    v = key.versions[1]
    assert v.state is VersionState.REVOKED and v.revoked_epoch == e and key.primary == 0
    assert not ready.m.may_use("k1", 1, Op.VERIFY)
    assert ready.m.active_version("k1") is None
    assert ready.m.may_use("k1", 1, Op.SIGN, epoch=e - 1)
    assert ready.req("s1").failure == "version_revoked"


def test_destroy_requires_retired_past_grace_or_revoked(ready):
    ready.active_key("k1")
    ready.rejects(RequestDestroy("x1", "ops", "k1", 1), Reason.INVALID_TRANSITION)
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.post_dkg("rot")
    ready.advance()
    ready.rejects(RequestDestroy("x2", "ops", "k1", 1), Reason.GRACE_PERIOD)
    ready.advance(by=2)
    ready.ok(RequestDestroy("ds", "ops", "k1", 1))
    ready.approve("ds", "alice")
    assert ready.approve("ds", "bob").code == "executed"
    v = ready.m.state.keys["k1"].versions[1]
    assert v.state is VersionState.DESTROYED and v.destroyed_epoch == ready.m.state.epoch
    assert not ready.m.may_use("k1", 1, Op.VERIFY)
    ready.rejects(RequestRevoke("x3", "ops", "k1", 1), Reason.INVALID_TRANSITION)


def test_destroy_revoked_version_and_no_way_back(ready):
    ready.active_key("k1")
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    ready.rejects(RequestRevoke("x1", "ops", "k1", 1), Reason.INVALID_TRANSITION)
    ready.ok(RequestDestroy("ds", "ops", "k1", 1))
    ready.approve("ds", "alice")
    ready.approve("ds", "bob")
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.DESTROYED


def test_revoke_and_destroy_unknowns_rejected(ready):
    ready.active_key("k1")
    ready.rejects(RequestRevoke("x1", "ops", "nope", 1), Reason.UNKNOWN_KEY)
    ready.rejects(RequestRevoke("x2", "ops", "k1", 9), Reason.UNKNOWN_VERSION)
    ready.rejects(RequestRevoke("x3", "app", "k1", 1), Reason.UNAUTHORIZED)


def test_concurrent_revokes_second_fails(ready):
    ready.active_key("k1")
    ready.ok(RequestRevoke("rv1", "ops", "k1", 1))
    ready.ok(RequestRevoke("rv2", "ops", "k1", 1))
    ready.approve("rv1", "alice")
    ready.approve("rv1", "bob")
    assert ready.req("rv2").state is RequestState.FAILED


# ------------------------------------------------------------ exactly-once


def test_reapplied_request_id_returns_first_outcome(ready):
    ready.active_key("k1")
    cmd = RequestSign("s1", "app", "k1", 0, "", b"m")
    first = ready.ok(cmd)
    snap = ready.snap()
    again = ready.do(cmd)
    assert again == first and ready.snap() == snap  # nothing changed, no new audit record


def test_reapplied_rejection_returns_first_outcome(ready):
    cmd = AdvanceEpoch("e", "node-1", 1, 0)
    first = ready.do(cmd)
    assert not first.ok
    snap = ready.snap()
    assert ready.do(cmd) == first and ready.snap() == snap


def test_reused_request_id_with_other_command_rejected(ready):
    ready.ok(AdvanceEpoch("e", "node-1", 2, 0))
    out = ready.do(AdvanceEpoch("e", "node-1", 2, 5))
    assert not out.ok and out.code == Reason.REQUEST_ID_CONFLICT.value
    assert ready.m.state.epoch_votes["node-1"].at == 0
    assert ready.m.state.outcomes["node-1:e"].outcome.ok  # first outcome kept


def test_apply_bytes_roundtrip_and_exactly_once(world):
    from node.state import decode_outcome, encode_command

    m = Machine(genesis=world.m.genesis)
    data = encode_command(world.signed(world.bootstrap_command()))
    first = decode_outcome(m.apply(data))
    assert first.ok and decode_outcome(m.apply(data)) == first
    assert len(m.state.audit) == 1


def test_open_requests_query(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    # by ref; "ops:boot" is the bootstrap's own create_key of the audit key (approved)
    assert [r.request_id for r in ready.m.open_requests()] == ["s1", "boot", "rot"]
    assert [r.request_id for r in ready.m.open_requests("sign")] == ["s1"]
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordResult("res", "node-1", "s1", ready.result("s1")))
    assert [r.request_id for r in ready.m.open_requests()] == ["boot", "rot"]


# ------------------------------------------------- remaining transitions, tables


def rotate_to_pending(world, rid="rot", posts=()):
    world.ok(RequestRotate(rid, "ops", "k1", 0))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    world.post_dkg(rid, posts)


def test_revoke_pending_version_stops_rotation(ready):
    ready.active_key("k1")
    rotate_to_pending(ready, posts=("node-1",))
    ready.ok(RequestRevoke("rv", "ops", "k1", 2))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    key = ready.m.state.keys["k1"]
    assert key.versions[2].state is VersionState.REVOKED
    assert ready.req("rot").state is RequestState.FAILED
    assert ready.req("rot").failure == "version_revoked"
    assert key.lifecycle_request == ""
    late = RecordDkgResult("late", "node-2", "rot", ready.GPK, ready.VSHARES)
    ready.rejects(late, Reason.REQUEST_DECIDED)
    ready.advance(by=3)
    assert key.primary == 1 and ready.m.active_version("k1") == 1


def test_revoke_scheduled_version_never_activates(ready):
    ready.active_key("k1")
    rotate_to_pending(ready, posts=MEMBERS)
    ready.ok(RequestRevoke("rv", "ops", "k1", 2))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    ready.advance(by=2)
    assert ready.m.state.keys["k1"].versions[2].state is VersionState.REVOKED
    assert ready.m.active_version("k1") == 1


def test_revoke_retired_version(ready):
    ready.active_key("k1")
    rotate_to_pending(ready, posts=MEMBERS)
    ready.advance()
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.REVOKED
    assert ready.m.state.keys["k1"].primary == 2  # the new primary is untouched
    assert not ready.m.may_use("k1", 1, Op.VERIFY)


def test_revocation_fails_approved_request(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    req = ready.req("s1")
    assert req.state is RequestState.FAILED and req.failure == "version_revoked"
    ready.rejects(RecordResult("late", "node-1", "s1", ready.result("s1")), Reason.REQUEST_DECIDED)


def test_limits(ready, monkeypatch):
    from node.state import machine

    monkeypatch.setattr(machine, "MAX_PRINCIPALS", len(ready.m.state.principals))
    ready.rejects(AddPrincipal("ap", "ops", "zed", "client", b""), Reason.LIMIT_REACHED)
    monkeypatch.setattr(machine, "MAX_KEYS", 0)
    ready.rejects(CreateKey("ck", "ops", "k1", "sign", "p1"), Reason.LIMIT_REACHED)
    monkeypatch.setattr(machine, "MAX_POLICIES", 1)
    ready.rejects(ready.policy_command("pp", "p2"), Reason.LIMIT_REACHED)
    ready.govern(ready.policy_command("pp2", "p1", k=1))  # replacing an existing one is fine


def test_invalid_principal_key_rejected(ready):
    # 32 bytes that are not a valid encoding are refused if the library refuses them;
    # a wrong length never reaches the machine (schema), so test the empty-key rule here.
    ready.rejects(AddPrincipal("ap", "ops", "dan", "approver", b""), Reason.INVALID_PRINCIPAL)


def test_version_table_only_moves_forward():
    from node.state import rules

    order = list(VersionState)
    for (src, event), dst in rules.VERSION_TRANSITIONS.items():
        if event == "rollback":  # the one way back, and only retired -> active
            assert (src, dst) == (VersionState.RETIRED, VersionState.ACTIVE)
            continue
        assert order.index(dst) > order.index(src), (src, event, dst)
    assert [k for k in rules.VERSION_TRANSITIONS if k[1] == "rollback"] == [
        (VersionState.RETIRED, "rollback")
    ]
    events = {e for _, e in rules.VERSION_TRANSITIONS}
    for src in VersionState:
        for event in events:
            if (src, event) in rules.VERSION_TRANSITIONS:
                assert rules.version_step(src, event) is rules.VERSION_TRANSITIONS[(src, event)]
            else:
                with pytest.raises(Rejected) as info:
                    rules.version_step(src, event)
                assert info.value.reason is Reason.INVALID_TRANSITION
    for src in (VersionState.REVOKED, VersionState.DESTROYED):
        assert rules.VERSION_USES[src] == frozenset()


def test_request_table_rejections():
    from node.state import rules

    with pytest.raises(Rejected) as info:
        rules.request_step(RequestState.PENDING, "complete")
    assert info.value.reason is Reason.NOT_APPROVED
    for done in (RequestState.EXECUTED, RequestState.FAILED):
        for event in ("quorum", "complete", "fail"):
            with pytest.raises(Rejected) as info:
                rules.request_step(done, event)
            assert info.value.reason is Reason.REQUEST_DECIDED


def test_public_key_belongs_to_one_identity(ready):
    # one approver key under two names would be two votes
    ready.rejects(
        AddPrincipal("ap", "ops", "alice2", "approver", ready.public_key("alice")),
        Reason.INVALID_PRINCIPAL,
    )
    ready.rejects(
        AddPrincipal("ap2", "ops", "nn", "operator", ready.public_key("node-1")),
        Reason.INVALID_PRINCIPAL,
    )
    fresh = type(ready)()
    good = fresh.bootstrap_command()
    twin = PrincipalSpec("bob2", "approver", fresh.public_key("bob"))
    bad = dataclasses.replace(good, principals=(*good.principals, twin))
    fresh.rejects(lambda: fresh.boot_with(bad), Reason.INVALID_PRINCIPAL)


def test_named_activation_epoch(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1", activate_epoch=5))
    assert ready.req("ck").activate_epoch == 5
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    ready.post_dkg("ck")
    v = ready.m.state.keys["k1"].versions[1]
    assert v.activation_epoch == 5
    ready.advance(by=3)  # epoch 4
    assert v.state is VersionState.PENDING and ready.m.active_version("k1") is None
    assert ready.m.active_version("k1", epoch=5) == 1
    ready.advance()  # epoch 5
    assert v.state is VersionState.ACTIVE


def test_named_activation_epoch_later_than_dkg_allows(ready):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0, activate_epoch=3))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.advance(by=2)  # epoch 4: the named epoch has passed before the DKG finished
    ready.post_dkg("rot")
    assert ready.m.state.keys["k1"].versions[2].activation_epoch == 5  # epoch + waiting


def test_named_activation_epoch_in_the_past_rejected(ready):
    ready.advance(by=2)
    ready.rejects(
        CreateKey("ck", "ops", "k1", "sign", "p1", activate_epoch=3), Reason.INVALID_ARGUMENT
    )


def test_open_request_limits(ready, monkeypatch):
    from node.state import machine

    ready.active_key("k1")
    monkeypatch.setattr(machine, "MAX_OPEN_PER_AUTHOR", 2)
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.ok(RequestSign("s2", "app", "k1", 0, "", b"m"))
    ready.rejects(RequestSign("s3", "app", "k1", 0, "", b"m"), Reason.LIMIT_REACHED)
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))  # other authors are not affected
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.ok(RecordResult("res", "node-1", "s1", ready.result("s1")))  # s1 decided: room again
    ready.ok(RequestSign("s4", "app", "k1", 0, "", b"m"))
    assert sorted(ready.m.state.open) == ["app:s2", "app:s4", "ops:boot", "ops:rv"]
    monkeypatch.setattr(machine, "MAX_OPEN_REQUESTS", 3)
    ready.rejects(RequestRotate("rot", "ops", "k1", 0), Reason.LIMIT_REACHED)


def test_request_ids_are_scoped_by_author(ready):
    """Regression (issue 9.3): request ids were global, so a client could take the id of
    an operator's future command, which was then refused as a conflict."""
    ready.active_key("k1")
    ready.ok(RequestSign("rot-2025", "app", "k1", 0, "", b"squat"))
    out = ready.ok(RequestRotate("rot-2025", "ops", "k1", 0))
    assert out.code == "pending"
    assert {"app:rot-2025", "ops:rot-2025"} <= set(ready.m.state.requests)


def test_rejections_of_unproven_authors_are_not_remembered(ready):
    """Regression (issue 9.3): rejected commands of unknown authors (or forged in a real
    author's name) were remembered forever, and a forgery took the real author's id."""
    before = dict(ready.m.state.outcomes)
    ready.rejects(AddPrincipal("x1", "mallory", "m", "client", b""), Reason.UNKNOWN_AUTHOR)
    forged = ready.signed(RequestRotate("rot", "ops", "k9", 0), signer="node-1")
    ready.rejects(forged, Reason.BAD_SIGNATURE)
    ready.rejects(CreateKey("x3", "app", "k9", "sign", "p1"), Reason.UNAUTHORIZED)
    assert ready.m.state.outcomes == before
    ready.active_key("k9")
    assert ready.ok(RequestRotate("rot", "ops", "k9", 0)).code == "pending"  # id still free
