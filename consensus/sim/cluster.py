"""The simulation harness: nodes, clients, faults, phases, and the final verdict.

A run has two phases. Safety: clients drive a kv workload while the harness
drops, delays, duplicates and reorders messages, partitions the network, crashes
nodes (sometimes in the middle of persisting a Ready: a torn write keeps only a
prefix of its entries and nothing after it is sent) and restarts them from
their storage, changes membership, transfers leadership and compacts logs.
Liveness: every fault is healed, every node restarted, and the clients' pending
operations must all complete within a budget. Afterwards the invariants and
the linearizability of the client history are checked.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..core import Config, NotLeader, ProposalDropped, RaftCore, Ready, Role
from ..memstore import MemoryStorage
from ..messages import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    decode_conf_change,
)
from ..storage import StorageError
from .clock import Clock
from .invariants import SafetyChecker
from .kv import KVStore
from .linearizability import KVModel, Operation, check_history, kv_key
from .network import NetFaults, Network
from .workload import Client, History

TICK_MS = 10  # one Raft tick of virtual time
FAULT_EVERY_MS = 20
ADMIN_EVERY_MS = 100
MAX_EVENTS = 1_000_000


@dataclass(slots=True)
class SimConfig:
    """Everything a run depends on; `from_seed` derives a varied scenario from one int."""

    seed: int
    voters: int = 3
    max_nodes: int = 5
    clients: int = 3
    keys: int = 3
    safety_ms: int = 2500
    liveness_ms: int = 4000
    election_tick: int = 10
    heartbeat_tick: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 4
    max_size_per_msg: int = 256
    faults: NetFaults = field(default_factory=NetFaults)
    crash_p: float = 0.0  # per fault step
    torn_p: float = 0.5  # share of crashes that tear the next write
    partition_p: float = 0.0
    membership: bool = False
    transfers: bool = False
    snapshot_every: int = 0  # 0 = never compact
    client_timeout_ms: int = 300

    @classmethod
    def from_seed(cls, seed: int, **overrides: Any) -> SimConfig:
        rng = random.Random(f"consensus-sim-scenario:{seed}")
        faults = NetFaults(
            drop=rng.choice([0.0, 0.02, 0.05, 0.1]),
            duplicate=rng.choice([0.0, 0.02, 0.05]),
            min_delay=1,
            max_delay=rng.choice([3, 8, 15]),
            long_delay=rng.choice([0.0, 0.02, 0.05]),
            long_delay_max=rng.choice([50, 150]),
        )
        cfg = cls(
            seed=seed,
            voters=rng.choice([1, 3, 3, 3, 5]) if rng.random() < 0.9 else 2,
            pre_vote=rng.random() < 0.85,
            check_quorum=rng.random() < 0.85,
            max_inflight=rng.choice([1, 4, 64]),
            max_size_per_msg=rng.choice([0, 64, 1024]) or 1,
            faults=faults,
            crash_p=rng.choice([0.0, 0.01, 0.03]),
            partition_p=rng.choice([0.0, 0.01, 0.03]),
            membership=rng.random() < 0.35,
            transfers=rng.random() < 0.35,
            snapshot_every=rng.choice([0, 0, 8, 25]),
        )
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return cfg


@dataclass(slots=True)
class SimResult:
    seed: int
    violations: list[str]
    ops_completed: int
    ops_total: int
    max_term: int
    elections: int
    messages: int
    crashes: int
    conf_changes: int
    snapshots: int
    virtual_ms: int
    mode: str = "base"  # see consensus.sim.modes

    @property
    def ok(self) -> bool:
        return not self.violations

    def replay_command(self) -> str:
        mode = "" if self.mode == "base" else f" --mode {self.mode}"
        return f"python -m consensus.sim{mode} --seed {self.seed}"


class SimNode:
    """One peer: durable MemoryStorage plus volatile core and state machine."""

    def __init__(self, nid: int, storage: MemoryStorage) -> None:
        self.id = nid
        self.storage = storage
        self.core: RaftCore | None = None
        self.kv = KVStore()
        self.applied = 0
        self.incarnation = 0
        self.removed = False  # its removal was applied somewhere: clients leave it
        self.retired = False  # decommissioned by the operator: never restarted
        self.crash_on_save = False
        self.waiters: set[tuple[int, int]] = set()
        self.reads: dict[bytes, tuple[int, int, str]] = {}
        self.ready_reads: list[tuple[int, bytes]] = []
        self.read_counter = 0

    @property
    def up(self) -> bool:
        return self.core is not None


class Simulation:
    mode = "base"  # the name `consensus.sim.modes` knows this runner loop by
    checker_cls = SafetyChecker  # a test may substitute a checker that records more

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(f"consensus-sim-run:{cfg.seed}")
        self.clock = Clock()
        self.net = Network(self.rng, self.clock, cfg.faults)
        self.check = self.checker_cls()
        self.history = History()
        self.nodes: dict[int, SimNode] = {}
        self.phase = "safety"
        self.crashes = 0
        self.conf_changes = 0
        self.snapshots = 0
        self.elections = 0
        voters = list(range(1, cfg.voters + 1))
        for nid in voters:
            self.nodes[nid] = SimNode(nid, MemoryStorage.bootstrap(voters))
            self._start(self.nodes[nid])
        self.clients = [Client(100 + i, voters) for i in range(cfg.clients)]
        for c in self.clients:
            self.clock.after(self.rng.randint(0, 50), "client", c.id, 0)
        self.clock.after(FAULT_EVERY_MS, "fault")
        self.clock.after(ADMIN_EVERY_MS, "admin")

    # --- node lifecycle ----------------------------------------------------------
    def _start(self, node: SimNode) -> None:
        snap = node.storage.snapshot()
        node.kv = KVStore.load(snap.data)
        node.applied = snap.meta.index
        node.incarnation += 1
        node.crash_on_save = False
        node.waiters.clear()
        node.reads.clear()
        node.ready_reads.clear()
        cfg = Config(
            id=node.id,
            election_tick=self.cfg.election_tick,
            heartbeat_tick=self.cfg.heartbeat_tick,
            max_size_per_msg=self.cfg.max_size_per_msg,
            max_inflight_msgs=self.cfg.max_inflight,
            pre_vote=self.cfg.pre_vote,
            check_quorum=self.cfg.check_quorum,
            applied=node.applied,
            seed=self.cfg.seed * 31 + node.incarnation,
        )
        node.core = RaftCore(cfg, node.storage)
        self.check.on_restart(node.id, node.applied)
        # Stagger tick phases so nodes do not move in lockstep.
        self.clock.after(self.rng.randint(1, TICK_MS), "tick", node.id, node.incarnation)
        self._process(node)

    def _crash(self, node: SimNode) -> None:
        node.core = None
        self.crashes += 1

    # --- the runner loop (the contract of consensus.core) -------------------------
    def _process(self, node: SimNode) -> None:
        while node.core is not None and node.core.has_ready():
            core = node.core
            rd = self._take_ready(node, core)
            if node.crash_on_save and (rd.entries or rd.hard_state or rd.snapshot):
                self._torn_save(node, rd)
                return
            node.storage.save(rd.hard_state, rd.entries, rd.snapshot)
            for m in rd.messages:
                self.net.send(m)
            self._apply_ready(node, rd)
            core.advance(rd)
            self._maybe_snapshot(node)

    # Steps every runner loop shares (the planned loop orders them differently).
    def _take_ready(self, node: SimNode, core: RaftCore) -> Ready:
        if core.role is Role.LEADER:
            self.check.on_leader(node.id, core.term, core.log)
        rd = core.ready()
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self.elections += 1
        return rd

    def _torn_save(self, node: SimNode, rd: Ready) -> None:
        """A crash during the save: the snapshot maybe, a prefix of the entries, no
        hard state."""
        keep = self.rng.randint(0, len(rd.entries))
        snap = rd.snapshot if (keep or self.rng.random() < 0.5) else None
        node.storage.save(None, rd.entries[:keep], snap)
        self._crash(node)

    def _apply_ready(self, node: SimNode, rd: Ready) -> None:
        """Restore the Ready's snapshot, apply its committed entries, serve reads."""
        if rd.snapshot is not None:
            node.kv = KVStore.load(rd.snapshot.data)
            node.applied = rd.snapshot.meta.index
            self.check.on_restore(node.id, node.applied)
        for e in rd.committed_entries:
            self._apply(node, e)
        node.ready_reads.extend((rs.index, rs.ctx) for rs in rd.read_states)
        self._serve_reads(node)

    def _apply(self, node: SimNode, e: Entry) -> None:
        self.check.on_apply(node.id, e, node.core.term if node.core is not None else None)
        node.applied = e.index
        if e.type is EntryType.CONF_CHANGE:
            cc = decode_conf_change(e.data)
            if cc.type is ConfChangeType.REMOVE_NODE:
                target = self.nodes.get(cc.node_id)
                if target is not None and not target.removed:
                    target.removed = True
                    # Decommission a little later; it may keep talking until then.
                    self.clock.after(self.rng.randint(0, 300), "retire", cc.node_id, e.index)
            return
        if not e.data:
            return
        out = node.kv.apply(e.data)
        if out is not None and (out[0], out[1]) in node.waiters:
            node.waiters.discard((out[0], out[1]))
            self._respond(out[0], out[1], out[2])

    def _serve_reads(self, node: SimNode) -> None:
        still = []
        for index, ctx in node.ready_reads:
            req = node.reads.get(ctx)
            if req is None:
                continue
            if index <= node.applied:
                del node.reads[ctx]
                self._respond(req[0], req[1], node.kv.get(req[2]))
            else:
                still.append((index, ctx))
        node.ready_reads = still

    def _maybe_snapshot(self, node: SimNode) -> None:
        every = self.cfg.snapshot_every
        core = node.core
        if not every or core is None:
            return
        st = node.storage
        if node.applied - st.snapshot().meta.index < every:
            return
        try:
            st.create_snapshot(node.applied, core.conf_state(), node.kv.dump())
        except StorageError:
            return
        self.snapshots += 1
        target = st.snapshot().meta.index - self.rng.randint(0, every // 2)
        if target > st.first_index() - 1:
            st.compact(target)

    # --- clients -----------------------------------------------------------------
    def _members(self) -> list[int]:
        return sorted(n.id for n in self.nodes.values() if not n.removed)

    def _client_event(self, client: Client, attempt: int) -> None:
        if client.op is None:
            if attempt != 0 or self.phase != "safety":
                return
            client.begin(self.rng, self.cfg.keys, self.history.tick())
        elif attempt != client.attempt:
            return  # a stale timer
        else:
            # Timed out (or redirected): retry the same operation elsewhere.
            if client.redirect is None:
                client.target = self.rng.choice(self._members())
        if client.redirect is not None:
            client.target = client.redirect
            client.redirect = None
        client.attempt += 1
        self.clock.after(self.cfg.client_timeout_ms, "client", client.id, client.attempt)
        self._send_request(client)

    def _send_request(self, client: Client) -> None:
        node = self.nodes.get(client.target)
        if node is None or node.core is None or node.removed:
            return  # lost; the client times out
        assert client.op is not None
        kind, key = client.op[0], client.op[1]
        try:
            if kind == "get":
                node.read_counter += 1
                ctx = f"r/{node.id}/{node.incarnation}/{node.read_counter}".encode()
                node.core.read_index(ctx)
                node.reads[ctx] = (client.id, client.seq, key)
            else:
                node.core.propose(client.command())
                node.waiters.add((client.id, client.seq))
        except NotLeader as exc:
            self._redirect(client, exc.leader_id)
        except ProposalDropped:
            self._redirect(client, 0)
        self._process(node)

    def _redirect(self, client: Client, leader: int) -> None:
        client.redirect = leader if leader in self.nodes else self.rng.choice(self._members())
        self.clock.after(self.rng.randint(1, 20), "client", client.id, client.attempt)

    def _respond(self, client_id: int, seq: int, result: Any) -> None:
        client = self.clients[client_id - 100]
        if client.op is None or client.seq != seq:
            return
        self.history.record(client, result)
        client.finish()
        if self.phase == "safety":
            self.clock.after(self.rng.randint(0, 30), "client", client.id, 0)

    # --- faults and admin ----------------------------------------------------------
    def _fault(self) -> None:
        if self.phase != "safety":
            return
        self.clock.after(FAULT_EVERY_MS, "fault")
        rng, cfg = self.rng, self.cfg
        live = [n for n in self.nodes.values() if n.up and not n.removed]
        down = [n for n in self.nodes.values() if not n.up and not n.retired]
        leader = self._leader()
        if rng.random() < cfg.crash_p and len(down) < 2 and live:
            # Leaders are the interesting victims: half the crashes target one.
            pick_leader = leader is not None and leader in live and rng.random() < 0.5
            victim = leader if pick_leader else rng.choice(live)
            if rng.random() < cfg.torn_p:
                victim.crash_on_save = True
            else:
                self._crash(victim)
        if down and rng.random() < 0.08:
            self._start(rng.choice(down))
        if rng.random() < cfg.partition_p:
            ids = self._members()
            rng.shuffle(ids)
            if leader is not None and leader.id in ids and rng.random() < 0.5:
                # Strand the leader in a minority: clients may still reach it.
                ids.remove(leader.id)
                ids.insert(0, leader.id)
                cut = rng.randint(1, max(1, (len(ids) - 1) // 2))
            else:
                cut = rng.randint(1, max(1, len(ids) - 1))
            if rng.random() < 0.2 and len(ids) > 1:
                self.net.cut_one_way(ids[0], ids[1])
            else:
                self.net.partition(ids[:cut], ids[cut:])
        elif self.net.partitioned and rng.random() < 0.05:
            self.net.heal()

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.core and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term, default=None)  # type: ignore[union-attr]

    def _admin(self) -> None:
        if self.phase != "safety":
            return
        self.clock.after(ADMIN_EVERY_MS, "admin")
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        core, rng = leader.core, self.rng
        conf = core.conf_state()
        try:
            if self.cfg.transfers and rng.random() < 0.3:
                others = sorted(conf.voters - {leader.id})
                if others:
                    core.transfer_leadership(rng.choice(others))
            elif self.cfg.membership and rng.random() < 0.5:
                self._change_membership(core, sorted(conf.voters), sorted(conf.learners))
        except (NotLeader, ProposalDropped, ValueError):
            pass
        self._process(leader)

    def _change_membership(self, core: RaftCore, voters: list[int], learners: list[int]) -> None:
        rng = self.rng
        if learners:
            core.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, learners[0]))
        elif len(voters) < self.cfg.max_nodes and rng.random() < 0.6:
            nid = max(self.nodes) + 1
            core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, nid))
            self.nodes[nid] = SimNode(nid, MemoryStorage())
            self._start(self.nodes[nid])
        elif len(voters) > 1:
            core.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(voters)))
        else:
            return
        self.conf_changes += 1

    # --- main loop -----------------------------------------------------------------
    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.core is None:
            return
        node.core.step(m)
        self._process(node)

    def _start_liveness(self) -> None:
        self.phase = "liveness"
        self.net.heal()
        f = self.net.faults
        self.net.faults = NetFaults(0.0, 0.0, f.min_delay, f.max_delay, 0.0, 0)
        for n in self.nodes.values():
            n.crash_on_save = False
            if not n.up and not n.retired:
                self._start(n)

    def run(self) -> SimResult:
        cfg = self.cfg
        end_safety = cfg.safety_ms
        deadline = cfg.safety_ms + cfg.liveness_ms
        events = 0
        while True:
            events += 1
            if events > MAX_EVENTS:
                self.check.violations.append(f"event budget of {MAX_EVENTS} exceeded (a storm?)")
                break
            if self.phase == "safety" and (self.clock.peek_time() or 0) >= end_safety:
                self.clock.now = max(self.clock.now, end_safety)
                self._start_liveness()
            if self.phase == "liveness" and all(c.op is None for c in self.clients):
                break
            ev = self.clock.pop()
            if ev is None or self.clock.now > deadline:
                break
            kind = ev[0]
            if kind == "deliver":
                self._deliver(ev[1])
            elif kind == "tick":
                node = self.nodes[ev[1]]
                if node.core is not None and node.incarnation == ev[2]:
                    node.core.tick()
                    self._process(node)
                    self.clock.after(TICK_MS, "tick", node.id, node.incarnation)
            elif kind == "client":
                self._client_event(self.clients[ev[1] - 100], ev[2])
            elif kind == "fault":
                self._fault()
            elif kind == "admin":
                self._admin()
            elif kind == "retire":
                self._retire(self.nodes[ev[1]], ev[2])
        return self._verdict()

    def _retire(self, node: SimNode, removal_index: int) -> None:
        """The operator decommissions a removed node, as the runbook says: only
        once it no longer leads and a remaining voter (up, not a learner) has
        its removal committed *on disk*. Before that, the departing node may be
        the only one that can tell the others (with two voters, the survivor
        needs its vote), so a removed node that crashed is restarted like any
        other until then."""
        if node.retired:
            return
        if node.core is not None and node.core.role is Role.LEADER:
            self.clock.after(50, "retire", node.id, removal_index)  # still handing over
            return
        known = any(
            n.core is not None
            and not n.removed
            and n.id in n.core.conf_state().voters
            and n.storage.initial_state()[0].commit >= removal_index
            for n in self.nodes.values()
        )
        if not known:
            self.clock.after(50, "retire", node.id, removal_index)
            return
        node.retired = True
        node.core = None

    def _verdict(self) -> SimResult:
        v = self.check.violations
        pending = [c.id for c in self.clients if c.op is not None]
        if pending:
            v.append(
                f"liveness: clients {pending} still pending {self.cfg.liveness_ms} ms after healing"
            )
        logs: dict[int, dict[int, Entry]] = {}
        for n in self.nodes.values():
            st = n.storage
            logs[n.id] = {e.index: e for e in st.entries(st.first_index(), st.last_index() + 1)}
        self.check.check_logs(logs)
        by_applied: dict[int, tuple[int, bytes]] = {}
        for n in self.nodes.values():
            if n.core is None:
                continue
            dump = n.kv.dump()
            other = by_applied.setdefault(n.applied, (n.id, dump))
            if other[1] != dump:
                v.append(f"nodes {other[0]} and {n.id} differ in state at applied {n.applied}")
        ops = self.history.operations()
        ops += [Operation(c.id, c.op, None, c.call, None) for c in self.clients if c.op is not None]
        res = check_history(ops, KVModel(), kv_key)
        if not res.ok:
            ops = "\n    ".join(map(repr, res.bad_partition[:40]))
            v.append(f"linearizability: history of key {res.key!r} is not linearizable:\n    {ops}")
        return self.result()

    def result(self) -> SimResult:
        terms = [n.core.term for n in self.nodes.values() if n.core is not None]
        return SimResult(
            seed=self.cfg.seed,
            violations=list(self.check.violations),
            ops_completed=self.history.completed,
            ops_total=len(self.history.ops),
            max_term=max(terms, default=0),
            elections=self.elections,
            messages=self.net.sent,
            crashes=self.crashes,
            conf_changes=self.conf_changes,
            snapshots=self.snapshots,
            virtual_ms=self.clock.now,
            mode=self.mode,
        )


def run_seed(seed: int, mode: str = "base", **overrides: Any) -> SimResult:
    """Run the scenario derived from `seed` in `mode` (see `consensus.sim.modes`;
    fields of SimConfig may be overridden)."""
    from .modes import MODES, simulation  # modes imports this module

    if mode not in MODES:
        raise ValueError(f"unknown simulator mode {mode!r}; one of {', '.join(MODES)}")
    try:
        sim = simulation(seed, mode, **overrides)  # starting the nodes runs the cores
    except Exception:
        tb = "exception:\n" + traceback.format_exc()
        return SimResult(seed, [tb], 0, 0, 0, 0, 0, 0, 0, 0, 0, mode)
    return run(sim)


def run(sim: Simulation) -> SimResult:
    """Run `sim` to its verdict; an exception is reported as a violation."""
    try:
        return sim.run()
    except Exception:  # a crash of the core is a finding too: report it with the seed
        sim.check.violations.append("exception:\n" + traceback.format_exc())
        return sim.result()


__all__ = ["Operation", "SimConfig", "SimResult", "Simulation", "run", "run_seed"]
