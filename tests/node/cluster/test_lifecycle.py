"""Key lifecycle on a running cluster: rotation (on demand and scheduled, blue-green),
revocation, destruction with erasure confirmations through the log, and each node's
token checked after the cluster is down.

One 3-node cluster (threshold 2) for the module; the tests run in file order and build
on each other (k1: v1 created, v2 by rotation, v2 revoked, both destroyed; ks rotated
by the scheduler). Epochs move only when asked (`epoch_interval_s = 0`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.cluster.harness import Live, b64, wait_for

pytestmark = pytest.mark.slow

MEMBERS = ("node-1", "node-2", "node-3")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("lifecycle") / "c"
    c = Live.init(root, schedule={"epoch_min_interval_s": 0.0, "epoch_interval_s": 0.0,
                                  "dkg_timeout_s": 10.0})  # fmt: skip
    c.up()
    try:
        c.policy("p1", requesters="app1")
        c.key("k1")
        yield c
    finally:
        c.down()
        for node in MEMBERS:
            assert c.pid(node) is None, f"{node} left behind"


def version(live: Live, key_id: str, number: int) -> dict[str, Any]:
    return next(v for v in live.key_view(key_id)["versions"] if v["version"] == number)


def erased_by(live: Live, key_id: str, number: int) -> list[str]:
    """The members that confirmed erasing the version: from the key view when it carries
    `erased_by`, else from the accepted `record_erasure` audit records."""
    v = version(live, key_id, number)
    if "erased_by" in v:
        return sorted(v["erased_by"])
    return sorted(
        a["author"] for a in live.audit()
        if a["kind"] == "record_erasure" and a["key_id"] == key_id and a["version"] == number
        and a["outcome"] == "ok"
    )  # fmt: skip


def submit(live: Live, *args: str) -> str:
    out = json.loads(live.cli(*args, "--json", who="ops"))
    assert out["ok"] and out["code"] == "pending", out
    return out["request"]


async def approve_at(live: Live, node: str, ref: str, approver: str) -> dict[str, Any]:
    """An approval sent to one chosen node over raw HTTPS (the digest is recomputed by the
    approver tool in the CLI; here the test trusts its own cluster's view)."""
    from node.client.profile import load_profile
    from node.pki.store import read_private_key
    from node.state import sign_approval

    status, req = await live.http("audit", "GET", node, f"/v1/requests/{ref}")
    assert status == 200, req
    key = read_private_key(load_profile(live.profile(approver)).approval_key)
    sig = sign_approval(key, bytes.fromhex(req["digest"]))
    status, out = await live.http(approver, "POST", node, f"/v1/requests/{ref}/approve",
                                  json_body={"request_id": f"ap-{time.time_ns()}",
                                             "signature": sig.hex()})  # fmt: skip
    assert status == 200, out
    return out


def test_rotate_on_demand_is_blue_green(live: Live) -> None:
    ref = submit(live, "keys", "rotate", "k1")
    live.approve(ref, "alice", "bob")
    r = live.wait_request(ref, timeout=30)
    assert r["state"] == "executed" and r["version"] == 2, r
    # Published while pending: verifiers can learn v2's key before it signs anything.
    k = live.key_view("k1")
    v2 = version(live, "k1", 2)
    assert k["primary"] == 1 and v2["state"] == "pending" and v2["group_public_key"], k
    assert v2["group_public_key"] != version(live, "k1", 1)["group_public_key"]
    message = b"still signed by v1 while v2 waits"
    sig = live.sign("k1", message)
    live.group_key("k1").verify(sig, message)  # v1's key
    live.cli("epoch", "advance", who="ops")
    k = live.key_view("k1")
    assert k["primary"] == 2, k
    assert [v["state"] for v in k["versions"]] == ["retired", "active"]
    message = b"signed by v2"
    ref = live.sign_request("k1", message)
    assert live.request(ref)["version"] == 2
    live.approve(ref, "alice", "bob")
    r = live.wait_request(ref, timeout=30)
    assert r["state"] == "executed", r
    live.group_key("k1").verify(bytes.fromhex(r["signature"]), message)  # v2's key
    # Retired versions verify and decrypt, they never sign.
    status, out = asyncio.run(live.http(
        "app1", "POST", "node-1", "/v1/keys/k1/sign",
        json_body={"request_id": "sign-v1-after", "message_b64": b64(b"m"), "version": 1},
    ))  # fmt: skip
    assert status == 409 and out["error"] == "version_not_usable", out


def test_revoke_fails_an_approved_unexecuted_request_and_members_refuse(live: Live) -> None:
    revoke = submit(live, "keys", "revoke", "k1", "--version", "2")
    live.approve(revoke, "alice")
    message = b"approved before the revoke, never executed"
    sign = live.sign_request("k1", message)
    live.approve(sign, "alice")
    leader = live.leader()
    # The leader asks the lowest-index other member first; stopped, it answers nothing,
    # so the approved request waits (peer timeouts) while the revoke commits.
    stalled = min(m for m in MEMBERS if m != leader)
    pid = live.pid(stalled)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        out = asyncio.run(approve_at(live, leader, sign, "bob"))
        assert out["code"] == "approved", out
        out = asyncio.run(approve_at(live, leader, revoke, "bob"))
        assert out["code"] == "executed", out
    finally:
        os.kill(pid, signal.SIGCONT)
    r = live.wait_request(sign, timeout=20)
    assert (r["state"], r["failure"]) == ("failed", "version_revoked"), r
    assert "signature" not in r
    time.sleep(1.0)  # a late attempt by the coordinator would show up now
    results = [a["outcome"] for a in live.audit()
               if a["kind"] == "record_result" and a["subject"] == sign]  # fmt: skip
    assert not [o for o in results if not o.startswith("rejected")], results
    k = live.key_view("k1")
    assert k["primary"] == 0 and [v["state"] for v in k["versions"]] == ["retired", "revoked"]
    status, out = asyncio.run(live.http(
        "app1", "POST", "node-1", "/v1/keys/k1/sign",
        json_body={"request_id": "sign-v2-revoked", "message_b64": b64(b"m"), "version": 2},
    ))  # fmt: skip
    assert status == 409 and out["error"] == "version_not_usable", out
    # Without an active version, a default sign request has nothing to use either.
    status, out = asyncio.run(live.http(
        "app1", "POST", "node-2", "/v1/keys/k1/sign",
        json_body={"request_id": "sign-none", "message_b64": b64(b"m")},
    ))  # fmt: skip
    assert status == 409 and out["error"] == "version_not_usable", out


def test_destroy_with_a_member_down_erases_everywhere_once_it_is_back(live: Live) -> None:
    leader = live.leader()
    down = max(m for m in MEMBERS if m != leader)
    up = sorted(m for m in MEMBERS if m != down)
    live.kill(down)
    try:
        ref = submit(live, "keys", "destroy", "k1", "--version", "2")
        live.approve(ref, "alice", "bob")
        assert live.wait_request(ref)["state"] == "executed"
        assert version(live, "k1", 2)["state"] == "destroyed"
        wait_for("erasure confirmations of the members that are up",
                 lambda: erased_by(live, "k1", 2) == up)  # fmt: skip
        time.sleep(0.5)
        assert down not in erased_by(live, "k1", 2)
    finally:
        live.up()
    wait_for(f"{down} to erase and confirm after its restart",
             lambda: erased_by(live, "k1", 2) == list(MEMBERS))  # fmt: skip
    posts = [a for a in live.audit() if a["kind"] == "record_erasure" and a["key_id"] == "k1"
             and a["version"] == 2]  # fmt: skip
    assert sorted(a["author"] for a in posts if a["outcome"] == "ok") == list(MEMBERS)
    assert all(a["request_id"] == "erase-k1-2" for a in posts)


def test_destroy_a_retired_version_after_its_grace(live: Live) -> None:
    k = live.key_view("k1")
    v1 = version(live, "k1", 1)
    _status, st = asyncio.run(live.http("audit", "GET", "node-1", "/v1/sys/status"))
    if st["epoch"] < v1["retired_epoch"] + 1:  # p1's grace: 1 epoch
        live.cli("epoch", "advance", who="ops")
    ref = submit(live, "keys", "destroy", "k1", "--version", "1")
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref)["state"] == "executed"
    wait_for("every member's erasure of v1", lambda: erased_by(live, "k1", 1) == list(MEMBERS))
    text = live.cli("keys", "show", "k1", who="ops")
    assert "ERASED BY" in text and "destroyed" in text, text
    assert k["key_id"] == "k1"


