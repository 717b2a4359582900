"""Benchmark: share repair and proactive refresh between the real nodes of a running
3-node custody cluster.

The node-level counterpart of `benchmarks/recovery.py` (which runs the same repair
and refresh protocol engines in one process). One run, in a temporary directory:

1. setup: `custody cluster init` (3 nodes, threshold 2; approvers alice,bob,carol,
   client app1, operator ops, auditor audit; the nodes' default [schedule], or
   `--dkg-timeout S`), `cluster up`, then wait until the bootstrap's `cluster-audit`
   key has its version 1. At that point the cluster holds exactly 1 key version.
2. repair of one member holding 1 version: the target is a follower (the helpers are
   then the two other members, the leader among them). Each repair is
   `repair_member` without a new identity key (the token's shares are rebuilt and
   overwritten in place: no time lock, no token wipe; the protocol is the same as
   after a lost token): submitted by ops as a signed command (what `custody node
   repair NODE` does), approved by alice and bob over HTTPS (what `custody approve
   REF --yes` does: read the request, recompute its digest, sign it). The figure runs
   from the moment bob's approval POST returns with code `executed` (the repair has
   started: committed and applied on the leader) to the first poll of `GET
   /v1/repairs` on the leader (every `--poll` s, default 50 ms) that shows this
   request's repair `done`; the last poll that still showed it running gives a
   lower bound, printed beside it. `--repeats` repairs (default 3) per count, the
   median reported; CPU seconds spent by each node process during them, per repair;
   when the first run's posts (target + t helpers) were all seen in the log.
3. key creation: policy p1 and the signing key `bench` through the CLI (as in
   `benchmarks/cluster_sign.py`), `custody epoch advance` so that `bench` is active,
   then as many more keys as make the cluster hold 100 versions, created
   concurrently over HTTPS (`--create-inflight` flows, default 32; each: the signed
   `create_key` command, what `custody keys create` posts, two approvals, then a
   long-poll until the DKG has executed it). The time this takes is printed.
   Repair of 100 versions, as in step 2. With `--versions N` (e.g. 1000), the same
   again up to N versions (one repair: runs of at most 256 versions each; the time
   each run's posts and confirmation were first seen is printed). A run that takes
   longer than `dkg_timeout_s` (node default 30 s) is reported by the leader and
   restarted: `--dkg-timeout` raises it (the figure then shows the protocol's cost
   rather than the retry policy's).
   Then, at each count, proactive refresh of every usable version (the same key set:
   100 versions, or N) among all 3 members: `start_refresh` signed by ops and posted
   to POST /v1/commands (what `custody refresh start` does; no quorum). The figure
   runs from the moment that POST returns accepted (code `ok`: committed and applied
   on the leader, the refresh running) to the first poll of `GET /v1/refresh` on the
   leader (every `--poll` s) that shows it `done` (every batch committed: the
   versions' verification shares and generation moved), the last poll still
   `running` as a lower bound; `--repeats` refreshes (1 above 100 versions), median
   reported; CPU seconds per node process per refresh; each refresh must move every
   version's generation by exactly 1. Batches of `node.state.refreshes.refresh_batch`
   versions (256 for 3 members, t = 2); a run without progress within
   `dkg_timeout_s` + 50 ms per version of its batch is reported by the leader and
   restarted (the failed runs are printed; `--dkg-timeout` raises it, as for repairs).
   After each idle refresh the script waits
   until every member's log says it erased its old generation (`erased N share
   objects`, counted up to the refresh's total; the members erase after each batch's
   commit) and prints when that was first seen (the log is read every `--poll` s):
   the erasure is not inside the refresh figure, except between batches.
4. signing throughput, with `--inflight` concurrent flows (default 32), each the
   whole approved-signing flow of `benchmarks/cluster_sign.py` (its `Bench.one`:
   submit by app1, approvals by alice and bob with precomputed signatures, long-poll
   until the signature is in hand), all sent to the leader:
   - without a repair or refresh: a `--window` s window (default 4 s) after 1 s of
     warm-up, before the repair windows, between them and the refresh windows, and
     after those;
   - during repairs of the largest count: repairs of the same member back to back
     while the load runs, until `--window` s of repair time are covered (a single
     repair if it lasts longer than that); signatures/s = signatures completed while a
     repair was running / the time repairs were running. The repair's duration
     under load is printed too.
   - then a second baseline window, and refreshes of the same largest count back to
     back under the same load, measured the same way (a refresh starts as soon as the
     previous one is done: the members' erasure of the previous generation overlaps
     it), then a third baseline window. Repairs are compared with the mean of the
     baselines before and after them, refreshes with the mean of theirs.
   Every signature is verified under the key's group public key at the end (group
   keys do not change in a refresh: signatures from before and after verify alike).
5. references, same run, after the cluster is stopped (machine idle): the engine-only
   repair and refresh of the same number of versions, `benchmarks/recovery.py`'s
   `keys` (trusted dealer, untimed) and `timed(repair_batch, ...)`, `timed(
   refresh_batch, ...)`: wall time of every party's work in one process, and the
   busiest party's CPU time (median of 3 for <= 100 versions). The engine refreshes
   in batches of `MAX_ITEMS` (256), like the node with 3 members.
6. the Raft term and leader after each phase (a term change inside a measured phase
   is an election during it), snapshot sizes at the end, and per node log the counts
   of warning / error / critical lines and tracebacks, with the first distinct ones.

Not measured: repair after a real token loss (`node provision` + `--public-key`: the
time lock adds epoch steps, which are governance waiting, not protocol work); repair
and refresh with 5 nodes; a repair or refresh while a member is down or misbehaving
(runs that fail and restart; a refresh stalls until every member takes part); the
scheduled refresh (`[schedule] refresh_every_epochs`: the same duty, started by the
leader; off in the nodes' default schedule, which this run keeps); the erasure of the
old generation as a time of its own (second-resolution log lines: only when it was seen);
signing latency during a refresh (only throughput). The repair and refresh times
include the polling resolution (the lower bound is printed) and the HTTPS poll
itself. Repaired shares are overwritten in a token that already holds them (a store
with replace of an object the slot knows); a freshly provisioned token starts empty
and fills up instead, so its store costs differ. A refresh stores each share's next
generation as a new object beside the current one (a store of a label the slot does
not know yet: a search of the token per share) and erases the old ones after the
commit (a search per share).
It is a measurement: exit status 0 unless the cluster could not be set up, a repair
or refresh failed (or did not move every version's generation by one) or a signature
did not verify.

Run: make bench (default: 1 and 100 versions, a few minutes on 2 cores), or
    .venv/bin/python benchmarks/recovery_cluster.py [--versions 1000] [--repeats 3]
        [--inflight 32] [--window 4] [--poll 0.05] [--create-inflight 32]
        [--dkg-timeout S] [--keep-dir]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cluster_sign  # noqa: E402
import recovery  # noqa: E402
from cluster_sign import Bench, Cluster, SetupFailed, cpu_seconds, find_leader  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from node.cli.keys import post_signed  # noqa: E402
from node.cli.requests import recompute_digest  # noqa: E402
from node.client.http import Client, new_request_id  # noqa: E402
from node.pki.store import read_private_key  # noqa: E402
from node.state import CreateKey, RepairMember, StartRefresh, sign_approval  # noqa: E402
from node.state.refreshes import refresh_batch  # noqa: E402
from shares.rng import SeededRNG  # noqa: E402

AUDIT_KEY = "cluster-audit"
KEY_PREFIX = "rk"  # bulk keys rk00001...: sorted after `bench` and `cluster-audit`


# ---------------------------------------------------------------- HTTPS session


@dataclasses.dataclass
class RepairRun:
    ref: str
    total: int
    seconds: float  # approval returned -> first poll showing done
    lower: float  # approval returned -> last poll showing running (a lower bound)
    submit: float  # submit + two approvals (governance, before the repair starts)
    polls: int
    failed_runs: int
    helpers: list[str]  # the first run's
    # (seconds since start, versions done, posts of the current run in the log), at each
    # poll that saw a change: when each run's posts were all committed, when it was confirmed
    events: list[tuple[float, int, int]]
    window: tuple[float, float]  # perf_counter interval [start, done seen]

    def posts_in(self) -> float:
        """Seconds until the first run's posts were all seen in the log (t + 1 parties)."""
        parties = len(self.helpers) + 1
        return next((t for t, d, n in self.events if d == 0 and n >= parties), float("nan"))


