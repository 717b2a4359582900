"""The core's view of the log: durable entries (Storage) plus an unstable tail.

The unstable part holds what the core has accepted but the runner has not yet
persisted: at most one snapshot and a run of entries starting at `offset`.
Everything below `offset` is read from storage. `committed` and `applied` are
the usual Raft indexes; the core never lets `applied` pass `committed`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .messages import Entry, Snapshot
from .storage import Compacted, Storage, Unavailable


class RaftInvariantError(RuntimeError):
    """Something that Raft's rules make impossible happened (a bug or a lying peer)."""


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """Longest prefix of `entries` whose data fits in `max_bytes` (at least one)."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for i, e in enumerate(entries):
        total += len(e.data)
        if i > 0 and total > max_bytes:
            return entries[:i]
    return entries


class RaftLog:
    __slots__ = ("applied", "committed", "offset", "storage", "unstable", "unstable_snapshot")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        first = storage.first_index()
        self.unstable_snapshot: Snapshot | None = None
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1
        self.committed = first - 1
        self.applied = first - 1

    # --- bounds ----------------------------------------------------------------
    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.meta.index
        return self.storage.last_index()

    def term(self, index: int) -> int:
        """Term at `index`; raises Compacted / Unavailable outside [first-1, last]."""
        if index < self.first_index() - 1:
            raise Compacted(index)
        if index > self.last_index():
            raise Unavailable(index)
        snap = self.unstable_snapshot
        if snap is not None and index == snap.meta.index:
            return snap.meta.term
        if self.unstable and index >= self.offset:
            return self.unstable[index - self.offset].term
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (Compacted, Unavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: is a candidate's log at least as up to date as ours?"""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # --- reads -----------------------------------------------------------------
    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), size-limited like Storage.entries."""
        if lo > hi:
            raise ValueError(f"invalid slice {lo} > {hi}")
        if lo < self.first_index():
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        if lo == hi:
            return []
        out: list[Entry] = []
        if lo < self.offset:
            stored_hi = min(hi, self.offset)
            out = list(self.storage.entries(lo, stored_hi, max_bytes))
            if len(out) < stored_hi - lo:
                return out
        if hi > self.offset:
            out.extend(self.unstable[max(lo, self.offset) - self.offset : hi - self.offset])
        return limit_size(out, max_bytes)

    def snapshot(self) -> Snapshot:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot
        return self.storage.snapshot()

    def has_next_committed(self) -> bool:
        return self.unstable_snapshot is None and self.committed > self.applied

    def next_committed(self, max_bytes: int | None) -> list[Entry]:
        if not self.has_next_committed():
            return []
        lo = max(self.applied + 1, self.first_index())
        return self.slice(lo, self.committed + 1, max_bytes)

    # --- writes ----------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> int:
        """Append (truncating any suffix from entries[0].index); returns last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after - 1 < self.committed:
            raise RaftInvariantError(f"append at {after} overwrites committed {self.committed}")
        if after == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= self.offset:
            self.offset = after
            self.unstable = list(entries)
        else:
            self.unstable = self.unstable[: after - self.offset] + list(entries)
        return self.last_index()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours, else 0."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest (i, term(i)) with i <= index and term(i) <= term, as far as we know.

        Lets a rejected append skip a whole term of divergent entries at once
        (the optimisation of §5.3's closing paragraph, as etcd does it).
        """
        index = min(index, self.last_index())
        while index > 0:
            try:
                t = self.term(index)
            except (Compacted, Unavailable):
                return index, 0
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """Accept a leader's append after (index, log_term); None if it does not match."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            if ci <= self.committed:
                raise RaftInvariantError(f"entry {ci} conflicts with committed {self.committed}")
            self.append(entries[ci - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftInvariantError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to `index` if it is from `term` (Raft §5.4.2: count only own-term)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise RaftInvariantError(f"applied {index} outside ({self.applied}, {self.committed}]")
        self.applied = index

    def stable_to(self, index: int, term: int) -> None:
        """The runner persisted entries up to (index, term): drop them from unstable."""
        in_range = self.offset <= index < self.offset + len(self.unstable)
        if in_range and self.unstable[index - self.offset].term == term:
            self.unstable = self.unstable[index + 1 - self.offset :]
            self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.meta.index == index:
            self.unstable_snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot from the leader."""
        self.committed = snapshot.meta.index
        self.unstable_snapshot = snapshot
        self.unstable = []
        self.offset = snapshot.meta.index + 1
