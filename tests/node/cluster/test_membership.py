"""Membership on a running cluster (real processes): a node made with `cluster
add-node` joins through a governance request (its addresses come from the log), is a
learner then a voter, takes part in the next DKG, and leaves through another request;
the cluster signs throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.node.cluster.harness import (
    QUIET_SCHEDULE,
    CliFailed,
    Live,
    running,
    token_shares,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with running(tmp_path_factory.mktemp("membership") / "c", schedule=QUIET_SCHEDULE,
                 more_keys=()) as c:  # fmt: skip
        yield c


def govern(live: Live, *args: str) -> None:
    """Submit a governance change as ops, approve it, advance epochs past its time lock."""
    ref = live.submit_ref(*args, who="ops")
    live.approve(ref, "alice", "bob")
    for _ in range(8):
        if live.request(ref)["state"] in ("executed", "failed"):
            break
        live.cli("epoch", "advance", who="ops")
    assert live.request(ref)["state"] == "executed", live.request(ref)


def roles(live: Live) -> dict[str, str | None]:
    return {r["name"]: (r.get("status") or {}).get("role") for r in live.status()}


def test_a_new_node_joins_through_the_log_and_takes_part_in_the_next_dkg(live: Live) -> None:
    out = json.loads(live.cli("cluster", "add-node", "--dir", str(live.root), "--json"))
    assert out["node"] == "node-4"
    govern(live, "node", "add", "node-4", "--public-key", out["identity_public_key"],
           "--raft", out["raft"], "--api", out["api"])  # fmt: skip
    live.__init__(live.root)  # cluster.json lists node-4 now
    live.up()
    wait_for("node-4 to become a voter",
             lambda: roles(live).get("node-4") in ("follower", "leader"))  # fmt: skip
    k1 = live.key_view("k1")
    assert len(k1["versions"][0]["verification_shares"]) == 3  # made before node-4
    live.key("k2")  # a DKG among four members
    k2 = live.key_view("k2")
    assert len(k2["versions"][0]["verification_shares"]) == 4
    assert ("k2", 1, 0) in token_shares(live.root, "node-4")
    assert not any(k == "k1" for k, _, _ in token_shares(live.root, "node-4"))
    live.kill("node-1")  # three of four voters left: a Raft majority, t = 2
    try:
        for key in ("k1", "k2"):
            sig = live.sign(key, f"four members, {key}".encode(), timeout=60)
            live.group_key(key).verify(sig, f"four members, {key}".encode())
    finally:
        live.up()


def test_a_member_leaves_through_the_log(live: Live) -> None:
    govern(live, "node", "remove", "node-4")
    wait_for("node-4 to leave Raft", lambda: "removed from the cluster" in
             (live.root / "node-4" / "node.log").read_text())  # fmt: skip
    live.kill("node-4")
    sig = live.sign("k2", b"after node-4 left", timeout=60)
    live.group_key("k2").verify(sig, b"after node-4 left")


def test_removals_shrink_raft_and_stop_at_t(live: Live) -> None:
    """Three voters to two (the core's rules keep it safe), then a removal below t is
    refused at submission with the reason; the two members left still sign."""
    govern(live, "node", "remove", "node-3")
    wait_for("node-3 to leave Raft", lambda: "removed from the cluster" in
             (live.root / "node-3" / "node.log").read_text())  # fmt: skip
    live.kill("node-3")
    with pytest.raises(CliFailed, match="threshold 2 of 1 members"):
        live.submit_ref("node", "remove", "node-2", who="ops")
    sig = live.sign("k1", b"two members left", timeout=60)
    live.group_key("k1").verify(sig, b"two members left")
