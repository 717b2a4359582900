"""Exactly-once proposals: client sessions kept in the replicated state.

Every log entry the runner writes is a *batch* of proposals (everything that
queued up during the previous fsync, up to `MAX_BATCH` and the entry size
bound): each is the application command plus an optional client session
`(client_id, seq)` and a runner-local `tag` (how the proposing node finds its
own proposal again). Proposals of a batch are applied in order. When a
committed proposal carries a session, `SessionTable` decides, identically on
every replica:

- `seq` greater than the client's last one: apply the command, remember the
  result (only the last result per client is kept);
- `seq` equal to the last one: a retry; do not apply again, return the
  remembered result (if the command differs from the first one, that is a
  client bug and the retry gets an error result instead);
- `seq` lower: the client has moved on; the retry gets a `stale` error.

So a client must have at most one request in flight per client id, and a retry
after a timeout (an unknown outcome) is always safe.

The table is bounded without clocks: a client is forgotten once `window`
log entries have been applied since its last request, and beyond
`max_sessions` clients the least recently used one goes. Both depend only on
the log, so every replica expires the same clients at the same entry,
including after a restart from a snapshot. A retry that arrives after its
session expired is applied as new: callers must retry within the window
(the default, 10 000 entries, is far longer than any client timeout at the
rates this runner reaches).

The table travels inside every snapshot (`ReplicatedMachine.snapshot`), so it
survives restarts and leader changes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from .statemachine import StateMachine

ENVELOPE_VERSION = 1
SNAPSHOT_VERSION = 1
MAX_CLIENT_ID = 64
MAX_TAG = 32
MAX_SEQ = 2**63 - 1
DEFAULT_WINDOW = 10_000
MAX_BATCH = 4096  # proposals per log entry
MAX_SESSIONS = 100_000  # hard cap on remembered clients (least recently used go first)

_DIGEST_PERSON = b"consensus.sess1"  # blake2b personalisation: domain separation


class SessionError(Exception):
    """Base class of the errors a session-checked proposal can end with."""


class StaleRequest(SessionError):
    """The client already issued a newer sequence number; this request's result is gone."""


class SequenceReused(SessionError):
    """The same (client id, seq) came with a different command."""


