"""Wire codec for Raft messages: msgpack maps with a schema version, and
length-prefixed frames.

Every byte a peer sends is hostile until proven otherwise (DESIGN.md §2.8):
`decode_message` reads the body with a typed reader for exactly this schema,
checking every header before reading what it announces (types, ranges, enum
values, known keys, counts, lengths) and raising `DecodeError` on the first
problem. It never returns a partially checked message, and its work and
memory are bounded in total by `Limits`, not per container.
`decode_message_async` does the same off the event loop for large frames.

Message map (short keys; fields equal to their default are omitted)::

    v   schema version (1)          t   MsgType        to, fr  node ids (>= 1)
    tm  term     lt  log_term       i   index          c   commit
    rj  reject (bool)   rh  reject_hint   cx  context (bytes)
    e   entries: [[term, index, type, data], ...]   (APPEND only; consecutive)
    s   snapshot: {i: index, t: term, vo: [voters], le: [learners], d: data}
        (required in SNAPSHOT messages, refused in all others)

Frames: a 4-byte big-endian body length, then the body. `FrameDecoder` checks
the length before it buffers the body, so a peer cannot make it allocate more
than `max_frame` (plus one read) bytes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgpack

from .messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

WIRE_VERSION = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
U63 = (1 << 63) - 1
_LEN = struct.Struct(">I")


class DecodeError(ValueError):
    """A frame or message failed a size, syntax or schema check."""


class FrameTooLarge(DecodeError):
    """A length prefix announced a body larger than the frame limit.

    `complete` holds the frame bodies that the same `feed()` call finished
    before it met the bad prefix; they were well-framed and may be used.
    """

    def __init__(self, message: str, complete: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.complete: list[bytes] = complete or []


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to every decoded message."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_entries: int = 100_000
    max_context: int = 4096
    max_members: int = 1024  # voters + learners in a snapshot's ConfState

    def __post_init__(self) -> None:
        if not 1 <= self.max_frame <= 0xFFFFFFFF:
            raise ValueError("max_frame must fit a 4-byte length prefix")


DEFAULT_LIMITS = Limits()

_MSG_KEYS = frozenset({"v", "t", "to", "fr", "tm", "lt", "i", "e", "c", "rj", "rh", "s", "cx"})
_SNAP_KEYS = frozenset({"i", "t", "vo", "le", "d"})


# --- encoding -----------------------------------------------------------------


def _message_map(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"v": WIRE_VERSION, "t": int(m.type), "to": m.to, "fr": m.frm}
    for key, val in (
        ("tm", m.term),
        ("lt", m.log_term),
        ("i", m.index),
        ("c", m.commit),
        ("rh", m.reject_hint),
    ):
        if val:
            d[key] = val
    if m.reject:
        d["rj"] = True
    if m.context:
        d["cx"] = bytes(m.context)
    if m.entries:
        d["e"] = [[e.term, e.index, int(e.type), bytes(e.data)] for e in m.entries]
    if m.snapshot is not None:
        s = m.snapshot
        d["s"] = {
            "i": s.meta.index,
            "t": s.meta.term,
            "vo": sorted(s.meta.conf.voters),
            "le": sorted(s.meta.conf.learners),
            "d": bytes(s.data),
        }
    return d


def encode_message(m: Message) -> bytes:
    """The msgpack body of one message (no length prefix)."""
    return msgpack.packb(_message_map(m), use_bin_type=True)


def encode_frame(m: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Length prefix + body. Refuses to produce a frame the receiver would reject."""
    body = encode_message(m)
    if len(body) > max_frame:
        raise FrameTooLarge(f"message body of {len(body)} bytes exceeds the {max_frame} limit")
    return _LEN.pack(len(body)) + body


# --- decoding -----------------------------------------------------------------
#
# A typed reader for exactly this schema instead of `msgpack.unpackb` + checks.
# msgpack's limits are per container: a 16 MiB body of nested empty arrays,
# each array under `max_array_len`, made it build ~16M lists (1 GiB, seconds of
# CPU) before any schema check ran, and every array header pre-allocates up to
# 10,000 slots even when its items never arrive (~78 MiB from a 5 KiB body of
# 1,024 nested headers). This reader walks the bytes once, checks each header
# against the schema *before* reading what follows, and creates only the
# objects a valid message is made of: work is linear in the bytes it reads and
# memory is bounded by `Limits` (at most two maps, `max_entries` entries,
# `max_members` member ids), whatever the body holds.

