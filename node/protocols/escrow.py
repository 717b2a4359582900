"""Escrow of one member's shares to the recovery officers, and their release to a fresh node.

For key versions whose policy says `escrow: true`, each member escrows its
**shares** (never a key): the concatenated shares of a batch are split k-of-m
over GF(2^8) (`shares.gf256`, tagged so a wrong piece is detected), and each
piece is sealed to one officer's X25519 key. The package goes through the log
(replicated, audited); it is useless without k officers' private keys.

To rebuild a lost cluster, `k` officers each open their piece of former member
i's package and re-seal it, with their own static key, to the X25519 key of the
fresh node that takes member i's place; that node combines the pieces in its
own process, checks every share against member i's verification share, and
stores them. Each fresh node only ever holds its own member's shares: no key is
whole on this path. With `t` members rebuilt, the rest are repaired
(`repair_session`).

    context = escrow_context(cluster_id, member, items, officers, k)
    package = escrow_package(context, member, items, shares, officers, k, rng)   # -> log
    release = officer_release(context, package, officer, officer_private, node_public, rng)
    shares, bad = recover_shares(context, releases, node_private, member, items, officers, k)

Officers are `(name, x25519 public key)` sorted by name; officer `o` (1-based
position) holds piece `o`. The context binds the cluster, the member, every
item's key id, version, group key and this member's verification share, the
officer list and k, so neither a package nor a release can be moved to another
member, batch or officer set.

What this does not prevent: a member can escrow garbage (pieces cannot be
checked without the officers' keys); recovery then fails for that member,
loudly, and its shares are repaired from the members that were recovered.
k colluding officers can rebuild every member's shares, hence the keys: that is
the policy's `escrow: true` trade-off, and why the officers' quorum is set by
governance and every release is audited.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shares import gf256
from shares.errors import SharesError
from shares.rng import RandomSource

from . import sealbox
from .batch import (
    MAX_BLOB,
    MAX_MESSAGE_SIZE,
    KeyVersion,
    check_items,
    check_x25519,
    items_digest_input,
    lp,
    matches,
    new_x25519,
    open_blob,
    seal_blob,
    unpack,
    zero,
)
from .wire import MAX_MEMBERS, check_token

CONTEXT_DOMAIN = b"custody-cluster/v1/escrow-context"
PACKAGE_VERSION = 1
MAX_OFFICERS = 32
MAX_NAME_CHARS = 64
MAX_CLUSTER_ID_CHARS = 128
_PIECE_OVERHEAD = 3 + gf256.SPLIT_ID_SIZE + gf256.TAG_SIZE
_ESCROW = b"escrow"
_RELEASE = b"release"


class EscrowError(ValueError):
    """Bad input, a piece or release that does not open, or a recovery that fails."""


class EscrowCulprits(EscrowError):
    """Recovery failed; these officers' releases did not open or disagreed."""

    def __init__(self, culprits: Sequence[int], reason: str) -> None:
        self.culprits: list[int] = sorted(set(culprits))
        super().__init__(f"{reason} (officers: {', '.join(map(str, self.culprits))})")


def _check_officers(officers: object, k: object) -> tuple[tuple[tuple[str, bytes], ...], int]:
    if not isinstance(officers, Sequence) or isinstance(officers, str | bytes):
        raise EscrowError("officers must be a sequence of (name, x25519 public key)")
    if not 2 <= len(officers) <= MAX_OFFICERS:
        raise EscrowError(f"escrow needs 2..{MAX_OFFICERS} officers")
    rows = []
    for row in officers:
        if not isinstance(row, tuple | list) or len(row) != 2:
            raise EscrowError("officers entries are (name, x25519 public key)")
        name = check_token(row[0], "officer name", MAX_NAME_CHARS, EscrowError)
        rows.append((name, check_x25519(row[1], EscrowError)))
    names = [r[0] for r in rows]
    if names != sorted(names) or len(set(names)) != len(names):
        raise EscrowError("officers must be sorted by name, each once")
    if len({r[1] for r in rows}) != len(rows):
        raise EscrowError("two officers share a key")
    if type(k) is not int or not 2 <= k <= len(rows):
        raise EscrowError("k must be an integer in 2..m")
    return tuple(rows), k


