"""A log shorter than what this node knew was committed is refused, not accepted.

The WAL replays any prefix of itself consistently, so a newest segment cut well
before its end, or deleted, used to open as a shorter log that silently forgot
acknowledged entries. The fence file (`commit.fence`) is the witness outside
the WAL; these tests cut and delete as a failing disk or a careless hand would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consensus import wal
from consensus.filestore import FENCE_NAME, FileStorage, StorageFull
from consensus.messages import ConfState, Entry, EntryType, HardState
from consensus.storage import CorruptLog


def ents(lo: int, hi: int, size: int = 40) -> list[Entry]:
    return [Entry(1, i, EntryType.NORMAL, bytes([i % 251]) * size) for i in range(lo, hi)]


def fill(d: Path, n: int, close: bool = True, **kw: int) -> FileStorage:
    s = FileStorage(d, segment_bytes=1024, **kw)
    for i in range(1, n + 1):
        s.save(HardState(1, 1, i), ents(i, i + 1))  # each entry committed as it lands
    if close:
        s.close()
    return s


def newest(d: Path) -> Path:
    return sorted(d.glob("*.wal"))[-1]


def test_a_newest_segment_cut_well_before_its_end_is_refused_naming_the_gap(tmp_path):
    d = tmp_path / "d"
    fill(d, 40)
    seg = newest(d)
    head = wal.read_segment(seg, int(seg.stem, 16), is_last=True).records[1].offset
    os.truncate(seg, head)  # keeps the segment head: a consistent, shorter log
    with pytest.raises(CorruptLog, match=r"log ends at index \d+, but commit.fence .* up to 40"):
        FileStorage(d, segment_bytes=1024)


def test_a_deleted_newest_segment_is_refused(tmp_path):
    d = tmp_path / "d"
    fill(d, 80)
    segs = sorted(d.glob("*.wal"))
    assert len(segs) >= 3
    segs[-1].unlink()
    with pytest.raises(CorruptLog, match=r"segment\(s\) \d+\.\.\d+ are missing"):
        FileStorage(d, segment_bytes=1024)


def test_every_segment_deleted_is_refused_when_a_fence_exists(tmp_path):
    d = tmp_path / "d"
    fill(d, 10)
    for p in d.glob("*.wal"):
        p.unlink()
    with pytest.raises(CorruptLog, match="every WAL segment is missing"):
        FileStorage(d, segment_bytes=1024)


def test_without_a_clean_close_the_periodic_fence_still_catches_a_cut(tmp_path):
    d = tmp_path / "d"
    s = fill(d, 60, close=False, fence_every=2)  # the process "dies": no close()
    del s
    seg = newest(d)
    os.truncate(seg, wal.read_segment(seg, int(seg.stem, 16), True).records[1].offset)
    (first_seg,) = sorted(d.glob("*.wal"))[:1]
    assert first_seg.exists()
    with pytest.raises(CorruptLog, match="are lost"):
        FileStorage(d, segment_bytes=1024)


def test_a_torn_tail_of_the_last_append_still_opens(tmp_path):
    d = tmp_path / "d"
    s = fill(d, 30, close=False)
    s.save(HardState(1, 1, 30), ents(31, 32))  # not committed yet: fence stays at 30
    del s
    seg = newest(d)
    os.truncate(seg, seg.stat().st_size - 7)  # a crash tore the last record
    s = FileStorage(d, segment_bytes=1024)
    assert s.last_index() == 30 and s.initial_state()[0].commit == 30


def test_a_damaged_fence_is_corruption(tmp_path):
    d = tmp_path / "d"
    fill(d, 5)
    f = d / FENCE_NAME
    buf = bytearray(f.read_bytes())
    buf[12] ^= 1
    f.write_bytes(bytes(buf))
    with pytest.raises(CorruptLog, match="fence"):
        FileStorage(d, segment_bytes=1024)


def test_snapshot_and_compaction_keep_the_fence_consistent(tmp_path):
    d = tmp_path / "d"
    s = fill(d, 70, close=False)
    s.create_snapshot(50, ConfState(frozenset({1})), b"state")
    s.compact(50)
    s.close()
    s = FileStorage(d, segment_bytes=1024)
    assert (s.first_index(), s.last_index()) == (51, 70)
    s.close()


def test_too_little_free_space_refuses_to_open_with_a_clear_message(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(StorageFull, match="bytes free, the log needs at least"):
        FileStorage(tmp_path / "d", min_free_bytes=free * 4 + (1 << 40))
    FileStorage(tmp_path / "d", min_free_bytes=0).close()
