"""Misuse resistance on a running cluster (issue 11 §6): each misuse is refused with
its own reason, and the refusal changes no key, version or request.

Grants (expired, exhausted, revoked, someone else's, context outside) are in
test_grants.py; tampered envelopes and wrong contexts of partials in
test_envelope.py; forged and replayed approvals in test_node_attacks.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node.client.envelope import wrap_only
from node.pki.store import read_private_key
from node.state import sign_approval
from tests.node.cluster.harness import Live, b64, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("misuse") / "c"
    with running(root, schedule={"epoch_min_interval_s": 0.0}) as c:
        ref = c.submit_ref("policy", "set", "vault", "--requesters", "app1", "--operations",
                           "decrypt", "--approvers", "alice,bob,carol", "--k", "2", who="ops")
        c.approve(ref, "alice", "bob")
        ref = c.submit_ref("keys", "create", "e1", "--purpose", "encrypt", "--policy", "vault",
                           who="ops")  # fmt: skip
        c.approve(ref, "alice", "bob")
        assert c.wait_request(ref, timeout=30)["state"] == "executed"
        c.key("k2")  # for revocation and destruction
        c.cli("epoch", "advance", who="ops")
        yield c


def _state(live: Live) -> Any:
    """What a refusal must not change: every key and version, and the request count.

    The reserved cluster-audit key is left out: its use count moves with every
    audit checkpoint the leader signs, refusals included.
    """
    status, keys = asyncio.run(live.http("audit", "GET", "node-1", "/v1/keys"))
    status2, reqs = asyncio.run(live.http("audit", "GET", "node-1", "/v1/requests?limit=1000"))
    assert status == status2 == 200
    mine = [k for k in keys["keys"] if k["purpose"] != "audit"]
    return mine, len(reqs["requests"])


def _call(live: Live, who: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return asyncio.run(live.http(who, "POST", "node-1", path, json_body=body))


def _refused(live: Live, who: str, path: str, body: dict[str, Any], status: int,
             code: str) -> None:  # fmt: skip
    before = _state(live)
    got, answer = _call(live, who, path, body)
    assert (got, answer.get("error")) == (status, code), answer
    assert _state(live) == before


def _sign_body(version: int = 0) -> dict[str, Any]:
    return {"request_id": f"m-{os.urandom(6).hex()}", "message_b64": b64(b"misuse"),
            "version": version}  # fmt: skip


def _decrypt_body(live: Live, key: str, version: int, context: str = "c") -> dict[str, Any]:
    k = live.key_view(key)
    v = next(x for x in k["versions"] if x["version"] == version)
    gpk = bytes.fromhex(v["group_public_key"]) if v["group_public_key"] else bytes(32)
    _, wrapped = wrap_only(gpk, live.cluster["cluster_id"], key, version, context, os.urandom)
    return {"request_id": f"d-{os.urandom(6).hex()}", "version": version, "context": context,
            "ciphertext_b64": base64.b64encode(wrapped).decode()}  # fmt: skip


def test_decrypt_with_a_signing_key_is_refused(live: Live) -> None:
    _refused(live, "app1", "/v1/keys/k1/decrypt", _decrypt_body(live, "k1", 1), 409,
             "wrong_purpose")


def test_sign_with_an_encryption_key_is_refused(live: Live) -> None:
    _refused(live, "app1", "/v1/keys/e1/sign", _sign_body(), 409, "wrong_purpose")


def test_a_request_for_an_unknown_key_or_version_is_refused(live: Live) -> None:
    _refused(live, "app1", "/v1/keys/nope/sign", _sign_body(), 404, "unknown_key")
    _refused(live, "app1", "/v1/keys/k1/sign", _sign_body(9), 404, "unknown_version")


def test_a_client_outside_the_policy_is_refused(live: Live) -> None:
    _refused(live, "app2", "/v1/keys/k1/sign", _sign_body(), 403, "operation_not_allowed")


def test_a_retired_version_may_not_sign(live: Live) -> None:
    ref = live.submit_ref("keys", "rotate", "k1", who="ops")
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    live.cli("epoch", "advance", who="ops")
    states = {v["version"]: v["state"] for v in live.key_view("k1")["versions"]}
    assert states == {1: "retired", 2: "active"}
    _refused(live, "app1", "/v1/keys/k1/sign", _sign_body(1), 409, "version_not_usable")


def test_revoked_and_destroyed_versions_are_refused_for_everything(live: Live) -> None:
    for action in ("revoke", "destroy"):
        ref = live.submit_ref("keys", action, "k2", "--version", "1", who="ops")
        live.approve(ref, "alice", "bob")
        assert live.wait_request(ref)["state"] == "executed"
        assert live.key_view("k2")["versions"][0]["state"] == f"{action}d".replace("yd", "yed")
        if action == "destroy":  # members erase their shares after the fact: let that settle
            deadline = time.monotonic() + 30
            while len(live.key_view("k2")["versions"][0]["erased_by"]) < 3:
                assert time.monotonic() < deadline, "members did not erase k2 v1"
                time.sleep(0.05)
        _refused(live, "app1", "/v1/keys/k2/sign", _sign_body(1), 409, "version_not_usable")
        _refused(live, "app1", "/v1/keys/k2/sign", _sign_body(0), 409, "version_not_usable")


def test_an_approval_replayed_onto_another_request_is_refused(live: Live) -> None:
    ok, first = _call(live, "app1", "/v1/keys/k1/sign", _sign_body())
    ok2, second = _call(live, "app1", "/v1/keys/k1/sign", _sign_body())
    assert ok == ok2 == 200
    _, r = asyncio.run(live.http("alice", "GET", "node-1", f"/v1/requests/{first['request']}"))
    sig = sign_approval(read_private_key(live.root / "pki/principals/alice/approval.key"),
                        bytes.fromhex(r["digest"]))  # fmt: skip
    _refused(live, "alice", f"/v1/requests/{second['request']}/approve",
             {"request_id": "replay", "signature": sig.hex()}, 401, "bad_signature")


def test_a_request_id_reused_with_other_content_is_refused(live: Live) -> None:
    body = _sign_body()
    assert _call(live, "app1", "/v1/keys/k1/sign", body)[0] == 200
    other = dict(body, message_b64=b64(b"something else"))
    _refused(live, "app1", "/v1/keys/k1/sign", other, 409, "request_id_conflict")


def test_a_decrypt_partial_for_someone_elses_request_is_refused(live: Live) -> None:
    ok, out = _call(live, "app1", "/v1/keys/e1/decrypt", _decrypt_body(live, "e1", 1))
    assert ok == 200, out
    live.approve(out["request"], "alice", "bob")
    for who in ("app2", "alice", "ops"):
        before = _state(live)
        got, answer = _call(live, who, f"/v1/requests/{out['request']}/partial", {})
        assert got == 403, answer
        assert _state(live) == before
