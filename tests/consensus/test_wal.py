"""Crash and corruption tests for the WAL: a crash at any byte must recover a
prefix of what was saved; damage anywhere but the torn tail must raise
CorruptLog naming the file and offset; nothing may silently return wrong data."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from consensus import wal
from consensus.filestore import FileStorage
from consensus.messages import ConfState, Entry, EntryType, HardState
from consensus.storage import CorruptLog


def ents(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi)]


def observe(d: Path) -> tuple:
    s = FileStorage(d)
    try:
        first, last = s.first_index(), s.last_index()
        return (
            s.initial_state(),
            first,
            last,
            tuple(s.entries(first, last + 1)) if last >= first else (),
        )
    finally:
        s.close()


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.wal"))


def copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def two_states(tmp_path):
    """A log before and after one last save (entries + hard state + conflict)."""
    d = tmp_path / "orig"
    s = FileStorage(d)
    s.save(HardState(1, 1, 0), ents(1, 6))
    s.save(HardState(1, 1, 4), ents(6, 9))
    s.close()
    before = observe(d)
    (seg,) = segments(d)
    size_before = seg.stat().st_size
    s = FileStorage(d)
    # the last batch rewrites 7..8 at term 2, adds 9 and moves the hard state;
    # one entry's data embeds a well-formed record under another salt
    fake = wal.encode_record(12345, 2, b"\x94\x02\x09\x00\xc4\x00")
    s.save(HardState(2, 2, 6), [*ents(7, 9, term=2), Entry(2, 9, EntryType.NORMAL, fake)])
    s.close()
    after = observe(d)
    return d, seg.name, size_before, seg.stat().st_size, before, after


def test_torn_tail_at_every_offset_of_the_last_batch_recovers_a_prefix(tmp_path, two_states):
    d, name, lo, hi, before, after = two_states
    assert before != after
    work = tmp_path / "work"
    for cut in range(lo, hi):
        copy(d, work)
        os.truncate(work / name, cut)
        got = observe(work)
        # a batch is several records; a cut inside it may keep a prefix of them,
        # but every prefix must be a state the log passed through in order:
        # never mixed data, never a hard state without the entries before it.
        assert got[2] >= 6, cut
        assert got[3][:6] == before[3][:6], cut
        if got == before:
            continue
        # entries 7.. of the new term are a prefix of the new batch
        new_tail = got[3][6:]
        assert new_tail == after[3][6 : 6 + len(new_tail)], cut
        if got[0][0] != before[0][0]:
            assert got == after, cut  # the hard state is the batch's last record
    copy(d, work)
    os.truncate(work / name, hi)
    assert observe(work) == after


def test_recovery_truncates_the_torn_tail_durably_and_appends_after_it(tmp_path, two_states):
    d, name, lo, _, before, _ = two_states
    os.truncate(d / name, lo + 7)  # a few bytes into the first new record
    assert observe(d) == before
    assert (d / name).stat().st_size == lo
    s = FileStorage(d)
    s.save(HardState(3, 3, 6), ents(9, 10, term=1))
    s.close()
    got = observe(d)
    assert got[0][0] == HardState(3, 3, 6) and got[2] == 9


def test_zero_filled_tail_is_a_torn_tail(tmp_path, two_states):
    d, name, _, _, _, after = two_states
    with open(d / name, "ab") as f:
        f.write(b"\x00" * 4096)
    assert observe(d) == after


def test_garbage_tail_is_a_torn_tail(tmp_path, two_states):
    d, name, _, _, _, after = two_states
    with open(d / name, "ab") as f:
        f.write(os.urandom(300).replace(wal.RECORD_MAGIC, b"xx"))
    assert observe(d) == after


def test_flipped_byte_in_any_non_tail_record_raises_corruptlog(tmp_path, two_states):
    d, name, _, hi, _, _ = two_states
    scan = wal.read_segment(d / name, 0, is_last=True)
    last_record_at = scan.records[-1].offset
    work = tmp_path / "work"
    for off in range(0, last_record_at):
        copy(d, work)
        flip(work / name, off)
        with pytest.raises(CorruptLog) as info:
            FileStorage(work).close()
        assert name in str(info.value)
        assert "offset" in str(info.value)
    # the file was left as found (no truncation on corruption)
    assert (work / name).stat().st_size == hi


def test_flipped_byte_in_a_non_last_segment_raises_even_in_its_last_record(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d, segment_bytes=1024)
    for i in range(1, 80):
        s.save(HardState(1, 1, i - 1), ents(i, i + 1))
    s.close()
    segs = segments(d)
    assert len(segs) >= 3
    first = segs[0]
    size = first.stat().st_size
    work = tmp_path / "work"
    for off in [0, 9, wal.SEGMENT_HEADER_SIZE + 3, size // 2, size - 30, size - 1]:
        copy(d, work)
        flip(work / first.name, off)
        with pytest.raises(CorruptLog, match=first.name):
            FileStorage(work, segment_bytes=1024)
    # a truncated non-last segment is corruption too, not a torn tail
    copy(d, work)
    os.truncate(work / first.name, size - 5)
    with pytest.raises(CorruptLog, match=first.name):
        FileStorage(work, segment_bytes=1024)


def test_missing_middle_segment_is_detected(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d, segment_bytes=1024)
    for i in range(1, 80):
        s.save(None, ents(i, i + 1))
    s.close()
    segs = segments(d)
    segs[1].unlink()
    with pytest.raises(CorruptLog, match="missing"):
        FileStorage(d, segment_bytes=1024)


def test_missing_first_segment_without_snapshot_is_detected(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d, segment_bytes=1024)
    for i in range(1, 80):
        s.save(None, ents(i, i + 1))
    s.close()
    segments(d)[0].unlink()
    with pytest.raises(CorruptLog, match="missing"):
        FileStorage(d, segment_bytes=1024)


def test_missing_segment_after_compaction_is_detected(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d, segment_bytes=1024)
    for i in range(1, 120):
        s.save(HardState(1, 1, i), ents(i, i + 1))
    s.create_snapshot(40, ConfState(frozenset({1})), b"s")
    s.compact(40)
    s.close()
    segments(d)[0].unlink()  # the oldest remaining one: entries after the snapshot
    with pytest.raises(CorruptLog, match="missing"):
        FileStorage(d, segment_bytes=1024)


def test_unknown_format_version_is_refused(tmp_path):
    d = tmp_path / "d"
    FileStorage(d).close()
    (seg,) = segments(d)
    data = bytearray(seg.read_bytes())
    head = wal.encode_segment_header(0, 7)
    data[: len(head)] = head.replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", 1)
    # re-seal the header checksum so only the version is wrong
    data[28 - 4 : 28] = struct.pack(">I", zlib.crc32(bytes(data[:24])) & 0xFFFFFFFF)
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match="version 2"):
        FileStorage(d)


def test_corrupt_snapshot_file_is_refused(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d)
    s.save(HardState(1, 1, 9), ents(1, 10))
    s.create_snapshot(5, ConfState(frozenset({1})), b"snapshot-data" * 10)
    s.close()
    (snap,) = d.glob("*.snap")
    flip(snap, snap.stat().st_size - 3)
    with pytest.raises(CorruptLog, match="snap"):
        FileStorage(d)


def test_leftover_temp_files_are_ignored(tmp_path):
    d = tmp_path / "d"
    s = FileStorage(d)
    s.save(HardState(1, 1, 1), ents(1, 3))
    s.close()
    before = observe(d)
    (d / "0000000000000001.wal.tmp").write_bytes(b"half a segment")
    (d / "snap-0000000000000009-0000000000000001.snap.tmp").write_bytes(b"half")
    assert observe(d) == before
    assert not list(d.glob("*.tmp"))


def test_crash_between_snapshot_file_and_wal_marker(tmp_path):
    """A follower's installed snapshot is durable but the WAL never said so: on
    reopen the snapshot wins and the conflicting old log is discarded."""
    from consensus import filestore
    from consensus.messages import Snapshot, SnapshotMeta

    d = tmp_path / "d"
    s = FileStorage(d)
    s.save(HardState(1, 1, 2), ents(1, 30, term=1))
    s.close()
    snap = Snapshot(SnapshotMeta(20, 3, ConfState(frozenset({1, 2}))), b"x")
    filestore._write_atomic(d, filestore._snap_name(20, 3), filestore._encode_snapshot(snap))
    s = FileStorage(d)
    assert (s.first_index(), s.last_index(), s.term(20)) == (21, 20, 3)
    assert s.snapshot() == snap
    s.close()


def test_every_cut_during_a_rollover_and_snapshot_sequence(tmp_path):
    """Cut the last segment at every offset after a mixed workload that spans
    segments: recovery always opens and reads back a prefix of the final log."""
    d = tmp_path / "d"
    s = FileStorage(d, segment_bytes=1024)
    for i in range(1, 60):
        s.save(HardState(1, 1, i - 1), ents(i, i + 1))
    s.create_snapshot(30, ConfState(frozenset({1})), b"snap")
    s.compact(30)
    for i in range(60, 70):
        s.save(HardState(1, 1, i - 1), ents(i, i + 1))
    s.close()
    final = observe(d)
    last = segments(d)[-1]
    work = tmp_path / "work"
    # segments are created whole (with their head record), so cuts start after it
    head_end = wal.read_segment(last, int(last.stem, 16), is_last=True).records[1].offset
    fenced = final[0][0].commit  # close() fenced the commit index it knew
    opened = refused = 0
    for cut in range(head_end, last.stat().st_size):
        copy(d, work)
        os.truncate(work / last.name, cut)
        try:
            (hs, _), first, li, got = observe(work)
        except CorruptLog as exc:  # the cut lost entries known committed: refused
            assert "are lost" in str(exc)
            refused += 1
            continue
        opened += 1
        assert first == 31
        assert got == final[3][: len(got)]
        assert hs.commit <= li and li >= fenced
    assert opened and refused


def test_segment_cut_inside_its_head_record_is_corruption(tmp_path):
    d = tmp_path / "d"
    FileStorage(d).close()
    (seg,) = segments(d)
    os.truncate(seg, wal.SEGMENT_HEADER_SIZE + 5)
    with pytest.raises(CorruptLog, match="head"):
        FileStorage(d)


def test_hard_state_is_atomic_at_every_cut(tmp_path):
    """A hard-state-only save cut at any byte yields the old or the new state."""
    d = tmp_path / "d"
    s = FileStorage(d)
    s.save(HardState(4, 2, 1), ents(1, 3))
    s.close()
    old = observe(d)
    (seg,) = segments(d)
    lo = seg.stat().st_size
    s = FileStorage(d)
    s.save(HardState(5, 3, 2), [])
    s.close()
    new = observe(d)
    hi = seg.stat().st_size
    assert new[0][0] == HardState(5, 3, 2) and new[1:] == old[1:]
    work = tmp_path / "work"
    for cut in range(lo, hi + 1):
        copy(d, work)
        os.truncate(work / seg.name, cut)
        assert observe(work) == (old if cut < hi else new), cut
