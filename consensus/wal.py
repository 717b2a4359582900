"""Segmented write-ahead log: framing, CRCs, recovery. Knows nothing of Raft.

Layout of one segment file `<seq:016x>.wal`::

    header  = MAGIC(8) | version u32 | seq u64 | salt u32 | crc32 u32     (28 bytes)
    record  = b"RW" | kind u8 | 0 u8 | length u32 | crc32 u32 | payload  (12 + length)

A record's CRC covers its first 8 header bytes and its payload, seeded with
the segment's random salt, so bytes that merely *contain* a record (an entry
whose data embeds WAL bytes, or data from another segment) never verify.

Segments are created whole (temp file, fsync, rename, directory fsync), so a
segment with a bad header is corruption, not a torn write. Within a segment
records are only appended, and every append is fsynced before it is
acknowledged. A crash can therefore damage only the bytes after the last
acknowledged append of the *last* segment. Recovery reads records until the
first one that does not verify; if that happens in the last segment and no
verifiable record starts anywhere after it, the rest is a torn tail and is cut
off; otherwise the log is corrupt and `CorruptLog` names the file and offset.

Limitation (documented, inherent): a flipped bit inside the very last record
is indistinguishable from a torn write, so that record is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .storage import CorruptLog

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"CUSTWAL\x00"
_SEG_HDR = struct.Struct(">8sIQI")  # magic, version, seq, salt; then crc32
SEGMENT_HEADER_SIZE = _SEG_HDR.size + 4
RECORD_MAGIC = b"RW"
_REC_HDR = struct.Struct(">2sBBI")  # magic, kind, reserved, length; then crc32
RECORD_HEADER_SIZE = _REC_HDR.size + 4
MAX_RECORD = 256 * 1024 * 1024  # hard bound on one record's payload
_SEG_NAME = re.compile(r"^([0-9a-f]{16})\.wal$")


def segment_name(seq: int) -> str:
    return f"{seq:016x}.wal"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc(salt: int, head: bytes, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(head, salt)) & 0xFFFFFFFF


def encode_record(salt: int, kind: int, payload: bytes) -> bytes:
    if not 0 <= kind <= 255:
        raise ValueError("record kind out of range")
    if len(payload) > MAX_RECORD:
        raise ValueError(f"record payload of {len(payload)} bytes exceeds {MAX_RECORD}")
    head = _REC_HDR.pack(RECORD_MAGIC, kind, 0, len(payload))
    return head + struct.pack(">I", _crc(salt, head, payload)) + payload


def encode_segment_header(seq: int, salt: int) -> bytes:
    head = _SEG_HDR.pack(SEGMENT_MAGIC, FORMAT_VERSION, seq, salt)
    return head + struct.pack(">I", zlib.crc32(head) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    payload: bytes
    offset: int  # file offset of the record header


def _record_at(buf: bytes, pos: int, salt: int) -> Record | None:
    """The record starting at `pos` if it is complete and verifies, else None."""
    end_hdr = pos + RECORD_HEADER_SIZE
    if end_hdr > len(buf):
        return None
    magic, kind, reserved, length = _REC_HDR.unpack_from(buf, pos)
    if magic != RECORD_MAGIC or reserved != 0 or length > MAX_RECORD:
        return None
    if end_hdr + length > len(buf):
        return None
    (crc,) = struct.unpack_from(">I", buf, pos + _REC_HDR.size)
    payload = memoryview(buf)[end_hdr : end_hdr + length]
    if _crc(salt, buf[pos : pos + _REC_HDR.size], payload) != crc:
        return None
    return Record(kind, bytes(payload), pos)


def _any_record_after(buf: bytes, start: int, salt: int) -> int | None:
    """Offset of the first verifiable record starting after `start`, if any."""
    pos = buf.find(RECORD_MAGIC, start + 1)
    while pos != -1:
        if _record_at(buf, pos, salt) is not None:
            return pos
        pos = buf.find(RECORD_MAGIC, pos + 1)
    return None


@dataclass(slots=True)
class SegmentScan:
    path: Path
    seq: int
    salt: int
    records: list[Record]
    valid_end: int  # offset just past the last good record
    size: int  # file size as found


def read_segment(path: Path, expected_seq: int, is_last: bool) -> SegmentScan:
    """Read and verify one segment. Raises CorruptLog on anything but a torn tail
    of the last segment (which is reported via `valid_end < size`)."""
    buf = path.read_bytes()
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise CorruptLog(f"{path}: offset 0: segment header truncated ({len(buf)} bytes)")
    magic, version, seq, salt = _SEG_HDR.unpack_from(buf, 0)
    (hcrc,) = struct.unpack_from(">I", buf, _SEG_HDR.size)
    if magic != SEGMENT_MAGIC or zlib.crc32(buf[: _SEG_HDR.size]) & 0xFFFFFFFF != hcrc:
        raise CorruptLog(f"{path}: offset 0: bad segment header")
    if version != FORMAT_VERSION:
        raise CorruptLog(f"{path}: offset 0: unsupported WAL format version {version}")
    if seq != expected_seq:
        raise CorruptLog(f"{path}: offset 0: header says segment {seq}, name says {expected_seq}")
    records: list[Record] = []
    pos = SEGMENT_HEADER_SIZE
    while pos < len(buf):
        rec = _record_at(buf, pos, salt)
        if rec is None:
            later = _any_record_after(buf, pos, salt)
            if not is_last or later is not None:
                where = f"; a valid record follows at offset {later}" if later is not None else ""
                raise CorruptLog(f"{path}: offset {pos}: record fails its integrity check{where}")
            break  # torn tail of the last segment
        records.append(rec)
        pos += RECORD_HEADER_SIZE + len(rec.payload)
    return SegmentScan(path, seq, salt, records, pos, len(buf))


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segments sorted by sequence number; a gap in the numbering is corruption."""
    found: list[tuple[int, Path]] = []
    for p in directory.iterdir():
        m = _SEG_NAME.match(p.name)
        if m:
            found.append((int(m.group(1), 16), p))
    found.sort()
    for (a, pa), (b, _) in itertools.pairwise(found):
        if b != a + 1:
            raise CorruptLog(f"{pa}: segment(s) {a + 1}..{b - 1} missing after this one")
    return found


