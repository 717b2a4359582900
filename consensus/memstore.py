"""In-memory Storage for tests and the simulator.

`save` is atomic and "durable" for the life of the object, so a simulated crash
keeps exactly what was saved; the simulator models torn writes by saving only a
prefix of a Ready's entries before it drops the node. Layout: `_ents[0]` is a
dummy entry holding the index and term of the last compacted entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from .log import limit_size
from .messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from .storage import Compacted, SnapshotOutOfDate, StorageError, Unavailable


class MemoryStorage:
    def __init__(self, conf: ConfState | None = None) -> None:
        self._hs = HardState()
        self._conf = conf or ConfState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]

    @classmethod
    def bootstrap(cls, voters: Iterable[int]) -> MemoryStorage:
        """A founding member's storage: the shared bootstrap log, already committed."""
        from .core import bootstrap_log  # local: core imports nothing from here

        storage = cls()
        hs, entries = bootstrap_log(frozenset(voters))
        storage.save(hs, entries)
        return storage

    # --- reads -----------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hs, self._conf

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        off = self._ents[0].index
        if lo <= off:
            raise Compacted(lo)
        if hi > self.last_index() + 1:
            raise Unavailable(hi)
        if lo >= hi:
            return []
        return limit_size(self._ents[lo - off : hi - off], max_bytes)

    def term(self, index: int) -> int:
        off = self._ents[0].index
        if index < off:
            raise Compacted(index)
        if index - off >= len(self._ents):
            raise Unavailable(index)
        return self._ents[index - off].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def hard_state(self) -> HardState:
        return self._hs

    # --- writes ----------------------------------------------------------------
    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        if snapshot is not None and not snapshot.is_empty:
            self._apply_snapshot(snapshot)
        if entries:
            self._append(entries)
        if hard_state is not None:
            self._hs = hard_state

    def _apply_snapshot(self, snap: Snapshot) -> None:
        if snap.meta.index <= self._snapshot.meta.index:
            raise SnapshotOutOfDate(snap.meta.index)
        self._snapshot = snap
        self._conf = snap.meta.conf
        self._ents = [Entry(snap.meta.term, snap.meta.index)]

    def _append(self, entries: Sequence[Entry]) -> None:
        for a, b in itertools.pairwise(entries):
            if b.index != a.index + 1:
                raise StorageError("entries are not contiguous")
        first = self.first_index()
        if entries[-1].index < first:
            return  # all already compacted
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        pos = entries[0].index - self._ents[0].index
        if pos > len(self._ents):
            raise StorageError(f"gap: last {self.last_index()}, appending {entries[0].index}")
        del self._ents[pos:]  # in place: appends must not copy the whole log
        self._ents.extend(entries)

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDate(index)
        if index > self.last_index():
            raise Unavailable(index)
        if index > self._hs.commit:
            raise StorageError("snapshot beyond the commit index")
        snap = Snapshot(SnapshotMeta(index, self.term(index), conf), bytes(data))
        self._snapshot = snap
        self._conf = conf
        return snap

    def compact(self, index: int) -> None:
        off = self._ents[0].index
        if index <= off:
            raise Compacted(index)
        if index > self._snapshot.meta.index:
            raise StorageError("compact beyond the snapshot index")
        i = index - off
        self._ents = [Entry(self._ents[i].term, index), *self._ents[i + 1 :]]
