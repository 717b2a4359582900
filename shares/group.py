"""Ed25519 prime-order group and scalar field, on libsodium (via PyNaCl).

Encodings are those of RFC 9591 for FROST(Ed25519, SHA-512): scalars are 32-byte
little-endian integers below L, elements are 32-byte compressed Edwards points.
Scalar and point arithmetic on secrets runs in libsodium's constant-time C code;
Python integers appear only for public values (identifiers, Lagrange inputs).

Decoding is strict: `decode_scalar` rejects values >= L, `decode_element`
rejects non-canonical encodings, points off the curve, points of small order
(which includes the identity) and points outside the prime-order subgroup, as
RFC 9591 section 6.5 requires of DeserializeElement.
"""

from __future__ import annotations

import hashlib
import hmac

from nacl import bindings as _sodium
from nacl.exceptions import CryptoError

from .errors import InvalidElement, InvalidParameters, InvalidScalar
from .rng import RandomSource, read_random

#: Order of the prime-order subgroup (RFC 8032 "L").
ORDER = 2**252 + 27742317777372353535851937790883648493
SCALAR_SIZE = 32
ELEMENT_SIZE = 32

Scalar = bytes
Element = bytes

#: Encoding of the neutral element (x=0, y=1).
IDENTITY: Element = b"\x01" + b"\x00" * 31
#: Encoding of the standard base point B of RFC 8032.
BASEPOINT: Element = bytes.fromhex(
    "5866666666666666666666666666666666666666666666666666666666666666"
)
ZERO: Scalar = b"\x00" * 32
ONE: Scalar = b"\x01" + b"\x00" * 31


# ---------------------------------------------------------------------------
# Scalars
# ---------------------------------------------------------------------------


def scalar_from_int(value: int) -> Scalar:
    """Encode an integer, reduced mod L, as a canonical scalar."""
    return (value % ORDER).to_bytes(SCALAR_SIZE, "little")


def scalar_to_int(scalar: Scalar) -> int:
    """Decode a scalar to an int (public values only: ints are not constant-time)."""
    return int.from_bytes(scalar, "little")


def decode_scalar(data: bytes) -> Scalar:
    """Return `data` if it is a canonical scalar encoding, else raise InvalidScalar."""
    if not isinstance(data, bytes | bytearray) or len(data) != SCALAR_SIZE:
        raise InvalidScalar(f"scalar must be {SCALAR_SIZE} bytes")
    data = bytes(data)
    if int.from_bytes(data, "little") >= ORDER:
        raise InvalidScalar("scalar is not canonical (>= group order)")
    return data


def scalar_reduce(wide: bytes) -> Scalar:
    """Reduce a 64-byte little-endian integer mod L (used on hash outputs)."""
    if len(wide) != 64:
        raise InvalidScalar("wide scalar must be 64 bytes")
    return _sodium.crypto_core_ed25519_scalar_reduce(wide)


def scalar_add(a: Scalar, b: Scalar) -> Scalar:
    return _sodium.crypto_core_ed25519_scalar_add(a, b)


def scalar_sub(a: Scalar, b: Scalar) -> Scalar:
    return _sodium.crypto_core_ed25519_scalar_sub(a, b)


def scalar_mul(a: Scalar, b: Scalar) -> Scalar:
    return _sodium.crypto_core_ed25519_scalar_mul(a, b)


def scalar_neg(a: Scalar) -> Scalar:
    return _sodium.crypto_core_ed25519_scalar_negate(a)


def scalar_inv(a: Scalar) -> Scalar:
    """Multiplicative inverse mod L; InvalidScalar for zero."""
    if scalar_is_zero(a):
        raise InvalidScalar("zero has no inverse")
    return _sodium.crypto_core_ed25519_scalar_invert(a)


def scalar_is_zero(a: Scalar) -> bool:
    return hmac.compare_digest(a, ZERO)


def scalar_eq(a: Scalar, b: Scalar) -> bool:
    """Constant-time scalar equality."""
    return hmac.compare_digest(a, b)


