"""Rollback and the dual-sign window on a running cluster (issue 11 §2; docs/lifecycle.md).

One 3-node cluster (threshold 2) for the module; the tests run in file order and build
on each other (kr: v1, rotated to v2, rolled back to v1, rotated to v3, v4...; kd under
a policy with a dual-sign window). Epochs move only when asked (`epoch_interval_s = 0`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.node.cluster.harness import Live, b64

pytestmark = pytest.mark.slow

MEMBERS = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("rollback") / "c"
    c = Live.init(root, schedule={"epoch_min_interval_s": 0.0, "epoch_interval_s": 0.0,
                                  "dkg_timeout_s": 10.0})  # fmt: skip
    c.up()
    try:
        for policy, extra in (("pr", ("--grace-epochs", "2")),
                              ("pd", ("--grace-epochs", "3", "--dual-sign-epochs", "2"))):
            ref = c.submit_ref("policy", "set", policy, "--requesters", "app1", "--approvers",
                               "alice,bob,carol", "--k", "2", *extra, who="ops")  # fmt: skip
            c.approve(ref, "alice", "bob")
            assert c.wait_request(ref)["state"] == "executed"
        c.key("kr", "pr")
        yield c
    finally:
        c.down()
        for node in MEMBERS:
            assert c.pid(node) is None, f"{node} left behind"


def version(live: Live, key_id: str, number: int) -> dict[str, Any]:
    return next(v for v in live.key_view(key_id)["versions"] if v["version"] == number)


def public(live: Live, key_id: str, number: int) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(version(live, key_id, number)["group_public_key"])
    )


def rotate(live: Live, key_id: str) -> int:
    """Rotate on demand and activate; the new primary's number."""
    before = live.key_view(key_id)["primary"]
    ref = live.submit_ref("keys", "rotate", key_id, who="ops")
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    live.cli("epoch", "advance", who="ops")
    k = live.key_view(key_id)
    assert k["primary"] != before and version(live, key_id, before)["state"] == "retired", k
    return int(k["primary"])


def rollback_raw(live: Live, key_id: str, number: int, rid: str) -> tuple[int, Any]:
    """The operator's signed request_rollback, posted to the route directly."""
    from node.client.profile import load_profile
    from node.pki.store import read_private_key
    from node.state import RequestRollback, sign_command

    profile = load_profile(live.profile("ops"))
    cmd = sign_command(read_private_key(profile.approval_key),
                       RequestRollback(rid, "ops", key_id, number), profile.cluster_id)  # fmt: skip
    body = {"request_id": rid, "version": number, "signature": cmd.signature.hex()}
    return asyncio.run(live.http("ops", "POST", "node-1", f"/v1/keys/{key_id}/rollback",
                                 json_body=body))  # fmt: skip


def test_rollback_within_grace_needs_the_quorum_and_restores_the_old_key(live: Live) -> None:
    v1_key = public(live, "kr", 1)
    assert rotate(live, "kr") == 2
    out = json.loads(live.cli("keys", "rollback", "kr", "--version", "1", "--json", who="ops"))
    assert out["ok"] and out["code"] == "pending", out
    ref = out["request"]
    shown = live.cli("requests", "show", ref, who="audit")
    assert "version 1 becomes the primary again" in shown
    # One approver alone cannot roll back: still pending, nothing changed.
    live.approve(ref, "alice")
    assert live.request(ref)["state"] == "pending"
    assert live.key_view("kr")["primary"] == 2
    # The same approver again is refused (the quorum is two different approvers).
    with pytest.raises(AssertionError, match="duplicate_approval"):
        live.approve(ref, "alice")
    live.approve(ref, "bob")
    r = live.wait_request(ref)
    assert r["state"] == "executed" and r["kind"] == "rollback", r
    k = live.key_view("kr")
    v1, v2 = version(live, "kr", 1), version(live, "kr", 2)
    assert k["primary"] == 1 and k["lifecycle_request"] is None, k
    assert v1["state"] == "active" and v1["rolled_back_epoch"] > 0, v1
    assert v2["state"] == "retired" and v2["retired_epoch"] == v1["rolled_back_epoch"], v2
    # The previous primary signs again, under its old public key.
    message = b"signed by v1 again after the rollback"
    sig = live.sign("kr", message)
    v1_key.verify(sig, message)
    status, err = asyncio.run(live.http(
        "app1", "POST", "node-1", "/v1/keys/kr/sign",
        json_body={"request_id": "sign-v2-after-rollback", "message_b64": b64(b"m"),
                   "version": 2},
    ))  # fmt: skip
    assert status == 409 and err["error"] == "version_not_usable", err
    rec = [a for a in live.audit() if a["subject"] == ref and a["outcome"] == "executed"]
    assert rec and rec[-1]["kind"] == "approve" and rec[-1]["version"] == 1


