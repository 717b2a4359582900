"""FileStorage against the Storage contract, on a real directory with real fsync."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import filestore as fs_mod
from consensus.filestore import FileStorage, StorageFailed
from consensus.messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from consensus.storage import Compacted, SnapshotOutOfDate, StorageError, Unavailable


def ents(lo: int, hi: int, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi)]


def state(s: FileStorage) -> tuple:
    """Everything observable about a storage, for comparing before/after reopen."""
    first, last = s.first_index(), s.last_index()
    return (
        s.initial_state(),
        first,
        last,
        s.term(first - 1),
        tuple(s.entries(first, last + 1)) if last >= first else (),
        s.snapshot(),
    )


def test_fresh_storage_is_empty(tmp_path):
    s = FileStorage(tmp_path / "d")
    assert s.initial_state() == (HardState(), ConfState())
    assert (s.first_index(), s.last_index(), s.term(0)) == (1, 0, 0)
    assert s.snapshot().is_empty
    assert s.entries(1, 1) == []
    with pytest.raises(Unavailable):
        s.entries(1, 2)
    with pytest.raises(Unavailable):
        s.term(1)
    s.close()


def test_ranges_compacted_unavailable_and_max_bytes(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 10), ents(1, 11))
    assert [e.index for e in s.entries(3, 7)] == [3, 4, 5, 6]
    assert s.entries(4, 4) == []
    assert s.term(10) == 1
    with pytest.raises(Unavailable):
        s.entries(5, 12)
    with pytest.raises(Unavailable):
        s.term(11)
    # max_bytes: at least one entry, then as many as fit (8 bytes each)
    assert len(s.entries(1, 11, max_bytes=0)) == 1
    assert len(s.entries(1, 11, max_bytes=24)) == 3
    assert len(s.entries(1, 11, max_bytes=25)) == 3
    s.create_snapshot(4, ConfState(frozenset({1})), b"app")
    s.compact(4)
    assert (s.first_index(), s.term(4)) == (5, 1)
    with pytest.raises(Compacted):
        s.entries(4, 6)
    with pytest.raises(Compacted):
        s.term(3)
    with pytest.raises(Compacted):
        s.compact(4)
    assert s.entries(7, 6) == []
    s.close()


def test_conflicting_entries_truncate_the_suffix_and_survive_reopen(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 3), ents(1, 11, term=1))
    s.save(HardState(2, 2, 3), ents(6, 8, term=2))
    assert s.last_index() == 7
    assert [e.term for e in s.entries(1, 8)] == [1] * 5 + [2, 2]
    before = state(s)
    s.close()
    s2 = FileStorage(tmp_path)
    assert state(s2) == before
    s2.save(None, ents(8, 9, term=2))
    assert s2.last_index() == 8
    with pytest.raises(ValueError):  # gap after the last index
        s2.save(None, ents(10, 11, term=2))
    with pytest.raises(ValueError):  # not contiguous
        s2.save(None, [Entry(2, 9), Entry(2, 11)])
    s2.close()


def test_reopen_restores_hard_state_entries_and_types(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(3, 2, 0), [])
    s.save(None, [Entry(3, 1, EntryType.CONF_CHANGE, b"cc"), Entry(3, 2, EntryType.NORMAL, b"")])
    s.save(HardState(3, 2, 2), [])
    before = state(s)
    s.close()
    s2 = FileStorage(tmp_path)
    assert state(s2) == before
    assert s2.initial_state()[0] == HardState(3, 2, 2)
    assert s2.entries(1, 2)[0].type is EntryType.CONF_CHANGE
    s2.close()


def test_snapshot_compaction_deletes_segments_and_reopen(tmp_path):
    s = FileStorage(tmp_path, segment_bytes=1024)
    for i in range(1, 101):
        s.save(HardState(1, 1, i - 1), ents(i, i + 1, size=40))
    segs_before = s.segment_count()
    assert segs_before > 3
    conf = ConfState(frozenset({1, 2, 3}), frozenset({4}))
    snap = s.create_snapshot(80, conf, b"state@80")
    assert snap.meta == SnapshotMeta(80, 1, conf)
    with pytest.raises(SnapshotOutOfDate):
        s.create_snapshot(80, conf, b"again")
    with pytest.raises(StorageError):
        s.compact(81)  # beyond the snapshot
    s.compact(80)
    assert s.segment_count() < segs_before
    assert len(list(tmp_path.glob("*.wal"))) == s.segment_count()
    assert len(list(tmp_path.glob("*.snap"))) == 1
    before = state(s)
    s.close()
    s2 = FileStorage(tmp_path, segment_bytes=1024)
    assert state(s2) == before
    assert s2.first_index() == 81
    assert s2.initial_state() == (HardState(1, 1, 99), conf)
    s2.close()


def test_reopen_after_snapshot_without_compaction_starts_at_snapshot(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 10), ents(1, 21))
    s.create_snapshot(10, ConfState(frozenset({1})), b"s")
    s.close()
    s2 = FileStorage(tmp_path)
    assert (s2.first_index(), s2.last_index(), s2.term(10)) == (11, 20, 1)
    s2.close()


def test_installing_a_snapshot_resets_the_log(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 2), ents(1, 31, term=1))
    snap = Snapshot(SnapshotMeta(20, 3, ConfState(frozenset({1, 2}))), b"leader-state")
    s.save(HardState(3, 0, 20), [], snap)
    assert (s.first_index(), s.last_index(), s.term(20)) == (21, 20, 3)
    s.save(None, ents(21, 23, term=3))
    before = state(s)
    with pytest.raises(SnapshotOutOfDate):
        s.save(None, [], Snapshot(SnapshotMeta(15, 3), b"old"))
    s.close()
    s2 = FileStorage(tmp_path)
    assert state(s2) == before
    assert s2.snapshot() == snap
    assert s2.initial_state() == (HardState(3, 0, 20), ConfState(frozenset({1, 2})))
    s2.close()


def test_entries_below_the_snapshot_in_a_save_are_ignored(tmp_path):
    s = FileStorage(tmp_path)
    snap = Snapshot(SnapshotMeta(5, 2, ConfState(frozenset({1}))), b"x")
    s.save(None, ents(3, 9, term=2), snap)
    assert (s.first_index(), s.last_index()) == (6, 8)
    s.close()
    assert FileStorage(tmp_path).last_index() == 8


def test_fsync_ordering_save_acknowledges_only_after_fsync(tmp_path, monkeypatch):
    s = FileStorage(tmp_path, segment_bytes=1024)
    events: list[str] = []
    real_write, real_fsync, real_rename = os.write, os.fsync, os.rename

    def write(fd, data):
        events.append("write")
        return real_write(fd, data)

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
        return real_fsync(fd)

    def rename(a, b):
        events.append("rename")
        return real_rename(a, b)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    s.save(HardState(1, 1, 0), ents(1, 2))
    assert events == ["write", "fsync"]
    events.clear()
    for i in range(2, 40):  # crosses segment boundaries
        s.save(HardState(1, 1, i), ents(i, i + 1, size=100))
        assert events[-2:] == ["write", "fsync"]
    # a new segment: written, fsynced, renamed into place, directory fsynced
    assert "rename" in events
    i = events.index("rename")
    assert events[i - 2 : i + 2] == ["write", "fsync", "rename", "fsync-dir"]
    events.clear()
    s.create_snapshot(5, ConfState(), b"snap")
    assert events[:4] == ["write", "fsync", "rename", "fsync-dir"]
    s.close()


def test_a_failed_fsync_poisons_the_instance_and_reopen_recovers(tmp_path, monkeypatch):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 0), ents(1, 4))
    before = state(s)

    def failing_fsync(fd):
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        s.save(None, ents(4, 5))
    monkeypatch.undo()
    assert state(s) == before  # memory was not advanced
    with pytest.raises(StorageFailed):
        s.save(None, ents(4, 5))
    s.close()
    s2 = FileStorage(tmp_path)
    # the unacknowledged write may or may not have reached the disk
    assert s2.last_index() in (3, 4)
    assert tuple(s2.entries(1, 4)) == before[4]
    s2.close()


def test_snapshot_only_of_committed_and_held_entries(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 5), ents(1, 11))
    with pytest.raises(StorageError):
        s.create_snapshot(6, ConfState(), b"uncommitted")
    with pytest.raises(Unavailable):
        s.create_snapshot(11, ConfState(), b"beyond the log")
    assert s.create_snapshot(5, ConfState(), b"ok").meta.index == 5
    s.close()


def test_rejects_tiny_segments(tmp_path):
    with pytest.raises(ValueError):
        FileStorage(tmp_path, segment_bytes=10)


def test_snapshot_file_is_checked_against_its_name(tmp_path):
    s = FileStorage(tmp_path)
    s.save(HardState(1, 1, 4), ents(1, 5))
    s.create_snapshot(3, ConfState(), b"s")
    s.close()
    (p,) = tmp_path.glob("*.snap")
    p.rename(tmp_path / fs_mod._snap_name(4, 1))
    with pytest.raises(fs_mod.CorruptLog, match="file name"):
        FileStorage(tmp_path)


class Model:
    """The obvious in-memory model of the contract, to compare FileStorage with."""

    def __init__(self) -> None:
        self.hs = HardState()
        self.base = (0, 0)
        self.ents: list[Entry] = []

    def save(self, hs, new):
        if new:
            del self.ents[new[0].index - self.base[0] - 1 :]
            self.ents.extend(new)
        if hs is not None:
            self.hs = hs

    def last(self) -> int:
        return self.base[0] + len(self.ents)


@settings(max_examples=80, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["append", "conflict", "hs", "reopen", "snap", "install"]),
            st.integers(1, 6),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_random_operations_match_a_model_across_reopens(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("model")
    s = FileStorage(d, segment_bytes=1024)
    m = Model()
    term = 1
    for op, n in ops:
        if op == "append":
            new = ents(m.last() + 1, m.last() + 1 + n, term=term, size=30)
            s.save(None, new)
            m.save(None, new)
        elif op == "conflict" and m.last() > m.base[0]:
            term += 1
            lo = max(m.base[0] + 1, m.last() - n + 1)
            new = ents(lo, lo + 2, term=term, size=30)
            s.save(HardState(term, 1, 0), new)
            m.save(HardState(term, 1, 0), new)
        elif op == "hs":
            hs = HardState(term, n, 0)
            s.save(hs, [])
            m.save(hs, [])
        elif op == "reopen":
            s.close()
            s = FileStorage(d, segment_bytes=1024)
        elif op == "snap" and m.last() > m.base[0] + 1:
            idx = m.base[0] + 1 + n % (m.last() - m.base[0])
            t = s.term(idx)
            s.save(HardState(term, 1, idx), [])
            m.save(HardState(term, 1, idx), [])
            s.create_snapshot(idx, ConfState(frozenset({1})), b"s")
            s.compact(idx)
            m.ents = m.ents[idx - m.base[0] :]
            m.base = (idx, t)
        elif op == "install":
            term += 1
            idx = m.last() + n - 3 if m.last() + n - 3 > m.base[0] else m.last() + n
            snap = Snapshot(SnapshotMeta(idx, term, ConfState(frozenset({1, 2}))), b"i")
            s.save(HardState(term, 0, idx), [], snap)
            m.save(HardState(term, 0, idx), [])
            m.base, m.ents = (idx, term), []
        assert s.initial_state()[0] == m.hs
        assert (s.first_index(), s.last_index()) == (m.base[0] + 1, m.last())
        assert s.entries(m.base[0] + 1, m.last() + 1) == m.ents
        assert s.term(m.base[0]) == m.base[1]
    s.close()
