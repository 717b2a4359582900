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
        "token-loss-repair",
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


@pytest.mark.parametrize("kind", ["partition", "delay", "isolate", "disk_full", "clock_jump"])
def test_unimplemented_faults_are_refused_by_name(tmp_path: Path, kind: str) -> None:
    p = write(tmp_path, f"duration: 10\nfaults: [{{at: 1, action: {kind}, target: leader}}]\n")
    with pytest.raises(ScenarioError, match=f"'{kind}' is not implemented yet in this slice"):
        load(p)


# ---------------------------------------------------------------- lose-token


LOSE = """\
duration: 40
faults:
  - {at: 6, action: lose-token, target: follower}
  - {at: 30, action: kill, target: other-follower, restart_after: 8}
  - {at: 35, action: lose-token, target: node-2, down_for: 1.5, repair_timeout: 30}
"""


def test_lose_token_loads_with_defaults_and_parameters(tmp_path: Path) -> None:
    sc = load(write(tmp_path, LOSE))
    lose, kill, lose2 = sc.faults
    assert (lose.action, lose.target, lose.down_for) == ("lose-token", "follower", 0.0)
    assert lose.repair_timeout == scenario.DEFAULT_REPAIR_TIMEOUT
    assert lose.restart_after is None and lose.resume_after is None
    assert (kill.target, kill.restart_after) == ("other-follower", 8)
    assert (lose2.target, lose2.down_for, lose2.repair_timeout) == ("node-2", 1.5, 30)


def test_shipped_token_loss_drill_needs_the_repaired_member() -> None:
    sc = load(scenario.find("token-loss-repair"))
    lose, kill = sc.faults
    assert (lose.action, lose.target) == ("lose-token", "follower")
    assert (kill.action, kill.target) == ("kill", "other-follower")
    # the other follower goes down only after the repair had its time, for longer than
    # the availability gap: signing in that window needs the repaired member
    assert kill.at >= lose.at + 15 and kill.restart_after is not None
    assert sc.max_gap_s is not None and kill.restart_after > sc.max_gap_s
    assert kill.at + kill.restart_after < sc.duration


@pytest.mark.parametrize(("faults", "expect"), [
    ("[{at: 1, action: lose-token, target: leader, restart_after: 2}]",
     "faults[0].restart_after: not a parameter of action 'lose-token'"),
    ("[{at: 1, action: lose-token, target: leader, resume_after: 2}]",
     "faults[0].resume_after: not a parameter of action 'lose-token'"),
    ("[{at: 1, action: kill, target: leader, repair_timeout: 20}]",
     "faults[0].repair_timeout: not a parameter of action 'kill'"),
    ("[{at: 1, action: restart, target: leader, repair_timeout: 20}]",
     "faults[0].repair_timeout: not a parameter of action 'restart'"),
    ("[{at: 1, action: lose-token, target: leader, repair_timeout: 2}]",
     "faults[0].repair_timeout: 2 is out of range 5..600"),
    ("[{at: 1, action: lose-token, target: leader, repair_timeout: soon}]",
     "faults[0].repair_timeout: must be a number, not str"),
    ("[{at: 1, action: lose-token, target: leader, down_for: -1}]",
     "faults[0].down_for: -1 is out of range 0..600"),
    ("[{at: 1, action: lose-token, target: node-5}]",
     "faults[0].target: 'node-5' is not a target (leader, follower, random, other-follower"),
    ("[{at: 1, action: lose-token}]", "faults[0]: missing required key 'target'"),
    ("[{at: 3, action: kill, target: other-follower}]",
     "faults[0].target: 'other-follower' needs an earlier lose-token fault"),
    # not earlier: at the same time, or listed first but later in time
    ("[{at: 3, action: lose-token, target: node-1}, {at: 3, action: kill, target: other-follower}]",
     "faults[1].target: 'other-follower' needs an earlier lose-token fault"),
    ("[{at: 2, action: pause, target: other-follower, resume_after: 1}, "
     "{at: 4, action: lose-token, target: node-1}]",
     "faults[0].target: 'other-follower' needs an earlier lose-token fault"),
    ("[{at: 1, action: hsm_delete, target: leader}]",
     "faults[0].action: unknown action 'hsm_delete'; token loss is spelled 'lose-token'"),
    ("[{at: 1, action: token_delete, target: leader}]",
     "faults[0].action: unknown action 'token_delete'; token loss is spelled 'lose-token'"),
])  # fmt: skip
def test_bad_lose_token_faults(tmp_path: Path, faults: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nfaults: {faults}\n"))
    assert expect in str(e.value), str(e.value)
    assert str(e.value).startswith("s.yaml: ")


def test_unknown_scenario_name() -> None:
    with pytest.raises(ScenarioError, match=r"no scenario 'nope'.*leader-crash"):
        scenario.find("nope")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "absent.yaml")
