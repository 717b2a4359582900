"""The scenario loader: the shipped files load; bad files fail naming file and field."""

from __future__ import annotations

import itertools
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


NEW_SCENARIOS = ("minority-partition", "leader-isolated", "bridge-node", "one-way-loss",
                 "flapping-links", "slow-link", "clock-jumps", "disk-full", "slow-disk")


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
        *NEW_SCENARIOS,
    } <= names
    for p in scenario.available():
        sc = load(p)
        # a drill injects faults, or (mixed-workload) has the operator rotate keys
        assert sc.name == p.stem and (sc.faults or sc.workload.rotate_every)
        assert sc.duration > 0


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


@pytest.mark.parametrize(("kind", "spelled"), [
    ("isolate", "partition"), ("delay", "slow-link"), ("netem", "slow-link"),
    ("loss", "slow-link"), ("iptables", "partition or cut-link"), ("disk_full", "disk-full"),
    ("disk_slow", "slow-disk"), ("clock_jump", "clock-jump"), ("clock_skew", "clock-jump"),
])  # fmt: skip
def test_other_names_of_fault_kinds_point_at_ours(tmp_path: Path, kind: str, spelled: str) -> None:
    p = write(tmp_path, f"duration: 10\nfaults: [{{at: 1, action: {kind}, target: leader}}]\n")
    with pytest.raises(ScenarioError, match=f"unknown action '{kind}'; it is spelled '{spelled}'"):
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
     "faults[0].action: unknown action 'hsm_delete'; it is spelled 'lose-token'"),
    ("[{at: 1, action: token_delete, target: leader}]",
     "faults[0].action: unknown action 'token_delete'; it is spelled 'lose-token'"),
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


# ---------------------------------------------------------------- network, clock, disk


NET = """\
duration: 40
workload: {epoch_advance_every: 3}
faults:
  - {at: 1, action: partition, groups: [[leader], [rest]], heal_after: 8}
  - {at: 2, action: partition, groups: [[node-1], [node-2], [node-3]]}
  - {at: 3, action: cut-link, links: [[leader, follower], [node-2, node-3]], oneway: true}
  - {at: 4, action: cut-link, links: [[follower, random]], heal_after: 1.5}
  - {at: 5, action: slow-link, links: [[leader, follower]], delay_ms: 80, jitter_ms: 40,
     loss_pct: 5, heal_after: 10}
  - {at: 6, action: slow-link, links: [[node-1, node-2]], loss_pct: 30}
  - {at: 7, action: clock-jump, target: follower, offsets_s: [3600, -180], every: 7}
  - {at: 8, action: clock-jump, target: node-2, offsets_s: [-60]}
  - {at: 9, action: disk-full, target: leader, free_after: 8}
  - {at: 10, action: disk-full, target: node-3}
  - {at: 11, action: slow-disk, target: follower, write_iops: 10, heal_after: 5}
"""


def test_network_clock_and_disk_faults_load(tmp_path: Path) -> None:
    sc = load(write(tmp_path, NET))
    part, part3, cut, cut2, slow, lossy, clock, clock1, full, full2, sdisk = sc.faults
    assert sc.workload.epoch_advance_every == 3
    assert (part.groups, part.heal_after, part.target) == ((("leader",), ("rest",)), 8,
                                                           "leader | rest")  # fmt: skip
    assert part3.groups == (("node-1",), ("node-2",), ("node-3",)) and part3.heal_after is None
    assert cut.links == (("leader", "follower"), ("node-2", "node-3")) and cut.oneway
    assert cut.target == "leader->follower, node-2->node-3"
    assert (cut2.oneway, cut2.target) == (False, "follower<->random")
    assert (slow.delay_ms, slow.jitter_ms, slow.loss_pct) == (80, 40, 5)
    assert (lossy.delay_ms, lossy.loss_pct) == (0, 30)
    assert (clock.offsets_s, clock.every, clock1.offsets_s, clock1.every) == (
        (3600, -180), 7, (-60,), 0)
    assert (full.free_after, full2.free_after) == (8, None)
    assert (sdisk.write_iops, sdisk.heal_after) == (10, 5)
    assert scenario.requirements(sc) == {"network", "nfqueue", "clock", "disk", "slow-disk"}


