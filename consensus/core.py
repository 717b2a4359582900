"""A pure Raft core: messages and ticks in; log writes, messages and commits out.

The core does no I/O and keeps no clock: time is `tick()`, randomness is a
private `random.Random` seeded from `Config.seed`, and everything it wants done
is handed to the caller as a `Ready`. It follows the Raft paper and thesis
(pre-vote, check-quorum, ReadIndex, leadership transfer, one-at-a-time
membership changes with learners) in the shape of etcd's raft.

Runner contract (one loop, single-threaded with respect to the core):

    while core.has_ready():
        rd = core.ready()
        storage.save(rd.hard_state, rd.entries, rd.snapshot)   # fsync before anything else
        send(rd.messages)                                       # only after the save returned
        if rd.snapshot: restore the state machine from rd.snapshot.data
        for e in rd.committed_entries: apply e (skip CONF_CHANGE: the core applies those)
        for rs in rd.read_states: serve read rs.ctx once applied >= rs.index
        core.advance(rd)

- `tick()` is called at a fixed rate; `Config.election_tick` ticks make one
  election timeout, `heartbeat_tick` ticks one heartbeat interval.
- `step(msg)` takes every message addressed to this node, in any order, any
  number of times (the network may drop, duplicate and reorder).
- Only one Ready is outstanding: `has_ready()` is False and `ready()` raises
  until the previous Ready was `advance()`d. `step`, `tick`, `propose` may be
  called while a Ready is outstanding; their effects appear in the next one.
- Committed entries may include entries of the same Ready's `entries`; they
  must be persisted first (the order above guarantees it).
- Membership changes take effect when `advance()` passes their committed
  CONF_CHANGE entry. A leader that removes or demotes itself steps down.
- A runner may skip the fsync of a hard state whose only change is the commit
  index (Raft's commit index is volatile), *except* when `rd.must_sync_commit`
  is set: the new commit index covers a CONF_CHANGE entry. Membership is
  applied at commit, so a node that forgot such a commit after a crash would
  fall back to the old membership, which may need a node that has already
  left (a removed leader hands over on the strength of a peer's reported
  commit; in a two-voter cluster the survivor would then wait for the departed
  node's vote forever).
- A proposal or read may be silently lost if leadership changes: callers keep a
  timeout and retry (with an idempotency key for writes).
- After a restart, build a new RaftCore over the same storage with
  `Config.applied` = the index the state machine was restored to (default: the
  storage snapshot's index); the core re-emits committed entries after it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from . import quorum
from .log import RaftInvariantError, RaftLog
from .messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Snapshot,
    decode_conf_change,
    encode_conf_change,
)
from .progress import Inflights, Progress, ProgressState
from .readonly import ReadOnly
from .storage import Compacted, Storage, Unavailable

__all__ = [
    "CAMPAIGN_TRANSFER",
    "Config",
    "InvalidMessage",
    "NotLeader",
    "ProgressStatus",
    "ProposalDropped",
    "RaftCore",
    "RaftInvariantError",
    "ReadState",
    "Ready",
    "Role",
    "SoftState",
    "Status",
    "TermOutOfRange",
    "apply_membership",
    "bootstrap_log",
]

CAMPAIGN_TRANSFER = b"raft/campaign-transfer"  # vote context: leadership transfer, skip lease
MAX_CTX_BYTES = 1024
MAX_PENDING_READS = 4096
# Terms are bounded so that one member cannot exhaust them (docs/consensus.md,
# "A hostile member"). MAX_TERM leaves 2^62 terms of room below the wire limit
# (2^63 - 1): a node at MAX_TERM can still encode the pre-vote for MAX_TERM + 1,
# and it never campaigns past it. One message may move a node's term forward by
# at most MAX_TERM_STEP, unless at least two other voters (or every other voter
# of a smaller cluster) have each claimed a term at least that high: one hostile
# member alone then needs 2^62 / 2^16 = 2^46 accepted messages to use the room up.
MAX_TERM = 1 << 62
MAX_TERM_STEP = 1 << 16


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class NotLeader(Exception):
    """This node cannot take the request; `leader_id` is the known leader (0 = unknown)."""

    def __init__(self, leader_id: int) -> None:
        super().__init__(f"not the leader (leader: {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDropped(Exception):
    """The leader refused the proposal (transfer in progress, conf change pending, ...)."""


class InvalidMessage(ValueError):
    """A message failed validation and was not applied."""


class TermOutOfRange(InvalidMessage):
    """A message's term is beyond MAX_TERM, or further ahead than one message may
    move this node's term without other voters vouching for it (dropped, counted)."""


