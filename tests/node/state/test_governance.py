"""Governance by quorum (issue 9 item 1, DESIGN.md §2 invariant 10): every attack as a
regression test, the time lock, cancel, removal, re-keying, membership, and a property:
without k genuine approvers nothing is authorised and nothing about who approves changes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.state import (
    AddMember,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    CancelRequest,
    CreateKey,
    DecodeError,
    Machine,
    Reason,
    RecordFailure,
    RecordResult,
    Rejected,
    RekeyPrincipal,
    RemoveMember,
    RemovePrincipal,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRotate,
    RequestSign,
    RequestState,
    SetGovernance,
    SetPolicy,
    SetThreshold,
    VersionState,
    encode_command,
)
from node.state.approvals import sign_approval
from node.state.commands import MAX_TIME_LOCK_EPOCHS
from node.state.snapshot import decode_state, encode_state

RS = RequestState


def _who_approves(w) -> tuple:
    st = w.m.state
    return (
        dict(st.policies), dict(st.principals), st.governance, dict(st.members), st.threshold,
    )  # fmt: skip


def _not_executable(w, ref: str) -> Reason:
    with pytest.raises(Rejected) as info:
        w.m.executable(ref)
    return info.value.reason


# ------------------------------------------------------------ the attacks


def test_one_operator_alone_cannot_take_over_approval(ready):
    """Regression (issue 9 item 1): one operator registered an approver whose key it
    holds, rewrote the policy to `approvers=[that one], k=1`, and then got a client's sign
    request approved and a key version revoked and destroyed, with nobody else involved."""
    ready.active_key("k1")
    before = repr(_who_approves(ready))
    ready.do(AddPrincipal("mal-1", "ops", "mallory", "approver", ready.public_key("mallory")))
    ready.do(ready.policy_command("mal-2", approvers=("mallory",), k=1))
    assert "mallory" not in ready.m.state.principals
    assert repr(_who_approves(ready)) == before
    ready.ok(RequestSign("s1", "app", "k1", 0, "release", b"evil artifact"))
    assert not ready.approve("s1", "mallory").ok
    assert ready.req("s1").state is RS.PENDING
    assert _not_executable(ready, ready.req("s1").ref) is Reason.NOT_APPROVED
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    assert not ready.approve("rv", "mallory").ok
    ready.do(RequestDestroy("ds", "ops", "k1", 1))
    if "ops:ds" in ready.m.state.requests:
        ready.approve("ds", "mallory")
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.ACTIVE


def test_one_approver_alone_cannot_lower_a_quorum(ready):
    """Regression (issue 9 item 1): one approver (with an operator to submit for it) cut
    the policy down to itself, `k=1`, and then approved a sign request alone."""
    ready.active_key("k1")
    ready.do(ready.policy_command("low", approvers=("alice",), k=1))
    low = [r for r in ready.m.state.requests.values() if r.request_id == "low"]
    if low:  # governance request: alice's vote is one of the k needed
        ready.approve("low", "alice")
        assert ready.req("low").state is RS.PENDING
    assert ready.m.state.policies["p1"].k == 2
    ready.ok(RequestSign("s1", "app", "k1", 0, "release", b"artifact"))
    ready.approve("s1", "alice")
    assert ready.req("s1").state is RS.PENDING
    with pytest.raises(Rejected):
        ready.m.executable(ready.req("s1").ref)


def test_weakening_change_waits_for_its_time_lock(ready):
    """Regression (issue 9 item 1): a new approver took effect at once; now a weakening
    change waits `time_lock_epochs` after its quorum before it takes effect, loudly."""
    out = ready.do(AddPrincipal("ap", "ops", "dave", "approver", ready.public_key("dave")))
    assert "dave" not in ready.m.state.principals
    assert out.code == "pending" and "WEAKENING" in out.detail
    assert ready.m.state.audit[-1].outcome == "pending!weakening"
    ready.approve("ap", "alice")
    out = ready.approve("ap", "bob")
    req = ready.req("ap")
    start = ready.m.state.epoch
    assert out.code == "approved" and req.effective_epoch == start + ready.TIME_LOCK
    assert ready.m.state.audit[-1].outcome == "approved!weakening"
    assert "dave" not in ready.m.state.principals
    ready.advance(by=ready.TIME_LOCK - 1)
    assert "dave" not in ready.m.state.principals and req.state is RS.APPROVED
    out = ready.advance()
    assert ready.m.state.principals["dave"].public_key == ready.public_key("dave")
    assert req.state is RS.EXECUTED and "WEAKENING" in out.detail and req.ref in out.detail
    assert ready.m.state.audit[-1].outcome == "ok!weakening"


def test_strengthening_change_takes_effect_on_approval(ready):
    ready.ok(ready.policy_command("up", k=3, grace_epochs=5))
    assert ready.approve("up", "alice").code == "pending"
    assert ready.m.state.policies["p1"].k == 2
    out = ready.approve("up", "bob")
    assert out.code == "executed" and ready.m.state.audit[-1].outcome == "executed"
    assert ready.m.state.policies["p1"].k == 3 and ready.req("up").effective_epoch == 0


@pytest.mark.parametrize(
    "change",
    [
        {"approvers": ("alice", "bob")},  # fewer approvers
        {"k": 1},
        {"grace_epochs": 1},
        {"requesters": ("app", "app2")},
        {"escrow": True},
    ],
)
def test_each_weakening_policy_change_is_time_locked(ready, change):
    ready.govern(AddPrincipal("c2", "ops", "app2", "client", b""))
    ready.ok(ready.policy_command("w", **change))
    ready.approve("w", "alice")
    assert ready.approve("w", "bob").code == "approved"
    assert ready.req("w").effective_epoch > ready.m.state.epoch


def test_an_approver_cannot_approve_their_own_rekey(ready):
    """Regression (issue 9 item 1): an approver could approve the request that puts a key
    of its choosing on its own name (and, as governance approver, be one of the k)."""
    ready.ok(RekeyPrincipal("rk", "ops", "alice", ready.public_key("alice-new")))
    ready.rejects(lambda: ready.approve("rk", "alice"), Reason.SELF_APPROVAL)
    assert ready.approve("rk", "bob").code == "pending"  # alice's vote is not one of the k
    # Not counted either when a forged state already holds it.
    req = ready.req("rk")
    req.approvals["alice"] = sign_approval(ready.private_key("alice"), req.digest)
    assert ready.m._valid_approvers(req) == ["bob"]
    del req.approvals["alice"]
    assert ready.approve("rk", "carol").code == "approved"  # two others: after the lock


def test_governance_approver_added_may_not_approve_it(ready):
    ready.govern(AddPrincipal("ad", "ops", "dave", "approver", ready.public_key("dave")))
    ready.ok(SetGovernance("sg", "ops", ("alice", "dave"), 2, 2))
    ready.rejects(lambda: ready.approve("sg", "dave"), Reason.NOT_AN_APPROVER)
    assert ready.m._subjects(ready.req("sg")) == frozenset({"dave"})


def test_a_weakening_change_cannot_run_before_its_time_lock(ready):
    """Regression (issue 9 item 1): a weakening change (lower threshold) was in force the
    moment it was accepted; now not one epoch early, and members cannot skip the wait."""
    ready.ok(SetThreshold("t", "ops", 2))  # same threshold: neutral, on approval
    ready.approve("t", "alice")
    assert ready.approve("t", "bob").code == "executed"
    w = type(ready)()
    w.boot_with(dataclasses.replace(w.bootstrap_command(), threshold=3))
    w.ok(SetThreshold("t", "ops", 2))
    w.approve("t", "alice")
    assert w.approve("t", "bob").code == "approved"
    lock_end = w.req("t").effective_epoch
    # Members cannot jump to the end of the lock: one step per epoch, all votes needed.
    w.rejects(AdvanceEpoch("jump", "node-1", lock_end, 0), Reason.INVALID_ARGUMENT)
    w.advance(by=w.TIME_LOCK - 1)
    assert w.m.state.threshold == 3
    w.advance()
    assert w.m.state.threshold == 2


def test_cancel_during_the_time_lock(ready):
    """The governance quorum cancels a weakening change before its lock ends; one approver
    alone cannot, and nothing can cancel it once it has taken effect."""
    ready.ok(ready.policy_command("lax", k=1))
    ready.approve("lax", "alice")
    ready.approve("lax", "bob")
    assert ready.req("lax").state is RS.APPROVED
    ready.ok(CancelRequest("c1", "carol", "lax"))  # an approver may submit the cancel
    assert ready.approve("c1", "carol").code == "pending"
    assert ready.req("lax").state is RS.APPROVED
    assert ready.approve("c1", "bob").code == "executed"
    assert ready.req("lax").state is RS.FAILED and ready.req("lax").failure == "cancelled"
    ready.advance(by=ready.TIME_LOCK + 1)
    assert ready.m.state.policies["p1"].k == 2
    ready.rejects(CancelRequest("c2", "ops", "lax"), Reason.REQUEST_DECIDED)
    ready.rejects(CancelRequest("c3", "ops", "c1"), Reason.WRONG_REQUEST_KIND)
    create = ready.active_key("k1")
    ready.rejects(CancelRequest("c4", "ops", ready.req(create).ref), Reason.WRONG_REQUEST_KIND)


def test_cancel_too_late_fails(ready):
    ready.ok(ready.policy_command("lax", k=1))
    ready.approve("lax", "alice")
    ready.approve("lax", "bob")
    ready.ok(CancelRequest("c1", "ops", "lax"))
    ready.approve("c1", "alice")
    ready.advance(by=ready.TIME_LOCK)
    assert ready.m.state.policies["p1"].k == 1
    assert ready.approve("c1", "bob").code == "failed"
    assert ready.req("c1").failure == Reason.REQUEST_DECIDED.value


def test_a_removed_approvers_approval_no_longer_counts(ready):
    """Regression (issue 9 item 1): there was no removal; now a removed approver's stored
    approvals stop counting (executable re-checks), and it can do nothing."""
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    assert ready.m.executable("app:s1")
    ready.ok(RequestSign("s2", "app", "k1", 0, "", b"m2"))
    ready.approve("s2", "bob")
    req = ready.govern(RemovePrincipal("rm", "ops", "bob"), approvers=("alice", "carol"))
    assert req.effective_epoch  # removing an approver is time-locked
    st = ready.m.state
    assert "bob" not in st.principals and "bob" in st.removed_principals
    assert "bob" not in st.policies["p1"].approvers and "bob" not in st.governance.approvers
    assert _not_executable(ready, "app:s1") is Reason.NOT_APPROVED
    ready.rejects(lambda: ready.approve("s2", "bob"), Reason.UNKNOWN_AUTHOR)
    assert ready.approve("s2", "carol").code == "pending"  # bob's approval does not count
    assert ready.approve("s2", "alice").code == "approved"
    # The name and the key are never reused.
    ready.rejects(AddPrincipal("again", "ops", "bob", "client", b""), Reason.DUPLICATE_NAME)
    ready.rejects(
        AddPrincipal("again2", "ops", "bobby", "approver", ready.public_key("bob")),
        Reason.INVALID_PRINCIPAL,
    )


def test_removal_that_breaks_a_quorum_refused(ready):
    ready.govern(ready.policy_command("p2", "p2", approvers=("alice", "bob"), k=2))
    ready.rejects(RemovePrincipal("rm", "ops", "bob"), Reason.INVALID_POLICY)
    ready.rejects(RemovePrincipal("rm2", "ops", "zed"), Reason.UNKNOWN_PRINCIPAL)


def test_removing_a_client_or_operator_is_immediate(ready):
    ready.govern(AddPrincipal("o2", "ops", "ops2", "operator", ready.public_key("ops2")))
    req = ready.govern(RemovePrincipal("rm", "ops", "app"))
    assert req.effective_epoch == 0 and "app" not in ready.m.state.policies["p1"].requesters
    ready.govern(RemovePrincipal("rm2", "ops", "ops2"))
    ready.rejects(RemovePrincipal("x", "ops2", "aud"), Reason.UNKNOWN_AUTHOR)


def test_rekey_replaces_the_key_and_old_approvals_stop_counting(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    new = ready.public_key("alice-new")
    ready.rejects(RekeyPrincipal("bad", "ops", "alice", ready.public_key("bob")),
                  Reason.INVALID_PRINCIPAL)  # fmt: skip
    ready.rejects(RekeyPrincipal("bad2", "ops", "alice", bytes(32)), Reason.INVALID_PRINCIPAL)
    req = ready.govern(RekeyPrincipal("rk", "ops", "alice", new), approvers=("bob", "carol"))
    assert req.effective_epoch and ready.m.state.principals["alice"].public_key == new
    assert _not_executable(ready, "app:s1") is Reason.NOT_APPROVED
    ready.ok(RequestSign("s2", "app", "k1", 0, "", b"m2"))
    ready.rejects(lambda: ready.approve("s2", "alice"), Reason.BAD_SIGNATURE)  # old key
    assert ready.approve("s2", "alice", signer="alice-new").ok


def test_time_locked_change_fails_if_its_quorum_is_lost(ready):
    """A snapshot carries no authority: at the end of the lock the approvals are
    re-verified, so a forged or no longer valid approval does not make it take effect."""
    ready.ok(AddPrincipal("ap", "ops", "dave", "approver", ready.public_key("dave")))
    ready.approve("ap", "alice")
    ready.approve("ap", "bob")
    ready.req("ap").approvals["bob"] = bytes(64)
    ready.advance(by=ready.TIME_LOCK)
    assert ready.req("ap").state is RS.FAILED and ready.req("ap").failure == "quorum_lost"
    assert "dave" not in ready.m.state.principals


def test_change_no_longer_valid_fails_at_effect(ready):
    for rid in ("a1", "a2"):
        ready.ok(AddPrincipal(rid, "ops", "dave", "approver", ready.public_key("dave")))
        ready.approve(rid, "alice")
        ready.approve(rid, "bob")
    ready.advance(by=ready.TIME_LOCK)
    assert ready.req("a1").state is RS.EXECUTED
    assert ready.req("a2").failure == Reason.DUPLICATE_NAME.value


def test_set_governance_rules(ready):
    ready.rejects(SetGovernance("g1", "ops", ("alice", "bob"), 1, 2), Reason.INVALID_POLICY)
    ready.rejects(SetGovernance("g2", "ops", ("alice", "app"), 2, 2), Reason.INVALID_POLICY)
    ready.rejects(SetGovernance("g3", "ops", ("alice", "bob"), 3, 2), Reason.INVALID_POLICY)
    ready.ok(AddPrincipal("pending-one", "ops", "app2", "client", b""))
    req = ready.govern(SetGovernance("g4", "ops", ("alice", "bob", "carol"), 3, 4))
    assert req.effective_epoch == 0  # higher k, longer lock: stronger, on approval
    gov = ready.m.state.governance
    assert (gov.k, gov.time_lock_epochs) == (3, 4)
    # The pending request was for the old quorum: it fails.
    assert ready.req("pending-one").failure == "governance_changed"
    req = ready.govern(
        SetGovernance("g5", "ops", ("alice", "bob", "carol"), 2, 1), ("alice", "bob", "carol")
    )
    assert req.effective_epoch == req.decided_epoch + 4  # shorter lock: waits the old one


def test_time_lock_is_bounded(world):
    boot = world.bootstrap_command()
    for bad in (0, MAX_TIME_LOCK_EPOCHS + 1):
        with pytest.raises(DecodeError, match="time_lock_epochs"):
            encode_command(world.signed(dataclasses.replace(boot, time_lock_epochs=bad)))
        with pytest.raises(DecodeError, match="time_lock_epochs"):
            encode_command(world.signed(SetGovernance("g", "ops", ("alice", "bob"), 2, bad)))


def test_bootstrap_governance_rules(world):
    boot = world.bootstrap_command()
    for bad in (
        {"governance_k": 1},  # one approver could govern alone
        {"governance_k": 4},
        {"governance_approvers": ("alice", "app")},  # not an approver
        {"governance_approvers": ("alice", "zed")},  # not registered
    ):
        world.rejects(lambda b=bad: world.boot_with(dataclasses.replace(boot, **b)),
                      Reason.INVALID_CLUSTER)  # fmt: skip
    out = world.boot_with(dataclasses.replace(boot, governance_k=1, unsafe=True))
    assert out.ok and world.m.state.governance.k == 1
    assert world.m.state.audit[-1].outcome == "ok!unsafe"


def test_operators_submit_only(ready):
    """Nobody but operators submits (approvers may submit cancels); the submission alone
    changes nothing."""
    before = repr(_who_approves(ready))
    ready.rejects(SetThreshold("t", "alice", 3), Reason.UNAUTHORIZED)
    ready.rejects(SetThreshold("t", "node-1", 3), Reason.UNAUTHORIZED)
    ready.rejects(SetThreshold("t", "app", 3), Reason.UNAUTHORIZED)
    ready.ok(SetThreshold("t", "ops", 3))
    assert repr(_who_approves(ready)) == before
    assert _not_executable(ready, "ops:t") is Reason.WRONG_REQUEST_KIND


# -------------------------------------------------------------- membership


def test_add_member_is_a_time_locked_request(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")  # DKG under way with three members
    ready.rejects(AddMember("bad", "ops", "node-4", 5, ready.public_key("node-4")),
                  Reason.INVALID_CLUSTER)  # fmt: skip
    ready.rejects(AddMember("bad2", "ops", "node-4", 4, ready.public_key("node-1")),
                  Reason.INVALID_CLUSTER)  # fmt: skip
    req = ready.govern(AddMember("am", "ops", "node-4", 4, ready.public_key("node-4")))
    assert req.effective_epoch and "node-4" in ready.m.state.members
    assert ready.req("ck").failure == "membership_changed"
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.DESTROYED
    ready.ok(AdvanceEpoch("v4", "node-4", ready.m.state.epoch + 1, 0))  # a member now


def test_remove_member(ready):
    ready.ok(RemoveMember("rm", "ops", "node-3"))
    ready.ok(SetThreshold("t3", "ops", 3))
    ready.approve("t3", "alice")
    ready.approve("t3", "bob")  # threshold 3 of 3: now node-3 cannot be removed
    ready.approve("rm", "alice")
    ready.approve("rm", "bob")
    ready.advance(by=ready.TIME_LOCK, voters=("node-1", "node-2", "node-3"))
    assert ready.req("rm").failure == Reason.INVALID_CLUSTER.value
    req = ready.govern(SetThreshold("t2", "ops", 2))
    assert req.effective_epoch  # a lower threshold waits
    ready.govern(RemoveMember("rm2", "ops", "node-3"))
    st = ready.m.state
    assert "node-3" not in st.members and "node-3" in st.removed_members
    ready.rejects(AdvanceEpoch("v", "node-3", st.epoch + 1, 0), Reason.UNKNOWN_AUTHOR)
    ready.rejects(AddMember("back", "ops", "node-3", 3, ready.public_key("node-9")),
                  Reason.DUPLICATE_NAME)  # an index is never reused  # fmt: skip
    ready.rejects(RemoveMember("rm3", "ops", "node-2"), Reason.INVALID_CLUSTER)  # 1 < t


# ------------------------------------------------------------- snapshots


def test_snapshot_with_governance_state_roundtrips_and_continues(ready):
    ready.govern(RemovePrincipal("rm", "ops", "aud"))
    ready.govern(RemoveMember("rmm", "ops", "node-3"))
    ready.ok(ready.policy_command("lax", k=1))
    ready.approve("lax", "alice")
    ready.approve("lax", "bob")
    snap = ready.snap()
    clone = type(ready)()
    clone.m = Machine.from_snapshot(snap, genesis=ready.m.genesis)
    clone.n = ready.n
    assert clone.snap() == snap
    for w in (ready, clone):
        w.advance(by=ready.TIME_LOCK, voters=("node-1", "node-2"))
    assert ready.snap() == clone.snap() and ready.m.state.policies["p1"].k == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda st: setattr(st.requests["ops:lax"], "effective_epoch", 0), "time lock"),
        (lambda st: setattr(st.requests["ops:lax"], "payload", b"\x01"), "payload|change"),
        (lambda st: setattr(st.governance, "k", 1), "governance"),
        (lambda st: setattr(st.governance, "time_lock_epochs", 0), "time lock"),
        (lambda st: setattr(st.governance, "approvers", ("alice", "zed")), "zed"),
        (lambda st: st.removed_principals.update(alice=st.principals["alice"]), "alice"),
    ],
)
def test_broken_governance_state_refused(ready, mutate, message):
    ready.ok(ready.policy_command("lax", k=1))
    ready.approve("lax", "alice")
    ready.approve("lax", "bob")
    st = decode_state(ready.snap())
    mutate(st)
    with pytest.raises(DecodeError, match=message):
        Machine(genesis=ready.m.genesis).restore(encode_state(st))


# ------------------------------------------------- the property (invariant 10)

ATTACKERS = ("ops", "app", "node-1", "node-2", "node-3", "alice")  # alice: k - 1 = 1 approver
GOV_KINDS = 8


def _attack(w, x: int, y: int) -> list:
    """One command by operators, clients, members or the one genuine approver (alice),
    including approvals forged with keys the attackers hold."""
    m, st = w.m, w.m.state
    rid = w.rid("x")
    mal = w.public_key("mallory")
    refs = sorted(st.requests) or ["ops:none"]
    target = refs[y % len(refs)]
    choice = x % 16
    if choice < GOV_KINDS:
        author = ATTACKERS[y % 2 * 5 if y & 4 else 0]  # mostly ops; sometimes alice
        return [
            (
                AddPrincipal(rid, author, "mallory", "approver", mal),
                SetPolicy(rid, author, "p1", ("app",), ("decrypt", "sign"), ("alice",), 1,
                          0, 0, 0, 1, True),
                SetGovernance(rid, author, ("alice", "bob"), 2, 1),
                RekeyPrincipal(rid, author, "bob", mal),
                RemovePrincipal(rid, author, "carol"),
                SetThreshold(rid, author, 3),
                AddMember(rid, author, "node-4", 4, w.public_key("node-4")),
                CancelRequest(rid, author, target),
            )[choice]
        ]  # fmt: skip
    if choice == 8:
        return [RequestSign(rid, "app", "k1", 0, "", bytes([y]) * 4)]
    if choice == 9:
        return [RequestDecrypt(rid, "app", "kek", 1, "", bytes([y]) * 4)]
    if choice == 10:
        return [(RequestRevoke, RequestDestroy)[y & 1](rid, "ops", ("k1", "kek")[y >> 1 & 1], 1)]
    if choice in (11, 12):  # alice approves anything; or a forgery in bob's/carol's name
        req = st.requests.get(target)
        digest = req.digest if req else bytes(64)
        name = "alice" if choice == 11 else ("bob", "carol", "mallory")[y % 3]
        signer = "alice" if choice == 11 else ("mallory", "alice", "mallory")[y % 3]
        return [Approve(rid, name, target, sign_approval(w.private_key(signer), digest))]
    if choice == 13:  # members move the epoch as they like (every time lock passes)
        return [AdvanceEpoch(f"{rid}{n}", n, st.epoch + 1, y) for n in ("node-1", "node-2")]
    if choice == 14:
        res = w.GROUP.sign(m.state.requests[target].payload or b"x") if y & 1 else bytes(64)
        return [RecordResult(rid, ATTACKERS[2 + y % 3], target, res)]
    return [
        (RecordFailure(rid, ATTACKERS[2 + y % 3], target, "no"),
         RequestRotate(rid, ("ops", "node-1")[y & 1], "k1", y))[y >> 1 & 1]
    ]  # fmt: skip


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63)), max_size=40))
def test_without_k_genuine_approvers_nothing_is_authorised(world, actions):
    """Any mix of operators, clients, members and one genuine approver (k - 1) never makes
    a sign, decrypt, revoke or destroy request executable, never revokes or destroys a
    version, and never changes a policy, principal, the governance policy, the members or
    the threshold."""
    w = type(world)().setup()  # a fresh world per example (the fixture is shared)
    w.active_key("k1")
    w.active_key("kek", "encrypt")
    before = repr(_who_approves(w))
    known = set(w.m.state.requests)
    for x, y in actions:
        for cmd in _attack(w, x, y):
            w.do(cmd)
        st = w.m.state
        assert repr(_who_approves(w)) == before
        for ref, req in st.requests.items():
            if ref in known:
                continue
            assert req.state not in (RS.APPROVED, RS.EXECUTED), req
            with pytest.raises(Rejected):
                w.m.executable(ref)
        for key_id in ("k1", "kek"):
            assert st.keys[key_id].versions[1].state is VersionState.ACTIVE
