"""Share repair: a set of helpers rebuilds a lost participant's share without revealing it.

This is the enrollment-repairable threshold scheme of Laing and Stinson ("A
survey and refinement of repairable threshold schemes", 2017), in the shape of
frost-core's `repairable` module, plus public commitments so that a cheater is
identified rather than only detected. With helpers H (|H| >= t) repairing the
share of participant r, and lambda_i = L_{i,H}(r) the Lagrange coefficient of
helper i evaluated at r (so sum_i lambda_i s_i = f(r) = s_r):

All steps take the agreed `RepairRequest` (participant, helper set, t) and
the key's own public data (verification shares, group public key). The
threshold is never taken on trust from the request: every step derives t
from the key's public data (`vss.derive_threshold`) and refuses a request
whose t differs, before a helper sends anything. With a lower t the helpers'
Lagrange coefficients are wrong, every consistency check still passes, and
the receiver gets sigmas whose sum is a known linear combination of the
helpers' shares; two such repairs of a 3-of-5 key solve for two shares.

1. `repair_step1` (helper i): split lambda_i * s_i into |H| random additive
   pieces delta_{i->j}, one per helper j (its own included), and publish the
   commitments D_{i->j} = delta_{i->j} * B. Sent: one private `RepairDelta` to
   each helper; one public `RepairCommitments` (to go through the replicated
   log, so every party sees the same one).
2. `repair_step2` (helper j): check every received piece against its
   commitment and every commitment set against sum_j D_{i->j} = lambda_i * Y_i
   (Y_i the public verification share of i), then send the sum sigma_j of its
   pieces, privately, to r.
3. `repair_step3` (participant r): check sigma_j * B = sum_i D_{i->j}, sum the
   sigmas into s_r and check s_r * B against r's verification share.

Any failed check raises `InvalidShare` naming the helper at fault. No helper
learns s_r or lambda_i s_i of another helper: each sees only uniformly random
pieces (all but one of any helper's pieces are fresh randomness) and one
partial sum; the commitments are points, from which scalars are not
computable. r learns only its own share. Values are immutable `bytes` that
CPython cannot zeroize.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import group as g
from . import vss
from .errors import InvalidElement, InvalidParameters, InvalidScalar, InvalidShare
from .shamir import SecretShare, check_identifiers, lagrange_coefficient


@dataclass(frozen=True)
class RepairCommitments:
    """Public output of step 1: helper `helper`'s commitment to each of its pieces."""

    helper: int
    participant: int
    helpers: tuple[int, ...]
    commitments: Mapping[int, g.Element]


@dataclass(frozen=True, repr=False)
class RepairDelta:
    """Private piece delta_{sender->recipient} of step 1. Secret."""

    sender: int
    recipient: int
    participant: int
    value: g.Scalar

    def __repr__(self) -> str:
        return (
            f"RepairDelta(sender={self.sender}, recipient={self.recipient}, "
            f"participant={self.participant}, value=<redacted>)"
        )


@dataclass(frozen=True, repr=False)
class RepairSigma:
    """Private sum sigma_j of step 2, sent by helper `sender` to `participant`. Secret."""

    sender: int
    participant: int
    value: g.Scalar

    def __repr__(self) -> str:
        return (
            f"RepairSigma(sender={self.sender}, participant={self.participant}, value=<redacted>)"
        )


@dataclass(frozen=True)
class RepairRequest:
    """Who is repaired by whom, as agreed through the log; validated on construction.

    Every step takes the agreed request rather than reading the helper set out
    of a peer's package, so a helper cannot change the set for the others.
    """

    participant: int
    helpers: tuple[int, ...]
    min_participants: int

    def __post_init__(self) -> None:
        if not isinstance(self.helpers, tuple | list):
            raise InvalidParameters("helpers must be a sequence of identifiers")
        ids = tuple(sorted(check_identifiers(self.helpers)))
        check_identifiers([self.participant])
        if self.participant in ids:
            raise InvalidParameters("the participant being repaired cannot be a helper")
        t = self.min_participants
        if not isinstance(t, int) or isinstance(t, bool) or t < 2:
            raise InvalidParameters("threshold must be an int >= 2")
        if len(ids) < t:
            raise InvalidParameters(f"need at least {t} helpers, got {len(ids)}")
        object.__setattr__(self, "helpers", ids)


