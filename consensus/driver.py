"""The asyncio runner: ties the pure Raft core, durable storage and the TLS
transport together, and applies committed commands to a user state machine.

One task owns the core. It sleeps until something arrives (a peer message, a
proposal, a read request, a clock tick), then *drains everything pending* into
the core and handles the resulting `Ready` in the order the storage contract
requires:

1. `storage.save(hard_state, entries, snapshot)`: one fsync per Ready, run in
   a worker thread so that requests keep queueing meanwhile (they form the
   next batch);
2. send the Ready's messages (the transport never blocks);
3. apply committed entries to the state machine, resolve waiting proposals
   and reads;
4. `core.advance()`; take a snapshot and compact every `snapshot_every`
   applied entries (with a `snapshot_guard`: exactly at the indexes that are
   multiples of `snapshot_every`, so that every member snapshots, hashes and
   can sign the same states).

Snapshot authentication is the application's (the runner knows no keys): an
optional `SnapshotGuard` seals every SNAPSHOT message this node sends and
opens every one it receives before the core sees it (see `SnapshotGuard`).

The core is touched only by that task, never while a save is in flight.

Time: a real monotonic clock ticks the core every `tick_interval` (50 ms by
default). Elections time out after `election_ticks` (10, so 0.5-1 s with the
core's randomisation) and the leader heartbeats every `heartbeat_ticks` (1).
These suit loopback and LAN; raise the tick on slower links.

Proposals on a follower raise `NotLeader(leader_id)`: the application decides
whether to forward (the kv example forwards HTTP requests to the leader).
A proposal returns once its entry is *applied on this node*; a timeout is an
unknown outcome (the entry may still commit), which is why proposals can carry
a client session (see `consensus.session`) that makes a retry exactly-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

from .core import (
    Config,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Ready,
    Role,
    apply_membership,
    bootstrap_log,
)
from .messages import (
    ConfChange,
    ConfState,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    encode_conf_change,
)
from .ratelog import limit_logger
from .session import (
    DEFAULT_WINDOW,
    MAX_BATCH,
    MalformedEnvelope,
    Outcome,
    Proposal,
    ReplicatedMachine,
    encode_batch,
    proposal_row,
)
from .statemachine import StateMachine

__all__ = [
    "Driver",
    "DriverConfig",
    "NodeStatus",
    "NodeStopped",
    "NotLeader",
    "Overloaded",
    "ProposalDropped",
    "SnapshotGuard",
    "SnapshotRefused",
    "open_node",
    "write_cluster_certs",
]

log = logging.getLogger("consensus.driver")
limit_logger(log)  # peers cause some of these lines: 10 a minute per message


class NodeStopped(Exception):
    """The runner was stopped before the request finished (outcome unknown)."""


class Overloaded(Exception):
    """Too many proposals or reads in flight on this node; retry later."""


class SnapshotRefused(ValueError):
    """A guard refuses to install a received snapshot (not certified, malformed).

    The runner drops the message on any `ValueError` from `SnapshotGuard.open`
    and counts it as `refused_<exception class name>`; an application may raise
    its own subclass of `ValueError` of the same name (the custody state machine
    does: it must not import this package).
    """


@runtime_checkable
class SnapshotGuard(Protocol):
    """Authenticates snapshots for the runner, which stays key-agnostic.

    - `seal(index, data)`: on the sender, for every SNAPSHOT message about to
      go out: the bytes to send instead of `data` (e.g. `data` wrapped with
      members' signatures over its hash), or None when the snapshot cannot be
      certified yet: the message is dropped (`stats["snapshot_unsealed"]`) and
      the core sends it again after its snapshot timeout (an election timeout).
    - `open(index, data)`: on the receiver, before the message reaches the
      core: the raw snapshot bytes to install, or raise a `ValueError`
      (`SnapshotRefused`): the message is dropped and counted; the node keeps
      its state and waits for a certified snapshot or log entries.
    - optional `on_snapshot(index, data)`: called once for every deterministic
      snapshot this node takes from its own log (index a multiple of
      `snapshot_every`), after it is written, never for a received one: the
      application signs the state hash there.

    Storage and the core always hold raw snapshot bytes.
    """

    def seal(self, index: int, data: bytes) -> bytes | None: ...

    def open(self, index: int, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class DriverConfig:
    tick_interval: float = 0.05  # seconds per core tick
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_every: int = 5000  # applied entries between snapshots
    keep_entries: int = 1000  # entries kept behind a snapshot for slow followers
    max_entry_bytes: int = 1 << 20  # bound on one proposal envelope
    max_append_bytes: int = 1 << 20  # entry data per APPEND message (keep below max_frame)
    session_window: int = DEFAULT_WINDOW  # exactly-once: see consensus.session
    max_pending: int = 10_000  # proposals or reads in flight
    max_inbox: int = 50_000  # peer messages queued; beyond it they are dropped
    max_inbox_bytes: int = 128 << 20  # payload bytes queued (one message always fits)
    default_timeout: float = 5.0
    leader_io_thread: bool = True  # leader fsyncs in a worker thread (False: inline)
    leader_early_send: bool = True  # leader replicates while it fsyncs (see docs)
    defer_commit_fsync: bool = True  # leader: no fsync for commit-only hard states (see docs)

    def __post_init__(self) -> None:
        if not 0 < self.tick_interval <= 10:
            raise ValueError("tick_interval must be in (0, 10] seconds")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.snapshot_every < 1 or self.keep_entries < 0:
            raise ValueError("snapshot_every >= 1 and keep_entries >= 0")


@dataclass(frozen=True, slots=True)
class NodeStatus:
    id: int
    leader: int  # 0 = unknown
    term: int
    role: str  # "failed" once the node fail-stopped (see Driver.failure)
    commit: int
    applied: int
    snapshot_index: int
    error: str | None = None  # why the node failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Outcome]


class Driver:
    """Runs one Raft node. Create with `open_node` or by hand, then `await start()`.

    `voters` is the founding membership: a node whose storage is empty writes
    the bootstrap log for it (every founding node must be given the same set).
    A node with existing storage ignores it and resumes from its snapshot and log.
    A node joining an existing cluster passes no voters: it starts empty and
    learns everything from the leader once added with `change_membership`.
    """

    def __init__(
        self,
        node_id: int,
        storage: Any,
        machine: StateMachine,
        *,
        voters: Iterable[int],
        config: DriverConfig | None = None,
        transport: Any = None,
        seed: int | None = None,
        snapshot_guard: SnapshotGuard | None = None,
    ) -> None:
        self.id = node_id
        self.guard = snapshot_guard
        self.config = cfg = config or DriverConfig()
        self.storage = storage
        self.transport = transport  # anything with send(msg), start(), stop()
        self.machine = ReplicatedMachine(machine, cfg.session_window, cfg.max_entry_bytes)
        hs, _ = storage.initial_state()
        voters = frozenset(voters)
        empty = hs.term == 0 and storage.last_index() == 0 and storage.snapshot().is_empty
        if empty and voters:
            hs, boot_entries = bootstrap_log(voters)
            storage.save(hs, boot_entries)
        self._durable_hs = self._latest_hs = hs
        snap = storage.snapshot()
        self._applied = 0
        self._snap_index = 0
        if not snap.is_empty:
            self.machine.restore(snap.data)
            self._applied = self._snap_index = snap.meta.index
        self.core = RaftCore(
            Config(
                id=node_id,
                election_tick=cfg.election_ticks,
                heartbeat_tick=cfg.heartbeat_ticks,
                applied=self._applied,
                seed=seed if seed is not None else int.from_bytes(os.urandom(4), "big"),
                max_entry_bytes=cfg.max_entry_bytes,
                max_size_per_msg=cfg.max_append_bytes,
            ),
            storage,
        )
        self._inbox: deque[tuple[Message, int]] = deque()
        self._inbox_bytes = 0
        self._proposals: deque[tuple[bytes, list[object], int]] = deque()  # tag, row, size
        self._reads: deque[bytes] = deque()
        self._admin: deque[tuple[Callable[[], int | None], asyncio.Future[int | None]]] = deque()
        self._conf_waiters: dict[int, tuple[bytes, asyncio.Future[None]]] = {}
        self._conf_applied: list[tuple[asyncio.Future[None], bool]] = []
        self._pending: dict[bytes, _Pending] = {}
        self._by_index: dict[int, list[bytes]] = {}  # index -> tags of our batch there
        self._read_waiters: dict[bytes, asyncio.Future[int]] = {}
        self._read_heap: list[tuple[int, int, asyncio.Future[int]]] = []
        self._heap_seq = itertools.count()
        self._ticks = 0
        self._wake = asyncio.Event()
        self._tag_prefix = os.urandom(8)  # distinct per incarnation: tags never collide
        self._tag_counter = itertools.count(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft-io-{node_id}")
        self._tasks: list[asyncio.Task[None]] = []
        self._max_batch_bytes = cfg.max_entry_bytes - 64  # room for the batch framing
        self._stopped = False
        self._failed: BaseException | None = None
        self._failed_event = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None  # transport stop after a failure
        self.stats: Counter[str] = Counter()
        # With a guard: snapshots taken right after applying a multiple of snapshot_every
        # (index, data, membership at that index), written after the Ready is advanced.
        self._captured: list[tuple[int, bytes, ConfState]] = []

    # --- public API ------------------------------------------------------------

    async def start(self) -> None:
        if self.transport is not None:
            await self.transport.start()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"raft-{self.id}"),
            asyncio.create_task(self._ticker(), name=f"raft-tick-{self.id}"),
        ]

    async def stop(self) -> None:
        """Stop ticking and processing; fail everything in flight with NodeStopped."""
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await asyncio.to_thread(self._executor.shutdown, True)
        if self._latest_hs != self._durable_hs and self._failed is None:
            with contextlib.suppress(Exception):  # best effort: the commit index is advisory
                self.storage.save(self._latest_hs, ())
                self._durable_hs = self._latest_hs
        self._fail_all(NodeStopped("node stopped"))
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing
        elif self.transport is not None:
            await self.transport.stop()
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()

    def deliver(self, msg: Message) -> None:
        """Transport callback: queue a peer message for the core.

        Bounded by count and by payload bytes (Raft tolerates message loss);
        a failed or stopped node takes nothing.
        """
        if self._stopped or self._failed is not None or msg.to != self.id:
            return
        size = _payload_size(msg)
        cfg = self.config
        if self._inbox and (
            len(self._inbox) >= cfg.max_inbox or self._inbox_bytes + size > cfg.max_inbox_bytes
        ):
            self.stats["inbox_dropped"] += 1
            return
        self._inbox.append((msg, size))
        self._inbox_bytes += size
        self._wake.set()

    @property
    def failure(self) -> BaseException | None:
        """Why the node fail-stopped (a storage failure or a bug), or None."""
        return self._failed

    async def wait_failed(self) -> BaseException:
        """Return once the node has fail-stopped; the process should then exit
        non-zero so that a supervisor restarts it on a healthy disk."""
        await self._failed_event.wait()
        assert self._failed is not None
        return self._failed

    async def propose(
        self,
        command: bytes,
        *,
        client_id: bytes = b"",
        seq: int = 0,
        timeout: float | None = None,
    ) -> bytes:
        """Replicate `command`, apply it, return the state machine's result.

        Raises NotLeader(leader_id) on a follower, StaleRequest/SequenceReused
        for a bad session, TimeoutError or ProposalDropped when the outcome is
        unknown, Overloaded when too much is in flight.
        """
        self._check_running()
        if self.core.role is not Role.LEADER:
            raise NotLeader(self.core.lead)
        if len(self._pending) >= self.config.max_pending:
            raise Overloaded("too many proposals in flight")
        tag = self._tag_prefix + next(self._tag_counter).to_bytes(8, "big")
        row, size = proposal_row(
            Proposal(payload=command, tag=tag, client_id=client_id, seq=seq)
        )
        if size > self._max_batch_bytes:
            raise ValueError("command too large")
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending[tag] = _Pending(fut)
        self._proposals.append((tag, row, size))
        self._wake.set()
        t = time.perf_counter_ns()
        try:
            async with asyncio.timeout(timeout or self.config.default_timeout):
                outcome = await fut
        finally:
            self._pending.pop(tag, None)
        self.stats["propose_us"] += (time.perf_counter_ns() - t) // 1000
        return outcome.unwrap()

    async def read_index(self, timeout: float | None = None) -> int:
        """Wait until this node has applied everything committed before the call.

        After it returns, reading the local state machine is linearizable.
        Works on followers too (the core asks the leader). Raises NotLeader
        if no leader is known, TimeoutError if none confirms in time.
        """
        self._check_running()
        if not self.core.lead:
            raise NotLeader(0)
        if len(self._read_waiters) >= self.config.max_pending:
            raise Overloaded("too many reads in flight")
        ctx = self._tag_prefix + next(self._tag_counter).to_bytes(8, "big")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_waiters[ctx] = fut
        self._reads.append(ctx)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout or self.config.default_timeout):
                return await fut
        finally:
            self._read_waiters.pop(ctx, None)

    async def change_membership(self, cc: ConfChange, timeout: float | None = None) -> None:
        """Propose one membership change on the leader; return once it is applied here.

        The core's rules apply: one change at a time, add a node as a learner
        first and promote it once it has caught up (`ProposalDropped`
        otherwise). The caller makes the new node reachable first (its
        transport must know the address).
        """
        data = encode_conf_change(cc)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def call() -> int:
            index = self.core.propose_conf_change(cc)
            self._conf_waiters[index] = (data, fut)
            return index

        async with asyncio.timeout(timeout or self.config.default_timeout):
            await self._admin_call(call)
            await fut

    def add_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """Tell the transport where `node_id` listens. Call it on every member
        before proposing ADD_LEARNER for a new node (the Raft log carries ids,
        not addresses)."""
        self._peer_map_op("add_peer")(node_id, addr)

    def remove_peer(self, node_id: int) -> None:
        """Stop talking to `node_id`; call it once its removal is applied."""
        self._peer_map_op("remove_peer")(node_id)

    def _peer_map_op(self, name: str) -> Callable[..., None]:
        op = getattr(self.transport, name, None)
        if op is None:
            raise RuntimeError("this node's transport has a fixed peer map")
        return op

    async def transfer_leadership(self, target: int, timeout: float | None = None) -> None:
        """Ask the leader to hand over to voter `target` (returns once it is queued)."""
        async with asyncio.timeout(timeout or self.config.default_timeout):
            await self._admin_call(lambda: self.core.transfer_leadership(target))

    async def _admin_call(self, call: Callable[[], int | None]) -> int | None:
        self._check_running()
        if self.core.role is not Role.LEADER:
            raise NotLeader(self.core.lead)
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._admin.append((call, fut))
        self._wake.set()
        return await fut

    def status(self) -> NodeStatus:
        st = self.core.status()
        failed = self._failed
        return NodeStatus(
            id=self.id,
            leader=0 if failed else st.leader,
            term=st.term,
            role="failed" if failed else _role_name(st.role),
            commit=st.commit,
            applied=self._applied,
            snapshot_index=self._snap_index,
            error=None if failed is None else f"{type(failed).__name__}: {failed}",
        )

    @property
    def applied_index(self) -> int:
        return self._applied

    # --- the loop --------------------------------------------------------------

    def _check_running(self) -> None:
        if self._stopped:
            raise NodeStopped("node stopped")
        if self._failed is not None:
            raise NodeStopped(f"node failed: {self._failed!r}")

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval
        deadline = loop.time()
        while True:
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            now = loop.time()
            if now - deadline > 10 * interval:  # the loop stalled: do not burst ticks
                deadline = now
            self._ticks += 1
            self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._drain()
                while self.core.has_ready():
                    t = time.perf_counter_ns()
                    await self._handle_ready()
                    self.stats["ready_us"] += (time.perf_counter_ns() - t) // 1000
                    self._drain()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug or a storage failure: fail-stop
            log.critical("raft node %d failed and stops serving: %r", self.id, exc)
            self._fail_stop(exc)

    def _fail_stop(self, exc: BaseException) -> None:
        """Stop everything after a storage failure or a bug: the durable state is
        unknown, so this node must neither answer, nor vote, nor claim a role.

        Pending requests fail with NodeStopped, the ticker stops, queued peer
        messages are dropped, and the transport is closed (peers see it as down
        and elect without it). `wait_failed()` wakes the application, which
        should exit non-zero for a supervisor to restart the process.
        """
        self._failed = exc
        self._fail_all(NodeStopped(f"node failed: {exc!r}"))
        self._inbox.clear()
        self._inbox_bytes = 0
        me = asyncio.current_task()
        for t in self._tasks:
            if t is not me:
                t.cancel()
        if self.transport is not None:
            self._closing = asyncio.ensure_future(self.transport.stop())
        self._failed_event.set()

    def _drain(self) -> None:
        core = self.core
        while self._ticks:
            self._ticks -= 1
            core.tick()
        inbox = self._inbox
        guard = self.guard
        while inbox:
            msg, size = inbox.popleft()
            self._inbox_bytes -= size
            try:
                if guard is not None and msg.type is MsgType.SNAPSHOT and msg.snapshot is not None:
                    msg = self._open_snapshot(guard, msg)
                core.step(msg)
            except (ValueError, TypeError) as exc:
                self._count_refused(msg, exc)
        props = self._proposals
        while props:  # everything queued goes out as few, large entries
            tags: list[bytes] = []
            rows: list[list[object]] = []
            budget = self._max_batch_bytes
            while props and len(rows) < MAX_BATCH and props[0][2] <= budget:
                tag, row, size = props.popleft()
                if tag in self._pending:  # else the caller already gave up
                    tags.append(tag)
                    rows.append(row)
                    budget -= size
            if not rows:
                continue
            try:
                index = core.propose(encode_batch(rows))
            except (NotLeader, ProposalDropped, ValueError) as exc:
                for tag in tags:
                    _settle(self._pending[tag].future, exc)
                continue
            self._by_index[index] = tags
            self.stats["proposals"] += len(rows)
            self.stats["batches"] += 1
        admin = self._admin
        while admin:  # membership changes and transfers: the core is free here
            call, fut = admin.popleft()
            if fut.done():
                continue
            try:
                fut.set_result(call())
            except (NotLeader, ProposalDropped, ValueError) as exc:
                fut.set_exception(exc)
        reads = self._reads
        while reads:
            ctx = reads.popleft()
            fut = self._read_waiters.get(ctx)
            if fut is None:
                continue
            try:
                core.read_index(ctx)
            except (NotLeader, ProposalDropped) as exc:
                _settle(fut, exc)

    def _open_snapshot(self, guard: SnapshotGuard, msg: Message) -> Message:
        """The guard authenticates a received snapshot before the core sees it: the
        message with the raw snapshot bytes, or a ValueError (dropped, counted)."""
        snap = msg.snapshot
        assert snap is not None
        if snap.is_empty:
            return msg  # the core refuses it (InvalidMessage)
        data = guard.open(snap.meta.index, snap.data)
        if type(data) is not bytes:
            raise SnapshotRefused("the snapshot guard returned no bytes")
        self.stats["snapshots_opened"] += 1
        return dataclasses.replace(msg, snapshot=Snapshot(snap.meta, data))

    def _count_refused(self, msg: Message, exc: Exception) -> None:
        """Count a message the core refused; the log line is rate-limited (ratelog),
        so that a peer cannot make this node write a line per message."""
        self.stats[f"refused_{type(exc).__name__}"] += 1
        log.warning("refused a %s from node %d: %s", msg.type.name, msg.frm, exc)

    async def _handle_ready(self) -> None:
        rd = self.core.ready()
        self.stats["readies"] += 1
        snapshot = rd.snapshot if rd.snapshot is not None and not rd.snapshot.is_empty else None
        if rd.hard_state is not None:
            self._latest_hs = rd.hard_state
        hs, durable = self._latest_hs, self._durable_hs
        cfg = self.config
        plan = plan_ready(
            rd,
            self.id,
            self.core.role is Role.LEADER,
            durable,
            hs,
            early_send=cfg.leader_early_send and self.transport is not None,
            defer_commit=cfg.defer_commit_fsync,
        )
        self._send(plan.early)
        self.stats["early_sent"] += len(plan.early)
        if plan.save_first:
            await self._io(self.storage.save, hs if hs != durable else None, rd.entries, snapshot)
            self._durable_hs = hs
            self.stats["saves"] += 1
            self.stats["entries_saved"] += len(rd.entries)
        elif hs != durable and not plan.save_commit_after_apply:
            self.stats["deferred_commit_saves"] += 1  # written with the next save
        if not plan.resolve_first:
            self._send(plan.late)
        if snapshot is not None and snapshot.meta.index > self._applied:
            self.machine.restore(snapshot.data)
            self._applied = self._snap_index = snapshot.meta.index
        self._apply(rd.committed_entries)
        for rs in rd.read_states:
            fut = self._read_waiters.get(rs.ctx)
            if fut is not None:
                heapq.heappush(self._read_heap, (rs.index, next(self._heap_seq), fut))
        self._release_reads()
        if plan.save_commit_after_apply:
            await self._io(self.storage.save, hs, (), None)
            self._durable_hs = hs
            self.stats["commit_saves"] += 1
        if plan.resolve_first:
            self._send(plan.late)
        self.core.advance(rd)
        for fut, ours in self._conf_applied:
            if not fut.done():
                if ours:
                    fut.set_result(None)
                else:
                    fut.set_exception(ProposalDropped("replaced by another leader"))
        self._conf_applied.clear()
        if self.guard is not None:
            if self._captured:
                await self._write_captured()
        elif self._applied - self._snap_index >= self.config.snapshot_every:
            await self._snapshot()

    def _send(self, messages: Iterable[Message]) -> None:
        if self.transport is None:
            return
        guard = self.guard
        for m in messages:
            if guard is not None and m.type is MsgType.SNAPSHOT and m.snapshot is not None:
                sealed = self._seal_snapshot(guard, m)
                if sealed is None:
                    continue
                m = sealed
            self.transport.send(m)

    def _seal_snapshot(self, guard: SnapshotGuard, m: Message) -> Message | None:
        """The guard certifies an outgoing snapshot; None: not certifiable yet (the
        message is dropped; the core sends it again after its snapshot timeout)."""
        snap = m.snapshot
        assert snap is not None
        sealed = guard.seal(snap.meta.index, snap.data)
        if sealed is None:
            self.stats["snapshot_unsealed"] += 1
            log.warning(
                "snapshot at %d to node %d is not certified yet: not sent", snap.meta.index, m.to
            )
            return None
        self.stats["snapshots_sealed"] += 1
        return dataclasses.replace(m, snapshot=Snapshot(snap.meta, sealed))

    async def _io(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a storage write: a leader's in the I/O thread, a follower's inline.

        While a leader fsyncs, the loop keeps parsing client requests (the next
        batch). A follower has nothing else to do meanwhile, and the thread
        hop costs it more latency than it overlaps.
        """
        t = time.perf_counter_ns()
        if self.config.leader_io_thread and self.core.role is Role.LEADER:
            await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        else:
            fn(*args)
        self.stats["io_us"] += (time.perf_counter_ns() - t) // 1000

    def _apply(self, entries: Any) -> None:
        every = self.config.snapshot_every if self.guard is not None else 0
        conf: SimpleNamespace | None = None  # membership as of the entry being applied
        for e in entries:
            if e.index <= self._applied:
                continue
            if every and conf is None:  # the core applies this Ready's changes at advance()
                cs = self.core.conf_state()
                conf = SimpleNamespace(voters=set(cs.voters), learners=set(cs.learners))
            results: list[tuple[bytes, Outcome]] = []
            if e.type == EntryType.NORMAL and e.data:
                try:
                    results = self.machine.apply(e.index, e.data)
                except MalformedEnvelope as exc:
                    # Deterministic on every replica: a foreign entry is a no-op.
                    log.warning("entry %d is not a runner envelope: %s", e.index, exc)
            elif e.type == EntryType.CONF_CHANGE:
                waiter = self._conf_waiters.pop(e.index, None)
                if waiter is not None:  # resolved after advance(): the core applies it there
                    self._conf_applied.append((waiter[1], waiter[0] == e.data))
                if conf is not None:
                    apply_membership(conf.voters, conf.learners, e.data)  # the core's rule
            self._applied = e.index
            self.stats["applied"] += 1
            if every and e.index % every == 0 and conf is not None:
                # Deterministic snapshot point: every member snapshots the same state here.
                conf_at = ConfState(frozenset(conf.voters), frozenset(conf.learners))
                self._captured.append((e.index, self.machine.snapshot(), conf_at))
            ours = self._by_index.pop(e.index, None)
            if ours is not None and (not results or results[0][0] != ours[0]):
                for tag in ours:  # another leader's entry replaced our batch
                    p = self._pending.get(tag)
                    if p is not None:
                        _settle(p.future, ProposalDropped("entry replaced by another leader"))
            pending = self._pending
            for tag, outcome in results:
                p = pending.get(tag)
                if p is not None and not p.future.done():
                    p.future.set_result(outcome)

    def _release_reads(self) -> None:
        heap = self._read_heap
        while heap and heap[0][0] <= self._applied:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(self._applied)

    async def _write_captured(self) -> None:
        """Write the newest deterministic snapshot of this Ready and hand each one to the
        guard's `on_snapshot` (several if a Ready crossed several multiples)."""
        captured, self._captured = self._captured, []
        index, data, conf = captured[-1]
        if index > self._snap_index:
            await self._snapshot(index, data, conf)
        hook = getattr(self.guard, "on_snapshot", None)
        if hook is not None:
            for i, d, _ in captured:
                hook(i, d)

    async def _snapshot(
        self, index: int | None = None, data: bytes | None = None, conf: ConfState | None = None
    ) -> None:
        if index is None or data is None or conf is None:
            index, data, conf = self._applied, self.machine.snapshot(), self.core.conf_state()
        keep = self.config.keep_entries
        storage = self.storage

        hs, durable = self._latest_hs, self._durable_hs

        def write() -> None:
            if durable.commit < index:  # a restart must not find applied > commit
                storage.save(hs, ())
            storage.create_snapshot(index, conf, data)
            if index - keep > storage.first_index() - 1:
                storage.compact(index - keep)

        await self._io(write)
        self._durable_hs = hs
        self._snap_index = index
        self.stats["snapshots"] += 1

    def _fail_all(self, exc: BaseException) -> None:
        for p in list(self._pending.values()):
            _settle(p.future, exc)
        for fut in list(self._read_waiters.values()):
            _settle(fut, exc)
        for _, fut in self._conf_waiters.values():
            _settle(fut, exc)
        for _, afut in self._admin:
            _settle(afut, exc)
        self._read_heap.clear()


_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT})


