"""Feldman VSS: shares verify against commitments; a bad share names its dealer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import shamir, vss
from shares.errors import InvalidElement, InvalidParameters, InvalidScalar, InvalidShare
from shares.rng import SeededRNG


def deal(t: int, n: int, seed: int):
    rng = SeededRNG(seed)
    shares, coefficients = shamir.split_secret(g.random_scalar(rng), t, n, rng)
    return shares, coefficients, vss.commit(coefficients)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 7), data=st.data(), seed=st.integers(0, 2**32))
def test_every_share_verifies_and_matches_public_image(n: int, data, seed: int) -> None:
    t = data.draw(st.integers(2, n))
    shares, coefficients, commitment = deal(t, n, seed)
    assert commitment == [g.base_mult(a) for a in coefficients]
    for s in shares:
        vss.verify_share(s.identifier, s.value, commitment, dealer=1)
        assert vss.evaluate_commitment(s.identifier, commitment) == g.base_mult(s.value)


def test_wrong_share_names_the_dealer() -> None:
    shares, _, commitment = deal(3, 5, 7)
    wrong = g.scalar_add(shares[1].value, g.ONE)
    with pytest.raises(InvalidShare) as info:
        vss.verify_share(2, wrong, commitment, dealer=4)
    assert info.value.culprits == (4,)
    # A correct share presented under the wrong identifier fails as well.
    with pytest.raises(InvalidShare):
        vss.verify_share(3, shares[1].value, commitment, dealer=4)


def test_tampered_commitment_names_the_dealer() -> None:
    shares, _, commitment = deal(3, 5, 8)
    tampered = [commitment[0], g.element_add(commitment[1], g.BASEPOINT), commitment[2]]
    with pytest.raises(InvalidShare) as info:
        vss.verify_share(1, shares[0].value, tampered, dealer=2)
    assert info.value.culprits == (2,)


def test_malformed_inputs_are_the_dealers_fault(bad_element: bytes) -> None:
    shares, _, commitment = deal(2, 3, 9)
    with pytest.raises(InvalidShare) as info:
        vss.verify_share(1, shares[0].value, [commitment[0], bad_element], dealer=3)
    assert info.value.culprits == (3,)
    if bad_element != g.IDENTITY:  # the identity is a legal commitment (refresh's C_0)
        with pytest.raises(InvalidElement):
            vss.evaluate_commitment(1, [bad_element, commitment[1]])


def test_non_canonical_share_names_the_dealer() -> None:
    _, _, commitment = deal(2, 3, 10)
    with pytest.raises(InvalidShare) as info:
        vss.verify_share(1, g.ORDER.to_bytes(32, "little"), commitment, dealer=2)
    assert info.value.culprits == (2,)


def test_zero_constant_term_is_allowed() -> None:
    """Refresh deals zero-sharings: C_0 is the identity and must still verify."""
    rng = SeededRNG(11)
    coefficients = [g.ZERO, g.random_scalar(rng)]
    commitment = vss.commit(coefficients)
    assert commitment[0] == g.IDENTITY
    share = shamir.evaluate_polynomial(2, coefficients)
    vss.verify_share(2, share, commitment, dealer=1)


@settings(max_examples=15, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32), min_size=1, max_size=4))
def test_sum_of_commitments_commits_to_sum_of_polynomials(seeds: list[int]) -> None:
    deals = [deal(3, 4, s) for s in seeds]
    total = vss.sum_commitments([c for _, _, c in deals])
    for i in range(1, 5):
        acc = g.ZERO
        for shares, _, _ in deals:
            acc = g.scalar_add(acc, shares[i - 1].value)
        vss.verify_share(i, acc, total, dealer=1)


def test_input_validation() -> None:
    _, coefficients, commitment = deal(2, 3, 12)
    with pytest.raises(InvalidParameters):
        vss.sum_commitments([])
    with pytest.raises(InvalidParameters):
        vss.sum_commitments([commitment, commitment[:1]])
    with pytest.raises(InvalidParameters):
        vss.commit([])
    with pytest.raises(InvalidParameters):
        vss.commit(b"\x01" * 32)  # type: ignore[arg-type]
    with pytest.raises(InvalidScalar):
        vss.commit([b"\xff" * 32])
    with pytest.raises(InvalidParameters):
        vss.evaluate_commitment(0, commitment)
    with pytest.raises(InvalidParameters):
        vss.evaluate_commitment(1, [])
    with pytest.raises(InvalidParameters):
        vss.verify_share(256, coefficients[0], commitment, dealer=1)
