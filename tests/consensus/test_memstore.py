"""MemoryStorage honours the Storage contract (half-open ranges, named errors)."""

from __future__ import annotations

import pytest

from consensus.memstore import MemoryStorage
from consensus.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from consensus.storage import Compacted, SnapshotOutOfDate, StorageError, Unavailable


def ents(lo, hi, term=1, size=0):
    return [Entry(term, i, data=b"x" * size) for i in range(lo, hi)]


def test_empty_storage():
    s = MemoryStorage()
    assert s.first_index() == 1 and s.last_index() == 0
    assert s.term(0) == 0
    assert s.initial_state() == (HardState(), ConfState())
    assert s.snapshot().is_empty
    with pytest.raises(Unavailable):
        s.term(1)


def test_save_and_read_half_open_ranges():
    s = MemoryStorage()
    s.save(HardState(1, 2, 3), ents(1, 6))
    assert [e.index for e in s.entries(2, 5)] == [2, 3, 4]
    assert s.entries(3, 3) == []
    assert s.initial_state()[0] == HardState(1, 2, 3)
    with pytest.raises(Unavailable):
        s.entries(1, 7)


def test_size_limit_returns_at_least_one():
    s = MemoryStorage()
    s.save(None, ents(1, 6, size=10))
    assert len(s.entries(1, 6, max_bytes=0)) == 1
    assert len(s.entries(1, 6, max_bytes=25)) == 2
    assert len(s.entries(1, 6)) == 5


def test_conflicting_suffix_is_truncated():
    s = MemoryStorage()
    s.save(None, ents(1, 6, term=1))
    s.save(None, ents(3, 5, term=2))
    assert s.last_index() == 4
    assert [e.term for e in s.entries(1, 5)] == [1, 1, 2, 2]


def test_gap_is_refused():
    s = MemoryStorage()
    s.save(None, ents(1, 3))
    with pytest.raises(StorageError):
        s.save(None, ents(5, 6))
    with pytest.raises(StorageError):
        s.save(None, [Entry(1, 3), Entry(1, 5)])


def test_snapshot_and_compaction():
    s = MemoryStorage()
    s.save(HardState(1, 0, 10), ents(1, 11))
    conf = ConfState(frozenset({1, 2, 3}))
    snap = s.create_snapshot(8, conf, b"state")
    assert snap.meta == SnapshotMeta(8, 1, conf)
    with pytest.raises(SnapshotOutOfDate):
        s.create_snapshot(8, conf, b"state")
    with pytest.raises(StorageError):
        s.compact(9)  # beyond the snapshot
    s.compact(6)
    assert s.first_index() == 7 and s.term(6) == 1
    with pytest.raises(Compacted):
        s.entries(6, 8)
    with pytest.raises(Compacted):
        s.term(5)
    with pytest.raises(Compacted):
        s.compact(6)
    assert s.initial_state()[1] == conf


def test_snapshot_beyond_commit_is_refused():
    s = MemoryStorage()
    s.save(HardState(1, 0, 3), ents(1, 6))
    with pytest.raises(StorageError):
        s.create_snapshot(5, ConfState(), b"")


def test_applying_received_snapshot_replaces_log():
    s = MemoryStorage()
    s.save(None, ents(1, 4))
    snap = Snapshot(SnapshotMeta(20, 3, ConfState(frozenset({1}))), b"d")
    s.save(HardState(3, 0, 20), ents(21, 23, term=3), snap)
    assert s.first_index() == 21 and s.last_index() == 22 and s.term(20) == 3
    assert s.snapshot() == snap
    with pytest.raises(SnapshotOutOfDate):
        s.save(None, [], Snapshot(SnapshotMeta(15, 3), b""))
    # Entries below the snapshot are ignored rather than creating a hole.
    s.save(None, ents(18, 22, term=3))
    assert s.first_index() == 21 and s.last_index() == 21


def test_bootstrap_log_is_committed_conf_changes():
    s = MemoryStorage.bootstrap([3, 1, 2])
    hs, conf = s.initial_state()
    assert hs.commit == 3 and hs.term == 1
    assert conf == ConfState()  # membership is learned by applying the entries
    assert len(s.entries(1, 4)) == 3
