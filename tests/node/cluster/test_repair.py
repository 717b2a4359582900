"""Share repair on a running cluster (real processes, SoftHSM2 tokens, mTLS): a node's
token is lost, a new one is provisioned, the governance quorum approves its repair, t
helpers rebuild its shares of every key version, and it then signs and decrypts with
a quorum that needs it. Group public keys never change.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node.protocols.wire import RepairDelivery
from tests.node.cluster.harness import (
    QUIET_SCHEDULE,
    Live,
    running,
    token_shares,
    wait_dead,
    wait_for,
)

pytestmark = pytest.mark.slow

MEMBERS = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with running(tmp_path_factory.mktemp("repair") / "c", schedule=QUIET_SCHEDULE,
                 more_keys=('k2',)) as c:  # fmt: skip
        yield c


def repairs(live: Live) -> dict[str, dict[str, Any]]:
    out = json.loads(live.cli("node", "repairs", "--json", who="audit"))
    return {r["member"]: r for r in out["repairs"]}


def group_keys(live: Live) -> dict[str, str]:
    return {
        k: next(v["group_public_key"] for v in live.key_view(k)["versions"] if v["version"] == 1)
        for k in ("k1", "k2")
    }  # fmt: skip


def test_a_wiped_token_is_repaired_and_its_member_signs_again(live: Live) -> None:
    before = group_keys(live)
    target = "node-3"
    # The token is lost: the node stops, its token directory is gone for good.
    live.kill(target)
    shutil.rmtree(live.root / target / "hsm" / "tokens")
    # Signing goes on with the two members left (t = 2).
    sig = live.sign("k1", b"while node-3 is down")
    live.group_key("k1").verify(sig, b"while node-3 is down")
    out = json.loads(live.cli("node", "provision", "--config",
                              str(live.root / target / "node.toml"), "--json"))  # fmt: skip
    new_key = out["identity_public_key"]
    live.up()  # node-3 replicates the log but signs nothing: its key is not registered
    ref = live.submit_ref("node", "repair", target, "--public-key", new_key, who="ops")
    live.approve(ref, "alice", "bob")
    # A new identity key is a weakening change: it waits the time lock.
    for _ in range(8):
        if live.request(ref)["state"] == "executed":
            break
        live.cli("epoch", "advance", who="ops")  # two voters: node-3 may not vote yet
    wait_for("the repair request to take effect", lambda: live.request(ref)["state"] == "executed")
    done = wait_for(
        "the repair to finish",
        lambda: (r := repairs(live).get(target)) and r["state"] != "running" and r,
    )
    assert done["state"] == "done", done
    assert done["done"] == done["total"] >= 3  # k1 v1, k2 v1, the audit key's version
    assert all(v["state"] == "rebuilt" for v in done["versions"])
    assert group_keys(live) == before  # repair never changes a group key
    # A quorum that needs node-3: the other two are one member short without it.
    live.sign_needing(target, "k2", b"signed with the repaired member")
    kinds = [a["kind"] for a in live.audit()]
    assert {"repair_member", "repair_post", "record_repair"} <= set(kinds)


def test_a_node_cannot_send_pieces_in_another_members_name(live: Live) -> None:
    """The sender of a repair delivery must be the certificate's member."""
    forged = RepairDelivery("node-3", 1, "delta", 2, 1, b"\x00" * 64)
    status, _ = asyncio.run(live.http("node-3", "POST", "node-1", "/v1/peer/repair",
                                      data=forged.encode()))  # fmt: skip
    assert status == 409
    status, _ = asyncio.run(live.http("app1", "POST", "node-1", "/v1/peer/repair",
                                      data=forged.encode()))  # fmt: skip
    assert status == 403


def test_repair_needs_the_governance_quorum(live: Live) -> None:
    """One operator alone gets a pending request, nothing more; an approver cannot submit."""
    ref = live.submit_ref("node", "repair", "node-2", who="ops")
    live.approve(ref, "alice")
    time.sleep(0.5)
    assert live.request(ref)["state"] == "pending"
    assert repairs(live).get("node-2") is None


def drop_shares(live: Live, node: str) -> int:
    """Erase every share object in a stopped node's token (its identity key stays)."""
    return len(token_shares(live.root, node, drop=True))


@pytest.mark.parametrize(
    ("point", "node"),
    [
        ("repair.helper.posted", "node-1"),
        ("repair.helper.exchange", "node-2"),
        ("repair.target.posted", "node-3"),
        ("repair.target.stored", "node-3"),
    ],
)
def test_a_crash_at_each_step_of_a_repair_is_survived(live: Live, point: str, node: str) -> None:
    """The node exits at the fault point (as if it lost power); restarted, it says it lost
    its session (a new run starts) or, having stored every share already, confirms; the
    repair finishes and the repaired member's shares sign."""
    from node.server.faults import ENV

    before = group_keys(live)
    live.kill(node)
    if node == "node-3":
        drop_shares(live, node)  # so that only the repair can give them back
    os.environ[ENV] = point
    try:
        live.up()  # only `node` was down: only it starts with the fault point enabled
    finally:
        del os.environ[ENV]
    pid = live.pid(node)
    assert pid is not None
    ref = live.submit_ref("node", "repair", "node-3", who="ops")  # same key: no time lock
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref)["state"] == "executed"
    wait_dead(pid)
    assert f"fault point {point} reached" in (live.root / node / "node.log").read_text()
    live.up()
    done = wait_for(
        "the repair to finish after the restart",
        lambda: (r := repairs(live).get("node-3")) and r["state"] != "running" and r,
    )
    assert done["state"] == "done", done
    assert done["failed_runs"] == (0 if point == "repair.target.stored" else 1), done
    assert group_keys(live) == before
    live.sign_needing("node-3", "k1", point.encode())  # needs node-3's repaired shares
