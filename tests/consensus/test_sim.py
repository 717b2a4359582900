"""The simulator over many seeds: zero safety, linearizability or liveness violations.

Every seed is a different scenario (cluster size, fault rates, crashes with
torn writes, partitions, membership changes, leadership transfers,
compaction). A failure prints the command that replays it exactly.
"""

from __future__ import annotations

import pytest

from consensus import log
from consensus.sim import run_seed
from consensus.sim.__main__ import main as sim_main

SEEDS = range(400)


@pytest.fixture(scope="module")
def results():
    return {seed: run_seed(seed) for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_has_no_violations(results, seed):
    res = results[seed]
    assert res.ok, "\n".join([*res.violations, f"replay: {res.replay_command()}"])
    assert res.ops_completed == res.ops_total


def test_seeds_exercise_every_fault_and_feature(results):
    rs = list(results.values())
    assert sum(r.crashes for r in rs) > 100
    assert sum(1 for r in rs if r.conf_changes) > 50
    assert sum(1 for r in rs if r.snapshots) > 50
    assert sum(1 for r in rs if r.elections > 2) > 50
    assert sum(r.ops_completed for r in rs) > 10_000


def test_a_seed_replays_exactly():
    a, b = run_seed(7), run_seed(7)
    assert a == b
    assert run_seed(8) != a


def test_simulator_catches_a_broken_vote_rule(monkeypatch, capsys):
    """Granting votes to out-of-date candidates (breaking §5.4.1) must be caught."""
    monkeypatch.setattr(log.RaftLog, "is_up_to_date", lambda self, index, term: True)
    failing = [s for s in range(40) if not run_seed(s).ok]
    assert failing, "the simulator did not notice a broken election restriction"
    assert sim_main(["--seed", str(failing[0])]) == 1
    out = capsys.readouterr().out
    assert f"replay: python -m consensus.sim --seed {failing[0]}" in out


def test_cli_reports_success(capsys):
    assert sim_main(["--seed", "3", "--count", "2"]) == 0
    assert "2/2 seeds ok" in capsys.readouterr().out
