"""The cluster under test, driven from outside: CLI subprocesses, signals, the client API.

`custody cluster init` writes the directory (PKI, one SoftHSM2 token per node,
configs, profiles); the drill starts each node (`start`, with its sandbox's group id
and environment) and `custody cluster up` waits until they are healthy. Process
faults are signals to the node processes (SIGKILL, SIGSTOP/SIGCONT, SIGTERM); a node
is started again with the very command `cluster up` uses (`python -m node.cli node
run --config node.toml`, its own session, output appended to node.log, pid in
node.pid), so that `cluster down` and `drill clean` find it. Nothing here imports the
node's server or state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.client.http import ApiError, Client, Unreachable
from node.client.profile import Profile, load_profile

PROJECT = Path(__file__).resolve().parents[1]
# A fast epoch schedule, as the cluster tests use: epochs may advance at any time.
SCHEDULE = {"epoch_min_interval_s": 0.0}


def custody(*args: str, timeout: float = 120) -> str:
    """Run `custody ARGS` in a subprocess; its stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", *args], cwd=PROJECT, capture_output=True,
        text=True, timeout=timeout, env=_env(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"custody {' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()[-1500:]}"
        )
    return proc.stdout


def custody_json(*args: str, timeout: float = 120) -> dict[str, Any]:
    """`custody ARGS --json`, parsed."""
    return dict(json.loads(custody(*args, "--json", timeout=timeout)))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def proc_matches(pid: int, config: Path) -> bool:
    """Is `pid` a live process started with this node config (not a reused pid)?"""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return str(config).encode() in cmd