_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
# msgpack int headers -> (struct reader, width); cc..cf unsigned, d0..d3 signed
_INTS: dict[int, tuple[Callable[[bytes, int], tuple[int, ...]], int]] = {
    0xCC: (_U8, 1),
    0xCD: (_U16, 2),
    0xCE: (_U32, 4),
    0xCF: (struct.Struct(">Q").unpack_from, 8),
    0xD0: (struct.Struct(">b").unpack_from, 1),
    0xD1: (struct.Struct(">h").unpack_from, 2),
    0xD2: (struct.Struct(">i").unpack_from, 4),
    0xD3: (struct.Struct(">q").unpack_from, 8),
}
_MAX_KEY = 64  # bytes; the longest known key has 2
_MSG_KEY_BYTES = {k.encode(): k for k in _MSG_KEYS}
_SNAP_KEY_BYTES = {k.encode(): k for k in _SNAP_KEYS}
_FIELD_NAMES = {
    "t": "type",
    "to": "to",
    "fr": "frm",
    "tm": "term",
    "lt": "log_term",
    "i": "index",
    "c": "commit",
    "rh": "reject_hint",
}
_ENTRY_TYPES = {int(t): t for t in EntryType}
_MSG_TYPES = {int(t): t for t in MsgType}


def _kind(b: int) -> str:
    """The Python type msgpack would have made of a value starting with byte `b`
    (for error messages; nothing is decoded to find out)."""
    if b < 0x80 or b >= 0xE0 or 0xCC <= b <= 0xD3:
        return "int"
    if b <= 0x8F or b in (0xDE, 0xDF):
        return "dict"
    if b <= 0x9F or b in (0xDC, 0xDD):
        return "list"
    if b <= 0xBF or 0xD9 <= b <= 0xDB:
        return "str"
    if 0xC4 <= b <= 0xC6:
        return "bytes"
    return {0xC0: "NoneType", 0xC1: "invalid byte 0xc1", 0xC2: "bool", 0xC3: "bool"}.get(
        b, "float" if b in (0xCA, 0xCB) else "ExtType"
    )


def _wrong(name: str, expected: str, b: int) -> DecodeError:
    kind = _kind(b)
    if kind in ("ExtType", "invalid byte 0xc1"):  # msgpack itself refuses these
        return DecodeError(f"malformed msgpack body: {name}: {kind}")
    return DecodeError(f"{name}: expected {expected}, got {kind}")


def _uint(buf: bytes, pos: int, name: str) -> tuple[int, int]:
    """An integer in [0, 2^63) in any msgpack int encoding; (value, next pos)."""
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    spec = _INTS.get(b)
    if spec is None:
        if b >= 0xE0:
            raise DecodeError(f"{name}: {b - 256} out of range [0, 2^63)")
        raise _wrong(name, "an integer", b)
    (v,) = spec[0](buf, pos + 1)
    if not 0 <= v <= U63:
        raise DecodeError(f"{name}: {v} out of range [0, 2^63)")
    return v, pos + 1 + spec[1]


def _node_id(buf: bytes, pos: int, name: str) -> tuple[int, int]:
    v, pos = _uint(buf, pos, name)
    if v == 0:
        raise DecodeError(f"{name}: node id must be positive")
    return v, pos


def _bin(buf: bytes, pos: int, name: str, limit: int) -> tuple[bytes, int]:
    """A msgpack bin of at most `limit` bytes; the length is checked before the copy."""
    b = buf[pos]
    if b == 0xC4:
        n, start = buf[pos + 1], pos + 2
    elif b == 0xC5:
        (n,), start = _U16(buf, pos + 1), pos + 3
    elif b == 0xC6:
        (n,), start = _U32(buf, pos + 1), pos + 5
    else:
        raise _wrong(name, "bytes", b)
    if n > limit:
        raise DecodeError(f"{name}: {n} bytes exceeds the {limit} limit")
    end = start + n
    if end > len(buf):
        raise IndexError("truncated")
    return buf[start:end], end


