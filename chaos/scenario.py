"""Drill scenarios: YAML files, validated strictly on load.

A scenario is a schedule of process-level faults at time offsets (seconds from
the start of the workload) and a workload. Every problem is a `ScenarioError`
whose message names the file and the field (`leader-crash.yaml: faults[1].target:
...`). Fault kinds this slice does not implement (network, disk, clock) are
refused by name, never silently accepted.

    name: leader-crash                # [a-z0-9-]+, defaults to the file's stem
    description: one line
    duration: 30                      # seconds of workload, 5..600
    settle_timeout: 60                # seconds allowed to settle afterwards (default 60)
    max_gap_s: 5                      # optional availability check: fail if no flow
                                      # succeeds for longer than this (minority faults)
    workload:
      clients: 3                      # concurrent signing clients, 1..32
      op_timeout: 20                  # seconds one signing flow may take, 2..120
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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
TARGET_RE = re.compile(r"node-([1-9][0-9]?)")
# `other-follower`: a follower that no earlier `lose-token` fault hit (needs one).
TARGET_WORDS = ("leader", "follower", "random", "other-follower")
ACTIONS = ("kill", "pause", "restart", "lose-token")
# Fault kinds of issue 13 that this slice does not implement: refused by name.
NOT_IMPLEMENTED = (
    "partition", "isolate", "delay", "loss", "netem", "iptables", "disk_full",
    "disk_slow", "clock_jump", "clock_skew",
)  # fmt: skip
# Other names for token loss: refused, pointing at the one this loader knows.
ALIASES = {"hsm_delete": "lose-token", "token_delete": "lose-token",
           "token_loss": "lose-token", "lose_token": "lose-token"}  # fmt: skip
DEFAULT_REPAIR_TIMEOUT = 90.0
MAX_BYTES = 64 * 1024


class ScenarioError(ValueError):
    """A scenario file is unusable; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    action: str
    target: str
    restart_after: float | None = None  # kill
    resume_after: float | None = None  # pause
    down_for: float = 0.0  # restart; lose-token: from the loss to the new token
    repair_timeout: float = DEFAULT_REPAIR_TIMEOUT  # lose-token: from the loss to repair done


@dataclass(frozen=True, slots=True)
class Workload:
    clients: int = 3
    op_timeout: float = 20.0


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
_WORKLOAD = {"clients", "op_timeout"}
_FAULT = {"at", "action", "target", "restart_after", "resume_after", "down_for",
          "repair_timeout"}  # fmt: skip
_PER_ACTION = {
    "kill": {"restart_after"},
    "pause": {"resume_after"},
    "restart": {"down_for"},
    "lose-token": {"down_for", "repair_timeout"},
}


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


def _fault(where: str, raw: Any, nodes: int, duration: float) -> Fault:
    d = _mapping(where, raw, _FAULT)
    for key in ("at", "action", "target"):
        if key not in d:
            raise ScenarioError(f"{where}: missing required key {key!r}")
    action = d["action"]
    if not isinstance(action, str):
        raise ScenarioError(f"{where}.action: must be a string, not {type(action).__name__}")
    if action in NOT_IMPLEMENTED:
        raise ScenarioError(
            f"{where}.action: {action!r} is not implemented yet in this slice (process-level "
            f"faults and token loss only: {', '.join(ACTIONS)}); see docs/chaos.md"
        )
    if action in ALIASES:
        raise ScenarioError(
            f"{where}.action: unknown action {action!r}; token loss is spelled "
            f"{ALIASES[action]!r} ({', '.join(ACTIONS)})"
        )
    if action not in ACTIONS:
        raise ScenarioError(f"{where}.action: unknown action {action!r} ({', '.join(ACTIONS)})")
    for key in d:
        if key in ("at", "action", "target"):
            continue
        if key not in _PER_ACTION[action]:
            raise ScenarioError(f"{where}.{key}: not a parameter of action {action!r}")
    at = _number(f"{where}.at", d["at"], 0, duration)
    target = _target(f"{where}.target", d["target"], nodes)
    kw: dict[str, Any] = {}
    if action == "kill" and "restart_after" in d:
        kw["restart_after"] = _number(f"{where}.restart_after", d["restart_after"], 0, 600)
    if action == "pause":
        if "resume_after" not in d:
            raise ScenarioError(f"{where}: action 'pause' needs 'resume_after' (seconds)")
        kw["resume_after"] = _number(f"{where}.resume_after", d["resume_after"], 0, 600)
    if action in ("restart", "lose-token") and "down_for" in d:
        kw["down_for"] = _number(f"{where}.down_for", d["down_for"], 0, 600)
    if action == "lose-token" and "repair_timeout" in d:
        kw["repair_timeout"] = _number(f"{where}.repair_timeout", d["repair_timeout"], 5, 600)
    return Fault(at=at, action=action, target=target, **kw)


def _check_schedule(source: str, faults: list[Fault]) -> None:
    """Checks across faults: `other-follower` needs a `lose-token` fault before it."""
    for i, f in enumerate(faults):
        if f.target != "other-follower":
            continue
        if not any(g.action == "lose-token" and g.at < f.at for g in faults):
            raise ScenarioError(
                f"{source}: faults[{i}].target: 'other-follower' needs an earlier lose-token "
                "fault (it picks a follower other than the member(s) whose token was lost)"
            )


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
        clients=_int(f"{source}: workload.clients", wl_raw.get("clients", 3), 1, 32),
        op_timeout=_number(f"{source}: workload.op_timeout", wl_raw.get("op_timeout", 20), 2, 120),
    )
    faults_raw = top.get("faults", [])
    if faults_raw is None:
        faults_raw = []
    if not isinstance(faults_raw, list):
        raise ScenarioError(f"{source}: faults: must be a list, not {type(faults_raw).__name__}")
    faults = [
        _fault(f"{source}: faults[{i}]", f, nodes, duration) for i, f in enumerate(faults_raw)
    ]
    _check_schedule(source, faults)
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
