"""Feldman verifiable secret sharing over the Ed25519 group.

A dealer with sharing polynomial f(x) = a_0 + a_1 x + ... + a_{t-1} x^{t-1}
publishes the commitments C_k = a_k * B. Participant i checks its share s_i
against them: s_i * B == sum_k C_k * i^k (RFC 9591 Appendix C.2,
vss_commit / vss_verify; the FROST paper's KeyGen round 2 step 2).

The public image f(i) * B is also participant i's verification share, which is
why `evaluate_commitment` is exposed on its own.

Commitment vectors received from outside are decoded strictly. The identity is
accepted as a commitment element because refresh polynomials have a_0 = 0 (so
C_0 is the identity); callers that need C_0 to be a real public key (DKG) check
that themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import group as g
from .errors import InvalidElement, InvalidParameters, InvalidScalar, InvalidShare
from .shamir import MAX_PARTICIPANTS, check_identifiers, lagrange_coefficient


def _check_coefficient_count(count: int) -> None:
    if not 1 <= count <= MAX_PARTICIPANTS:
        raise InvalidParameters(f"commitment length must be in [1, {MAX_PARTICIPANTS}]")


def decode_commitments(commitments: Sequence[bytes]) -> list[g.Element]:
    """Strictly decode a commitment vector; the identity is allowed (see module doc)."""
    if isinstance(commitments, bytes | bytearray | str):
        raise InvalidParameters("commitments must be a sequence of 32-byte elements")
    out = list(commitments)
    _check_coefficient_count(len(out))
    decoded: list[g.Element] = []
    for c in out:
        if isinstance(c, bytes | bytearray) and bytes(c) == g.IDENTITY:
            decoded.append(g.IDENTITY)
        else:
            decoded.append(g.decode_element(c))
    return decoded


def commit(coefficients: Sequence[g.Scalar]) -> list[g.Element]:
    """Feldman commitments [a_k * B] to a sharing polynomial (RFC 9591 C.2 vss_commit)."""
    if isinstance(coefficients, bytes | bytearray | str):
        raise InvalidParameters("coefficients must be a sequence of scalars")
    coeffs = list(coefficients)
    _check_coefficient_count(len(coeffs))
    return [g.base_mult(g.decode_scalar(a)) for a in coeffs]


def _evaluate_decoded(identifier: int, commitments: Sequence[g.Element]) -> g.Element:
    """Horner's rule in the exponent: ((C_{t-1} * i + C_{t-2}) * i + ...) + C_0."""
    x = g.scalar_from_int(identifier)
    acc = g.IDENTITY
    for c in reversed(commitments):
        acc = g.element_add(g.scalar_mult(x, acc), c)
    return acc


def evaluate_commitment(identifier: int, commitments: Sequence[g.Element]) -> g.Element:
    """The public image f(i) * B = sum_k C_k * i^k: participant i's verification share."""
    check_identifiers([identifier])
    return _evaluate_decoded(identifier, decode_commitments(commitments))


def verify_share(
    identifier: int, share: g.Scalar, commitments: Sequence[g.Element], dealer: int
) -> None:
    """Check share * B == f(identifier) * B; InvalidShare naming `dealer` if not.

    A share or commitment vector that does not even decode is also the
    dealer's fault, so it raises InvalidShare with the dealer as culprit too.
    """
    check_identifiers([identifier, dealer] if identifier != dealer else [identifier])
    try:
        s = g.decode_scalar(share)
        decoded = decode_commitments(commitments)
    except (InvalidScalar, InvalidElement, InvalidParameters) as exc:
        raise InvalidShare(f"malformed share or commitments: {exc}", culprits=[dealer]) from exc
    expected = _evaluate_decoded(identifier, decoded)
    if not g.element_eq(g.base_mult(s), expected):
        raise InvalidShare(
            f"share for participant {identifier} does not match the dealer's commitments",
            culprits=[dealer],
        )


def sum_commitments(commitment_vectors: Sequence[Sequence[g.Element]]) -> list[g.Element]:
    """Coefficient-wise sum of commitment vectors of equal length.

    The sum commits to the sum of the polynomials: in DKG it is the group's
    commitment (C_0 is the group public key), in refresh it adds the zero-sharings.
    """
    vectors = [decode_commitments(v) for v in commitment_vectors]
    if not vectors:
        raise InvalidParameters("need at least one commitment vector")
    length = len(vectors[0])
    if any(len(v) != length for v in vectors):
        raise InvalidParameters("commitment vectors differ in length")
    out = list(vectors[0])
    for v in vectors[1:]:
        out = [g.element_add(a, b) for a, b in zip(out, v, strict=True)]
    return out


def derive_threshold(
    verification_shares: Mapping[int, g.Element], group_public_key: g.Element
) -> int:
    """The key's threshold t, from its public data alone (never from a request).

    The smallest t such that the first t verification shares, interpolated in
    the exponent, give the group public key at 0 and every other verification
    share at its identifier: the degree of the group polynomial plus one. A
    protocol that would use another t (repair, refresh) must refuse. Raises
    InvalidParameters if the shares are inconsistent with the key or fewer
    than t of them are given (then they determine nothing).
    """
    if not isinstance(verification_shares, Mapping):
        raise InvalidParameters("verification shares must map identifiers to elements")
    ids = sorted(check_identifiers(list(verification_shares)))
    if len(ids) < 2:
        raise InvalidParameters("need at least 2 verification shares")
    points = {i: g.decode_element(verification_shares[i]) for i in ids}
    key = g.decode_element(group_public_key)
    for t in range(2, len(ids) + 1):
        base = ids[:t]
        if all(
            g.element_eq(
                g.multi_scalar_mult(
                    [(lagrange_coefficient(i, base, at=target), points[i]) for i in base]
                ),
                key if target == 0 else points[target],
            )
            for target in [0, *ids[t:]]
        ):
            return t
    raise InvalidParameters(
        "verification shares are inconsistent with the group key, or fewer than the threshold"
    )
