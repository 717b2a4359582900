"""Grants (docs/grants.md): quorum-approved capabilities for automated clients.

Every acceptance and rejection of `create_grant`, `revoke_grant` and of sign/decrypt
requests made under a grant; the re-checks `executable()` makes on its own replica
(forged grantee signatures, forged or edited grants in a snapshot); expiry, exhaustion
and revocation failing in-flight requests; snapshot and audit.
"""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from node.state import (
    AddPrincipal,
    CreateGrant,
    CreateKey,
    DecodeError,
    Machine,
    Reason,
    RecordResult,
    RekeyPrincipal,
    RequestDecrypt,
    RequestSign,
    RequestState,
    RevokeGrant,
    SetPolicy,
    encode_command,
)
from node.state.approvals import sign_command
from node.state.audit import encode_records
from node.state.commands import MAX_GRANT_EPOCHS
from node.state.digest import digest_of, payload_hash
from node.state.errors import Rejected
from node.state.grants import grant_payload
from node.state.model import GrantState

from .conftest import CLUSTER, World, private_key, public_key


def grant_cmd(w: World, gid: str = "g1", **kw) -> CreateGrant:
    args = dict(
        grantee="app", key_id="k1", operations=("sign",), context="ci/", context_match="prefix",
        max_uses=3, expires_epoch=w.m.state.epoch + 10,
    )  # fmt: skip
    args.update(kw)
    return CreateGrant(w.rid("cg"), "ops", gid, **args)


def under(w: World, gid: str = "g1", *, author: str = "app", signer: str | None = "app",
          key_id: str = "k1", context: str = "ci/build-1", message: bytes = b"artifact",
          rid: str | None = None):  # fmt: skip
    cmd = RequestSign(rid or w.rid("gs"), author, key_id, 0, context, message, grant=gid,
                      signature=bytes(64))  # fmt: skip
    return sign_command(private_key(signer), cmd, CLUSTER) if signer else cmd


@pytest.fixture
def granted(ready: World) -> World:
    """Client `app` has a registered key (governance rekey), key k1 is active, grant g1
    (prefix "ci/", 3 uses, expires 10 epochs ahead) is approved by alice and bob."""
    w = ready
    w.govern(RekeyPrincipal(w.rid("rk"), "ops", "app", public_key("app")))
    w.active_key("k1")
    cmd = grant_cmd(w)
    out = w.ok(cmd)
    assert out.code == "pending" and w.m.state.grants["g1"].state is GrantState.PENDING
    w.approve(cmd.request_id, "alice")
    out = w.approve(cmd.request_id, "bob")
    assert out.ok and out.code == "executed", out
    assert w.m.state.grants["g1"].state is GrantState.ACTIVE
    return w


def test_request_under_grant_is_approved_at_once_and_executable(granted: World):
    w = granted
    cmd = under(w)
    out = w.ok(cmd)
    assert out.code == "approved" and "use 1/3" in out.detail
    ref = f"app:{cmd.request_id}"
    req = w.m.executable(ref)
    assert req.grant == "g1" and req.grant_use == 1 and req.approvals == {}
    assert w.m.state.grants["g1"].uses == 1
    assert w.ok(RecordResult(w.rid("res"), "node-1", ref, w.result(ref))).code == "executed"
    # exactly once: a retry of the same signed command takes no second use
    assert w.do(cmd) == out
    assert w.m.state.grants["g1"].uses == 1


def test_uses_run_out(granted: World):
    w = granted
    for _ in range(3):
        w.ok(under(w))
    w.rejects(under(w), Reason.GRANT_EXHAUSTED)


def test_expiry_stops_use_and_fails_in_flight_requests(granted: World):
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"
    w.advance(by=w.m.state.grants["g1"].expires_epoch - w.m.state.epoch)
    req = w.m.state.requests[ref]
    assert req.state is RequestState.FAILED and req.failure == "grant_expired"
    with pytest.raises(Rejected):
        w.m.executable(ref)
    w.rejects(under(w), Reason.GRANT_EXPIRED)


