"""Raft data types: log entries, hard state, configuration, snapshots, messages.

All immutable. This module is the contract between the pure core
(`consensus.core`), storage (`consensus.storage`, `consensus.filestore`), the
wire codec (`consensus.codec`) and the runner (`consensus.driver`). Node ids are
positive ints; 0 means "none".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NONE = 0


class EntryType(IntEnum):
    NORMAL = 0  # opaque application command (empty data = leader's no-op)
    CONF_CHANGE = 1  # data is an encoded ConfChange


class ConfChangeType(IntEnum):
    ADD_LEARNER = 0  # add a non-voting member (or demote a voter to learner)
    ADD_VOTER = 1  # add a voter or promote a learner
    REMOVE_NODE = 2


class MsgType(IntEnum):
    APPEND = 1  # leader -> follower: entries after (index, log_term), commit
    APPEND_RESP = 2  # follower -> leader: index = last matching, or reject + hint
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5  # term = the term the candidate *would* campaign in
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # leader -> follower: commit (min(match, commit)), context
    HEARTBEAT_RESP = 8  # carries context back (ReadIndex confirmation)
    SNAPSHOT = 9  # leader -> follower: whole snapshot
    TIMEOUT_NOW = 10  # leadership transfer: campaign now, skipping pre-vote
    READ_INDEX = 11  # follower -> leader: context = request ctx
    READ_INDEX_RESP = 12  # leader -> follower: index = read index, context = request ctx


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node_id: int


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        return self.meta.index == 0


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Fields unused by a type keep their defaults.

    `context` is opaque bytes carried by ReadIndex and heartbeats; `reject_hint`
    is the follower's last index (or conflict hint) on a rejected append.
    """

    type: MsgType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


# --- conf change encoding (additive) -----------------------------------------
# A CONF_CHANGE entry's data. Fixed layout so every node decodes it identically:
# context tag, one type byte, the node id as 8 big-endian bytes.
_CC_TAG = b"raft-cc/v1"
_CC_LEN = len(_CC_TAG) + 1 + 8


def encode_conf_change(cc: ConfChange) -> bytes:
    """Encode a ConfChange for a CONF_CHANGE entry."""
    if not 0 < cc.node_id < 2**63:
        raise ValueError("conf change node id out of range")
    return _CC_TAG + bytes([int(ConfChangeType(cc.type))]) + cc.node_id.to_bytes(8, "big")


def decode_conf_change(data: bytes) -> ConfChange:
    """Decode a CONF_CHANGE entry's data; raises ValueError on anything malformed."""
    if len(data) != _CC_LEN or not data.startswith(_CC_TAG):
        raise ValueError("malformed conf change")
    kind = ConfChangeType(data[len(_CC_TAG)])  # ValueError on unknown type
    node_id = int.from_bytes(data[len(_CC_TAG) + 1 :], "big")
    if not 0 < node_id < 2**63:
        raise ValueError("conf change node id out of range")
    return ConfChange(kind, node_id)