class SegmentWriter:
    """Appends records to one open segment file; every `append` ends in fsync."""

    def __init__(self, path: Path, seq: int, salt: int, size: int) -> None:
        self.path = path
        self.seq = seq
        self.salt = salt
        self.size = size
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    @classmethod
    def create(
        cls, directory: Path, seq: int, first_records: list[tuple[int, bytes]]
    ) -> SegmentWriter:
        """Create a segment atomically with its header and first records."""
        salt = secrets.randbits(32)
        body = encode_segment_header(seq, salt) + b"".join(
            encode_record(salt, k, p) for k, p in first_records
        )
        final = directory / segment_name(seq)
        tmp = directory / (segment_name(seq) + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        fsync_dir(directory)
        return cls(final, seq, salt, len(body))

    def append(self, records: list[tuple[int, bytes]]) -> None:
        """Write records in one go and fsync before returning."""
        if not records:
            return
        data = b"".join(encode_record(self.salt, k, p) for k, p in records)
        _write_all(self._fd, data)
        os.fsync(self._fd)
        self.size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def truncate_file(path: Path, size: int) -> None:
    """Cut a torn tail off durably."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(directory: Path) -> None:
    """Leftovers of interrupted atomic writes are never part of the state."""
    for p in directory.iterdir():
        if p.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def iter_records(scans: list[SegmentScan]) -> Iterator[tuple[SegmentScan, Record]]:
    for scan in scans:
        for rec in scan.records:
            yield scan, rec
