"""Proactive refresh: key unchanged, shares re-randomised, old and new do not mix; culprits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import refresh, shamir, vss
from shares.errors import InvalidParameters, InvalidShare
from shares.rng import SeededRNG


def deal(t: int, n: int, seed: int):
    """Trusted-dealer keys: (secret, shares by id, group commitment, verification shares)."""
    rng = SeededRNG(seed)
    secret = g.random_scalar(rng)
    shares, coefficients = shamir.split_secret(secret, t, n, rng)
    commitment = vss.commit(coefficients)
    vshares = {s.identifier: vss.evaluate_commitment(s.identifier, commitment) for s in shares}
    return secret, {s.identifier: s for s in shares}, commitment, vshares


def run_round1(participants, t, rng, vshares, group_key):
    packages, sub_shares = [], []
    for d in participants:
        package, sent = refresh.refresh_round1(d, participants, t, vshares, group_key, rng)
        packages.append(package)
        sub_shares.extend(sent.values())
    return packages, sub_shares


def run_round2(shares, packages, sub_shares, t, vshares, group_key):
    ids = sorted(p.dealer for p in packages)
    return {
        j: refresh.refresh_round2(
            shares[j], ids, packages, [s for s in sub_shares if s.recipient == j], t, vshares,
            group_key,
        )
        for j in ids
    }


@st.composite
def refresh_case(draw: st.DrawFn):
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    subset = draw(st.lists(st.integers(1, n), min_size=t, max_size=t, unique=True))
    return t, n, subset, draw(st.integers(0, 2**32))


@settings(max_examples=60)
@given(case=refresh_case())
def test_refresh_keeps_key_and_breaks_old_shares(case) -> None:
    t, n, subset, seed = case
    secret, shares, commitment, vshares = deal(t, n, seed)
    group_key = commitment[0]
    participants = list(range(1, n + 1))
    packages, sub_shares = run_round1(participants, t, SeededRNG(seed + 1), vshares, group_key)
    results = run_round2(shares, packages, sub_shares, t, vshares, group_key)
    new = {j: r.share for j, r in results.items()}
    # Same verification shares on every participant, and they match the new shares.
    for r in results.values():
        assert r.verification_shares == results[1].verification_shares
        assert r.group_public_key == group_key
    for j, s in new.items():
        assert g.base_mult(s.value) == results[1].verification_shares[j]
        assert s.value != shares[j].value
    # The new commitment has the same constant term and verifies every new share.
    new_commitment = refresh.refreshed_group_commitment(commitment, packages, participants, t)
    assert new_commitment[0] == group_key
    for j, s in new.items():
        vss.verify_share(j, s.value, new_commitment, dealer=j)
    # Any t new shares reconstruct the unchanged secret...
    assert shamir.reconstruct_secret([new[i] for i in subset], t) == secret
    # ...but swapping in one old share breaks the combination.
    mixed = [shares[subset[0]]] + [new[i] for i in subset[1:]]
    assert shamir.reconstruct_secret(mixed, t) != secret
    with pytest.raises(InvalidShare):
        vss.verify_share(subset[0], shares[subset[0]].value, new_commitment, dealer=subset[0])


def test_refresh_of_a_subset_excludes_the_rest() -> None:
    secret, shares, commitment, vshares = deal(3, 5, 5)
    packages, sub_shares = run_round1([1, 2, 4, 5], 3, SeededRNG(6), vshares, commitment[0])
    results = run_round2(shares, packages, sub_shares, 3, vshares, commitment[0])
    assert set(results[1].verification_shares) == {1, 2, 4, 5}
    new = [results[i].share for i in (1, 2, 4)]
    assert shamir.reconstruct_secret(new, 3) == secret
    assert shamir.reconstruct_secret([shares[3], *new[:2]], 3) != secret


@pytest.fixture
def round1():
    _, shares, commitment, vshares = deal(3, 4, 31)
    packages, sub_shares = run_round1([1, 2, 3, 4], 3, SeededRNG(32), vshares, commitment[0])
    return shares, commitment[0], vshares, packages, sub_shares


IDS = (1, 2, 3, 4)


def _mine(sub_shares, j):
    return [s for s in sub_shares if s.recipient == j]


def test_non_zero_constant_names_the_dealer() -> None:
    _, shares, commitment, vshares = deal(3, 4, 41)
    rng = SeededRNG(42)
    packages, sub_shares = run_round1([1, 2, 3, 4], 3, rng, vshares, commitment[0])
    # Dealer 2 shares a non-zero value with honest-looking commitments: a key shift.
    coefficients = shamir.random_polynomial(g.ONE, 2, rng)
    packages[1] = refresh.RefreshPackage(2, tuple(vss.commit(coefficients)))
    sub_shares = [
        dataclasses.replace(s, value=shamir.evaluate_polynomial(s.recipient, coefficients))
        if s.dealer == 2
        else s
        for s in sub_shares
    ]
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(
            shares[1], IDS, packages, _mine(sub_shares, 1), 3, vshares, commitment[0]
        )
    assert exc.value.culprits == (2,)
    # Observers computing the public state from the log reject it the same way.
    with pytest.raises(InvalidShare) as exc:
        refresh.refreshed_group_commitment(commitment, packages, IDS, 3)
    assert exc.value.culprits == (2,)
    with pytest.raises(InvalidShare):
        refresh.refreshed_verification_shares(packages, IDS, 3, vshares)


def test_bad_sub_share_names_the_dealer(round1) -> None:
    shares, key, vshares, packages, sub_shares = round1
    bad = [
        dataclasses.replace(s, value=g.scalar_add(s.value, g.ONE))
        if (s.dealer, s.recipient) == (4, 3)
        else s
        for s in sub_shares
    ]
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(shares[3], IDS, packages, _mine(bad, 3), 3, vshares, key)
    assert exc.value.culprits == (4,)
    # The other recipients are unaffected.
    refresh.refresh_round2(shares[1], IDS, packages, _mine(bad, 1), 3, vshares, key)


def test_wrong_degree_and_malformed_commitments_name_the_dealer(round1) -> None:
    shares, key, vshares, packages, sub_shares = round1
    short = list(packages)
    short[0] = refresh.RefreshPackage(1, packages[0].commitments[:2])
    short[2] = refresh.RefreshPackage(3, (g.IDENTITY, b"\x00" * 31 + b"\x80", g.BASEPOINT))
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(shares[2], IDS, short, _mine(sub_shares, 2), 3, vshares, key)
    assert exc.value.culprits == (1, 3)


def test_missing_duplicate_and_misaddressed_inputs(round1) -> None:
    shares, key, vshares, packages, sub_shares = round1
    with pytest.raises(InvalidParameters):
        refresh.refresh_round2(shares[1], IDS, packages, _mine(sub_shares, 1)[:-1], 3, vshares, key)
    with pytest.raises(InvalidParameters):  # a participant's package is missing
        refresh.refresh_round2(shares[1], IDS, packages[:-1], _mine(sub_shares, 1), 3, vshares, key)
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(shares[1], IDS, [*packages, packages[1]], _mine(sub_shares, 1), 3,
                               vshares, key)
    assert exc.value.culprits == (2,)
    wrong = [*_mine(sub_shares, 1)[:-1], _mine(sub_shares, 2)[-1]]
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(shares[1], IDS, packages, wrong, 3, vshares, key)
    assert exc.value.culprits == (4,)
    with pytest.raises(InvalidParameters):  # fewer participants than the threshold
        refresh.refresh_round1(1, [1, 2], 3, vshares, key, SeededRNG(0))
    with pytest.raises(InvalidParameters):  # dealer outside the set
        refresh.refresh_round1(5, [1, 2, 3], 3, vshares, key, SeededRNG(0))
    with pytest.raises(InvalidParameters):  # a member the key does not have
        refresh.refresh_round1(1, [1, 2, 3, 9], 3, vshares, key, SeededRNG(0))


def test_inconsistent_verification_shares_are_refused(round1) -> None:
    shares, key, vshares, packages, sub_shares = round1
    lying = dict(vshares)
    lying[4] = g.base_mult(g.scalar_from_int(7))
    with pytest.raises(InvalidParameters):
        refresh.refresh_round2(shares[1], IDS, packages, _mine(sub_shares, 1), 3, lying, key)
    wrong = g.base_mult(g.scalar_from_int(9))
    with pytest.raises(InvalidParameters):
        refresh.refresh_round2(shares[1], IDS, packages, _mine(sub_shares, 1), 3, vshares, wrong)


def test_sub_share_repr_is_redacted(round1) -> None:
    *_, sub_shares = round1
    assert "redacted" in repr(sub_shares[0])
    assert sub_shares[0].value.hex() not in repr(sub_shares[0])


@settings(max_examples=25)
@given(case=refresh_case(), data=st.data())
def test_every_key_shifting_dealer_is_named(case, data) -> None:
    t, n, _, seed = case
    _, shares, commitment, vshares = deal(t, n, seed)
    ids = list(range(1, n + 1))
    rng = SeededRNG(seed + 3)
    packages, sub_shares = run_round1(ids, t, rng, vshares, commitment[0])
    bad = set(data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True)))
    recipient = data.draw(st.sampled_from(ids))
    for d in bad:
        # A consistent sharing of a non-zero value: sub-shares match, the constant does not.
        coefficients = shamir.random_polynomial(g.random_scalar(rng), t - 1, rng)
        packages[d - 1] = refresh.RefreshPackage(d, tuple(vss.commit(coefficients)))
        sub_shares = [
            dataclasses.replace(s, value=shamir.evaluate_polynomial(s.recipient, coefficients))
            if s.dealer == d
            else s
            for s in sub_shares
        ]
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(
            shares[recipient], ids, packages, _mine(sub_shares, recipient), t, vshares,
            commitment[0],
        )
    assert exc.value.culprits == tuple(sorted(bad))


# --- issue 9, section 6, item 3: a refresh never changes the threshold ----------------


def _deal_zero_sharings(ids, t, rng):
    """Round 1 as a dealer that skips refresh_round1's checks would run it."""
    packages, sub_shares = [], []
    for d in ids:
        coefficients = shamir.random_polynomial(g.ZERO, t - 1, rng)
        packages.append(refresh.RefreshPackage(d, tuple(vss.commit(coefficients))))
        sub_shares += [refresh.RefreshSubShare(d, j, shamir.evaluate_polynomial(j, coefficients))
                       for j in ids]
    return packages, sub_shares