def test_rollback_is_an_event(live: Live) -> None:
    from tests.node.cluster.test_events import check_well_formed, replay

    events = replay(live, query="follow=false&after=-1")
    check_well_formed(events)
    mine = [(t, d) for _, t, d in events if d.get("key_id") == "kr"]
    kinds = [t for t, _ in mine]
    assert "rollback.requested" in kinds and "version.rolled_back" in kinds, kinds
    done = next(d for t, d in mine if t == "version.rolled_back")
    assert (done["version"], done["retired"], done["request_kind"]) == (1, 2, "rollback")
    # The epoch that activated v2 still says v1 retired then (a later rollback does not
    # rewrite past events).
    act = [d for t, d in mine if t == "epoch.advanced"]
    assert not act  # epoch events name no key
    epochs = [d for _, t, d in events if t == "epoch.advanced"
              and {"key_id": "kr", "version": 2} in d["activated"]]  # fmt: skip
    assert epochs and epochs[0]["retired"] == [{"key_id": "kr", "version": 1}]


def test_rollback_after_grace_is_refused_and_changes_nothing(live: Live) -> None:
    assert rotate(live, "kr") == 3  # v3 replaces v1 (the rolled-back primary)
    for _ in range(3):  # grace 2: the window was the activation epoch .. +2
        live.cli("epoch", "advance", who="ops")
    before = live.key_view("kr")
    status, err = rollback_raw(live, "kr", 1, "rb-late")
    assert status == 409 and err["error"] == "rollback_not_allowed", err
    assert "grace" in err["message"]
    assert live.key_view("kr") == before


def test_rollback_of_a_revoked_version_is_refused(live: Live) -> None:
    assert rotate(live, "kr") == 4  # v4 replaces v3
    ref = live.submit_ref("keys", "revoke", "kr", "--version", "3", who="ops")
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref)["state"] == "executed"
    status, err = rollback_raw(live, "kr", 3, "rb-revoked")
    assert status == 409 and err["error"] == "rollback_not_allowed", err
    assert "revoked" in err["message"]
    assert live.key_view("kr")["primary"] == 4


def test_a_forged_or_unsigned_rollback_is_refused(live: Live) -> None:
    """Only the operator's own signature opens a rollback request; nobody else may."""
    from node.client.profile import load_profile
    from node.pki.store import read_private_key
    from node.state import RequestRollback, sign_command

    alice = load_profile(live.profile("alice"))
    cmd = RequestRollback("rb-forged", "ops", "kr", 3)
    forged = sign_command(read_private_key(alice.approval_key), cmd, alice.cluster_id)
    body = {"request_id": "rb-forged", "version": 3, "signature": forged.signature.hex()}
    status, err = asyncio.run(live.http("ops", "POST", "node-1", "/v1/keys/kr/rollback",
                                        json_body=body))  # fmt: skip
    assert status == 401 and err["error"] == "bad_signature", err
    status, err = asyncio.run(live.http("alice", "POST", "node-1", "/v1/keys/kr/rollback",
                                        json_body=body))  # fmt: skip
    assert status == 403, err


