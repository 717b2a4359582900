"""One drill: a fresh cluster, the workload, the fault schedule, settling, the checks.

init + up -> policy p1, key k1 (DKG, CLI subprocesses) -> workload for `duration`
seconds while the faults fire -> stop the workload (in-flight flows finish or
time out) -> wake/start every node -> wait until settled -> collect evidence from
every member -> the five invariants (plus availability, and repair and group keys
where the scenario asks for them) -> report.

A `lose-token` fault is a whole operator procedure: SIGKILL, delete the node's
SoftHSM2 token directory, `custody node provision`, start the node, `custody node
repair NAME --public-key KEY` (ops), approvals (alice, bob), `custody epoch advance`
until the time-locked request is executed, then wait for `GET /v1/repairs` (what
`custody node repairs` shows) to report the member's repair `done`.

A `lose-cluster` action is the README runbook "Lost cluster" under load: officers and
`--escrow` policies at setup; at its time the clients are held, filler requests bring
every node's snapshot up to the commit index of the hold, every node is backed up
(`custody backup create`), then every process, data directory and token is destroyed;
new tokens, `custody backup restore --snapshot-only` (k officers), start, `custody
recover request` (ops; alice and bob), `custody recover approve` / `release` (k
officers, submitted by ops), until `GET /v1/recovery` says `done` (docs/chaos.md).

The whole drill runs in its `chaos.sandbox.Sandbox` (as root: its own network
namespace, entered before `cluster init`); network faults are iptables rules in it
(`chaos.netfault`), clock jumps libfaketime offsets, disk faults the nodes' own loop
disks. Faults still active when the workload stops are healed before settling (links
restored, disks freed, limits lifted); jumped clocks stay where they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos import invariants, netfault
from chaos.cluster import DrillCluster, custody, custody_json
from chaos.sandbox import Sandbox
from chaos.scenario import NET_ACTIONS, OPERATOR_ACTIONS, SCENARIO_DIR, Fault, Scenario
from chaos.workload import APPROVERS, OPERATOR, REQUESTER, History, Op, Workload
from node.client.http import ApiError, Client, Unreachable

KEY_ID = "k1"
POLICY_ID = "p1"
# workload.mix with decrypt: an encrypt key under its own policy (operations: decrypt)
ENC_KEY_ID = "k2"
ENC_POLICY_ID = "p2"
WORK_ENV = "CUSTODY_DRILL_DIR"
# lose-token: epoch advances tried (refused ones included) while the repair waits its time
# lock (the cluster's default time lock is 2 epochs).
MAX_EPOCH_ADVANCES = 12
# lose-cluster: the recovery officers' names (the first `officers` of them)
OFFICER_NAMES = ("olga", "oscar", "otto", "olive", "omar", "opal", "orla")


def work_base() -> Path:
    return Path(os.environ.get(WORK_ENV) or "/tmp/custody-drill")  # noqa: S108 - documented


@dataclass
class FaultRecord:
    index: int
    action: str
    target: str
    planned_at: float
    node: str = ""
    injected_at: float | None = None
    ended_at: float | None = None  # restart / resume / start again
    status: str = "pending"  # injected | skipped: ... | error: ...
    recovery_s: float | None = None
    recovery_from_end_s: float | None = None
    observed: list[str] = field(default_factory=list)  # what the node said about itself
    # lose-token: the repair's request, its final state (done | failed | running | timeout |
    # error: ...), versions rebuilt of total, and the time from the token loss to done.
    repair_request: str = ""
    repair_state: str = ""
    repair_versions: str = ""
    repair_s: float | None = None
    # network and disk faults: from the fault's end (heal, or restart after a full disk)
    # until every node it named is healthy, follows the leader and has applied the commit
    # index the leader had at that moment
    rejoin_s: float | None = None
    # slow-link / slow-disk: median latency (ms) of the successful signing flows invoked
    # while the fault was on, and of those invoked in the 5 s before it
    flow_ms: float | None = None
    flow_ms_before: float | None = None
    # rotate / refresh (operator actions): the request, how it ended (done | failed: … |
    # timeout: … | error: …) and seconds from its start until done
    op_request: str = ""
    op_state: str = ""
    op_s: float | None = None
    # hsm-refuse: the node's own HSM counters (`custody_hsm_*` of its /metrics) grown while
    # the token was away and from its return (or the node's restart) to the workload's
    # end: {"calls": {op: n}, "errors": {"op Error": n}}, or {"error": why unread}
    hsm_during: dict[str, Any] = field(default_factory=dict)
    hsm_after: dict[str, Any] = field(default_factory=dict)
    # lose-cluster: the hold and the backups (times in seconds of the workload; the commit
    # index at the hold, filler requests, each bundle's snapshot index, each restored
    # node's), and the members the recovery brought back; op_request / op_state / op_s are
    # the recovery request, how it ended and the seconds from the loss to `done`
    backup: dict[str, Any] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)


@dataclass
class DrillResult:
    scenario: str
    seed: int
    passed: bool = False
    error: str = ""
    started: str = ""
    wall_s: float = 0.0
    settle_s: float | None = None
    faults: list[FaultRecord] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    acked_lost: int | None = None
    # lose-cluster: acknowledged after the newest backup and missing (a point-in-time
    # restore loses them by design; not counted in acked_lost)
    acked_lost_by_design: int | None = None
    leader_before: str = ""
    leader_after: str = ""
    end_states: dict[str, int] = field(default_factory=dict)
    # Longest stretch of the workload without a successful flow completing: [start, end].
    longest_gap: list[float] = field(default_factory=list)
    workdir: str = ""
    leaders: list[str] = field(default_factory=list)  # "t=…s node-N (term T)", as sampled
    replay: str = ""
    skipped: str = ""  # why the scenario did not run here (then it neither passed nor failed)
    isolation: str = ""  # the network namespace it ran in, or why none
    epoch_advances: dict[str, Any] = field(default_factory=dict)  # workload.epoch_advance_every

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def leader_changes(samples: list[dict[str, Any]]) -> list[str]:
    """Each (leader, term) first reported by a node that says it is leader, in time order."""
    seen: list[tuple[str, Any]] = []
    out = []
    for s in samples:
        if s.get("role") == "leader" and (s["node"], s.get("term")) not in seen:
            seen.append((s["node"], s.get("term")))
            out.append(f"t={s['t']:.2f}s {s['node']} (term {s.get('term')})")
    return out


def _median_ms(oks: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Median latency (ms) of the successful flows invoked in [start, end)."""
    xs = sorted(done - inv for inv, done in oks if start <= inv < end)
    return round(xs[len(xs) // 2] * 1000, 1) if xs else None


def _say(msg: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Drill:
    def __init__(self, scenario: Scenario, seed: int, out: Path, keep: bool = False) -> None:
        self.sc = scenario
        self.seed = seed
        self.out = out
        self.keep = keep
        self.rng = random.Random(f"{seed}/faults/{scenario.name}")
        self.root = work_base() / f"{scenario.name}-s{seed}-{os.getpid()}"
        # the lose-cluster action, if any (the loader allows at most one, and nothing else)
        self.loss = next((f for f in scenario.faults if f.action == "lose-cluster"), None)
        self.cluster = DrillCluster(self.root, scenario.nodes,
                                    snapshot_every=self.loss.snapshot_every if self.loss else 0)
        # lose-cluster fault index -> the hashes of the audit chain read before the loss
        self._audit_before: dict[int, list[str]] = {}
        self.h = History()
        self.samples: list[dict[str, Any]] = []
        self.token_lost: set[str] = set()  # nodes whose token a lose-token fault deleted
        self.hsm_refused: set[str] = set()  # nodes whose token an hsm-refuse fault took away
        # hsm-refuse fault index -> (node, its counters when the token came back; None if
        # it was restarted then), for the counters after the fault
        self._hsm_base: dict[int, tuple[str, dict[str, Any] | None, int]] = {}
        self.res = DrillResult(scenario.name, seed, workdir=str(self.root))
        self.sandbox = Sandbox(self.root, scenario, _say)
        # faults still active, healed when the workload stops: index -> heal()
        self.heals: dict[int, Callable[[], Any]] = {}
        self.wl: Workload | None = None
        shipped = scenario.path is None or scenario.path.parent == SCENARIO_DIR
        which = scenario.name if shipped else scenario.path
        self.res.replay = f"custody drill run {which} --seed {seed}"

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _say(f"{self.sc.name}: cluster init in {self.root}")
        self.cluster.init()
        sb, c = self.sandbox, self.cluster
        sb.set_nodes(json.loads((self.root / "cluster.json").read_text()))
        sb.prepare_disks(c.names)
        c.gid, c.extra_env, c.started = sb.node_gid, sb.node_env, sb.check_node
        self.cluster.up()
        if sb.faketime:
            bad = [n for n in c.names if not sb.faketime_loaded(c.pid(n) or 0)]
            if bad:
                raise RuntimeError(f"libfaketime is not loaded in {', '.join(bad)}")
        _say(f"{self.sc.name}: cluster up; policy {POLICY_ID} and key {KEY_ID} (DKG)")

        def as_(who: str, *args: str) -> dict[str, Any]:
            prof = str(self.root / "profiles" / f"{who}.toml")
            return json.loads(custody(*args, "--json", "--profile", prof))

        escrow: tuple[str, ...] = ()
        if self.loss is not None:  # officers first; the policies' keys are escrowed to them
            self._setup_officers(as_, self.loss)
            escrow = ("--escrow",)
        out = as_("ops", "policy", "set", POLICY_ID, "--requesters", REQUESTER, "--approvers",
                  "alice,bob,carol", "--k", "2", *escrow)  # fmt: skip
        for who in APPROVERS:
            as_(who, "approve", out["request"], "--yes")
        keys = [(KEY_ID, POLICY_ID, "sign")]
        if self.sc.workload.decrypts:
            out = as_("ops", "policy", "set", ENC_POLICY_ID, "--requesters", REQUESTER,
                      "--operations", "decrypt", "--approvers", "alice,bob,carol", "--k", "2",
                      *escrow)  # fmt: skip
            for who in APPROVERS:
                as_(who, "approve", out["request"], "--yes")
            keys.append((ENC_KEY_ID, ENC_POLICY_ID, "encrypt"))
        for key_id, policy, purpose in keys:
            out = as_("ops", "keys", "create", key_id, "--policy", policy, "--purpose", purpose)
            for who in APPROVERS:
                as_(who, "approve", out["request"], "--yes")
            deadline = time.monotonic() + 60
            while True:
                r = as_("audit", "requests", "show", out["request"])
                if r["state"] == "executed":
                    break
                if r["state"] == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"key creation did not complete: {r['state']} {r['failure']}")
                time.sleep(0.3)
        for _ in range(10):
            as_("ops", "epoch", "advance")
            if all(as_("audit", "keys", "show", k)["primary"] >= 1 for k, _, _ in keys):
                break
            time.sleep(1.0)  # epoch_min_interval_s
        else:
            raise RuntimeError(f"key {KEY_ID} has no active version")
        if self.loss is not None:
            self._await_escrow(as_, len(keys) + 1)  # each key's v1 and the cluster-audit key

    def _setup_officers(self, as_: Callable[..., dict[str, Any]], f: Fault) -> None:
        """`custody backup officer-keygen` for each officer, `custody officers set` (ops;
        approved by alice and bob; time-locked: ops advances epochs until executed)."""
        d = self.root / "officers"
        d.mkdir(parents=True, exist_ok=True)
        names = OFFICER_NAMES[: f.officers]
        for name in names:
            custody("backup", "officer-keygen", "--out", str(d), "--name", name)
        pub = [a for n in names for a in ("--officer", str(d / f"{n}.officer.json"))]
        out = as_("ops", "officers", "set", *pub, "--k", str(f.officer_k))
        for who in APPROVERS:
            as_(who, "approve", out["request"], "--yes")
        for _ in range(MAX_EPOCH_ADVANCES):
            if as_("audit", "requests", "show", out["request"])["state"] in ("executed",
                                                                            "failed"):
                break
            as_("ops", "epoch", "advance")
            time.sleep(0.3)
        r = as_("audit", "requests", "show", out["request"])
        if r["state"] != "executed":
            raise RuntimeError(f"officers set {out['request']}: {r['state']} {r.get('failure')}")
        _say(f"{self.sc.name}: officers {', '.join(names)} registered (k = {f.officer_k}); "
             f"policies with --escrow; nodes snapshot every {f.snapshot_every} entries")

    def _await_escrow(self, as_: Callable[..., dict[str, Any]], versions: int) -> None:
        """Until `custody officers show` has every member holding `versions` escrow
        packages and none due."""
        deadline = time.monotonic() + 60
        while True:
            v = as_("audit", "officers", "show")
            held, due = v.get("escrowed") or {}, v.get("escrow_due") or {}
            if all(held.get(n, 0) >= versions for n in self.cluster.names) \
                    and not any(due.values()):  # fmt: skip
                _say(f"{self.sc.name}: escrow complete: {held}")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"escrow not complete within 60 s: held {held}, due {due}")
            time.sleep(0.5)

    async def group_key(self) -> str:
        async with Client(self.cluster.profile("audit"), timeout=5) as c:
            k = await c.get(f"/v1/keys/{KEY_ID}")
        v = next(x for x in k["versions"] if x["version"] == k["primary"])
        return str(v["group_public_key"])

    async def group_keys(self, node: str | None = None) -> dict[str, str | None]:
        """Every key version's group public key, "key vN" -> hex: a linearizable read
        through the leader, or (`node`) that member's own replica."""
        if node is None:
            prof, params = self.cluster.profile("audit"), {}
        else:
            prof, params = self.cluster.node_profile("audit", node), {"stale": "true"}
        async with Client(prof, timeout=10, attempts=3) as c:
            doc = await c.get("/v1/keys", **params)
        return {f"{k['key_id']} v{v['version']}": v.get("group_public_key")
                for k in doc["keys"] for v in k["versions"]}  # fmt: skip

    # ------------------------------------------------------------ faults

    async def _resolve(self, target: str) -> tuple[str | None, str]:
        c = self.cluster
        live = [n for n in c.names if c.running(n) and n not in c.paused]
        if target.startswith("node-"):
            if target not in live:
                return None, f"{target} is not running (or is paused)"
            return target, ""
        if target == "random":
            return (self.rng.choice(live), "") if live else (None, "no live node")
        leader = await c.leader(timeout=8)
        if target == "leader":
            return (leader, "") if leader else (None, "no leader found within 8 s")
        followers = [n for n in live if n != leader]
        if target == "other-follower":
            if leader is None:
                return None, "no leader found within 8 s"
            hit = self.token_lost | self.hsm_refused
            followers = [n for n in followers if n not in hit]
            if not followers:
                return None, f"no live follower other than {', '.join(sorted(hit))}"
        return (self.rng.choice(followers), "") if followers else (None, "no live follower")

    async def _inject(self, i: int, f: Fault, rec: FaultRecord) -> None:
        await asyncio.sleep(max(0.0, f.at - self.h.now()))
        if f.action in NET_ACTIONS:
            await self._network(i, f, rec)
            return
        if f.action == "lose-cluster":
            await self._lose_cluster(i, f, rec)
            return
        if f.action in OPERATOR_ACTIONS:
            await self._operator(i, f, rec)
            return
        node, why = await self._resolve(f.target)
        if node is None:
            rec.status = f"skipped: {why}"
            _say(f"fault {i} {f.action} {f.target}: SKIPPED ({why})")
            return
        rec.node = node
        c = self.cluster
        try:
            rec.injected_at = self.h.now()
            if f.action == "clock-jump":
                await self._clock_jump(i, f, rec, node)
            elif f.action == "disk-full":
                await self._disk_full(i, f, rec, node)
            elif f.action == "slow-disk":
                await self._slow_disk(i, f, rec, node)
            elif f.action == "kill":
                await asyncio.to_thread(c.kill, node)
                rec.status = "injected"
                _say(f"t={rec.injected_at:.1f}s fault {i}: SIGKILL {node} ({f.target})")
                if f.restart_after is not None:
                    await asyncio.sleep(f.restart_after)
                    await asyncio.to_thread(c.start, node)
                    rec.ended_at = self.h.now()
                    _say(f"t={rec.ended_at:.1f}s fault {i}: restarted {node}")
            elif f.action == "pause":
                st = await c.status(node)
                before = (st or {}).get("role", "?"), (st or {}).get("term", "?")
                c.stop(node)
                rec.status = "injected"
                _say(f"t={rec.injected_at:.1f}s fault {i}: SIGSTOP {node} ({f.target})")
                await asyncio.sleep(f.resume_after or 0)
                c.cont(node)
                rec.ended_at = self.h.now()
                _say(f"t={rec.ended_at:.1f}s fault {i}: SIGCONT {node}")
                await self._observe(node, rec, before)
            elif f.action == "restart":
                await asyncio.to_thread(c.terminate, node)
                rec.status = "injected"
                _say(f"t={rec.injected_at:.1f}s fault {i}: SIGTERM {node} ({f.target}), exited")
                await asyncio.sleep(f.down_for)
                await asyncio.to_thread(c.start, node)
                rec.ended_at = self.h.now()
                _say(f"t={rec.ended_at:.1f}s fault {i}: started {node} again")
            elif f.action == "lose-token":
                await self._lose_token(i, f, rec, node)
            elif f.action == "hsm-refuse":
                await self._hsm_refuse(i, f, rec, node)
            else:  # the loader refuses these; never pass silently
                rec.status = f"skipped: not implemented yet ({f.action})"
        except Exception as exc:
            rec.status = f"error: {type(exc).__name__}: {exc}"
            _say(f"fault {i}: ERROR {rec.status}")

    async def _operator(self, i: int, f: Fault, rec: FaultRecord) -> None:
        """rotate: the workload's rotation flow (recorded in the history as a `rotate` op);
        refresh: `custody refresh start --wait` as ops, then `GET /v1/refresh`."""
        rec.injected_at = self.h.now()
        rec.status = "injected"
        t0 = time.monotonic()
        try:
            if f.action == "rotate":
                assert self.wl is not None
                self._note(i, rec, "ops requests a rotation of the signing key")
                async with contextlib.AsyncExitStack() as stack:
                    cl = {w: await stack.enter_async_context(
                        Client(self.cluster.profile(w), timeout=4.0, attempts=1))
                        for w in (OPERATOR, *APPROVERS)}  # fmt: skip
                    op, _old = await self.wl._rotate(100 + i, cl, 100 + i, f.timeout)
                self.h.ops.append(op)
                rec.op_request = op.ref
                rec.op_state = "done" if op.outcome == "ok" else f"{op.outcome}: {op.detail}"
            else:
                rec.op_request = f"{OPERATOR}:drill-refresh-{self.seed}-{i}"
                rid = rec.op_request.split(":", 1)[1]
                self._note(i, rec, f"ops runs custody refresh start --wait ({rid})")
                last = ""
                while time.monotonic() - t0 < f.timeout:
                    try:
                        await asyncio.wait_for(asyncio.to_thread(
                            self._as, "ops", "refresh", "start", "--wait", "--request-id", rid),
                            f.timeout - (time.monotonic() - t0))  # fmt: skip
                        break
                    except (RuntimeError, TimeoutError) as exc:
                        last = " ".join(str(exc).split())[-300:]
                        self._note(i, rec, f"refresh start: {last}")
                        await asyncio.sleep(1.0)
                async with Client(self.cluster.profile("audit"), timeout=5, attempts=3) as cl:
                    doc = await self._get(cl, "/v1/refresh", time.monotonic() + 30)
                r = doc.get("refresh") or {}
                state = str(r.get("state") or "none")
                gens = doc.get("generations") or {}
                rec.observed.append(f"refresh {r.get('request')}: {state} {r.get('done')}/"
                                    f"{r.get('total')} versions, run {r.get('run')}; "
                                    f"generations {gens}")  # fmt: skip
                if r.get("request") != rec.op_request:
                    rec.op_state = f"not ours: the latest refresh is {r.get('request')}"
                elif state == "done" and (r.get("done") != r.get("total") or not r.get("total")
                                          or not any(g >= 1 for g in gens.values())):
                    rec.op_state = (f"done with {r.get('done')}/{r.get('total')} versions, "
                                    f"generations {gens}")  # fmt: skip
                else:
                    rec.op_state = "done" if state == "done" else (
                        f"{state}: {r.get('failure') or last}")  # fmt: skip
            if rec.op_state == "done":
                rec.op_s = round(time.monotonic() - t0, 2)
            rec.ended_at = self.h.now()
            self._note(i, rec, f"{f.action} {rec.op_request}: {rec.op_state}"
                       + (f" after {rec.op_s:.2f} s" if rec.op_s is not None else ""))
        except Exception as exc:
            rec.op_state = f"error: {type(exc).__name__}: {str(exc)[-300:]}"
            self._note(i, rec, rec.op_state)

    def _note(self, i: int, rec: FaultRecord, msg: str) -> None:
        rec.observed.append(f"t={self.h.now():.2f}s {msg}")
        _say(f"t={self.h.now():.1f}s fault {i}: {msg}")

    async def _network(self, i: int, f: Fault, rec: FaultRecord) -> None:
        """partition / cut-link / slow-link: resolve the nodes, add the fault's rules,
        heal after `heal_after` (or when the workload stops)."""
        c, sb = self.cluster, self.sandbox
        words = {w for g in f.groups for w in g} | {w for link in f.links for w in link}
        leader = await c.leader(timeout=8) if words & {"leader", "follower"} else None
        live = [n for n in c.names if c.running(n) and n not in c.paused]
        try:
            if f.groups:
                groups = netfault.resolve_groups(f.groups, c.names, leader, live, self.rng)
                rec.node = " | ".join(",".join(g) for g in groups)
                named = sorted({n for g in groups for n in g})
            else:
                links = netfault.resolve_links(f.links, c.names, leader, live, self.rng)
                arrow = "->" if f.oneway and f.action == "cut-link" else "<->"
                rec.node = ", ".join(f"{a}{arrow}{b}" for a, b in links)
                named = sorted({n for link in links for n in link})
        except netfault.Unresolved as exc:
            rec.status = f"skipped: {exc}"
            _say(f"fault {i} {f.action} {f.target}: SKIPPED ({exc})")
            return
        try:
            if f.action == "slow-link":
                slows = {netfault.SlowLink(i, a, b, f.delay_ms, f.loss_pct) for a, b in links}
                if f.delay_ms > 0:
                    seed = random.Random(f"{self.seed}/netdelay/{i}").getrandbits(31)
                    await asyncio.to_thread(sb.start_delayer, next(iter(slows)), f.jitter_ms,
                                            seed)  # fmt: skip
                rec.injected_at = self.h.now()
                sb.slows |= slows
                await asyncio.to_thread(sb.apply_rules)
                what = (f"delay {f.delay_ms:g} ± {f.jitter_ms:g} ms, loss {f.loss_pct:g} % "
                        "each way")  # fmt: skip
            else:
                cuts = (netfault.partition_cuts(i, groups) if f.groups
                        else netfault.link_cuts(i, links, f.oneway))  # fmt: skip
                rec.injected_at = self.h.now()
                sb.cuts |= set(cuts)
                await asyncio.to_thread(sb.apply_rules)
                what = f"{len(cuts)} directed link(s) cut"
            rec.status = "injected"
            _say(f"t={rec.injected_at:.1f}s fault {i}: {f.action} {rec.node} ({what})")
        except Exception as exc:
            rec.status = f"error: {type(exc).__name__}: {exc}"
            _say(f"fault {i}: ERROR {rec.status}")
            return

        async def heal() -> None:
            sb.cuts = {x for x in sb.cuts if x[0] != i}
            sb.slows = {x for x in sb.slows if x.fault != i}
            await asyncio.to_thread(sb.apply_rules)
            rec.ended_at = self.h.now()
            last = await asyncio.to_thread(sb.stop_delayer, i)
            _say(f"t={rec.ended_at:.1f}s fault {i}: healed {rec.node}")
            if last:
                self._note(i, rec, last)
            await self._rejoin(i, rec, named)

        await self._heal_later(i, f.heal_after, heal)

    async def _heal_later(self, i: int, after: float | None, heal: Callable[[], Any]) -> None:
        """Run `heal` `after` seconds from now, or when the workload stops (None)."""
        if after is None:
            self.heals[i] = heal
            return
        await asyncio.sleep(after)
        await heal()

    async def _rejoin(self, i: int, rec: FaultRecord, nodes: list[str],
                      timeout: float = 30) -> None:  # fmt: skip
        """How long after the fault's end until every node it named is healthy, follows
        the leader and has applied the commit index the leader had at the end."""
        assert rec.ended_at is not None
        end = rec.ended_at
        target = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = await self.cluster.statuses()
            leaders = [s for s in st.values() if s and s.get("role") == "leader"
                       and s.get("health") == "ok"]  # fmt: skip
            if target is None and leaders:
                target = max(s["commit"] for s in leaders)
            if target is not None and leaders:
                lead = max(leaders, key=lambda s: s.get("term", 0))
                if all((s := st.get(n)) and s.get("health") == "ok" and s.get("applied", -1)
                       >= target and s.get("leader") == lead.get("leader") for n in nodes):
                    rec.rejoin_s = round(self.h.now() - end, 2)
                    self._note(i, rec, f"{', '.join(nodes)} healthy, following "
                               f"{lead.get('leader')} and caught up (index {target}) "
                               f"{rec.rejoin_s:.2f} s after the fault ended")  # fmt: skip
                    return
            await asyncio.sleep(0.2)
        self._note(i, rec, f"{', '.join(nodes)} not caught up {timeout:g} s after the end")

    async def _clock_jump(self, i: int, f: Fault, rec: FaultRecord, node: str) -> None:
        sb = self.sandbox
        pid = self.cluster.pid(node)
        if pid is None or not sb.faketime_loaded(pid):
            rec.status = f"error: libfaketime is not loaded in {node}"
            return
        for k, offset in enumerate(f.offsets_s):
            if k:
                await asyncio.sleep(max(0.0, f.at + k * f.every - self.h.now()))
            t = self.h.now()
            log = self.root / node / "node.log"
            size = log.stat().st_size if log.exists() else 0
            sb.set_clock(node, offset)
            if k == 0:
                rec.injected_at, rec.status = t, "injected"
            else:
                rec.ended_at = t
            self._note(i, rec, f"{node}'s wall clock set to real time {offset:+g} s")
            seen = await self._logged_skew(log, size)
            if seen is not None:
                self._note(i, rec, f"{node} logs {seen:+.0f} s from real time")

    async def _logged_skew(self, log: Path, offset: int, timeout: float = 3) -> float | None:
        """The node's own clock as its log shows it: the first line written after byte
        `offset` that starts with a timestamp, minus real time (None if none came)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            with contextlib.suppress(OSError), open(log, "rb") as fh:
                fh.seek(offset)
                for line in fh.read(1 << 16).decode(errors="replace").splitlines():
                    stamp = line.split(" ", 1)[0]
                    with contextlib.suppress(ValueError):
                        at = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(
                            tzinfo=dt.UTC)
                        return at.timestamp() - time.time()
        return None

    async def _disk_full(self, i: int, f: Fault, rec: FaultRecord, node: str) -> None:
        """Fill the node's data disk; free it later and restart the node (an operator's
        fix), noting whether the node had stopped by itself."""
        c, sb = self.cluster, self.sandbox
        n = await asyncio.to_thread(sb.fill, node)
        rec.status = "injected"
        self._note(i, rec, f"filled {node}'s data disk: {n} bytes written, "
                   f"{sb.free_bytes(node)} bytes free")  # fmt: skip
        watching = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            while not watching.done():
                if not c.running(node):
                    self._note(i, rec, f"{node} stopped by itself: {c._why(node)}")
                    return
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())

        async def heal() -> None:
            watching.set_result(None)
            await watcher
            sb.free(node)
            alive = c.running(node)
            st = await c.status(node) if alive else None
            self._note(i, rec, f"freed {node}'s data disk ({sb.free_bytes(node)} bytes free); "
                       + (f"it still runs ({(st or {}).get('health', 'no answer')}): "
                          "restarting it" if alive else "starting it again"))  # fmt: skip
            if alive:
                await asyncio.to_thread(c.terminate, node)
            await asyncio.to_thread(c.start, node)
            rec.ended_at = self.h.now()
            await self._rejoin(i, rec, [node])

        await self._heal_later(i, f.free_after, heal)

    async def _slow_disk(self, i: int, f: Fault, rec: FaultRecord, node: str) -> None:
        c, sb = self.cluster, self.sandbox
        pid = c.pid(node)
        assert pid is not None
        sb.throttle(node, pid, f.write_iops)
        rec.status = "injected"
        ms = await asyncio.to_thread(sb.fsync_probe, node)
        self._note(i, rec, f"{node}'s data disk limited to {f.write_iops} write IO/s; fsync of "
                   f"a 4 KiB append took {', '.join(map(str, ms))} ms")  # fmt: skip

        async def heal() -> None:
            sb.unthrottle(node)
            rec.ended_at = self.h.now()
            ms = await asyncio.to_thread(sb.fsync_probe, node)
            self._note(i, rec, f"limit lifted; fsync took {', '.join(map(str, ms))} ms")
            await self._rejoin(i, rec, [node])

        await self._heal_later(i, f.heal_after, heal)

    # ------------------------------------------------------------ hsm-refuse

    def _token_dir(self, node: str) -> Path:
        """The node's one SoftHSM2 token directory (`<node>/hsm/tokens/<uuid>`)."""
        tokens = self.root / node / "hsm" / "tokens"
        dirs = [p for p in tokens.iterdir() if p.is_dir()]
        if len(dirs) != 1:
            raise RuntimeError(f"{tokens.relative_to(self.root)} holds {len(dirs)} token "
                               "directories, not 1")  # fmt: skip
        return dirs[0]

    async def _hsm_scrape(self, node: str) -> dict[str, Any]:
        """The node's `custody_hsm_*` counters from its own /metrics (as auditor), or
        {"error": why}."""
        try:
            async with Client(self.cluster.node_profile("audit", node), timeout=4,
                              attempts=2) as cl:  # fmt: skip
                body, _ = await cl.call("GET", "/metrics", raw=True)
        except (ApiError, Unreachable, OSError, TimeoutError) as exc:
            return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        return invariants.hsm_counters(body.decode(errors="replace"))

    @staticmethod
    def _delta(now: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
        if "error" in now:
            return {"error": now["error"]}
        if base is not None and "error" in base:
            return {"error": f"counters before: {base['error']}"}
        return invariants.hsm_delta(now, base)

    def _log_errors(self, node: str, start: int, limit: int = 6) -> tuple[list[str], int]:
        """Distinct error lines the node logged after byte `start` (HSM-related first),
        without their timestamps, and where its log ends now."""
        log = self.root / node / "node.log"
        try:
            with open(log, "rb") as fh:
                fh.seek(start)
                text = fh.read(4 << 20).decode(errors="replace")
                end = fh.tell()
        except OSError:
            return [], start
        words = ("Error", "error", "ERROR", "fail", "Traceback", "Refused", "warning", "WARNING")
        seen: dict[str, int] = {}
        for line in text.splitlines():
            if not any(w in line for w in words):
                continue
            body = line.split(" ", 1)[1] if line[:1].isdigit() and " " in line else line
            body = " ".join(body.split())[:240]
            seen[body] = seen.get(body, 0) + 1
        hsm = ("Hsm", "HSM", "Share", "share", "Module", "slot", "PKCS")
        ranked = sorted(seen, key=lambda b: (not any(w in b for w in hsm), -seen[b]))
        return [f"{seen[b]}x {b}" for b in ranked[:limit]], end

    async def _nudge_epoch(self, i: int, rec: FaultRecord, why: str) -> None:
        """`POST /v1/epoch/advance` as ops: every member votes, signing its vote with its
        HSM identity key, so the refused node makes an HSM call even if no signing flow
        asks it for a share."""
        try:
            async with Client(self.cluster.profile("ops"), timeout=4, attempts=2) as cl:
                out = await cl.post("/v1/epoch/advance", {})
            self._note(i, rec, f"epoch advance ({why}): epoch {out.get('epoch_before')} -> "
                       f"{out.get('epoch')}, voted {out.get('voted')}")  # fmt: skip
        except (ApiError, Unreachable, OSError, TimeoutError) as exc:
            self._note(i, rec, f"epoch advance ({why}): {type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:200]}")  # fmt: skip

    async def _hsm_refuse(self, i: int, f: Fault, rec: FaultRecord, node: str) -> None:
        """The node keeps running while its token directory is away (renamed out of
        SoftHSM2's token directory: every object file and the directory itself are gone,
        for root as for anyone, where `chmod 000` would not stop root); after `duration`
        it is renamed back, and with `restart` the node is restarted (SIGTERM, start)."""
        c = self.cluster
        tok = await asyncio.to_thread(self._token_dir, node)
        away = tok.parent.parent / f"{tok.name}.refused"
        log = self.root / node / "node.log"
        base = await self._hsm_scrape(node)
        pos = log.stat().st_size if log.exists() else 0
        pid = c.pid(node)
        started = (await c.status(node) or {}).get("started_at")
        await asyncio.to_thread(os.rename, tok, away)
        rec.injected_at = self.h.now()
        rec.status = "injected"
        self.hsm_refused.add(node)
        self._note(i, rec, f"moved {node}'s token directory {tok.relative_to(self.root)} to "
                   f"{away.relative_to(self.root)}; the node runs on (pid {pid})")  # fmt: skip
        during: dict[str, Any] = {"error": "not read"}
        try:
            await asyncio.sleep(min(1.0, f.duration / 2))
            await self._nudge_epoch(i, rec, "an HSM call on every member during the fault")
            await asyncio.sleep(max(0.0, rec.injected_at + f.duration - self.h.now()))
            during = await self._hsm_scrape(node)
        finally:
            await asyncio.to_thread(os.rename, away, tok)
            rec.ended_at = self.h.now()
        rec.hsm_during = self._delta(during, base)
        lines, pos = await asyncio.to_thread(self._log_errors, node, pos)
        alive = c.running(node) and c.pid(node) == pid
        self._note(i, rec, f"token directory put back; while it was away {node}'s HSM "
                   f"counters grew by {rec.hsm_during}; "
                   f"{'still running' if alive else 'NOT running: ' + c._why(node)}")  # fmt: skip
        for line in lines:
            self._note(i, rec, f"{node} logged: {line}")
        after_base: dict[str, Any] | None = await self._hsm_scrape(node)
        if not f.restart:
            # A member whose HSM failed restarts itself in place once a fresh process
            # opens the token (node/server/hsm_watch.py): wait for it, counters restart.
            back = await self._hsm_back(node, started, timeout=30.0)
            if back is None:
                self._note(i, rec, f"{node} did not report a usable HSM within 30 s of the "
                           "token's return")  # fmt: skip
            elif back.get("started_at") != started:
                after_base = None
                self._note(i, rec, f"{node} restarted itself in place (pid "
                           f"{c.pid(node)}) and reports its HSM usable")  # fmt: skip
            else:
                self._note(i, rec, f"{node} reports its HSM usable without a restart")
        if f.restart:
            await asyncio.to_thread(c.terminate, node)
            await asyncio.to_thread(c.start, node)
            after_base = None
            self._note(i, rec, f"restarted {node} (SIGTERM, start) on its restored token")
        self._hsm_base[i] = (node, after_base, log.stat().st_size if log.exists() else 0)
        await asyncio.sleep(1.0)
        await self._nudge_epoch(i, rec, "an HSM call on every member after the fault")

    async def _hsm_back(self, node: str, started: Any, timeout: float) -> dict[str, Any] | None:
        """The node's status once it reports a usable HSM, healthy, and (if its HSM failed
        meanwhile) after its restart in place; None if not within `timeout`."""
        deadline = self.h.now() + timeout
        while self.h.now() < deadline:
            st = await self.cluster.status(node)
            hsm = (st or {}).get("hsm") or {}
            if st and hsm.get("ok") and st.get("health") == "ok":
                return st
            await asyncio.sleep(0.5)
        return None

    async def _hsm_after(self) -> None:
        """When the workload stops: each refused node's HSM counters since its token
        came back (or since its restart), and what it logged meanwhile."""
        for i, (node, base, pos) in sorted(self._hsm_base.items()):
            rec = self.res.faults[i]
            rec.hsm_after = self._delta(await self._hsm_scrape(node), base)
            self._note(i, rec, f"{node}'s HSM counters from the token's return to the "
                       f"workload's end: {rec.hsm_after}")  # fmt: skip
            lines, _ = await asyncio.to_thread(self._log_errors, node, pos)
            for line in lines:
                self._note(i, rec, f"{node} logged after the fault: {line}")

    async def _heal_all(self) -> None:
        """When the workload stops: heal every fault still active."""
        for i in sorted(self.heals):
            try:
                await self.heals.pop(i)()
            except Exception as exc:
                _say(f"fault {i}: healing failed: {type(exc).__name__}: {exc}")

    def _as(self, who: str, *args: str) -> dict[str, Any]:
        """`custody ARGS --json --profile <who>` (blocking: call it in a thread)."""
        return custody_json(*args, "--profile", str(self.root / "profiles" / f"{who}.toml"))

    async def _lose_token(self, i: int, f: Fault, rec: FaultRecord, node: str) -> None:
        """The token is lost for good; the operators provision a new one and repair the
        member's shares. `rec.status` says whether the loss happened; how the repair
        ended is `rec.repair_state` (done | failed: … | timeout: … | error: …), which the
        repair check reads afterwards."""
        c = self.cluster
        t0 = rec.injected_at if rec.injected_at is not None else self.h.now()
        deadline = time.monotonic() + f.repair_timeout - (self.h.now() - t0)

        def note(msg: str) -> None:
            rec.observed.append(f"t={self.h.now():.2f}s {msg}")
            _say(f"t={self.h.now():.1f}s fault {i}: {msg}")

        await asyncio.to_thread(c.kill, node)
        self.token_lost.add(node)
        tokens = self.root / node / "hsm" / "tokens"
        await asyncio.to_thread(shutil.rmtree, tokens)
        rec.status = "injected"
        _say(f"t={t0:.1f}s fault {i}: SIGKILL {node} ({f.target}), "
             f"deleted {tokens.relative_to(self.root)}")  # fmt: skip
        stage = "provision"
        try:
            await asyncio.sleep(f.down_for)
            prov = await asyncio.to_thread(
                custody_json, "node", "provision", "--config", str(c.config(node))
            )
            new_key = str(prov["identity_public_key"])
            note(f"provisioned a new token, identity key {new_key[:16]}…")
            stage = "start"
            await asyncio.to_thread(c.start, node)
            rec.ended_at = self.h.now()
            note(f"started {node} on its new token")
            stage = what = "replace request" if f.replace else "repair request"
            if f.replace:  # the same member re-registered at its SAME addresses
                doc = json.loads((self.root / "cluster.json").read_text())
                me = next(n for n in doc["nodes"] if n["name"] == node)
                out = await asyncio.to_thread(self._as, "ops", "node", "replace", node,
                                              "--public-key", new_key, "--raft", me["raft"],
                                              "--api", me["api"])  # fmt: skip
            else:
                out = await asyncio.to_thread(self._as, "ops", "node", "repair", node,
                                              "--public-key", new_key)  # fmt: skip
            ref = rec.repair_request = str(out["request"])
            for who in APPROVERS:
                stage = f"approval by {who}"
                await asyncio.to_thread(self._as, who, "approve", ref, "--yes")
            note(f"{what} {ref} submitted by ops ({out.get('code')}), approved by "
                 f"{', '.join(APPROVERS)}")  # fmt: skip
            stage = "time lock"
            async with Client(c.profile("audit"), timeout=5, attempts=3) as cl:
                state = await self._await_request(cl, ref, deadline, note)
                if state != "executed":
                    rec.repair_state = state
                    return
                stage = "repair"
                await self._await_repair(cl, node, ref, deadline, rec, t0, note, f.repair_timeout)
        except Exception as exc:
            rec.repair_state = f"error: {stage}: {type(exc).__name__}: {str(exc)[-300:]}"
            note(rec.repair_state)

    # ------------------------------------------------------------ lose-cluster

    def _officer_key(self, name: str) -> str:
        return str(self.root / "officers" / f"{name}.officer-key.json")

    async def _audit_chain(self) -> list[dict[str, Any]]:
        """The whole audit chain, read through the leader (linearizable)."""
        out: list[dict[str, Any]] = []
        async with Client(self.cluster.profile("audit"), timeout=10, attempts=3) as c:
            while True:
                page = await c.get("/v1/audit", after=str(len(out) - 1), limit="1000")
                recs = page["records"]
                out.extend(recs)
                if len(recs) < 1000:
                    return out

    async def _fill_to_snapshot(self, i: int, target: int, deadline: float) -> int:
        """Filler sign requests by app1 (`fill-…`, never approved), one at a time (each is
        a log entry of its own), until every node's newest snapshot is at `target` or
        beyond; how many were posted."""
        c = self.cluster
        n = 0
        async with Client(c.profile(REQUESTER), timeout=4, attempts=3) as cl:
            while True:
                st = await c.statuses()
                up = [s for s in st.values() if s]
                if len(up) == len(c.names) and all(s["snapshot_index"] >= target for s in up):
                    return n
                if time.monotonic() > deadline:
                    raise RuntimeError(f"snapshots not at {target} in time: " + ", ".join(
                        f"{k}={(v or {}).get('snapshot_index')}" for k, v in st.items()))
                need = target - max((s["applied"] for s in up), default=target)
                if need <= 0:
                    await asyncio.sleep(0.05)
                    continue
                for _ in range(need):
                    n += 1
                    msg = f"drill filler {self.seed}/{i}/{n}".encode()
                    await cl.post(f"/v1/keys/{KEY_ID}/sign", {
                        "request_id": f"fill-{self.seed}-{i}-{n:04d}",
                        "message_b64": base64.b64encode(msg).decode()})  # fmt: skip

    async def _retry(self, what: str, fn: Callable[..., Any], *args: Any, deadline: float,
                     note: Callable[[str], None]) -> Any:  # fmt: skip
        """`fn(*args)` in a thread, again every second while it fails (no leader yet, an
        election), until `deadline`."""
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except RuntimeError as exc:
                last = " ".join(str(exc).split())[-300:]
                if time.monotonic() >= deadline:
                    raise
                note(f"{what}: {last}; again in 1 s")
                await asyncio.sleep(1.0)

    def _submit(self, path: Path) -> None:
        """`custody recover submit FILE` as ops (an officer's approval or release); it
        exits non-zero unless every post in it was accepted."""
        custody("recover", "submit", str(path), "--profile",
                str(self.root / "profiles" / "ops.toml"))  # fmt: skip

    async def _lose_cluster(self, i: int, f: Fault, rec: FaultRecord) -> None:
        """Hold the clients, back up every node at one snapshot index covering everything
        acknowledged, lose the whole cluster (every process, data directory and token), and
        recover it as the runbook says: new tokens, the state from the bundles (opened by
        `officer_k` officers), `custody recover request` approved by alice, bob and
        `officer_k` officers, their releases, until `GET /v1/recovery` is `done`."""
        c, wl = self.cluster, self.wl
        assert wl is not None
        b = rec.backup
        b["snapshot_every"] = f.snapshot_every
        names = OFFICER_NAMES[: f.officers]
        k = f.officer_k
        t_start = time.monotonic()
        deadline = t_start + f.timeout + self.sc.workload.op_timeout + 60  # backups included
        rec.node = "all"

        def note(msg: str) -> None:
            self._note(i, rec, msg)

        stage = "hold"
        try:
            b["held_at"] = round(self.h.now(), 2)
            quiet = await wl.hold(self.sc.workload.op_timeout + 10)
            b["quiet_at"] = round(self.h.now(), 2)
            if not quiet:
                raise RuntimeError(f"{wl.busy} flow(s) still in flight")
            note(f"clients held at t={b['held_at']:.2f} s; no flow in flight from "
                 f"t={b['quiet_at']:.2f} s")  # fmt: skip
            stage = "escrow"
            async with Client(c.profile("audit"), timeout=5, attempts=3) as cl:
                v = await self._get(cl, "/v1/recovery", deadline)
            if any((v.get("escrow_due") or {}).values()):
                raise RuntimeError(f"escrow due: {v.get('escrow_due')}")
            stage = "audit chain"
            chain = await self._audit_chain()
            self._audit_before[i] = [str(r["hash"]) for r in chain]
            b["audit_records_before"] = len(chain)
            stage = "commit index"
            st = await c.statuses()
            commit = max(s["commit"] for s in st.values() if s)
            b["commit_at_hold"] = commit
            target = -(-commit // f.snapshot_every) * f.snapshot_every
            stage = "snapshots"
            b["fillers"] = await self._fill_to_snapshot(i, target, deadline)
            note(f"commit index {commit} at the hold ({len(chain)} audit records read); "
                 f"{b['fillers']} filler request(s) until every node's snapshot is at "
                 f"index {target}")  # fmt: skip
            stage = "backups"
            files = ",".join(str(self.root / "officers" / f"{n}.officer.json") for n in names)
            (self.root / "backups").mkdir(exist_ok=True)
            docs = await asyncio.gather(*(asyncio.to_thread(
                custody_json, "backup", "create", "--config", str(c.config(n)), "--out",
                str(self.root / "backups" / n), "--k", str(k), "--officers", files)
                for n in c.names))  # fmt: skip
            idx = {n: (d.get("snapshot") or {}).get("index") for n, d in zip(c.names, docs,
                                                                              strict=True)}
            b["bundle_indexes"] = idx
            b["backups_done_at"] = round(self.h.now(), 2)
            note(f"backed up every node (bundles opened by {k} of {', '.join(names)}): "
                 f"snapshot indexes {idx}")  # fmt: skip
            if len(set(idx.values())) != 1 or min(i_ or 0 for i_ in idx.values()) < commit:
                raise RuntimeError(f"the bundles' snapshots {idx} are not all at one index at "
                                   f"or above the commit index {commit}")  # fmt: skip
            stage = "loss"
            await asyncio.to_thread(c.kill_all)
            rec.injected_at = self.h.now()
            rec.status = "injected"
            for n in c.names:
                await asyncio.to_thread(shutil.rmtree, self.root / n / "data")
                await asyncio.to_thread(shutil.rmtree, self.root / n / "hsm" / "tokens")
            note("SIGKILL every node; deleted every data directory and every token")
        except Exception as exc:
            rec.op_state = f"error: {stage}: {type(exc).__name__}: {str(exc)[-300:]}"
            if rec.status == "pending":
                rec.status = f"error: {stage}: {type(exc).__name__}: {str(exc)[-300:]}"
            note(rec.op_state)
            return
        finally:
            wl.release()
        b["released_at"] = round(self.h.now(), 2)
        t_loss = rec.injected_at
        deadline = time.monotonic() + f.timeout
        try:
            await asyncio.sleep(f.down_for)
            stage = "provision"
            await asyncio.gather(*(asyncio.to_thread(
                custody_json, "node", "provision", "--config", str(c.config(n)))
                for n in c.names))  # fmt: skip
            stage = "restore"
            keys = [a for n in names[-k:] for a in ("--officer-key", self._officer_key(n))]
            reps = await asyncio.gather(*(asyncio.to_thread(
                custody_json, "backup", "restore", str(self.root / "backups" / n), "--config",
                str(c.config(n)), "--snapshot-only", *keys) for n in c.names))  # fmt: skip
            b["restored_indexes"] = {n: (r.get("snapshot") or {}).get("index")
                                     for n, r in zip(c.names, reps, strict=True)}  # fmt: skip
            note(f"new tokens; each node's state restored from its bundle (opened by "
                 f"{', '.join(names[-k:])}): {b['restored_indexes']}")  # fmt: skip
            stage = "start"
            for n in c.names:
                await asyncio.to_thread(c.start, n)
            rec.ended_at = self.h.now()
            note("started every node on its restored state (unregistered: nothing signs)")
            stage = "node keys"
            specs = await asyncio.gather(*(asyncio.to_thread(
                custody, "recover", "node-keys", "--config", str(c.config(n)))
                for n in c.names))  # fmt: skip
            members = [a for sp in specs for a in ("--member", sp.strip())]
            stage = "recover request"
            rid = f"drill-recover-{self.seed}-{i}"
            out = await self._retry("recover request", self._as, "ops", "recover", "request",
                                    *members, "--request-id", rid, deadline=deadline,
                                    note=note)  # fmt: skip
            ref = rec.op_request = str(out["request"])
            for who in APPROVERS:
                stage = f"approval by {who}"
                await self._retry(f"approve by {who}", self._as, who, "approve", ref, "--yes",
                                  deadline=deadline, note=note)  # fmt: skip
            note(f"recovery request {ref} by ops ({out.get('code')}), approved by "
                 f"{', '.join(APPROVERS)}")  # fmt: skip
            work = self.root / "recovery"
            work.mkdir(exist_ok=True)
            audit = str(self.root / "profiles" / "audit.toml")
            for n in names[:k]:
                stage = f"officer approval by {n}"
                path = work / f"{n}.approve.json"
                await asyncio.to_thread(custody, "recover", "approve", ref, "--officer-key",
                                        self._officer_key(n), "--out", str(path), "--profile",
                                        audit)  # fmt: skip
                await asyncio.to_thread(self._submit, path)
            stage = "recovery request"
            async with Client(c.profile("audit"), timeout=5, attempts=3) as cl:
                while True:
                    req = await self._get(cl, f"/v1/requests/{ref}", deadline)
                    if req["state"] in ("executed", "failed") or time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.2)
                note(f"officers {', '.join(names[:k])} approved: request {req['state']}")
                if req["state"] != "executed":
                    rec.op_state = f"failed: recovery request {req['state']}: {req.get('failure')}"
                    return
                for n in names[-k:]:
                    stage = f"release by {n}"
                    path = work / f"{n}.release.json"
                    await asyncio.to_thread(custody, "recover", "release", "--officer-key",
                                            self._officer_key(n), "--out", str(path),
                                            "--profile", audit)  # fmt: skip
                    await asyncio.to_thread(self._submit, path)
                note(f"officers {', '.join(names[-k:])} released their pieces")
                stage = "recovery"
                rec.op_state = "timeout: no recovery reported"
                while True:
                    doc = await self._get(cl, "/v1/recovery", deadline)
                    r = doc.get("recovery") or {}
                    if r.get("request") == ref:
                        rec.recovered = list(r.get("recovered") or [])
                        rec.op_state = str(r.get("state"))
                        if r.get("state") == "done":
                            rec.op_s = round(self.h.now() - t_loss, 2)
                            note(f"recovery done, members {', '.join(rec.recovered)} recovered: "
                                 f"{rec.op_s:.2f} s after the loss")  # fmt: skip
                            await asyncio.sleep(3.0)  # the members' escrow duty, once more
                            doc = await self._get(cl, "/v1/recovery", deadline + 30)
                            b["escrow_after"] = {"escrowed": doc.get("escrowed"),
                                                 "due": doc.get("escrow_due")}  # fmt: skip
                            note(f"escrow 3 s after the recovery: held {doc.get('escrowed')}, "
                                 f"due {doc.get('escrow_due')}")  # fmt: skip
                            return
                        if r.get("state") not in ("running", None):
                            note(f"recovery {r.get('state')}")
                            return
                    if time.monotonic() >= deadline:
                        rec.op_state = (f"timeout: recovery {rec.op_state} after {f.timeout:g} s"
                                        f" (recovered {rec.recovered})")  # fmt: skip
                        note(rec.op_state)
                        return
                    await asyncio.sleep(0.2)
        except Exception as exc:
            rec.op_state = f"error: {stage}: {type(exc).__name__}: {str(exc)[-300:]}"
            note(rec.op_state)

    async def _get(self, cl: Client, path: str, deadline: float) -> dict[str, Any]:
        """A read that rides out an election or a node going away, until `deadline`."""
        while True:
            try:
                return await cl.get(path)
            except (ApiError, Unreachable, OSError, TimeoutError) as exc:
                if isinstance(exc, ApiError) and exc.status not in (502, 503, 504):
                    raise
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.3)

    async def _await_request(self, cl: Client, ref: str, deadline: float,
                             note: Callable[[str], None]) -> str:  # fmt: skip
        """Advance epochs (ops) until the time-locked request is executed: "executed", or
        how it ended otherwise."""
        advances = refused = 0
        while True:
            req = await self._get(cl, f"/v1/requests/{ref}", deadline)
            state = req["state"]
            if state in ("executed", "failed") or time.monotonic() >= deadline \
                    or advances + refused >= MAX_EPOCH_ADVANCES:  # fmt: skip
                break
            try:
                await asyncio.to_thread(self._as, "ops", "epoch", "advance")
                advances += 1
            except RuntimeError as exc:  # an election, or no vote yet: try again
                refused += 1
                note(f"epoch advance refused: {' '.join(str(exc).split())[-200:]}")
            await asyncio.sleep(0.3)
        note(f"repair request {state} (epoch {req.get('effective_epoch', '?')}) after "
             f"{advances} epoch advance(s), {refused} refused")  # fmt: skip
        if state == "executed":
            return state
        if state == "failed":
            return f"failed: repair request failed: {req.get('failure')}"
        return f"timeout: repair request still {state}"

    async def _await_repair(self, cl: Client, node: str, ref: str, deadline: float,
                            rec: FaultRecord, t0: float, note: Callable[[str], None],
                            timeout: float) -> None:  # fmt: skip
        """Poll `GET /v1/repairs` (`custody node repairs`) until the member's repair of
        this request is done or failed, or the deadline."""
        rec.repair_state = "timeout: no repair reported"
        while True:
            doc = await self._get(cl, "/v1/repairs", deadline)
            r = next((x for x in doc["repairs"]
                      if x["member"] == node and x.get("request") == ref), None)  # fmt: skip
            if r is not None:
                rec.repair_versions = f"{r['done']}/{r['total']}"
                rec.repair_state = str(r["state"])
                if r["state"] == "done":
                    rec.repair_s = round(self.h.now() - t0, 2)
                    note(f"repair done ({rec.repair_versions} versions rebuilt, run "
                         f"{r.get('run')}, failed runs {r.get('failed_runs', 0)}): "
                         f"{rec.repair_s:.2f} s after the token loss")  # fmt: skip
                    return
                if r["state"] == "failed":
                    rec.repair_state = f"failed: {r.get('failure')}"
                    note(f"repair FAILED: {r.get('failure')}")
                    return
            if time.monotonic() >= deadline:
                rec.repair_state = f"timeout: repair {rec.repair_state} after {timeout:g} s"
                note(rec.repair_state)
                return
            await asyncio.sleep(0.2)

    async def _observe(self, node: str, rec: FaultRecord, before: tuple[Any, Any]) -> None:
        """After SIGCONT: how the woken node sees itself (role, term) until it is a
        follower of a newer term, or for 5 s."""
        rec.observed.append(f"before SIGSTOP: {before[0]} in term {before[1]}")
        last = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = await self.cluster.status(node, timeout=1.0)
            now = (st.get("role"), st.get("term"), st.get("leader")) if st else None
            if now != last:
                last = now
                seen = "no answer" if now is None else f"{now[0]} in term {now[1]}, leader {now[2]}"
                rec.observed.append(f"t={self.h.now():.2f}s: {seen}")
            if now and (now[1] != before[1] or now[0] == before[0]):
                break  # stepped down into a newer term, or kept its role: settled either way
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ the drill

    async def run_async(self) -> DrillResult:
        c = self.cluster
        self.res.leader_before = await c.leader(timeout=10) or ""
        key_before = await self.group_key()
        repairs = any(f.action in ("lose-token", *OPERATOR_ACTIONS) for f in self.sc.faults) \
            or self.sc.workload.rotate_every is not None  # fmt: skip
        keys_before = await self.group_keys() if repairs else {}
        profiles = {w: c.profile(w) for w in (REQUESTER, OPERATOR, *APPROVERS)}
        counts = {"ok": 0, "failed": 0, "unknown": 0}

        def progress(op: Op) -> None:
            counts[op.outcome] += 1
            if op.kind in ("rotate", "revoke"):
                _say(f"t={self.h.now():.1f}s {op.kind} {op.ref}: {op.outcome} {op.detail}")

        samples: list[dict[str, Any]] = []
        self.samples = samples

        async def sampler() -> None:
            """Every node's own view (role, term, leader, commit, applied), twice a second:
            the leader changes in the report, and evidence for diagnosing a stall."""
            while True:
                t = self.h.now()
                for n, st in (await c.statuses()).items():
                    if st is not None:
                        samples.append({"t": round(t, 2), "node": n, **{
                            k: st.get(k) for k in ("role", "term", "leader", "commit", "applied",
                                                   "health")}})  # fmt: skip
                await asyncio.sleep(0.5)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(5)
                down = [n for n in c.names if n in c.paused or not c.running(n)]
                _say(
                    f"t={self.h.now():.0f}s ops ok={counts['ok']} failed={counts['failed']} "
                    f"unknown={counts['unknown']}; down/paused: {', '.join(down) or 'none'}"
                )

        self.h = History()
        w = self.sc.workload
        wl = self.wl = Workload(
            profiles, KEY_ID, self.seed, w.clients, w.op_timeout, self.h, progress,
            mix=w.weights(), enc_key=ENC_KEY_ID if w.decrypts else "",
            rotate_every=w.rotate_every, revoke=w.revoke)  # fmt: skip
        recs = [FaultRecord(i, f.action, f.target, f.at) for i, f in enumerate(self.sc.faults)]
        self.res.faults = recs
        _say(f"{self.sc.name}: workload {self.sc.workload.clients} client(s) for "
             f"{self.sc.duration:g}s, {len(recs)} fault(s), seed {self.seed}")  # fmt: skip
        wl_task = asyncio.create_task(wl.run())
        tick = asyncio.create_task(ticker())
        sample = asyncio.create_task(sampler())
        fault_tasks = [
            asyncio.create_task(self._inject(i, f, r))
            for i, (f, r) in enumerate(zip(self.sc.faults, recs, strict=True))
        ]
        epochs = (asyncio.create_task(self._advance_epochs(wl.stop))
                  if self.sc.workload.epoch_advance_every else None)  # fmt: skip
        await asyncio.sleep(max(0.0, self.sc.duration - self.h.now()))
        wl.stop.set()
        await asyncio.gather(*fault_tasks)
        await self._hsm_after()
        await self._heal_all()
        await wl_task
        if epochs is not None:
            await epochs
        tick.cancel()
        sample.cancel()
        self.res.leaders = leader_changes(samples)
        _say(f"t={self.h.now():.0f}s workload stopped: {counts}; settling")
        for n in c.names:  # wake and start everything, then wait for agreement
            if n in c.paused:
                c.cont(n)
            if not c.running(n):
                c.start(n)
        t_settle = time.monotonic()
        ok, why = await c.settled(self.sc.settle_timeout)
        if not ok:
            raise RuntimeError(f"cluster did not settle within {self.sc.settle_timeout:g}s: {why}")
        self.res.settle_s = round(time.monotonic() - t_settle, 2)
        self.res.leader_after = await c.leader(timeout=5) or ""
        _say(f"settled in {self.res.settle_s}s (leader {self.res.leader_after}); checking")
        key_after = await self.group_key()
        await self.check(key_before, key_after, keys_before if repairs else None)
        return self.res

    async def _advance_epochs(self, stop: asyncio.Event) -> None:
        """ops asks for the next epoch every `epoch_advance_every` seconds (each member
        then votes with its own wall clock); counts in the report."""
        every = self.sc.workload.epoch_advance_every or 0
        n = self.res.epoch_advances = {"advanced": 0, "not_advanced": 0, "errors": 0,
                                       "epochs": [], "last_error": ""}  # fmt: skip
        async with Client(self.cluster.profile("ops"), timeout=4, attempts=3) as cl:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
                if stop.is_set():
                    return
                try:
                    out = await cl.post("/v1/epoch/advance", {})
                    moved = out["epoch"] > out["epoch_before"]
                    n["advanced" if moved else "not_advanced"] += 1
                    n["epochs"].append(out["epoch"])
                except (ApiError, Unreachable, OSError, TimeoutError) as exc:
                    n["errors"] += 1
                    n["last_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    # ------------------------------------------------------------ evidence + checks

    async def _member_views(self, node: str, refs: list[str]) -> dict[str, Any]:
        views: dict[str, Any] = {}
        async with Client(self.cluster.node_profile("audit", node), timeout=10, attempts=3) as c:
            for ref in refs:
                try:
                    views[ref] = await c.get(f"/v1/requests/{ref}", stale="true")
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    views[ref] = None
        return views

    async def _chain(self, node: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with Client(self.cluster.node_profile("audit", node), timeout=10, attempts=3) as c:
            while True:
                page = await c.get("/v1/audit", after=str(len(out) - 1), limit="1000",
                                   stale="true")  # fmt: skip
                recs = page["records"]
                out.extend(recs)
                if len(recs) < 1000:
                    return out

    def _export_verify(self, node: str, d: Path) -> dict[str, Any]:
        prof = d / f"audit-{node}.toml"
        src = (self.root / "profiles" / "audit.toml").read_text()
        nodes_line = f'nodes = ["https://{self.cluster.api[node]}"]'
        lines = [nodes_line if ln.startswith("nodes = ") else ln for ln in src.splitlines()]
        base = self.root / "profiles"
        text = "\n".join(lines).replace('"../', f'"{base.parent}/')
        prof.write_text(text + "\n")
        export = d / f"audit-{node}.bin"
        try:
            custody("audit", "export", "--out", str(export), "--profile", str(prof))
            rep = json.loads(custody("audit", "verify", "--in", str(export), "--json"))
        except RuntimeError as exc:
            return {"ok": False, "detail": str(exc)[:500]}
        return {"ok": bool(rep["ok"]), "checkpoints": len(rep["checkpoints"]),
                "records": rep["records"], "detail": "; ".join(rep["problems"])[:500]}  # fmt: skip

    async def check(self, key_before: str, key_after: str,
                    keys_before: dict[str, str | None] | None = None) -> None:  # fmt: skip
        """The invariants; `keys_before` (scenarios with lose-token faults): every key
        version's group public key before the workload, for the repair checks."""
        c = self.cluster
        ops, events = self.h.ops, self.h.events
        refs = sorted({o.ref for o in ops})
        members = {n: await self._member_views(n, refs) for n in c.names}
        async with Client(c.profile("audit"), timeout=10) as cl:  # linearizable, via leader
            views = {}
            for ref in refs:
                with contextlib.suppress(ApiError):
                    views[ref] = await cl.get(f"/v1/requests/{ref}")
        chains = {n: await self._chain(n) for n in c.names}
        evidence = self.out / "evidence"
        evidence.mkdir(parents=True, exist_ok=True)
        verified = {n: await asyncio.to_thread(self._export_verify, n, evidence) for n in c.names}
        rotated = any(o.kind == "rotate" for o in ops)
        versions = None
        if rotated:  # signatures may come from several versions: each checked at its epoch
            async with Client(c.profile("audit"), timeout=10) as cl:
                k = await cl.get(f"/v1/keys/{KEY_ID}")
            versions = {int(v["version"]): v for v in k["versions"]}
        window = None
        for r in self.res.faults:  # a whole-cluster loss: from the backups to the loss
            if r.action == "lose-cluster" and r.injected_at is not None:
                window = (float(r.backup["backups_done_at"]), r.injected_at)
        checks = [
            invariants.no_signature_without_approval(ops, views, chains),
            invariants.acknowledged_not_lost(events, ops, members, window),
            invariants.linearizable(events),
            invariants.audit_chains_agree(chains, verified),
            invariants.signatures_verify(ops, key_before, key_after, views, versions),
        ]
        if self.sc.workload.decrypts:
            checks.append(invariants.decrypts_return_plaintext(ops, views))
        actions = [asdict(r) for r in self.res.faults if r.action in OPERATOR_ACTIONS
                   and r.action != "lose-cluster"]  # fmt: skip
        if actions:
            checks.append(invariants.operator_actions_done(actions))
        if self.loss is not None:
            checks.append(invariants.cluster_recovered(
                [asdict(r) for r in self.res.faults], ops, chains, self._audit_before,
                c.names))  # fmt: skip
        if self.sc.max_gap_s is not None:
            checks.append(invariants.availability(ops, self.sc.duration, self.sc.max_gap_s))
        if any(r.action == "hsm-refuse" for r in self.res.faults):
            checks.append(invariants.hsm_refuse_recovered(
                [asdict(r) for r in self.res.faults], ops))  # fmt: skip
        if keys_before is not None:
            recs = [asdict(r) for r in self.res.faults]
            if any(r["action"] == "lose-token" for r in recs):
                checks.append(invariants.token_loss_repaired(recs, ops))
            keys_after = {n: await self.group_keys(n) for n in c.names}
            checks.append(invariants.group_keys_unchanged(keys_before, keys_after))
        self.res.checks = [ch.to_json() for ch in checks]
        self.res.acked_lost = checks[1].data.get("lost")
        self.res.acked_lost_by_design = checks[1].data.get("lost_by_design")
        self.res.passed = all(ch.passed for ch in checks)
        states: dict[str, int] = {}
        for v in views.values():
            states[v["state"]] = states.get(v["state"], 0) + 1
        self.res.end_states = states
        for ch in checks:
            _say(f"  {'PASS' if ch.passed else 'FAIL'} {ch.name}: {ch.summary}")

    def recovery(self) -> None:
        oks = sorted((o.invoke, o.complete) for o in self.h.ops
                     if o.outcome == "ok" and o.kind in invariants.CLIENT_KINDS)  # fmt: skip
        for r in self.res.faults:
            if r.injected_at is None:
                continue
            after = [done for inv, done in oks if inv >= r.injected_at]
            if after:
                r.recovery_s = round(min(after) - r.injected_at, 2)
            if r.ended_at is not None:
                after = [done for inv, done in oks if inv >= r.ended_at]
                if after:
                    r.recovery_from_end_s = round(min(after) - r.ended_at, 2)
        for r in self.res.faults:
            if r.action in ("slow-link", "slow-disk") and r.injected_at is not None:
                end = r.ended_at if r.ended_at is not None else self.sc.duration
                r.flow_ms = _median_ms(oks, r.injected_at, end)
                r.flow_ms_before = _median_ms(oks, r.injected_at - 5, r.injected_at)
        gap = invariants.longest_gap(self.h.ops, self.sc.duration)
        if gap is not None:
            self.res.longest_gap = [round(gap[0], 2), round(gap[1], 2)]
        n = {"ok": 0, "failed": 0, "unknown": 0}
        for o in self.h.ops:
            n[o.outcome] += 1
            if o.kind != "sign":
                key = f"{o.kind}_{o.outcome}"
                n[key] = n.get(key, 0) + 1
        self.res.ops = n

    def run(self) -> DrillResult:
        t = time.monotonic()
        self.res.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.out.mkdir(parents=True, exist_ok=True)
        sb = self.sandbox
        self.res.isolation = (f"network namespace {sb.ns}" if sb.isolated else
                              "none: the host's loopback (no network or disk faults)")  # fmt: skip
        try:
            sb.enter()
            self.setup()
            asyncio.run(self.run_async())
        except Exception as exc:
            self.res.error = f"{type(exc).__name__}: {exc}"
            self.res.passed = False
            _say(f"{self.sc.name}: ERROR {self.res.error}")
        finally:
            self.recovery()
            self.res.wall_s = round(time.monotonic() - t, 1)
            self._save_logs()
            self.cluster.down()
            for problem in sb.teardown():
                _say(f"{self.sc.name}: teardown: {problem}")
            if self.res.passed and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        (self.out / "history.json").write_text(json.dumps(self.h.to_json()))
        (self.out / "status.json").write_text(json.dumps(self.samples))
        return self.res

    def _save_logs(self) -> None:
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for n in self.cluster.names:
            with contextlib.suppress(OSError):
                shutil.copy(self.root / n / "node.log", logs / f"{n}.log")


__all__ = ["Drill", "DrillResult", "FaultRecord", "work_base"]
