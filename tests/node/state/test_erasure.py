"""`record_erasure`: members confirm, through the log, that they crypto-erased their share
objects of a destroyed version (`Version.erased_by`); and what revocation does to
requests that were approved but not executed yet."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from node.state import (
    Machine,
    Reason,
    RecordErasure,
    RecordResult,
    Rejected,
    RemoveMember,
    RequestDestroy,
    RequestRevoke,
    RequestRotate,
    RequestSign,
)
from node.state.approvals import sign_command
from node.state.commands import erasure_request_id
from node.state.errors import DecodeError
from node.state.model import RequestState, VersionState
from node.state.snapshot import SNAPSHOT_VERSION, decode_state, encode_state

from .conftest import CLUSTER, World, private_key


def erasure(member: str, key_id: str = "k1", version: int = 1, rid: str | None = None):
    return RecordErasure(rid or erasure_request_id(key_id, version), member, key_id, version)


@pytest.fixture
def destroyed(ready: World) -> World:
    """k1 version 1: created, active, revoked, destroyed."""
    ready.active_key("k1")
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    assert ready.approve("rv", "bob").code == "executed"
    ready.ok(RequestDestroy("ds", "ops", "k1", 1))
    ready.approve("ds", "alice")
    assert ready.approve("ds", "bob").code == "executed"
    assert ready.m.state.keys["k1"].versions[1].state is VersionState.DESTROYED
    return ready


def test_request_id_is_fixed_by_key_and_version():
    assert erasure_request_id("k1", 3) == "erase-k1-3"
    longest = "K" * 64
    RecordErasure(erasure_request_id(longest, 2**32 - 1), "node-1", longest, 2**32 - 1)
    from node.state import encode_command

    encode_command(  # the longest key id and version still give a valid request id
        sign_command(private_key("node-1"), erasure("node-1", longest, 2**32 - 1), CLUSTER)
    )


def test_confirmations_accumulate_sorted_and_audited(destroyed: World):
    w = destroyed
    out = w.ok(erasure("node-3"))
    assert out.code == "ok" and out.detail == "erased by 1/3 members"
    w.ok(erasure("node-1"))
    out = w.ok(erasure("node-2"))
    assert out.detail == "erased by 3/3 members"
    assert w.m.state.keys["k1"].versions[1].erased_by == ("node-1", "node-2", "node-3")
    rec = w.m.state.audit[-1]
    assert (rec.kind, rec.author, rec.key_id, rec.version, rec.outcome) == (
        "record_erasure", "node-2", "k1", 1, "ok",
    )  # fmt: skip
    assert rec.subject == "node-2:erase-k1-1"


def test_aborted_version_can_be_confirmed(ready: World):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    from node.state import RecordFailure

    ready.ok(RecordFailure("f1", "node-1", "rot", "dkg timed out"))
    assert ready.m.state.keys["k1"].versions[2].state is VersionState.DESTROYED
    ready.ok(erasure("node-1", version=2))


@pytest.mark.parametrize("state", ["active", "revoked"])
def test_refused_unless_destroyed(ready: World, state: str):
    ready.active_key("k1")
    if state == "revoked":
        ready.ok(RequestRevoke("rv", "ops", "k1", 1))
        ready.approve("rv", "alice")
        ready.approve("rv", "bob")
    ready.rejects(erasure("node-1"), Reason.NOT_DESTROYED)
    assert ready.m.state.keys["k1"].versions[1].erased_by == ()


def test_unknown_key_version_and_wrong_id_refused(destroyed: World):
    w = destroyed
    w.rejects(erasure("node-1", key_id="nope"), Reason.UNKNOWN_KEY)
    w.rejects(erasure("node-1", version=9), Reason.UNKNOWN_VERSION)
    w.rejects(erasure("node-1", rid="erase-other"), Reason.INVALID_ARGUMENT)


def test_retry_returns_the_first_outcome_and_a_duplicate_is_refused(destroyed: World):
    w = destroyed
    first = w.ok(erasure("node-1"))
    n = len(w.m.state.audit)
    assert w.do(erasure("node-1")) == first  # exactly-once: the same command again
    assert len(w.m.state.audit) == n
    # Should the exactly-once entry be gone (it never is), the version still refuses.
    del w.m.state.outcomes["node-1:erase-k1-1"]
    w.rejects(erasure("node-1"), Reason.DUPLICATE_POST)
    assert w.m.state.keys["k1"].versions[1].erased_by == ("node-1",)


def test_forged_and_unauthorised_confirmations_refused(destroyed: World):
    w = destroyed
    forged = sign_command(private_key("node-2"), erasure("node-1"), CLUSTER)
    w.rejects(forged, Reason.BAD_SIGNATURE)
    assert "node-1:erase-k1-1" not in w.m.state.outcomes  # not remembered: id still free
    w.rejects(erasure("ops"), Reason.UNAUTHORIZED)  # an operator cannot confirm for nodes
    w.rejects(erasure("node-9"), Reason.UNKNOWN_AUTHOR)
    assert w.m.state.keys["k1"].versions[1].erased_by == ()
    w.ok(erasure("node-1"))  # the genuine one still goes through


def test_snapshot_roundtrip_and_version(destroyed: World):
    w = destroyed
    w.ok(erasure("node-2"))
    snap = w.snap()
    assert msgpack.unpackb(snap, raw=False, strict_map_key=False)["v"] == SNAPSHOT_VERSION == 11
    m = Machine.from_snapshot(snap, genesis=w.m.genesis)
    assert m.state.keys["k1"].versions[1].erased_by == ("node-2",)
    assert m.snapshot() == snap
    raw = msgpack.unpackb(snap, raw=False, strict_map_key=False)
    raw["v"] = 4
    with pytest.raises(DecodeError, match="version"):
        decode_state(msgpack.packb(raw, use_bin_type=True))


def _forged(world: World, mutate) -> bytes:
    st = decode_state(world.snap())
    mutate(st.keys["k1"].versions[1], st)
    return encode_state(st)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v, st: setattr(v, "erased_by", ("node-2", "node-1")), "sorted"),
        (lambda v, st: setattr(v, "erased_by", ("node-1", "node-1")), "sorted"),
        (lambda v, st: setattr(v, "erased_by", ("node-7",)), "sorted members"),
        (lambda v, st: setattr(v, "erased_by", ("alice",)), "sorted members"),
    ],
)
def test_forged_confirmations_refused_at_restore(destroyed: World, mutate, message):
    destroyed.ok(erasure("node-1"))
    with pytest.raises(DecodeError, match=message):
        decode_state(_forged(destroyed, mutate))


def test_confirmations_on_a_live_version_refused_at_restore(ready: World):
    ready.active_key("k1")

    def mutate(v, st):
        v.erased_by = ("node-1",)

    with pytest.raises(DecodeError, match="live version"):
        decode_state(_forged(ready, mutate))


def test_a_removed_members_confirmation_stays(destroyed: World):
    w = destroyed
    w.ok(erasure("node-3"))
    w.govern(RemoveMember(w.rid("rm"), "ops", "node-3"))
    v = w.m.state.keys["k1"].versions[1]
    assert v.erased_by == ("node-3",)
    m = Machine.from_snapshot(w.snap(), genesis=w.m.genesis)  # integrity accepts it
    assert m.state.keys["k1"].versions[1].erased_by == ("node-3",)
    # Removed: it can post nothing new (a retry of its old post gets the first outcome).
    w.rejects(erasure("node-3", version=1, rid="erase-k1-1-again"), Reason.UNKNOWN_AUTHOR)
    assert w.ok(erasure("node-1")).detail == "erased by 1/2 members"


# ------------------------------------------- revocation of approved, unexecuted requests


def test_revoke_fails_an_approved_unexecuted_sign_request(ready: World):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"approved, not yet signed"))
    ready.approve("s1", "alice")
    assert ready.approve("s1", "bob").code == "approved"
    ref = ready.req("s1").ref
    assert ready.m.executable(ref).state is RequestState.APPROVED
    result = ready.result("s1")
    ready.ok(RequestRevoke("rv", "ops", "k1", 1))
    ready.approve("rv", "alice")
    ready.approve("rv", "bob")
    s1 = ready.req("s1")
    assert (s1.state, s1.failure) == (RequestState.FAILED, "version_revoked")
    with pytest.raises(Rejected) as info:  # members refuse to contribute
        ready.m.executable(ref)
    assert info.value.reason is Reason.NOT_APPROVED
    # A signature made before the revoke cannot be recorded after it.
    ready.rejects(RecordResult("late", "node-1", ref, result), Reason.REQUEST_DECIDED)
    # Nor can anyone submit a new sign request on the revoked version.
    ready.rejects(RequestSign("s2", "app", "k1", 1, "", b"m"), Reason.VERSION_NOT_USABLE)


def test_retired_version_cannot_sign(ready: World):
    ready.active_key("k1")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    ready.approve("rot", "alice")
    ready.approve("rot", "bob")
    ready.post_dkg("rot")
    ready.advance()
    key = ready.m.state.keys["k1"]
    assert (key.primary, key.versions[1].state) == (2, VersionState.RETIRED)
    ready.rejects(RequestSign("s1", "app", "k1", 1, "", b"m"), Reason.VERSION_NOT_USABLE)
    assert ready.ok(RequestSign("s2", "app", "k1", 0, "", b"m")).ok
    assert ready.req("s2").version == 2


def test_erasure_is_not_a_signed_kind_exception():
    from node.state.commands import SIGNED_KINDS

    assert "record_erasure" in SIGNED_KINDS
    assert dataclasses.fields(RecordErasure)[-1].name == "signature"