@pytest.mark.parametrize("revoker", ["alice", "ops"])
def test_revocation_is_immediate_and_fails_in_flight_requests(granted: World, revoker: str):
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"
    out = w.ok(RevokeGrant(w.rid("rv"), revoker, "g1"))
    assert "1 open request(s) failed" in out.detail
    g = w.m.state.grants["g1"]
    assert g.state is GrantState.REVOKED and g.revoked_by == revoker
    assert w.m.state.requests[ref].failure == "grant_revoked"
    with pytest.raises(Rejected) as exc:
        w.m.executable(ref)
    assert exc.value.reason is Reason.NOT_APPROVED
    w.rejects(under(w), Reason.GRANT_NOT_ACTIVE)
    w.rejects(RevokeGrant(w.rid("rv"), "bob", "g1"), Reason.GRANT_NOT_ACTIVE)


def test_who_may_revoke(granted: World):
    w = granted
    w.rejects(RevokeGrant(w.rid("rv"), "app", "g1"), Reason.UNAUTHORIZED)
    w.rejects(RevokeGrant(w.rid("rv"), "node-1", "g1"), Reason.UNAUTHORIZED)
    w.rejects(RevokeGrant(w.rid("rv"), "ops", "nope"), Reason.UNKNOWN_GRANT)
    # an approver outside the grant's quorum (dave is an approver of no policy)
    w.govern(AddPrincipal(w.rid("ap"), "ops", "dave", "approver", public_key("dave")))
    w.rejects(RevokeGrant(w.rid("rv"), "dave", "g1"), Reason.NOT_AN_APPROVER)
    forged = sign_command(private_key("node-1"), RevokeGrant(w.rid("rv"), "alice", "g1"), CLUSTER)
    w.rejects(forged, Reason.BAD_SIGNATURE)
    assert w.m.state.grants["g1"].state is GrantState.ACTIVE


def test_refused_outside_the_grant(granted: World):
    w = granted
    w.govern(AddPrincipal(w.rid("ap"), "ops", "app2", "client", public_key("app2")))
    w.rejects(under(w, author="app2", signer="app2"), Reason.OPERATION_NOT_ALLOWED)
    w.govern(w.policy_command(w.rid("p"), requesters=("app", "app2")))  # weakening: waits
    w.rejects(under(w, author="app2", signer="app2"), Reason.OUTSIDE_GRANT)  # not the grantee
    w.rejects(under(w, context="prod/x"), Reason.OUTSIDE_GRANT)  # outside the prefix
    w.rejects(under(w, context="ci"), Reason.OUTSIDE_GRANT)
    w.rejects(under(w, gid="nope"), Reason.UNKNOWN_GRANT)
    w.active_key("k2")
    w.rejects(under(w, key_id="k2"), Reason.OUTSIDE_GRANT)  # another key
    assert w.m.state.grants["g1"].uses == 0


def test_exact_context(granted: World):
    w = granted
    cmd = grant_cmd(w, "g2", context="release", context_match="exact")
    w.ok(cmd)
    w.approve(cmd.request_id, "bob")
    w.approve(cmd.request_id, "carol")
    w.rejects(under(w, "g2", context="release-2"), Reason.OUTSIDE_GRANT)
    w.rejects(under(w, "g2", context="releas"), Reason.OUTSIDE_GRANT)
    assert w.ok(under(w, "g2", context="release")).code == "approved"


def test_wrong_operation(ready: World):
    w = ready
    w.govern(RekeyPrincipal(w.rid("rk"), "ops", "app", public_key("app")))
    w.active_key("k1")
    w.active_key("e1", purpose="encrypt")
    w.rejects(grant_cmd(w, operations=("decrypt",)), Reason.WRONG_PURPOSE)
    w.rejects(grant_cmd(w, key_id="e1"), Reason.WRONG_PURPOSE)  # sign on an encrypt key
    cmd = grant_cmd(w, "gd", key_id="e1", operations=("decrypt",), context="db",
                    context_match="exact")  # fmt: skip
    w.ok(cmd)
    w.approve(cmd.request_id, "alice")
    w.approve(cmd.request_id, "bob")
    # a decrypt grant does not sign (and the sign key is outside it anyway)
    w.rejects(under(w, "gd", key_id="e1", context="db"), Reason.WRONG_PURPOSE)
    dec = RequestDecrypt(w.rid("gd"), "app", "e1", 1, "db", b"ct", grant="gd",
                         signature=bytes(64))  # fmt: skip
    out = w.ok(sign_command(private_key("app"), dec, CLUSTER))
    assert out.code == "approved"
    w.m.executable(f"app:{dec.request_id}")