@dataclasses.dataclass
class RefreshRun:
    ref: str
    total: int  # versions refreshed
    seconds: float  # start command accepted -> first poll showing done
    lower: float  # start command accepted -> last poll showing running (a lower bound)
    submit: float  # the start command's POST (signed, committed and applied on the leader)
    polls: int
    failed_runs: int
    runs: int  # runs it took: batches, plus restarts after a failed run
    # (seconds since accepted, versions done, run) at each poll that saw a change
    events: list[tuple[float, int, int]]
    window: tuple[float, float]  # perf_counter interval [accepted, done seen]
    erased: float = float("nan")  # done seen -> every member's log showed the erasure


def erased_counts(root: Path) -> dict[str, int]:
    """Per node: share objects of old generations it erased so far (its log's
    `erased N share objects of generations no longer in use` lines, summed)."""
    out = {}
    for log in sorted(root.glob("node-*/*.log")):
        text = log.read_text(errors="replace")
        out[log.parent.name] = sum(int(n) for n in ERASED.findall(text))
    return out


ERASED = re.compile(r"erased (\d+) share objects of generations no longer in use")


class Session:
    """Clients for ops, alice, bob, app1 (cluster_sign's Bench profiles: leader first)."""

    def __init__(self, bench: Bench, clients: dict[str, Client]) -> None:
        self.b = bench
        self.c = clients
        self.keys = {
            who: read_private_key(bench.profiles[who].approval_key)  # type: ignore[arg-type]
            for who in ("alice", "bob")
        }

    async def approve_both(self, ref: str) -> dict[str, Any]:
        """What `custody approve REF --yes` does, as alice then bob; bob's answer."""
        view = await self.c["alice"].get(f"/v1/requests/{ref}")
        digest = recompute_digest(view)
        if digest.hex() != view["digest"]:
            raise SetupFailed(f"{ref}: the node's digest differs from the recomputed one")
        out: dict[str, Any] = {}
        for who in ("alice", "bob"):
            out = await self.c[who].post(f"/v1/requests/{ref}/approve", {
                "request_id": new_request_id("approve"),
                "signature": sign_approval(self.keys[who], digest).hex()})  # fmt: skip
            if not out.get("ok"):
                raise SetupFailed(f"approval of {ref} by {who} refused: {out}")
        return out

    async def wait_executed(self, ref: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await self.c["ops"].get(f"/v1/requests/{ref}", wait="5")
            if r["state"] == "executed":
                return
            if r["state"] == "failed":
                raise SetupFailed(f"{ref} failed: {r.get('failure')}")
        raise SetupFailed(f"{ref} not executed within {timeout:g} s")

    async def create_keys(self, ids: list[str], inflight: int) -> None:
        sem = asyncio.Semaphore(inflight)
        ops = self.b.profiles["ops"]

        async def one(key_id: str) -> None:
            async with sem:
                cmd = CreateKey(request_id=new_request_id("create"), author=ops.principal,
                                key_id=key_id, purpose="sign", policy_id=cluster_sign.POLICY_ID)
                out = await post_signed(self.c["ops"], ops, cmd)
                if not out.get("ok"):
                    raise SetupFailed(f"create_key {key_id} refused: {out}")
                await self.approve_both(out["request"])
                await self.wait_executed(out["request"])  # the DKG: keeps DKGs in flight bounded

        await asyncio.gather(*(one(k) for k in ids))

    async def repairs(self) -> dict[str, dict[str, Any]]:
        out = await self.c["ops"].get("/v1/repairs")
        return {r["member"]: r for r in out["repairs"]}

    async def repair(self, target: str, poll: float) -> RepairRun:
        ops = self.b.profiles["ops"]
        pc = time.perf_counter
        t_sub = pc()
        cmd = RepairMember(request_id=new_request_id("repair"), author=ops.principal,
                           name=target)  # fmt: skip
        out = await post_signed(self.c["ops"], ops, cmd)
        if not out.get("ok"):
            raise SetupFailed(f"repair_member {target} refused: {out}")
        ref = out["request"]
        out = await self.approve_both(ref)
        t0 = pc()
        if out.get("code") != "executed":
            raise SetupFailed(f"repair request {ref} not in effect after two approvals: {out}")
        last_running, polls = t0, 0
        events: list[tuple[float, int, int]] = []
        helpers: list[str] = []
        while True:
            t_poll = pc()
            r = (await self.repairs()).get(target)
            t_seen = pc()
            polls += 1
            if r is None or r["request"] != ref:
                raise SetupFailed(f"GET /v1/repairs does not show {ref}: {r}")
            helpers = helpers or r["helpers"]
            if not events or events[-1][1:] != (r["done"], len(r["posted"])):
                events.append((t_seen - t0, r["done"], len(r["posted"])))
            if r["state"] != "running":
                break
            last_running = t_poll
            if t_seen - t0 > 600:
                raise SetupFailed(f"repair {ref} still running after 600 s: {r}")
            await asyncio.sleep(max(0.0, poll - (pc() - t_poll)))
        if r["state"] != "done":
            raise SetupFailed(f"repair {ref} ended {r['state']}: {r.get('failure')}")
        return RepairRun(ref, r["total"], t_seen - t0, last_running - t0, t0 - t_sub, polls,
                         r["failed_runs"], helpers, events, (t0, t_seen))  # fmt: skip

    async def refresh(self, poll: float) -> RefreshRun:
        """What `custody refresh start` posts, then GET /v1/refresh until it is over;
        checks that every version of the refresh moved its generation by exactly 1."""
        ops = self.b.profiles["ops"]
        pc = time.perf_counter
        pre = await self.c["ops"].get("/v1/refresh")
        before = pre["generations"]
        first_run = (pre["refresh"] or {}).get("run", 0) + 1  # what the state will number it
        t_sub = pc()
        cmd = StartRefresh(request_id=new_request_id("refresh"), author=ops.principal)
        out = await post_signed(self.c["ops"], ops, cmd)
        t0 = pc()
        if not out.get("ok") or out.get("code") != "ok":
            raise SetupFailed(f"start_refresh refused or not running: {out}")
        ref = out["request"]
        last_running, polls = t0, 0
        events: list[tuple[float, int, int]] = []
        while True:
            t_poll = pc()
            data = await self.c["ops"].get("/v1/refresh")
            t_seen = pc()
            polls += 1
            r = data["refresh"]
            if r is None or r["request"] != ref:
                raise SetupFailed(f"GET /v1/refresh does not show {ref}: {r}")
            if not events or events[-1][1:] != (r["done"], r["run"]):
                events.append((t_seen - t0, r["done"], r["run"]))
            if r["state"] != "running":
                break
            last_running = t_poll
            if t_seen - t0 > 900:
                raise SetupFailed(f"refresh {ref} still running after 900 s: {r}")
            await asyncio.sleep(max(0.0, poll - (pc() - t_poll)))
        if r["state"] != "done":
            raise SetupFailed(f"refresh {ref} ended {r['state']}: {r.get('failure')}")
        after = data["generations"]
        moved = sorted(k for k, g in before.items() if after.get(k) == g + 1)
        other = sorted(k for k, g in before.items() if after.get(k) not in (g, g + 1))
        if len(moved) != r["total"] or other:
            raise SetupFailed(f"refresh {ref} done, but {len(moved)} of {r['total']} versions "
                              f"moved their generation by 1 (others changed: {other[:5]})")
        return RefreshRun(ref, r["total"], t_seen - t0, last_running - t0, t0 - t_sub, polls,
                          r["failed_runs"], r["run"] - first_run + 1, events, (t0, t_seen))

    async def wait_erased(self, root: Path, start: dict[str, int], total: int, poll: float,
                          timeout: float = 120) -> float:  # fmt: skip
        """Seconds until every node's log counts `total` more erased share objects
        than `start` (NaN if not within `timeout`)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            now = erased_counts(root)
            if all(now.get(k, 0) - v >= total for k, v in start.items()) and start:
                return time.perf_counter() - t0
            await asyncio.sleep(poll)
        return float("nan")


@contextlib.asynccontextmanager
async def session(root: Path):  # type: ignore[no-untyped-def]
    leader = await find_leader(root)
    b = Bench(root, leader)
    async with contextlib.AsyncExitStack() as stack:
        c = {who: await stack.enter_async_context(Client(p, timeout=30))
             for who, p in b.profiles.items()}  # fmt: skip
        yield Session(b, c)


async def leader_name(s: Session) -> str:
    return str((await s.c["ops"].get("/v1/sys/status"))["node"])


# ---------------------------------------------------------------- phases


@dataclasses.dataclass
class Idle:
    count: int  # versions the cluster was meant to hold
    repairs: list[RepairRun]
    cpu: dict[str, float]  # CPU seconds per process, per repair


async def idle_repairs(root: Path, s: Session, target: str, count: int, repeats: int,
                       poll: float) -> Idle:  # fmt: skip
    cpu0 = cpu_seconds(root)
    repairs = [await s.repair(target, poll) for _ in range(repeats)]
    cpu1 = cpu_seconds(root)
    cpu = {k: (cpu1[k] - cpu0[k]) / repeats for k in cpu1 if k in cpu0}
    return Idle(count, repairs, cpu)


@dataclasses.dataclass
class IdleRefresh:
    count: int  # versions the cluster was meant to hold
    refreshes: list[RefreshRun]
    cpu: dict[str, float]  # CPU seconds per process, per refresh (erasure included)


async def idle_refreshes(root: Path, s: Session, count: int, repeats: int,
                         poll: float) -> IdleRefresh:  # fmt: skip
    cpu0 = cpu_seconds(root)
    runs = []
    for _ in range(repeats):
        start = erased_counts(root)
        r = await s.refresh(poll)
        r.erased = await s.wait_erased(root, start, r.total, poll)  # the next starts clean
        runs.append(r)
    cpu1 = cpu_seconds(root)
    cpu = {k: (cpu1[k] - cpu0[k]) / repeats for k in cpu1 if k in cpu0}
    return IdleRefresh(count, runs, cpu)


async def wait_audit_key(s: Session, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            k = await s.c["ops"].get(f"/v1/keys/{AUDIT_KEY}")
            if any(v.get("group_public_key") for v in k["versions"]):
                return
        await asyncio.sleep(0.2)
    raise SetupFailed(f"the {AUDIT_KEY} key has no version after {timeout:g} s")


class Load:
    """`inflight` flows of Bench.one back to back until stopped; completion times."""

    def __init__(self, s: Session, inflight: int) -> None:
        self.s, self.inflight = s, inflight
        self.done: list[float] = []
        self.errors: list[str] = []
        self.stop = asyncio.Event()
        self.task: asyncio.Future[Any] | None = None

    async def _worker(self) -> None:
        while not self.stop.is_set():
            try:
                await self.s.b.one(self.s.c, self.s.b.job())
                self.done.append(time.perf_counter())
            except Exception as exc:
                self.errors.append(f"{exc.__class__.__name__}: {exc}"[:200])
                await asyncio.sleep(0.1)

    def start(self) -> None:
        self.task = asyncio.gather(*(self._worker() for _ in range(self.inflight)))

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task

    def count(self, a: float, b: float) -> int:
        return sum(a <= t <= b for t in self.done)


@dataclasses.dataclass
class Loaded:
    """Repairs or refreshes back to back while `inflight` signing flows run."""

    runs: list[Any]  # RepairRun | RefreshRun
    span: float  # seconds the runs were running (sum of their windows)
    signatures: int  # signatures completed inside those windows
    errors: list[str]
    cpu: dict[str, float]  # CPU seconds per signature, per process, during the runs

    @property
    def rate(self) -> float:
        return self.signatures / self.span


@dataclasses.dataclass
class Throughput:
    # signatures/s without a repair or refresh: before the repairs, between the repairs
    # and the refreshes, after the refreshes
    base: list[float]
    repair: Loaded
    refresh: Loaded
    errors: list[str]  # in the baseline windows


async def under_load(root: Path, s: Session, args: argparse.Namespace,
                     one: Callable[[], Awaitable[Any]]) -> Loaded:  # fmt: skip
    load = Load(s, args.inflight)
    load.start()
    await asyncio.sleep(1.0)
    runs: list[Any] = []
    cpu0 = cpu_seconds(root)
    while sum(r.seconds for r in runs) < args.window:
        runs.append(await one())
    cpu1 = cpu_seconds(root)
    await load.finish()
    n = sum(load.count(*r.window) for r in runs)
    span = sum(r.window[1] - r.window[0] for r in runs)
    cpu = {k: (cpu1[k] - cpu0[k]) / max(n, 1) for k in cpu1 if k in cpu0}
    return Loaded(runs, span, n, load.errors, cpu)


async def throughput(root: Path, s: Session, target: str, args: argparse.Namespace,
                     mark: Callable[[str], Awaitable[None]]) -> Throughput:  # fmt: skip
    errors: list[str] = []

    async def baseline() -> float:
        load = Load(s, args.inflight)
        load.start()
        await asyncio.sleep(1.0)
        a = time.perf_counter()
        await asyncio.sleep(args.window)
        b = time.perf_counter()
        await load.finish()
        errors.extend(load.errors)
        return load.count(a, b) / (b - a)

    base1 = await baseline()
    await mark("baseline before")
    repair = await under_load(root, s, args, lambda: s.repair(target, args.poll))
    await mark("repairs under load")
    base2 = await baseline()
    await mark("baseline between")
    refresh = await under_load(root, s, args, lambda: s.refresh(args.poll))
    await mark("refreshes under load")
    base3 = await baseline()
    await mark("baseline after")
    return Throughput([base1, base2, base3], repair, refresh, errors)


async def verify(s: Session) -> int:
    key = await s.c["ops"].get(f"/v1/keys/{cluster_sign.KEY_ID}")
    v = next(x for x in key["versions"] if x["version"] == key["primary"])
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["group_public_key"]))
    for msg, sig in s.b.signatures:
        pub.verify(sig, msg)  # raises InvalidSignature
    return len(s.b.signatures)


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class Result:
    leader: str = ""
    target: str = ""
    idle: list[Idle] = dataclasses.field(default_factory=list)
    refresh_idle: list[IdleRefresh] = dataclasses.field(default_factory=list)
    creations: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (keys, s)
    tput: Throughput | None = None
    verified: int = 0
    leader_end: str = ""
    # (phase boundary, Raft term, leader) as GET /v1/sys/status shows them: a term change
    # inside a measured phase means an election happened during it
    terms: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    status_end: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot_files: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> bytes


async def mark(s: Session, res: Result, label: str) -> None:
    st = await s.c["ops"].get("/v1/sys/status")
    res.terms.append((label, int(st["term"]), str(st["leader"])))


async def pick_target(s: Session) -> tuple[str, str]:
    """(leader, the highest-numbered other member: the one repaired)."""
    leader = await leader_name(s)
    names = [n["name"] for n in json.loads((s.b.root / "cluster.json").read_text())["nodes"]]
    return leader, sorted(n for n in names if n != leader)[-1]


async def phase_one(root: Path, args: argparse.Namespace, res: Result) -> None:
    async with session(root) as s:
        await wait_audit_key(s)
        res.leader, res.target = await pick_target(s)
        print(f"[setup] leader {res.leader}; repairing {res.target} (a follower)", flush=True)
        await mark(s, res, "start")
        res.idle.append(await idle_repairs(root, s, res.target, 1, max(args.repeats, 5),
                                           args.poll))  # fmt: skip
        await mark(s, res, "1-version repairs")
        print(f"[1 version] {fmt_idle(res.idle[-1])}", flush=True)


async def phase_two(root: Path, args: argparse.Namespace, res: Result) -> None:
    async with session(root) as s:
        held = res.idle[0].repairs[0].total + 1  # + the version of `bench`
        made = 0
        for count in sorted({100, args.versions}):
            ids = [f"{KEY_PREFIX}{made + i + 1:05d}" for i in range(count - held)]
            t = time.perf_counter()
            await s.create_keys(ids, args.create_inflight)
            res.creations.append((len(ids), time.perf_counter() - t))
            await mark(s, res, f"creation of {len(ids)} keys")
            print(f"[setup] {len(ids)} keys created (DKG) in {res.creations[-1][1]:.1f} s",
                  flush=True)  # fmt: skip
            made += len(ids)
            held = count
            repeats = args.repeats if count <= 100 else 1
            res.idle.append(await idle_repairs(root, s, res.target, count, repeats, args.poll))
            await mark(s, res, f"{count}-version repairs")
            print(f"[{count} versions] {fmt_idle(res.idle[-1])}", flush=True)
            res.refresh_idle.append(await idle_refreshes(root, s, count, repeats, args.poll))
            await mark(s, res, f"{count}-version refreshes")
            print(f"[{count} versions] {fmt_refresh(res.refresh_idle[-1])}", flush=True)
        await s.b.learn_template(s.c)
        print(f"[throughput] {args.inflight} in flight; repairs, then refreshes, of {held} "
              "versions", flush=True)  # fmt: skip
        res.tput = await throughput(root, s, res.target, args, lambda label: mark(s, res, label))
        res.verified = await verify(s)
        res.status_end = await s.c["ops"].get("/v1/sys/status")
        res.leader_end = str(res.status_end["node"])


# ---------------------------------------------------------------- report


def ms(x: float) -> str:
    if x != x:  # NaN: a state no poll saw
        return "-"
    return f"{x * 1000:.0f} ms" if x >= 1 else f"{x * 1000:.1f} ms"


def fmt_idle(i: Idle) -> str:
    xs = [r.seconds for r in i.repairs]
    return (f"total {i.repairs[0].total} versions, {len(xs)} repairs: "
            + ", ".join(ms(x) for x in xs))  # fmt: skip


def fmt_refresh(i: IdleRefresh) -> str:
    xs = [r.seconds for r in i.refreshes]
    return (f"refresh of {i.refreshes[0].total} versions, {len(xs)} refreshes: "
            + ", ".join(ms(x) for x in xs))  # fmt: skip


Engine = dict[str, dict[int, tuple[float, float]]]  # "repair"/"refresh" -> count -> figures


def engine_reference(repairs: list[int], refreshes: list[int]) -> Engine:
    """(wall, busiest party CPU) seconds of benchmarks/recovery.py's engines, per count."""
    rng = SeededRNG(2026)
    items, shares = recovery.keys(3, 2, max(repairs + refreshes), rng)
    out: Engine = {"repair": {}, "refresh": {}}
    for kind, fn, counts in (("repair", recovery.repair_batch, repairs),
                             ("refresh", recovery.refresh_batch, refreshes)):  # fmt: skip
        for c in counts:
            reps = 3 if c <= 100 else 1
            got = [recovery.timed(fn, items[:c], shares[:c], 3, 2, rng) for _ in range(reps)]
            out[kind][c] = (statistics.median(g[0] for g in got),
                            statistics.median(g[1] for g in got))  # fmt: skip
    return out


LEVELS = ("warning", "error", "critical")


def scan_logs(root: Path) -> list[str]:
    """Per node log: counts of warning/error/critical lines (the node's text format:
    `TIME NODE LEVEL LOGGER: MESSAGE`) and tracebacks, and the first distinct ones."""
    out = []
    for log in sorted(root.glob("node-*/*.log")):
        counts: collections.Counter[str] = collections.Counter()
        first: dict[str, str] = {}
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            level = parts[2] if len(parts) == 4 and parts[2] in LEVELS else ""
            if line.startswith("Traceback"):
                level = "traceback"
            if level:
                counts[level] += 1
                # the message with numbers masked, to group repeats
                first.setdefault(re.sub(r"\d+", "N", parts[-1])[:100], line.strip()[:220])
        name = f"{log.parent.name}/{log.name}"
        out.append(f"  {name}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                     or "no warnings or errors"))  # fmt: skip
        out.extend(f"    {line}" for line in list(first.values())[:8])
        if len(first) > 8:
            out.append(f"    ... {len(first) - 8} more distinct messages")
    return out


def report(res: Result, engine: Engine, args: argparse.Namespace, setup_s: float,
           logs: list[str], total_s: float, load0: str) -> None:  # fmt: skip
    usable = len(os.sched_getaffinity(0))
    print()
    print(f"machine: nproc {os.cpu_count()} (usable {usable}), Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}, load "
          f"average {load0} at the start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} at "
          "the end (other work on the machine skews every figure)")  # fmt: skip
    sched = ("default [schedule]" if args.dkg_timeout is None
             else f"[schedule] dkg_timeout_s = {args.dkg_timeout:g}")  # fmt: skip
    print(f"cluster: 3 nodes, threshold 2, SoftHSM2 tokens, loopback mTLS, {sched}; "
          f"leader {res.leader} (at the end: {res.leader_end}); repaired member {res.target}, "
          f"helpers {', '.join(res.idle[0].repairs[0].helpers)}")
    creations = "; ".join(f"{n} keys in {s:.1f} s ({s / max(n, 1) * 1000:.0f} ms/key)"
                          for n, s in res.creations)  # fmt: skip
    print(f"setup: cluster init + up {setup_s:.1f} s; policy + key `bench` by CLI; "
          f"bulk key creation ({args.create_inflight} concurrent create+approve+DKG flows "
          f"over HTTPS): {creations}; whole run {total_s:.0f} s")
    print(f"repair time: bob's approval returned (code executed) -> first GET /v1/repairs "
          f"(every {args.poll * 1000:.0f} ms, leader) showing done; [lower bound: last poll "
          f"still running]")
    print(f"refresh time: the start_refresh POST returned (code ok) -> first GET /v1/refresh "
          f"(every {args.poll * 1000:.0f} ms, leader) showing done; [lower bound: last poll "
          f"still running]; batches of {refresh_batch(2, 3)} versions")

    print("\nidle repairs (no other load):")
    for i in res.idle:
        xs = [r.seconds for r in i.repairs]
        lows = [r.lower for r in i.repairs]
        total = i.repairs[0].total
        eng = engine["repair"].get(total)
        sub = statistics.median(r.submit for r in i.repairs)
        print(f"  {total:5} versions: median {ms(statistics.median(xs))} "
              f"[>= {ms(statistics.median(lows))}], min {ms(min(xs))}, max {ms(max(xs))} over "
              f"{len(xs)}; {ms(statistics.median(xs) / total)}/version; "
              f"failed runs {sum(r.failed_runs for r in i.repairs)}; submit+2 approvals "
              f"{ms(sub)} (not counted)")
        if total != i.count:
            print(f"        (meant to hold {i.count} versions; the repair covered {total})")
        cpu = ", ".join(f"{k} {v:.3f} s" for k, v in i.cpu.items())
        print(f"        CPU per repair: {cpu}"
              + (f"; engine busiest party {eng[1]:.3f} s" if eng else ""))
        seen = [x for x in (r.posts_in() for r in i.repairs) if x == x]  # not NaN
        posts = f"after {ms(statistics.median(seen))} (median)" if seen else "(never polled)"
        print(f"        first run's t+1 posts all seen in the log {posts}; then exchange, check, "
              "store, confirm")  # fmt: skip
        ev = i.repairs[0].events
        if len({d for _, d, _ in ev}) > 2:  # more than one run
            print("        timeline of the first (seconds, versions done, posts of the run in "
                  "the log): " + ", ".join(f"{t:.2f} {d} {n}" for t, d, n in ev))

    print("\nidle refreshes (no other load; all 3 members take part):")
    for f in res.refresh_idle:
        xs = [r.seconds for r in f.refreshes]
        lows = [r.lower for r in f.refreshes]
        total = f.refreshes[0].total
        eng = engine["refresh"].get(total)
        print(f"  {total:5} versions: median {ms(statistics.median(xs))} "
              f"[>= {ms(statistics.median(lows))}], min {ms(min(xs))}, max {ms(max(xs))} over "
              f"{len(xs)}; {ms(statistics.median(xs) / total)}/version; runs "
              f"{', '.join(str(r.runs) for r in f.refreshes)} (failed "
              f"{sum(r.failed_runs for r in f.refreshes)}); start POST "
              f"{ms(statistics.median(r.submit for r in f.refreshes))} (not counted)")
        if total != f.count:
            print(f"        (meant to hold {f.count} versions; the refresh covered {total})")
        cpu = ", ".join(f"{k} {v:.3f} s" for k, v in f.cpu.items())
        print(f"        CPU per refresh (erasure of the old generation included): {cpu}"
              + (f"; engine busiest party {eng[1]:.3f} s" if eng else ""))
        erased = ", ".join(ms(r.erased) for r in f.refreshes)
        print(f"        old generation erased on every member (log, 1 s resolution, read every "
              f"{args.poll * 1000:.0f} ms) after done + {erased}")
        ev = f.refreshes[0].events
        if len({d for _, d, _ in ev}) > 2:  # more than one batch
            print("        timeline of the first (seconds, versions done, run): "
                  + ", ".join(f"{t:.2f} {d} {n}" for t, d, n in ev))

    t = res.tput
    assert t is not None
    for what, lo, base in (("repairs", t.repair, t.base[0:2]), ("refreshes", t.refresh,
                                                                 t.base[1:3])):  # fmt: skip
        big = lo.runs[0].total
        print(f"\nsigning during {what} of {big} versions ({args.inflight} flows in flight, "
              f"Bench.one of cluster_sign.py, all to the leader): {len(lo.runs)} {what} back "
              f"to back covering {lo.span:.1f} s, {lo.signatures} signatures completed inside "
              f"them: {lo.rate:.1f}/s; without: {base[0]:.1f}/s before, {base[1]:.1f}/s after")
        extra = ""
        if what == "repairs":
            extra = (" (first run's posts all in the log after "
                     f"{', '.join(ms(r.posts_in()) for r in lo.runs)})")  # fmt: skip
        else:
            extra = f" (runs {', '.join(str(r.runs) for r in lo.runs)})"
        print("  durations under load: " + ", ".join(ms(r.seconds) for r in lo.runs) + extra
              + f"; failed runs {sum(r.failed_runs for r in lo.runs)}")
        print(f"  CPU per signature during the {what} ({what} work included): "
              + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in lo.cpu.items()))
        print(f"  request errors under load: {len(lo.errors)}"
              + (f" (first: {lo.errors[0]})" if lo.errors else ""))
    print(f"\nrequest errors in the baseline windows: {len(t.errors)}"
          + (f" (first: {t.errors[0]})" if t.errors else ""))
    print(f"{res.verified} signatures verified under the group key of `bench` (made before, "
          "during and after the refreshes)")

    rows = []
    for i in res.idle:
        total = i.repairs[0].total
        eng = engine["repair"].get(total)
        med = statistics.median(r.seconds for r in i.repairs)
        rows.append((f"repair of {res.target}, {total} version(s), idle",
                     f"{ms(med)} (median of {len(i.repairs)})",
                     f"engine only {ms(eng[0])} wall, busiest party CPU {ms(eng[1])}"
                     + f" ({med / eng[0]:.1f}x)" if eng else "-"))  # fmt: skip
    for f in res.refresh_idle:
        total = f.refreshes[0].total
        eng = engine["refresh"].get(total)
        med = statistics.median(r.seconds for r in f.refreshes)
        rows.append((f"refresh of 3 members, {total} versions, idle",
                     f"{ms(med)} (median of {len(f.refreshes)})",
                     f"engine only {ms(eng[0])} wall, busiest party CPU {ms(eng[1])}"
                     + f" ({med / eng[0]:.1f}x)" if eng else "-"))  # fmt: skip
    for what, lo, base, idle in (
        ("repair", t.repair, t.base[0:2],
         [r.seconds for i in res.idle if i.repairs[0].total == t.repair.runs[0].total
          for r in i.repairs]),
        ("refresh", t.refresh, t.base[1:3],
         [r.seconds for f in res.refresh_idle if f.refreshes[0].total == t.refresh.runs[0].total
          for r in f.refreshes]),
    ):  # fmt: skip
        big = lo.runs[0].total
        rows.append((f"{what} of {big} versions, under signing load",
                     ms(statistics.median(r.seconds for r in lo.runs)),
                     f"idle {ms(statistics.median(idle))}" if idle else "-"))  # fmt: skip
        rows.append((f"signatures/s, {args.inflight} in flight, during {what}",
                     f"{lo.rate:.1f}/s",
                     f"no {what} {base[0]:.1f}/s before, {base[1]:.1f}/s after "
                     f"({lo.rate / statistics.mean(base) * 100:.0f}% of their mean)"))
    header = ("figure", "measured", "reference (same run)")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(3)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("-" * (sum(widths) + 4))
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip())
    print("\nengine reference: benchmarks/recovery.py (repair_batch, refresh_batch; "
          "trusted-dealer keys), 3 members, t = 2, one process, measured after the cluster "
          "stopped")
    print("not measured: repair after a real token loss (provision + --public-key: the time "
          "lock's epoch steps come on top), 5-node clusters, repairs or refreshes with a "
          "member down or cheating (failed runs and restarts), the scheduled refresh "
          "(refresh_every_epochs: off here), the erasure of the old generation as a figure "
          "of its own (only when the logs showed it), signing latency during a refresh")
    print("\nRaft term and leader after each phase (a term change = an election during it):")
    prev = None
    for label, term, leader in res.terms:
        moved = "" if prev is None or prev == term else f"  <- {term - prev} election(s)"
        print(f"  {label:32} term {term:3} leader {leader}{moved}")
        prev = term
    st = res.status_end
    snaps = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in res.snapshot_files.items())
    print(f"state at the end: audit length {st.get('audit_seq')}, applied index "
          f"{st.get('applied')}, snapshot files {snaps or '-'}; leader's snapshot stats "
          f"{json.dumps(st.get('snapshots', {}), sort_keys=True)}")
    print("\nnode logs (warning / error / critical lines, tracebacks):")
    for line in logs:
        print(line)


