"""Peer-to-peer message codecs for signing and DKG round 2: strict, bounded msgpack.

Every message is one msgpack map with exactly the fields of its type plus
`v` (schema version) and `kind` (so that a message of one type never parses as
another). Decoding refuses, with `WireError`, anything else: oversize input,
trailing bytes, unknown or missing fields, wrong types (`bool` is not an
`int`), out-of-range values, and any encoding other than the canonical one
`encode()` produces (decode then re-encode must give the same bytes), so a
message has exactly one byte representation.

Only shapes are checked here. Whether a 32-byte string is a valid group
element, and whose fault it is if not, is decided by `shares` (which names
culprits); whether a request is approved is decided by the caller's replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack

#: Schema version of every message in this module.
WIRE_VERSION = 1
#: Cluster size bound (the state machine's MAX_MEMBERS; members are node-1..node-15).
MAX_MEMBERS = 15
#: Nonce commitments one CommitRequest may ask for.
MAX_COMMIT_COUNT = 64
MAX_REF_CHARS = 200
MAX_KEY_ID_CHARS = 64
#: Bound on a sealed DKG round-2 message carried by Round2Delivery.
MAX_ROUND2_MESSAGE = 4096
MAX_REPAIR_MESSAGE = 16 * 1024  # >= batch.MAX_MESSAGE_SIZE (checked in the tests)
U32 = (1 << 32) - 1
U63 = (1 << 63) - 1
ELEMENT_SIZE = 32
SCALAR_SIZE = 32

# Restated from node.state (key ids are state names) so this pure module loads
# nothing of the state machine.
_KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


class WireError(ValueError):
    """Bytes from a peer are not a well-formed message of the expected type."""


# ---------------------------------------------------------------- field checks
# Shared with dkg_session and signing: each raises the exception type it is given.


def check_int(value: object, what: str, lo: int, hi: int, exc: type[ValueError] = WireError) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise exc(f"{what} must be an integer in {lo}..{hi}")
    return value


def check_bytes(
    value: object,
    what: str,
    *,
    length: int | None = None,
    max_len: int | None = None,
    exc: type[ValueError] = WireError,
) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise exc(f"{what} must be bytes")
    if length is not None and len(value) != length:
        raise exc(f"{what} must be {length} bytes")
    if max_len is not None and len(value) > max_len:
        raise exc(f"{what} longer than {max_len} bytes")
    return bytes(value)


def check_token(value: object, what: str, max_chars: int, exc: type[ValueError] = WireError) -> str:
    """Printable ASCII without spaces, 1..max_chars: identifiers, references."""
    if type(value) is not str or not 1 <= len(value) <= max_chars or not _TOKEN_RE.fullmatch(value):
        raise exc(f"{what} must be 1..{max_chars} printable ASCII characters without spaces")
    return value


def check_key_id(value: object, exc: type[ValueError] = WireError) -> str:
    if type(value) is not str or not _KEY_ID_RE.fullmatch(value):
        raise exc("key_id is not a valid key name")
    return value


def check_version(value: object, exc: type[ValueError] = WireError) -> int:
    return check_int(value, "version", 1, U32, exc)


def check_commitment_rows(
    rows: object,
    what: str,
    *,
    min_len: int,
    max_len: int,
    id_range: tuple[int, int],
    sorted_ids: bool,
    exc: type[ValueError] = WireError,
) -> tuple[tuple[int, bytes, bytes], ...]:
    """A list of (id, hiding 32B, binding 32B); ids distinct (and ascending if asked)."""
    if not isinstance(rows, list | tuple) or not min_len <= len(rows) <= max_len:
        raise exc(f"{what} must be a list of {min_len}..{max_len} entries")
    out: list[tuple[int, bytes, bytes]] = []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) != 3:
            raise exc(f"{what} entries are (id, hiding, binding)")
        ident = check_int(row[0], f"{what} id", id_range[0], id_range[1], exc)
        hiding = check_bytes(row[1], f"{what} hiding commitment", length=ELEMENT_SIZE, exc=exc)
        binding = check_bytes(row[2], f"{what} binding commitment", length=ELEMENT_SIZE, exc=exc)
        out.append((ident, hiding, binding))
    ids = [r[0] for r in out]
    if len(set(ids)) != len(ids):
        raise exc(f"{what} has duplicate ids")
    if sorted_ids and ids != sorted(ids):
        raise exc(f"{what} must be sorted by identifier")
    return tuple(out)


# ---------------------------------------------------------------- framing


def _pack(kind: str, body: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": WIRE_VERSION, "kind": kind, **body}, use_bin_type=True)


def _unpack(data: object, kind: str, fields: frozenset[str], max_size: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise WireError(f"{kind}: message must be bytes")
    if len(data) > max_size:
        raise WireError(f"{kind}: message of {len(data)} bytes exceeds {max_size}")
    try:
        raw = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=MAX_COMMIT_COUNT,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ExtraData for trailing bytes)
        reason = type(exc).__name__
        raise WireError(f"{kind}: not a single valid msgpack value ({reason})") from None
    if type(raw) is not dict:
        raise WireError(f"{kind}: message must be a map")
    if set(raw) != fields | {"v", "kind"}:
        raise WireError(f"{kind}: fields must be exactly {sorted(fields)} plus v, kind")
    if type(raw["v"]) is not int or raw["v"] != WIRE_VERSION:
        raise WireError(f"{kind}: unsupported version (expected v={WIRE_VERSION})")
    if raw["kind"] != kind:
        raise WireError(f"expected a {kind} message")
    return raw


class _Message:
    """encode/decode shared by the message types: canonical bytes only."""

    KIND: ClassVar[str]
    FIELDS: ClassVar[frozenset[str]]
    MAX_SIZE: ClassVar[int]

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        return _pack(self.KIND, self._body())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse and validate peer bytes; WireError on anything but the canonical form."""
        msg = cls._from_raw(_unpack(data, cls.KIND, cls.FIELDS, cls.MAX_SIZE))
        if msg.encode() != bytes(data):
            raise WireError(f"{cls.KIND}: not in canonical encoding")
        return msg


