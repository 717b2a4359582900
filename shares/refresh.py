"""Proactive share refresh: re-randomise every share, keep the group key.

Each participant d in the refreshing set P deals a random polynomial z_d of
degree t-1 with z_d(0) = 0 and publishes its Feldman commitments (whose
constant term must therefore be the identity); participant j adds
sum_d z_d(j) to its share. The shared secret is unchanged (every z_d vanishes
at 0), so is the group public key, while the new shares lie on a fresh
polynomial: shares from before the refresh do not combine with shares from
after it, and an attacker must steal t shares within one refresh period
(Herzberg, Jarecki, Krawczyk, Yung, "Proactive secret sharing", 1995).

Round 1 (`refresh_round1`): sent is one public `RefreshPackage` (through the
replicated log, so everybody sees the same commitments) and a private
`RefreshSubShare` for each member of P (its own included).
Round 2 (`refresh_round2`): verify every sub-share against its dealer's
commitments, insist on C_0 = identity, and derive the new share and the new
verification shares. Every participant and every observer derives the same
verification shares from the public packages alone (`refreshed_verification_shares`).

A participant outside P keeps only its stale share, which no longer combines:
it must be repaired (`shares.repair`) afterwards.

The threshold never changes in a refresh: both rounds take the key's own
public data (verification shares, group public key), derive t from it
(`vss.derive_threshold`) and refuse any other t. Otherwise a 2-of-3 key
refreshed with t = 3 would pass every check and come out 3-of-3, a key that
one lost node destroys. Changing the threshold is a re-key (a new version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from . import group as g
from . import vss
from .errors import InvalidElement, InvalidParameters, InvalidScalar, InvalidShare
from .shamir import (
    SecretShare,
    check_identifiers,
    check_threshold,
    evaluate_polynomial,
    random_polynomial,
)


@dataclass(frozen=True)
class RefreshPackage:
    """Public round-1 output: dealer's Feldman commitments to a sharing of zero."""

    dealer: int
    commitments: tuple[g.Element, ...]


@dataclass(frozen=True, repr=False)
class RefreshSubShare:
    """Private round-1 output z_dealer(recipient). Secret."""

    dealer: int
    recipient: int
    value: g.Scalar

    def __repr__(self) -> str:
        return (
            f"RefreshSubShare(dealer={self.dealer}, recipient={self.recipient}, value=<redacted>)"
        )


@dataclass(frozen=True, repr=False)
class RefreshResult:
    """Round-2 output: the new share (secret) and everybody's new verification share."""

    share: SecretShare
    verification_shares: dict[int, g.Element]
    group_public_key: g.Element

    def __repr__(self) -> str:
        return (
            f"RefreshResult(share={self.share!r}, participants="
            f"{sorted(self.verification_shares)})"
        )


def _check_set(participants: Iterable[int], min_participants: int) -> tuple[int, ...]:
    """The refreshing set: distinct identifiers, at least t of them (2 <= t <= |P|)."""
    ids = tuple(sorted(check_identifiers(participants)))
    check_threshold(min_participants, len(ids))
    return ids