def stop_nodes(root: Path, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL, to this cluster's node processes still alive (their pid
    files; `cluster down` normally leaves none)."""
    pids = []
    for f in sorted(root.glob("node-*/node.pid")):
        with contextlib.suppress(OSError, ValueError):
            pid = int(f.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(f.parent / "node.toml").encode() in cmdline:  # not a reused pid
                pids.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            for p in pids:  # `cluster up` ran in this process: reap our own children
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p, os.WNOHANG)
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
        if not pids:
            return
    print(f"node processes still alive: {pids}", file=sys.stderr)


def set_dkg_timeout(root: Path, seconds: float) -> None:
    for toml in sorted(root.glob("node-*/node.toml")):
        text = toml.read_text()
        text, n = re.subn(r"(?m)^dkg_timeout_s = .*$", f"dkg_timeout_s = {seconds}", text)
        if n == 0:
            if "[schedule]\n" in text:
                text = text.replace("[schedule]\n", f"[schedule]\ndkg_timeout_s = {seconds}\n")
            else:
                text += f"\n[schedule]\ndkg_timeout_s = {seconds}\n"
        toml.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--versions", type=int, default=100,
                   help="largest number of versions held (default 100; e.g. 1000)")
    p.add_argument("--repeats", type=int, default=3, help="idle repairs per count <= 100")
    p.add_argument("--inflight", type=int, default=32, help="signing flows in flight")
    p.add_argument("--window", type=float, default=4.0, help="throughput window, seconds")
    p.add_argument("--poll", type=float, default=0.05, help="GET /v1/repairs period, seconds")
    p.add_argument("--create-inflight", type=int, default=32,
                   help="concurrent key creations (create + approvals + DKG)")
    p.add_argument("--dkg-timeout", type=float, default=None,
                   help="[schedule] dkg_timeout_s of every node (default: the node default, "
                   "30 s); also the time a repair run may take before the leader restarts it")
    p.add_argument("--keep-dir", action="store_true", help="keep the cluster directory")
    args = p.parse_args()  # fmt: skip
    if not 100 <= args.versions <= 5000:
        p.error("--versions must be 100..5000")
    if not 1 <= args.inflight <= 256 or not 1 <= args.create_inflight <= 256:
        p.error("--inflight and --create-inflight must be 1..256")
    if args.repeats < 1 or args.window <= 0 or args.poll <= 0:
        p.error("--repeats, --window and --poll must be positive")

    t_all = time.perf_counter()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-cluster-"))
    root = tmp / "cluster"
    cluster = Cluster(root)
    res = Result()
    started = False
    logs: list[str] = []
    try:
        t = time.perf_counter()
        cluster.init()
        started = True
        if args.dkg_timeout is not None:
            set_dkg_timeout(root, args.dkg_timeout)
        cluster.up()
        setup_s = time.perf_counter() - t
        asyncio.run(phase_one(root, args, res))
        cluster.setup()  # policy p1, key `bench` (DKG), epoch advance: CLI, as cluster_sign
        asyncio.run(phase_two(root, args, res))
        logs = scan_logs(root)
        res.snapshot_files = {f.parent.parent.name: f.stat().st_size
                              for f in sorted(root.glob("node-*/data/*.snap"))}  # fmt: skip
    except BaseException:
        if started:
            for log in sorted(root.glob("node-*/*.log")):
                print(f"--- {log} (tail)", file=sys.stderr)
                print(log.read_text(errors="replace")[-1500:], file=sys.stderr)
        raise
    finally:
        if started:
            try:
                cluster.down()
            except Exception as exc:  # e.g. the CLI does not load: stop the nodes anyway
                print(f"cluster down failed: {exc!r}; stopping the nodes by pid", file=sys.stderr)
            stop_nodes(root)
        if args.keep_dir:
            print(f"cluster directory kept: {root}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("[reference] engine-only repairs and refreshes (benchmarks/recovery.py) ...",
          flush=True)  # fmt: skip
    engine = engine_reference(sorted({i.repairs[0].total for i in res.idle}),
                              sorted({i.refreshes[0].total for i in res.refresh_idle}))
    report(res, engine, args, setup_s, logs, time.perf_counter() - t_all, load0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