def _header(buf: bytes, pos: int, name: str, limit: int, *, map_: bool) -> tuple[int, int]:
    """An array (or map) header announcing at most `limit` items; (count, next pos)."""
    b = buf[pos]
    fix, h16 = (0x80, 0xDE) if map_ else (0x90, 0xDC)
    if fix <= b <= fix + 0x0F:
        n, pos = b & 0x0F, pos + 1
    elif b == h16:
        (n,), pos = _U16(buf, pos + 1), pos + 3
    elif b == h16 + 1:
        (n,), pos = _U32(buf, pos + 1), pos + 5
    else:
        raise _wrong(name, "a map" if map_ else "an array", b)
    if n > limit:
        raise DecodeError(f"{name}: {n} items exceed the {limit} limit")
    return n, pos


def _key(buf: bytes, pos: int, known: dict[bytes, str], name: str) -> tuple[str, int]:
    """A map key that must be one of `known` (compared as raw UTF-8, never decoded)."""
    b = buf[pos]
    if 0xA0 <= b <= 0xBF:
        n, start = b & 0x1F, pos + 1
    elif b == 0xD9:
        n, start = buf[pos + 1], pos + 2
    elif b in (0xDA, 0xDB):
        (n,), start = (_U16 if b == 0xDA else _U32)(buf, pos + 1), pos + (3 if b == 0xDA else 5)
    else:
        raise DecodeError(f"{name}: unknown field (a {_kind(b)} key)")
    if n > _MAX_KEY:
        raise DecodeError(f"{name}: unknown field (a {n}-byte key)")
    end = start + n
    if end > len(buf):
        raise IndexError("truncated")
    key = known.get(buf[start:end])
    if key is None:
        raise DecodeError(f"{name}: unknown field {buf[start:end].decode(errors='replace')!r}")
    return key, end


def _entries(buf: bytes, pos: int, lim: Limits) -> tuple[tuple[Entry, ...], int]:
    n, pos = _header(buf, pos, "entries", lim.max_entries, map_=False)
    if pos + n > len(buf):  # every entry takes at least one byte
        raise IndexError("truncated")
    out: list[Entry] = []
    prev = -1
    try:
        for _ in range(n):
            if buf[pos] == 0x94:  # fixarray of 4: every encoder's choice
                pos += 1
            else:
                size, pos = _header(buf, pos, "", 4, map_=False)
                if size != 4:
                    raise DecodeError(": expected [term, index, type, data]")
            term, pos = _uint(buf, pos, ".term")
            index, pos = _node_id(buf, pos, ".index")  # log indexes are >= 1 too
            t, pos = _uint(buf, pos, ".type")
            etype = _ENTRY_TYPES.get(t)
            if etype is None:
                raise DecodeError(f".type: unknown entry type {t}")
            data, pos = _bin(buf, pos, ".data", lim.max_frame)
            if prev >= 0 and index != prev + 1:
                raise DecodeError(": index not consecutive")
            prev = index
            out.append(Entry(term, index, etype, data))
    except DecodeError as exc:
        raise DecodeError(f"entries[{len(out)}]{exc}") from None
    return tuple(out), pos


def _members(buf: bytes, pos: int, name: str, limit: int) -> tuple[list[int], int]:
    n, pos = _header(buf, pos, name, limit, map_=False)
    out: list[int] = []
    for _ in range(n):
        v, pos = _node_id(buf, pos, f"{name}[]")
        out.append(v)
    return out, pos


def _snapshot(buf: bytes, pos: int, lim: Limits) -> tuple[Snapshot, int]:
    n, pos = _header(buf, pos, "snapshot", len(_SNAP_KEYS), map_=True)
    f: dict[str, Any] = {}
    for _ in range(n):
        key, pos = _key(buf, pos, _SNAP_KEY_BYTES, "snapshot")
        if key in f:
            raise DecodeError(f"snapshot: duplicate field {key!r}")
        if key == "i":
            f[key], pos = _uint(buf, pos, "snapshot.index")
        elif key == "t":
            f[key], pos = _uint(buf, pos, "snapshot.term")
        elif key == "d":
            f[key], pos = _bin(buf, pos, "snapshot.data", lim.max_frame)
        else:
            name = "snapshot.voters" if key == "vo" else "snapshot.learners"
            f[key], pos = _members(buf, pos, name, lim.max_members)
    voters, learners = f.get("vo", []), f.get("le", [])
    if len(voters) + len(learners) > lim.max_members:
        raise DecodeError("snapshot: too many members")
    conf = ConfState(frozenset(voters), frozenset(learners))
    if len(conf.voters) != len(voters) or len(conf.learners) != len(learners):
        raise DecodeError("snapshot: duplicate member ids")
    meta = SnapshotMeta(f.get("i", 0), f.get("t", 0), conf)
    return Snapshot(meta, f.get("d", b"")), pos


