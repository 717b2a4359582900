"""Recovery officers, escrow and the recovery of a lost cluster in the replicated state:
who may do what, and what one insider (an operator, an approver quorum without the
officers, a member, an officer) cannot do alone."""

from __future__ import annotations

import msgpack
import pytest

from node.state import (
    EscrowItem,
    ExportKey,
    OfficerApprove,
    OfficerSpec,
    PostEscrow,
    PostExportPiece,
    PostRelease,
    Reason,
    RecordRecovery,
    RecoverMembers,
    RecoverSpec,
    ReleaseItem,
    RequestDestroy,
    RequestRevoke,
    SetOfficers,
)
from node.state.approvals import sign_approval
from node.state.errors import DecodeError
from node.state.model import RequestState, VersionRef
from node.state.recovery import officer_approval, release_message
from node.state.snapshot import _encode_old, decode_state, encode_state

from .conftest import CLUSTER, World

OFFICERS = ("olga", "omar", "otto")


def officer_set(world: World, names=OFFICERS, k: int = 2) -> SetOfficers:
    specs = tuple(OfficerSpec(n, bytes([i + 1]) * 32, world.public_key(n))
                  for i, n in enumerate(names))  # fmt: skip
    return SetOfficers(world.rid("so"), "ops", specs, k)


@pytest.fixture
def escrowed(world: World) -> World:
    """Officers registered (olga, omar, otto; k = 2), an escrow policy p1 with key k1 and
    a policy p2 without escrow with key k2."""
    world.setup(escrow=True)
    world.govern(world.policy_command("pol2", "p2"))
    req = world.govern(officer_set(world))
    assert "officers" in world.m.state.audit[-1].outcome or req.effective_epoch
    world.active_key("k1")
    from node.state import CreateKey

    rid = world.rid("ck")
    world.ok(CreateKey(rid, "ops", "k2", "sign", "p2"))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    world.post_dkg(rid)
    world.advance()
    return world


def escrow(world: World, member: str, key_id: str = "k1", version: int = 1, gen: int = 0,
           digest: bytes | None = None) -> PostEscrow:  # fmt: skip
    d = world.m.state.officers.digest if digest is None else digest
    return PostEscrow(world.rid("es"), member, d, (EscrowItem(key_id, version, gen, b"p" * 200),))


def test_setting_officers_is_time_locked_and_checked(world: World) -> None:
    world.setup(escrow=True)
    out = world.ok(officer_set(world))
    ref = f"ops:{out.request_id}"
    world.approve(ref, "alice")
    world.approve(ref, "bob")
    req = world.req(ref)
    assert req.state is RequestState.APPROVED and req.effective_epoch  # waits the time lock
    assert world.m.state.officers.k == 0
    world.advance(by=req.effective_epoch - world.m.state.epoch)
    st = world.m.state.officers
    assert st.k == 2 and [o.name for o in st.officers] == list(OFFICERS) and len(st.digest) == 64
    for bad, reason in (
        (officer_set(world, k=1), Reason.INVALID_ARGUMENT),
        (officer_set(world, k=4), Reason.INVALID_ARGUMENT),
        (officer_set(world, names=("omar", "olga")), Reason.INVALID_ARGUMENT),
    ):
        world.rejects(bad, reason)
    dup = SetOfficers(world.rid("so"), "ops", (
        OfficerSpec("olga", bytes(32), world.public_key("olga")),
        OfficerSpec("omar", bytes(32), world.public_key("omar"))), 2)  # fmt: skip
    world.rejects(dup, Reason.INVALID_ARGUMENT)
    # An officer key may not be an existing identity's (one key, one identity).
    taken = SetOfficers(world.rid("so"), "ops", (
        OfficerSpec("olga", bytes(32), world.public_key("alice")),
        OfficerSpec("omar", b"\x01" * 32, world.public_key("omar"))), 2)  # fmt: skip
    world.rejects(taken, Reason.INVALID_ARGUMENT)


