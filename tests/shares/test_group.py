"""Group and scalar arithmetic: strict decoding, and differential tests of libsodium's
Ed25519 operations against pycryptodome's independent implementation."""

from __future__ import annotations

import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares.errors import InvalidElement, InvalidScalar

L = g.ORDER
scalars = st.integers(1, L - 1)
small_settings = settings(max_examples=100, deadline=None)


def ref_decode(data: bytes) -> ECC.EccPoint:
    return eddsa.import_public_key(data).pointQ


def ref_encode(point: ECC.EccPoint) -> bytes:
    x, y = int(point.x), int(point.y)
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def enc(k: int) -> bytes:
    return g.scalar_from_int(k)


def test_basepoint_matches_reference(ref_base: ECC.EccPoint) -> None:
    assert ref_encode(ref_base) == g.BASEPOINT
    assert g.base_mult(g.ONE) == g.BASEPOINT
    assert ref_base * L == ECC.EccPoint(0, 1, curve="ed25519")


def test_small_order_fixtures_really_have_small_order(small_order_points: list[bytes]) -> None:
    identity = ECC.EccPoint(0, 1, curve="ed25519")
    for p in small_order_points:
        assert ref_decode(p) * 8 == identity


# --- differential tests against pycryptodome -------------------------------


@small_settings
@given(k=scalars)
def test_base_mult_matches_reference(ref_base: ECC.EccPoint, k: int) -> None:
    assert g.base_mult(enc(k)) == ref_encode(ref_base * k)


@small_settings
@given(k=scalars, m=scalars)
def test_scalar_mult_matches_reference(ref_base: ECC.EccPoint, k: int, m: int) -> None:
    p = g.base_mult(enc(m))
    assert g.scalar_mult(enc(k), p) == ref_encode(ref_decode(p) * k)
    assert g.scalar_mult(enc(k), p) == g.base_mult(enc(k * m))


@small_settings
@given(a=scalars, b=scalars)
def test_add_and_sub_match_reference(a: int, b: int) -> None:
    p, q = g.base_mult(enc(a)), g.base_mult(enc(b))
    assert g.element_add(p, q) == ref_encode(ref_decode(p) + ref_decode(q))
    assert g.element_sub(p, q) == ref_encode(ref_decode(p) + (-ref_decode(q)))
    assert g.element_add(p, q) == g.base_mult(enc(a + b)) or (a + b) % L == 0


@small_settings
@given(k=scalars)
def test_encoding_round_trips_through_reference(ref_base: ECC.EccPoint, k: int) -> None:
    point = ref_base * k
    data = ref_encode(point)
    assert g.decode_element(data) == data
    assert ref_decode(g.decode_element(data)) == point


def test_multi_scalar_mult() -> None:
    pairs = [(enc(3), g.base_mult(enc(5))), (enc(7), g.base_mult(enc(11)))]
    assert g.multi_scalar_mult(pairs) == g.base_mult(enc(3 * 5 + 7 * 11))
    assert g.multi_scalar_mult([]) == g.IDENTITY


def test_zero_and_identity_edges() -> None:
    assert g.base_mult(g.ZERO) == g.IDENTITY
    assert g.scalar_mult(g.ZERO, g.BASEPOINT) == g.IDENTITY
    assert g.scalar_mult(enc(5), g.IDENTITY) == g.IDENTITY
    assert g.element_add(g.BASEPOINT, g.IDENTITY) == g.BASEPOINT
    assert g.element_sub(g.BASEPOINT, g.BASEPOINT) == g.IDENTITY
    assert g.is_identity(g.IDENTITY) and not g.is_identity(g.BASEPOINT)


# --- scalar field ------------------------------------------------------------


@small_settings
@given(a=st.integers(0, L - 1), b=st.integers(0, L - 1))
def test_scalar_ops_match_integers(a: int, b: int) -> None:
    sa, sb = enc(a), enc(b)
    assert g.scalar_to_int(g.scalar_add(sa, sb)) == (a + b) % L
    assert g.scalar_to_int(g.scalar_sub(sa, sb)) == (a - b) % L
    assert g.scalar_to_int(g.scalar_mul(sa, sb)) == (a * b) % L
    assert g.scalar_to_int(g.scalar_neg(sa)) == (-a) % L
    if a:
        assert g.scalar_to_int(g.scalar_inv(sa)) == pow(a, -1, L)
    assert g.scalar_eq(sa, enc(a)) and g.scalar_eq(sa, sb) == (a == b)


@small_settings
@given(wide=st.binary(min_size=64, max_size=64))
def test_scalar_reduce_matches_integers(wide: bytes) -> None:
    assert g.scalar_to_int(g.scalar_reduce(wide)) == int.from_bytes(wide, "little") % L


def test_random_scalar_is_canonical_and_nonzero() -> None:
    calls = iter([bytes(64), b"\x05" + bytes(63)])  # first draw is zero: must redraw
    s = g.random_scalar(lambda n: next(calls))
    assert s == enc(5)
    assert g.decode_scalar(s) == s


def test_inverse_of_zero_is_rejected() -> None:
    with pytest.raises(InvalidScalar):
        g.scalar_inv(g.ZERO)


@pytest.mark.parametrize(
    "value",
    [L.to_bytes(32, "little"), (L + 1).to_bytes(32, "little"), b"\xff" * 32],
    ids=["L", "L+1", "2^256-1"],
)
def test_non_canonical_scalars_are_rejected(value: bytes) -> None:
    with pytest.raises(InvalidScalar):
        g.decode_scalar(value)


@pytest.mark.parametrize("value", [b"", b"\x01" * 31, b"\x01" * 33, "00" * 32, None])
def test_malformed_scalars_are_rejected(value: object) -> None:
    with pytest.raises(InvalidScalar):
        g.decode_scalar(value)  # type: ignore[arg-type]


def test_largest_canonical_scalar_is_accepted() -> None:
    top = (L - 1).to_bytes(32, "little")
    assert g.decode_scalar(bytearray(top)) == top


def test_wide_reduce_rejects_wrong_length() -> None:
    with pytest.raises(InvalidScalar):
        g.scalar_reduce(bytes(32))


# --- strict element decoding ---------------------------------------------------


def test_bad_elements_are_rejected(bad_element: bytes) -> None:
    with pytest.raises(InvalidElement):
        g.decode_element(bad_element)


def test_bad_elements_are_rejected_by_scalar_mult(bad_element: bytes) -> None:
    if bad_element == g.IDENTITY:  # documented: k * identity is the identity
        assert g.scalar_mult(enc(12345), bad_element) == g.IDENTITY
        return
    with pytest.raises(InvalidElement):
        g.scalar_mult(enc(12345), bad_element)


def test_mixed_order_point_is_on_curve_but_rejected(mixed_order_point) -> None:
    p = g.base_mult(enc(99))
    mixed = mixed_order_point(p)
    ref_decode(mixed)  # pycryptodome accepts it: on the curve
    with pytest.raises(InvalidElement):
        g.decode_element(mixed)


def test_element_type_is_checked() -> None:
    with pytest.raises(InvalidElement):
        g.decode_element("58" * 32)  # type: ignore[arg-type]


def test_checked_elements_are_plain_bytes_to_callers() -> None:
    p = g.decode_element(bytes(g.BASEPOINT))
    assert isinstance(p, g.CheckedElement)
    assert p == g.BASEPOINT and bytes(p) == g.BASEPOINT and hash(p) == hash(g.BASEPOINT)
    assert type(bytes(p)) is bytes
    # A plain bytes value is always checked in full, even if it equals a valid point.
    assert type(g.decode_element(bytearray(p))) is g.CheckedElement
