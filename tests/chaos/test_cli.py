"""`custody drill list | clean` and bad arguments, through the shim (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def drill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "drill", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_list() -> None:
    p = drill("list")
    assert p.returncode == 0, p.stderr
    for name in ("leader-crash", "leader-pause", "minority-loss", "majority-loss",
                 "rolling-restart", "token-loss-repair"):  # fmt: skip
        assert name in p.stdout
    assert "lose-token follower@6s, kill other-follower@30s" in p.stdout
    assert "partition leader | rest@6s" in p.stdout
    assert "cut-link leader->follower@5s, cut-link follower->leader@18s" in p.stdout


def test_unknown_scenario_is_a_clear_error() -> None:
    p = drill("run", "no-such-drill", "--seed", "1")
    assert p.returncode == 2 and "no scenario 'no-such-drill'" in p.stderr


def test_bad_scenario_file_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("duration: 10\nfaults: [{at: 1, action: partition, groups: [[leader]]}]\n")
    p = drill("run", str(bad), "--seed", "1", "--out", str(tmp_path / "out"))
    assert p.returncode == 2
    assert "bad.yaml: faults[0].groups: must be a list of at least two groups" in p.stderr


def test_scenarios_that_cannot_run_here_are_skipped_with_the_reason(tmp_path: Path) -> None:
    """Without a network namespace (not root, or isolation off) a network drill is
    skipped, says why, and nothing runs: exit 3, a report saying so."""
    out = tmp_path / "out"
    p = drill("run", "minority-partition", "--seed", "1", "--out", str(out),
              env={"CUSTODY_DRILL_ISOLATION": "off", "CUSTODY_DRILL_DIR": str(tmp_path / "w")})
    assert p.returncode == 3, p.stdout + p.stderr
    why = "network faults: " + ("needs root" if os.geteuid() else "CUSTODY_DRILL_ISOLATION=off")
    assert f"drill: minority-partition: SKIPPED ({why})" in p.stdout
    assert "0/0 passed, 1 skipped" in p.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["scenarios"][0]["skipped"] == why and doc["passed"]
    assert "SKIPPED" in (out / "minority-partition" / "summary.md").read_text()
    assert not (tmp_path / "w").exists()  # no cluster was made


def test_clean_removes_work_dirs_and_spares_foreign_pids(tmp_path: Path) -> None:
    base = tmp_path / "work"
    d = base / "leader-crash-s1-123"
    (d / "node-1").mkdir(parents=True)
    (d / "cluster.json").write_text("{}")
    (d / "node-1" / "node.toml").write_text("")
    # our own pid: a live process that does not run this node's config: never signalled
    (d / "node-1" / "node.pid").write_text(f"{os.getpid()}\n")
    (base / "not-a-drill").mkdir()
    p = drill("clean", env={"CUSTODY_DRILL_DIR": str(base)})
    assert p.returncode == 0, p.stderr
    assert "0 process(es) killed, 0 sandbox leftover(s) removed, 1 work dir(s) removed" in p.stdout
    assert not d.exists() and (base / "not-a-drill").exists()