def _check_member(member: object, items: Sequence[KeyVersion]) -> int:
    if type(member) is not int or not 1 <= member <= MAX_MEMBERS:
        raise EscrowError(f"member must be an index in 1..{MAX_MEMBERS}")
    if any(member not in it.verification_shares for it in items):
        raise EscrowError(f"member {member} holds no share of some item")
    return member


def escrow_context(
    cluster_id: str, member: int, items: Sequence[KeyVersion],
    officers: Sequence[tuple[str, bytes]], k: int,
) -> bytes:  # fmt: skip
    """SHA-512 over everything one escrow package is for: its `context` (64 bytes)."""
    check_token(cluster_id, "cluster_id", MAX_CLUSTER_ID_CHARS, EscrowError)
    rows = check_items(items, EscrowError)
    member = _check_member(member, rows)
    officers, k = _check_officers(officers, k)
    body = lp(CONTEXT_DOMAIN) + lp(cluster_id.encode()) + bytes([member])
    body += items_digest_input(rows) + b"".join(it.verification_shares[member] for it in rows)
    body += struct.pack(">BB", k, len(officers))
    body += b"".join(lp(name.encode()) + key for name, key in officers)
    return hashlib.sha512(body).digest()


def _piece_size(n_items: int) -> int:
    return _PIECE_OVERHEAD + 32 * n_items


def escrow_package(
    context: bytes, member: int, items: Sequence[KeyVersion], shares: Sequence[bytes | bytearray],
    officers: Sequence[tuple[str, bytes]], k: int, rng: RandomSource,
) -> bytes:  # fmt: skip
    """This member's shares of `items`, split k-of-m and sealed to each officer."""
    rows = check_items(items, EscrowError)
    member = _check_member(member, rows)
    officers, k = _check_officers(officers, k)
    if not isinstance(shares, Sequence) or len(shares) != len(rows):
        raise EscrowError("one share per item, in item order")
    for it, share in zip(rows, shares, strict=True):
        if not matches(share, it.verification_shares[member]):
            raise EscrowError(f"{it.key_id} v{it.version}: the share does not match member "
                              f"{member}'s verification share")  # fmt: skip
    secret = bytearray(b"".join(bytes(s) for s in shares))
    try:
        pieces = gf256.split(secret, k, len(officers), rng)
    except SharesError as exc:
        raise EscrowError(f"cannot split: {exc}") from None
    finally:
        zero(secret)
    private, public = new_x25519(rng, EscrowError)
    sealed = []
    for o, ((_, key), piece) in enumerate(zip(officers, pieces, strict=True), start=1):
        raw = bytearray(piece.to_bytes())
        try:
            sealed.append(seal_blob(private, public, key, raw, context, _ESCROW, member, o, rng))
        finally:
            zero(raw)
    return msgpack.packb(
        {"v": PACKAGE_VERSION, "member": member, "k": k, "x25519": public, "pieces": sealed},
        use_bin_type=True,
    )


def _decode_package(package: object, member: int, k: int, m: int) -> tuple[bytes, list[bytes]]:
    raw = unpack(package, 256 + m * (MAX_MESSAGE_SIZE + 8), "an escrow package", EscrowError)
    if type(raw) is not dict or set(raw) != {"v", "member", "k", "x25519", "pieces"}:
        raise EscrowError("package fields must be exactly v, member, k, x25519, pieces")
    if type(raw["v"]) is not int or raw["v"] != PACKAGE_VERSION:
        raise EscrowError("unsupported escrow package version")
    if raw["member"] != member or raw["k"] != k:
        raise EscrowError("the package is for another member or quorum")
    pieces = raw["pieces"]
    if type(pieces) is not list or len(pieces) != m or any(type(p) is not bytes for p in pieces):
        raise EscrowError(f"the package must hold exactly {m} pieces")
    return check_x25519(raw["x25519"], EscrowError), pieces


def check_package(
    context: bytes, package: bytes, member: int, items: Sequence[KeyVersion],
    officers: Sequence[tuple[str, bytes]], k: int,
) -> None:  # fmt: skip
    """What a replica can check without the officers' keys: the shape, the member, k and
    the piece count (the pieces themselves are only checked at recovery)."""
    rows = check_items(items, EscrowError)
    officers, k = _check_officers(officers, k)
    _decode_package(package, _check_member(member, rows), k, len(officers))


