"""`dkg_round1`: members broadcast their DKG round-1 packages through the log, so every
member reads the same packages; kept only while the DKG runs, never in the audit chain."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from node.state import (
    CreateKey,
    DecodeError,
    Machine,
    PostDkgRound1,
    Reason,
    RecordDkgResult,
    RecordFailure,
    RemoveMember,
    RequestRotate,
    RequestSign,
    RequestState,
    encode_command,
    encode_records,
)
from node.state.commands import MAX_DKG_PACKAGE_BYTES, SIGNED_KINDS
from node.state.model import Role, VersionState
from node.state.rules import COMMAND_ROLES
from node.state.snapshot import SNAPSHOT_VERSION, decode_state, encode_state

MEMBERS = ("node-1", "node-2", "node-3")


def package(member: str, tag: bytes = b"") -> bytes:
    """A recognisable stand-in for a round-1 package (commitments, proofs, X25519 key)."""
    return b"ROUND1-PACKAGE:" + member.encode() + tag + b"\x00\xff" * 100


@pytest.fixture
def approved(ready):
    """An approved create_key request `ck` whose version 1 is pending (its DKG may run)."""
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    assert ready.approve("ck", "bob").code == "approved"
    return ready


def post(w, member: str, request: str = "ck", data: bytes | None = None, rid: str | None = None):
    return w.do(PostDkgRound1(rid or w.rid("p"), member, request, data or package(member)))


def test_a_signed_node_command():
    assert "dkg_round1" in SIGNED_KINDS
    assert COMMAND_ROLES["dkg_round1"] == frozenset({Role.NODE})


def test_posts_accepted_and_seen_by_everyone(approved):
    w = approved
    outs = [post(w, m) for m in MEMBERS]
    assert [o.code for o in outs] == ["ok", "ok", "ok"]
    assert [o.detail for o in outs] == ["round1 1/3", "round1 2/3", "round1 3/3"]
    assert w.m.dkg_round1("ops:ck") == {m: package(m) for m in MEMBERS}
    # a copy: the caller cannot change the state through it
    w.m.dkg_round1("ops:ck").clear()
    assert len(w.m.state.requests["ops:ck"].dkg_round1) == 3
    # every replica (here: one restored from a snapshot) sees the same packages
    assert Machine.from_snapshot(w.snap()).dkg_round1("ops:ck") == w.m.dkg_round1("ops:ck")
    # the DKG continues as before
    assert [o.code for o in w.post_dkg("ck")] == ["ok", "ok", "executed"]


def test_query_of_unknown_request_is_empty(approved):
    assert approved.m.dkg_round1("ops:nope") == {}
    assert approved.m.dkg_round1("ops:ck") == {}


def test_rotation_accepts_posts(ready):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    post(ready, "node-1", "rot")  # pending: not yet
    assert ready.m.dkg_round1("ops:rot") == {}
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    assert post(ready, "node-2", "rot").code == "ok"
    assert ready.m.dkg_round1("ops:rot") == {"node-2": package("node-2")}


def test_audit_record_without_the_package(approved):
    w = approved
    req = w.req("ck")
    out = post(w, "node-2")
    rec = w.m.state.audit[-1]
    assert out.seq == rec.seq
    assert (rec.kind, rec.author, rec.outcome) == ("dkg_round1", "node-2", "ok")
    assert (rec.subject, rec.key_id, rec.version, rec.digest) == ("ops:ck", "k1", 1, req.digest)
    post(w, "node-2", data=package("node-2", b"again"))  # a rejection is audited too
    export = encode_records(w.m.state.audit)
    assert b"ROUND1-PACKAGE" not in export
    for r in w.m.state.audit:
        assert all(b"ROUND1-PACKAGE" not in (v if type(v) is bytes else str(v).encode())
                   for v in dataclasses.astuple(r))  # fmt: skip


def test_unknown_request_rejected(approved):
    approved.rejects(PostDkgRound1("p", "node-1", "ops:nope", b"x"), Reason.UNKNOWN_REQUEST)


def test_wrong_request_kind_rejected(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.rejects(PostDkgRound1("p", "node-1", "s1", b"x"), Reason.WRONG_REQUEST_KIND)


def test_pending_request_rejected(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.rejects(PostDkgRound1("p", "node-1", "ck", b"x"), Reason.NOT_APPROVED)
    ready.approve("ck", "alice")
    ready.rejects(PostDkgRound1("p2", "node-1", "ck", b"x"), Reason.NOT_APPROVED)


def test_decided_request_rejected(approved):
    w = approved
    w.post_dkg("ck")
    assert w.req("ck").state is RequestState.EXECUTED
    w.rejects(PostDkgRound1("p", "node-1", "ck", b"x"), Reason.REQUEST_DECIDED)


def test_failed_request_rejected(approved):
    approved.ok(RecordFailure("f", "node-3", "ck", "dkg timeout"))
    approved.rejects(PostDkgRound1("p", "node-1", "ck", b"x"), Reason.REQUEST_DECIDED)


def test_request_without_pending_version_rejected(approved):
    """Defensive: an approved create request whose version is not pending (a state the
    commands never produce; the version's end fails the request first)."""
    w = approved
    w.m.state.keys["k1"].versions[1].state = VersionState.REVOKED
    w.rejects(PostDkgRound1("p", "node-1", "ck", b"x"), Reason.VERSION_NOT_USABLE)
    w.m.state.keys["k1"].versions[1].state = VersionState.PENDING
    w.m.state.requests["ops:ck"].version = 0
    w.rejects(PostDkgRound1("p2", "node-1", "ck", b"x"), Reason.VERSION_NOT_USABLE)


def test_only_members_post(approved):
    approved.rejects(PostDkgRound1("p", "ops", "ck", b"x"), Reason.UNAUTHORIZED)
    approved.rejects(PostDkgRound1("p", "alice", "ck", b"x"), Reason.UNAUTHORIZED)
    approved.rejects(PostDkgRound1("p", "node-9", "ck", b"x"), Reason.UNKNOWN_AUTHOR)


@pytest.mark.parametrize("same", [True, False])
def test_one_post_per_member(approved, same):
    w = approved
    post(w, "node-1", rid="p1")
    again = package("node-1") if same else package("node-1", b"other")
    w.rejects(PostDkgRound1("p2", "node-1", "ck", again), Reason.DUPLICATE_POST)
    assert w.m.dkg_round1("ops:ck") == {"node-1": package("node-1")}


def test_retry_returns_the_first_outcome(approved):
    w = approved
    first = post(w, "node-1", rid="p1")
    n = len(w.m.state.audit)
    assert post(w, "node-1", rid="p1") == first
    assert len(w.m.state.audit) == n


def test_cleared_when_executed(approved):
    w = approved
    for m in MEMBERS:
        post(w, m)
    w.post_dkg("ck")
    assert w.req("ck").state is RequestState.EXECUTED
    assert w.req("ck").dkg_round1 == {} and w.m.dkg_round1("ops:ck") == {}


def test_cleared_when_failed_by_reports(approved):
    w = approved
    post(w, "node-1")
    post(w, "node-2")
    assert w.ok(RecordFailure("f", "node-3", "ck", "dkg timeout")).code == "failed"
    assert w.req("ck").dkg_round1 == {}


def test_cleared_when_dkg_mismatches(approved):
    w = approved
    for m in MEMBERS:
        post(w, m)
    w.post_dkg("ck", MEMBERS[:2])
    out = w.do(RecordDkgResult("bad", "node-3", "ck", bytes(32), w.VSHARES))
    assert out.code == "failed" and w.req("ck").dkg_round1 == {}


def test_removed_members_post_dropped(approved):
    w = approved
    for m in MEMBERS:
        post(w, m)
    w.govern(RemoveMember("rm", "ops", "node-3"))  # time-locked; takes effect at its epoch
    req = w.req("ck")
    assert "node-3" not in req.dkg_round1 and "node-3" not in w.m.dkg_round1("ops:ck")
    # the DKG was for the old member set: it failed, and its packages are gone
    assert req.state is RequestState.FAILED and req.failure == "membership_changed"
    assert req.dkg_round1 == {}


def test_forged_post_rejected(approved):
    """node-1 cannot post round-1 packages in another member's name."""
    w = approved
    for member in ("node-2", "node-3"):
        forged = PostDkgRound1(f"p-{member}", member, "ops:ck", package(member))
        w.rejects(w.signed(forged, signer="node-1"), Reason.BAD_SIGNATURE)
    eve = w.signed(PostDkgRound1("p-e", "node-2", "ops:ck", b"x"), "eve")
    w.rejects(eve, Reason.BAD_SIGNATURE)
    # a genuine signature does not carry over to other bytes or another request id
    good = w.signed(PostDkgRound1("p-ok", "node-2", "ops:ck", package("node-2")))
    w.rejects(dataclasses.replace(good, package=b"evil"), Reason.BAD_SIGNATURE)
    w.rejects(dataclasses.replace(good, request_id="p-other"), Reason.BAD_SIGNATURE)
    assert w.m.dkg_round1("ops:ck") == {}
    assert w.ok(good).code == "ok"


def test_signature_required(approved):
    with pytest.raises(DecodeError, match="signature"):
        encode_command(PostDkgRound1("p", "node-1", "ops:ck", b"x"))
    raw = msgpack.unpackb(
        encode_command(approved.signed(PostDkgRound1("p", "node-1", "ops:ck", b"x"))), raw=False
    )
    del raw["signature"]
    before = approved.snap()
    out = approved.m.apply(msgpack.packb(raw, use_bin_type=True))
    from node.state import decode_outcome

    assert decode_outcome(out).code == "malformed" and approved.snap() == before


# ------------------------------------------------------------------ snapshots


def test_snapshot_v4_roundtrip(approved):
    w = approved
    post(w, "node-1")
    snap = w.snap()
    assert msgpack.unpackb(snap, raw=False, strict_map_key=False)["v"] == SNAPSHOT_VERSION == 11
    restored = Machine.from_snapshot(snap, genesis=w.m.genesis)
    assert restored.snapshot() == snap and restored.state == w.m.state


def test_v3_snapshot_refused(approved):
    raw = msgpack.unpackb(approved.snap(), raw=False, strict_map_key=False)
    raw["v"] = 3
    for req in raw["state"]["requests"].values():
        del req["dkg_round1"]  # what a v3 snapshot looked like
    with pytest.raises(DecodeError, match="version"):
        Machine(genesis=approved.m.genesis).restore(msgpack.packb(raw, use_bin_type=True))


def forge(world, mutate) -> bytes:
    st = decode_state(world.snap())
    mutate(st)
    return encode_state(st)


@pytest.fixture
def mixed(approved):
    """`ops:ck` approved with node-1's post; `ops:ck2` pending; `ops:ck3` executed."""
    w = approved
    post(w, "node-1")
    w.ok(CreateKey("ck2", "ops", "k2", "sign", "p1"))
    w.active_key("k3")
    return w


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda st: st.requests["ops:ck2"].dkg_round1.update({"node-1": b"x"}), "runs no DKG"),
        (
            lambda st: st.requests[st.keys["k3"].versions[1].request_id].dkg_round1.update(
                {"node-1": b"x"}
            ),
            "runs no DKG",
        ),
        (lambda st: st.requests["ops:ck"].dkg_round1.update({"node-9": b"x"}), "not a member"),
        (lambda st: st.requests["ops:ck"].dkg_round1.update({"alice": b"x"}), "not a member"),
        (lambda st: st.requests["ops:ck"].dkg_round1.update({"node-2": b""}), "size"),
        (
            lambda st: st.requests["ops:ck"].dkg_round1.update(
                {"node-2": b"x" * (MAX_DKG_PACKAGE_BYTES + 1)}
            ),
            "size",
        ),
    ],
)
def test_forged_round1_refused_at_restore(mixed, mutate, message):
    """A snapshot carrying round-1 packages where the commands could not have put them
    (a pending or decided request, a non-member, an impossible size) is refused."""
    data = forge(mixed, mutate)
    m = Machine(genesis=mixed.m.genesis)
    with pytest.raises(DecodeError, match=message):
        m.restore(data)
    assert not m.state.bootstrapped  # the previous (empty) state is kept


def test_forged_round1_on_sign_request_refused(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    data = forge(ready, lambda st: st.requests["app:s1"].dkg_round1.update({"node-1": b"x"}))
    with pytest.raises(DecodeError, match="runs no DKG"):
        Machine(genesis=ready.m.genesis).restore(data)


def test_removed_members_package_refused_at_restore(mixed):
    def mutate(st):
        st.removed_members["node-3"] = st.members.pop("node-3")
        st.requests["ops:ck"].dkg_round1["node-3"] = b"x"

    with pytest.raises(DecodeError, match="not a member"):
        Machine(genesis=mixed.m.genesis).restore(forge(mixed, mutate))