def random_scalar(rng: RandomSource) -> Scalar:
    """A uniformly random non-zero scalar from 64 bytes of `rng` (bias < 2^-250)."""
    while True:
        s = scalar_reduce(read_random(rng, 64))
        if not scalar_is_zero(s):
            return s


# ---------------------------------------------------------------------------
# Elements
# ---------------------------------------------------------------------------


class CheckedElement(bytes):
    """An element encoding known to be valid: it passed `decode_element`, or this
    module computed it from valid inputs (k*B or k*P with k != 0).

    `bytes` is immutable, so the mark cannot go stale; `decode_element` returns
    a CheckedElement at once instead of repeating the subgroup check (the
    costliest part of validation). Anything received from outside arrives as
    plain `bytes` and is checked in full. Do not construct it directly.
    """

    __slots__ = ()


def decode_element(data: bytes) -> Element:
    """Return `data` if it is a valid prime-order, non-identity element encoding."""
    if type(data) is CheckedElement:
        return data
    if not isinstance(data, bytes | bytearray) or len(data) != ELEMENT_SIZE:
        raise InvalidElement(f"element must be {ELEMENT_SIZE} bytes")
    # libsodium's check: canonical encoding, on the curve, not of small order
    # (so not the identity), and in the prime-order subgroup.
    if not _sodium.crypto_core_ed25519_is_valid_point(bytes(data)):
        raise InvalidElement("not a canonical prime-order Ed25519 point")
    return CheckedElement(data)


def hash_to_element(seed: bytes) -> Element:
    """A generator with a discrete log nobody knows, derived from a public `seed`.

    SHA-512 of a fixed domain tag and the seed, mapped to the curve by
    libsodium's `crypto_core_ed25519_from_uniform` (Elligator 2, cofactor
    cleared, so the point is in the prime-order subgroup). A map, not a
    multiplication of B by a known scalar: log_B of the output is unknown,
    which is what a second generator needs (TDH2's g-bar in `shares.tdec`).
    """
    if not isinstance(seed, bytes) or not 1 <= len(seed) <= 255:
        raise InvalidParameters("generator seed must be 1..255 bytes")
    uniform = hashlib.sha512(b"custody/shares/group/generator/v1" + seed).digest()[:32]
    return decode_element(_sodium.crypto_core_ed25519_from_uniform(uniform))


def is_identity(p: Element) -> bool:
    return p == IDENTITY


def element_add(p: Element, q: Element) -> Element:
    return _sodium.crypto_core_ed25519_add(p, q)


def element_sub(p: Element, q: Element) -> Element:
    return _sodium.crypto_core_ed25519_sub(p, q)


def base_mult(k: Scalar) -> Element:
    """k * B, constant-time in k. Returns IDENTITY for k = 0."""
    if scalar_is_zero(k):
        return IDENTITY
    # k < L and k != 0, so k*B is a valid prime-order element.
    return CheckedElement(_sodium.crypto_scalarmult_ed25519_base_noclamp(k))


def scalar_mult(k: Scalar, p: Element) -> Element:
    """k * P for a prime-order element P (or the identity); constant-time in k.

    libsodium itself rejects a P that is non-canonical, of small order or
    outside the prime-order subgroup; that surfaces here as InvalidElement.
    """
    if scalar_is_zero(k) or p == IDENTITY:
        return IDENTITY
    try:
        out = _sodium.crypto_scalarmult_ed25519_noclamp(k, p)
    except CryptoError as exc:  # libsodium returned -1, or not 32 bytes
        raise InvalidElement("not a canonical prime-order Ed25519 point") from exc
    return CheckedElement(out)


def multi_scalar_mult(pairs: list[tuple[Scalar, Element]]) -> Element:
    """Sum of k_i * P_i (simple loop; inputs are public in every caller)."""
    acc = IDENTITY
    for k, p in pairs:
        acc = element_add(acc, scalar_mult(k, p))
    return acc


def element_eq(p: Element, q: Element) -> bool:
    return hmac.compare_digest(p, q)
