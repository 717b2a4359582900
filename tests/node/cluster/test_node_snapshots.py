"""Snapshots on the running cluster: members sign checkpoints of their own
snapshots with their HSM identity keys, and a member that fell behind the
compacted log installs a leader's snapshot only because t members certified it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.node.cluster.harness import Live, running

pytestmark = pytest.mark.slow

EVERY = 16


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("snap") / "c"
    with running(
        root, schedule={"epoch_min_interval_s": 0.0}, raft={"snapshot_every": EVERY}
    ) as c:
        yield c


def test_a_member_that_lost_its_disk_installs_a_certified_snapshot_and_signs(live: Live) -> None:
    """node-3 loses its data directory (its token survives) while the others go on far
    past the compacted log: it comes back empty, must take a snapshot, and installs one
    only because t members signed it (verified against the bootstrap's members, its
    state being empty); then it signs with the share in its token."""
    live.kill("node-3")
    shutil.rmtree(live.root / "node-3" / "data")  # its disk is lost; its token is not
    for i in range(3 * EVERY):  # far past node-3's log: the leader compacts it away
        live.sign_request("k1", f"while node-3 is down {i}".encode())
    firsts = [(r["status"] or {}).get("log_first_index", 0) for r in live.status()]
    assert max(firsts) > 2 * EVERY  # the leader's log no longer starts at the beginning
    live.up()
    rows = {r["name"]: r["status"] for r in live.status()}
    leader_applied = max(r["applied"] for r in rows.values())
    assert rows["node-3"]["snapshots"].get("snapshots_opened", 0) >= 1, rows["node-3"]
    assert sum(r["snapshots"].get("snapshots_sealed", 0) for r in rows.values()) >= 1, rows
    assert rows["node-3"]["applied"] >= leader_applied - 5, rows
    audit = live.audit()
    signers = {a["author"] for a in audit if a["kind"] == "checkpoint" and a["outcome"] == "ok"}
    assert len(signers) >= 2, signers  # t members certify each snapshot index
    # node-3's replica is whole again: with node-1 gone it signs together with node-2.
    live.kill("node-1")
    try:
        message = b"node-2 and node-3 after the snapshot"
        live.group_key("k1").verify(live.sign("k1", message), message)
    finally:
        live.up()