def test_grantee_signature_required(granted: World):
    """A node (or anyone) cannot make a request in the grantee's name under its grant:
    unsigned is malformed, signed with any other key is bad_signature (not remembered),
    and a node is not even allowed to author a client request."""
    w = granted
    unsigned = dataclasses.replace(under(w, signer=None), signature=b"")
    with pytest.raises(DecodeError):
        encode_command(unsigned)
    raw = msgpack.unpackb(encode_command(under(w)), raw=False)
    del raw["signature"]
    n = len(w.m.state.audit)
    out = w.m.apply(msgpack.packb(raw, use_bin_type=True))
    assert b"malformed" in out and len(w.m.state.audit) == n
    raw = msgpack.unpackb(encode_command(under(w)), raw=False)
    del raw["grant"]
    assert b"malformed" in w.m.apply(msgpack.packb(raw, use_bin_type=True))
    for signer in ("node-1", "alice", "app2"):
        forged = under(w, signer=signer)
        w.rejects(forged, Reason.BAD_SIGNATURE)
        assert f"app:{forged.request_id}" not in w.m.state.outcomes  # id not taken
    w.rejects(under(w, author="node-1", signer="node-1"), Reason.UNAUTHORIZED)
    # a genuine signature moved onto another message, or another request id, fails
    good = under(w)
    w.rejects(dataclasses.replace(good, message=b"evil"), Reason.BAD_SIGNATURE)
    w.rejects(dataclasses.replace(good, request_id="other"), Reason.BAD_SIGNATURE)
    w.rejects(dataclasses.replace(good, context="ci/other"), Reason.BAD_SIGNATURE)
    assert w.m.state.grants["g1"].uses == 0
    # a client with no registered key cannot use any grant
    w.govern(AddPrincipal(w.rid("ap"), "ops", "app3", "client", b""))
    w.rejects(under(w, author="app3", signer="app3"), Reason.BAD_SIGNATURE)


def test_plain_requests_unchanged(granted: World):
    """Without a grant a request still needs its k approvals (same encoding as before)."""
    w = granted
    cmd = RequestSign(w.rid("s"), "app", "k1", 0, "ci/x", b"m")
    assert b"grant" not in encode_command(cmd) and b"signature" not in encode_command(cmd)
    assert w.ok(cmd).code == "pending"
    with pytest.raises(Rejected):
        w.m.executable(f"app:{cmd.request_id}")


def test_create_grant_rejections(ready: World):
    w = ready
    w.active_key("k1")
    w.rejects(grant_cmd(w), Reason.INVALID_PRINCIPAL)  # app has no registered key yet
    w.govern(RekeyPrincipal(w.rid("rk"), "ops", "app", public_key("app")))
    w.govern(AddPrincipal(w.rid("ap"), "ops", "app2", "client", public_key("app2")))
    w.rejects(grant_cmd(w, grantee="app2"), Reason.OPERATION_NOT_ALLOWED)  # not a requester
    w.rejects(grant_cmd(w, grantee="alice"), Reason.INVALID_PRINCIPAL)
    w.rejects(grant_cmd(w, grantee="zed"), Reason.UNKNOWN_PRINCIPAL)
    w.rejects(grant_cmd(w, key_id="nope"), Reason.UNKNOWN_KEY)
    w.rejects(grant_cmd(w, operations=()), Reason.INVALID_ARGUMENT)
    w.rejects(grant_cmd(w, context=""), Reason.INVALID_ARGUMENT)  # prefix "" = everything
    w.rejects(grant_cmd(w, expires_epoch=w.m.state.epoch), Reason.GRANT_EXPIRED)
    far = w.m.state.epoch + MAX_GRANT_EPOCHS + 1
    w.rejects(grant_cmd(w, expires_epoch=far), Reason.INVALID_ARGUMENT)
    w.rejects(dataclasses.replace(grant_cmd(w), author="alice"), Reason.UNAUTHORIZED)
    forged = sign_command(private_key("node-1"), grant_cmd(w), CLUSTER)
    w.rejects(forged, Reason.BAD_SIGNATURE)
    w.ok(grant_cmd(w, "g1"))
    w.rejects(grant_cmd(w, "g1"), Reason.DUPLICATE_NAME)
    with pytest.raises(DecodeError):
        encode_command(grant_cmd(w, max_uses=0))
    with pytest.raises(DecodeError):
        encode_command(grant_cmd(w, context_match="glob"))
    w.ok(grant_cmd(w, "g2", context="", context_match="exact"))  # exact "" is explicit


