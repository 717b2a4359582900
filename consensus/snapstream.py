"""Snapshot streaming: the wire format of chunked SNAPSHOT transfers and the
receiver's on-disk spool of partial snapshots.

A snapshot can be far larger than one frame, so the transport sends a
SNAPSHOT message as a *stream* (as etcd's separate snapshot sender does); the
Raft core still emits and receives one logical message. Stream frames ride
on the same length-prefixed connections as messages. A message body is a
msgpack *map* (first byte 0x80-0x8f); a stream frame is a msgpack *array*
(0x90-0x9f), so the two are told apart before anything is decoded.

Frames (``v`` = STREAM_VERSION, ``sid`` = random stream id >= 1, chosen by the
sender per header, echoed by HAVE so a late answer to an older header is
ignored)::

    HEADER [v, 1, sid, term, from, to, index, snap_term, [voters], [learners],
            total, sha256]                       sender -> receiver
    CHUNK  [v, 2, sid, offset, data]             sender -> receiver
    HAVE   [v, 3, sid, index, snap_term, sha256, offset]
                                                 receiver -> sender, on the
                                                 receiver's own outbound link

``sha256`` is SHA-256 of the raw snapshot data (nothing else is hashed, so no
domain separation is needed); ``total`` is its length. Every frame is
schema-checked by `decode_frame` with hard bounds; nothing in it is trusted
(offsets and lengths included) until checked against the receiver's state.

The receiver keeps the bytes received so far in one spool file per sender,
named after the snapshot's identity, so a stream cut by a dropped
connection or a restart resumes where it stopped (`Spool`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgpack

from .codec import DecodeError, unpack_bounded

STREAM_VERSION = 1
DIGEST_LEN = 32
U63 = (1 << 63) - 1
DEFAULT_MAX_SNAPSHOT_BYTES = 4 << 30
MAX_CHUNK = 1 << 20  # data bytes per CHUNK frame (also bounded by max_frame / 2)
_LEN = struct.Struct(">I")


class Kind(IntEnum):
    HEADER = 1
    CHUNK = 2
    HAVE = 3


_ARITY = {Kind.HEADER: 12, Kind.CHUNK: 5, Kind.HAVE: 7}


class StreamDecodeError(DecodeError):
    """A stream frame failed a size, syntax or schema check."""


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds applied to every decoded stream frame."""

    max_chunk: int  # data bytes in one CHUNK (the receiver's max_frame)
    max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
    max_members: int = 1024  # voters + learners

    def __post_init__(self) -> None:
        if self.max_chunk < 1 or not 0 <= self.max_snapshot_bytes <= U63:
            raise ValueError("invalid stream limits")


@dataclass(frozen=True, slots=True)
class Header:
    sid: int
    term: int  # the SNAPSHOT message's term
    frm: int
    to: int
    index: int
    snap_term: int
    voters: frozenset[int]
    learners: frozenset[int]
    total: int
    digest: bytes

    @property
    def ident(self) -> tuple[int, int, int, bytes]:
        """What makes two streams carry the same bytes (resumable into each other)."""
        return self.index, self.snap_term, self.total, self.digest


@dataclass(frozen=True, slots=True)
class Chunk:
    sid: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Have:
    sid: int
    index: int
    snap_term: int
    digest: bytes
    offset: int


Frame = Header | Chunk | Have


# --- encoding -------------------------------------------------------------------


