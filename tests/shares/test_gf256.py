"""GF(2^8) arithmetic and byte-string Shamir: vectors, differential and property tests."""

from __future__ import annotations

from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import gf256
from shares.errors import EncodingError, InvalidParameters, InvalidShare, RandomnessError
from shares.rng import SeededRNG


def _reference_tables() -> tuple[list[int], list[int]]:
    """Textbook log/exp tables with generator 0x03 (test oracle only)."""
    exp, log = [0] * 512, [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)  # x * 3
        x &= 0xFF
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


EXP, LOG = _reference_tables()


def ref_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else EXP[LOG[a] + LOG[b]]


def test_fips197_multiplication_examples() -> None:
    # FIPS-197 section 4.2: {57} * {83} = {c1}, {57} * {13} = {fe}.
    assert gf256.mul(0x57, 0x83) == 0xC1
    assert gf256.mul(0x57, 0x13) == 0xFE


def test_mul_matches_table_reference_exhaustively() -> None:
    for a in range(256):
        for b in range(256):
            assert gf256.mul(a, b) == ref_mul(a, b)


def test_inverse_of_every_non_zero_element() -> None:
    for a in range(1, 256):
        assert gf256.mul(a, gf256.inv(a)) == 1
    with pytest.raises(InvalidParameters):
        gf256.inv(0)


@pytest.mark.parametrize("bad", [-1, 256, 1.0, True, None])
def test_mul_rejects_non_bytes(bad: object) -> None:
    with pytest.raises(InvalidParameters):
        gf256.mul(bad, 1)  # type: ignore[arg-type]


@given(data=st.binary(min_size=1, max_size=64), c=st.integers(0, 255))
def test_vector_mul_matches_bytewise(data: bytes, c: int) -> None:
    out = gf256.mul_vector(int.from_bytes(data, "big"), c, len(data))
    assert out.to_bytes(len(data), "big") == bytes(ref_mul(b, c) for b in data)


@st.composite
def split_case(draw: st.DrawFn) -> tuple[int, int, bytes, list[int], int]:
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    secret = draw(st.binary(min_size=1, max_size=80))
    subset = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    seed = draw(st.integers(0, 2**32))
    return t, n, secret, subset, seed


@settings(max_examples=100)
@given(case=split_case())
def test_any_t_of_n_reconstruct(case: tuple[int, int, bytes, list[int], int]) -> None:
    t, n, secret, subset, seed = case
    shares = gf256.split(secret, t, n, SeededRNG(seed))
    assert [s.identifier for s in shares] == list(range(1, n + 1))
    chosen = [shares[i - 1] for i in subset]
    assert gf256.combine(chosen) == secret
    parsed = [gf256.ByteShare.from_bytes(s.to_bytes()) for s in chosen]
    assert gf256.combine(parsed) == secret


@settings(max_examples=60)
@given(case=split_case(), flip=st.integers(1, 255), pos=st.integers(0, 10_000))
def test_wrong_share_never_yields_a_plausible_secret(
    case: tuple[int, int, bytes, list[int], int], flip: int, pos: int
) -> None:
    t, n, secret, _, seed = case
    shares = gf256.split(secret, t, n, SeededRNG(seed))
    victim = shares[pos % n]
    data = bytearray(victim.data)
    data[pos % len(data)] ^= flip
    bad = gf256.ByteShare(victim.identifier, t, victim.split_id, bytes(data))
    with_bad = [bad if s.identifier == victim.identifier else s for s in shares]
    # Exactly t shares including the bad one: detected, never a wrong secret.
    others = [s for s in shares if s.identifier != victim.identifier]
    subset = [bad, *others[: t - 1]]
    with pytest.raises(InvalidShare):
        gf256.combine(subset)
    if n > t:
        # More than t shares: the secret is recovered and the bad share named.
        assert gf256.combine_robust(with_bad) == (secret, (victim.identifier,))
        with pytest.raises(InvalidShare) as exc:
            gf256.combine(with_bad)
        assert exc.value.culprits == (victim.identifier,)


def test_all_t_subsets_agree() -> None:
    secret = bytes(range(32))
    shares = gf256.split(secret, 3, 6, SeededRNG(3))
    for subset in combinations(shares, 3):
        assert gf256.combine(list(subset)) == secret


def test_shares_of_different_splits_are_refused() -> None:
    a = gf256.split(b"secret-a", 2, 3, SeededRNG(1))
    b = gf256.split(b"secret-a", 2, 3, SeededRNG(2))
    with pytest.raises(InvalidParameters):
        gf256.combine([a[0], b[1]])


def test_forged_split_id_is_detected_by_the_tag() -> None:
    a = gf256.split(b"secret-a", 2, 3, SeededRNG(1))
    other = bytes(16)
    relabelled = [gf256.ByteShare(s.identifier, 2, other, s.data) for s in a[:2]]
    with pytest.raises(InvalidShare):
        gf256.combine(relabelled)