def test_digest_binds_every_grant_field(granted: World):
    w = granted
    base = grant_cmd(w, "gx")
    w.ok(base)
    req = w.req(base.request_id)
    g = w.m.state.grants["gx"]
    for change in (
        {"grantee": "app2"}, {"key_id": "k9"}, {"context": "ci"}, {"context_match": "exact"},
        {"max_uses": 4}, {"expires_epoch": g.expires_epoch + 1}, {"grant_id": "gy"},
    ):  # fmt: skip
        other = dataclasses.replace(g, **change)
        d = digest_of(req, CLUSTER, payload_hash(grant_payload(other)))
        assert d != req.digest, change
    assert digest_of(req, CLUSTER, payload_hash(grant_payload(g))) == req.digest
    # an approval of one grant does not approve another
    w.approve(base.request_id, "alice")
    assert w.m.state.grants["gx"].state is GrantState.PENDING


def test_pending_grant_revoked_or_expired(granted: World):
    w = granted
    cmd = grant_cmd(w, "gp")
    w.ok(cmd)
    w.ok(RevokeGrant(w.rid("rv"), "carol", "gp"))
    req = w.req(cmd.request_id)
    assert req.state is RequestState.FAILED and req.failure == "revoked"
    w.rejects(w.signed(cmd) and _approval(w, cmd.request_id, "alice"), Reason.REQUEST_DECIDED)
    late = grant_cmd(w, "gq", expires_epoch=w.m.state.epoch + 1)
    w.ok(late)
    w.advance()
    assert w.m.state.grants["gq"].state is GrantState.FAILED
    assert w.req(late.request_id).failure == "grant_expired"
    w.rejects(under(w, "gq"), Reason.GRANT_NOT_ACTIVE)


def _approval(w: World, rid: str, who: str):
    return lambda: w.approve(rid, who)


def test_grant_not_for_members(granted: World):
    w = granted
    ref = w.m.state.grants["g1"].request
    with pytest.raises(Rejected) as exc:
        w.m.executable(ref)
    assert exc.value.reason is Reason.WRONG_REQUEST_KIND


def test_rekey_of_a_grantee_is_weakening(granted: World):
    w = granted
    out = w.ok(RekeyPrincipal(w.rid("rk"), "ops", "app", public_key("app-new")))
    assert "grantee app" in out.detail
    assert w.m.state.audit[-1].outcome == "pending!weakening"


def test_policy_change_removing_requester_stops_new_use(granted: World):
    w = granted
    pol = SetPolicy(w.rid("p"), "ops", "p1", (), ("decrypt", "sign"), ("alice", "bob", "carol"),
                    2, 0, 0, 2, 1, False)  # fmt: skip
    w.govern(pol)
    w.rejects(under(w), Reason.OPERATION_NOT_ALLOWED)


# ------------------------------------------------------------ snapshots and replicas


def test_snapshot_roundtrip_and_executable_after_restore(granted: World):
    w = granted
    cmd = under(w)
    w.ok(cmd)
    snap = w.snap()
    m = Machine.from_snapshot(snap, genesis=w.m.genesis)
    assert m.snapshot() == snap
    assert m.executable(f"app:{cmd.request_id}").grant == "g1"
    export = encode_records(w.m.state.audit)
    assert cmd.signature not in export and b"artifact" not in export


