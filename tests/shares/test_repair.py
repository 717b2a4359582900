"""Share repair: round trips over random (t, n) and helper sets; every detection path."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import repair, shamir, vss
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


def step1_all(shares, request, rng, vshares, key):
    packages, deltas = [], []
    for i in request.helpers:
        public, sent = repair.repair_step1(shares[i], request, vshares, key, rng)
        packages.append(public)
        deltas.extend(sent.values())
    return packages, deltas


def step2_all(request, deltas, packages, vshares, key):
    return [
        repair.repair_step2(j, request, _to(deltas, j), packages, vshares, key)
        for j in request.helpers
    ]


def _to(deltas, j):
    return [d for d in deltas if d.recipient == j]


REQUEST = repair.RepairRequest(2, (1, 3, 4), 3)


@st.composite
def repair_case(draw: st.DrawFn):
    n = draw(st.integers(3, 7))
    t = draw(st.integers(2, n - 1))
    participant = draw(st.integers(1, n))
    others = [i for i in range(1, n + 1) if i != participant]
    helpers = draw(st.lists(st.sampled_from(others), min_size=t, max_size=n - 1, unique=True))
    return t, n, participant, sorted(helpers), draw(st.integers(0, 2**32))


@settings(max_examples=80)
@given(case=repair_case())
def test_repair_round_trip(case) -> None:
    t, n, participant, helpers, seed = case
    secret, shares, commitment, vshares = deal(t, n, seed)
    key = commitment[0]
    request = repair.RepairRequest(participant, tuple(helpers), t)
    packages, deltas = step1_all(shares, request, SeededRNG(seed + 1), vshares, key)
    sigmas = step2_all(request, deltas, packages, vshares, key)
    repaired = repair.repair_step3(request, sigmas, packages, vshares, key)
    assert repaired == shares[participant]
    # The repaired share works with the others: any t including it reconstruct the key.
    others = [shares[i] for i in range(1, n + 1) if i != participant][: t - 1]
    assert shamir.reconstruct_secret([repaired, *others], t) == secret


def test_no_single_helper_message_contains_the_share() -> None:
    _, shares, commitment, vshares = deal(3, 5, 11)
    key = commitment[0]
    request = repair.RepairRequest(5, (1, 2, 3), 3)
    packages, deltas = step1_all(shares, request, SeededRNG(12), vshares, key)
    sigmas = step2_all(request, deltas, packages, vshares, key)
    lost = shares[5].value
    assert all(d.value != lost for d in deltas)
    assert all(s.value != lost for s in sigmas)
    assert "redacted" in repr(deltas[0]) and deltas[0].value.hex() not in repr(deltas[0])
    assert "redacted" in repr(sigmas[0]) and sigmas[0].value.hex() not in repr(sigmas[0])


@pytest.fixture
def setup():
    _, shares, commitment, vshares = deal(3, 5, 21)
    key = commitment[0]
    packages, deltas = step1_all(shares, REQUEST, SeededRNG(22), vshares, key)
    return shares, vshares, packages, deltas, key


def _bump(value: bytes) -> bytes:
    return g.scalar_add(value, g.ONE)


def test_tampered_delta_names_its_sender(setup) -> None:
    _, vshares, packages, deltas, key = setup
    bad = [
        dataclasses.replace(d, value=_bump(d.value)) if (d.sender, d.recipient) == (3, 4) else d
        for d in deltas
    ]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step2(4, REQUEST, _to(bad, 4), packages, vshares, key)
    assert exc.value.culprits == (3,)


def test_consistent_lie_caught_by_commitment_sum(setup) -> None:
    # Helper 3 shifts a piece *and* its commitment: pieces no longer sum to lambda_3 * s_3.
    _, vshares, packages, deltas, key = setup
    bad_packages = []
    for p in packages:
        if p.helper == 3:
            old = next(d for d in deltas if (d.sender, d.recipient) == (3, 1))
            moved = dict(p.commitments)
            moved[1] = g.base_mult(_bump(old.value))
            p = dataclasses.replace(p, commitments=moved)
        bad_packages.append(p)
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step2(1, REQUEST, _to(deltas, 1), bad_packages, vshares, key)
    assert exc.value.culprits == (3,)


def test_tampered_sigma_names_its_helper(setup) -> None:
    _, vshares, packages, deltas, key = setup
    sigmas = step2_all(REQUEST, deltas, packages, vshares, key)
    bad = [dataclasses.replace(s, value=_bump(s.value)) if s.sender == 4 else s for s in sigmas]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step3(REQUEST, bad, packages, vshares, key)
    assert exc.value.culprits == (4,)


def test_bad_delta_detected_by_verification_share_check(setup) -> None:
    # Without the per-piece commitments, a wrong piece still yields a share that
    # fails the final check against the participant's verification share.
    _, vshares, packages, deltas, key = setup
    sigmas = step2_all(REQUEST, deltas, packages, vshares, key)
    total = g.ZERO
    for s in sigmas:
        total = g.scalar_add(total, s.value)
    repair.verify_repaired_share(shamir.SecretShare(2, total), vshares[2])
    wrong = shamir.SecretShare(2, _bump(total))
    with pytest.raises(InvalidShare):
        repair.verify_repaired_share(wrong, vshares[2])


def test_wrong_verification_share_is_refused(setup) -> None:
    _, vshares, packages, deltas, key = setup
    sigmas = step2_all(REQUEST, deltas, packages, vshares, key)
    lying = dict(vshares)
    lying[2] = g.base_mult(g.scalar_from_int(12345))
    # Public data inconsistent with the key: refused as bad parameters, nobody's share.
    with pytest.raises(InvalidParameters):
        repair.repair_step3(REQUEST, sigmas, packages, lying, key)


def test_packages_for_another_repair_are_refused(setup) -> None:
    _, vshares, packages, deltas, key = setup
    moved = [dataclasses.replace(p, participant=5) if p.helper == 1 else p for p in packages]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step2(3, REQUEST, _to(deltas, 3), moved, vshares, key)
    assert exc.value.culprits == (1,)
    # A helper cannot change the helper set for the others either.
    regrouped = [dataclasses.replace(p, helpers=(1, 3, 5)) if p.helper == 4 else p
                 for p in packages]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step2(3, REQUEST, _to(deltas, 3), regrouped, vshares, key)
    assert exc.value.culprits == (4,)


def test_non_canonical_piece_is_attributed(setup) -> None:
    _, vshares, packages, deltas, key = setup
    bad = [
        dataclasses.replace(d, value=b"\xff" * 32) if (d.sender, d.recipient) == (4, 1) else d
        for d in deltas
    ]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step2(1, REQUEST, _to(bad, 1), packages, vshares, key)
    assert exc.value.culprits == (4,)


def test_missing_messages_and_bad_roles(setup) -> None:
    shares, vshares, packages, deltas, key = setup
    with pytest.raises(InvalidParameters):
        repair.repair_step2(1, REQUEST, _to(deltas, 1)[:-1], packages, vshares, key)
    with pytest.raises(InvalidParameters):
        repair.repair_step2(1, REQUEST, _to(deltas, 1), packages[:-1], vshares, key)
    with pytest.raises(InvalidParameters):  # not a helper
        repair.repair_step2(5, REQUEST, _to(deltas, 1), packages, vshares, key)
    with pytest.raises(InvalidParameters):  # too few helpers for t
        repair.RepairRequest(2, (1, 3), 3)
    with pytest.raises(InvalidParameters):  # participant among helpers
        repair.RepairRequest(2, (1, 2, 3), 3)
    with pytest.raises(InvalidParameters):  # threshold out of range
        repair.RepairRequest(2, (1, 3), 1)
    with pytest.raises(InvalidParameters):  # helper not in the set
        repair.repair_step1(shares[5], REQUEST, vshares, key, SeededRNG(1))
    sigmas = step2_all(REQUEST, deltas, packages, vshares, key)
    with pytest.raises(InvalidParameters):
        repair.repair_step3(REQUEST, sigmas[:-1], packages, vshares, key)
    with pytest.raises(InvalidParameters):  # verification share of the participant missing
        repair.repair_step3(
            REQUEST, sigmas, packages, {k: v for k, v in vshares.items() if k != 2}, key
        )


def test_malformed_packages_are_attributed(setup) -> None:
    _, vshares, packages, _, key = setup
    odd = [
        dataclasses.replace(packages[0], helpers=None),
        dataclasses.replace(packages[1], commitments=[1, 2]),
        dataclasses.replace(packages[2], commitments={1: b"\x00" * 32, 3: g.IDENTITY,
                                                      4: g.IDENTITY}),
    ]
    with pytest.raises(InvalidShare) as exc:
        repair.check_commitments(REQUEST, odd, vshares, key)
    assert exc.value.culprits == (1, 3, 4)


# --- issue 9, section 6, item 2: the threshold comes from the key, not the request ------


def test_lower_threshold_request_is_refused_before_any_helper_sends() -> None:
    """A 3-of-5 key repaired with t = 2: every helper refuses before dealing a piece.

    Before the fix every check passed: helpers 1 and 3 interpolated with their
    degree-1 Lagrange coefficients, the commitments matched lambda_i * Y_i, and
    the receiver got sigmas summing to L_1(x) s_1 + L_3(x) s_3. Two such repairs
    (x = 2 and x = 4) are two independent equations: they give s_1 and s_3, and
    a receiver that is itself a member (s_2) then holds t = 3 shares.
    """
    secret, shares, commitment, vshares = deal(3, 5, 41)
    key = commitment[0]
    for participant in (2, 4):
        request = repair.RepairRequest(participant, (1, 3), 2)
        for helper in request.helpers:
            with pytest.raises(InvalidParameters, match="threshold 2 differs from the key's"):
                repair.repair_step1(shares[helper], request, vshares, key, SeededRNG(42))
        with pytest.raises(InvalidParameters, match="threshold"):
            repair.check_commitments(request, [], vshares, key)
        with pytest.raises(InvalidParameters, match="threshold"):
            repair.repair_step2(1, request, [], [], vshares, key)
        with pytest.raises(InvalidParameters, match="threshold"):
            repair.repair_step3(request, [], [], vshares, key)
    # What those sigmas would have summed to, and why that is fatal (the attack's algebra).
    def sigma_sum(x: int) -> bytes:
        total = g.ZERO
        for i in (1, 3):
            lam = shamir.lagrange_coefficient(i, (1, 3), at=x)
            total = g.scalar_add(total, g.scalar_mul(lam, shares[i].value))
        return total

    a, b = sigma_sum(2), sigma_sum(4)  # (s1 + s3) / 2 and (3 s3 - s1) / 2
    s3 = g.scalar_mul(g.scalar_add(a, b), g.scalar_inv(g.scalar_from_int(2)))
    s1 = g.scalar_sub(g.scalar_add(a, a), s3)
    stolen = [shamir.SecretShare(1, s1), shares[2], shamir.SecretShare(3, s3)]
    assert shamir.reconstruct_secret(stolen, 3) == secret


def test_higher_threshold_and_foreign_members_are_refused() -> None:
    _, shares, commitment, vshares = deal(3, 5, 43)
    key = commitment[0]
    with pytest.raises(InvalidParameters, match="threshold 4 differs"):
        repair.repair_step1(shares[1], repair.RepairRequest(2, (1, 3, 4, 5), 4), vshares, key,
                            SeededRNG(44))
    with pytest.raises(InvalidParameters, match="no verification share"):
        repair.repair_step1(shares[1], repair.RepairRequest(9, (1, 3, 4), 3), vshares, key,
                            SeededRNG(44))
    # The key's public data must determine t: a subset smaller than t determines nothing.
    few = {i: vshares[i] for i in (1, 3)}
    with pytest.raises(InvalidParameters):
        repair.repair_step1(shares[1], repair.RepairRequest(2, (1, 3), 2), few, key, SeededRNG(44))


def test_stale_helper_share_is_refused_before_dealing() -> None:
    _, shares, commitment, vshares = deal(3, 5, 45)
    stale = shamir.SecretShare(1, g.scalar_add(shares[1].value, g.ONE))
    with pytest.raises(InvalidParameters, match="does not match its verification share"):
        repair.repair_step1(stale, REQUEST, vshares, commitment[0], SeededRNG(46))


# --- item 6: bytes-like input takes the same paths as bytes --------------------------


def test_bytearray_messages_are_checked_and_attributed(setup) -> None:
    _, vshares, packages, deltas, key = setup
    as_bytearray = [
        dataclasses.replace(p, commitments={j: bytearray(c) for j, c in p.commitments.items()})
        for p in packages
    ]
    sigmas = step2_all(REQUEST, [dataclasses.replace(d, value=bytearray(d.value))
                                 for d in deltas], as_bytearray, vshares, key)
    sigmas = [dataclasses.replace(s, value=bytearray(s.value)) for s in sigmas]
    repaired = repair.repair_step3(REQUEST, sigmas, as_bytearray, vshares, key)
    assert isinstance(repaired.value, bytes)
    bad = [dataclasses.replace(s, value=bytearray(_bump(bytes(s.value)))) if s.sender == 3 else s
           for s in sigmas]
    with pytest.raises(InvalidShare) as exc:
        repair.repair_step3(REQUEST, bad, as_bytearray, vshares, key)
    assert exc.value.culprits == (3,)