# ---------------------------------------------------------------- signing messages


@dataclass(frozen=True, slots=True)
class CommitRequest(_Message):
    """Coordinator -> member: issue `count` fresh nonce commitments for (key_id, version)."""

    key_id: str
    version: int
    count: int

    KIND: ClassVar[str] = "frost-commit-request"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"key_id", "version", "count"})
    MAX_SIZE: ClassVar[int] = 256

    def __post_init__(self) -> None:
        check_key_id(self.key_id)
        check_version(self.version)
        check_int(self.count, "count", 1, MAX_COMMIT_COUNT)

    def _body(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "version": self.version, "count": self.count}

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["key_id"], raw["version"], raw["count"])


@dataclass(frozen=True, slots=True)
class CommitResponse(_Message):
    """Member -> coordinator: (commitment id, hiding, binding) per issued nonce pair."""

    commitments: tuple[tuple[int, bytes, bytes], ...]

    KIND: ClassVar[str] = "frost-commit-response"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"commitments"})
    MAX_SIZE: ClassVar[int] = 64 + MAX_COMMIT_COUNT * (3 + 9 + 2 * (2 + ELEMENT_SIZE))

    def __post_init__(self) -> None:
        rows = check_commitment_rows(
            self.commitments, "commitments", min_len=1, max_len=MAX_COMMIT_COUNT,
            id_range=(0, U63), sorted_ids=False,
        )  # fmt: skip
        object.__setattr__(self, "commitments", rows)

    def _body(self) -> dict[str, Any]:
        return {"commitments": [list(r) for r in self.commitments]}

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["commitments"])


