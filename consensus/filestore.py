"""FileStorage: the durable `Storage` (segmented WAL + snapshot files).

Everything the core needs after a restart is in the WAL (`consensus.wal`
framing) as four record kinds, so one `save()` is one append and one fsync:

- SEGHEAD  first record of every segment: the log position just before the
  segment (prev index, prev term) and the hard state at creation. Old segments
  can then be deleted without losing the hard state or the log's start.
- ENTRY    one log entry. An entry at index i replaces every entry >= i
  (conflict truncation is implicit, as in etcd's WAL).
- STATE    hard state (term, vote, commit).
- SNAPMARK a snapshot was installed at (index, term): the log restarts there.

Snapshot files `snap-<index>-<term>.snap` are written atomically (temp file,
fsync, rename, directory fsync) before the WAL mentions them. On open the
newest snapshot is reconciled with the replayed log: entries up to the
snapshot index are dropped (etcd restarts the same way), and if the log's
entry at that index has another term, the whole log is discarded.

Reads are served from an in-memory copy of the entries after the compaction
point; `compact()` bounds it and deletes segments wholly below the snapshot.
A failed write or fsync poisons the instance (the file state is then unknown;
retrying fsync is not safe), and the process must reopen the directory.

The fence file `commit.fence` is the log's witness outside the WAL: the
commit index this node knew and the newest segment's number, rewritten
atomically when a segment rolls, every `fence_every` committed entries, on a
snapshot and on close. The WAL alone cannot tell a newest segment that was
truncated well before its end, or deleted, from a shorter log: both replay as
a consistent prefix. On open, a log (with its snapshot) that ends below the
fenced commit index, or a newest segment older than the fenced one, is refused
with `CorruptLog` naming the gap, rather than silently forgetting entries the
cluster counted as stored (etcd refuses in the same way). The fence covers
what was committed up to its last rewrite; it is a witness against failing
disks and careless hands, not against someone who can rewrite every file.

Opening also refuses (`StorageFull`) a directory with less than
`min_free_bytes` free, so that a node whose disk filled up does not restart
into the same failure: free space, then start it again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from . import wal
from .messages import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from .storage import Compacted, CorruptLog, SnapshotOutOfDate, StorageError, Unavailable

K_SEGHEAD = 1
K_ENTRY = 2
K_STATE = 3
K_SNAPMARK = 4

SNAP_MAGIC = b"CUSTSNP\x00"
_SNAP_HDR = struct.Struct(">8sIQ")  # magic, version, payload length; then crc32
SNAP_HEADER_SIZE = _SNAP_HDR.size + 4
_SNAP_NAME = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_U63 = (1 << 63) - 1
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024


FENCE_NAME = "commit.fence"
FENCE_MAGIC = b"CUSTFNC\x00"
_FENCE = struct.Struct(">8sIQQ")  # magic, version, commit index, newest segment; then crc32
DEFAULT_FENCE_EVERY = 1024


class StorageFailed(StorageError):
    """An earlier write or fsync failed; this instance refuses further use."""


class StorageFull(StorageError):
    """The data directory has less free space than the storage needs to start."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack_ints(payload: bytes, n: int, where: str) -> list[Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise CorruptLog(f"{where}: undecodable record payload: {exc}") from None
    if not isinstance(obj, list) or len(obj) != n:
        raise CorruptLog(f"{where}: record payload has wrong shape")
    return obj


def _uint(v: Any, where: str) -> int:
    if type(v) is not int or not 0 <= v <= _U63:
        raise CorruptLog(f"{where}: field out of range")
    return v


def _decode_entry(payload: bytes, where: str) -> Entry:
    term, index, etype, data = _unpack_ints(payload, 4, where)
    if type(data) is not bytes:
        raise CorruptLog(f"{where}: entry data is not bytes")
    try:
        et = EntryType(_uint(etype, where))
    except ValueError:
        raise CorruptLog(f"{where}: unknown entry type {etype}") from None
    return Entry(_uint(term, where), _uint(index, where), et, data)


def _encode_entry(e: Entry) -> bytes:
    return _pack([e.term, e.index, int(e.type), bytes(e.data)])


def _hs_list(hs: HardState) -> list[int]:
    return [hs.term, hs.vote, hs.commit]


def _entries_size(e: Entry) -> int:
    return len(e.data)


# --- snapshot files ---------------------------------------------------------


def _snap_name(index: int, term: int) -> str:
    return f"snap-{index:016x}-{term:016x}.snap"