def test_set_validation() -> None:
    shares = gf256.split(b"abc", 3, 4, SeededRNG(5))
    with pytest.raises(InvalidParameters):
        gf256.combine(shares[:2])
    with pytest.raises(InvalidParameters):
        gf256.combine([shares[0], shares[0], shares[1]])
    with pytest.raises(InvalidParameters):
        gf256.combine([])


@pytest.mark.parametrize(
    ("secret", "t", "n"),
    [(b"", 2, 3), (b"x" * (gf256.MAX_SECRET_SIZE + 1), 2, 3), (b"x", 1, 3), (b"x", 4, 3),
     (b"x", 2, 256), ("text", 2, 3)],
)
def test_split_rejects_bad_parameters(secret: object, t: int, n: int) -> None:
    with pytest.raises(InvalidParameters):
        gf256.split(secret, t, n, SeededRNG(0))  # type: ignore[arg-type]


def test_share_encoding_is_strict() -> None:
    share = gf256.split(b"k" * 32, 2, 3, SeededRNG(9))[1]
    raw = share.to_bytes()
    assert gf256.ByteShare.from_bytes(raw) == share
    for bad in (
        raw[:-33],  # shorter than the minimum once the tag is cut
        b"\x02" + raw[1:],  # unknown version
        raw[:1] + b"\x01" + raw[2:],  # threshold 1
        raw[:2] + b"\x00" + raw[3:],  # identifier 0
        b"",
        b"\x01" * (19 + gf256.MAX_SECRET_SIZE + gf256.TAG_SIZE + 1),
    ):
        with pytest.raises(EncodingError):
            gf256.ByteShare.from_bytes(bad)


def test_repr_redacts_share_data() -> None:
    share = gf256.split(b"top secret", 2, 2, SeededRNG(4))[0]
    assert "redacted" in repr(share)
    assert share.data.hex() not in repr(share)


@pytest.mark.parametrize(
    ("identifier", "threshold", "split_id", "data"),
    [(True, 2, bytes(16), bytes(33)), (0, 2, bytes(16), bytes(33)), (1, 1, bytes(16), bytes(33)),
     (1, 2, bytes(15), bytes(33)), (1, 2, bytes(16), bytes(32)), (1, 2, bytes(16), "x" * 33)],
)
def test_share_constructor_validates(identifier, threshold, split_id, data) -> None:
    with pytest.raises(InvalidParameters):
        gf256.ByteShare(identifier, threshold, split_id, data)


# --- issue 9, section 6, item 6: the subset search is bounded, not skipped -------------


def test_combine_robust_searches_up_to_max_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """With C(n, t) above the bound it used to try only the first subset; now up to the bound."""
    monkeypatch.setattr(gf256, "MAX_SUBSETS", 5)  # C(7, 3) = 35 > 5
    secret = b"break-glass secret"
    shares = gf256.split(secret, 3, 7, SeededRNG(61))
    shares[2] = gf256.ByteShare(3, 3, shares[2].split_id, bytes(len(shares[2].data)))
    # (1, 2, 3) fails, (1, 2, 4) opens: the second subset tried.
    assert gf256.combine_robust(shares) == (secret, (3,))


def test_combine_robust_stops_at_max_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gf256, "MAX_SUBSETS", 5)
    shares = gf256.split(b"x" * 8, 3, 7, SeededRNG(62))
    # Shares 1 and 2 wrong: every subset among the first five contains one of them.
    for k in (0, 1):
        shares[k] = gf256.ByteShare(k + 1, 3, shares[k].split_id, bytes(len(shares[k].data)))
    tried = []
    real_open = gf256._open
    monkeypatch.setattr(gf256, "_open", lambda s, n: tried.append(s) or real_open(s, n))
    with pytest.raises(InvalidShare):
        gf256.combine_robust(shares)
    assert len(tried) == 5


def test_combine_robust_at_the_real_bound() -> None:
    # C(20, 5) = 15504 > 10 000; with share 1 wrong, the first good subset is number 3877.
    secret = bytes(range(24))
    shares = gf256.split(secret, 5, 20, SeededRNG(63))
    shares[0] = gf256.ByteShare(1, 5, shares[0].split_id, bytes(len(shares[0].data)))
    assert gf256.combine_robust(shares) == (secret, (1,))


def test_bytes_like_share_fields_are_stored_as_bytes() -> None:
    share = gf256.split(b"abc", 2, 3, SeededRNG(64))[0]
    loose = gf256.ByteShare(1, 2, bytearray(share.split_id), bytearray(share.data))
    assert loose == share and type(loose.data) is bytes


# --- item 4: a short RNG read is refused, never turned into zero coefficient bytes ------


def test_split_refuses_a_short_rng_read() -> None:
    """An RNG that returns at most 16 bytes per call used to leave every share
    holding the secret in clear (the coefficients' high bytes were zero)."""
    stream = SeededRNG(65)
    secret = bytes(range(1, 33))
    with pytest.raises(RandomnessError, match="returned 16 bytes, 64 were requested"):
        gf256.split(secret, 3, 5, lambda n: stream(min(n, 16)))
