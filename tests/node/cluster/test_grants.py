"""Grants on a real cluster (docs/grants.md): an approved grant lets app1 sign without
approvals, with the signing key `cluster init` gave it (its profile's); uses run out;
expiry; revocation by one approver; refusals (another client, a context outside,
unsigned, signed with another key, a node in app1's name); re-keying app1
(`grants keygen` + `grants client-key`) and `--signing-key`."""

from __future__ import annotations

import asyncio
import base64
import json

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.client.grants import SIGNING_KEY_ENV, load_signing_key, signed_request
from node.client.profile import load_profile
from node.state import RequestSign, decode_outcome, encode_command, sign_command

from .harness import CliFailed, Live, running

pytestmark = pytest.mark.slow


def _profile_key(c: Live, who: str) -> Ed25519PrivateKey:
    """`who`'s signing key as its profile names it (issued by `cluster init`)."""
    path = load_profile(c.profile(who)).approval_key
    assert path is not None and path.name == "approval.key", path
    return load_signing_key(path)


def _grant(c: Live, gid: str, *, max_uses: int, expires: int, context: str = "ci/") -> None:
    ref = c.submit_ref("grants", "create", gid, "--grantee", "app1", "--key", "k1",
                       "--operations", "sign", "--context", context, "--prefix",
                       "--max-uses", str(max_uses), "--expires-epoch", str(expires),
                       who="ops")  # fmt: skip
    c.approve(ref, "alice", "bob")
    g = json.loads(c.cli("grants", "show", gid, "--json", who="audit"))
    assert g["state"] == "active" and g["usable"], g


def _gsign(c: Live, gid: str, msg: bytes, context: str = "ci/build",
           keyfile: str | None = None) -> dict:  # fmt: skip
    """`custody grant-sign` as app1: with its profile's key unless `keyfile` is given."""
    extra = ("--signing-key", keyfile) if keyfile else ()
    out = c.cli("grant-sign", "--grant", gid, "--key", "k1", "--message-hex", msg.hex(),
                "--context", context, *extra, "--wait", "--json", who="app1")  # fmt: skip
    return json.loads(out)


def _post_signed(c: Live, who: str, b64: str, node: str = "node-1") -> tuple[int, dict]:
    return asyncio.run(c.http(who, "POST", node, "/v1/requests/signed",
                              json_body={"command_b64": b64}))  # fmt: skip