def check_request(
    request: RepairRequest,
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> None:
    """The request fits the key: same threshold as the key's public data, known members.

    InvalidParameters otherwise. Every step calls it first, so a request with a
    lower t (which would make the sigmas reveal helpers' shares) or for
    identifiers that hold no share of this key is refused before anything is sent.
    """
    if not isinstance(request, RepairRequest):
        raise InvalidParameters("expected a RepairRequest")
    t = vss.derive_threshold(verification_shares, group_public_key)
    if request.min_participants != t:
        raise InvalidParameters(
            f"repair request threshold {request.min_participants} differs from the key's "
            f"threshold {t} (derived from its verification shares)"
        )
    unknown = {request.participant, *request.helpers} - set(verification_shares)
    if unknown:
        raise InvalidParameters(f"no verification share for {sorted(unknown)}")


def repair_step1(
    share: SecretShare,
    request: RepairRequest,
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
    rng: g.RandomSource,
) -> tuple[RepairCommitments, dict[int, RepairDelta]]:
    """Helper step 1: pieces of lambda_i * s_i for every helper, and their commitments.

    Refuses (before dealing anything) a request that does not fit the key
    (`check_request`) and a share that is not this helper's current share.
    """
    check_request(request, verification_shares, group_public_key)
    ids, participant = request.helpers, request.participant
    if not isinstance(share, SecretShare) or share.identifier not in ids:
        raise InvalidParameters("this helper is not in the helper set")
    own = g.decode_scalar(share.value)
    mine = _verification_share(verification_shares, share.identifier)
    if not g.element_eq(g.base_mult(own), mine):
        raise InvalidParameters(
            f"share of helper {share.identifier} does not match its verification share "
            "(stale after a refresh?)"
        )
    lam = lagrange_coefficient(share.identifier, ids, at=participant)
    target = g.scalar_mul(lam, own)
    pieces: dict[int, g.Scalar] = {}
    remainder = target
    for j in ids[:-1]:
        piece = g.random_scalar(rng)
        pieces[j] = piece
        remainder = g.scalar_sub(remainder, piece)
    pieces[ids[-1]] = remainder
    deltas = {
        j: RepairDelta(share.identifier, j, participant, value) for j, value in pieces.items()
    }
    public = RepairCommitments(
        helper=share.identifier,
        participant=participant,
        helpers=ids,
        commitments={j: g.base_mult(value) for j, value in pieces.items()},
    )
    return public, deltas


def _verification_share(verification_shares: Mapping[int, g.Element], i: int) -> g.Element:
    if i not in verification_shares:
        raise InvalidParameters(f"missing verification share of participant {i}")
    return g.decode_element(verification_shares[i])


def check_commitments(
    request: RepairRequest,
    packages: Sequence[RepairCommitments],
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> dict[int, dict[int, g.Element]]:
    """Validate every helper's public step-1 package; InvalidShare naming all bad helpers.

    A package is good if it is for this repair (same participant and helper
    set), has one decodable commitment per helper, and its commitments sum to
    lambda_i * Y_i, i.e. the pieces really split lambda_i times i's share.
    Returns the decoded commitments: helper -> (recipient -> D_{helper->recipient}).
    """
    check_request(request, verification_shares, group_public_key)
    return _check_commitments(request, packages, verification_shares)


def _check_commitments(
    request: RepairRequest,
    packages: Sequence[RepairCommitments],
    verification_shares: Mapping[int, g.Element],
) -> dict[int, dict[int, g.Element]]:
    ids, participant = request.helpers, request.participant
    if isinstance(packages, bytes | bytearray | str) or not isinstance(packages, Sequence):
        raise InvalidParameters("packages must be a sequence")
    by_helper: dict[int, RepairCommitments] = {}
    for p in packages:
        if not isinstance(p, RepairCommitments) or p.helper not in ids:
            raise InvalidParameters("unexpected repair commitment package")
        if p.helper in by_helper:
            raise InvalidShare("duplicate commitment package", culprits=[p.helper])
        by_helper[p.helper] = p
    missing = set(ids) - set(by_helper)
    if missing:
        raise InvalidParameters(f"missing commitment packages from {sorted(missing)}")
    culprits = []
    decoded: dict[int, dict[int, g.Element]] = {}
    for i, p in by_helper.items():
        lam = lagrange_coefficient(i, ids, at=participant)
        expected = g.scalar_mult(lam, _verification_share(verification_shares, i))
        try:
            if p.participant != participant or tuple(p.helpers) != ids:
                raise InvalidParameters("package is for another repair")
            if not isinstance(p.commitments, Mapping) or set(p.commitments) != set(ids):
                raise InvalidParameters("package must commit to one piece per helper")
            points = {j: _decode_point(p.commitments[j]) for j in ids}
            total = g.IDENTITY
            for j in ids:
                total = g.element_add(total, points[j])
        except (InvalidParameters, InvalidElement, TypeError, KeyError):
            culprits.append(i)
            continue
        if not g.element_eq(total, expected):
            culprits.append(i)
            continue
        decoded[i] = points
    if culprits:
        raise InvalidShare("repair commitments do not match the helpers' shares", culprits)
    return decoded


def _decode_point(data: bytes) -> g.Element:
    """A commitment to a piece: a valid element, or the identity (a zero piece)."""
    if isinstance(data, bytes | bytearray) and bytes(data) == g.IDENTITY:
        return g.IDENTITY
    return g.decode_element(data)


def repair_step2(
    helper: int,
    request: RepairRequest,
    deltas: Sequence[RepairDelta],
    packages: Sequence[RepairCommitments],
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> RepairSigma:
    """Helper step 2: verify the pieces addressed to `helper` and sum them for the participant."""
    ids, participant = request.helpers, request.participant
    if helper not in ids:
        raise InvalidParameters(f"{helper} is not a helper of this repair")
    by_helper = check_commitments(request, packages, verification_shares, group_public_key)
    received: dict[int, RepairDelta] = {}
    for d in deltas:
        if not isinstance(d, RepairDelta) or d.sender not in ids:
            raise InvalidParameters("unexpected repair delta")
        if d.recipient != helper or d.participant != participant:
            raise InvalidShare("delta addressed to another repair", culprits=[d.sender])
        if d.sender in received:
            raise InvalidShare("duplicate delta", culprits=[d.sender])
        received[d.sender] = d
    missing = set(ids) - set(received)
    if missing:
        raise InvalidParameters(f"missing deltas from {sorted(missing)}")
    culprits = []
    sigma = g.ZERO
    for i in ids:
        try:
            value = g.decode_scalar(received[i].value)
        except InvalidScalar:
            culprits.append(i)
            continue
        if not g.element_eq(g.base_mult(value), by_helper[i][helper]):
            culprits.append(i)
            continue
        sigma = g.scalar_add(sigma, value)
    if culprits:
        raise InvalidShare("repair deltas do not match their commitments", culprits)
    return RepairSigma(helper, participant, sigma)


def repair_step3(
    request: RepairRequest,
    sigmas: Sequence[RepairSigma],
    packages: Sequence[RepairCommitments],
    verification_shares: Mapping[int, g.Element],
    group_public_key: g.Element,
) -> SecretShare:
    """Participant step 3: check each sigma, sum them, check the result against Y_participant."""
    ids, participant = request.helpers, request.participant
    by_helper = check_commitments(request, packages, verification_shares, group_public_key)
    received: dict[int, RepairSigma] = {}
    for s in sigmas:
        if not isinstance(s, RepairSigma) or s.sender not in ids:
            raise InvalidParameters("unexpected repair sigma")
        if s.participant != participant:
            raise InvalidShare("sigma addressed to another participant", culprits=[s.sender])
        if s.sender in received:
            raise InvalidShare("duplicate sigma", culprits=[s.sender])
        received[s.sender] = s
    missing = set(ids) - set(received)
    if missing:
        raise InvalidParameters(f"missing sigmas from {sorted(missing)}")
    culprits = []
    share = g.ZERO
    for j in ids:
        expected = g.IDENTITY
        for i in ids:
            expected = g.element_add(expected, by_helper[i][j])
        try:
            value = g.decode_scalar(received[j].value)
        except InvalidScalar:
            culprits.append(j)
            continue
        if not g.element_eq(g.base_mult(value), expected):
            culprits.append(j)
            continue
        share = g.scalar_add(share, value)
    if culprits:
        raise InvalidShare("repair sigmas do not match the helpers' commitments", culprits)
    repaired = SecretShare(participant, share)
    verify_repaired_share(repaired, _verification_share(verification_shares, participant))
    return repaired


def verify_repaired_share(share: SecretShare, verification_share: g.Element) -> None:
    """The final check: share * B must equal the participant's public verification share."""
    try:
        value = g.decode_scalar(share.value)
    except InvalidScalar as exc:
        raise InvalidShare("repaired share is not a scalar") from exc
    if not g.element_eq(g.base_mult(value), g.decode_element(verification_share)):
        raise InvalidShare(
            f"repaired share of participant {share.identifier} does not match its "
            "verification share"
        )