@dataclass(frozen=True, slots=True)
class ReadyPlan:
    """How the runner handles one Ready: a pure decision (see `plan_ready`)."""

    early: Sequence[Message]  # sent before the save
    late: Sequence[Message]  # sent after the save
    save_first: bool  # save hard state / entries / snapshot before applying
    save_commit_after_apply: bool  # leader: save a commit-only hard state after applying
    resolve_first: bool  # apply and answer clients before sending `late`


def plan_ready(
    rd: Ready,
    node_id: int,
    is_leader: bool,
    durable: HardState,
    latest: HardState,
    *,
    early_send: bool = True,
    defer_commit: bool = True,
) -> ReadyPlan:
    """Decide the order of one Ready's I/O. Pure; the simulator test runs it.

    - Entries, a snapshot, or a new term or vote: saved (fsync) before
      anything is applied or sent, except what `split_early` lets a leader
      send first.
    - The commit index passed a membership change (`rd.must_sync_commit`):
      saved before anything is applied or sent, by every role (see the core's
      runner contract: forgetting it could strand the remaining voters).
    - Only the commit index moved: nobody fsyncs for that alone (Raft's
      commit index is volatile and recovered from the leader; the runner
      writes it with the next save, before any snapshot and on stop), as etcd
      does. The entries are already durable on a majority, so answering
      clients before a node's *local* commit index is on disk loses nothing.
      `defer_commit=False` makes a leader save it after applying and before
      sending (the more conservative order; 0.4–0.7 ms of sequential p50 in
      paired benchmark runs on 2026-11-26).
    - A leader answers clients before queueing peer frames; a follower
      acknowledges first (the leader waits for it).
    """
    must = (
        bool(rd.entries)
        or (rd.snapshot is not None and not rd.snapshot.is_empty)
        or (latest.term, latest.vote) != (durable.term, durable.vote)
        or (rd.must_sync_commit and latest.commit > durable.commit)
    )
    commit_only = not must and latest != durable
    early, late = split_early(rd, node_id, durable, latest) if early_send else ([], rd.messages)
    return ReadyPlan(
        early=early,
        late=late,
        save_first=must,
        save_commit_after_apply=commit_only and is_leader and not defer_commit,
        resolve_first=is_leader,
    )


