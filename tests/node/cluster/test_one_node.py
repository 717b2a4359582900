"""A one-member cluster (`--unsafe`, threshold 1) starts, and says once, in the log, that
it cannot generate keys: a DKG needs two members. It used to retry the bootstrap's
cluster-audit DKG for ever."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.node.cluster.harness import cli

pytestmark = pytest.mark.slow


def test_a_one_member_cluster_reports_that_it_cannot_generate_keys(tmp_path: Path) -> None:
    root = tmp_path / "one"
    cli("cluster", "init", "--dir", str(root), "--nodes", "1", "--threshold", "1",
        "--approvers", "alice,bob", "--clients", "app1", "--operators", "ops",
        "--auditors", "audit", "--unsafe")  # fmt: skip
    cli("cluster", "up", "--dir", str(root))
    try:
        profile = str(root / "profiles" / "audit.toml")
        deadline = time.monotonic() + 20
        while True:
            key = json.loads(cli("keys", "show", "cluster-audit", "--json", "--profile", profile))
            if key["versions"][0]["state"] != "pending":
                break
            assert time.monotonic() < deadline, "the audit key's DKG never ended"
            time.sleep(0.1)
        assert key["versions"][0]["state"] == "destroyed"  # aborted, never active
        assert key["primary"] == 0
        time.sleep(1.0)  # long enough for a retry loop to show in the log
        log = (root / "node-1" / "node.log").read_text()
        assert log.count("a DKG needs at least 2 members") == 1
        assert "DkgError" not in log
    finally:
        cli("cluster", "down", "--dir", str(root))
