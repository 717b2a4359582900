"""Wire codec for Raft messages: msgpack maps with a schema version, and
length-prefixed frames.

Every byte a peer sends is hostile until proven otherwise (DESIGN.md §2.8):
`decode_message` unpacks with hard msgpack limits and then checks the schema
field by field (types, ranges, enum values, known keys, counts, lengths),
raising `DecodeError` on the first problem. It never returns a partially
checked message.

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

import struct
from collections.abc import Iterable
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


def _uint(v: Any, name: str) -> int:
    # bool is an int subclass in Python; msgpack booleans are not numbers here
    if type(v) is not int:
        raise DecodeError(f"{name}: expected an integer, got {type(v).__name__}")
    if not 0 <= v <= U63:
        raise DecodeError(f"{name}: {v} out of range [0, 2^63)")
    return v


def _node_id(v: Any, name: str) -> int:
    n = _uint(v, name)
    if n == 0:
        raise DecodeError(f"{name}: node id must be positive")
    return n


def _bytes(v: Any, name: str, limit: int) -> bytes:
    if type(v) is not bytes:
        raise DecodeError(f"{name}: expected bytes, got {type(v).__name__}")
    if len(v) > limit:
        raise DecodeError(f"{name}: {len(v)} bytes exceeds the {limit} limit")
    return v


def _list(v: Any, name: str, limit: int) -> list[Any]:
    if type(v) is not list:
        raise DecodeError(f"{name}: expected an array, got {type(v).__name__}")
    if len(v) > limit:
        raise DecodeError(f"{name}: {len(v)} items exceed the {limit} limit")
    return v


def _check_keys(d: dict[Any, Any], allowed: frozenset[str], name: str) -> None:
    for k in d:
        if type(k) is not str or k not in allowed:
            raise DecodeError(f"{name}: unknown field {k!r}")


def _entry(v: Any, n: int, limit: int) -> Entry:
    item = _list(v, f"entries[{n}]", 4)
    if len(item) != 4:
        raise DecodeError(f"entries[{n}]: expected [term, index, type, data]")
    term = _uint(item[0], f"entries[{n}].term")
    index = _node_id(item[1], f"entries[{n}].index")  # log indexes are >= 1 too
    t = _uint(item[2], f"entries[{n}].type")
    try:
        etype = EntryType(t)
    except ValueError:
        raise DecodeError(f"entries[{n}].type: unknown entry type {t}") from None
    return Entry(term, index, etype, _bytes(item[3], f"entries[{n}].data", limit))


def _snapshot(v: Any, lim: Limits) -> Snapshot:
    if type(v) is not dict:
        raise DecodeError(f"snapshot: expected a map, got {type(v).__name__}")
    _check_keys(v, _SNAP_KEYS, "snapshot")
    voters = _list(v.get("vo", []), "snapshot.voters", lim.max_members)
    learners = _list(v.get("le", []), "snapshot.learners", lim.max_members)
    if len(voters) + len(learners) > lim.max_members:
        raise DecodeError("snapshot: too many members")
    conf = ConfState(
        frozenset(_node_id(x, "snapshot.voters[]") for x in voters),
        frozenset(_node_id(x, "snapshot.learners[]") for x in learners),
    )
    if len(conf.voters) != len(voters) or len(conf.learners) != len(learners):
        raise DecodeError("snapshot: duplicate member ids")
    meta = SnapshotMeta(
        _uint(v.get("i", 0), "snapshot.index"), _uint(v.get("t", 0), "snapshot.term"), conf
    )
    return Snapshot(meta, _bytes(v.get("d", b""), "snapshot.data", lim.max_frame))


def _unpack(body: bytes, lim: Limits) -> Any:
    n = max(lim.max_entries, lim.max_members, 4)
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=lim.max_frame,
            max_str_len=64,
            max_array_len=n,
            max_map_len=32,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "bad input"
        raise DecodeError(f"malformed msgpack body: {type(exc).__name__}") from None


def decode_message(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Unpack and schema-check one message body. Raises DecodeError on any problem."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise DecodeError("body must be bytes")
    if len(body) > limits.max_frame:
        raise FrameTooLarge(f"body of {len(body)} bytes exceeds the {limits.max_frame} limit")
    d = _unpack(bytes(body), limits)
    if type(d) is not dict:
        raise DecodeError(f"message: expected a map, got {type(d).__name__}")
    _check_keys(d, _MSG_KEYS, "message")
    if "v" not in d:
        raise DecodeError("message: schema version 'v' missing")
    if type(d["v"]) is not int or d["v"] != WIRE_VERSION:
        raise DecodeError(f"message: unknown schema version {d['v']!r}")
    for req in ("t", "to", "fr"):
        if req not in d:
            raise DecodeError(f"message: required field {req!r} missing")
    t = _uint(d["t"], "type")
    try:
        mtype = MsgType(t)
    except ValueError:
        raise DecodeError(f"type: unknown message type {t}") from None
    raw_entries = _list(d.get("e", []), "entries", limits.max_entries)
    entries = tuple(_entry(x, n, limits.max_frame) for n, x in enumerate(raw_entries))
    for n in range(1, len(entries)):
        if entries[n].index != entries[n - 1].index + 1:
            raise DecodeError(f"entries[{n}]: index not consecutive")
    if entries and mtype is not MsgType.APPEND:
        raise DecodeError(f"entries: not allowed in a {mtype.name} message")
    if ("s" in d) != (mtype is MsgType.SNAPSHOT):
        raise DecodeError("snapshot: required in SNAPSHOT messages and only there")
    reject = d.get("rj", False)
    if type(reject) is not bool:
        raise DecodeError("reject: expected a boolean")
    snap = d.get("s")
    return Message(
        type=mtype,
        to=_node_id(d["to"], "to"),
        frm=_node_id(d["fr"], "frm"),
        term=_uint(d.get("tm", 0), "term"),
        log_term=_uint(d.get("lt", 0), "log_term"),
        index=_uint(d.get("i", 0), "index"),
        entries=entries,
        commit=_uint(d.get("c", 0), "commit"),
        reject=reject,
        reject_hint=_uint(d.get("rh", 0), "reject_hint"),
        snapshot=None if snap is None else _snapshot(snap, limits),
        context=_bytes(d.get("cx", b""), "context", limits.max_context),
    )


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
