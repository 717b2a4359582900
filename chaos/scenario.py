"""Drill scenarios: YAML files, validated strictly on load.

A scenario is a schedule of faults at time offsets (seconds from the start of the
workload) and a workload. Every problem is a `ScenarioError` whose message names the
file and the field (`leader-crash.yaml: faults[1].target: ...`). Other names for the
fault kinds (`isolate`, `netem`, `disk_full`, `clock_skew`, ...) are refused with a
pointer to the name this loader knows, never silently accepted.

Process faults (kill, pause, restart), token loss (lose-token) and a refusing HSM
(hsm-refuse) need nothing special; network faults (partition, cut-link, slow-link)
and disk faults (disk-full, slow-disk) need root (a network namespace, iptables, loop
devices); clock-jump needs libfaketime (`requirements()` says which a scenario needs;
`chaos.sandbox` checks them).

    name: leader-crash                # [a-z0-9-]+, defaults to the file's stem
    description: one line
    duration: 30                      # seconds of workload, 5..600
    settle_timeout: 60                # seconds allowed to settle afterwards (default 60)
    max_gap_s: 5                      # optional availability check: fail if no flow
                                      # succeeds for longer than this (minority faults)
    workload:
      clients: 3                      # concurrent signing clients, 1..32
      op_timeout: 20                  # seconds one signing flow may take, 2..120
      mix: {sign: 3, decrypt: 1}      # optional: relative weights of each client's flows
                                      # (sign | decrypt: envelope encrypt + approved
                                      # decrypt); default signing only
      rotate_every: 12                # optional: ops rotates the signing key this often
                                      # (approved by alice and bob, epoch advanced)
      revoke: true                    # with rotate_every: then revoke the replaced version
    faults:
      - at: 8                         # seconds after the workload starts
        action: kill                  # kill | pause | restart
        target: leader                # leader | follower | random | node-N
        restart_after: 6              # kill: start it again this many seconds later
      - at: 20
        action: pause                 # SIGSTOP ...
        target: leader
        resume_after: 6               # ... SIGCONT this many seconds later (required)
      - at: 30
        action: restart               # SIGTERM, wait for exit, start again
        target: node-2
        down_for: 1                   # seconds between exit and start (default 0)
      - at: 40
        action: lose-token            # SIGKILL, delete its SoftHSM2 token for good,
        target: follower              # provision a new one, start it, repair its shares
        down_for: 0                   # seconds between the loss and the new token (default 0)
        repair_timeout: 90            # seconds from the loss until the repair must be done
      - at: 60
        action: kill
        target: other-follower        # a follower no earlier lose-token fault hit: the
        restart_after: 6              # quorum left must include the repaired member
      - at: 5
        action: partition             # cut every link between the groups, both ways
        groups: [[leader], [rest]]    # leader | follower | random | node-N | rest
        heal_after: 8                 # optional: else healed when the workload stops
      - at: 5
        action: cut-link              # cut chosen links: both ways, or with oneway: true
        links: [[leader, follower]]   # only what the first node sends to the second
        oneway: false
        heal_after: 8
      - at: 5
        action: slow-link             # latency (± uniform jitter) and loss on links,
        links: [[leader, follower]]   # both directions of every connection between them
        delay_ms: 80
        jitter_ms: 40
        loss_pct: 5
        heal_after: 10
      - at: 5
        action: clock-jump            # set the node's wall clock to real time + offset,
        target: follower              # one offset after another, `every` seconds apart
        offsets_s: [3600, -180]
        every: 6
      - at: 5
        action: disk-full             # fill the node's data disk (a loop-mounted ext4);
        target: follower              # free it `free_after` s later, restart the node
        free_after: 8
      - at: 40
        action: lose-token
        target: follower
        replace: true                 # re-register it with `custody node replace NAME
                                      # --public-key --raft --api` (its same addresses)
                                      # instead of `custody node repair`
      - at: 8
        action: rotate                # operator action: ops rotates the signing key
                                      # (approved by alice and bob, epoch advanced until
        timeout: 60                   # the new version is primary), within timeout s
      - at: 8
        action: refresh               # operator action: `custody refresh start --wait`
        timeout: 90                   # as ops; must end `done` within timeout s
      - at: 5
        action: slow-disk             # throttle the node's data disk to this many write
        target: follower              # IOs per second (cgroup v1 blkio), for heal_after s
        write_iops: 8
        heal_after: 10
      - at: 6
        action: hsm-refuse            # the node keeps running; its SoftHSM2 token directory
        target: follower              # is moved away (every PKCS#11 call on its objects
        duration: 10                  # fails) for `duration` s, then moved back; with
        restart: false                # restart: true the node is then restarted too
      - at: 10
        action: lose-cluster          # operator action: the clients are held, every node is
        officers: 3                   # backed up (bundles for `officers`, opened by
        officer_k: 2                  # `officer_k` of them), then every node, data directory
        snapshot_every: 100           # and token is lost; the operators and the officers
        down_for: 0                   # rebuild it from the bundles (custody recover), within
        timeout: 180                  # timeout s of the loss. The scenario's only fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
TARGET_RE = re.compile(r"node-([1-9][0-9]?)")
# `other-follower`: a follower that no earlier `lose-token` / `hsm-refuse` fault hit
# (needs one).
TARGET_WORDS = ("leader", "follower", "random", "other-follower")
# In partition groups and links: `rest` (groups only) is every node no other word names.
GROUP_WORDS = ("leader", "follower", "random", "rest")
LINK_WORDS = ("leader", "follower", "random")
NODE_ACTIONS = ("kill", "pause", "restart", "lose-token", "clock-jump", "disk-full",
                "slow-disk", "hsm-refuse")  # fmt: skip
NET_ACTIONS = ("partition", "cut-link", "slow-link")
# Operator actions in the schedule: no target; the drill checks that they completed.
OPERATOR_ACTIONS = ("rotate", "refresh", "lose-cluster")
ACTIONS = (*NODE_ACTIONS[:4], *NET_ACTIONS, *NODE_ACTIONS[4:], *OPERATOR_ACTIONS)
# Faults after which `other-follower` means "a follower other than the member(s) they hit".
MEMBER_FAULTS = ("lose-token", "hsm-refuse")
# Other names for the fault kinds: refused, pointing at the one this loader knows.
ALIASES = {"hsm_delete": "lose-token", "token_delete": "lose-token",
           "token_loss": "lose-token", "lose_token": "lose-token",
           "isolate": "partition", "iptables": "partition or cut-link",
           "delay": "slow-link", "loss": "slow-link", "netem": "slow-link",
           "latency": "slow-link", "disk_full": "disk-full", "disk_slow": "slow-disk",
           "slow_disk": "slow-disk", "clock_jump": "clock-jump",
           "clock_skew": "clock-jump", "hsm_refuse": "hsm-refuse",
           "hsm_fail": "hsm-refuse", "hsm-fail": "hsm-refuse", "hsm_down": "hsm-refuse",
           "hsm-down": "hsm-refuse", "token_refuse": "hsm-refuse"}  # fmt: skip
DEFAULT_REPAIR_TIMEOUT = 90.0
# lose-cluster: the nodes' Raft snapshot interval (node.toml raft.snapshot_every; the node's
# default is 1000), recovery officers, their quorum, seconds from the loss to recovery done.
DEFAULT_LOSS_SNAPSHOT_EVERY = 100
DEFAULT_OFFICERS = 3
DEFAULT_OFFICER_K = 2
DEFAULT_LOSS_TIMEOUT = 180.0
MAX_OFFICERS = 7
MAX_CLOCK_OFFSET_S = 30 * 86400
# What a fault kind needs beyond starting processes (`requirements`, `chaos.sandbox`).
NEEDS = {"partition": "network", "cut-link": "network", "slow-link": "network",
         "disk-full": "disk", "slow-disk": "slow-disk", "clock-jump": "clock"}  # fmt: skip
MAX_BYTES = 64 * 1024


class ScenarioError(ValueError):
    """A scenario file is unusable; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    action: str
    target: str  # network faults: a summary of their groups / links
    restart_after: float | None = None  # kill
    resume_after: float | None = None  # pause
    down_for: float = 0.0  # restart; lose-token: from the loss to the new token
    repair_timeout: float = DEFAULT_REPAIR_TIMEOUT  # lose-token: from the loss to repair done
    # partition: groups of target words; cut-link / slow-link: pairs of target words
    groups: tuple[tuple[str, ...], ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    oneway: bool = False  # cut-link: only what the first node of a link sends the second
    heal_after: float | None = None  # network faults, slow-disk: else at the workload's end
    delay_ms: float = 0.0  # slow-link
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    offsets_s: tuple[float, ...] = ()  # clock-jump: wall clock = real time + offset
    every: float = 0.0  # clock-jump: seconds between successive offsets
    free_after: float | None = None  # disk-full: else freed when the workload stops
    write_iops: int = 0  # slow-disk
    replace: bool = False  # lose-token: `custody node replace` instead of `node repair`
    timeout: float = 60.0  # rotate / refresh: seconds until it must have completed
    duration: float = 0.0  # hsm-refuse: seconds the token stays away
    restart: bool = False  # hsm-refuse: restart the node once the token is back
    # lose-cluster: recovery officers (m), how many open a bundle and recover (k), and the
    # nodes' snapshot interval (0: the node's default; lose-cluster sets its own)
    officers: int = DEFAULT_OFFICERS
    officer_k: int = DEFAULT_OFFICER_K
    snapshot_every: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    clients: int = 3
    op_timeout: float = 20.0
    # ops runs `custody epoch advance` this often during the workload (every member
    # votes with its own wall clock: what clock-jump faults act on); None: never
    epoch_advance_every: float | None = None
    # relative weights of the clients' flows (sign, decrypt); default signing only
    mix: tuple[tuple[str, int], ...] = (("sign", 1),)
    rotate_every: float | None = None  # ops rotates the signing key this often
    revoke: bool = False  # and then revokes the version each rotation replaced

    def weights(self) -> dict[str, int]:
        return dict(self.mix)

    @property
    def decrypts(self) -> bool:
        return any(k == "decrypt" and w > 0 for k, w in self.mix)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    duration: float
    settle_timeout: float
    workload: Workload
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    path: Path | None = None
    nodes: int = 3
    max_gap_s: float | None = None  # opt-in availability check


_TOP = {
    "name",
    "description",
    "duration",
    "settle_timeout",
    "workload",
    "faults",
    "nodes",
    "max_gap_s",
}
_WORKLOAD = {"clients", "op_timeout", "epoch_advance_every", "mix", "rotate_every", "revoke"}
OP_KINDS = ("sign", "decrypt")
_FAULT = {"at", "action", "target", "restart_after", "resume_after", "down_for",
          "repair_timeout", "groups", "links", "oneway", "heal_after", "delay_ms",
          "jitter_ms", "loss_pct", "offsets_s", "every", "free_after",
          "write_iops", "replace", "timeout", "duration", "restart", "officers",
          "officer_k", "snapshot_every"}  # fmt: skip
_PER_ACTION = {
    "kill": {"restart_after"},
    "pause": {"resume_after"},
    "restart": {"down_for"},
    "lose-token": {"down_for", "repair_timeout", "replace"},
    "partition": {"groups", "heal_after"},
    "cut-link": {"links", "oneway", "heal_after"},
    "slow-link": {"links", "delay_ms", "jitter_ms", "loss_pct", "heal_after"},
    "clock-jump": {"offsets_s", "every"},
    "disk-full": {"free_after"},
    "slow-disk": {"write_iops", "heal_after"},
    "rotate": {"timeout"},
    "refresh": {"timeout"},
    "hsm-refuse": {"duration", "restart"},
    "lose-cluster": {"timeout", "down_for", "officers", "officer_k", "snapshot_every"},
}
_REQUIRED = {"partition": ("groups",), "cut-link": ("links",), "slow-link": ("links",),
             "clock-jump": ("offsets_s",), "slow-disk": ("write_iops",),
             "hsm-refuse": ("duration",)}  # fmt: skip


def _number(where: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{where}: must be a number, not {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ScenarioError(f"{where}: {value!r} is out of range {lo:g}..{hi:g}")
    return float(value)


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{where}: must be an integer, not {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ScenarioError(f"{where}: {value!r} is out of range {lo}..{hi}")
    return value


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            raise ScenarioError(
                f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})"
            )
    return value


def _target(where: str, value: Any, nodes: int) -> str:
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: must be a string, not {type(value).__name__} {value!r}")
    if value in TARGET_WORDS:
        return value
    m = TARGET_RE.fullmatch(value)
    if m and 1 <= int(m.group(1)) <= nodes:
        return value
    raise ScenarioError(
        f"{where}: {value!r} is not a target (leader, follower, random, other-follower, "
        f"node-1..node-{nodes})"
    )


def _word(where: str, value: Any, nodes: int, words: tuple[str, ...]) -> str:
    """One target word of a partition group or a link."""
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: must be a string, not {type(value).__name__} {value!r}")
    m = TARGET_RE.fullmatch(value)
    if value in words or (m and 1 <= int(m.group(1)) <= nodes):
        return value
    raise ScenarioError(
        f"{where}: {value!r} is not a target here ({', '.join(words)}, node-1..node-{nodes})"
    )


def _groups(where: str, raw: Any, nodes: int) -> tuple[tuple[str, ...], ...]:
    """`[[leader], [rest]]`: at least two non-empty groups; a fixed node in one group
    only; `leader` and `rest` at most once; no more named nodes than the cluster has."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise ScenarioError(f"{where}: must be a list of at least two groups (lists of targets)")
    out: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for i, g in enumerate(raw):
        if not isinstance(g, list) or not g:
            raise ScenarioError(f"{where}[{i}]: must be a non-empty list of targets")
        words = tuple(_word(f"{where}[{i}][{j}]", w, nodes, GROUP_WORDS) for j, w in enumerate(g))
        for w in words:
            if w not in ("follower", "random") and w in seen:
                raise ScenarioError(f"{where}[{i}]: {w!r} is named more than once")
            seen.add(w)
        if "rest" in words and len(words) > 1:
            raise ScenarioError(f"{where}[{i}]: 'rest' stands alone in its group")
        out.append(words)
    named = sum(len(g) for g in out if g != ("rest",))
    if named + (1 if ("rest",) in out else 0) > nodes:
        raise ScenarioError(f"{where}: names more nodes than the cluster's {nodes}")
    return tuple(out)


def _links(where: str, raw: Any, nodes: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"{where}: must be a non-empty list of links ([a, b] pairs)")
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(raw):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ScenarioError(f"{where}[{i}]: a link is a pair of targets [a, b]")
        a, b = (_word(f"{where}[{i}][{j}]", w, nodes, LINK_WORDS) for j, w in enumerate(pair))
        if a == b and a not in ("follower", "random"):
            raise ScenarioError(f"{where}[{i}]: a link joins two different nodes, not {a} and {b}")
        out.append((a, b))
    return tuple(out)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: must be true or false, not {value!r}")
    return value


def _mix(where: str, raw: Any) -> tuple[tuple[str, int], ...]:
    """`{sign: 3, decrypt: 1}`: non-negative integer weights, at least one above 0."""
    if raw is None:
        return (("sign", 1),)
    d = _mapping(where, raw, set(OP_KINDS))
    if not d:
        raise ScenarioError(f"{where}: names no flow ({', '.join(OP_KINDS)})")
    out = tuple((k, _int(f"{where}.{k}", d[k], 0, 100)) for k in OP_KINDS if k in d)
    if not any(w for _, w in out):
        raise ScenarioError(f"{where}: every weight is 0")
    return out


def summary(f: Fault) -> str:
    """How a network fault's groups or links read in lists and reports."""
    if f.groups:
        return " | ".join(",".join(g) for g in f.groups)
    arrow = "->" if f.oneway else "<->"
    return ", ".join(f"{a}{arrow}{b}" for a, b in f.links)


def _fault(where: str, raw: Any, nodes: int, duration: float) -> Fault:
    d = _mapping(where, raw, _FAULT)
    for key in ("at", "action"):
        if key not in d:
            raise ScenarioError(f"{where}: missing required key {key!r}")
    action = d["action"]
    if not isinstance(action, str):
        raise ScenarioError(f"{where}.action: must be a string, not {type(action).__name__}")
    if action in ALIASES:
        raise ScenarioError(
            f"{where}.action: unknown action {action!r}; it is spelled {ALIASES[action]!r} "
            f"({', '.join(ACTIONS)})"
        )
    if action not in ACTIONS:
        raise ScenarioError(f"{where}.action: unknown action {action!r} ({', '.join(ACTIONS)})")
    if action in NODE_ACTIONS and "target" not in d:
        raise ScenarioError(f"{where}: missing required key 'target'")
    if action in OPERATOR_ACTIONS and "target" in d:
        raise ScenarioError(f"{where}.target: {action!r} is an operator action on the cluster")
    if action in NET_ACTIONS and "target" in d:
        which = "groups" if action == "partition" else "links"
        raise ScenarioError(f"{where}.target: action {action!r} names its nodes in {which!r}")
    for key in _REQUIRED.get(action, ()):
        if key not in d:
            raise ScenarioError(f"{where}: action {action!r} needs {key!r}")
    for key in d:
        if key in ("at", "action", "target"):
            continue
        if key not in _PER_ACTION[action]:
            raise ScenarioError(f"{where}.{key}: not a parameter of action {action!r}")
    at = _number(f"{where}.at", d["at"], 0, duration)
    kw: dict[str, Any] = {}
    if action in NODE_ACTIONS:
        target = _target(f"{where}.target", d["target"], nodes)
    if action == "kill" and "restart_after" in d:
        kw["restart_after"] = _number(f"{where}.restart_after", d["restart_after"], 0, 600)
    if action == "pause":
        if "resume_after" not in d:
            raise ScenarioError(f"{where}: action 'pause' needs 'resume_after' (seconds)")
        kw["resume_after"] = _number(f"{where}.resume_after", d["resume_after"], 0, 600)
    if action in ("restart", "lose-token", "lose-cluster") and "down_for" in d:
        kw["down_for"] = _number(f"{where}.down_for", d["down_for"], 0, 600)
    if action == "lose-token" and "repair_timeout" in d:
        kw["repair_timeout"] = _number(f"{where}.repair_timeout", d["repair_timeout"], 5, 600)
    if "heal_after" in d:
        kw["heal_after"] = _number(f"{where}.heal_after", d["heal_after"], 0, 600)
    if action == "partition":
        kw["groups"] = _groups(f"{where}.groups", d["groups"], nodes)
    if action in ("cut-link", "slow-link"):
        kw["links"] = _links(f"{where}.links", d["links"], nodes)
    if "oneway" in d:
        if not isinstance(d["oneway"], bool):
            raise ScenarioError(f"{where}.oneway: must be true or false")
        kw["oneway"] = d["oneway"]
    if action == "slow-link":
        delay = _number(f"{where}.delay_ms", d.get("delay_ms", 0), 0, 5000)
        jitter = _number(f"{where}.jitter_ms", d.get("jitter_ms", 0), 0, 5000)
        loss = _number(f"{where}.loss_pct", d.get("loss_pct", 0), 0, 99)
        if jitter > delay:
            raise ScenarioError(f"{where}.jitter_ms: {jitter:g} is more than delay_ms {delay:g}")
        if delay == 0 and loss == 0:
            raise ScenarioError(f"{where}: action 'slow-link' needs delay_ms or loss_pct above 0")
        kw.update(delay_ms=delay, jitter_ms=jitter, loss_pct=loss)
    if action == "clock-jump":
        raw_offsets = d["offsets_s"]
        if not isinstance(raw_offsets, list) or not 1 <= len(raw_offsets) <= 20:
            raise ScenarioError(f"{where}.offsets_s: must be a list of 1..20 offsets (seconds)")
        kw["offsets_s"] = tuple(
            _number(f"{where}.offsets_s[{i}]", v, -MAX_CLOCK_OFFSET_S, MAX_CLOCK_OFFSET_S)
            for i, v in enumerate(raw_offsets)
        )
        if len(raw_offsets) > 1:
            if "every" not in d:
                raise ScenarioError(f"{where}: more than one offset needs 'every' (seconds)")
            kw["every"] = _number(f"{where}.every", d["every"], 0.1, 600)
        elif "every" in d:
            raise ScenarioError(f"{where}.every: only with more than one offset")
    if action == "disk-full" and "free_after" in d:
        kw["free_after"] = _number(f"{where}.free_after", d["free_after"], 0, 600)
    if "replace" in d:
        kw["replace"] = _bool(f"{where}.replace", d["replace"])
    if "timeout" in d:
        kw["timeout"] = _number(f"{where}.timeout", d["timeout"], 5, 600)
    if action in OPERATOR_ACTIONS:
        target = "cluster"
    if action == "lose-cluster":
        kw["officers"] = _int(f"{where}.officers", d.get("officers", DEFAULT_OFFICERS), 2,
                              MAX_OFFICERS)  # fmt: skip
        kw["officer_k"] = _int(f"{where}.officer_k", d.get("officer_k", DEFAULT_OFFICER_K), 2,
                               MAX_OFFICERS)  # fmt: skip
        if kw["officer_k"] > kw["officers"]:
            raise ScenarioError(f"{where}.officer_k: {kw['officer_k']} is more than officers "
                                f"{kw['officers']}")  # fmt: skip
        kw["snapshot_every"] = _int(f"{where}.snapshot_every",
                                    d.get("snapshot_every", DEFAULT_LOSS_SNAPSHOT_EVERY), 10,
                                    10000)  # fmt: skip
        kw.setdefault("timeout", DEFAULT_LOSS_TIMEOUT)
    if action == "hsm-refuse":
        kw["duration"] = _number(f"{where}.duration", d["duration"], 0.5, 600)
        if at + kw["duration"] > duration:
            raise ScenarioError(
                f"{where}.duration: the token would come back at {at + kw['duration']:g} s, "
                f"after the workload's {duration:g} s")
    if "restart" in d:
        kw["restart"] = _bool(f"{where}.restart", d["restart"])
    if action == "slow-disk":
        kw["write_iops"] = _int(f"{where}.write_iops", d["write_iops"], 1, 100000)
    if action in NET_ACTIONS:
        target = summary(Fault(at=at, action=action, target="", **kw))
    return Fault(at=at, action=action, target=target, **kw)


def requirements(sc: Scenario) -> set[str]:
    """What the scenario's faults need beyond starting processes: `network` (root, a
    network namespace, iptables; slow-link with a delay also `nfqueue`), `disk` (root,
    loop devices), `slow-disk` (that and the cgroup v1 blkio controller), `clock`
    (libfaketime)."""
    out = {NEEDS[f.action] for f in sc.faults if f.action in NEEDS}
    if any(f.action == "slow-link" and f.delay_ms > 0 for f in sc.faults):
        out.add("nfqueue")
    if "slow-disk" in out:
        out.add("disk")
    return out


def _check_schedule(source: str, faults: list[Fault], duration: float) -> None:
    """Checks across faults: `other-follower` needs a `lose-token` or `hsm-refuse` fault
    before it; a clock-jump's last offset comes within the workload."""
    for i, f in enumerate(faults):
        last = f.at + f.every * (len(f.offsets_s) - 1)
        if f.action == "clock-jump" and last > duration:
            raise ScenarioError(
                f"{source}: faults[{i}]: its last offset would come at {last:g} s, after the "
                f"workload's {duration:g} s"
            )
        if f.target != "other-follower":
            continue
        if not any(g.action in MEMBER_FAULTS and g.at < f.at for g in faults):
            raise ScenarioError(
                f"{source}: faults[{i}].target: 'other-follower' needs an earlier lose-token "
                "fault or hsm-refuse fault (it picks a follower other than the member(s) "
                "whose token was lost or refused)"
            )


def _check_loss(source: str, faults: list[Fault], workload: Workload) -> None:
    """A `lose-cluster` action is the scenario's only fault, without the operator's
    rotations or epoch advances in the workload (combinations not tried: the backups
    would have to wait for each new version's escrow, and the loss would cut them off)."""
    losses = [i for i, f in enumerate(faults) if f.action == "lose-cluster"]
    if not losses:
        return
    i = losses[0]
    if len(faults) > 1:
        other = next(j for j in range(len(faults)) if j != i)
        raise ScenarioError(
            f"{source}: faults[{other}]: a scenario with lose-cluster (faults[{i}]) has no other "
            "fault (combinations are not tried)")
    if workload.rotate_every is not None:
        raise ScenarioError(f"{source}: workload.rotate_every: not with lose-cluster (not tried)")
    if workload.epoch_advance_every is not None:
        raise ScenarioError(
            f"{source}: workload.epoch_advance_every: not with lose-cluster (not tried)")


def parse(raw: Any, source: str, *, default_name: str = "scenario") -> Scenario:
    """A checked `Scenario` from parsed YAML; `source` names the file in errors."""
    top = _mapping(source, raw, _TOP)
    name = top.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ScenarioError(f"{source}: name: {name!r} is not [a-z0-9][a-z0-9-]{{0,63}}")
    desc = top.get("description", "")
    if not isinstance(desc, str):
        raise ScenarioError(f"{source}: description: must be a string")
    nodes = _int(f"{source}: nodes", top.get("nodes", 3), 3, 7)
    if "duration" not in top:
        raise ScenarioError(f"{source}: missing required key 'duration' (seconds)")
    duration = _number(f"{source}: duration", top["duration"], 5, 600)
    settle = _number(f"{source}: settle_timeout", top.get("settle_timeout", 60), 5, 600)
    max_gap = top.get("max_gap_s")
    if max_gap is not None:
        max_gap = _number(f"{source}: max_gap_s", max_gap, 0.5, 600)
    wl_raw = _mapping(f"{source}: workload", top.get("workload", {}) or {}, _WORKLOAD)
    workload = Workload(
        mix=_mix(f"{source}: workload.mix", wl_raw.get("mix")),
        rotate_every=None if wl_raw.get("rotate_every") is None else _number(
            f"{source}: workload.rotate_every", wl_raw["rotate_every"], 3, 600),
        revoke=_bool(f"{source}: workload.revoke", wl_raw.get("revoke", False)),
        clients=_int(f"{source}: workload.clients", wl_raw.get("clients", 3), 1, 32),
        op_timeout=_number(f"{source}: workload.op_timeout", wl_raw.get("op_timeout", 20), 2, 120),
        epoch_advance_every=None if wl_raw.get("epoch_advance_every") is None else _number(
            f"{source}: workload.epoch_advance_every", wl_raw["epoch_advance_every"], 1, 600),
    )  # fmt: skip
    if workload.revoke and workload.rotate_every is None:
        raise ScenarioError(f"{source}: workload.revoke: needs workload.rotate_every (it "
                            "revokes the version each rotation replaced)")
    faults_raw = top.get("faults", [])
    if faults_raw is None:
        faults_raw = []
    if not isinstance(faults_raw, list):
        raise ScenarioError(f"{source}: faults: must be a list, not {type(faults_raw).__name__}")
    faults = [
        _fault(f"{source}: faults[{i}]", f, nodes, duration) for i, f in enumerate(faults_raw)
    ]
    _check_schedule(source, faults, duration)
    _check_loss(source, faults, workload)
    return Scenario(
        name=name, description=desc, duration=duration, settle_timeout=settle,
        workload=workload, faults=tuple(sorted(faults, key=lambda f: f.at)), nodes=nodes,
        max_gap_s=max_gap,
    )  # fmt: skip


def load(path: str | Path) -> Scenario:
    """Load and check one scenario file."""
    import yaml

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ScenarioError(f"{path.name}: larger than {MAX_BYTES} bytes")
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path.name}: not valid YAML: {' '.join(str(exc).split())}") from None
    sc = parse(raw, path.name, default_name=path.stem)
    return Scenario(**{**{f: getattr(sc, f) for f in sc.__dataclass_fields__}, "path": path})


def available() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def find(name: str) -> Path:
    """A scenario by name (a file in chaos/scenarios/) or by path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = SCENARIO_DIR / f"{name}.yaml"
    if cand.exists():
        return cand
    names = ", ".join(q.stem for q in available())
    raise ScenarioError(f"no scenario {name!r} (available: {names})")