@dataclass(frozen=True, slots=True)
class Config:
    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_size_per_msg: int = 1 << 20  # bytes of entry data per APPEND
    max_inflight_msgs: int = 256  # unacknowledged APPENDs per follower
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0
    seed: int = 0
    max_entry_bytes: int = 1 << 20  # largest accepted proposal
    max_committed_bytes_per_ready: int = 64 << 20

    def __post_init__(self) -> None:
        if not 0 < self.id < 2**63:
            raise ValueError("id must be a positive int")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must exceed heartbeat_tick")
        if self.max_inflight_msgs <= 0 or self.max_size_per_msg <= 0:
            raise ValueError("max_inflight_msgs and max_size_per_msg must be positive")
        if self.applied < 0 or self.max_entry_bytes <= 0:
            raise ValueError("invalid applied / max_entry_bytes")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine applied `index`."""

    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: int
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    soft_state: SoftState | None = None
    must_sync_commit: bool = False  # hard_state.commit covers a CONF_CHANGE entry


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    role: Role
    leader: int
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    progress: Mapping[int, ProgressStatus] = field(default_factory=dict)  # leader only
    lead_transferee: int = NONE


def bootstrap_log(voters: frozenset[int] | set[int]) -> tuple[HardState, list[Entry]]:
    """Initial log for a brand-new cluster: one committed ADD_VOTER entry per voter.

    Every founding node must be bootstrapped with the same set. Nodes added later
    start empty and learn the membership by replaying this log (or a snapshot).
    """
    ids = sorted(voters)
    if not ids or any(not 0 < i < 2**63 for i in ids):
        raise ValueError("bootstrap needs at least one positive node id")
    add = ConfChangeType.ADD_VOTER
    entries = [
        Entry(1, n, EntryType.CONF_CHANGE, encode_conf_change(ConfChange(add, i)))
        for n, i in enumerate(ids, start=1)
    ]
    return HardState(term=1, vote=NONE, commit=len(entries)), entries


def apply_membership(voters: set[int], learners: set[int], data: bytes) -> bool:
    """Apply one CONF_CHANGE entry's data to the sets in place; False if it is a
    no-op (malformed, or it would leave no voter). The core's own rule: a runner
    that must know membership at an entry (deterministic snapshots) uses it too."""
    try:
        cc = decode_conf_change(data)
    except ValueError:
        return False  # deterministic on every node: a malformed change is a no-op
    nid = cc.node_id
    if cc.type is ConfChangeType.ADD_VOTER:
        learners.discard(nid)
        voters.add(nid)
    elif cc.type is ConfChangeType.ADD_LEARNER:
        if voters == {nid}:
            return False
        voters.discard(nid)
        learners.add(nid)
    else:
        if voters == {nid}:
            return False
        voters.discard(nid)
        learners.discard(nid)
    return True


class RaftCore:
    """One Raft peer. See the module docstring for the runner contract."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.cfg = config
        self.id = config.id
        self._rng = random.Random(config.seed * 1_000_003 + config.id)
        self.log = RaftLog(storage)
        hs, conf = storage.initial_state()
        snap_index = storage.snapshot().meta.index
        if hs.commit > self.log.last_index():
            raise RaftInvariantError(f"hard state commit {hs.commit} beyond the stored log")
        # A snapshot is committed by definition, even if a crash kept the older hard state.
        self.log.committed = max(hs.commit, self.log.first_index() - 1, snap_index)
        applied = max(config.applied, snap_index, self.log.first_index() - 1)
        if applied > self.log.committed:
            raise ValueError(f"config.applied {applied} is beyond commit {self.log.committed}")
        self.log.applied = applied
        self.term = hs.term
        self.vote = hs.vote
        self.voters: set[int] = set(conf.voters)
        self.learners: set[int] = set(conf.learners) - self.voters
        # Membership is as of `applied`: replay conf changes the state machine already has.
        first = self.log.first_index()
        if applied >= first:
            for e in storage.entries(first, applied + 1):
                if e.type is EntryType.CONF_CHANGE:
                    self._apply_membership(e.data)
        self.role = Role.FOLLOWER
        self.lead = NONE
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self._pending_reads: list[tuple[int, bytes]] = []
        self._leaving_at = 0  # leader removed itself: hand over once voters know this commit
        self._peer_commit: dict[int, int] = {}
        self._far_claims: dict[int, int] = {}  # voter -> highest term beyond the step it sent
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._prev_hs = hs
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._outstanding: Ready | None = None
        self._become_follower(self.term, NONE)

    # ------------------------------------------------------------------ API
    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def step(self, m: Message) -> None:
        """Feed one message received from a peer. Raises InvalidMessage if malformed,
        TermOutOfRange if its term is out of bounds (see MAX_TERM_STEP)."""
        self._validate(m)
        if m.term > self.term:
            self._check_term_jump(m)
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.cfg.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.cfg.election_tick
                )
                if not force and in_lease:
                    return  # we heard from a live leader recently: ignore the disruptor
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (
                MsgType.APPEND,
                MsgType.HEARTBEAT,
            ):
                # Tell a stale leader about our term so it steps down.
                self._send(MsgType.APPEND_RESP, m.frm)
            elif m.type in (MsgType.PRE_VOTE, MsgType.VOTE):
                # Raft's Figure 2: a stale vote request is answered with our term, so
                # the candidate catches up. Otherwise a candidate that is behind in
                # term may never hear of it from a voter that no longer sends to it
                # (that voter's membership is older) and both campaign for ever.
                kind = MsgType.PRE_VOTE_RESP if m.type is MsgType.PRE_VOTE else MsgType.VOTE_RESP
                self._send(kind, m.frm, reject=True)
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def propose(self, data: bytes) -> int:
        """Append a command; returns the index it will occupy (at the current term).

        Raises NotLeader or ProposalDropped. Success does not mean it will commit.
        """
        if not isinstance(data, bytes | bytearray):
            raise TypeError("proposal data must be bytes")
        if len(data) > self.cfg.max_entry_bytes:
            raise ValueError("proposal larger than max_entry_bytes")
        self._check_can_propose()
        return self._append_one(EntryType.NORMAL, bytes(data))

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose one membership change; refused while another is unapplied.

        ADD_VOTER only promotes a learner that has caught up to the commit index;
        removing or demoting the last voter, or demoting the leader, is refused.
        """
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped("a membership change is still pending")
        nid = cc.node_id
        if cc.type is ConfChangeType.ADD_VOTER:
            if nid in self.voters:
                raise ProposalDropped(f"{nid} is already a voter")
            if nid not in self.learners:
                raise ProposalDropped(f"add {nid} as a learner first")
            if self.progress[nid].match < self.log.committed:
                raise ProposalDropped(f"learner {nid} has not caught up yet")
        elif cc.type is ConfChangeType.ADD_LEARNER:
            if nid in self.learners:
                raise ProposalDropped(f"{nid} is already a learner")
            if nid == self.id:
                raise ProposalDropped("transfer leadership before demoting the leader")
            if nid in self.voters and len(self.voters) == 1:
                raise ProposalDropped("cannot demote the last voter")
        else:
            if nid not in self.voters and nid not in self.learners:
                raise ProposalDropped(f"{nid} is not a member")
            if self.voters == {nid}:
                raise ProposalDropped("cannot remove the last voter")
        index = self._append_one(EntryType.CONF_CHANGE, encode_conf_change(cc))
        self.pending_conf_index = index
        if nid == self.id:
            self._self_removal_at = index
        return index

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; a ReadState(ctx, index) follows in a Ready.

        `ctx` must be unique across the cluster (e.g. node id + counter). Raises
        NotLeader if no leader is known; the request may also be silently lost.
        """
        if not isinstance(ctx, bytes) or not 0 < len(ctx) <= MAX_CTX_BYTES:
            raise ValueError("read ctx must be 1..1024 bytes")
        if self.role is Role.LEADER:
            if len(self.read_only) + len(self._pending_reads) >= MAX_PENDING_READS:
                raise ProposalDropped("too many reads waiting for confirmation")
            self._handle_read_index(self.id, ctx)
        elif self.lead == NONE:
            raise NotLeader(NONE)
        else:
            self._send(MsgType.READ_INDEX, self.lead, context=ctx)

    def transfer_leadership(self, target: int) -> None:
        """Hand leadership to voter `target` once its log is caught up (TIMEOUT_NOW)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if target == self.id:
            return
        if target not in self.voters:
            raise ValueError(f"{target} is not a voter")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        if self.progress[target].match == self.log.last_index():
            self._send(MsgType.TIMEOUT_NOW, target)
        else:
            self._send_append(target)

    def campaign(self) -> None:
        """Start an election now (as if the election timer fired)."""
        self._hup(transfer=False)

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        return bool(
            self._msgs
            or self._read_states
            or self.log.unstable
            or self.log.unstable_snapshot is not None
            or self._hard_state() != self._prev_hs
            or self._soft_state() != self._prev_soft
            or self.log.has_next_committed()
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise RuntimeError("advance() the previous Ready before asking for another")
        hs = self._hard_state()
        soft = self._soft_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hs else None,
            entries=tuple(self.log.unstable),
            snapshot=self.log.unstable_snapshot,
            messages=tuple(self._msgs),
            committed_entries=tuple(self.log.next_committed(self.cfg.max_committed_bytes_per_ready)),
            read_states=tuple(self._read_states),
            soft_state=soft if soft != self._prev_soft else None,
            must_sync_commit=self._conf_change_in(self._prev_hs.commit, hs.commit),
        )
        self._msgs = []
        self._read_states = []
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runner finished `rd` (persisted, sent, applied)."""
        if rd is not self._outstanding:
            raise RuntimeError("advance() must be given the outstanding Ready")
        self._outstanding = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.meta.index)
            if rd.snapshot.meta.index > self.log.applied:
                self.log.applied = rd.snapshot.meta.index
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for e in rd.committed_entries:
            self.log.applied_to(e.index)
            if e.type is EntryType.CONF_CHANGE:
                self._apply_conf_change(e.data)

    def status(self) -> Status:
        progress: dict[int, ProgressStatus] = {}
        if self.role is Role.LEADER:
            progress = {
                i: ProgressStatus(p.match, p.next, p.state, p.is_learner, p.recent_active)
                for i, p in self.progress.items()
            }
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            role=self.role,
            leader=self.lead,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            conf=self.conf_state(),
            progress=progress,
            lead_transferee=self.lead_transferee,
        )

    def conf_state(self) -> ConfState:
        """Membership as of the applied index (record it with a snapshot)."""
        return ConfState(frozenset(self.voters), frozenset(self.learners))

    # ------------------------------------------------------------ internals
    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _send(self, kind: MsgType, to: int, **kw: object) -> None:
        kw.setdefault("term", self.term)
        self._msgs.append(Message(type=kind, to=to, frm=self.id, **kw))  # type: ignore[arg-type]

    def _validate(self, m: Message) -> None:
        if not isinstance(m, Message):
            raise InvalidMessage("not a Message")
        try:
            MsgType(m.type)
        except ValueError:
            raise InvalidMessage(f"unknown message type {m.type!r}") from None
        if m.to != self.id or m.frm <= 0 or m.frm == self.id:
            raise InvalidMessage("bad sender or recipient")
        if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0:
            raise InvalidMessage("negative field")
        if len(m.context) > MAX_CTX_BYTES:
            raise InvalidMessage("context too long")
        if m.entries:
            if m.type is not MsgType.APPEND:
                raise InvalidMessage("entries on a non-append message")
            prev_term = m.log_term
            for i, e in enumerate(m.entries):
                if e.index != m.index + 1 + i or e.term < prev_term or e.term > m.term:
                    raise InvalidMessage("entries are not a contiguous run after (index, log_term)")
                prev_term = e.term
        if m.type is MsgType.SNAPSHOT and (
            m.snapshot is None or m.snapshot.is_empty or m.snapshot.meta.term > m.term
        ):
            raise InvalidMessage("snapshot message without a valid snapshot")

    def _check_term_jump(self, m: Message) -> None:
        """Refuse a term that leaves no room to grow, or that jumps further than one
        member may move us alone. A longer jump is taken only when it is vouched for:
        at least two other voters (every other voter if there are fewer) each sent a
        term at least as high, so one hostile member cannot make it by itself, while
        a node that missed more than MAX_TERM_STEP elections still rejoins."""
        if m.term > MAX_TERM:
            raise TermOutOfRange(f"term {m.term} from {m.frm} is beyond MAX_TERM")
        if m.term - self.term <= MAX_TERM_STEP:
            return
        others = self.voters - {self.id}
        if m.frm in others and m.term > self._far_claims.get(m.frm, 0):
            self._far_claims[m.frm] = m.term
        # Claims at or below the current term are moot: drop them (bounded by voters).
        self._far_claims = {
            n: t for n, t in self._far_claims.items() if n in others and t > self.term
        }
        need = min(2, len(others))
        claims = sorted(self._far_claims.values(), reverse=True)
        if need and len(claims) >= need and claims[need - 1] >= m.term:
            return
        raise TermOutOfRange(
            f"term {m.term} from {m.frm} is {m.term - self.term} ahead of ours ({self.term}); "
            f"at most {MAX_TERM_STEP} without another voter vouching for it"
        )

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _peers(self) -> list[int]:
        return sorted(i for i in self.progress if i != self.id)

    # --- role changes ----------------------------------------------------------
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self._rng.randrange(
            self.cfg.election_tick
        )
        self.lead_transferee = NONE
        self.votes = {}
        last = self.log.last_index()
        self.progress = {}
        for nid in sorted(self.voters | self.learners):
            self.progress[nid] = self._new_progress(nid, last)
        self.pending_conf_index = 0
        self.read_only = ReadOnly()
        self._pending_reads = []
        self._leaving_at = 0
        self._self_removal_at = 0  # index of our own pending removal, while we lead
        self._peer_commit: dict[int, int] = {}

    def _new_progress(self, nid: int, last: int) -> Progress:
        return Progress(
            match=last if nid == self.id else 0,
            next=last + 1,
            inflights=Inflights(self.cfg.max_inflight_msgs),
            is_learner=nid in self.learners,
        )

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote: a partitioned node cannot inflate terms.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        me = self.progress.get(self.id)
        if me is not None:
            me.become_replicate()
        for pr in self.progress.values():
            pr.recent_active = True
        # Raft §8: commit an entry of our own term at once; no membership change
        # may be proposed until it is applied (it fixes the single-server bug).
        self.pending_conf_index = self._append_one(EntryType.NORMAL, b"")

    # --- elections -------------------------------------------------------------
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
            self.lead_transferee = NONE  # a transfer that did not finish in time is abandoned
        for nid, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.election_tick:
                    pr.become_probe()  # the snapshot was probably lost: try again
                    self._send_append(nid)
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        active = {nid for nid, pr in self.progress.items() if nid == self.id or pr.recent_active}
        for nid, pr in self.progress.items():
            if nid != self.id:
                pr.recent_active = False
        return quorum.has_quorum(self.voters, active)

    def _conf_change_in(self, after: int, upto: int) -> bool:
        """Is there a CONF_CHANGE entry in (after, upto]? True when unsure (compacted)."""
        if upto <= after:
            return False
        try:
            ents = self.log.slice(after + 1, upto + 1)
        except (Compacted, Unavailable):
            return True
        return any(e.type is EntryType.CONF_CHANGE for e in ents)

    def _has_unapplied_conf_changes(self) -> bool:
        # Entries below the first index are in the snapshot, hence applied.
        after = max(self.log.applied, self.log.first_index() - 1)
        return self._conf_change_in(after, self.log.committed)

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.term >= MAX_TERM:
            return  # no room left: only a leader of MAX_TERM can serve (see MAX_TERM)
        if self._has_unapplied_conf_changes():
            return  # campaigning under a stale membership could split the cluster
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            vote_term, kind = self.term + 1, MsgType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term, kind = self.term, MsgType.VOTE
        if self._poll(self.id, True) is quorum.VoteResult.WON:
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self._become_leader()
            return
        last = self.log.last_index()
        last_term = self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for nid in sorted(self.voters):
            if nid != self.id:
                self._send(kind, nid, term=vote_term, index=last, log_term=last_term, context=ctx)

    def _poll(self, nid: int, granted: bool) -> quorum.VoteResult:
        self.votes.setdefault(nid, granted)
        return quorum.vote_result(self.voters, self.votes)

    def _handle_vote_request(self, m: Message) -> None:
        resp = MsgType.PRE_VOTE_RESP if m.type is MsgType.PRE_VOTE else MsgType.VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is MsgType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(resp, m.frm, term=m.term)
            if m.type is MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(resp, m.frm, reject=True)

    # --- per-role message handling --------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self.election_elapsed = 0
            self.lead = m.frm
            if t is MsgType.APPEND:
                self._handle_append(m)
            elif t is MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t is MsgType.READ_INDEX_RESP and m.context:
            self._read_states.append(ReadState(m.context, m.index))
        # READ_INDEX at a follower (stale view of the leader) is dropped: the asker retries.

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
            return
        mine = MsgType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t is not mine:
            return
        result = self._poll(m.frm, not m.reject)
        if result is quorum.VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()  # appends the no-op and broadcasts it
        elif result is quorum.VoteResult.LOST:
            self._become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MsgType.READ_INDEX:
            if m.context:
                self._handle_read_index(m.frm, m.context)
            return
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.commit > self._peer_commit.get(m.frm, 0):
            self._peer_commit[m.frm] = m.commit
        if t is MsgType.APPEND_RESP:
            pr.recent_active = True
            self._handle_append_resp(m, pr)
        elif t is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                acks = self.read_only.recv_ack(m.frm, m.context)
                if acks is not None and quorum.has_quorum(self.voters, acks):
                    for req in self.read_only.advance(m.context):
                        self._respond_read(req.frm, req.ctx, req.index)
        if self._leaving_at:
            self._maybe_finish_leaving()

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # The follower's entry at the hint has term log_term: skip to where
                # our log has a term no newer than that.
                next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        old_paused = pr.is_paused()
        probing = pr.state is ProgressState.PROBE
        if not (pr.maybe_update(m.index) or (probing and pr.match == m.index)):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif old_paused:
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(MsgType.TIMEOUT_NOW, m.frm)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(MsgType.APPEND_RESP, m.frm, index=self.log.committed)
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(MsgType.APPEND_RESP, m.frm, index=last_new, commit=self.log.committed)
        else:
            hint, hint_term = self.log.find_conflict_by_term(m.index, m.log_term)
            self._send(
                MsgType.APPEND_RESP,
                m.frm,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(match, commit), so this never passes our matching prefix.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(MsgType.HEARTBEAT_RESP, m.frm, context=m.context, commit=self.log.committed)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None  # checked in _validate
        if self._restore(snap):
            self._send(MsgType.APPEND_RESP, m.frm, index=self.log.last_index())
        else:
            self._send(MsgType.APPEND_RESP, m.frm, index=self.log.committed)

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already have it: fast-forward only
            return False
        self.log.restore(snap)
        self.voters = set(meta.conf.voters)
        self.learners = set(meta.conf.learners) - self.voters
        last = self.log.last_index()
        members = sorted(self.voters | self.learners)
        self.progress = {nid: self._new_progress(nid, last) for nid in members}
        return True

    # --- replication -----------------------------------------------------------
    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")
        if self._leaving_at or self._self_removal_at > self.log.applied:
            # Nothing goes after our own removal: an entry there would make our log
            # longer than the remaining voters', so our vote (needed by their old
            # membership if they lose the removal's commit) would refuse them while
            # we, no longer a voter, never campaign (seeds 207665, 312077).
            raise ProposalDropped("the leader is leaving the cluster")
        if self.id not in self.progress:
            raise ProposalDropped("this node is no longer a member")

    def _append_one(self, kind: EntryType, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(self.term, index, kind, data)])
        self.progress[self.id].maybe_update(index)
        self._maybe_commit()
        self._bcast_append()
        return index

    def _maybe_commit(self) -> bool:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        if self.log.maybe_commit(quorum.committed_index(self.voters, match), self.term):
            self._release_pending_reads()
            return True
        return False

    def _bcast_append(self) -> None:
        for nid in self._peers():
            self._send_append(nid)

    def _bcast_heartbeat(self, ctx: bytes | None = None) -> None:
        if ctx is None:
            ctx = self.read_only.last_pending_ctx()
        for nid in self._peers():
            commit = min(self.progress[nid].match, self.log.committed)
            self._send(MsgType.HEARTBEAT, nid, commit=commit, context=ctx)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.progress.get(to)
        if pr is None or pr.is_paused():
            return False
        try:
            prev_term = self.log.term(pr.next - 1)
            ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        except Compacted:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        self._send(
            MsgType.APPEND,
            to,
            index=pr.next - 1,
            log_term=prev_term,
            entries=tuple(ents),
            commit=self.log.committed,
        )
        if ents:
            pr.sent_entries(ents[-1].index)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self.log.snapshot()
        if snap.is_empty:
            return False
        self._send(MsgType.SNAPSHOT, to, snapshot=snap)
        pr.become_snapshot(snap.meta.index)
        return True

    # --- reads -----------------------------------------------------------------
    def _committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _handle_read_index(self, frm: int, ctx: bytes) -> None:
        if self.voters == {self.id}:
            self._respond_read(frm, ctx, self.log.committed)
            return
        if len(self.read_only) + len(self._pending_reads) >= MAX_PENDING_READS:
            return  # bounded: the asker times out and retries
        if not self._committed_in_current_term():
            # Our commit index may lag the cluster's until our no-op commits (§6.4 step 1).
            self._pending_reads.append((frm, ctx))
            return
        if self.read_only.add(self.log.committed, ctx, frm):
            self.read_only.recv_ack(self.id, ctx)
            self._bcast_heartbeat(ctx)

    def _release_pending_reads(self) -> None:
        if not self._pending_reads or not self._committed_in_current_term():
            return
        pending, self._pending_reads = self._pending_reads, []
        for frm, ctx in pending:
            self._handle_read_index(frm, ctx)

    def _respond_read(self, frm: int, ctx: bytes, index: int) -> None:
        if frm == self.id:
            self._read_states.append(ReadState(ctx, index))
        else:
            self._send(MsgType.READ_INDEX_RESP, frm, index=index, context=ctx)

    # --- membership ------------------------------------------------------------
    def _maybe_finish_leaving(self) -> None:
        # One remaining voter that knows the change committed is enough: it uses the
        # new membership, so it can win a majority of it without us. (Waiting for
        # all of them would hang on any voter that is down.)
        if self.role is not Role.LEADER or not self.voters:
            return
        at = self._leaving_at
        knowers = [v for v in sorted(self.voters) if self._peer_commit.get(v, 0) >= at]
        if not knowers:
            return
        heir = max(knowers, key=lambda v: self.progress[v].match)
        if self.progress[heir].match < self.log.last_index():
            # The heir must hold our whole log first (as in a transfer): entries we
            # appended after the removal would otherwise make our vote refuse it, and
            # an heir that lost the removal's commit in a crash needs our vote.
            self._send_append(heir)
            return
        self._send(MsgType.TIMEOUT_NOW, heir)
        self._become_follower(self.term, NONE)

    def _apply_membership(self, data: bytes) -> bool:
        return apply_membership(self.voters, self.learners, data)

    def _apply_conf_change(self, data: bytes) -> None:
        if not self._apply_membership(data):
            return
        members = self.voters | self.learners
        last = self.log.last_index()
        for nid in list(self.progress):
            if nid not in members:
                del self.progress[nid]
        for nid in sorted(members):
            pr = self.progress.get(nid)
            if pr is None:
                self.progress[nid] = self._new_progress(nid, last)
            else:
                pr.is_learner = nid in self.learners
        if self.role is not Role.LEADER:
            return
        if self.id not in self.voters:
            # Removed or demoted: keep leading (without counting ourselves) until a
            # remaining voter knows the change committed, else they could be left with a
            # membership that still needs us to elect anyone. Then hand over to it.
            if not self._leaving_at:
                self._leaving_at = self.log.committed
                self._bcast_heartbeat()
            self._maybe_finish_leaving()
            return
        if self.lead_transferee not in self.voters:
            self.lead_transferee = NONE
        if self._maybe_commit():
            self._bcast_append()