def _fields(buf: bytes, lim: Limits) -> dict[str, Any]:
    """The top-level map, each value type-checked as it is read."""
    if not buf:
        raise DecodeError("malformed msgpack body: empty")
    n, pos = _header(buf, 0, "message", len(_MSG_KEYS), map_=True)
    d: dict[str, Any] = {}
    size = len(buf)
    for _ in range(n):
        # fast paths inline (a fixstr key, a fixint value): a heartbeat is ~7 of each
        b = buf[pos]
        end = pos + 1 + (b & 0x1F)
        key = _MSG_KEY_BYTES.get(buf[pos + 1 : end]) if 0xA0 <= b <= 0xBF and end <= size else None
        if key is None:
            key, end = _key(buf, pos, _MSG_KEY_BYTES, "message")  # or raise
        pos = end
        if key in d:
            raise DecodeError(f"message: duplicate field {key!r}")
        name = _FIELD_NAMES.get(key)
        if name is not None:
            b = buf[pos]
            if b < 0x80:
                d[key] = b
                pos += 1
            else:
                d[key], pos = _uint(buf, pos, name)
        elif key == "e":
            d[key], pos = _entries(buf, pos, lim)
        elif key == "s":
            d[key], pos = _snapshot(buf, pos, lim)
        elif key == "cx":
            d[key], pos = _bin(buf, pos, "context", lim.max_context)
        elif key == "rj":
            b = buf[pos]
            if b not in (0xC2, 0xC3):
                raise DecodeError("reject: expected a boolean")
            d[key], pos = b == 0xC3, pos + 1
        else:  # "v"
            try:
                d[key], pos = _uint(buf, pos, "v")
            except DecodeError:
                raise DecodeError(
                    f"message: unknown schema version (a {_kind(buf[pos])})"
                ) from None
            if d[key] != WIRE_VERSION:
                raise DecodeError(f"message: unknown schema version {d[key]!r}")
    if pos != len(buf):
        raise DecodeError("malformed msgpack body: trailing bytes")
    return d


def decode_message(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Read and schema-check one message body. Raises DecodeError on any problem.

    Cost is linear in the bytes read and memory is bounded by `limits` whatever
    the body holds (see the comment at the top of the decoding section)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise DecodeError("body must be bytes")
    if len(body) > limits.max_frame:
        raise FrameTooLarge(f"body of {len(body)} bytes exceeds the {limits.max_frame} limit")
    try:
        d = _fields(bytes(body), limits)
    except (IndexError, struct.error):
        raise DecodeError("malformed msgpack body: truncated") from None
    if "v" not in d:
        raise DecodeError("message: schema version 'v' missing")
    for req in ("t", "to", "fr"):
        if req not in d:
            raise DecodeError(f"message: required field {req!r} missing")
    mtype = _MSG_TYPES.get(d["t"])
    if mtype is None:
        raise DecodeError(f"type: unknown message type {d['t']}")
    entries = d.get("e", ())
    if entries and mtype is not MsgType.APPEND:
        raise DecodeError(f"entries: not allowed in a {mtype.name} message")
    if ("s" in d) != (mtype is MsgType.SNAPSHOT):
        raise DecodeError("snapshot: required in SNAPSHOT messages and only there")
    for key, name in (("to", "to"), ("fr", "frm")):
        if d[key] == 0:
            raise DecodeError(f"{name}: node id must be positive")
    return Message(
        type=mtype,
        to=d["to"],
        frm=d["fr"],
        term=d.get("tm", 0),
        log_term=d.get("lt", 0),
        index=d.get("i", 0),
        entries=entries,
        commit=d.get("c", 0),
        reject=d.get("rj", False),
        reject_hint=d.get("rh", 0),
        snapshot=d.get("s"),
        context=d.get("cx", b""),
    )


# Frames above this are decoded in a worker thread by `decode_message_async`:
# a valid 10,000-entry APPEND takes milliseconds to check, which the event loop
# should not spend in one piece; small frames are not worth a thread hop.
OFFLOAD_BYTES = 256 * 1024
_pool: ThreadPoolExecutor | None = None


def _default_pool() -> ThreadPoolExecutor:
    # One worker: decoding is pure Python under the GIL, so more threads would
    # not decode faster, only hold more frames in memory at once.
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codec-decode")
    return _pool


async def decode_message_async(
    body: bytes,
    limits: Limits = DEFAULT_LIMITS,
    executor: Executor | None = None,
    *,
    offload_bytes: int = OFFLOAD_BYTES,
) -> Message:
    """`decode_message` that keeps the event loop responsive: bodies larger than
    `offload_bytes` are decoded in `executor` (default: a shared one-thread
    pool), smaller ones inline. Awaiting it per frame keeps a connection's
    frames in order and stops reading that connection while a frame decodes."""
    if len(body) <= offload_bytes:
        return decode_message(body, limits)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor or _default_pool(), decode_message, body, limits)