def test_requirements_of_process_faults_are_none() -> None:
    assert scenario.requirements(load(scenario.find("leader-crash"))) == set()
    assert scenario.requirements(load(scenario.find("clock-jumps"))) == {"clock"}
    assert scenario.requirements(load(scenario.find("minority-partition"))) == {"network"}
    assert scenario.requirements(load(scenario.find("slow-link"))) == {"network", "nfqueue"}
    assert scenario.requirements(load(scenario.find("disk-full"))) == {"disk"}


def test_shipped_network_scenarios_have_their_shapes() -> None:
    def only(name: str) -> scenario.Fault:
        return load(scenario.find(name)).faults[0]

    assert only("minority-partition").groups == (("follower",), ("rest",))
    assert only("leader-isolated").groups == (("leader",), ("rest",))
    bridge = only("bridge-node")
    assert bridge.links == (("leader", "follower"),) and not bridge.oneway
    one, two = load(scenario.find("one-way-loss")).faults
    assert one.oneway and one.links == (("leader", "follower"),)
    assert two.oneway and two.links == (("follower", "leader"),)
    flaps = load(scenario.find("flapping-links")).faults
    assert len(flaps) >= 5 and all(f.action == "cut-link" and f.heal_after for f in flaps)
    assert all(b.at - a.at > (a.heal_after or 0) for a, b in itertools.pairwise(flaps))
    slow = only("slow-link")
    assert slow.delay_ms > 0 and slow.jitter_ms > 0 and slow.loss_pct > 0
    jumps = load(scenario.find("clock-jumps")).faults
    assert [f.target for f in jumps] == ["follower", "leader"]
    assert all(f.offsets_s[0] > 0 > f.offsets_s[1] for f in jumps)  # forward, then back
    disks = load(scenario.find("disk-full")).faults
    assert all(f.action == "disk-full" and f.free_after for f in disks)


