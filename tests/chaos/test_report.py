"""The report writer on a synthetic drill result: results.json, summaries, PNG."""

from __future__ import annotations

import json
from pathlib import Path

from chaos import report
from chaos.runner import DrillResult, FaultRecord
from chaos.workload import Op


def test_report_files(tmp_path: Path) -> None:
    ops = [Op(0, f"app1:r{i}", "00", i * 0.5, i * 0.5 + 0.2, "ok", "ab") for i in range(20)]
    ops.append(Op(1, "app1:x", "00", 3.0, 9.0, "unknown", detail="deadline"))
    r = DrillResult("leader-crash", 42, passed=False, replay="custody drill run x --seed 42")
    lose = FaultRecord(2, "lose-token", "follower", 6.0, "node-3", 6.02, 6.72, "injected", 0.06,
                       observed=["t=6.71s provisioned a new token"], repair_request="ops:repair-1",
                       repair_state="done", repair_versions="2/2", repair_s=6.24)  # fmt: skip
    r.faults = [
        FaultRecord(0, "kill", "leader", 3.0, "node-2", 3.01, 6.0, "injected", 1.5),
        FaultRecord(1, "pause", "random", 5.0, status="skipped: no live node"),
        lose,
    ]
    r.checks = [{"name": "n1", "passed": True, "summary": "fine", "details": [], "data": {}},
                {"name": "n2", "passed": False, "summary": "bad | x", "details": ["d1"],
                 "data": {}}]  # fmt: skip
    r.ops, r.acked_lost, r.longest_gap = {"ok": 20, "failed": 0, "unknown": 1}, 0, [2.0, 5.5]
    report.write_scenario(tmp_path / "leader-crash", r, ops, "desc")
    report.write_index(tmp_path, [r], 42, ["custody", "drill", "run", "all"])
    md = (tmp_path / "leader-crash" / "summary.md").read_text()
    assert "FAILED" in md and "seed: **42**" in md and "custody drill run x --seed 42" in md
    assert "skipped: no live node" in md and "| 1.50 |" in md and "3.50 s" in md
    assert "acknowledged operations lost: 0" in md and "- d1" in md
    assert "| 2 | lose-token | follower | node-3 |" in md and md.count("| 6.24 |") == 1
    assert "repair done, request `ops:repair-1`, versions rebuilt 2/2, 6.24 s" in md
    assert "the procedure: t=6.71s provisioned a new token" in md
    assert (tmp_path / "leader-crash" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["seed"] == 42 and not doc["passed"]
    assert doc["scenarios"][0]["faults"][0]["recovery_s"] == 1.5
    assert doc["scenarios"][0]["faults"][2]["repair_s"] == 6.24
    assert "lose-token node-3: 0.06 (repaired 6.24)" in (tmp_path / "summary.md").read_text()
    assert "leader-crash" in (tmp_path / "summary.md").read_text()


def test_network_faults_and_skipped_scenarios(tmp_path: Path) -> None:
    r = DrillResult("leader-isolated", 1, passed=True, replay="custody drill run x --seed 1",
                    isolation="network namespace custody-drill-abc-1-1")  # fmt: skip
    r.faults = [FaultRecord(0, "partition", "leader | rest", 6.0, "node-1 | node-2,node-3",
                            6.04, 16.1, "injected", 3.05, 0.14, rejoin_s=0.61)]  # fmt: skip
    r.epoch_advances = {"advanced": 3, "not_advanced": 1, "errors": 0, "epochs": [2, 3, 4],
                        "last_error": ""}  # fmt: skip
    skipped = DrillResult("slow-link", 1, skipped="network faults: needs root")
    ops = [Op(0, f"app1:r{i}", "00", i * 0.5, i * 0.5 + 0.2, "ok", "ab") for i in range(40)]
    report.write_scenario(tmp_path / "leader-isolated", r, ops, "desc")
    report.write_scenario(tmp_path / "slow-link", skipped, [], "desc")
    report.write_index(tmp_path, [r, skipped], 1, ["custody", "drill", "run", "all"])
    md = (tmp_path / "leader-isolated" / "summary.md").read_text()
    # a partition's groups are joined with "|": escaped inside the table
    assert r"| 0 | partition | leader \| rest | node-1 \| node-2,node-3 | 6.04 | 16.10 |" in md
    assert md.rstrip().count("| 0.61 |") == 1 and "isolation: network namespace" in md
    assert "3 advanced, 1 did not, 0 errors; epochs reached 4" in md
    sk = (tmp_path / "slow-link" / "summary.md").read_text()
    assert "SKIPPED" in sk and "Not run here: network faults: needs root." in sk
    assert not (tmp_path / "slow-link" / "timeline.png").exists()
    index = (tmp_path / "summary.md").read_text()
    assert "skipped: network faults: needs root" in index
    assert json.loads((tmp_path / "results.json").read_text())["passed"]  # skips don't fail


def test_report_counts_kinds_and_operator_actions(tmp_path: Path) -> None:
    ops = [Op(0, f"app1:r{i}", "00", i * 0.5, i * 0.5 + 0.2, "ok", "ab") for i in range(4)]
    ops.append(Op(0, "app1:d", "00", 1, 2, "ok", kind="decrypt", result_hex="00"))
    ops.append(Op(3, "ops:rot-1", "", 1, 4, "ok", kind="rotate", version=2))
    r = DrillResult("refresh-under-load", 1, passed=True)
    r.faults = [FaultRecord(0, "refresh", "cluster", 6.0, "", 6.0, 7.7, "injected",
                            op_request="ops:drill-refresh-1-0", op_state="done", op_s=1.75)]
    r.ops = {"ok": 6, "failed": 0, "unknown": 0, "decrypt_ok": 1, "rotate_ok": 1}
    report.write_scenario(tmp_path / "x", r, ops, "desc")
    md = (tmp_path / "x" / "summary.md").read_text()
    assert "of which decrypt ok 1, rotate ok 1" in md
    assert "Fault 0 (refresh): request `ops:drill-refresh-1-0` done, 1.75 s" in md


def test_report_of_a_lost_cluster(tmp_path: Path) -> None:
    ops = [Op(0, f"app1:r{i}", "00", i * 0.5, i * 0.5 + 0.2, "ok", "ab") for i in range(4)]
    r = DrillResult("cluster-loss", 7, passed=True, acked_lost=0, acked_lost_by_design=0)
    r.faults = [FaultRecord(
        0, "lose-cluster", "cluster", 10.0, "all", 12.28, 14.41, "injected", 11.81, 9.74,
        op_request="ops:drill-recover-7-0", op_state="done", op_s=10.63,
        recovered=["node-1", "node-2", "node-3"],
        backup={"held_at": 10.0, "quiet_at": 10.09, "released_at": 12.29, "snapshot_every": 100,
                "commit_at_hold": 1210, "audit_records_before": 1768, "fillers": 90,
                "bundle_indexes": {"node-1": 1300, "node-2": 1300, "node-3": 1300},
                "backups_done_at": 12.28,
                "restored_indexes": {"node-1": 1300, "node-2": 1300, "node-3": 1300}})]
    report.write_scenario(tmp_path / "cluster-loss", r, ops, "desc")
    report.write_index(tmp_path, [r], 7, ["custody", "drill", "run", "cluster-loss"])
    md = (tmp_path / "cluster-loss" / "summary.md").read_text()
    assert "acknowledged operations lost: 0** (and 0 acknowledged after the newest backup" in md
    assert "| 0 | lose-cluster | cluster | all | 12.28 | 14.41 | injected | 11.81 | 9.74 | " \
           "10.63 | — |" in md  # fmt: skip
    assert "clients held from t=10.00 s (no flow in flight from t=10.09 s) to t=12.29 s" in md
    assert "commit index at the hold 1210" in md and "90 filler request(s)" in md
    assert "recovery request `ops:drill-recover-7-0` done" in md
    assert "members recovered: node-1, node-2, node-3, 10.63 s from the loss to done" in md
    index = (tmp_path / "summary.md").read_text()
    assert "| 0 (+0 by design) |" in index and "lose-cluster all: 11.81 (recovered 10.63)" in index
    doc = json.loads((tmp_path / "results.json").read_text())["scenarios"][0]
    assert doc["acked_lost_by_design"] == 0 and doc["faults"][0]["backup"]["fillers"] == 90