@dataclass(frozen=True, slots=True)
class ShareRequest(_Message):
    """Coordinator -> member: sign request `request_ref` (committed at `log_index`).

    The member takes key, version and message from its own replica at
    `log_index`, never from this message; `key_id`/`version` and
    `message_digest` (the request's 64-byte payload hash, `node.state`'s
    `payload_hash(message)`) say what the coordinator believes it asks for, so
    the member refuses a mismatch (another key, another message) outright.
    """

    request_ref: str
    log_index: int
    key_id: str
    version: int
    commitment_list: tuple[tuple[int, bytes, bytes], ...]
    my_commitment_id: int
    message_digest: bytes
    generation: int = 0  # the share generation every signer of this round uses

    KIND: ClassVar[str] = "frost-share-request"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"request_ref", "log_index", "key_id", "version", "commitment_list", "my_commitment_id",
         "message_digest", "generation"}
    )  # fmt: skip
    MAX_SIZE: ClassVar[int] = 600 + MAX_MEMBERS * (2 + 2 + 2 * (2 + ELEMENT_SIZE))

    def __post_init__(self) -> None:
        check_token(self.request_ref, "request_ref", MAX_REF_CHARS)
        check_int(self.log_index, "log_index", 0, U63)
        check_key_id(self.key_id)
        check_version(self.version)
        rows = check_commitment_rows(
            self.commitment_list, "commitment_list", min_len=2, max_len=MAX_MEMBERS,
            id_range=(1, MAX_MEMBERS), sorted_ids=True,
        )  # fmt: skip
        object.__setattr__(self, "commitment_list", rows)
        check_int(self.my_commitment_id, "my_commitment_id", 0, U63)
        object.__setattr__(
            self, "message_digest", check_bytes(self.message_digest, "message_digest", length=64)
        )
        check_int(self.generation, "generation", 0, U32)

    def _body(self) -> dict[str, Any]:
        return {
            "request_ref": self.request_ref,
            "log_index": self.log_index,
            "key_id": self.key_id,
            "version": self.version,
            "commitment_list": [list(r) for r in self.commitment_list],
            "my_commitment_id": self.my_commitment_id,
            "message_digest": self.message_digest,
            "generation": self.generation,
        }

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(
            raw["request_ref"], raw["log_index"], raw["key_id"], raw["version"],
            raw["commitment_list"], raw["my_commitment_id"], raw["message_digest"],
            raw["generation"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ShareResponse(_Message):
    """Member -> coordinator: signature share z_i (public once sent; checked on aggregate)."""

    identifier: int
    share: bytes

    KIND: ClassVar[str] = "frost-share-response"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"identifier", "share"})
    MAX_SIZE: ClassVar[int] = 128

    def __post_init__(self) -> None:
        check_int(self.identifier, "identifier", 1, MAX_MEMBERS)
        object.__setattr__(self, "share", check_bytes(self.share, "share", length=SCALAR_SIZE))

    def _body(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "share": self.share}

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["identifier"], raw["share"])


# ---------------------------------------------------------------- DKG round 2


@dataclass(frozen=True, slots=True)
class Round2Delivery(_Message):
    """Member -> member: a sealed DKG round-2 message (dkg_session.on_round1's output).

    The envelope's `sender` must be the transport-authenticated peer; the
    recipient checks that before passing `message` to `DkgSession.on_round2`.
    """

    request_ref: str
    sender: int
    recipient: int
    message: bytes

    KIND: ClassVar[str] = "dkg-round2-delivery"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"request_ref", "sender", "recipient", "message"})
    MAX_SIZE: ClassVar[int] = 512 + MAX_ROUND2_MESSAGE

    def __post_init__(self) -> None:
        check_token(self.request_ref, "request_ref", MAX_REF_CHARS)
        check_int(self.sender, "sender", 1, MAX_MEMBERS)
        check_int(self.recipient, "recipient", 1, MAX_MEMBERS)
        if self.sender == self.recipient:
            raise WireError("sender and recipient must differ")
        message = check_bytes(self.message, "message", max_len=MAX_ROUND2_MESSAGE)
        if not message:
            raise WireError("message must not be empty")
        object.__setattr__(self, "message", message)

    def _body(self) -> dict[str, Any]:
        return {
            "request_ref": self.request_ref,
            "sender": self.sender,
            "recipient": self.recipient,
            "message": self.message,
        }

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["request_ref"], raw["sender"], raw["recipient"], raw["message"])