def test_members_escrow_only_what_policy_and_state_allow(escrowed: World) -> None:
    w = escrowed
    assert w.m.escrow_due("node-1") == [VersionRef("k1", 1)]  # not k2: its policy says no
    w.ok(escrow(w, "node-1"))
    assert w.m.escrow_due("node-1") == []
    assert w.m.state.escrows["node-1/k1/1"].package == b"p" * 200
    w.rejects(escrow(w, "node-2", "k2"), Reason.VERSION_NOT_USABLE)
    w.rejects(escrow(w, "node-2", gen=1), Reason.REQUEST_DECIDED)  # another generation
    w.rejects(escrow(w, "node-2", digest=b"\x09" * 64), Reason.REQUEST_DECIDED)
    w.rejects(escrow(w, "ops"), Reason.UNAUTHORIZED)  # an operator is not a member


def test_new_officers_drop_old_escrow_and_destroy_drops_its_escrow(escrowed: World) -> None:
    w = escrowed
    for m in w.MEMBERS:
        w.ok(escrow(w, m))
    w.govern(officer_set(w, names=("olga", "omar")))
    assert w.m.state.escrows == {}  # made for the old set
    for m in w.MEMBERS:
        w.ok(escrow(w, m))
    rid = w.rid("rv")
    w.ok(RequestRevoke(rid, "ops", "k1", 1))
    w.approve(rid, "alice")
    w.approve(rid, "bob")
    assert w.m.escrow_due("node-1") == []  # revoked: nothing more to escrow
    w.advance(by=3)
    rid = w.rid("ds")
    w.ok(RequestDestroy(rid, "ops", "k1", 1))
    w.approve(rid, "alice")
    w.approve(rid, "bob")
    assert not any(k.startswith(f"{m}/k1/1") for m in w.MEMBERS for k in w.m.state.escrows)


def open_recovery(w: World, members=("node-1", "node-2", "node-3")) -> str:
    for m in w.MEMBERS:
        w.ok(escrow(w, m))
    specs = tuple(RecoverSpec(m, w.public_key(m + "-fresh"), bytes([0x40 + i]) * 32)
                  for i, m in enumerate(members))  # fmt: skip
    out = w.ok(RecoverMembers(w.rid("rm"), "ops", specs))
    return f"ops:{out.request_id}"


def officer_ok(w: World, request: str, officer: str, signer: str | None = None):
    digest = w.req(request).digest
    sig = sign_approval(w.private_key(signer or officer), officer_approval(CLUSTER, request,
                                                                           digest))  # fmt: skip
    return w.do(OfficerApprove(w.rid("oa"), "ops", request, officer, sig))


def test_recovery_needs_the_governance_quorum_and_k_officers(escrowed: World) -> None:
    w = escrowed
    ref = open_recovery(w)
    old = w.m.state.members["node-1"].public_key
    w.approve(ref, "alice")
    w.approve(ref, "bob")
    req = w.req(ref)
    assert req.state is RequestState.APPROVED and not req.effective_epoch  # no time lock
    assert w.m.state.members["node-1"].public_key == old  # the approvers alone: nothing
    # An operator forging an officer: rejected, and the state keeps nothing of it.
    digest = w.req(ref).digest
    forged = sign_approval(w.private_key("omar"), officer_approval(CLUSTER, ref, digest))
    w.rejects(OfficerApprove(w.rid("oa"), "ops", ref, "olga", forged), Reason.BAD_SIGNATURE)
    assert ref not in w.m.state.officer_approvals
    assert officer_ok(w, ref, "olga").ok
    dup = officer_ok(w, ref, "olga")
    assert not dup.ok and dup.code == Reason.DUPLICATE_APPROVAL.value
    assert w.m.state.members["node-1"].public_key == old  # one officer: nothing
    assert officer_ok(w, ref, "omar").ok
    assert req.state is RequestState.EXECUTED
    assert w.m.state.members["node-1"].public_key == w.public_key("node-1-fresh")
    assert w.m.running_recovery() is not None
    assert not w.m.holds("node-1", "k1", 1)  # nothing recovered yet
    assert not w.m.holds("node-2", "k2", 1)  # not escrowed: only a repair rebuilds it


def test_officers_first_then_the_quorum_also_executes(escrowed: World) -> None:
    w = escrowed
    ref = open_recovery(w, members=("node-1",))
    assert officer_ok(w, ref, "otto").ok and officer_ok(w, ref, "omar").ok
    assert w.req(ref).state is RequestState.PENDING  # officers are not the governance quorum
    w.approve(ref, "alice")
    w.approve(ref, "bob")
    assert w.req(ref).state is RequestState.EXECUTED
    # Officers only approve recover_members requests.
    other = w.ok(w.policy_command(w.rid("pol"), "p3"))
    out = officer_ok(w, f"ops:{other.request_id}", "olga")
    assert not out.ok and out.code == Reason.WRONG_REQUEST_KIND.value