def test_grants_end_to_end(tmp_path, monkeypatch):
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    with running(tmp_path / "c", schedule={"epoch_min_interval_s": 0.0}) as c:
        cid = json.loads(c.cli("requests", "list", "--json", who="audit"))["requests"][0]
        cid = cid["cluster_id"]
        # app1's signing key: issued by `cluster init`, registered at bootstrap, in its profile
        key = _profile_key(c, "app1")
        epoch = c.status()[0]["status"]["epoch"]

        # 1. a grant approved by two approvers: app1 signs with no approvals at all
        _grant(c, "g1", max_uses=2, expires=epoch + 50)
        msg = b"build artifact 1"
        r = _gsign(c, "g1", msg)
        assert r["state"] == "executed" and r["approvals"] == [], r
        c.group_key("k1").verify(bytes.fromhex(r["signature"]), msg)

        # 2. refusals, none of which takes a use
        with pytest.raises(CliFailed, match="outside_grant"):
            _gsign(c, "g1", b"x", context="prod/deploy")
        other = Ed25519PrivateKey.generate()
        b64 = signed_request(other, cid, request_id="forged-1", author="app1", grant="g1",
                             key_id="k1", op="sign", payload=b"evil", context="ci/x")  # fmt: skip
        status, out = _post_signed(c, "app1", b64)
        assert status == 401 and out["error"] == "bad_signature", out
        good = RequestSign("nosig-1", "app1", "k1", 0, "ci/x", b"evil")
        raw = msgpack.unpackb(encode_command(good), raw=False)
        raw["grant"] = "g1"  # a grant without the grantee's signature
        status, out = _post_signed(c, "app1", base64.b64encode(msgpack.packb(raw)).decode())
        assert status == 400, out
        b64 = signed_request(key, cid, request_id="app2-1", author="app1", grant="g1",
                             key_id="k1", op="sign", payload=b"evil", context="ci/x")  # fmt: skip
        status, out = _post_signed(c, "app2", b64)  # app2 posting app1's command
        assert status == 403, out
        b64 = signed_request(_profile_key(c, "app2"), cid, request_id="app2-2", author="app2",
                             grant="g1", key_id="k1", op="sign", payload=b"evil",
                             context="ci/x")  # fmt: skip
        status, out = _post_signed(c, "app2", b64)  # app2, with its own key, under app1's grant
        # its signature verifies (app2's key is registered); app2 is no requester of p1
        assert status == 403 and out["error"] == "operation_not_allowed", out
        # a node (node-1's certificate) in app1's name: not through the client API...
        status, out = _post_signed(c, "node-1", b64)
        assert status == 403, out
        # ...nor proposed straight into the log: no valid grantee signature
        forged = sign_command(
            other, RequestSign("node-forged", "app1", "k1", 0, "ci/x", b"evil", grant="g1",
                               signature=bytes(64)), cid,
        )  # fmt: skip
        leader = c.leader()
        status, body = asyncio.run(c.http("node-1", "POST", leader, "/v1/peer/propose",
                                          data=encode_command(forged)))  # fmt: skip
        assert status == 200 and decode_outcome(body).code == "bad_signature"
        g = json.loads(c.cli("grants", "show", "g1", "--json", who="audit"))
        assert g["uses"] == 1, g

        # 3. uses run out
        r = _gsign(c, "g1", b"build artifact 2")
        assert r["state"] == "executed"
        with pytest.raises(CliFailed, match="grant_exhausted"):
            _gsign(c, "g1", b"build artifact 3")

        # 4. revocation by one approver stops it at once
        _grant(c, "g2", max_uses=10, expires=epoch + 50)
        assert _gsign(c, "g2", b"before revocation")["state"] == "executed"
        c.cli("grants", "revoke", "g2", who="carol")
        with pytest.raises(CliFailed, match="grant_not_active"):
            _gsign(c, "g2", b"after revocation")
        listed = json.loads(c.cli("grants", "list", "--json", who="app1"))["grants"]
        assert {g["grant_id"]: g["state"] for g in listed} == {"g1": "active", "g2": "revoked"}
        assert json.loads(c.cli("grants", "list", "--json", who="app2"))["grants"] == []

        # 5. expiry by epoch advance
        now = c.status()[0]["status"]["epoch"]
        _grant(c, "g3", max_uses=10, expires=now + 1)
        c.cli("epoch", "advance", who="ops")
        with pytest.raises(CliFailed, match="grant_expired"):
            _gsign(c, "g3", b"too late")

        # 6. re-keying app1 through governance (keygen + client-key): with no live grant
        # left it is not weakening; afterwards the new key works (--signing-key) and the
        # profile's old one is refused
        c.cli("grants", "revoke", "g1", who="ops")
        newfile = tmp_path / "app1-new.pem"
        pub = c.cli("grants", "keygen", "--out", str(newfile)).strip()
        assert len(bytes.fromhex(pub)) == 32 and newfile.stat().st_mode & 0o077 == 0
        ref = c.submit_ref("grants", "client-key", "app1", "--public-key-hex", pub, who="ops")
        c.approve(ref, "alice", "bob")
        assert c.wait_request(ref)["state"] == "executed"
        now = c.status()[0]["status"]["epoch"]
        _grant(c, "g4", max_uses=10, expires=now + 50)
        msg = b"signed with the new key"
        r = _gsign(c, "g4", msg, keyfile=str(newfile))
        assert r["state"] == "executed" and r["approvals"] == [], r
        c.group_key("k1").verify(bytes.fromhex(r["signature"]), msg)
        with pytest.raises(CliFailed, match="bad_signature"):
            _gsign(c, "g4", b"the old key")  # the profile's key is no longer app1's
        monkeypatch.setenv(SIGNING_KEY_ENV, str(newfile))  # the variable overrides the profile
        assert _gsign(c, "g4", b"via the variable")["state"] == "executed"

        audit = c.audit()
        kinds = {a["kind"] for a in audit}
        assert {"create_grant", "revoke_grant", "request_sign"} <= kinds