def test_dual_sign_window_returns_both_signatures(live: Live) -> None:
    live.key("kd", "pd")
    v1_key = public(live, "kd", 1)
    assert rotate(live, "kd") == 2
    v2_key = public(live, "kd", 2)
    message = b"signed by both during the switch"
    ref = live.sign_request("kd", message)
    r = live.request(ref)
    assert (r["version"], r["dual_version"]) == (2, 1), r
    assert "also signed by version 1" in live.cli("requests", "show", ref, who="audit")
    live.approve(ref, "alice", "bob")  # the CLI recomputes the digest, dual version included
    r = live.wait_request(ref, timeout=40)
    assert r["state"] == "executed", r
    assert r["previous_version"] == 1
    v2_key.verify(bytes.fromhex(r["signature"]), message)
    v1_key.verify(bytes.fromhex(r["previous_signature"]), message)
    # `custody sign --wait` (the same submission again: its first outcome) prints both.
    out_dir = live.root / "dual-out"
    out_dir.mkdir()
    printed = live.cli("sign", "--key", "kd", "--message-hex", message.hex(), "--request-id",
                       ref.split(":", 1)[1], "--wait", "--out", str(out_dir / "sig"),
                       "--out-previous", str(out_dir / "prev"), who="app1")  # fmt: skip
    assert f"{r['signature']}  (version 2)" in printed
    assert f"{r['previous_signature']}  (version 1, previous)" in printed
    v2_key.verify((out_dir / "sig").read_bytes(), message)
    v1_key.verify((out_dir / "prev").read_bytes(), message)
    # After the window (2 epochs from the activation): one signature, by the primary.
    for _ in range(2):
        live.cli("epoch", "advance", who="ops")
    message = b"signed by v2 alone"
    ref = live.sign_request("kd", message)
    assert live.request(ref)["dual_version"] == 0
    live.approve(ref, "alice", "bob")
    r = live.wait_request(ref, timeout=30)
    assert r["state"] == "executed" and "previous_signature" not in r, r
    v2_key.verify(bytes.fromhex(r["signature"]), message)


def test_a_retired_version_signs_only_for_a_dual_sign_request(live: Live) -> None:
    """A malicious member (node-1's genuine credentials) cannot get commitments or a share
    of kd's retired version 1 outside a dual-sign request."""
    from node.protocols.wire import CommitRequest, ShareRequest
    from node.state import payload_hash

    status, body = asyncio.run(live.http("node-1", "POST", "node-2", "/v1/peer/sign/commit",
                                         data=CommitRequest("kd", 1, 2).encode()))  # fmt: skip
    assert status == 403 and "may not sign" in body["message"], body
    message = b"single-signed request"
    ref = live.sign_request("kd", message)
    assert live.request(ref)["dual_version"] == 0
    rows = [(1, b"\x01" * 32, b"\x02" * 32), (2, b"\x03" * 32, b"\x04" * 32)]
    req = ShareRequest(ref, 0, "kd", 1, rows, 0,
                       payload_hash(message))  # fmt: skip
    status, body = asyncio.run(live.http("node-1", "POST", "node-2", "/v1/peer/sign/share",
                                         data=req.encode()))  # fmt: skip
    assert status == 403 and "another key version" in body["message"], body


def test_revoking_the_previous_version_stops_dual_signing(live: Live) -> None:
    assert rotate(live, "kd") == 3
    ref = live.sign_request("kd", b"dual, then revoked")
    assert live.request(ref)["dual_version"] == 2
    revoke = live.submit_ref("keys", "revoke", "kd", "--version", "2", who="ops")
    live.approve(revoke, "alice", "bob")
    assert live.wait_request(revoke)["state"] == "executed"
    r = live.wait_request(ref)
    assert r["state"] == "failed" and r["failure"] == "version_revoked", r
    ref = live.sign_request("kd", b"after the revocation")
    assert live.request(ref)["dual_version"] == 0