class DrillCluster:
    """One drill's cluster in `root` (a fresh directory)."""

    def __init__(self, root: Path, nodes: int = 3, snapshot_every: int = 0) -> None:
        self.root = root
        self.n = nodes
        self.snapshot_every = snapshot_every  # node.toml raft.snapshot_every; 0: the default
        self.names = [f"node-{i}" for i in range(1, nodes + 1)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.api: dict[str, str] = {}
        # How a node is launched inside a sandbox (`chaos.sandbox`): its group id (None:
        # the drill's own), extra environment (libfaketime), a check of the new process.
        self.gid: Callable[[str], int | None] = lambda name: None
        self.extra_env: Callable[[str], dict[str, str]] = lambda name: {}
        self.started: Callable[[str, int], None] = lambda name, pid: None

    # ------------------------------------------------------------ lifecycle

    def init(self) -> None:
        custody("cluster", "init", "--dir", str(self.root), "--nodes", str(self.n),
                "--threshold", "2", "--approvers", "alice,bob,carol", "--clients", "app1",
                "--operators", "ops", "--auditors", "audit")  # fmt: skip
        for name in self.names:
            toml = self.root / name / "node.toml"
            text = toml.read_text()
            for key, value in SCHEDULE.items():
                text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
                if n == 0:
                    text = text.replace("[schedule]\n", f"[schedule]\n{key} = {value}\n")
            if self.snapshot_every:
                text, n = re.subn(r"(?m)^snapshot_every = .*$",
                                  f"snapshot_every = {self.snapshot_every}", text)  # fmt: skip
                if n == 0:
                    text = text.replace("[raft]\n", f"[raft]\nsnapshot_every = "
                                        f"{self.snapshot_every}\n")  # fmt: skip
                if f"snapshot_every = {self.snapshot_every}" not in text:
                    raise RuntimeError(f"{toml}: cannot set raft.snapshot_every")
            toml.write_text(text)
        doc = json.loads((self.root / "cluster.json").read_text())
        self.api = {n["name"]: n["api"] for n in doc["nodes"]}

    def up(self, timeout: float = 60) -> None:
        """Start every node with `start` (its sandbox's launch environment), then let
        `custody cluster up` wait until they are healthy and one leads."""
        for name in self.names:
            self.start(name)
        custody("cluster", "up", "--dir", str(self.root), "--timeout", str(timeout),
                timeout=timeout + 30)  # fmt: skip
        for name in self.names:  # `cluster up` must not have started one of its own
            if self.pid(name) != self.procs[name].pid:
                raise RuntimeError(f"{name} is not the process the drill started")

    def down(self) -> None:
        for name in list(self.paused):
            self.cont(name)
        with contextlib.suppress(Exception):
            custody("cluster", "down", "--dir", str(self.root), "--timeout", "5", timeout=60)
        for name in self.names:  # belt and braces: nothing may outlive the drill
            pid = self.pid(name)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=5)

    def config(self, name: str) -> Path:
        return (self.root / name / "node.toml").resolve()

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.root / name / "node.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if proc_matches(pid, self.config(name)) else None

    def running(self, name: str) -> bool:
        self._reap()
        return self.pid(name) is not None

    def _reap(self) -> None:
        for p in self.procs.values():
            p.poll()

    def profile(self, who: str) -> Profile:
        return load_profile(self.root / "profiles" / f"{who}.toml")

    def node_profile(self, who: str, node: str) -> Profile:
        """`who`'s profile restricted to one node (no failover): to read that member."""
        p = self.profile(who)
        return dataclasses.replace(p, nodes=(f"https://{self.api[node]}",))

    # ------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        self._signal(name, signal.SIGKILL)
        self._wait_exit(name, 10)
        self.paused.discard(name)

    def kill_all(self) -> None:
        """SIGKILL every running node at once (paused ones too), then wait for each exit."""
        for name in self.names:
            with contextlib.suppress(ProcessLookupError, RuntimeError):
                self._signal(name, signal.SIGKILL)
        for name in self.names:
            self._wait_exit(name, 10)
        self.paused.clear()

    def stop(self, name: str) -> None:
        self._signal(name, signal.SIGSTOP)
        self.paused.add(name)

    def cont(self, name: str) -> None:
        with contextlib.suppress(ProcessLookupError, RuntimeError):
            self._signal(name, signal.SIGCONT)
        self.paused.discard(name)

    def terminate(self, name: str, timeout: float = 15) -> None:
        self._signal(name, signal.SIGTERM)
        if not self._wait_exit(name, timeout):
            self._signal(name, signal.SIGKILL)
            self._wait_exit(name, 5)

    def _signal(self, name: str, sig: int) -> None:
        pid = self.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        os.kill(pid, sig)

    def _wait_exit(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running(name):
                return True
            time.sleep(0.05)
        return False

    def start(self, name: str) -> None:
        """Start one node exactly as `custody cluster up` does."""
        if self.running(name):
            return
        node_dir = self.root / name
        config = self.config(name)
        with open(config, "rb") as fh:
            hsm = tomllib.load(fh).get("hsm", {})
        extra = dict(self.extra_env(name))
        if hsm.get("softhsm_conf"):
            extra["SOFTHSM2_CONF"] = str((node_dir / hsm["softhsm_conf"]).resolve())
        fd = os.open(node_dir / "node.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)  # fmt: skip
        with os.fdopen(fd, "ab") as log:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            log.write(f"--- custody drill: starting {name} at {stamp} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=node_dir,
                env=_env(extra), start_new_session=True, group=self.gid(name),
            )  # fmt: skip
        (node_dir / "node.pid").write_text(f"{proc.pid}\n")
        self.procs[name] = proc
        self.started(name, proc.pid)

    # ------------------------------------------------------------ observing

    async def status(self, name: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """GET /v1/sys/status from one node; None if it does not answer in time."""
        if name in self.paused or not self.running(name):
            return None
        try:
            async with Client(self.node_profile("audit", name), timeout=timeout,
                              attempts=1) as c:  # fmt: skip
                return await c.get("/v1/sys/status")
        except (TimeoutError, ApiError, Unreachable, OSError):
            return None

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        rows = await asyncio.gather(*(self.status(n) for n in self.names))
        return dict(zip(self.names, rows, strict=True))

    async def leader(self, timeout: float = 10) -> str | None:
        """The node that says it is a healthy leader (the highest term wins), or None."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.statuses()
            leaders = [(s["term"], n) for n, s in st.items()
                       if s and s.get("role") == "leader" and s.get("health") == "ok"]  # fmt: skip
            if leaders:
                return max(leaders)[1]
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.2)

    def _why(self, name: str) -> str:
        """`name`, and if its process is gone, the last line of its log."""
        if self.running(name):
            return name
        try:
            lines = (self.root / name / "node.log").read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        tail = next((ln for ln in reversed(lines) if " error " in ln), lines[-1] if lines else "")
        return f"{name} (exited: {tail[:200]})"

    async def settled(self, timeout: float) -> tuple[bool, str]:
        """Wait until every node runs, is healthy, agrees on one leader and has applied the
        leader's commit index (checked twice in a row)."""
        deadline = time.monotonic() + timeout
        last = ""
        stable = 0
        while time.monotonic() < deadline:
            st = await self.statuses()
            down = [n for n, s in st.items() if s is None]
            leaders = {s.get("leader") for s in st.values() if s}
            if down:
                last = "not answering: " + "; ".join(self._why(n) for n in down)
            elif any(s.get("health") != "ok" for s in st.values() if s):
                last = "unhealthy: " + ", ".join(
                    f"{n}={s.get('health')}" for n, s in st.items() if s and s.get("health") != "ok"
                )
            elif len(leaders) != 1 or None in leaders:
                last = f"leaders disagree: {sorted(map(str, leaders))}"
            else:
                commit = max(s["commit"] for s in st.values() if s)
                if all(s and s["applied"] >= commit for s in st.values()):
                    stable += 1
                    if stable >= 2:
                        return True, "settled"
                    await asyncio.sleep(0.5)
                    continue
                last = "applied behind commit"
            stable = 0
            await asyncio.sleep(0.3)
        return False, last