def officer_release(
    context: bytes, package: bytes, member: int, items: Sequence[KeyVersion],
    officers: Sequence[tuple[str, bytes]], k: int, officer: str,
    officer_private: X25519PrivateKey, node_public: bytes, rng: RandomSource,
) -> bytes:  # fmt: skip
    """Officer `officer` opens its piece of `member`'s package and re-seals it, with its
    own key, to the fresh node's `node_public`. The piece never leaves in the clear."""
    rows = check_items(items, EscrowError)
    officers, k = _check_officers(officers, k)
    names = [n for n, _ in officers]
    if officer not in names:
        raise EscrowError(f"{officer!r} is not one of the escrow's officers")
    o = names.index(officer) + 1
    own = officers[o - 1][1]
    if sealbox.public_bytes(officer_private) != own:
        raise EscrowError("this private key is not the officer's registered key")
    node_public = check_x25519(node_public, EscrowError)
    eph, pieces = _decode_package(package, _check_member(member, rows), k, len(officers))
    piece = open_blob(officer_private, own, eph, pieces[o - 1], context, _ESCROW, member, o,
                      _piece_size(len(rows)), EscrowError)  # fmt: skip
    try:
        parsed = gf256.ByteShare.from_bytes(bytes(piece))
        if parsed.identifier != o or parsed.threshold != k:
            raise EscrowError("the piece names another officer or quorum")
        return seal_blob(officer_private, own, node_public, piece, context, _RELEASE, o, member,
                         rng)  # fmt: skip
    except SharesError as exc:
        raise EscrowError(f"the piece is malformed: {exc}") from None
    finally:
        zero(piece)


def recover_shares(
    context: bytes, releases: Mapping[int, bytes], node_private: X25519PrivateKey,
    member: int, items: Sequence[KeyVersion], officers: Sequence[tuple[str, bytes]], k: int,
) -> tuple[list[bytearray], list[int]]:  # fmt: skip
    """On the fresh node: combine >= k officers' releases (officer position -> release)
    into member `member`'s shares, each checked against its verification share.

    Returns (shares, culprits): the officers whose releases did not open or disagreed
    with the others (to be audited), if the rest still sufficed. EscrowCulprits if
    they did not. The caller zeroizes the shares once stored."""
    rows = check_items(items, EscrowError)
    member = _check_member(member, rows)
    officers, k = _check_officers(officers, k)
    if not isinstance(releases, Mapping) or not releases:
        raise EscrowError("no releases")
    public = sealbox.public_bytes(node_private)
    size = _piece_size(len(rows))
    if size > MAX_BLOB:
        raise EscrowError("too many items for one escrow package")
    pieces: list[gf256.ByteShare] = []
    bad: list[int] = []
    for o, message in sorted(releases.items()):
        if type(o) is not int or not 1 <= o <= len(officers):
            raise EscrowError(f"officer positions are 1..{len(officers)}")
        try:
            raw = open_blob(node_private, public, officers[o - 1][1], message, context,
                            _RELEASE, o, member, size, EscrowError)  # fmt: skip
        except EscrowError:
            bad.append(o)
            continue
        try:
            piece = gf256.ByteShare.from_bytes(bytes(raw))
        except SharesError:
            bad.append(o)
            continue
        finally:
            zero(raw)
        if piece.identifier != o or piece.threshold != k:
            bad.append(o)
            continue
        pieces.append(piece)
    if len(pieces) < k:
        raise EscrowCulprits(bad, f"only {len(pieces)} of the {k} pieces needed open")
    try:
        secret, inconsistent = gf256.combine_robust(pieces)
    except SharesError as exc:
        raise EscrowCulprits(bad, f"the pieces do not combine: {exc}") from None
    bad += list(inconsistent)
    shares = [bytearray(secret[i * 32 : (i + 1) * 32]) for i in range(len(rows))]
    if len(secret) != 32 * len(rows):
        for s in shares:
            zero(s)
        raise EscrowError("the escrowed secret has the wrong length")
    for it, share in zip(rows, shares, strict=True):
        if not matches(share, it.verification_shares[member]):
            for s in shares:
                zero(s)
            raise EscrowError(f"{it.key_id} v{it.version}: the recovered share does not match "
                              f"member {member}'s verification share (escrowed garbage?)")
    return shares, sorted(set(bad))


__all__ = [
    "CONTEXT_DOMAIN",
    "EscrowCulprits",
    "EscrowError",
    "check_package",
    "escrow_context",
    "escrow_package",
    "officer_release",
    "recover_shares",
]
