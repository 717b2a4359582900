"""Approval signatures: Ed25519 by a registered approver over the canonical digest.

Verification uses `cryptography`'s Ed25519 (RFC 8032 by OpenSSL) after the
strict encoding checks of `ed25519.py`: a registered key must be canonical and
of prime order (a small-order key lets anyone forge "its" signatures), and a
signature's R must be canonical and not of small order, its S reduced. The
signed message is exactly the 64-byte request digest, which is already
domain-separated by its own context string (see `digest.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .commands import signing_bytes
from .digest import genesis_digest, signing_digest
from .ed25519 import is_strict_public_key, is_strict_signature
from .errors import Reason, Rejected

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
DIGEST_LEN = 64


def verify_approval(public_key: bytes, digest: bytes, signature: bytes) -> None:
    """Return if `signature` is `public_key`'s signature over `digest`; else Rejected."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise Rejected(Reason.NOT_AN_APPROVER, "approver has no signing key")
    if len(digest) != DIGEST_LEN or len(signature) != SIGNATURE_LEN:
        raise Rejected(Reason.BAD_SIGNATURE, "wrong digest or signature length")
    if not _verifies(bytes(public_key), bytes(digest), bytes(signature)):
        _strict(public_key, signature)
        raise Rejected(Reason.BAD_SIGNATURE, "approval signature does not verify")


@functools.lru_cache(maxsize=8192)
def _verifies(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """Strict Ed25519 verification, memoised. `executable()` re-verifies every stored
    approval each time a member is asked to act (it trusts nothing stored); the answer
    for the same (key, digest, signature) never changes, so it is computed once. The
    cache holds public values only and is keyed by all three of them."""
    if not (is_strict_public_key(public_key) and is_strict_signature(signature)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        return False
    return True


def _strict(public_key: bytes, signature: bytes) -> None:
    if not is_strict_public_key(public_key):
        raise Rejected(Reason.BAD_SIGNATURE, "signer's key is not a strict Ed25519 key")
    if not is_strict_signature(signature):
        raise Rejected(Reason.BAD_SIGNATURE, "signature is not a strict Ed25519 encoding")


def verify_result(group_public_key: bytes, message: bytes, signature: bytes) -> None:
    """A sign request's result: a standard Ed25519 signature by the version's group key."""
    if len(signature) != SIGNATURE_LEN or not is_strict_signature(signature):
        raise Rejected(Reason.BAD_RESULT, "a sign result is a 64-byte Ed25519 signature")
    try:
        Ed25519PublicKey.from_public_bytes(group_public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise Rejected(Reason.BAD_RESULT, "signature does not verify under the group key") from None


def valid_public_key(public_key: bytes) -> bool:
    """Is `public_key` a canonical Ed25519 point of prime order (safe to register)?"""
    return len(public_key) == PUBLIC_KEY_LEN and is_strict_public_key(public_key)


def quorum_met(approvals: int, k: int) -> bool:
    return approvals >= k


def sign_approval(private_key: Ed25519PrivateKey, digest: bytes) -> bytes:
    """Approver side: sign a request's 64-byte canonical digest (client tools, tests)."""
    if len(digest) != DIGEST_LEN:
        raise ValueError("a request digest is 64 bytes")
    return private_key.sign(digest)


def signing_message(cmd: Any, cluster_id: str) -> bytes:
    """The 64 bytes the author of a signed command signs (e.g. inside an HSM slot)."""
    return signing_digest(cluster_id, signing_bytes(cmd))


def genesis_of(bootstrap: Any) -> bytes:
    """The genesis digest of a bootstrap command, for cluster initialisation to write."""
    return genesis_digest(signing_bytes(bootstrap))


def with_signature(cmd: Any, signature: bytes) -> Any:
    """`cmd` with its `signature` field set (after signing `signing_message` elsewhere)."""
    return dataclasses.replace(cmd, signature=bytes(signature))


def sign_command(private_key: Ed25519PrivateKey, cmd: Any, cluster_id: str) -> Any:
    """Author side with an in-process key: return `cmd` signed (operator tools, tests)."""
    return with_signature(cmd, private_key.sign(signing_message(cmd, cluster_id)))


def verify_command_signature(public_key: bytes, cmd: Any, cluster_id: str) -> None:
    """Return if `cmd.signature` is valid for `public_key`; else Rejected(BAD_SIGNATURE)."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise Rejected(Reason.BAD_SIGNATURE, "author has no registered signing key")
    _strict(public_key, cmd.signature)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            cmd.signature, signing_message(cmd, cluster_id)
        )
    except (InvalidSignature, ValueError):
        raise Rejected(Reason.BAD_SIGNATURE, "command signature does not verify") from None