def split_early(
    rd: Ready, node_id: int, durable: HardState, latest: HardState
) -> tuple[list[Message], Sequence[Message]]:
    """Split a Ready into messages a leader may send *before* its fsync, and the rest.

    Raft thesis §10.2.1: a leader may replicate entries while it writes them
    to its own disk. The runner relies on three conditions, checked here or
    by the loop:

    - the loop steps nothing into the core until the save returns, so no
      acknowledgement is counted while the leader's own copy is not durable;
    - the term and vote are already durable: otherwise a crash could let this
      node win the same term again after a restart and write a different
      entry at an index it already sent (two entries with one (index, term));
    - the commit index carried by the messages covers no entry of this Ready:
      a leader that is a quorum by itself (one voter, plus learners) commits
      its entries at append time, and must not announce that before they are
      on its disk.

    Only APPEND and HEARTBEAT messages of this node go early; votes, vote
    responses and acknowledgements always wait for the fsync. Checked against
    the deterministic simulator with torn writes in tests/consensus/test_driver.py.
    """
    if (
        not rd.entries
        or (latest.term, latest.vote) != (durable.term, durable.vote)
        or latest.commit >= rd.entries[0].index
    ):
        return [], rd.messages
    early: list[Message] = []
    late: list[Message] = []
    for m in rd.messages:
        (early if m.type in _EARLY and m.frm == node_id else late).append(m)
    return early, late