def test_refresh_refuses_to_raise_the_threshold() -> None:
    """2-of-3 refreshed with t = 3 used to pass every check and leave a 3-of-3 key."""
    secret, shares, commitment, vshares = deal(2, 3, 51)
    key, ids = commitment[0], [1, 2, 3]
    with pytest.raises(InvalidParameters, match="never changes the threshold"):
        refresh.refresh_round1(1, ids, 3, vshares, key, SeededRNG(52))
    packages, sub_shares = _deal_zero_sharings(ids, 3, SeededRNG(53))
    for j in ids:
        with pytest.raises(InvalidParameters, match="refresh threshold 3 differs"):
            refresh.refresh_round2(shares[j], ids, packages, _mine(sub_shares, j), 3, vshares, key)
    # What the accepted refresh did: the new shares lie on a degree-2 polynomial.
    new = [g.scalar_add(shares[j].value, g.ZERO) for j in ids]
    for s in sub_shares:
        new[s.recipient - 1] = g.scalar_add(new[s.recipient - 1], s.value)
    two = [shamir.SecretShare(j, new[j - 1]) for j in (1, 2)]
    assert shamir.reconstruct_secret(two, 2) != secret  # one lost node would destroy the key
    assert shamir.reconstruct_secret([*two, shamir.SecretShare(3, new[2])], 3) == secret