def _frame(obj: list[Any]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def encode_header(h: Header) -> bytes:
    """A length-prefixed HEADER frame."""
    return _frame(
        [
            STREAM_VERSION, int(Kind.HEADER), h.sid, h.term, h.frm, h.to, h.index,
            h.snap_term, sorted(h.voters), sorted(h.learners), h.total, h.digest,
        ]
    )  # fmt: skip


def encode_chunk(sid: int, offset: int, data: bytes | memoryview) -> bytes:
    """A length-prefixed CHUNK frame."""
    return _frame([STREAM_VERSION, int(Kind.CHUNK), sid, offset, data])


def encode_have(hv: Have) -> bytes:
    """A length-prefixed HAVE frame."""
    return _frame(
        [STREAM_VERSION, int(Kind.HAVE), hv.sid, hv.index, hv.snap_term, hv.digest, hv.offset]
    )


def digest_of(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


# --- decoding -------------------------------------------------------------------


def is_stream_frame(body: bytes) -> bool:
    """True for a msgpack fixarray body (stream frame); messages are maps."""
    return len(body) > 0 and 0x90 <= body[0] <= 0x9F


def _uint(v: Any, name: str, lo: int = 0, hi: int = U63) -> int:
    if type(v) is not int:  # never bool or float
        raise StreamDecodeError(f"{name}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise StreamDecodeError(f"{name}: {v} out of range [{lo}, {hi}]")
    return v


def _digest(v: Any, name: str) -> bytes:
    if type(v) is not bytes or len(v) != DIGEST_LEN:
        raise StreamDecodeError(f"{name}: expected {DIGEST_LEN} bytes")
    return v


def _members(v: Any, name: str, limit: int) -> frozenset[int]:
    if type(v) is not list:
        raise StreamDecodeError(f"{name}: expected an array, got {type(v).__name__}")
    if len(v) > limit:
        raise StreamDecodeError(f"{name}: {len(v)} items exceed the {limit} limit")
    ids = frozenset(_uint(x, f"{name}[]", 1) for x in v)
    if len(ids) != len(v):
        raise StreamDecodeError(f"{name}: duplicate member ids")
    return ids


def decode_frame(body: bytes, limits: StreamLimits) -> Frame:
    """Unpack and schema-check one stream frame body; raises StreamDecodeError."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise StreamDecodeError("body must be bytes")
    body = bytes(body)
    if not is_stream_frame(body):
        raise StreamDecodeError("not a stream frame: expected a msgpack array of <= 15 items")
    try:
        d = unpack_bounded(
            body,
            max_lists=3,  # the frame, a header's voters and learners: in total
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max(limits.max_chunk, DIGEST_LEN),
            max_str_len=0,
            max_array_len=max(limits.max_members, 15),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "bad input"
        why = f"{type(exc).__name__}: {str(exc)[:80]}"
        raise StreamDecodeError(f"malformed stream frame: {why}") from None
    if type(d) is not list or len(d) < 2:
        raise StreamDecodeError("stream frame: expected [version, kind, ...]")
    if type(d[0]) is not int or d[0] != STREAM_VERSION:
        raise StreamDecodeError(f"stream frame: unknown version {d[0]!r}")
    k = _uint(d[1], "kind")
    try:
        kind = Kind(k)
    except ValueError:
        raise StreamDecodeError(f"kind: unknown stream frame kind {k}") from None
    if len(d) != _ARITY[kind]:
        raise StreamDecodeError(f"{kind.name}: expected {_ARITY[kind]} fields, got {len(d)}")
    sid = _uint(d[2], "sid", 1)
    cap = limits.max_snapshot_bytes
    if kind is Kind.CHUNK:
        offset = _uint(d[3], "chunk.offset", 0, cap)
        data = d[4]
        if type(data) is not bytes or not 1 <= len(data) <= limits.max_chunk:
            raise StreamDecodeError(f"chunk.data: expected 1..{limits.max_chunk} bytes")
        if offset + len(data) > cap:
            raise StreamDecodeError(f"chunk: ends past the {cap}-byte snapshot bound")
        return Chunk(sid, offset, data)
    if kind is Kind.HAVE:
        return Have(
            sid,
            _uint(d[3], "have.index", 1),
            _uint(d[4], "have.snap_term"),
            _digest(d[5], "have.digest"),
            _uint(d[6], "have.offset", 0, cap),
        )
    term = _uint(d[3], "header.term")
    voters = _members(d[8], "header.voters", limits.max_members)
    learners = _members(d[9], "header.learners", limits.max_members)
    if len(voters) + len(learners) > limits.max_members:
        raise StreamDecodeError("header: too many members")
    if voters & learners:
        raise StreamDecodeError("header: a node is both voter and learner")
    total = _uint(d[10], "header.total")
    if total > cap:
        raise StreamDecodeError(f"header.total: {total} bytes exceed the {cap}-byte bound")
    return Header(
        sid=sid,
        term=term,
        frm=_uint(d[4], "header.from", 1),
        to=_uint(d[5], "header.to", 1),
        index=_uint(d[6], "header.index", 1),
        snap_term=_uint(d[7], "header.snap_term", 0, term),  # a leader's term >= its log's
        voters=voters,
        learners=learners,
        total=total,
        digest=_digest(d[11], "header.digest"),
    )


# --- the receiver's spool ---------------------------------------------------------


class SpoolError(Exception):
    """A completed stream failed its length or digest check (the partial is gone)."""


# snap-from-<sender>-<index>-<snap_term>-<total>-<sha256 hex>.part
_NAME = re.compile(
    r"snap-from-([1-9][0-9]{0,18})-([1-9][0-9]{0,18})-([0-9]{1,19})-([0-9]{1,19})"
    r"-([0-9a-f]{64})\.part"
)


@dataclass(slots=True)
class Partial:
    """The bytes [0, offset) of one sender's snapshot, in `path`.

    `header` is the header that started the current stream into it; None for
    a partial found on disk at start, which waits for a header to resume it.
    """

    pid: int
    index: int
    snap_term: int
    total: int
    digest: bytes
    path: Path
    offset: int
    header: Header | None = None

    @property
    def ident(self) -> tuple[int, int, int, bytes]:
        return self.index, self.snap_term, self.total, self.digest


class Spool:
    """Partial incoming snapshots on disk: at most one per sender.

    A partial is named after its sender and snapshot identity (index, term,
    length, SHA-256), so after a restart it is found again and resumed by a
    stream of the same snapshot; anything else from that sender replaces it.
    Files are 0600 in a 0700 directory and are never followed through
    symlinks. The bytes are not fsynced: a partial is only an optimisation
    and the final SHA-256 check catches whatever a crash left. All methods do
    blocking I/O (the transport runs them in a worker thread) and raise
    OSError on I/O failure. With `directory=None` a private temp directory is
    used and removed by `close()` (resume then works across reconnects only).
    """

    def __init__(self, directory: Path | None) -> None:
        self._given = directory
        self.directory: Path | None = directory

    def open(self, peers: Iterable[int]) -> dict[int, Partial]:
        """Create the directory; keep the newest partial of each known peer and
        delete every other partial (older, unknown sender, longer than claimed)."""
        if self._given is None:
            return {}  # the temp directory is made by the first begin()
        self._given.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._given, 0o700)  # also when it existed with a looser mode
        known = set(peers)
        found: dict[int, Partial] = {}
        with os.scandir(self._given) as it:
            entries = list(it)
        for entry in entries:
            if not entry.name.endswith(".part") or entry.is_dir(follow_symlinks=False):
                continue
            p = self._parse(Path(entry.path))
            if p is None or p.pid not in known:
                self._unlink(Path(entry.path))
                continue
            old = found.get(p.pid)
            if old is not None and (old.index, old.snap_term) >= (p.index, p.snap_term):
                self._unlink(p.path)
                continue
            if old is not None:
                self._unlink(old.path)
            found[p.pid] = p
        return found

    def _parse(self, path: Path) -> Partial | None:
        m = _NAME.fullmatch(path.name)
        if m is None:
            return None
        pid, index, term, total = (int(m.group(i)) for i in range(1, 5))
        if max(pid, index, term, total) > U63:
            return None
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > total:
            return None
        return Partial(pid, index, term, total, bytes.fromhex(m.group(5)), path, st.st_size)

    def _path(self, pid: int, h: Header) -> Path:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="raft-snap-"))  # mode 0700
        name = f"snap-from-{pid}-{h.index}-{h.snap_term}-{h.total}-{h.digest.hex()}.part"
        return self.directory / name

    def begin(self, pid: int, h: Header, current: Partial | None) -> Partial:
        """The partial to stream `h` into: `current` if it holds the same
        snapshot (resume), else a new empty file (`current` is deleted)."""
        if current is not None and current.ident == h.ident:
            current.header = h
            return current
        if current is not None:
            self.discard(current)
        path = self._path(pid, h)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        return Partial(pid, h.index, h.snap_term, h.total, h.digest, path, 0, h)

    def write(self, p: Partial, offset: int, data: bytes) -> None:
        """Store `data` at `offset` <= p.offset; a smaller offset means the sender
        started over, so the file is cut there first. Callers check bounds."""
        if not 0 <= offset <= p.offset or offset + len(data) > p.total:
            raise ValueError("chunk outside the partial")  # the transport checked this
        fd = os.open(p.path, os.O_WRONLY | os.O_NOFOLLOW)  # no O_CREAT: never resurrect
        try:
            if offset < p.offset:
                os.ftruncate(fd, offset)
                p.offset = offset
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, p.offset)
                p.offset += n
                view = view[n:]
        finally:
            os.close(fd)

    def finish(self, p: Partial) -> bytes:
        """Read the whole snapshot, check its length and SHA-256, delete the file.
        Raises SpoolError (file deleted) when the check fails."""
        try:
            fd = os.open(p.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(p.total + 1)
        finally:
            self._unlink(p.path)
        if len(data) != p.total:
            raise SpoolError(f"length {len(data)} != {p.total}")
        if not hmac.compare_digest(digest_of(data), p.digest):
            raise SpoolError("SHA-256 mismatch")
        return data

    def discard(self, p: Partial) -> None:
        self._unlink(p.path)

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def close(self) -> None:
        """Remove the private temp directory (a given directory is kept for resume)."""
        if self._given is None and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