def _payload_size(m: Message) -> int:
    """Bytes a queued message holds beyond its fixed fields (for the inbox bound)."""
    size = 64 + len(m.context)
    for e in m.entries:
        size += 32 + len(e.data)
    if m.snapshot is not None:
        size += len(m.snapshot.data)
    return size


def _settle(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _role_name(role: Any) -> str:
    name = getattr(role, "name", None)
    return str(name if name is not None else role).lower()


# --- assembly ----------------------------------------------------------------


def write_cluster_certs(directory: Path, node_ids: list[int]) -> None:
    """Write a CA and one mTLS certificate per node into `directory`."""
    from . import certs

    certs.write_cluster(directory, node_ids)


async def open_node(
    *,
    node_id: int,
    peers: Mapping[int, tuple[str, int]],
    data_dir: Path,
    cert_dir: Path | None = None,
    machine: StateMachine,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    config: DriverConfig | None = None,
    join: bool = False,
    max_frame: int | None = None,
    snapshot_guard: SnapshotGuard | None = None,
) -> Driver:
    """Open durable storage, start the mTLS transport and the runner for one node.

    `peers` maps every node id (this one included) to its Raft address; unless
    `join`, they are also the founding voters. A joining node starts empty and
    waits to be added by the leader (`Driver.change_membership`).
    `snapshot_guard` authenticates snapshots (see `SnapshotGuard`). TLS: the
    (server, client) contexts in `tls_contexts`, or those built from the files
    of `cert_dir` (`certs.write_cluster`); certificates must name `node-<id>`.
    """
    from . import tls
    from .filestore import FileStorage
    from .transport import Transport

    if node_id not in peers:
        raise ValueError(f"node {node_id} is not in peers")
    if max_frame is not None:
        # An APPEND carries at least one entry and up to max_append_bytes of them:
        # both must fit a frame with room for the framing, or followers starve.
        cfg = config or DriverConfig()
        room = max_frame // 2
        config = dataclasses.replace(
            cfg,
            max_entry_bytes=min(cfg.max_entry_bytes, room),
            max_append_bytes=min(cfg.max_append_bytes, room),
        )
    storage = FileStorage(data_dir)
    voters = () if join else tuple(peers)
    driver = Driver(
        node_id, storage, machine, voters=voters, config=config, snapshot_guard=snapshot_guard
    )
    if tls_contexts is not None:
        server_ctx, client_ctx = tls_contexts
    elif cert_dir is not None:
        server_ctx, client_ctx = tls.contexts_from_dir(cert_dir, node_id)
    else:
        raise ValueError("open_node needs cert_dir or tls_contexts")
    driver.transport = Transport(
        node_id,
        peers[node_id],
        {i: a for i, a in peers.items() if i != node_id},
        server_ctx,
        client_ctx,
        driver.deliver,
        **({} if max_frame is None else {"max_frame": max_frame}),
        spool_dir=data_dir / "snap-incoming",
    )
    await driver.start()
    return driver