@pytest.mark.parametrize(("faults", "expect"), [
    ("[{at: 1, action: partition, groups: [[leader]]}]",
     "faults[0].groups: must be a list of at least two groups"),
    ("[{at: 1, action: partition, groups: [[leader], []]}]",
     "faults[0].groups[1]: must be a non-empty list of targets"),
    ("[{at: 1, action: partition, groups: [[leader], [rest, node-1]]}]",
     "faults[0].groups[1]: 'rest' stands alone in its group"),
    ("[{at: 1, action: partition, groups: [[node-1], [node-1]]}]",
     "faults[0].groups[1]: 'node-1' is named more than once"),
    ("[{at: 1, action: partition, groups: [[leader], [node-4]]}]",
     "faults[0].groups[1][0]: 'node-4' is not a target here (leader, follower, random, rest"),
    ("[{at: 1, action: partition, groups: [[leader], [other-follower]]}]",
     "'other-follower' is not a target here"),
    ("[{at: 1, action: partition, groups: [[node-1, node-2], [node-3], [rest]]}]",
     "faults[0].groups: names more nodes than the cluster's 3"),
    ("[{at: 1, action: partition, target: leader, groups: [[leader], [rest]]}]",
     "faults[0].target: action 'partition' names its nodes in 'groups'"),
    ("[{at: 1, action: partition}]", "faults[0]: action 'partition' needs 'groups'"),
    ("[{at: 1, action: partition, groups: [[leader], [rest]], oneway: true}]",
     "faults[0].oneway: not a parameter of action 'partition'"),
    ("[{at: 1, action: cut-link, links: [[leader]]}]",
     "faults[0].links[0]: a link is a pair of targets [a, b]"),
    ("[{at: 1, action: cut-link, links: [[node-2, node-2]]}]",
     "faults[0].links[0]: a link joins two different nodes"),
    ("[{at: 1, action: cut-link, links: [[leader, rest]]}]",
     "faults[0].links[0][1]: 'rest' is not a target here"),
    ("[{at: 1, action: cut-link, links: []}]", "faults[0].links: must be a non-empty list"),
    ("[{at: 1, action: cut-link, links: [[leader, follower]], oneway: 1}]",
     "faults[0].oneway: must be true or false"),
    ("[{at: 1, action: cut-link, links: [[leader, follower]], heal_after: -1}]",
     "faults[0].heal_after: -1 is out of range 0..600"),
    ("[{at: 1, action: slow-link, links: [[leader, follower]]}]",
     "faults[0]: action 'slow-link' needs delay_ms or loss_pct above 0"),
    ("[{at: 1, action: slow-link, links: [[leader, follower]], delay_ms: 10, jitter_ms: 20}]",
     "faults[0].jitter_ms: 20 is more than delay_ms 10"),
    ("[{at: 1, action: slow-link, links: [[leader, follower]], loss_pct: 100}]",
     "faults[0].loss_pct: 100 is out of range 0..99"),
    ("[{at: 1, action: slow-link, links: [[leader, follower]], delay_ms: 9000}]",
     "faults[0].delay_ms: 9000 is out of range 0..5000"),
    ("[{at: 1, action: clock-jump, target: leader}]",
     "faults[0]: action 'clock-jump' needs 'offsets_s'"),
    ("[{at: 1, action: clock-jump, target: leader, offsets_s: [60, -60]}]",
     "faults[0]: more than one offset needs 'every' (seconds)"),
    ("[{at: 1, action: clock-jump, target: leader, offsets_s: [60], every: 2}]",
     "faults[0].every: only with more than one offset"),
    ("[{at: 1, action: clock-jump, target: leader, offsets_s: []}]",
     "faults[0].offsets_s: must be a list of 1..20 offsets"),
    ("[{at: 1, action: clock-jump, target: leader, offsets_s: [1000000000]}]",
     "faults[0].offsets_s[0]: 1000000000 is out of range"),
    ("[{at: 10, action: clock-jump, target: leader, offsets_s: [60, 0], every: 15}]",
     "faults[0]: its last offset would come at 25 s, after the workload's 20 s"),
    ("[{at: 1, action: clock-jump, target: leader, offsets_s: [60], heal_after: 3}]",
     "faults[0].heal_after: not a parameter of action 'clock-jump'"),
    ("[{at: 1, action: disk-full}]", "faults[0]: missing required key 'target'"),
    ("[{at: 1, action: disk-full, target: leader, heal_after: 3}]",
     "faults[0].heal_after: not a parameter of action 'disk-full'"),
    ("[{at: 1, action: slow-disk, target: leader}]",
     "faults[0]: action 'slow-disk' needs 'write_iops'"),
    ("[{at: 1, action: slow-disk, target: leader, write_iops: 0}]",
     "faults[0].write_iops: 0 is out of range 1..100000"),
    ("[{at: 1, action: slow-disk, target: leader, write_iops: 5, free_after: 3}]",
     "faults[0].free_after: not a parameter of action 'slow-disk'"),
])  # fmt: skip
def test_bad_network_clock_and_disk_faults(tmp_path: Path, faults: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nfaults: {faults}\n"))
    assert expect in str(e.value), str(e.value)
    assert str(e.value).startswith("s.yaml: ")


def test_bad_epoch_advance_every(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"workload\.epoch_advance_every: 0 is out of range"):
        load(write(tmp_path, "duration: 20\nworkload: {epoch_advance_every: 0}\n"))


# ---------------------------------------------------------------- workload mix, operator actions


def test_workload_defaults_to_signing_only(tmp_path: Path) -> None:
    w = load(write(tmp_path, "duration: 20\n")).workload
    assert w.weights() == {"sign": 1} and not w.decrypts
    assert w.rotate_every is None and w.revoke is False


def test_workload_mix_rotation_and_revocation_load(tmp_path: Path) -> None:
    text = ("duration: 20\nworkload: {mix: {sign: 3, decrypt: 1}, rotate_every: 8, "
            "revoke: true}\n")  # fmt: skip
    w = load(write(tmp_path, text)).workload
    assert w.weights() == {"sign": 3, "decrypt": 1} and w.decrypts
    assert w.rotate_every == 8 and w.revoke is True


@pytest.mark.parametrize(
    ("wl", "expect"),
    [
        ("{mix: {encrypt: 1}}", "workload.mix: unknown key 'encrypt'"),
        ("{mix: {sign: 0, decrypt: 0}}", "workload.mix: every weight is 0"),
        ("{mix: {}}", "workload.mix: names no flow"),
        ("{mix: {sign: 1.5}}", "workload.mix.sign: must be an integer"),
        ("{mix: {decrypt: -1}}", "workload.mix.decrypt: -1 is out of range"),
        ("{mix: [sign]}", "workload.mix: must be a mapping"),
        ("{revoke: true}", "workload.revoke: needs workload.rotate_every"),
        ("{rotate_every: 1}", "workload.rotate_every: 1 is out of range"),
        ("{rotate_every: 5, revoke: yes-please}", "workload.revoke: must be true or false"),
    ],
)
def test_bad_workload_mix(tmp_path: Path, wl: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nworkload: {wl}\n"))
    assert expect in str(e.value), str(e.value)


def test_operator_actions_and_replace_load(tmp_path: Path) -> None:
    text = """\
duration: 40
faults:
  - {at: 5, action: rotate}
  - {at: 6, action: refresh, timeout: 90}
  - {at: 7, action: lose-token, target: follower, replace: true}
"""
    rot, ref, lose = load(write(tmp_path, text)).faults
    assert (rot.action, rot.target, rot.timeout) == ("rotate", "cluster", 60.0)
    assert (ref.action, ref.timeout) == ("refresh", 90.0)
    assert lose.replace is True
    assert scenario.requirements(load(write(tmp_path, text))) == set()


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ("{at: 5, action: rotate, target: leader}", "'rotate' is an operator action"),
        ("{at: 5, action: refresh, timeout: 1}", "timeout: 1 is out of range"),
        ("{at: 5, action: refresh, replace: true}", "not a parameter of action 'refresh'"),
        ("{at: 5, action: kill, target: leader, replace: true}", "not a parameter of action"),
        ("{at: 5, action: lose-token, target: follower, replace: 1}", "must be true or false"),
    ],
)
def test_bad_operator_actions(tmp_path: Path, fault: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nfaults:\n  - {fault}\n"))
    assert expect in str(e.value), str(e.value)


def test_shipped_workload_scenarios_have_their_shapes() -> None:
    get = lambda n: load(scenario.find(n))  # noqa: E731
    rdp = get("rotation-during-partition")
    part, rot = rdp.faults
    assert part.action == "partition" and rot.action == "rotate"
    assert part.at < rot.at < part.at + (part.heal_after or 0)  # requested while cut off
    assert rdp.workload.decrypts
    ref = get("refresh-under-load")
    assert [f.action for f in ref.faults] == ["refresh"] and ref.max_gap_s is not None
    rep = get("node-replacement")
    assert rep.faults[0].action == "lose-token" and rep.faults[0].replace
    assert rep.faults[1].target == "other-follower"
    five = get("five-node")
    assert five.nodes == 5 and five.workload.rotate_every
    mixed = get("mixed-workload")
    assert mixed.workload.revoke and mixed.workload.decrypts and not mixed.faults


# ---------------------------------------------------------------- hsm-refuse


REFUSE = """\
duration: 30
faults:
  - {at: 6, action: hsm-refuse, target: follower, duration: 10}
  - {at: 20, action: kill, target: other-follower, restart_after: 5}
  - {at: 22, action: hsm-refuse, target: node-2, duration: 0.5, restart: true}
"""


def test_hsm_refuse_loads_with_its_parameters(tmp_path: Path) -> None:
    sc = load(write(tmp_path, REFUSE))
    refuse, kill, refuse2 = sc.faults
    assert (refuse.action, refuse.target, refuse.duration, refuse.restart) == (
        "hsm-refuse", "follower", 10.0, False)  # fmt: skip
    assert (kill.target, kill.restart_after) == ("other-follower", 5)
    assert (refuse2.target, refuse2.duration, refuse2.restart) == ("node-2", 0.5, True)
    assert scenario.requirements(sc) == set()  # a rename: no root, nothing installed


def test_shipped_hsm_refuse_drill_needs_the_refused_member() -> None:
    sc = load(scenario.find("hsm-refuse"))
    refuse, kill = sc.faults
    assert (refuse.action, refuse.target, refuse.restart) == ("hsm-refuse", "follower", False)
    assert (kill.action, kill.target) == ("kill", "other-follower")
    # the other follower goes down after the token is back, for longer than the
    # availability gap: signing in that window needs the refused member's HSM
    assert kill.at > refuse.at + refuse.duration
    assert sc.max_gap_s is not None and kill.restart_after is not None
    assert kill.restart_after > sc.max_gap_s and kill.at + kill.restart_after < sc.duration


@pytest.mark.parametrize(
    ("fault", "expect"),
    [
        ("{at: 5, action: hsm-refuse, target: follower}",
         "faults[0]: action 'hsm-refuse' needs 'duration'"),
        ("{at: 5, action: hsm-refuse, target: follower, duration: 0}",
         "faults[0].duration: 0 is out of range 0.5..600"),
        ("{at: 5, action: hsm-refuse, target: follower, duration: soon}",
         "faults[0].duration: must be a number, not str"),
        ("{at: 15, action: hsm-refuse, target: follower, duration: 6}",
         "faults[0].duration: the token would come back at 21 s, after the workload's 20 s"),
        ("{at: 5, action: hsm-refuse, target: follower, duration: 3, restart: yes please}",
         "faults[0].restart: must be true or false"),
        ("{at: 5, action: hsm-refuse, duration: 3}", "faults[0]: missing required key 'target'"),
        ("{at: 5, action: hsm-refuse, target: node-4, duration: 3}",
         "faults[0].target: 'node-4' is not a target"),
        ("{at: 5, action: hsm-refuse, target: leader, duration: 3, heal_after: 2}",
         "faults[0].heal_after: not a parameter of action 'hsm-refuse'"),
        ("{at: 5, action: kill, target: leader, duration: 3}",
         "faults[0].duration: not a parameter of action 'kill'"),
        ("{at: 5, action: kill, target: leader, restart: true}",
         "faults[0].restart: not a parameter of action 'kill'"),
        ("{at: 5, action: hsm_fail, target: leader, duration: 3}",
         "faults[0].action: unknown action 'hsm_fail'; it is spelled 'hsm-refuse'"),
        ("{at: 5, action: hsm-down, target: leader, duration: 3}",
         "it is spelled 'hsm-refuse'"),
    ],
)  # fmt: skip
def test_bad_hsm_refuse(tmp_path: Path, fault: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nfaults:\n  - {fault}\n"))
    assert expect in str(e.value), str(e.value)


def test_other_follower_after_hsm_refuse(tmp_path: Path) -> None:
    ok = "duration: 20\nfaults:\n  - {at: 2, action: hsm-refuse, target: node-1, duration: 3}\n" \
         "  - {at: 8, action: kill, target: other-follower}\n"  # fmt: skip
    assert load(write(tmp_path, ok)).faults[1].target == "other-follower"
    late = "duration: 20\nfaults:\n  - {at: 9, action: hsm-refuse, target: node-1, duration: 3}\n" \
           "  - {at: 8, action: kill, target: other-follower}\n"  # fmt: skip
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, late))
    assert "'other-follower' needs an earlier lose-token fault or hsm-refuse fault" in str(e.value)


