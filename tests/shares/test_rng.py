"""Randomness: every read is checked for length (issue 9, section 6, item 4), and the
nonce hedge keeps outputs apart when the RNG repeats (item 7)."""

from __future__ import annotations

import pytest

from shares import dkg, frost, gf256, refresh, repair, shamir, tdec, vss
from shares import group as g
from shares.errors import InvalidParameters, RandomnessError
from shares.rng import SeededRNG, hedged_random, read_random


def test_read_random_returns_exactly_n_bytes() -> None:
    assert read_random(SeededRNG(1), 7) == SeededRNG(1)(7)
    assert type(read_random(lambda n: bytearray(n), 3)) is bytes
    for bad in (lambda n: b"\x00" * (n - 1), lambda n: b"\x00" * (n + 1), lambda n: b""):
        with pytest.raises(RandomnessError):
            read_random(bad, 32)
    with pytest.raises(RandomnessError, match="returned str"):
        read_random(lambda n: "x" * n, 4)  # type: ignore[arg-type, return-value]
    for n in (0, -1, True, 1 << 20):
        with pytest.raises(InvalidParameters):
            read_random(SeededRNG(1), n)
    with pytest.raises(InvalidParameters):
        read_random(b"not callable", 4)  # type: ignore[arg-type]


def _short(n: int) -> bytes:
    """A source that returns one byte less than asked (a truncated read)."""
    return SeededRNG(2)(n)[:-1]


def _keys():
    rng = SeededRNG(3)
    shares, coefficients = shamir.split_secret(g.random_scalar(rng), 2, 3, rng)
    commitment = vss.commit(coefficients)
    vshares = {s.identifier: vss.evaluate_commitment(s.identifier, commitment) for s in shares}
    return {s.identifier: s for s in shares}, commitment[0], vshares


def _envelope(key):
    return tdec.wrap(key, bytes(32), tdec.Label("k", 1, b"c"), SeededRNG(4))


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda k: g.random_scalar(_short), id="group.random_scalar"),
        pytest.param(lambda k: shamir.split_secret(g.ONE, 2, 3, _short), id="shamir.split"),
        pytest.param(lambda k: gf256.split(b"secret", 2, 3, _short), id="gf256.split"),
        pytest.param(lambda k: frost.commit(g.ONE, rng=_short), id="frost.commit"),
        pytest.param(lambda k: frost.trusted_dealer_keygen(g.ONE, 3, 2, rng=_short),
                     id="frost.trusted_dealer_keygen"),
        pytest.param(lambda k: dkg.part1(1, 3, 2, b"ctx", rng=_short), id="dkg.part1"),
        pytest.param(lambda k: refresh.refresh_round1(1, [1, 2, 3], 2, k[2], k[1], _short),
                     id="refresh.round1"),
        pytest.param(lambda k: repair.repair_step1(
            k[0][1], repair.RepairRequest(3, (1, 2), 2), k[2], k[1], _short), id="repair.step1"),
        pytest.param(lambda k: tdec.wrap(k[1], bytes(32), tdec.Label("k", 1, b"c"), _short),
                     id="tdec.wrap"),
        pytest.param(lambda k: tdec.partial_decrypt(
            k[0][1], _envelope(k[1]), k[1], tdec.Label("k", 1, b"c"), _short),
            id="tdec.partial_decrypt"),
    ],
)
def test_every_module_refuses_a_short_read(call) -> None:
    with pytest.raises(RandomnessError):
        call(_keys())


def test_hedge_separates_repeated_reads_and_domains() -> None:
    stuck = lambda n: b"\x07" * n  # noqa: E731
    outputs = {hedged_random(stuck, 32, b"test/a") for _ in range(100)}
    assert len(outputs) == 100
    assert hedged_random(stuck, 32, b"test/a") != hedged_random(stuck, 32, b"test/b")
    assert len(hedged_random(SeededRNG(5), 64, b"d")) == 64
    for n, domain in ((0, b"d"), (65, b"d"), (32, b""), (32, "d")):
        with pytest.raises(InvalidParameters):
            hedged_random(SeededRNG(5), n, domain)  # type: ignore[arg-type]
    with pytest.raises(RandomnessError):
        hedged_random(_short, 32, b"d")
