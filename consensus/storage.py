"""The storage contract between the Raft core and the durable log.

The core only *reads* storage (entries the runner already persisted); the
runner *writes* it while handling a `Ready`, in this order: `save(...)` the
hard state, entries and snapshot with fsync, then send the messages, then
apply committed entries, then `core.advance()`. Implementations:
`consensus.memstore.MemoryStorage` (tests, simulator) and
`consensus.filestore.FileStorage` (segment WAL + snapshot files, fsync).

Indexes: the log is 1-based. `first_index()` is the first index still held
(compaction point + 1, which is at most snapshot index + 1: `compact` may keep
some entries the snapshot already covers); `last_index()` is the last one
(the compaction point if empty). `term(first_index() - 1)` still answers.
Ranges are half-open: `entries(lo, hi)` returns indexes lo..hi-1.

Membership: `initial_state()`'s ConfState is the membership as of the snapshot
(empty before any snapshot). The core re-applies the CONF_CHANGE entries it
finds from `first_index()` up to its applied index, so storage need not track
membership changes itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .messages import ConfState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base class of storage errors."""


class Compacted(StorageError):
    """The requested index is older than the snapshot: it has been compacted away."""


class Unavailable(StorageError):
    """The requested index is beyond the last stored entry."""


class SnapshotOutOfDate(StorageError):
    """A snapshot older than the one already stored was offered."""


class CorruptLog(StorageError):
    """The durable log failed an integrity check anywhere but its torn tail."""


class Storage(Protocol):
    # --- reads (used by the core) -------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        """Hard state and membership as of the last persisted state."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one if lo < hi, then up to max_bytes of data.

        Raises Compacted if lo <= snapshot index, Unavailable if hi > last_index()+1.
        """
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index` (the snapshot's term at its index)."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (empty if none)."""
        ...

    # --- writes (used by the runner) ----------------------------------------
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Durably apply a Ready: snapshot first (replacing older log), then
        entries (truncating any conflicting suffix), then hard state. Returns
        only once everything is on stable storage (fsync)."""
        ...

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Record an application snapshot taken at applied `index` (<= commit)."""
        ...

    def compact(self, index: int) -> None:
        """Discard entries up to and including `index` (must be <= snapshot index)."""
        ...