# ---------------------------------------------------------------- lose-cluster


def test_lose_cluster_loads_with_defaults_and_parameters(tmp_path: Path) -> None:
    sc = load(write(tmp_path, "duration: 40\nfaults:\n  - {at: 8, action: lose-cluster}\n"))
    (loss,) = sc.faults
    assert (loss.action, loss.target, loss.down_for) == ("lose-cluster", "cluster", 0.0)
    assert (loss.officers, loss.officer_k) == (scenario.DEFAULT_OFFICERS,
                                               scenario.DEFAULT_OFFICER_K)  # fmt: skip
    assert loss.snapshot_every == scenario.DEFAULT_LOSS_SNAPSHOT_EVERY
    assert loss.timeout == scenario.DEFAULT_LOSS_TIMEOUT
    text = ("duration: 40\nfaults:\n  - {at: 8, action: lose-cluster, officers: 5, officer_k: 3,"
            " snapshot_every: 50, down_for: 2, timeout: 90}\n")  # fmt: skip
    (loss,) = load(write(tmp_path, text)).faults
    assert (loss.officers, loss.officer_k, loss.snapshot_every) == (5, 3, 50)
    assert (loss.down_for, loss.timeout) == (2.0, 90.0)
    assert scenario.requirements(load(write(tmp_path, text))) == set()
    # other faults keep the node's own snapshot interval
    assert load(write(tmp_path, GOOD)).faults[0].snapshot_every == 0