def test_refresh_refuses_to_lower_the_threshold() -> None:
    _, shares, commitment, vshares = deal(3, 4, 54)
    key, ids = commitment[0], [1, 2, 3, 4]
    with pytest.raises(InvalidParameters, match="refresh threshold 2 differs"):
        refresh.refresh_round1(1, ids, 2, vshares, key, SeededRNG(55))
    packages, sub_shares = _deal_zero_sharings(ids, 2, SeededRNG(56))
    with pytest.raises(InvalidParameters, match="refresh threshold 2 differs"):
        refresh.refresh_round2(shares[1], ids, packages, _mine(sub_shares, 1), 2, vshares, key)
    assert refresh.check_threshold_unchanged(3, ids, vshares, key) == tuple(ids)


# --- item 6: a bad sub-share given as a bytearray is attributed, not a TypeError ------


def test_bytearray_sub_shares_are_checked_and_attributed(round1) -> None:
    shares, key, vshares, packages, sub_shares = round1
    mine = [dataclasses.replace(s, value=bytearray(s.value)) for s in _mine(sub_shares, 1)]
    result = refresh.refresh_round2(shares[1], IDS, packages, mine, 3, vshares, key)
    assert isinstance(result.share.value, bytes)
    bad = [dataclasses.replace(s, value=bytearray(g.scalar_add(bytes(s.value), g.ONE)))
           if s.dealer == 2 else s for s in mine]
    with pytest.raises(InvalidShare) as exc:
        refresh.refresh_round2(shares[1], IDS, packages, bad, 3, vshares, key)
    assert exc.value.culprits == (2,)