def _encode_snapshot(s: Snapshot) -> bytes:
    payload = _pack(
        [
            s.meta.index,
            s.meta.term,
            sorted(s.meta.conf.voters),
            sorted(s.meta.conf.learners),
            bytes(s.data),
        ]
    )
    head = _SNAP_HDR.pack(SNAP_MAGIC, wal.FORMAT_VERSION, len(payload))
    return head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head)) & 0xFFFFFFFF) + payload


def decode_snapshot_file(buf: bytes, where: str) -> Snapshot:
    """A snapshot file's bytes (header, CRC, payload) back to its Snapshot; CorruptLog
    naming `where` if anything is off. Also what a backup uses to read one."""
    if len(buf) < SNAP_HEADER_SIZE:
        raise CorruptLog(f"{where}: offset 0: snapshot header truncated")
    magic, version, length = _SNAP_HDR.unpack_from(buf, 0)
    (crc,) = struct.unpack_from(">I", buf, _SNAP_HDR.size)
    if magic != SNAP_MAGIC:
        raise CorruptLog(f"{where}: offset 0: bad snapshot magic")
    if version != wal.FORMAT_VERSION:
        raise CorruptLog(f"{where}: offset 0: unsupported snapshot format version {version}")
    payload = buf[SNAP_HEADER_SIZE:]
    if len(payload) != length:
        raise CorruptLog(f"{where}: offset {SNAP_HEADER_SIZE}: snapshot length mismatch")
    if zlib.crc32(payload, zlib.crc32(buf[: _SNAP_HDR.size])) & 0xFFFFFFFF != crc:
        raise CorruptLog(f"{where}: offset {SNAP_HEADER_SIZE}: snapshot fails its checksum")
    idx, trm, voters, learners, data = _unpack_ints(payload, 5, where)
    if not (isinstance(voters, list) and isinstance(learners, list) and type(data) is bytes):
        raise CorruptLog(f"{where}: offset 0: snapshot payload has wrong types")
    conf = ConfState(
        frozenset(_uint(v, where) for v in voters),
        frozenset(_uint(v, where) for v in learners),
    )
    return Snapshot(SnapshotMeta(_uint(idx, where), _uint(trm, where), conf), data)


def _read_snapshot(path: Path, index: int, term: int) -> Snapshot:
    snap = decode_snapshot_file(path.read_bytes(), str(path))
    if (snap.meta.index, snap.meta.term) != (index, term):
        raise CorruptLog(f"{path}: offset 0: snapshot contents do not match its file name")
    return snap


def _list_snapshots(directory: Path) -> list[tuple[int, int, Path]]:
    out = []
    for p in directory.iterdir():
        m = _SNAP_NAME.match(p.name)
        if m:
            out.append((int(m.group(1), 16), int(m.group(2), 16), p))
    out.sort()
    return out


