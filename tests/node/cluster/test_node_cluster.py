"""The running cluster, as real processes: DKG, quorum signing, failures, the API.

One 3-node cluster (threshold 2) per module, each node with its own SoftHSM2
token, talking Raft and HTTPS over loopback mTLS.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from tests.node.cluster.harness import Live, b64, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("cluster") / "c"
    with running(
        root, schedule={"dkg_timeout_s": 4.0, "epoch_min_interval_s": 0.0}
    ) as c:
        yield c


def _verify(live: Live, key: str, message: bytes, sig: bytes) -> None:
    live.group_key(key).verify(sig, message)  # raises InvalidSignature


def test_sign_end_to_end_gives_a_standard_ed25519_signature(live: Live) -> None:
    message = b"release 1.0.0"
    sig = live.sign("k1", message)
    _verify(live, "k1", message, sig)
    assert live.key_view("k1")["versions"][0]["uses"] >= 1


def test_a_restarted_node_signs_with_the_share_in_its_token(live: Live) -> None:
    live.kill("node-2")
    live.up()  # restarts node-2 from its data directory and token
    live.kill("node-3", signal.SIGTERM)  # now node-1 and node-2 must sign together
    try:
        message = b"signed by node-1 and node-2"
        sig = live.sign("k1", message)
        _verify(live, "k1", message, sig)
    finally:
        live.up()


def test_leader_killed_while_signing_completes_once_under_the_new_leader(live: Live) -> None:
    message = b"leader dies mid-signing"
    ref = live.sign_request("k1", message)
    live.approve(ref, "alice")
    leader = live.leader()
    live.approve(ref, "bob")  # the leader starts signing as soon as this commits ...
    live.kill(leader)  # ... and dies
    try:
        r = live.wait_request(ref, timeout=30, who="app1")
        assert r["state"] == "executed", r
        _verify(live, "k1", message, bytes.fromhex(r["signature"]))
        results = [a for a in live.audit() if a["kind"] == "record_result" and a["subject"] == ref]
        assert [a["outcome"] for a in results if not a["outcome"].startswith("rejected")] == [
            "executed"
        ], results
    finally:
        live.up()


def test_dkg_with_a_member_down_fails_cleanly_and_succeeds_after_it_returns(live: Live) -> None:
    live.kill("node-3")
    try:
        ref = live.submit_ref("keys", "create", "k2", "--policy", "p1", who="ops")
        live.approve(ref, "alice", "bob")
        r = live.wait_request(ref, timeout=30)
        assert r["state"] == "failed", r
        assert "node-3" in (r["failure"] or ""), r
        assert [v["state"] for v in live.key_view("k2")["versions"]] == ["destroyed"]
    finally:
        live.up()
    live.key("k2")  # the retry: a new create_key for the same id, by DKG among all three
    versions = live.key_view("k2")["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "destroyed"), (2, "active")]
    message = b"k2 works after the retry"
    _verify(live, "k2", message, live.sign("k2", message))


def _audit_len(live: Live) -> int:
    return len(live.audit())


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status"),
    [
        ("app1", "POST", "/v1/keys/k1/sign", {"request_id": "x1"}, 400),  # message missing
        ("app1", "POST", "/v1/keys/k1/sign", {"request_id": "x1", "message_b64": "!!"}, 400),
        ("app1", "POST", "/v1/keys/k1/sign",
         {"request_id": "x1", "message_b64": b64(b"m"), "surprise": 1}, 400),
        ("app1", "POST", "/v1/keys/k1/sign",
         {"request_id": "bad id with spaces", "message_b64": b64(b"m")}, 400),
        ("app1", "POST", "/v1/keys/k1/sign",
         {"request_id": "x1", "message_b64": b64(b"m"), "version": "1"}, 400),
        ("app1", "POST", "/v1/keys/k1/sign",
         {"request_id": "x1", "message_b64": b64(b"m"), "context": "caf\u00e9"}, 400),
        ("alice", "POST", "/v1/requests/app1:nope/approve",
         {"request_id": "a1", "signature": "zz"}, 400),
        ("ops", "POST", "/v1/commands", {"command_b64": b64(b"\x81\xa1v\x01")}, 400),
        ("audit", "GET", "/v1/keys/does-not-exist", None, 404),
        ("audit", "GET", "/v1/requests/app1:none", None, 404),
        ("audit", "GET", "/v1/no/such/route", None, 404),
        ("audit", "GET", "/v1/requests?state=bogus", None, 400),
    ],
)  # fmt: skip
def test_bad_input_gets_a_4xx_and_changes_nothing(
    live: Live, who: str, method: str, path: str, body: object, status: int
) -> None:
    before = _audit_len(live)
    got, answer = asyncio.run(live.http(who, method, "node-1", path, json_body=body))
    assert got == status, answer
    assert set(answer) >= {"error", "message"}
    assert _audit_len(live) == before


def test_body_over_the_limit_is_413(live: Live) -> None:
    before = _audit_len(live)
    got, answer = asyncio.run(live.http(
        "app1", "POST", "node-2", "/v1/keys/k1/sign", data=b"{" + b" " * (1 << 21) + b"}"
    ))  # fmt: skip
    assert got == 413, answer
    assert _audit_len(live) == before


def test_a_reused_request_id_with_other_content_is_409_and_changes_nothing(live: Live) -> None:
    body = {"request_id": "reuse-1", "message_b64": b64(b"first")}
    got, first = asyncio.run(
        live.http("app1", "POST", "node-1", "/v1/keys/k1/sign", json_body=body)
    )
    assert got == 200 and first["code"] == "pending", first
    again = asyncio.run(live.http("app1", "POST", "node-2", "/v1/keys/k1/sign", json_body=body))
    assert again == (200, first)  # a retry gets the first outcome
    before = _audit_len(live)
    other = {"request_id": "reuse-1", "message_b64": b64(b"second")}
    got, answer = asyncio.run(live.http("app1", "POST", "node-1", "/v1/keys/k1/sign",
                                        json_body=other))  # fmt: skip
    assert got == 409 and answer["error"] == "request_id_conflict", answer
    assert _audit_len(live) == before


# Every role against every endpoint of the API. 403 = refused by role before anything
# happens; other codes come from the handler (400 for an empty body, 404 for unknown
# objects, 200 for reads a role may make).
ROLE_MATRIX = {
    # endpoint: {role: expected status}
    ("GET", "/v1/sys/health"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 200},
    ("GET", "/v1/sys/status"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 200},
    ("GET", "/v1/keys"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 403},
    ("GET", "/v1/keys/k1"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 403},
    ("POST", "/v1/keys"): {"ops": 400, "alice": 403, "app1": 403, "audit": 403, "node-2": 403},
    ("POST", "/v1/keys/k1/sign"): {"ops": 403, "alice": 403, "app1": 400, "audit": 403,
                                   "node-2": 403},
    ("GET", "/v1/policies"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 403},
    ("GET", "/v1/requests"): {"ops": 200, "alice": 200, "app1": 200, "audit": 200, "node-2": 403},
    ("POST", "/v1/requests/app1:x/approve"): {"ops": 403, "alice": 400, "app1": 403,
                                              "audit": 403, "node-2": 403},
    ("POST", "/v1/commands"): {"ops": 400, "alice": 400, "app1": 403, "audit": 403,
                               "node-2": 403},
    ("GET", "/v1/audit"): {"ops": 200, "alice": 200, "app1": 403, "audit": 200, "node-2": 403},
    ("GET", "/v1/audit/export"): {"ops": 200, "alice": 200, "app1": 403, "audit": 200,
                                  "node-2": 403},
    ("POST", "/v1/epoch/advance"): {"ops": 200, "alice": 403, "app1": 403, "audit": 403,
                                    "node-2": 403},
    ("POST", "/v1/keys/k1/decrypt"): {"ops": 403, "alice": 403, "app1": 400, "audit": 403,
                                      "node-2": 403},
    ("POST", "/v1/requests/app1:x/partial"): {"ops": 403, "alice": 403, "app1": 404,
                                              "audit": 403, "node-2": 403},
    ("GET", "/metrics"): {"ops": 200, "alice": 403, "app1": 403, "audit": 200, "node-2": 200},
    ("POST", "/v1/peer/propose"): {"ops": 403, "alice": 403, "app1": 403, "audit": 403},
    ("POST", "/v1/peer/dkg/round2"): {"ops": 403, "alice": 403, "app1": 403, "audit": 403,
                                      "node-2": 400},
    ("POST", "/v1/peer/sign/commit"): {"ops": 403, "alice": 403, "app1": 403, "audit": 403,
                                       "node-2": 400},
    ("POST", "/v1/peer/sign/share"): {"ops": 403, "alice": 403, "app1": 403, "audit": 403,
                                      "node-2": 400},
    ("POST", "/v1/peer/epoch/nudge"): {"ops": 403, "alice": 403, "app1": 403, "audit": 403},
}  # fmt: skip


@pytest.mark.parametrize(("method", "path"), sorted(ROLE_MATRIX))
def test_every_role_against_every_endpoint(live: Live, method: str, path: str) -> None:
    async def run() -> dict[str, int]:
        got = {}
        for who in ROLE_MATRIX[(method, path)]:
            body = {} if method == "POST" and not path.startswith("/v1/peer/") else None
            data = b"\x00" if path.startswith("/v1/peer/") else None
            status, _ = await live.http(who, method, "node-1", path, json_body=body, data=data)
            got[who] = status
        return got

    assert asyncio.run(run()) == ROLE_MATRIX[(method, path)]


def test_a_client_sees_only_its_own_requests(live: Live) -> None:
    ref = live.sign_request("k1", b"app1's business")
    status, other = asyncio.run(live.http("app2", "GET", "node-1", f"/v1/requests/{ref}"))
    assert status == 404, other
    status, listing = asyncio.run(live.http("app2", "GET", "node-1", "/v1/requests"))
    assert status == 200 and all(r["author"] == "app2" for r in listing["requests"])


def test_stale_and_linearizable_reads_agree_after_a_write(live: Live) -> None:
    ref = live.sign_request("k1", b"read your writes")
    for node in ("node-1", "node-2", "node-3"):
        status, r = asyncio.run(live.http("app1", "GET", node, f"/v1/requests/{ref}"))
        assert status == 200 and r["ref"] == ref
    time.sleep(0.5)
    status, r = asyncio.run(live.http("app1", "GET", "node-3", f"/v1/requests/{ref}?stale=true"))
    assert status == 200 and r["ref"] == ref
