"""One real drill in the normal suite: leader crash during signing, on a real
3-node cluster (processes, SoftHSM2 tokens, mTLS), through `custody drill run`.
Every invariant must pass and no acknowledged operation may be lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_leader_crash_drill(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = {**os.environ, "CUSTODY_DRILL_DIR": str(tmp_path / "work")}
    t = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "drill", "run", "leader-crash", "--seed", "13",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=140,
    )  # fmt: skip
    wall = time.monotonic() - t
    text = proc.stdout + proc.stderr
    try:
        doc = json.loads((out / "results.json").read_text())
        r = doc["scenarios"][0]
        assert proc.returncode == 0, text[-3000:]
        assert doc["seed"] == 13 and r["passed"], r
        assert len(r["checks"]) == 5 and all(c["passed"] for c in r["checks"]), r["checks"]
        assert r["acked_lost"] == 0
        assert r["ops"]["ok"] > 0
        fault = r["faults"][0]
        assert fault["status"] == "injected" and fault["node"].startswith("node-")
        assert fault["recovery_s"] is not None
        assert (out / "leader-crash" / "summary.md").read_text().count("| passed |") == 5
        assert (out / "leader-crash" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
        assert "seed 13" in proc.stdout
        assert wall < 90, f"the drill took {wall:.0f} s"
    finally:
        # nothing may outlive the drill
        left = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True,
                              text=True).stdout.split()  # fmt: skip
        assert not left, f"node processes left behind: {left}\n{text[-2000:]}"
