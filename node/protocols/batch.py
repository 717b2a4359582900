"""What the repair and refresh sessions share: key-version batches and sealed scalar lists.

Both protocols run over a batch of key versions at once (one post per party and
one message per pair, however many versions), and both send each peer a list
of 32-byte scalars, one per version, sealed with `sealbox` in chunks of 1024 bytes
(`CHUNK` scalars) under AAD = context || kind || u16 sender || u16 recipient || u16 chunk. Every
function takes the exception type its caller raises (as `wire` does).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shares import group as g
from shares.errors import SharesError
from shares.rng import RandomSource, read_random

from . import sealbox
from .wire import MAX_MEMBERS, U32, check_key_id

#: Key versions one run covers; the node splits larger batches into runs.
MAX_ITEMS = 256
#: Scalars per sealed box (sealbox.MAX_PLAINTEXT is 1024 bytes).
CHUNK = sealbox.MAX_PLAINTEXT // 32
MESSAGE_VERSION = 1
#: Bytes one sealed message carries: MAX_ITEMS scalars, or an escrow piece of them.
MAX_BLOB = 32 * MAX_ITEMS + 128
#: A message: at most ceil(MAX_BLOB / 1024) boxes of at most MAX_SEALED bytes.
MAX_MESSAGE_SIZE = 64 + (-(-MAX_BLOB // sealbox.MAX_PLAINTEXT)) * (sealbox.MAX_SEALED + 3)


@dataclass(frozen=True)
class KeyVersion:
    """One key version of a batch, with its public data from the replicated state."""

    key_id: str
    version: int
    group_public_key: bytes
    verification_shares: Mapping[int, bytes]  # member index -> Y_i


class Culprits(ValueError):
    """Mixed into each session's error type: the parties (member or officer indexes)
    whose messages are bad; the run fails naming them."""

    def __init__(self, culprits: Sequence[int], reason: str) -> None:
        self.culprits: list[int] = sorted(set(culprits))
        self.reason = reason
        super().__init__(f"{reason} (culprits: {', '.join(map(str, self.culprits))})")


def matches(share: bytes | bytearray, verification_share: bytes) -> bool:
    """share * B == verification_share (False for a malformed share)."""
    try:
        return g.element_eq(g.base_mult(g.decode_scalar(bytes(share))), verification_share)
    except SharesError:
        return False


@dataclass(repr=False, eq=False)
class NewShares:
    """Shares a run produced for member `identifier` (item order), each already checked
    against its verification share; after a refresh, also every member's new
    verification shares per item. The caller stores the shares (HSM) and zeroizes."""

    identifier: int
    items: tuple[KeyVersion, ...]
    shares: tuple[bytearray, ...]
    verification_shares: tuple[dict[int, bytes], ...] = ()
    _zeroized: bool = field(default=False, init=False)

    def zeroize(self) -> None:
        for s in self.shares:
            zero(s)
        self._zeroized = True

    def __repr__(self) -> str:
        return (f"NewShares(identifier={self.identifier}, items={len(self.items)}, "
                "shares=<redacted>)")  # fmt: skip

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("NewShares holds secret shares and must not be pickled")


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


def check_items(items: object, exc: type[ValueError]) -> tuple[KeyVersion, ...]:
    """1..MAX_ITEMS distinct, well-formed key versions."""
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise exc("items must be a sequence of key versions")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise exc(f"a run covers 1..{MAX_ITEMS} key versions")
    seen: set[tuple[str, int]] = set()
    for it in items:
        if not isinstance(it, KeyVersion):
            raise exc("items must be KeyVersion values")
        check_key_id(it.key_id, exc)
        if type(it.version) is not int or not 1 <= it.version <= U32:
            raise exc(f"version must be an integer in 1..{U32}")
        if (it.key_id, it.version) in seen:
            raise exc(f"{it.key_id} v{it.version} is listed twice")
        seen.add((it.key_id, it.version))
        if not isinstance(it.group_public_key, bytes) or len(it.group_public_key) != 32:
            raise exc("a group public key is 32 bytes")
        vs = it.verification_shares
        if not isinstance(vs, Mapping) or not 2 <= len(vs) <= MAX_MEMBERS:
            raise exc(f"verification shares: a map of 2..{MAX_MEMBERS} entries")
        for i, y in vs.items():
            if type(i) is not int or not 1 <= i <= MAX_MEMBERS:
                raise exc("verification share indexes are member indexes")
            if not isinstance(y, bytes) or len(y) != 32:
                raise exc("a verification share is 32 bytes")
    return tuple(items)


def items_digest_input(items: Sequence[KeyVersion]) -> bytes:
    """The batch as context input: count, then each key id, version and group key."""
    out = struct.pack(">I", len(items))
    for it in items:
        out += lp(it.key_id.encode()) + struct.pack(">I", it.version) + it.group_public_key
    return out


def unpack(data: object, bound: int, what: str, exc: type[ValueError]) -> Any:
    """One strictly bounded msgpack value."""
    if not isinstance(data, bytes | bytearray) or not 1 <= len(data) <= bound:
        raise exc(f"{what} must be 1..{bound} bytes")
    try:
        return msgpack.unpackb(
            bytes(data), raw=False, use_list=True, strict_map_key=True,
            max_str_len=16, max_bin_len=sealbox.MAX_SEALED, max_array_len=MAX_ITEMS,
            max_map_len=8, max_ext_len=0,
        )  # fmt: skip
    except Exception as e:  # msgpack raises many types; all mean "malformed"
        raise exc(f"{what} is not one msgpack value ({type(e).__name__})") from None


def check_x25519(value: object, exc: type[ValueError]) -> bytes:
    try:
        return sealbox.check_public_key(value, "x25519 key")
    except sealbox.SealError as e:
        raise exc(str(e)) from None


def new_x25519(rng: RandomSource, exc: type[ValueError]) -> tuple[X25519PrivateKey, bytes]:
    """A fresh X25519 key pair for one run (the public half goes in the party's post)."""
    try:
        seed = bytearray(read_random(rng, 32))
    except SharesError as e:
        raise exc(f"random source failed: {e}") from None
    private = X25519PrivateKey.from_private_bytes(bytes(seed))
    zero(seed)
    return private, sealbox.public_bytes(private)


def _aad(context: bytes, kind: bytes, sender: int, recipient: int, chunk: int) -> bytes:
    return context + kind + struct.pack(">HHH", sender, recipient, chunk)


def seal_blob(
    private: X25519PrivateKey, public: bytes, peer: bytes, blob: bytes | bytearray,
    context: bytes, kind: bytes, sender: int, recipient: int, rng: RandomSource,
) -> bytes:  # fmt: skip
    """`blob` from `sender` to `recipient`, sealed in chunks of sealbox.MAX_PLAINTEXT."""
    if not 1 <= len(blob) <= MAX_BLOB:
        raise ValueError(f"a sealed blob is 1..{MAX_BLOB} bytes")
    size = sealbox.MAX_PLAINTEXT
    boxes = []
    for c, start in enumerate(range(0, len(blob), size)):
        plain = bytearray(blob[start : start + size])
        try:
            boxes.append(sealbox.seal(private, public, peer, bytes(plain),
                                      _aad(context, kind, sender, recipient, c), rng))  # fmt: skip
        finally:
            zero(plain)
    return msgpack.packb(
        {"v": MESSAGE_VERSION, "kind": kind.decode(), "sender": sender, "recipient": recipient,
         "boxes": boxes},
        use_bin_type=True,
    )  # fmt: skip


def open_blob(
    private: X25519PrivateKey, public: bytes, peer: bytes, message: object, context: bytes,
    kind: bytes, sender: int, recipient: int, size: int, exc: type[ValueError],
) -> bytearray:  # fmt: skip
    """The `size`-byte blob of a message from `sender` (caller zeroizes); `exc` if anything
    is off: another kind, sender or recipient, a box that does not open, a wrong size."""
    if not 1 <= size <= MAX_BLOB:
        raise exc(f"a sealed blob is 1..{MAX_BLOB} bytes")
    raw = unpack(message, MAX_MESSAGE_SIZE, "a sealed message", exc)
    if type(raw) is not dict or set(raw) != {"v", "kind", "sender", "recipient", "boxes"}:
        raise exc("message fields must be exactly v, kind, sender, recipient, boxes")
    if type(raw["v"]) is not int or raw["v"] != MESSAGE_VERSION:
        raise exc("unsupported message version")
    if raw["kind"] != kind.decode() or raw["sender"] != sender or raw["recipient"] != recipient:
        raise exc("the message is not of this kind, from this sender to this party")
    boxes = raw["boxes"]
    chunks = -(-size // sealbox.MAX_PLAINTEXT)
    if type(boxes) is not list or len(boxes) != chunks or any(type(b) is not bytes for b in boxes):
        raise exc(f"the message must hold exactly {chunks} boxes")
    out = bytearray()
    for c, box in enumerate(boxes):
        try:
            out += sealbox.open_(private, public, peer, box,
                                 _aad(context, kind, sender, recipient, c))  # fmt: skip
        except sealbox.SealError:
            zero(out)
            raise exc("a box does not open") from None
        want = min(sealbox.MAX_PLAINTEXT, size - c * sealbox.MAX_PLAINTEXT)
        if len(out) != c * sealbox.MAX_PLAINTEXT + want:
            zero(out)
            raise exc("a box holds the wrong number of bytes")
    return out


def seal_scalars(
    private: X25519PrivateKey, public: bytes, peer: bytes, scalars: Sequence[bytes],
    context: bytes, kind: bytes, sender: int, recipient: int, rng: RandomSource,
) -> bytes:  # fmt: skip
    """`scalars` (32 bytes each) from `sender` to `recipient`, sealed in chunks."""
    blob = bytearray(b"".join(scalars))
    try:
        return seal_blob(private, public, peer, blob, context, kind, sender, recipient, rng)
    finally:
        zero(blob)


def open_scalars(
    private: X25519PrivateKey, public: bytes, peer: bytes, message: object, context: bytes,
    kind: bytes, sender: int, recipient: int, count: int, exc: type[ValueError],
) -> list[bytearray]:  # fmt: skip
    """The `count` 32-byte values of a message from `sender`; `exc` if anything is off."""
    blob = open_blob(private, public, peer, message, context, kind, sender, recipient,
                     32 * count, exc)  # fmt: skip
    out = [bytearray(blob[k * 32 : (k + 1) * 32]) for k in range(count)]
    zero(blob)
    return out
