"""Seal a DKG round-2 share to its recipient: X25519 + HKDF-SHA256 + AES-256-GCM.

Each member makes a fresh X25519 key pair per DKG run and publishes the public
half in its round-1 post, which the replicated log authenticates and orders.
A round-2 box from S to R is keyed by X25519(s, R), the static keys of that
run, so only R can open it and only S (or R) can have made it; the HKDF info
binds both public keys in the order (sender, recipient), so a box from S to R
is not also a box from R to S (no reflection), and the caller's AAD binds the
DKG context and both indexes. The nonce is random (from `rng`): a pair of
members exchanges one box per run, but nothing breaks if the caller seals more.

Format (`VERSION` 1): version (1 byte) || nonce (12) || AES-256-GCM ciphertext
and tag (len(plaintext) + 16); the version byte is authenticated too.

Low-order public keys give an all-zero or key-independent shared secret (any
party could compute the box key); they are refused before use. CPython keeps
the X25519 output and the derived key in immutable `bytes`, so beyond dropping
references nothing here can be zeroized.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shares.errors import SharesError
from shares.rng import RandomSource, read_random

#: Domain of the box key derivation (HKDF salt) and, with a suffix, its info.
DOMAIN = b"custody-cluster/v1/sealbox"
KEY_INFO = b"custody-cluster/v1/sealbox/aes-256-gcm-key"
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
#: Bounds: a round-2 plaintext is one 32-byte scalar; AAD is a context digest and two indexes.
MAX_PLAINTEXT = 1024
MAX_AAD = 2048
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
MAX_SEALED = OVERHEAD + MAX_PLAINTEXT

_P = 2**255 - 19
# Any clamped scalar is a multiple of 8, so X25519 with this fixed key gives the
# all-zero output exactly for the points of small order (curve and twist).
_PROBE = X25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"custody-cluster/v1/sealbox/low-order-probe").digest()
)


class SealError(ValueError):
    """A box could not be made or opened: bad key, bad format, or authentication failed."""


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of `private`."""
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_public_key(public: object, what: str = "public key") -> bytes:
    """A canonical X25519 public key not of small order, as bytes; SealError otherwise.

    Canonical (u < p, top bit clear) so that one key has one encoding, which the
    HKDF info and the round-1 post both bind.
    """
    if not isinstance(public, bytes | bytearray) or len(public) != 32:
        raise SealError(f"{what} must be 32 bytes")
    public = bytes(public)
    if int.from_bytes(public, "little") >= _P:
        raise SealError(f"{what} is not a canonical X25519 encoding")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # cryptography refuses an all-zero shared secret
        raise SealError(f"{what} is a point of small order") from None
    return public


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _box_key(private: X25519PrivateKey, peer: bytes, sender: bytes, recipient: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        raise SealError("X25519 shared secret is all zero (small-order key)") from None
    if hmac.compare_digest(shared, bytes(32)):  # defensive: never key a box with zeros
        raise SealError("X25519 shared secret is all zero (small-order key)")
    info = _lp(KEY_INFO) + bytes([VERSION]) + _lp(sender) + _lp(recipient)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=DOMAIN, info=info).derive(shared)


def _check_private(private: object, public: bytes, what: str) -> X25519PrivateKey:
    if not isinstance(private, X25519PrivateKey):
        raise SealError(f"{what} private key must be an X25519PrivateKey")
    if not hmac.compare_digest(public_bytes(private), public):
        raise SealError(f"{what} public key does not match its private key")
    return private


def _check_aad(aad: object) -> bytes:
    if not isinstance(aad, bytes | bytearray) or len(aad) > MAX_AAD:
        raise SealError(f"aad must be bytes of at most {MAX_AAD}")
    return bytes([VERSION]) + bytes(aad)


def seal(
    sender_private: X25519PrivateKey,
    sender_public: bytes,
    recipient_public: bytes,
    plaintext: bytes,
    aad: bytes,
    rng: RandomSource,
) -> bytes:
    """Encrypt `plaintext` from sender to recipient, bound to `aad`; returns the sealed bytes."""
    sender_public = check_public_key(sender_public, "sender public key")
    recipient_public = check_public_key(recipient_public, "recipient public key")
    if sender_public == recipient_public:
        raise SealError("sender and recipient keys must differ")
    private = _check_private(sender_private, sender_public, "sender")
    if not isinstance(plaintext, bytes | bytearray) or len(plaintext) > MAX_PLAINTEXT:
        raise SealError(f"plaintext must be bytes of at most {MAX_PLAINTEXT}")
    full_aad = _check_aad(aad)
    try:
        nonce = read_random(rng, NONCE_SIZE)
    except SharesError as exc:
        raise SealError(f"random source failed: {exc}") from None
    key = _box_key(private, recipient_public, sender_public, recipient_public)
    ciphertext = AESGCM(key).encrypt(nonce, bytes(plaintext), full_aad)
    return bytes([VERSION]) + nonce + ciphertext


def open_(
    recipient_private: X25519PrivateKey,
    recipient_public: bytes,
    sender_public: bytes,
    sealed: bytes,
    aad: bytes,
) -> bytes:
    """Decrypt a box from `sender_public`; SealError if it is malformed or does not open."""
    recipient_public = check_public_key(recipient_public, "recipient public key")
    sender_public = check_public_key(sender_public, "sender public key")
    if sender_public == recipient_public:
        raise SealError("sender and recipient keys must differ")
    private = _check_private(recipient_private, recipient_public, "recipient")
    if not isinstance(sealed, bytes | bytearray) or not OVERHEAD <= len(sealed) <= MAX_SEALED:
        raise SealError(f"sealed box must be {OVERHEAD}..{MAX_SEALED} bytes")
    sealed = bytes(sealed)
    if sealed[0] != VERSION:
        raise SealError("unsupported sealed box version")
    full_aad = _check_aad(aad)
    key = _box_key(private, sender_public, sender_public, recipient_public)
    try:
        return AESGCM(key).decrypt(sealed[1 : 1 + NONCE_SIZE], sealed[1 + NONCE_SIZE :], full_aad)
    except InvalidTag:
        raise SealError("sealed box does not open (wrong key, AAD or tampered)") from None


__all__ = [
    "DOMAIN",
    "MAX_PLAINTEXT",
    "MAX_SEALED",
    "VERSION",
    "SealError",
    "check_public_key",
    "open_",
    "public_bytes",
    "seal",
]