@dataclass(frozen=True, slots=True)
class RepairDelivery(_Message):
    """Member -> member during a share repair (docs/recovery.md): a helper's sealed
    pieces for another helper (`kind` "delta") or its sealed sums for the target
    ("sigma"), named by `part`, in run `run` of the repair of `member`. `sender` must be the
    transport-authenticated peer; the boxes inside are bound to the run's context,
    the direction and both parties, so a box cannot be replayed elsewhere."""

    member: str
    run: int
    part: str
    sender: int
    recipient: int
    message: bytes

    KIND: ClassVar[str] = "repair-delivery"
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"member", "run", "part", "sender", "recipient", "message"}
    )
    MAX_SIZE: ClassVar[int] = 512 + MAX_REPAIR_MESSAGE

    def __post_init__(self) -> None:
        check_token(self.member, "member", 16)
        check_int(self.run, "run", 1, U32)
        if self.part not in ("delta", "sigma"):
            raise WireError("part must be delta or sigma")
        check_int(self.sender, "sender", 1, MAX_MEMBERS)
        check_int(self.recipient, "recipient", 1, MAX_MEMBERS)
        if self.sender == self.recipient:
            raise WireError("sender and recipient must differ")
        message = check_bytes(self.message, "message", max_len=MAX_REPAIR_MESSAGE)
        if not message:
            raise WireError("message must not be empty")
        object.__setattr__(self, "message", message)

    def _body(self) -> dict[str, Any]:
        return {
            "member": self.member, "run": self.run, "part": self.part, "sender": self.sender,
            "recipient": self.recipient, "message": self.message,
        }  # fmt: skip

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["member"], raw["run"], raw["part"], raw["sender"], raw["recipient"],
                   raw["message"])  # fmt: skip


@dataclass(frozen=True, slots=True)
class RefreshDelivery(_Message):
    """Member -> member during a proactive refresh: `sender`'s sealed sub-shares for
    `recipient`, for every version of run `run`'s batch (bound to the run's context,
    the direction and both parties inside the boxes). `sender` must be the
    transport-authenticated peer."""

    run: int
    sender: int
    recipient: int
    message: bytes

    KIND: ClassVar[str] = "refresh-delivery"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"run", "sender", "recipient", "message"})
    MAX_SIZE: ClassVar[int] = 512 + MAX_REPAIR_MESSAGE

    def __post_init__(self) -> None:
        check_int(self.run, "run", 1, U32)
        check_int(self.sender, "sender", 1, MAX_MEMBERS)
        check_int(self.recipient, "recipient", 1, MAX_MEMBERS)
        if self.sender == self.recipient:
            raise WireError("sender and recipient must differ")
        message = check_bytes(self.message, "message", max_len=MAX_REPAIR_MESSAGE)
        if not message:
            raise WireError("message must not be empty")
        object.__setattr__(self, "message", message)

    def _body(self) -> dict[str, Any]:
        return {"run": self.run, "sender": self.sender, "recipient": self.recipient,
                "message": self.message}  # fmt: skip

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        return cls(raw["run"], raw["sender"], raw["recipient"], raw["message"])


__all__ = [
    "MAX_COMMIT_COUNT",
    "MAX_MEMBERS",
    "MAX_REF_CHARS",
    "MAX_ROUND2_MESSAGE",
    "WIRE_VERSION",
    "CommitRequest",
    "CommitResponse",
    "RefreshDelivery",
    "RepairDelivery",
    "Round2Delivery",
    "ShareRequest",
    "ShareResponse",
    "WireError",
]