def _forge(w: World, edit) -> bytes:
    import copy

    st = copy.deepcopy(w.m.state)
    edit(st)
    from node.state.snapshot import encode_state

    return encode_state(st)


def test_forged_grantee_signature_in_snapshot_not_executable(granted: World):
    """A snapshot cannot make a request under a grant executable without the grantee's
    signature: restore accepts a 64-byte value, `executable()` re-verifies it."""
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"

    def edit(st):
        st.requests[ref].grant_signature = private_key("node-1").sign(b"x")

    m = Machine.from_snapshot(_forge(w, edit), genesis=w.m.genesis)
    with pytest.raises(Rejected) as exc:
        m.executable(ref)
    assert exc.value.reason is Reason.BAD_SIGNATURE


def test_forged_request_under_grant_in_snapshot_not_executable(granted: World):
    """A malicious leader adds, in a snapshot, a request in app's name under g1 (any
    message, a signature by its own key): not executable anywhere."""
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"

    def edit(st):
        req = st.requests[ref]
        forged = dataclasses.replace(under(w, signer="node-2", rid="evil"))
        new = dataclasses.replace(req, request_id="evil", grant_signature=forged.signature,
                                  grant_use=2, approvals={})  # fmt: skip
        new.digest = digest_of(new, st.cluster_id, new.payload_hash)
        st.requests[new.ref] = new
        st.open[new.ref] = "app"
        st.grants["g1"].uses = 2

    m = Machine.from_snapshot(_forge(w, edit), genesis=w.m.genesis)
    with pytest.raises(Rejected) as exc:
        m.executable("app:evil")
    assert exc.value.reason is Reason.BAD_SIGNATURE
    m.executable(ref)  # the genuine one still is


def test_widened_grant_in_snapshot_refused_or_not_executable(granted: World):
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"

    def widen(st):
        st.grants["g1"].max_uses = 1000

    with pytest.raises(DecodeError, match="fields are not the ones"):
        Machine.from_snapshot(_forge(w, widen), genesis=w.m.genesis)

    def widen_and_rehash(st):
        g = st.grants["g1"]
        g.max_uses = 1000
        greq = st.requests[g.request]
        greq.payload_hash = payload_hash(grant_payload(g))
        greq.digest = digest_of(greq, st.cluster_id, greq.payload_hash)

    m = Machine.from_snapshot(_forge(w, widen_and_rehash), genesis=w.m.genesis)
    with pytest.raises(Rejected) as exc:
        m.executable(ref)
    assert exc.value.reason is Reason.NOT_APPROVED  # the quorum approved another grant


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda st, ref: setattr(st.grants["g1"], "uses", 5), "uses"),
        (lambda st, ref: setattr(st.requests[ref], "grant", "nope"), "missing grant"),
        (lambda st, ref: setattr(st.requests[ref], "grant_use", 7), "impossible"),
        (lambda st, ref: setattr(st.requests[ref], "author", "bob"), None),
        (lambda st, ref: setattr(st.grants["g1"], "state", GrantState.PENDING), "pending"),
        (lambda st, ref: setattr(st.grants["g1"], "revoked_epoch", 3), "revocation"),
        (lambda st, ref: setattr(st.grants["g1"], "context_match", "glob"), None),
        (lambda st, ref: setattr(st.requests[ref], "grant_signature", b"\x01"), "signature"),
    ],
)
def test_broken_grant_snapshots_refused(granted: World, edit, match):
    w = granted
    cmd = under(w)
    w.ok(cmd)
    ref = f"app:{cmd.request_id}"
    with pytest.raises(DecodeError, match=match):
        Machine.from_snapshot(_forge(w, lambda st: edit(st, ref)), genesis=w.m.genesis)


def test_grant_survives_no_create_key_interference(granted: World):
    """Unrelated key requests are untouched by grants (version 0 requests, etc.)."""
    w = granted
    w.ok(CreateKey(w.rid("ck"), "ops", "k3", "sign", "p1"))
    assert w.m.state.grants["g1"].state is GrantState.ACTIVE