def release(w: World, member: str, officer: str, blob: bytes = b"r" * 80,
            signer: str | None = None, key_id: str = "k1") -> PostRelease:  # fmt: skip
    rec = w.m.running_recovery()
    assert rec is not None
    items = ((key_id, 1, blob),)
    sig = sign_approval(w.private_key(signer or officer),
                        release_message(CLUSTER, rec.request, member, officer, items))  # fmt: skip
    return PostRelease(w.rid("rl"), "ops", member, officer,
                       tuple(ReleaseItem(*i) for i in items), sig)  # fmt: skip


def confirm(w: World, member: str, author: str | None = None) -> RecordRecovery:
    """Signed by the fresh node's key (the recovery registered it)."""
    author = author or member
    return w.signed(RecordRecovery(w.rid("rr"), author, member), author + "-fresh")


def test_releases_and_confirmations(escrowed: World) -> None:
    w = escrowed
    ref = open_recovery(w, members=("node-1", "node-2", "node-3"))
    for who in ("alice", "bob"):
        w.approve(ref, who)
    officer_ok(w, ref, "olga")
    officer_ok(w, ref, "otto")
    w.rejects(release(w, "node-1", "olga", signer="otto"), Reason.BAD_SIGNATURE)
    w.rejects(release(w, "node-1", "mallory"), Reason.UNKNOWN_PRINCIPAL)
    w.rejects(release(w, "node-1", "olga", key_id="k2"), Reason.INVALID_ARGUMENT)
    w.ok(release(w, "node-1", "olga"))
    w.rejects(release(w, "node-1", "olga"), Reason.DUPLICATE_POST)
    w.rejects(confirm(w, "node-1"), Reason.NOT_APPROVED)  # one release of k = 2
    w.ok(release(w, "node-1", "omar"))
    w.rejects(confirm(w, "node-1", author="node-2"), Reason.UNAUTHORIZED)
    stale = w.signed(RecordRecovery(w.rid("rr"), "node-1", "node-1"), "node-1")  # the lost key
    w.rejects(stale, Reason.BAD_SIGNATURE)
    out = w.ok(confirm(w, "node-1"))
    assert out.code == "ok"  # node-2 and node-3 still to come
    assert w.m.holds("node-1", "k1", 1) and not w.m.holds("node-1", "k2", 1)
    for m in ("node-2", "node-3"):
        w.ok(release(w, m, "omar"))
        w.ok(release(w, m, "otto"))
    w.ok(confirm(w, "node-2"))
    out = w.ok(confirm(w, "node-3"))
    assert out.code == "executed" and w.m.running_recovery() is None
    assert all(w.m.holds(m, "k1", 1) for m in w.MEMBERS)
    assert not any(w.m.holds(m, "k2", 1) for m in w.MEMBERS)  # no escrow: lost for good
    # Snapshots carry all of it, canonically, and v10 snapshots still load.
    snap = w.snap()
    assert msgpack.unpackb(snap, raw=False, strict_map_key=False)["v"] == 11
    assert encode_state(decode_state(snap)) == snap


def test_a_v10_snapshot_loads_without_recovery_fields(ready: World) -> None:
    old = _encode_old(ready.m.state, 10)
    state = decode_state(old)
    assert state.officers.k == 0 and state.escrows == {} and state.recoveries == {}
    body = msgpack.unpackb(old, raw=False, strict_map_key=False)
    body["state"]["escrows"] = {}
    with pytest.raises(DecodeError):
        decode_state(msgpack.packb(body, use_bin_type=True))