def test_shipped_cluster_loss_drill() -> None:
    sc = load(scenario.find("cluster-loss"))
    (loss,) = sc.faults
    assert loss.action == "lose-cluster" and loss.officer_k <= loss.officers
    # the loss comes mid-workload, with time left to recover and sign again
    assert 0 < loss.at < sc.duration - 30
    assert not sc.workload.rotate_every and sc.max_gap_s is None


@pytest.mark.parametrize(("text", "expect"), [
    ("[{at: 5, action: lose-cluster, target: leader}]",
     "faults[0].target: 'lose-cluster' is an operator action on the cluster"),
    ("[{at: 5, action: lose-cluster, officers: 1}]",
     "faults[0].officers: 1 is out of range 2..7"),
    ("[{at: 5, action: lose-cluster, officers: 8}]",
     "faults[0].officers: 8 is out of range 2..7"),
    ("[{at: 5, action: lose-cluster, officers: 2.5}]",
     "faults[0].officers: must be an integer, not float"),
    ("[{at: 5, action: lose-cluster, officer_k: 1}]",
     "faults[0].officer_k: 1 is out of range 2..7"),
    ("[{at: 5, action: lose-cluster, officers: 3, officer_k: 4}]",
     "faults[0].officer_k: 4 is more than officers 3"),
    ("[{at: 5, action: lose-cluster, officers: 2, officer_k: 3}]",
     "faults[0].officer_k: 3 is more than officers 2"),
    ("[{at: 5, action: lose-cluster, snapshot_every: 5}]",
     "faults[0].snapshot_every: 5 is out of range 10..10000"),
    ("[{at: 5, action: lose-cluster, snapshot_every: often}]",
     "faults[0].snapshot_every: must be an integer, not str"),
    ("[{at: 5, action: lose-cluster, timeout: 2}]",
     "faults[0].timeout: 2 is out of range 5..600"),
    ("[{at: 5, action: lose-cluster, down_for: -1}]",
     "faults[0].down_for: -1 is out of range 0..600"),
    ("[{at: 5, action: lose-cluster, repair_timeout: 60}]",
     "faults[0].repair_timeout: not a parameter of action 'lose-cluster'"),
    ("[{at: 5, action: lose-cluster, replace: true}]",
     "faults[0].replace: not a parameter of action 'lose-cluster'"),
    ("[{at: 5, action: kill, target: leader, officers: 3}]",
     "faults[0].officers: not a parameter of action 'kill'"),
    ("[{at: 5, action: lose-token, target: follower, snapshot_every: 100}]",
     "faults[0].snapshot_every: not a parameter of action 'lose-token'"),
    ("[{at: 5, action: refresh, officer_k: 2}]",
     "faults[0].officer_k: not a parameter of action 'refresh'"),
    ("[{at: 25, action: lose-cluster}]", "faults[0].at: 25 is out of range 0..20"),
    ("[{at: 5, action: lose-cluster}, {at: 2, action: kill, target: leader}]",
     "faults[1]: a scenario with lose-cluster (faults[0]) has no other fault"),
    ("[{at: 2, action: rotate}, {at: 5, action: lose-cluster}]",
     "faults[0]: a scenario with lose-cluster (faults[1]) has no other fault"),
    ("[{at: 5, action: lose-cluster}, {at: 9, action: lose-cluster}]",
     "faults[1]: a scenario with lose-cluster (faults[0]) has no other fault"),
])  # fmt: skip
def test_bad_lose_cluster(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load(write(tmp_path, f"duration: 20\nfaults: {text}\n"))
    assert expect in str(e.value), str(e.value)
    assert str(e.value).startswith("s.yaml: ")


@pytest.mark.parametrize(("workload", "expect"), [
    ("{rotate_every: 8}", "workload.rotate_every: not with lose-cluster"),
    ("{epoch_advance_every: 3}", "workload.epoch_advance_every: not with lose-cluster"),
])  # fmt: skip
def test_lose_cluster_refuses_the_operators_workload(tmp_path: Path, workload: str,
                                                     expect: str) -> None:  # fmt: skip
    text = f"duration: 20\nworkload: {workload}\nfaults: [{{at: 5, action: lose-cluster}}]\n"
    with pytest.raises(ScenarioError, match=expect):
        load(write(tmp_path, text))
    # the decrypt mix is fine: its policy is escrowed too
    ok = "duration: 20\nworkload: {mix: {sign: 1, decrypt: 1}}\nfaults: [{at: 5, action: " \
         "lose-cluster}]\n"  # fmt: skip
    assert load(write(tmp_path, ok)).workload.decrypts
