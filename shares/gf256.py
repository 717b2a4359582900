"""Shamir secret sharing of byte strings over GF(2^8) (break-glass export, escrow).

Every byte of the secret is shared with its own random polynomial of degree
t-1 over GF(2^8) = GF(2)[x]/(x^8 + x^4 + x^3 + x + 1) (the AES field); share i
is the vector of those polynomials evaluated at x = i, for i in 1..n.

Side channels. Arithmetic is table-free: no lookup table is indexed by a
secret byte (cache-timing leaks of log/exp tables are the classic weakness of
byte-wise Shamir). The only products ever formed are *secret vector times
public constant* (evaluation points and Lagrange coefficients are public), so
the bulk code packs a whole secret vector into one Python integer and
multiplies all its bytes at once with shifts, masks and XORs ("bit-sliced"
xtime), branching only on bits of the public constant. `mul` (single bytes)
uses a fixed 8-round loop with arithmetic masks instead of branches. This is
*constant-time-ish*: CPython big-integer operations depend on operand length,
not on byte values, but nothing in CPython is guaranteed constant-time.

Integrity. Plain Shamir has none: a single wrong share silently produces a
plausible wrong secret. Here the dealer appends a 32-byte tag,
SHA-256(context || split id || t || len || secret), to the secret *before*
splitting, so the tag is itself secret-shared (fewer than t shares still reveal
nothing about secret or tag). Reconstruction recomputes the tag and raises
`InvalidShare` if it does not match; with more than t shares, `combine_robust`
searches the t-subsets for one whose tag verifies and names every share that
is inconsistent with it as a culprit. Shares also carry a random split id so
shares of different splits are never combined. The tag only detects
corruption: anyone holding t shares can of course forge a whole new set.

Secrets live in Python ints and bytes, which CPython cannot zeroize; the
bytearrays this module owns are zeroed after use anyway.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations, islice

from .errors import EncodingError, InvalidParameters, InvalidShare
from .rng import RandomSource, read_random

#: x^8 + x^4 + x^3 + x + 1, the AES reduction polynomial (0x11B); 0x1B is its low byte.
_REDUCTION_LOW = 0x1B

SHARE_VERSION = 1
SPLIT_ID_SIZE = 16
TAG_SIZE = 32
MIN_SECRET_SIZE = 1
#: Break-glass exports are 32-byte scalars; escrow blobs are small wrapped bundles.
MAX_SECRET_SIZE = 65536
MAX_SHARES = 255
#: Bound on the t-subsets `combine_robust` tries, so a large bad set cannot stall it.
MAX_SUBSETS = 10_000
_HEADER_SIZE = 1 + 1 + 1 + SPLIT_ID_SIZE  # version, threshold, identifier, split id
_TAG_CONTEXT = b"custody/shares/gf256/v1/tag"


# ---------------------------------------------------------------------------
# Field arithmetic
# ---------------------------------------------------------------------------


def mul(a: int, b: int) -> int:
    """a * b in GF(2^8): 8 fixed rounds of shift-and-add with masks, no table, no branch."""
    _check_byte(a)
    _check_byte(b)
    result = 0
    for _ in range(8):
        result ^= a & -(b & 1)
        b >>= 1
        a = ((a << 1) ^ (_REDUCTION_LOW & -(a >> 7))) & 0xFF
    return result


def inv(a: int) -> int:
    """a^-1 = a^254 (fixed square-and-multiply chain); InvalidParameters for 0."""
    _check_byte(a)
    if a == 0:
        raise InvalidParameters("zero has no inverse in GF(2^8)")
    result, power = 1, a
    for bit in range(8):
        if (254 >> bit) & 1:  # bits of the public exponent 254, not of `a`
            result = mul(result, power)
        power = mul(power, power)
    return result


def _check_byte(v: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 0xFF:
        raise InvalidParameters(f"not a GF(2^8) element: {v!r}")


def _ones(length: int) -> int:
    """0x0101...01 with `length` bytes: one bit per byte lane."""
    return int.from_bytes(b"\x01" * length, "big")


def mul_vector(vector: int, constant: int, length: int) -> int:
    """Multiply each of the `length` byte lanes of `vector` by a public `constant`.

    xtime on all lanes at once: shift left, drop the bit that crossed into the
    next lane, and fold each lane's carried-out top bit back in as 0x1B.
    Branches depend only on the bits of `constant`, which is public.
    """
    _check_byte(constant)
    ones = _ones(length)
    low7 = ones * 0xFE
    result = 0
    for bit in range(8):
        if (constant >> bit) & 1:
            result ^= vector
        carry = (vector >> 7) & ones
        vector = ((vector << 1) & low7) ^ (carry * _REDUCTION_LOW)
    return result


def lagrange_at(x_i: int, xs: Sequence[int], at: int) -> int:
    """Lagrange basis polynomial of x_i over xs, evaluated at `at` (char 2: minus is XOR)."""
    num, den = 1, 1
    for x_j in xs:
        if x_j == x_i:
            continue
        num = mul(num, at ^ x_j)
        den = mul(den, x_i ^ x_j)
    return mul(num, inv(den))


# ---------------------------------------------------------------------------
# Shares
# ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class ByteShare:
    """Share `identifier` of a GF(2^8) split; `data` is secret. Prints as <redacted>."""

    identifier: int
    threshold: int
    split_id: bytes
    data: bytes

    def __post_init__(self) -> None:
        _check_small_int("identifier", self.identifier, 1)
        _check_small_int("threshold", self.threshold, 2)
        # bytes-like input is accepted and stored as immutable bytes.
        if not isinstance(self.split_id, bytes | bytearray) or len(self.split_id) != SPLIT_ID_SIZE:
            raise InvalidParameters(f"split id must be {SPLIT_ID_SIZE} bytes")
        if not isinstance(self.data, bytes | bytearray) or not (
            MIN_SECRET_SIZE + TAG_SIZE <= len(self.data) <= MAX_SECRET_SIZE + TAG_SIZE
        ):
            raise InvalidParameters("share data length out of range")
        object.__setattr__(self, "split_id", bytes(self.split_id))
        object.__setattr__(self, "data", bytes(self.data))

    def __repr__(self) -> str:
        return (
            f"ByteShare(identifier={self.identifier}, threshold={self.threshold}, "
            f"split_id={self.split_id.hex()}, data=<redacted>)"
        )

    def to_bytes(self) -> bytes:
        """version || threshold || identifier || split id || data (length implied by frame)."""
        return (
            bytes([SHARE_VERSION, self.threshold, self.identifier]) + self.split_id + self.data
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ByteShare:
        """Strictly parse `to_bytes` output; EncodingError on any malformation."""
        if not isinstance(raw, bytes | bytearray):
            raise EncodingError("share must be bytes")
        raw = bytes(raw)
        lo = _HEADER_SIZE + MIN_SECRET_SIZE + TAG_SIZE
        hi = _HEADER_SIZE + MAX_SECRET_SIZE + TAG_SIZE
        if not lo <= len(raw) <= hi:
            raise EncodingError(f"share must be {lo}..{hi} bytes, got {len(raw)}")
        if raw[0] != SHARE_VERSION:
            raise EncodingError(f"unknown share version {raw[0]}")
        try:
            return cls(
                identifier=raw[2],
                threshold=raw[1],
                split_id=raw[3:_HEADER_SIZE],
                data=raw[_HEADER_SIZE:],
            )
        except InvalidParameters as exc:
            raise EncodingError(f"malformed share: {exc}") from exc


def _check_small_int(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_SHARES:
        raise InvalidParameters(f"share {name} must be in [{low}, {MAX_SHARES}]")


def _tag(split_id: bytes, threshold: int, secret: bytes | bytearray) -> bytes:
    h = hashlib.sha256(_TAG_CONTEXT)
    h.update(split_id)
    h.update(bytes([threshold]))
    h.update(len(secret).to_bytes(4, "big"))
    h.update(secret)
    return h.digest()


def split(
    secret: bytes | bytearray, threshold: int, count: int, rng: RandomSource
) -> list[ByteShare]:
    """Split `secret` into `count` shares, any `threshold` of which recover it."""
    if not isinstance(secret, bytes | bytearray):
        raise InvalidParameters("secret must be bytes")
    if not MIN_SECRET_SIZE <= len(secret) <= MAX_SECRET_SIZE:
        raise InvalidParameters(f"secret must be {MIN_SECRET_SIZE}..{MAX_SECRET_SIZE} bytes")
    for v in (threshold, count):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InvalidParameters("threshold and count must be ints")
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise InvalidParameters(f"need 2 <= t <= n <= {MAX_SHARES}")
    split_id = read_random(rng, SPLIT_ID_SIZE)
    payload = bytearray(secret)
    payload += _tag(split_id, threshold, secret)
    length = len(payload)
    coefficients = [int.from_bytes(payload, "big")]
    # read_random refuses a short read: it would leave the coefficient's high
    # bytes zero, and those bytes of every share would be the secret in clear.
    coefficients += [int.from_bytes(read_random(rng, length), "big") for _ in range(threshold - 1)]
    shares = []
    for x in range(1, count + 1):
        acc = coefficients[-1]
        for coeff in reversed(coefficients[:-1]):
            acc = mul_vector(acc, x, length) ^ coeff
        shares.append(ByteShare(x, threshold, split_id, acc.to_bytes(length, "big")))
    _zero(payload)
    coefficients.clear()
    return shares


def _interpolate(shares: Sequence[ByteShare], at: int, length: int) -> int:
    xs = [s.identifier for s in shares]
    acc = 0
    for s in shares:
        lam = lagrange_at(s.identifier, xs, at)
        acc ^= mul_vector(int.from_bytes(s.data, "big"), lam, length)
    return acc


def _check_set(shares: Sequence[ByteShare]) -> tuple[int, int]:
    """Shares must come from one split, be distinct and at least t; returns (t, length)."""
    if isinstance(shares, bytes | bytearray | str) or not shares:
        raise InvalidParameters("need a non-empty sequence of ByteShare")
    if len(shares) > MAX_SHARES:
        raise InvalidParameters(f"at most {MAX_SHARES} shares")
    if not all(isinstance(s, ByteShare) for s in shares):
        raise InvalidParameters("shares must be ByteShare instances")
    first = shares[0]
    for s in shares:
        if not hmac.compare_digest(s.split_id, first.split_id):
            raise InvalidParameters("shares come from different splits")
        if s.threshold != first.threshold or len(s.data) != len(first.data):
            raise InvalidParameters("shares disagree on threshold or length")
    ids = [s.identifier for s in shares]
    if len(set(ids)) != len(ids):
        raise InvalidParameters("duplicate share identifiers")
    if len(shares) < first.threshold:
        raise InvalidParameters(f"need at least {first.threshold} shares, got {len(shares)}")
    return first.threshold, len(first.data)


def _open(subset: Sequence[ByteShare], length: int) -> tuple[int, bytes] | None:
    """Interpolate the payload at 0; (payload int, secret) if its tag verifies."""
    value = _interpolate(subset, 0, length)
    payload = bytearray(value.to_bytes(length, "big"))
    try:
        secret = bytes(payload[:-TAG_SIZE])
        tag = _tag(subset[0].split_id, subset[0].threshold, secret)
        if hmac.compare_digest(tag, bytes(payload[-TAG_SIZE:])):
            return value, secret
        return None
    finally:
        _zero(payload)


def combine_robust(shares: Sequence[ByteShare]) -> tuple[bytes, tuple[int, ...]]:
    """Recover the secret from >= t shares, tolerating wrong ones if a consistent t-set exists.

    Returns (secret, culprits): culprits are the identifiers of supplied shares
    that are not on the verified polynomial. Tries the t-subsets in
    lexicographic order of identifiers, at most MAX_SUBSETS of them (so a large
    set with many wrong shares cannot stall it). Raises InvalidShare (no
    culprits named) if none opens, e.g. with exactly t shares and one is wrong.
    """
    threshold, length = _check_set(shares)
    ordered = sorted(shares, key=lambda s: s.identifier)
    for subset in islice(combinations(ordered, threshold), MAX_SUBSETS):
        opened = _open(subset, length)
        if opened is None:
            continue
        _, secret = opened
        culprits = []
        chosen = {s.identifier for s in subset}
        for s in ordered:
            if s.identifier in chosen:
                continue
            expected = _interpolate(subset, s.identifier, length)
            if not hmac.compare_digest(expected.to_bytes(length, "big"), s.data):
                culprits.append(s.identifier)
        return secret, tuple(culprits)
    raise InvalidShare(
        "shares do not reconstruct an authentic secret (supply more than t shares "
        "to identify the wrong ones)"
    )


def combine(shares: Sequence[ByteShare]) -> bytes:
    """Recover the secret; InvalidShare if the tag fails or any supplied share is wrong."""
    secret, culprits = combine_robust(shares)
    if culprits:
        raise InvalidShare("some shares are inconsistent with the secret", culprits=culprits)
    return secret


def _zero(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0