def test_a_member_the_officers_did_not_release_is_repaired_from_recovered_ones(
    escrowed: World,
) -> None:
    """Officers release to node-1 and node-2 only; node-3 is then repaired (its key is
    already registered: no time lock) of what t recovered members hold: k1, not k2 (no
    escrow, held by nobody: lost)."""
    from node.state import RepairMember
    from node.state.model import RepairState

    w = escrowed
    ref = open_recovery(w)
    for who in ("alice", "bob"):
        w.approve(ref, who)
    officer_ok(w, ref, "olga")
    officer_ok(w, ref, "otto")
    for m in ("node-1", "node-2"):
        w.ok(release(w, m, "olga"))
        w.ok(release(w, m, "otto"))
        w.ok(confirm(w, m))
    assert w.m.running_recovery() is not None  # node-3 has escrow but no releases
    out = w.ok(RepairMember(w.rid("rp"), "ops", "node-3"))
    rref = f"ops:{out.request_id}"
    w.approve(rref, "alice")
    w.approve(rref, "bob")
    assert w.req(rref).state is RequestState.EXECUTED  # same key: not time-locked
    repair = w.m.state.repairs["node-3"]
    assert repair.state is RepairState.RUNNING
    assert repair.items == (VersionRef("k1", 1),) and repair.helpers == ("node-1", "node-2")
    assert not w.m.holds("node-3", "k1", 1)
    # The helpers and the target post, the target confirms: node-3 counts as repaired and
    # the recovery is over.
    from node.state import PostRepair, RecordRepair, repair_request_id

    for who in ("node-1", "node-2", "node-3"):
        w.ok(w.signed(PostRepair(repair_request_id("rp", "node-3", repair.run), who, "node-3",
                                 repair.run, b"\x01" * 40), who + "-fresh"))  # fmt: skip
    w.ok(w.signed(RecordRepair(repair_request_id("rr", "node-3", repair.run), "node-3",
                               "node-3", repair.run), "node-3-fresh"))  # fmt: skip
    assert repair.state is RepairState.DONE and w.m.holds("node-3", "k1", 1)
    rec = w.m.state.recoveries[ref]
    assert rec.repaired == ("node-3",) and rec.finished_epoch and w.m.running_recovery() is None
    w.rejects(confirm(w, "node-3"), Reason.REQUEST_DECIDED)


# ------------------------------------------------------------------ break-glass export


def export(w: World, key_id: str = "k1", version: int = 1) -> ExportKey:
    return ExportKey(w.rid("ex"), "ops", key_id, version, b"\x07" * 32, "court order 12")


def test_break_glass_export_needs_quorum_officers_and_the_time_lock(escrowed: World) -> None:
    w = escrowed
    w.rejects(export(w, "k2"), Reason.OPERATION_NOT_ALLOWED)  # its policy says escrow: false
    w.rejects(export(w, "k1", 2), Reason.VERSION_NOT_USABLE)
    out = w.ok(export(w))
    ref = f"ops:{out.request_id}"
    w.approve(ref, "alice")
    w.approve(ref, "bob")
    req = w.req(ref)
    assert req.state is RequestState.APPROVED and not req.effective_epoch  # officers first
    assert officer_ok(w, ref, "olga").ok
    assert not req.effective_epoch and w.m.state.exports == {}
    assert officer_ok(w, ref, "otto").ok
    assert req.effective_epoch  # now the time lock: the quorum may still cancel it
    late = officer_ok(w, ref, "omar")
    assert not late.ok and late.code == Reason.REQUEST_DECIDED.value
    w.advance(by=req.effective_epoch - w.m.state.epoch)
    assert req.state is RequestState.EXECUTED
    exp = w.m.state.exports[ref]
    assert (exp.key_id, exp.version, exp.recipient) == ("k1", 1, b"\x07" * 32)
    # Members post one piece each; the snapshot keeps them.
    w.ok(PostExportPiece(w.rid("xp"), "node-1", ref, b"\x08" * 92))
    w.rejects(PostExportPiece(w.rid("xp"), "node-1", ref, b"\x09" * 92), Reason.DUPLICATE_POST)
    w.rejects(PostExportPiece(w.rid("xp"), "ops", ref, b"\x09" * 92), Reason.UNAUTHORIZED)
    assert exp.pieces == {"node-1": b"\x08" * 92}
    assert encode_state(decode_state(w.snap())) == w.snap()
    assert any("weakening" in a.outcome for a in w.m.state.audit if a.subject == ref)


def test_the_audit_key_and_unknown_keys_are_never_exported(escrowed: World) -> None:
    from node.state.audit_checkpoint import AUDIT_KEY_ID

    w = escrowed
    w.rejects(export(w, AUDIT_KEY_ID), Reason.OPERATION_NOT_ALLOWED)
    w.rejects(export(w, "nope"), Reason.UNKNOWN_KEY)
