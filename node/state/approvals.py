"""Approval signatures: Ed25519 by a registered approver over the canonical digest.

Verification uses `cryptography`'s Ed25519 (strict RFC 8032 verification by
OpenSSL). The signed message is exactly the 64-byte request digest, which is
already domain-separated by its own context string (see `digest.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .commands import signing_bytes
from .digest import signing_digest
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
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError):
        raise Rejected(Reason.BAD_SIGNATURE, "approval signature does not verify") from None


def valid_public_key(public_key: bytes) -> bool:
    """Can `public_key` be loaded as a raw Ed25519 public key?"""
    if len(public_key) != PUBLIC_KEY_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return True


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
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            cmd.signature, signing_message(cmd, cluster_id)
        )
    except (InvalidSignature, ValueError):
        raise Rejected(Reason.BAD_SIGNATURE, "command signature does not verify") from None