class MalformedEnvelope(ValueError):
    """A log entry or snapshot is not a well-formed runner envelope."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """One log entry as the runner writes it. `client_id == b""` means no session."""

    payload: bytes
    tag: bytes = b""
    client_id: bytes = b""
    seq: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise TypeError("payload must be bytes")
        if not isinstance(self.client_id, bytes) or len(self.client_id) > MAX_CLIENT_ID:
            raise ValueError(f"client id must be bytes of at most {MAX_CLIENT_ID}")
        if not isinstance(self.tag, bytes) or len(self.tag) > MAX_TAG:
            raise ValueError(f"tag must be bytes of at most {MAX_TAG}")
        if type(self.seq) is not int or not 0 <= self.seq <= MAX_SEQ:
            raise ValueError("seq must be an int in [0, 2**63)")
        if self.client_id and self.seq == 0:
            raise ValueError("a session proposal needs seq >= 1")


def _row(p: Proposal) -> list[object]:
    return [p.client_id, p.seq, p.tag, p.payload]


def encode_proposal(p: Proposal) -> bytes:
    """One proposal as one log entry (a batch of one)."""
    return msgpack.packb([ENVELOPE_VERSION, [_row(p)]])


def encode_batch(rows: Sequence[list[object]]) -> bytes:
    """Several proposals as one log entry; `rows` come from `proposal_row`."""
    return msgpack.packb([ENVELOPE_VERSION, rows])


def proposal_row(p: Proposal) -> tuple[list[object], int]:
    """The batch row of `p` and its encoded size (to bound a batch's bytes)."""
    row = _row(p)
    return row, len(p.payload) + len(p.client_id) + len(p.tag) + 24


def decode_batch(data: bytes, max_bytes: int) -> list[Proposal]:
    """Parse and schema-check one log entry written by the runner."""
    if len(data) > max_bytes:
        raise MalformedEnvelope("envelope too large")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedEnvelope(f"undecodable envelope: {exc.__class__.__name__}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == ENVELOPE_VERSION):
        raise MalformedEnvelope("not a version-1 envelope")
    rows = obj[1]
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_BATCH:
        raise MalformedEnvelope(f"a batch holds 1..{MAX_BATCH} proposals")
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            raise MalformedEnvelope("bad proposal row")
        client_id, seq, tag, payload = row
        if not (
            isinstance(client_id, bytes) and isinstance(tag, bytes) and isinstance(payload, bytes)
        ):
            raise MalformedEnvelope("envelope field of the wrong type")
        try:
            out.append(Proposal(payload=payload, tag=tag, client_id=client_id, seq=seq))
        except (TypeError, ValueError) as exc:
            raise MalformedEnvelope(str(exc)) from None
    return out


def decode_proposal(data: bytes, max_bytes: int) -> Proposal:
    """The single proposal of an entry written by `encode_proposal`."""
    batch = decode_batch(data, max_bytes)
    if len(batch) != 1:
        raise MalformedEnvelope("expected a batch of one")
    return batch[0]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one envelope produced: a result, or a session error name."""

    result: bytes = b""
    error: str = ""  # "", "stale", "seq-reused"
    duplicate: bool = False

    def unwrap(self) -> bytes:
        if self.error == "stale":
            raise StaleRequest("a newer request of this client was already applied")
        if self.error == "seq-reused":
            raise SequenceReused("this (client id, seq) was used for a different command")
        return self.result


@dataclass(slots=True)
class _Session:
    seq: int
    digest: bytes
    outcome: Outcome
    last_index: int


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16, person=_DIGEST_PERSON).digest()


class SessionTable:
    """Per-client last sequence and result; pure and deterministic."""

    def __init__(self, window: int = DEFAULT_WINDOW, max_sessions: int = MAX_SESSIONS) -> None:
        if window < 1 or max_sessions < 1:
            raise ValueError("window and max_sessions must be >= 1")
        self.window = window
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()  # oldest touch first

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, index: int) -> None:
        """Forget clients idle for `window` entries as of log `index`."""
        s = self._sessions
        while s:
            cid, sess = next(iter(s.items()))
            if sess.last_index + self.window > index:
                break
            del s[cid]

    def check(self, client_id: bytes, seq: int, payload: bytes) -> Outcome | None:
        """The outcome to return without applying, or None if the command must run."""
        sess = self._sessions.get(client_id)
        if sess is None or seq > sess.seq:
            return None
        if seq < sess.seq:
            return Outcome(error="stale")
        if not hmac.compare_digest(sess.digest, _digest(payload)):
            return Outcome(error="seq-reused")
        return Outcome(result=sess.outcome.result, error=sess.outcome.error, duplicate=True)

    def record(
        self, index: int, client_id: bytes, seq: int, payload: bytes, outcome: Outcome
    ) -> None:
        s = self._sessions
        s.pop(client_id, None)
        s[client_id] = _Session(seq, _digest(payload), outcome, index)
        if len(s) > self.max_sessions:  # the least recently used, identically everywhere
            del s[next(iter(s))]

    def to_wire(self) -> list:
        return [
            [cid, s.seq, s.digest, s.outcome.result, s.outcome.error, s.last_index]
            for cid, s in self._sessions.items()
        ]

    @classmethod
    def from_wire(cls, obj: object, window: int, max_sessions: int = MAX_SESSIONS) -> SessionTable:
        table = cls(window, max_sessions)
        if not isinstance(obj, list) or len(obj) > table.max_sessions:
            raise MalformedEnvelope("session table must be a list of at most max_sessions")
        last = 0
        for row in obj:
            if not (isinstance(row, list) and len(row) == 6):
                raise MalformedEnvelope("bad session row")
            cid, seq, digest, result, error, last_index = row
            if not (
                isinstance(cid, bytes)
                and len(cid) <= MAX_CLIENT_ID
                and type(seq) is int
                and 1 <= seq <= MAX_SEQ
                and isinstance(digest, bytes)
                and len(digest) == 16
                and isinstance(result, bytes)
                and error in ("", "stale", "seq-reused")
                and type(last_index) is int
                and last_index >= last
            ):
                raise MalformedEnvelope("bad session row")
            last = last_index
            table._sessions[cid] = _Session(seq, digest, Outcome(result, error), last_index)
        return table


class ReplicatedMachine:
    """The user's state machine behind the session table: what the runner applies.

    Snapshots hold both the session table and the user's snapshot, so a node
    restored from a snapshot deduplicates exactly like one that replayed the log.
    """

    def __init__(
        self,
        app: StateMachine,
        window: int = DEFAULT_WINDOW,
        max_entry_bytes: int = 1 << 20,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.app = app
        self.window = window
        self.max_sessions = max_sessions
        self.max_entry_bytes = max_entry_bytes
        self.sessions = SessionTable(window, max_sessions)

    def apply(self, index: int, data: bytes) -> list[tuple[bytes, Outcome]]:
        """Apply the batch committed at `index`, in order; returns (tag, outcome) each."""
        batch = decode_batch(data, self.max_entry_bytes)
        self.sessions.expire(index)
        return [(p.tag, self._apply_one(index, p)) for p in batch]

    def _apply_one(self, index: int, p: Proposal) -> Outcome:
        if not p.client_id:
            return Outcome(result=self.app.apply(p.payload))
        cached = self.sessions.check(p.client_id, p.seq, p.payload)
        if cached is not None:
            return cached
        outcome = Outcome(result=self.app.apply(p.payload))
        self.sessions.record(index, p.client_id, p.seq, p.payload, outcome)
        return outcome

    def snapshot(self) -> bytes:
        return msgpack.packb([SNAPSHOT_VERSION, self.sessions.to_wire(), self.app.snapshot()])

    def restore(self, data: bytes) -> None:
        if not data:  # an empty snapshot: the initial state
            self.sessions = SessionTable(self.window, self.max_sessions)
            return
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:
            raise MalformedEnvelope(f"undecodable snapshot: {exc.__class__.__name__}") from None
        if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == SNAPSHOT_VERSION):
            raise MalformedEnvelope("not a version-1 runner snapshot")
        if not isinstance(obj[2], bytes):
            raise MalformedEnvelope("application snapshot must be bytes")
        sessions = SessionTable.from_wire(obj[1], self.window, self.max_sessions)
        self.app.restore(obj[2])
        self.sessions = sessions