def _rotations(live: Live, key_id: str) -> list[dict[str, Any]]:
    return [a for a in live.audit() if a["kind"] == "request_rotate" and a["key_id"] == key_id
            and a["author"].startswith("node-")]  # fmt: skip


def test_scheduler_rotates_once_per_due_period(live: Live) -> None:
    ref = live.submit_ref("policy", "set", "pfast", "--requesters", "app1", "--approvers",
                          "alice,bob,carol", "--k", "2", "--rotation-interval-s", "2",
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    live.key("ks", "pfast")
    # Due 2 s after v1 activated: the leader proposes one rotation; the DKG makes v2.
    wait_for("a scheduled rotation", lambda: len(live.key_view("ks")["versions"]) == 2, 15)
    rot = _rotations(live, "ks")
    assert [(a["request_id"], a["outcome"]) for a in rot] == [("rotate-ks-v2", "approved")], rot
    wait_for("the rotation's DKG", lambda: version(live, "ks", 2)["group_public_key"], 20)
    time.sleep(3.0)  # due again by the clock, but a new version is on its way: no second one
    assert len(live.key_view("ks")["versions"]) == 2
    assert len(_rotations(live, "ks")) == 1
    live.cli("epoch", "advance", who="ops")  # v2 activates: the next period starts
    assert live.key_view("ks")["primary"] == 2
    wait_for("the next period's rotation", lambda: len(live.key_view("ks")["versions"]) == 3, 15)
    rot = _rotations(live, "ks")
    assert [(a["request_id"], a["outcome"]) for a in rot] == [
        ("rotate-ks-v2", "approved"), ("rotate-ks-v3", "approved"),
    ], rot  # fmt: skip
    wait_for("v3's DKG", lambda: version(live, "ks", 3)["group_public_key"], 20)
    assert [v["state"] for v in live.key_view("ks")["versions"]] == [
        "retired", "active", "pending",
    ]  # fmt: skip


LIST_SHARES = """
import json, sys
from node.server.config import load_config
from node.server.runtime import open_slot
slot = open_slot(load_config(sys.argv[1], create_data_dir=False))
try:
    print(json.dumps([[s.key_id, s.version, s.index] for s in slot.list_shares()]))
finally:
    slot.close()
"""


def _token_shares(live: Live, node: str) -> list[tuple[str, int, int]]:
    """The share objects in a node's token, listed by a fresh process (the node is down)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", LIST_SHARES, str(live.root / node / "node.toml")],
        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-800:]
    return [tuple(s) for s in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_tokens_hold_no_share_of_destroyed_versions(live: Live) -> None:
    live.down()
    for i, node in enumerate(MEMBERS, start=1):
        shares = _token_shares(live, node)
        assert not [s for s in shares if s[0] == "k1"], (node, shares)
        assert {("ks", 1, i), ("ks", 2, i), ("ks", 3, i)} <= set(shares), (node, shares)
