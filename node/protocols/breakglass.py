"""Break-glass export of one key version (docs/recovery.md, "Break-glass export").

The only path in the system that makes a key whole, and only outside the cluster: each
member that holds a share of the version seals it to the requester's X25519 key (an
ephemeral sender key per piece; AAD binds the cluster, the export request, the key
version and the member's index), the pieces go through the log, and the requester's
tool opens t of them, checks each against the member's published verification share,
interpolates the secret scalar and checks it against the group public key. No member
ever sees another's share; the recipient's private key never reaches the cluster.

    piece = seal_piece(ctx, member_index, share, recipient_public, rng)      # member
    secret = open_pieces(ctx, pieces, recipient_private, vshares, group_key, t)  # tool
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shares import group as g
from shares.errors import SharesError
from shares.rng import RandomSource
from shares.shamir import SecretShare, reconstruct_secret

from . import sealbox
from .batch import new_x25519, zero

CONTEXT_DOMAIN = b"custody-cluster/v1/break-glass-export"
PIECE_SIZE = 32 + sealbox.OVERHEAD + 32  # sender key, box of one scalar


class ExportError(ValueError):
    """A piece that does not open or does not match, or too few good pieces."""


def export_context(cluster_id: str, request: str, key_id: str, version: int,
                   group_public_key: bytes) -> bytes:  # fmt: skip
    """SHA-512 over what one export is for; every piece's AAD starts with it."""
    parts = (CONTEXT_DOMAIN, cluster_id.encode(), request.encode(), key_id.encode(),
             version.to_bytes(8, "big"), bytes(group_public_key))  # fmt: skip
    return hashlib.sha512(b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()


def _aad(context: bytes, member: int) -> bytes:
    return context + member.to_bytes(2, "big")


def seal_piece(context: bytes, member: int, share: bytes | bytearray, recipient: bytes,
               rng: RandomSource) -> bytes:  # fmt: skip
    """Member `member`'s share, sealed to the requester (caller zeroizes `share`)."""
    private, public = new_x25519(rng, ExportError)
    try:
        box = sealbox.seal(private, public, sealbox.check_public_key(recipient, "recipient key"),
                           bytes(share), _aad(context, member), rng)  # fmt: skip
    except sealbox.SealError as exc:
        raise ExportError(str(exc)) from None
    return public + box


def open_pieces(
    context: bytes, pieces: Mapping[int, bytes], recipient: X25519PrivateKey,
    verification_shares: Mapping[int, bytes], group_public_key: bytes, t: int,
) -> tuple[bytearray, list[int]]:  # fmt: skip
    """The secret scalar from t good pieces (member index -> piece), and the members whose
    pieces did not open or did not match their verification share. ExportError if fewer
    than t are good or the result is not the group key's secret."""
    public = sealbox.public_bytes(recipient)
    good: list[SecretShare] = []
    bad: list[int] = []
    for member, piece in sorted(pieces.items()):
        if len(good) == t:
            break
        if type(piece) is not bytes or len(piece) != PIECE_SIZE:
            bad.append(member)
            continue
        try:
            share = sealbox.open_(recipient, public, piece[:32], piece[32:],
                                  _aad(context, member))  # fmt: skip
            scalar = g.decode_scalar(share)
        except (sealbox.SealError, SharesError):
            bad.append(member)
            continue
        if not g.element_eq(g.base_mult(scalar), verification_shares.get(member, b"")):
            bad.append(member)
            continue
        good.append(SecretShare(member, scalar))
    if len(good) < t:
        raise ExportError(f"only {len(good)} of the {t} pieces needed are good "
                          f"(bad: {bad or 'none'})")  # fmt: skip
    try:
        secret = bytearray(reconstruct_secret(good, t))
    except SharesError as exc:
        raise ExportError(f"the pieces do not combine: {exc}") from None
    if not g.element_eq(g.base_mult(bytes(secret)), group_public_key):
        zero(secret)
        raise ExportError("the combined secret is not the group key's")
    return secret, bad
