"""The scenario loader: the shipped files load; bad files fail naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import scenario
from chaos.scenario import ScenarioError, load

GOOD = """\
name: ok-one
description: a test
duration: 20
workload: {clients: 2, op_timeout: 10}
faults:
  - {at: 5, action: kill, target: leader, restart_after: 3}
  - {at: 2, action: pause, target: node-2, resume_after: 1}
  - {at: 9, action: restart, target: random, down_for: 0.5}
  - {at: 10, action: kill, target: follower}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_scenarios_load() -> None:
    names = {p.stem for p in scenario.available()}
    assert {
        "leader-crash",
        "leader-pause",
        "minority-loss",
        "majority-loss",
        "rolling-restart",
    } <= names
    for p in scenario.available():
        sc = load(p)
        assert sc.name == p.stem and sc.faults and sc.duration > 0


def test_good_file(tmp_path: Path) -> None:
    sc = load(write(tmp_path, GOOD))
    assert sc.name == "ok-one" and sc.workload.clients == 2 and sc.workload.op_timeout == 10
    assert [f.at for f in sc.faults] == [2, 5, 9, 10]  # sorted by time
    assert sc.faults[1].restart_after == 3 and sc.faults[0].resume_after == 1
    assert sc.faults[2].down_for == 0.5 and sc.faults[3].restart_after is None


def test_name_defaults_to_stem(tmp_path: Path) -> None:
    sc = load(write(tmp_path, "duration: 10\n", "my-drill.yaml"))
    assert sc.name == "my-drill" and sc.max_gap_s is None
    assert load(write(tmp_path, "duration: 10\nmax_gap_s: 4\n")).max_gap_s == 4


@pytest.mark.parametrize(("text", "expect"), [
    ("duration: 10\nbogus: 1\n", "s.yaml: unknown key 'bogus'"),
    ("name: x\n", "missing required key 'duration'"),
    ("duration: ten\n", "s.yaml: duration: must be a number, not str"),
    ("duration: true\n", "duration: must be a number, not bool"),
    ("duration: 1\n", "duration: 1 is out of range 5..600"),
    ("duration: 10\nworkload: {clients: 0}\n", "workload.clients: 0 is out of range"),
    ("duration: 10\nworkload: {clients: 2.5}\n", "workload.clients: must be an integer"),
    ("duration: 10\nworkload: {threads: 2}\n", "workload: unknown key 'threads'"),
    ("duration: 10\nfaults: {at: 1}\n", "faults: must be a list"),
    ("duration: 10\nfaults: [{at: 1, action: kill}]\n", "faults[0]: missing required key 'target'"),
    ("duration: 10\nfaults: [{at: 1, action: kill, target: node-4}]\n",
     "faults[0].target: 'node-4' is not a target"),
    ("duration: 10\nfaults: [{at: 1, action: kill, target: boss}]\n",
     "faults[0].target: 'boss' is not a target"),
    ("duration: 10\nfaults: [{at: 1, action: kill, target: 3}]\n",
     "faults[0].target: must be a string"),
    ("duration: 10\nfaults: [{at: 11, action: kill, target: leader}]\n",
     "faults[0].at: 11 is out of range 0..10"),
    ("duration: 10\nfaults: [{at: 1, action: explode, target: leader}]\n",
     "faults[0].action: unknown action 'explode'"),
    ("duration: 10\nfaults: [{at: 1, action: pause, target: leader}]\n",
     "faults[0]: action 'pause' needs 'resume_after'"),
    ("duration: 10\nfaults: [{at: 1, action: kill, target: leader, resume_after: 2}]\n",
     "faults[0].resume_after: not a parameter of action 'kill'"),
    ("duration: 10\nfaults: [{at: 1, action: kill, target: leader, extra: 2}]\n",
     "faults[0]: unknown key 'extra'"),
    ("duration: 10\nname: Bad_Name\n", "name: 'Bad_Name' is not"),
    ("duration: 10\nmax_gap_s: 0\n", "max_gap_s: 0 is out of range"),
    ("- 1\n- 2\n", "s.yaml: must be a mapping, not list"),
    ("duration: [\n", "s.yaml: not valid YAML"),
])  # fmt: skip
def test_bad_files(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, text))
    assert expect in str(e.value), str(e.value)
    assert "s.yaml" in str(e.value)


@pytest.mark.parametrize("kind", ["partition", "delay", "hsm_delete", "disk_full", "clock_jump"])
def test_unimplemented_faults_are_refused_by_name(tmp_path: Path, kind: str) -> None:
    p = write(tmp_path, f"duration: 10\nfaults: [{{at: 1, action: {kind}, target: leader}}]\n")
    with pytest.raises(ScenarioError, match=f"'{kind}' is not implemented yet in this slice"):
        load(p)


def test_unknown_scenario_name() -> None:
    with pytest.raises(ScenarioError, match=r"no scenario 'nope'.*leader-crash"):
        scenario.find("nope")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "absent.yaml")