def _write_atomic(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / (name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        wal._write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, directory / name)
    wal.fsync_dir(directory)


def _read_fence(directory: Path) -> tuple[int, int] | None:
    """(commit index, newest segment) from the fence file, or None if there is none."""
    path = directory / FENCE_NAME
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(buf) != _FENCE.size + 4:
        raise CorruptLog(f"{path}: offset 0: fence file has {len(buf)} bytes")
    magic, version, commit, seq = _FENCE.unpack_from(buf, 0)
    (crc,) = struct.unpack_from(">I", buf, _FENCE.size)
    if magic != FENCE_MAGIC or zlib.crc32(buf[: _FENCE.size]) & 0xFFFFFFFF != crc:
        raise CorruptLog(f"{path}: offset 0: fence file fails its checksum")
    if version != wal.FORMAT_VERSION or commit > _U63 or seq > _U63:
        raise CorruptLog(f"{path}: offset 0: unsupported fence file")
    return commit, seq


def _check_free_space(directory: Path, need: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise StorageFull(
            f"{directory}: only {free} bytes free, the log needs at least {need}: "
            f"free some space (or grow the volume), then start the node again"
        )


# --- the storage ------------------------------------------------------------


class FileStorage:
    """Durable Raft storage in one directory. See the module docstring.

    Thread-safe (one lock): the runner may call `save()` from a worker thread
    while the core reads on the event loop thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        *,
        min_free_bytes: int | None = None,
        fence_every: int = DEFAULT_FENCE_EVERY,
    ) -> None:
        if segment_bytes < 1024:
            raise ValueError("segment_bytes must be at least 1024")
        if fence_every < 1:
            raise ValueError("fence_every must be positive")
        self.dir = Path(directory)
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, mode=0o700)
            wal.fsync_dir(self.dir.parent)  # make the new directory's name durable
        self.segment_bytes = segment_bytes
        self.fence_every = fence_every
        self._fenced_commit = 0
        wal.remove_temp_files(self.dir)
        _check_free_space(self.dir, 2 * segment_bytes if min_free_bytes is None else min_free_bytes)
        self._lock = threading.RLock()
        self._failed = False
        self._hs = HardState()
        self._snap = Snapshot()
        self._base_index = 0
        self._base_term = 0
        self._ents: list[Entry] = []
        self._seg_prev: dict[int, int] = {}  # segment seq -> prev index in its SEGHEAD
        self._writer: wal.SegmentWriter | None = None
        self._recover()

    # --- recovery -------------------------------------------------------------

    def _recover(self) -> None:
        fence = _read_fence(self.dir)
        snaps = _list_snapshots(self.dir)
        if snaps:
            idx, trm, path = snaps[-1]
            self._snap = _read_snapshot(path, idx, trm)
        segs = wal.list_segments(self.dir)
        if not segs:
            if snaps:
                raise CorruptLog(f"{self.dir}: snapshot present but every WAL segment is missing")
            if fence is not None:
                raise CorruptLog(
                    f"{self.dir}: every WAL segment is missing, but {FENCE_NAME} records "
                    f"entries up to {fence[0]} as committed"
                )
            self._writer = wal.SegmentWriter.create(self.dir, 0, [self._seghead_record()])
            self._seg_prev[0] = 0
            return
        scans = [
            wal.read_segment(path, seq, is_last=(i == len(segs) - 1))
            for i, (seq, path) in enumerate(segs)
        ]
        for scan in scans:
            if not scan.records or scan.records[0].kind != K_SEGHEAD:
                raise CorruptLog(
                    f"{scan.path}: offset {wal.SEGMENT_HEADER_SIZE}: segment head record missing"
                )
        self._replay(scans)
        self._reconcile_snapshot()
        self._check_against_fence(fence, segs[-1][0])
        last = scans[-1]
        if last.valid_end < last.size:
            wal.truncate_file(last.path, last.valid_end)
        self._writer = wal.SegmentWriter(last.path, last.seq, last.salt, last.valid_end)

    def _replay(self, scans: list[wal.SegmentScan]) -> None:
        first = True
        # While the base comes from a segment head (not a SNAPMARK), an entry at or
        # below it is legitimate: a conflict rewrote entries of an older segment
        # that compaction has since deleted. The base then moves down with an
        # unknown term (-1), which reconciliation with the snapshot resolves.
        base_from_head = True
        for scan, rec in wal.iter_records(scans):
            where = f"{scan.path}: offset {rec.offset}"
            if rec.kind == K_SEGHEAD:
                if rec.offset != wal.SEGMENT_HEADER_SIZE:
                    raise CorruptLog(f"{where}: segment head record in the middle of a segment")
                pi, pt, t, v, c = (_uint(x, where) for x in _unpack_ints(rec.payload, 5, where))
                if first:
                    self._base_index, self._base_term = pi, pt
                    first = False
                elif (pi, pt) != (self.last_index(), self._term_unlocked(self.last_index())):
                    raise CorruptLog(f"{where}: segment does not continue the previous one")
                self._seg_prev[scan.seq] = pi
                self._hs = HardState(t, v, c)
                continue
            if first or (rec.offset == wal.SEGMENT_HEADER_SIZE):
                raise CorruptLog(f"{where}: segment does not start with a segment head record")
            if rec.kind == K_ENTRY:
                e = _decode_entry(rec.payload, where)
                if base_from_head and 0 < e.index <= self._base_index:
                    self._base_index, self._base_term, self._ents = e.index - 1, -1, [e]
                    continue
                if e.index <= self._base_index or e.index > self.last_index() + 1:
                    raise CorruptLog(
                        f"{where}: entry {e.index} does not follow log "
                        f"({self._base_index}, {self.last_index()}]"
                    )
                del self._ents[e.index - self._base_index - 1 :]
                self._ents.append(e)
            elif rec.kind == K_STATE:
                t, v, c = (_uint(x, where) for x in _unpack_ints(rec.payload, 3, where))
                self._hs = HardState(t, v, c)
            elif rec.kind == K_SNAPMARK:
                i, t = (_uint(x, where) for x in _unpack_ints(rec.payload, 2, where))
                self._base_index, self._base_term, self._ents = i, t, []
                base_from_head = False
            else:
                raise CorruptLog(f"{where}: unknown record kind {rec.kind}")

    def _reconcile_snapshot(self) -> None:
        si, st = self._snap.meta.index, self._snap.meta.term
        if self._base_index > si:
            raise CorruptLog(
                f"{self.dir}: log starts after index {self._base_index} but the newest snapshot "
                f"is at {si}: segments or a snapshot are missing"
            )
        if self._base_index == si:
            if self._base_term == -1:
                self._base_term = st
            elif self._base_term != st:
                raise CorruptLog(f"{self.dir}: log base term disagrees with snapshot at {si}")
            return
        if si <= self.last_index() and self._ents[si - self._base_index - 1].term == st:
            self._ents = self._ents[si - self._base_index :]
        else:
            self._ents = []
        self._base_index, self._base_term = si, st

    def _check_against_fence(self, fence: tuple[int, int] | None, newest_seq: int) -> None:
        """Refuse a log that ends below what this node knew was committed."""
        end = self.last_index()
        commit = self._hs.commit
        what = "its own hard state"
        if fence is not None:
            fenced_commit, fenced_seq = fence
            if newest_seq < fenced_seq:
                raise CorruptLog(
                    f"{self.dir}: WAL segment(s) {newest_seq + 1}..{fenced_seq} are missing "
                    f"(the newest segment was deleted); {FENCE_NAME} records entries up to "
                    f"{fenced_commit} as committed; refusing to start without them"
                )
            if fenced_commit > commit:
                commit, what = fenced_commit, FENCE_NAME
            self._fenced_commit = fenced_commit
        if end < commit:
            raise CorruptLog(
                f"{self.dir}: the log ends at index {end}, but {what} records entries up to "
                f"{commit} as committed: entries {end + 1}..{commit} are lost (a truncated or "
                f"deleted WAL segment?); refusing to start rather than forget them. Restore "
                f"the data directory, or remove this node and add it back empty"
            )

    def _write_fence(self, commit: int) -> None:
        """Record `commit` (known committed and durable here) outside the WAL."""
        assert self._writer is not None
        commit = max(commit, self._fenced_commit)
        head = _FENCE.pack(FENCE_MAGIC, wal.FORMAT_VERSION, commit, self._writer.seq)
        body = head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)
        try:
            _write_atomic(self.dir, FENCE_NAME, body)
        except BaseException:
            self._failed = True
            raise
        self._fenced_commit = commit

    # --- reads ------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        with self._lock:
            return self._hs, self._snap.meta.conf

    def first_index(self) -> int:
        with self._lock:
            return self._base_index + 1

    def last_index(self) -> int:
        with self._lock:
            return self._base_index + len(self._ents)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snap

    def term(self, index: int) -> int:
        with self._lock:
            return self._term_unlocked(index)

    def _term_unlocked(self, index: int) -> int:
        if index < self._base_index:
            raise Compacted(f"index {index} is compacted (first index {self._base_index + 1})")
        if index == self._base_index:
            return self._base_term
        if index > self._base_index + len(self._ents):
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._ents[index - self._base_index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        with self._lock:
            if lo <= self._base_index:
                raise Compacted(f"index {lo} is compacted (first index {self._base_index + 1})")
            if hi > self.last_index() + 1:
                raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
            if lo >= hi:
                return []
            out = self._ents[lo - self._base_index - 1 : hi - self._base_index - 1]
            if max_bytes is None or not out:
                return out
            size = _entries_size(out[0])
            for n in range(1, len(out)):
                size += _entries_size(out[n])
                if size > max_bytes:
                    return out[:n]
            return out

    # --- writes -----------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failed:
            raise StorageFailed(f"{self.dir}: an earlier write failed; reopen the storage")
        if self._writer is None:
            raise StorageFailed(f"{self.dir}: storage is closed")

    def _seghead_record(self) -> tuple[int, bytes]:
        li = self._base_index + len(self._ents)
        lt = self._ents[-1].term if self._ents else self._base_term
        return K_SEGHEAD, _pack([li, lt, *_hs_list(self._hs)])

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Durably apply a Ready; returns only after fsync. See `Storage.save`."""
        with self._lock:
            self._check_usable()
            records: list[tuple[int, bytes]] = []
            base_i, base_t, ents = self._base_index, self._base_term, self._ents
            new_snap = self._snap
            if snapshot is not None and not snapshot.is_empty:
                if snapshot.meta.index <= self._snap.meta.index:
                    raise SnapshotOutOfDate(
                        f"snapshot at {snapshot.meta.index} is not newer than "
                        f"{self._snap.meta.index}"
                    )
                self._write_snapshot_file(snapshot)
                new_snap = snapshot
                base_i, base_t, ents = snapshot.meta.index, snapshot.meta.term, []
                records.append((K_SNAPMARK, _pack([base_i, base_t])))
            if entries:
                for a, b in itertools.pairwise(entries):
                    if b.index != a.index + 1:
                        raise ValueError(f"entries not contiguous at {a.index} -> {b.index}")
                new = [e for e in entries if e.index > base_i]
                if new:
                    if new[0].index > base_i + len(ents) + 1:
                        raise ValueError(
                            f"entry {new[0].index} leaves a gap after last index "
                            f"{base_i + len(ents)}"
                        )
                    ents = ents[: new[0].index - base_i - 1] + new
                    records.extend((K_ENTRY, _encode_entry(e)) for e in new)
            hs = self._hs
            if hard_state is not None and hard_state != self._hs:
                hs = hard_state
                records.append((K_STATE, _pack(_hs_list(hs))))
            if not records:
                return
            try:
                self._maybe_roll()
                assert self._writer is not None
                self._writer.append(records)
            except BaseException:
                self._failed = True
                raise
            self._base_index, self._base_term, self._ents = base_i, base_t, ents
            self._hs, self._snap = hs, new_snap
            if snapshot is not None and not snapshot.is_empty:
                self._remove_old_snapshots()
            if hs.commit - self._fenced_commit >= self.fence_every:
                self._write_fence(hs.commit)

    def _maybe_roll(self) -> None:
        assert self._writer is not None
        if self._writer.size < self.segment_bytes:
            return
        seq = self._writer.seq + 1
        head = self._seghead_record()
        new = wal.SegmentWriter.create(self.dir, seq, [head])
        self._writer.close()
        self._writer = new
        self._seg_prev[seq] = self._base_index + len(self._ents)
        self._write_fence(self._hs.commit)  # a deleted newest segment is now detectable

    def _write_snapshot_file(self, s: Snapshot) -> None:
        try:
            _write_atomic(self.dir, _snap_name(s.meta.index, s.meta.term), _encode_snapshot(s))
        except BaseException:
            self._failed = True
            raise

    def _remove_old_snapshots(self) -> None:
        keep = _snap_name(self._snap.meta.index, self._snap.meta.term)
        removed = False
        for _, _, p in _list_snapshots(self.dir):
            if p.name != keep:
                p.unlink()
                removed = True
        if removed:
            wal.fsync_dir(self.dir)

    def create_snapshot(self, index: int, conf: ConfState, data: bytes) -> Snapshot:
        """Persist an application snapshot at `index`; the log is kept (see compact)."""
        with self._lock:
            self._check_usable()
            if index <= self._snap.meta.index:
                raise SnapshotOutOfDate(
                    f"snapshot at {index} is not newer than {self._snap.meta.index}"
                )
            term = self._term_unlocked(index)  # Compacted / Unavailable
            if index > self._hs.commit:
                raise StorageError(f"snapshot at {index} is beyond the commit index")
            snap = Snapshot(SnapshotMeta(index, term, conf), bytes(data))
            self._write_snapshot_file(snap)
            self._snap = snap
            self._remove_old_snapshots()
            self._write_fence(self._hs.commit)
            return snap

    def compact(self, index: int) -> None:
        """Drop entries <= index from memory and delete segments wholly below it."""
        with self._lock:
            self._check_usable()
            if index <= self._base_index:
                raise Compacted(f"index {index} is already compacted")
            if index > self._snap.meta.index:
                raise StorageError(
                    f"cannot compact to {index}: beyond the snapshot at {self._snap.meta.index}"
                )
            term = self._term_unlocked(index)
            self._ents = self._ents[index - self._base_index :]
            self._base_index, self._base_term = index, term
            assert self._writer is not None
            removed = False
            for seq in sorted(self._seg_prev):
                nxt = self._seg_prev.get(seq + 1)
                if seq >= self._writer.seq or nxt is None or nxt > index:
                    break
                (self.dir / wal.segment_name(seq)).unlink()
                del self._seg_prev[seq]
                removed = True
            if removed:
                wal.fsync_dir(self.dir)

    def segment_count(self) -> int:
        with self._lock:
            return len(self._seg_prev)

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                if not self._failed and self._hs.commit > self._fenced_commit:
                    with contextlib.suppress(OSError):  # best effort: a fuller fence
                        self._write_fence(self._hs.commit)
                self._writer.close()
                self._writer = None

    def __enter__(self) -> FileStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