def check_threshold_unchanged(
    min_participants: int,
    participants: Iterable[int],
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> tuple[int, ...]:
    """The refresh keeps the key's threshold and refreshes members of the key only.

    `min_participants` must equal the threshold derived from the key's current
    verification shares; InvalidParameters otherwise. Returns the sorted set.
    """
    ids = _check_set(participants, min_participants)
    t = vss.derive_threshold(verification_shares, group_public_key)
    if min_participants != t:
        raise InvalidParameters(
            f"refresh threshold {min_participants} differs from the key's threshold {t}: "
            "a refresh never changes the threshold (re-key instead)"
        )
    unknown = set(ids) - set(verification_shares)
    if unknown:
        raise InvalidParameters(f"no verification share for {sorted(unknown)}")
    return ids


def refresh_round1(
    identifier: int,
    participants: Iterable[int],
    min_participants: int,
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
    rng: g.RandomSource,
) -> tuple[RefreshPackage, dict[int, RefreshSubShare]]:
    """Deal a fresh sharing of zero to every participant of the refresh.

    Refuses, before dealing, a threshold other than the key's own.
    """
    ids = check_threshold_unchanged(
        min_participants, participants, verification_shares, group_public_key
    )
    if identifier not in ids:
        raise InvalidParameters(f"{identifier} is not a participant of this refresh")
    coefficients = random_polynomial(g.ZERO, min_participants - 1, rng)
    package = RefreshPackage(identifier, tuple(vss.commit(coefficients)))
    sub_shares = {
        j: RefreshSubShare(identifier, j, evaluate_polynomial(j, coefficients)) for j in ids
    }
    coefficients.clear()
    return package, sub_shares


def check_packages(
    packages: Sequence[RefreshPackage], participants: Iterable[int], min_participants: int
) -> dict[int, tuple[g.Element, ...]]:
    """Every participant dealt exactly one well-formed zero-sharing of degree t-1.

    Raises InvalidShare naming every dealer whose commitments are malformed,
    of the wrong length, or do not commit to zero in the constant term.
    """
    ids = _check_set(participants, min_participants)
    by_dealer: dict[int, tuple[g.Element, ...]] = {}
    culprits: list[int] = []
    for p in packages:
        if not isinstance(p, RefreshPackage) or p.dealer not in ids:
            raise InvalidParameters("unexpected refresh package")
        if p.dealer in by_dealer:
            raise InvalidShare("duplicate refresh package", culprits=[p.dealer])
        try:
            decoded = tuple(vss.decode_commitments(p.commitments))
        except (InvalidParameters, InvalidElement):
            culprits.append(p.dealer)
            by_dealer[p.dealer] = ()
            continue
        if len(decoded) != min_participants or not g.element_eq(decoded[0], g.IDENTITY):
            culprits.append(p.dealer)
        by_dealer[p.dealer] = decoded
    missing = set(ids) - set(by_dealer)
    if missing:
        raise InvalidParameters(f"missing refresh packages from {sorted(missing)}")
    if culprits:
        raise InvalidShare(
            "refresh commitments are malformed or do not share zero", culprits=culprits
        )
    return by_dealer


def refreshed_verification_shares(
    packages: Sequence[RefreshPackage],
    participants: Iterable[int],
    min_participants: int,
    verification_shares: Mapping[int, g.Element],
) -> dict[int, g.Element]:
    """New verification shares Y_j + sum_d z_d(j) * B, from public data only."""
    by_dealer = check_packages(packages, participants, min_participants)
    delta = vss.sum_commitments(list(by_dealer.values()))
    out = {}
    for j in sorted(by_dealer):
        if j not in verification_shares:
            raise InvalidParameters(f"missing verification share of participant {j}")
        old = g.decode_element(verification_shares[j])
        out[j] = g.element_add(old, vss.evaluate_commitment(j, delta))
    return out


def refreshed_group_commitment(
    group_commitment: Sequence[g.Element],
    packages: Sequence[RefreshPackage],
    participants: Iterable[int],
    min_participants: int,
) -> list[g.Element]:
    """The group's Feldman commitment after the refresh; C_0 (the public key) is unchanged."""
    by_dealer = check_packages(packages, participants, min_participants)
    return vss.sum_commitments([group_commitment, *by_dealer.values()])


def refresh_round2(
    share: SecretShare,
    participants: Iterable[int],
    packages: Sequence[RefreshPackage],
    sub_shares: Sequence[RefreshSubShare],
    min_participants: int,
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> RefreshResult:
    """Verify the sub-shares received by `share.identifier` and derive the refreshed state.

    `participants` is the refreshing set as agreed through the log, not read
    from the packages, so a missing or extra package cannot silently change it.
    `min_participants` must be the key's threshold (derived from
    `verification_shares`), and the refreshed verification shares must have
    that same threshold: a refresh that would change it is refused.
    """
    check_threshold_unchanged(min_participants, participants, verification_shares, group_public_key)
    by_dealer = check_packages(packages, participants, min_participants)
    me = share.identifier
    if me not in by_dealer:
        raise InvalidParameters(f"{me} is not a participant of this refresh")
    received: dict[int, RefreshSubShare] = {}
    for s in sub_shares:
        if not isinstance(s, RefreshSubShare) or s.dealer not in by_dealer:
            raise InvalidParameters("unexpected refresh sub-share")
        if s.recipient != me:
            raise InvalidShare("sub-share addressed to another participant", culprits=[s.dealer])
        if s.dealer in received:
            raise InvalidShare("duplicate sub-share", culprits=[s.dealer])
        received[s.dealer] = s
    missing = set(by_dealer) - set(received)
    if missing:
        raise InvalidParameters(f"missing sub-shares from {sorted(missing)}")
    culprits = []
    new_value = g.decode_scalar(share.value)
    for dealer in sorted(by_dealer):
        try:
            value = g.decode_scalar(received[dealer].value)  # bytes, whatever came in
            vss.verify_share(me, value, by_dealer[dealer], dealer)
        except (InvalidShare, InvalidScalar):
            culprits.append(dealer)
            continue
        new_value = g.scalar_add(new_value, value)
    if culprits:
        raise InvalidShare("refresh sub-shares do not match their commitments", culprits)
    new_shares = refreshed_verification_shares(
        packages, by_dealer, min_participants, verification_shares
    )
    group_key = g.decode_element(group_public_key)
    if vss.derive_threshold(new_shares, group_key) != min_participants:
        raise InvalidParameters("refreshed verification shares have another threshold")
    new_share = SecretShare(me, new_value)
    if not g.element_eq(g.base_mult(new_value), new_shares[me]):
        raise InvalidShare("refreshed share does not match the refreshed verification share")
    return RefreshResult(new_share, new_shares, group_key)

