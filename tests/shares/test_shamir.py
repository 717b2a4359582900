"""Shamir sharing over the scalar field: any t shares reconstruct, t-1 do not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import shamir
from shares.errors import InvalidParameters, InvalidScalar
from shares.rng import SeededRNG

L = g.ORDER


@st.composite
def sharing_case(draw: st.DrawFn):
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    subset = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    return t, n, subset, draw(st.integers(0, 2**32))


@settings(max_examples=60, deadline=None)
@given(case=sharing_case())
def test_any_t_shares_reconstruct(case) -> None:
    t, n, subset, seed = case
    rng = SeededRNG(seed)
    secret = g.random_scalar(rng)
    shares, coefficients = shamir.split_secret(secret, t, n, rng)
    assert [s.identifier for s in shares] == list(range(1, n + 1))
    assert coefficients[0] == secret and len(coefficients) == t
    chosen = [shares[i - 1] for i in subset]
    assert shamir.reconstruct_secret(chosen, t) == secret
    # t-1 shares interpolate to something else (a fresh random polynomial value).
    assert shamir.reconstruct_secret(chosen[: t - 1], t - 1) != secret


def _lagrange_reference(x_i: int, xs: list[int], at: int) -> int:
    num = den = 1
    for x_j in xs:
        if x_j != x_i:
            num *= at - x_j
            den *= x_i - x_j
    return num * pow(den, -1, L) % L


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.integers(1, 255), min_size=1, max_size=10, unique=True),
    at=st.integers(0, 300),
    data=st.data(),
)
def test_lagrange_matches_reference(xs: list[int], at: int, data: st.DataObject) -> None:
    x_i = data.draw(st.sampled_from(xs))
    got = shamir.lagrange_coefficient(x_i, xs, at=at)
    assert g.scalar_to_int(got) == _lagrange_reference(x_i, xs, at)


def test_polynomial_evaluation_is_horner() -> None:
    coeffs = [g.scalar_from_int(c) for c in (3, 5, 7)]
    assert g.scalar_to_int(shamir.evaluate_polynomial(2, coeffs)) == 3 + 5 * 2 + 7 * 4
    with pytest.raises(InvalidParameters):
        shamir.evaluate_polynomial(0, coeffs)


def test_share_repr_is_redacted() -> None:
    share = shamir.SecretShare(1, g.scalar_from_int(123456789))
    assert "redacted" in repr(share)
    assert share.value.hex() not in repr(share)


@pytest.mark.parametrize("t,n", [(1, 3), (4, 3), (2, 256), (0, 0), (2.0, 3)])
def test_bad_thresholds_are_rejected(t, n) -> None:
    with pytest.raises(InvalidParameters):
        shamir.split_secret(g.ONE, t, n, SeededRNG(0))


@pytest.mark.parametrize("ids", [[0, 1], [1, 1], [1, 256], [True, 2], [-1, 2]])
def test_bad_identifiers_are_rejected(ids) -> None:
    with pytest.raises(InvalidParameters):
        shamir.check_identifiers(ids)


def test_reconstruct_validates_inputs() -> None:
    rng = SeededRNG(1)
    shares, _ = shamir.split_secret(g.random_scalar(rng), 3, 4, rng)
    with pytest.raises(InvalidParameters):
        shamir.reconstruct_secret(shares[:2], 3)
    with pytest.raises(InvalidParameters):
        shamir.reconstruct_secret([shares[0], shares[0], shares[1]], 3)
    bad = shamir.SecretShare(4, L.to_bytes(32, "little"))
    with pytest.raises(InvalidScalar):
        shamir.reconstruct_secret([*shares[:2], bad], 3)
    with pytest.raises(InvalidParameters):
        shamir.lagrange_coefficient(9, [1, 2, 3])


def test_non_canonical_secret_is_rejected() -> None:
    with pytest.raises(InvalidScalar):
        shamir.split_secret(b"\xff" * 32, 2, 3, SeededRNG(0))
