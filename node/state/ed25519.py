"""Strict checks of Ed25519 encodings that OpenSSL's verifier does not make.

OpenSSL (through `cryptography`) verifies RFC 8032 signatures, but accepts any
public key that decodes, including the eight small-order points: with the
identity point as "public key", `(R, S) = (S·B, S)` verifies for every message,
so whoever registers such a key lets anyone forge its approvals. Here a key is
accepted only if libsodium's `crypto_core_ed25519_is_valid_point` accepts it:
a canonical encoding (y < p) of a point on the curve, in the prime-order
subgroup, not of small order (so no small- or mixed-order component). A
signature is accepted only if its R passes the same check and its S is reduced
(S < L); honest signers always produce R = r·B, which does.

libsodium's checks are pure and deterministic; nothing secret passes through
here. Results are cached because the same registered keys are checked often.
"""

from __future__ import annotations

import functools

from nacl.bindings import crypto_core_ed25519_is_valid_point

L = 2**252 + 27742317777372353535851937790883648493


@functools.lru_cache(maxsize=4096)
def is_strict_public_key(data: bytes) -> bool:
    """Canonical encoding of a point of prime order L (never small- or mixed-order)."""
    data = bytes(data)
    return len(data) == 32 and bool(crypto_core_ed25519_is_valid_point(data))


def is_strict_signature(signature: bytes) -> bool:
    """R a valid prime-order point (canonical, not small order), S reduced (S < L)."""
    if len(signature) != 64:
        return False
    if int.from_bytes(signature[32:], "little") >= L:
        return False
    return is_strict_public_key(bytes(signature[:32]))