class _OverBudget(Exception):
    pass


def unpack_bounded(body: bytes, *, max_lists: int, max_maps: int = 0, **limits: Any) -> Any:
    """`msgpack.unpackb` with a budget on the arrays and maps built *in total*,
    for other msgpack schemas (snapshot stream frames are arrays): msgpack's
    `max_*_len` limits are per container, so without a budget a body of
    nested small containers builds millions of them.

    The hooks run as each container completes (innermost first), so at most
    `max_lists` arrays of at most `max_array_len` items are ever built, plus
    msgpack's pre-allocation for nested headers (<= 1,024 levels, each at most
    min(announced, 10,000) slots; set `max_array_len` small). `limits` are
    passed to `unpackb` (set every `max_*_len`). Raises DecodeError.
    """
    lists = maps = 0

    def on_list(v: list[Any]) -> list[Any]:
        nonlocal lists
        lists += 1
        if lists > max_lists:
            raise _OverBudget(f"more than {max_lists} arrays")
        return v

    def on_map(v: dict[Any, Any]) -> dict[Any, Any]:
        nonlocal maps
        maps += 1
        if maps > max_maps:
            raise _OverBudget(f"more than {max_maps} maps")
        return v

    try:
        return msgpack.unpackb(body, list_hook=on_list, object_hook=on_map, **limits)
    except _OverBudget as exc:
        raise DecodeError(f"malformed msgpack body: {exc}") from None
    except Exception as exc:  # msgpack raises many types; all mean "bad input"
        why = f"{type(exc).__name__}: {str(exc)[:80]}"
        raise DecodeError(f"malformed msgpack body: {why}") from None


class FrameDecoder:
    """Incremental splitter of a byte stream into frame bodies.

    Holds at most one partial frame (header + up to `max_frame` bytes) between
    calls; an oversized length prefix raises FrameTooLarge before any of its
    body is buffered, after which the decoder is unusable (close the stream).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 1 <= max_frame <= 0xFFFFFFFF:
            raise ValueError("max_frame must fit a 4-byte length prefix")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every frame body completed by them."""
        if self._broken:
            raise DecodeError("frame stream already failed")
        out: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._need is None:
                take = min(4 - len(self._buf), len(view))
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < 4:
                    break
                (n,) = _LEN.unpack(self._buf)
                self._buf.clear()
                if n > self.max_frame:
                    self._broken = True
                    raise FrameTooLarge(
                        f"length prefix {n} exceeds the {self.max_frame} limit", out
                    )
                self._need = n
            take = min(self._need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need:
                out.append(bytes(self._buf))
                self._buf.clear()
                self._need = None
        return out


def decode_frames(chunks: Iterable[bytes], limits: Limits = DEFAULT_LIMITS) -> list[Message]:
    """Decode a whole stream given as chunks (tests and tools)."""
    dec = FrameDecoder(limits.max_frame)
    return [decode_message(b, limits) for c in chunks for b in dec.feed(c)]
