"""Shamir secret sharing over the Ed25519 scalar field.

Participant identifiers are ints in [1, MAX_PARTICIPANTS]; identifier 0 is the
secret's position and is never a share. Byte-string sharing over GF(2^8) (for
break-glass export and escrow) lives in `shares.gf256`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import group as g
from .errors import InvalidParameters

#: Upper bound on participants; the cluster runs 3 to 7 nodes, the field allows far more.
MAX_PARTICIPANTS = 255


@dataclass(frozen=True, repr=False)
class SecretShare:
    """One participant's share (identifier, scalar). Prints as <redacted>."""

    identifier: int
    value: g.Scalar

    def __repr__(self) -> str:
        return f"SecretShare(identifier={self.identifier}, value=<redacted>)"


def check_threshold(min_participants: int, max_participants: int) -> None:
    """Validate (t, n): 2 <= t <= n <= MAX_PARTICIPANTS."""
    if not isinstance(min_participants, int) or not isinstance(max_participants, int):
        raise InvalidParameters("threshold and participant count must be ints")
    if not 2 <= min_participants <= max_participants <= MAX_PARTICIPANTS:
        raise InvalidParameters(
            f"need 2 <= t <= n <= {MAX_PARTICIPANTS}, got t={min_participants}, "
            f"n={max_participants}"
        )


def check_identifiers(identifiers: Iterable[int]) -> tuple[int, ...]:
    """Identifiers must be distinct ints in [1, MAX_PARTICIPANTS]."""
    ids = tuple(identifiers)
    for i in ids:
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= MAX_PARTICIPANTS:
            raise InvalidParameters(f"identifier out of range: {i!r}")
    if len(set(ids)) != len(ids):
        raise InvalidParameters("identifiers must be distinct")
    return ids


def random_polynomial(constant: g.Scalar, degree: int, rng: g.RandomSource) -> list[g.Scalar]:
    """Coefficients [constant, a_1, ..., a_degree] with random a_i."""
    return [constant] + [g.random_scalar(rng) for _ in range(degree)]


def evaluate_polynomial(x: int, coefficients: Sequence[g.Scalar]) -> g.Scalar:
    """f(x) by Horner's rule (RFC 9591 polynomial_evaluate)."""
    if x == 0:
        raise InvalidParameters("refusing to evaluate a sharing polynomial at 0")
    xs = g.scalar_from_int(x)
    value = g.ZERO
    for coeff in reversed(coefficients):
        value = g.scalar_add(g.scalar_mul(value, xs), coeff)
    return value


def lagrange_coefficient(x_i: int, xs: Iterable[int], at: int = 0) -> g.Scalar:
    """The Lagrange basis polynomial of x_i over the set xs, evaluated at `at`.

    RFC 9591 derive_interpolating_value when at == 0; repair uses other points.
    """
    ids = check_identifiers(xs)
    if x_i not in ids:
        raise InvalidParameters(f"{x_i} is not in the interpolation set")
    num, den = 1, 1
    for x_j in ids:
        if x_j == x_i:
            continue
        num = num * (at - x_j) % g.ORDER
        den = den * (x_i - x_j) % g.ORDER
    return g.scalar_from_int(num * pow(den, -1, g.ORDER))


def split_secret(
    secret: g.Scalar, min_participants: int, max_participants: int, rng: g.RandomSource
) -> tuple[list[SecretShare], list[g.Scalar]]:
    """Split `secret` into n shares, any t of which reconstruct it.

    Returns (shares for identifiers 1..n, polynomial coefficients). The caller
    derives Feldman commitments from the coefficients (shares.vss) and must
    discard the coefficients afterwards.
    """
    check_threshold(min_participants, max_participants)
    g.decode_scalar(secret)
    coefficients = random_polynomial(secret, min_participants - 1, rng)
    shares = [
        SecretShare(i, evaluate_polynomial(i, coefficients))
        for i in range(1, max_participants + 1)
    ]
    return shares, coefficients


def reconstruct_secret(shares: Sequence[SecretShare], min_participants: int) -> g.Scalar:
    """Interpolate f(0) from at least t shares (break-glass only: never in normal flows)."""
    if len(shares) < min_participants:
        raise InvalidParameters(f"need at least {min_participants} shares, got {len(shares)}")
    ids = check_identifiers(s.identifier for s in shares)
    secret = g.ZERO
    for share in shares:
        lam = lagrange_coefficient(share.identifier, ids)
        secret = g.scalar_add(secret, g.scalar_mul(lam, g.decode_scalar(share.value)))
    return secret
