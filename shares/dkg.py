"""Distributed key generation: Pedersen DKG with Schnorr proofs of knowledge.

This is the KeyGen of the FROST paper (Komlo and Goldberg, 2020, Figure 1) in
the shape of frost-core's `keys::dkg`: three local steps per participant, each
splitting what is *sent* from what is *kept*.

- `part1`: pick a random polynomial f_i of degree t-1; send `Round1Package`
  (Feldman commitments C_i = [a_ik * B] and a Schnorr proof of knowledge of
  a_i0); keep `Round1Secret` (the coefficients).
- `part2`: check every other participant's proof (rogue-key defence); send each
  participant l its share f_i(l) in a `Round2Package` (point to point,
  encrypted to the recipient by the caller); keep `Round2Secret`.
- `part3`: check every received share against its dealer's commitments
  (Feldman VSS); the signing share is sum_l f_l(i), the group public key is
  sum_l C_l0, and every participant's verification share is the public image
  of the summed commitment polynomial. Returns `KeyPackage` (kept) and
  `PublicKeyPackage` (identical at every participant; the caller compares them).

The proof of knowledge is domain-separated (`POK_CONTEXT`) and binds the
prover's identifier, (t, n), its whole commitment and a caller-supplied
`context` (cluster id, key id, version), so a proof cannot be replayed by
another participant or into another DKG run.

Secrets are held in `bytearray`s and zeroed once used; CPython may still hold
copies (immutable `bytes` intermediates), so zeroization is best effort.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import group as g
from . import shamir, vss
from .errors import (
    EncodingError,
    InvalidCommitment,
    InvalidElement,
    InvalidParameters,
    InvalidProofOfKnowledge,
    InvalidScalar,
    InvalidShare,
    SharesError,
)

#: Domain separator of the DKG proof-of-knowledge challenge (distinct from
#: every FROST hash, which start with "FROST-ED25519-SHA512-v1").
POK_CONTEXT = b"custody/shares/dkg/pok/v1"
#: Ciphersuite tag carried by serialized packages.
SUITE = "FROST-ED25519-SHA512-v1"
#: Schema version of serialized packages.
VERSION = 1
#: Bound on the caller's context string.
MAX_CONTEXT_SIZE = 1024


def _zero(buf: bytearray) -> None:
    for k in range(len(buf)):
        buf[k] = 0


def _check_context(context: bytes) -> bytes:
    if not isinstance(context, bytes | bytearray) or not 1 <= len(context) <= MAX_CONTEXT_SIZE:
        raise InvalidParameters(f"context must be 1..{MAX_CONTEXT_SIZE} bytes")
    return bytes(context)


def _check_element_shape(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != g.ELEMENT_SIZE:
        raise InvalidElement(f"{what} must be {g.ELEMENT_SIZE} bytes")
    return value if type(value) is g.CheckedElement else bytes(value)


def _check_scalar_shape(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != g.SCALAR_SIZE:
        raise InvalidScalar(f"{what} must be {g.SCALAR_SIZE} bytes")
    return bytes(value)


def _check_fields(data: Mapping[str, Any], kind: str, fields: set[str]) -> None:
    """Serialized packages: exact field set, known version and suite."""
    if not isinstance(data, Mapping):
        raise EncodingError(f"{kind} must be a map")
    keys = set(data)
    if keys != fields | {"v", "suite", "kind"}:
        raise EncodingError(f"{kind} fields must be exactly {sorted(fields)} plus v/suite/kind")
    if data["v"] != VERSION or data["suite"] != SUITE or data["kind"] != kind:
        raise EncodingError(f"unsupported {kind} version, suite or kind")


def _identifier(value: object) -> int:
    return shamir.check_identifiers([value])[0]  # type: ignore[list-item]


# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Round1Package:
    """Broadcast in round 1: Feldman commitment and Schnorr proof (R, mu) of a_0."""

    identifier: int
    commitment: tuple[g.Element, ...]
    proof_of_knowledge: tuple[g.Element, g.Scalar]

    def __post_init__(self) -> None:
        _identifier(self.identifier)
        if not isinstance(self.commitment, tuple | list) or not (
            1 <= len(self.commitment) <= shamir.MAX_PARTICIPANTS
        ):
            raise InvalidParameters("commitment must be a sequence of 1..255 elements")
        culprit = [self.identifier]
        try:
            commitment = tuple(_check_element_shape(c, "commitment") for c in self.commitment)
        except InvalidElement as exc:
            raise InvalidCommitment(str(exc), culprits=culprit) from exc
        object.__setattr__(self, "commitment", commitment)
        pok = self.proof_of_knowledge
        try:
            if not isinstance(pok, tuple | list) or len(pok) != 2:
                raise InvalidParameters("proof_of_knowledge is (R, mu)")
            pok = (_check_element_shape(pok[0], "proof R"), _check_scalar_shape(pok[1], "proof mu"))
        except SharesError as exc:
            raise InvalidProofOfKnowledge(f"malformed proof: {exc}", culprits=culprit) from exc
        object.__setattr__(self, "proof_of_knowledge", pok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "suite": SUITE,
            "kind": "dkg-round1",
            "identifier": self.identifier,
            "commitment": [bytes(c) for c in self.commitment],
            "pok_r": bytes(self.proof_of_knowledge[0]),
            "pok_mu": bytes(self.proof_of_knowledge[1]),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Round1Package:
        _check_fields(data, "dkg-round1", {"identifier", "commitment", "pok_r", "pok_mu"})
        try:
            return cls(
                data["identifier"], tuple(data["commitment"]), (data["pok_r"], data["pok_mu"])
            )
        except (TypeError, SharesError) as exc:
            raise EncodingError(f"malformed dkg-round1 package: {exc}") from exc


@dataclass(frozen=True, repr=False)
class Round2Package:
    """Sent point to point in round 2: f_sender(recipient). Secret: encrypt it in transit."""

    sender: int
    recipient: int
    signing_share: g.Scalar

    def __post_init__(self) -> None:
        _identifier(self.sender)
        _identifier(self.recipient)
        if self.sender == self.recipient:
            raise InvalidParameters("a round-2 package goes to another participant")
        object.__setattr__(
            self, "signing_share", _check_scalar_shape(self.signing_share, "signing share")
        )

    def __repr__(self) -> str:
        return f"Round2Package(sender={self.sender}, recipient={self.recipient}, <redacted>)"

    def to_dict(self) -> dict[str, Any]:
        """Serialize (contains a secret share: encrypt it to the recipient)."""
        return {
            "v": VERSION,
            "suite": SUITE,
            "kind": "dkg-round2",
            "sender": self.sender,
            "recipient": self.recipient,
            "signing_share": self.signing_share,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Round2Package:
        _check_fields(data, "dkg-round2", {"sender", "recipient", "signing_share"})
        try:
            return cls(data["sender"], data["recipient"], data["signing_share"])
        except (TypeError, SharesError) as exc:
            raise EncodingError(f"malformed dkg-round2 package: {exc}") from exc


class Round1Secret:
    """Kept after round 1: the polynomial coefficients. Prints as <redacted>; used once."""

    __slots__ = (
        "_coefficients",
        "commitment",
        "context",
        "identifier",
        "max_participants",
        "min_participants",
    )

    def __init__(
        self,
        identifier: int,
        min_participants: int,
        max_participants: int,
        context: bytes,
        coefficients: Sequence[g.Scalar],
        commitment: Sequence[g.Element],
    ) -> None:
        self.identifier = identifier
        self.min_participants = min_participants
        self.max_participants = max_participants
        self.context = context
        self._coefficients = [bytearray(c) for c in coefficients]
        self.commitment = tuple(commitment)

    @property
    def used(self) -> bool:
        return not self._coefficients

    def zeroize(self) -> None:
        for c in self._coefficients:
            _zero(c)
        self._coefficients = []

    def __repr__(self) -> str:
        return f"Round1Secret(identifier={self.identifier}, <redacted>)"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("DKG secrets must not be pickled")


class Round2Secret:
    """Kept after round 2: own share f_i(i) and everyone's round-1 commitments."""

    __slots__ = (
        "_own_share",
        "commitments",
        "context",
        "identifier",
        "max_participants",
        "min_participants",
    )

    def __init__(
        self,
        identifier: int,
        min_participants: int,
        max_participants: int,
        context: bytes,
        own_share: g.Scalar,
        commitments: Mapping[int, tuple[g.Element, ...]],
    ) -> None:
        self.identifier = identifier
        self.min_participants = min_participants
        self.max_participants = max_participants
        self.context = context
        self._own_share = bytearray(own_share)
        self.commitments = dict(commitments)

    @property
    def used(self) -> bool:
        return not self._own_share

    def zeroize(self) -> None:
        _zero(self._own_share)
        self._own_share = bytearray()

    def __repr__(self) -> str:
        return f"Round2Secret(identifier={self.identifier}, <redacted>)"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("DKG secrets must not be pickled")


@dataclass(frozen=True, repr=False)
class KeyPackage:
    """A participant's long-lived key material. `signing_share` prints as <redacted>."""

    identifier: int
    signing_share: g.Scalar
    verifying_share: g.Element
    group_public_key: g.Element
    min_participants: int

    def __post_init__(self) -> None:
        _identifier(self.identifier)
        share = g.decode_scalar(self.signing_share)
        if g.scalar_is_zero(share):
            raise InvalidScalar("signing share must be non-zero")
        object.__setattr__(self, "signing_share", share)
        object.__setattr__(self, "verifying_share", g.decode_element(self.verifying_share))
        object.__setattr__(self, "group_public_key", g.decode_element(self.group_public_key))
        if not isinstance(self.min_participants, int) or not (
            2 <= self.min_participants <= shamir.MAX_PARTICIPANTS
        ):
            raise InvalidParameters("min_participants out of range")
        if not g.element_eq(g.base_mult(share), self.verifying_share):
            raise InvalidShare("signing share does not match the verifying share")

    def __repr__(self) -> str:
        return (
            f"KeyPackage(identifier={self.identifier}, signing_share=<redacted>, "
            f"verifying_share={self.verifying_share.hex()}, "
            f"group_public_key={self.group_public_key.hex()}, "
            f"min_participants={self.min_participants})"
        )

    def public_view(self) -> tuple[int, g.Element]:
        return self.identifier, self.verifying_share


@dataclass(frozen=True)
class PublicKeyPackage:
    """Public outcome of a DKG: verification share by identifier and the group public key."""

    verifying_shares: Mapping[int, g.Element]
    group_public_key: g.Element

    def __post_init__(self) -> None:
        if not isinstance(self.verifying_shares, Mapping) or not (
            2 <= len(self.verifying_shares) <= shamir.MAX_PARTICIPANTS
        ):
            raise InvalidParameters("verifying_shares must map 2..255 identifiers")
        ids = sorted(shamir.check_identifiers(list(self.verifying_shares)))
        shares = {i: g.decode_element(self.verifying_shares[i]) for i in ids}
        object.__setattr__(self, "verifying_shares", shares)
        object.__setattr__(self, "group_public_key", g.decode_element(self.group_public_key))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKeyPackage):
            return NotImplemented
        return (
            dict(self.verifying_shares) == dict(other.verifying_shares)
            and self.group_public_key == other.group_public_key
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "suite": SUITE,
            "kind": "public-key-package",
            # A list of [identifier, element] pairs: msgpack maps want string keys.
            "verifying_shares": [[i, bytes(v)] for i, v in self.verifying_shares.items()],
            "group_public_key": bytes(self.group_public_key),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublicKeyPackage:
        _check_fields(data, "public-key-package", {"verifying_shares", "group_public_key"})
        pairs = data["verifying_shares"]
        if not isinstance(pairs, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 for p in pairs
        ):
            raise EncodingError("verifying_shares must be a list of [identifier, element]")
        if len({p[0] for p in pairs if isinstance(p[0], int)}) != len(pairs):
            raise EncodingError("verifying_shares has duplicate or non-integer identifiers")
        try:
            return cls(dict(pairs), data["group_public_key"])
        except (TypeError, ValueError, SharesError) as exc:
            raise EncodingError(f"malformed public key package: {exc}") from exc


# ---------------------------------------------------------------------------
# Proof of knowledge
# ---------------------------------------------------------------------------


def pok_challenge(
    identifier: int,
    min_participants: int,
    max_participants: int,
    context: bytes,
    commitment: Sequence[g.Element],
    big_r: g.Element,
) -> g.Scalar:
    """c = H(POK_CONTEXT, context, i, t, n, C_i, R) mod L, every field length-framed."""
    h = hashlib.sha512()
    h.update(len(POK_CONTEXT).to_bytes(2, "big") + POK_CONTEXT)
    h.update(len(context).to_bytes(2, "big") + context)
    h.update(identifier.to_bytes(2, "big"))
    h.update(min_participants.to_bytes(2, "big") + max_participants.to_bytes(2, "big"))
    h.update(len(commitment).to_bytes(2, "big"))
    for c in commitment:
        h.update(c)
    h.update(big_r)
    return g.scalar_reduce(h.digest())


def _prove(
    identifier: int,
    min_participants: int,
    max_participants: int,
    context: bytes,
    a0: g.Scalar,
    commitment: Sequence[g.Element],
    rng: g.RandomSource,
) -> tuple[g.Element, g.Scalar]:
    k = g.random_scalar(rng)
    big_r = g.base_mult(k)
    c = pok_challenge(identifier, min_participants, max_participants, context, commitment, big_r)
    return big_r, g.scalar_add(k, g.scalar_mul(a0, c))


def verify_proof_of_knowledge(
    package: Round1Package, min_participants: int, max_participants: int, context: bytes
) -> None:
    """Check a round-1 package: t commitments, all valid elements, and mu*B == R + c*C_0.

    Raises InvalidProofOfKnowledge (a malformed commitment raises InvalidCommitment);
    either names the package's sender as culprit.
    """
    if not isinstance(package, Round1Package):
        raise InvalidParameters("expected a Round1Package")
    culprit = [package.identifier]
    if len(package.commitment) != min_participants:
        raise InvalidProofOfKnowledge(
            f"commitment has {len(package.commitment)} elements, expected {min_participants}",
            culprits=culprit,
        )
    try:
        commitment = [g.decode_element(c) for c in package.commitment]
    except InvalidElement as exc:
        raise InvalidCommitment(f"invalid commitment: {exc}", culprits=culprit) from exc
    big_r, mu = package.proof_of_knowledge
    try:
        big_r = g.decode_element(big_r)
        mu = g.decode_scalar(mu)
    except (InvalidElement, InvalidScalar) as exc:
        raise InvalidProofOfKnowledge(f"malformed proof: {exc}", culprits=culprit) from exc
    c = pok_challenge(
        package.identifier, min_participants, max_participants, context, commitment, big_r
    )
    expected = g.element_add(big_r, g.scalar_mult(c, commitment[0]))
    if not g.element_eq(g.base_mult(mu), expected):
        raise InvalidProofOfKnowledge("proof of knowledge does not verify", culprits=culprit)


# ---------------------------------------------------------------------------
# The three steps
# ---------------------------------------------------------------------------


def part1(
    identifier: int,
    max_participants: int,
    min_participants: int,
    context: bytes,
    *,
    rng: g.RandomSource,
) -> tuple[Round1Secret, Round1Package]:
    """Round 1: random polynomial, its Feldman commitment and a proof of knowledge of a_0."""
    shamir.check_threshold(min_participants, max_participants)
    _identifier(identifier)
    ctx = _check_context(context)
    coefficients = [g.random_scalar(rng) for _ in range(min_participants)]
    commitment = vss.commit(coefficients)
    pok = _prove(
        identifier, min_participants, max_participants, ctx, coefficients[0], commitment, rng
    )
    secret = Round1Secret(
        identifier, min_participants, max_participants, ctx, coefficients, commitment
    )
    return secret, Round1Package(identifier, tuple(commitment), pok)


def _check_peer_map(
    packages: Mapping[int, Any], own: int, max_participants: int, what: str
) -> list[int]:
    if not isinstance(packages, Mapping):
        raise InvalidParameters(f"{what} must be a mapping from identifier to package")
    if len(packages) != max_participants - 1:
        raise InvalidParameters(
            f"need {what} from the other {max_participants - 1} participants, got {len(packages)}"
        )
    ids = sorted(shamir.check_identifiers(list(packages)))
    if own in ids:
        raise InvalidParameters(f"{what} must not include this participant's own")
    return ids


def part2(
    secret: Round1Secret, round1_packages: Mapping[int, Round1Package]
) -> tuple[Round2Secret, dict[int, Round2Package]]:
    """Round 2: verify every peer's proof of knowledge, then deal each peer its share.

    All packages are checked before anything is dealt; every sender whose
    package fails (bad point, wrong commitment length or bad proof) is named in
    one InvalidProofOfKnowledge. On success the round-1 secret is zeroed.
    """
    if not isinstance(secret, Round1Secret) or secret.used:
        raise InvalidParameters("part2 needs an unused Round1Secret")
    ids = _check_peer_map(round1_packages, secret.identifier, secret.max_participants, "round1")
    culprits: list[int] = []
    reasons: list[str] = []
    for i in ids:
        package = round1_packages[i]
        if not isinstance(package, Round1Package) or package.identifier != i:
            raise InvalidParameters(f"round1 package under key {i} is not from {i}")
        try:
            verify_proof_of_knowledge(
                package, secret.min_participants, secret.max_participants, secret.context
            )
        except (InvalidCommitment, InvalidProofOfKnowledge) as exc:
            culprits.append(i)
            reasons.append(f"{i}: {exc}")
    if culprits:
        # A package with a malformed commitment proves nothing either: one verdict
        # naming every bad sender, whatever was wrong with its package.
        raise InvalidProofOfKnowledge(
            "round-1 packages do not verify [" + "; ".join(reasons) + "]", culprits
        )

    coefficients = [bytes(c) for c in secret._coefficients]
    packages = {
        i: Round2Package(secret.identifier, i, shamir.evaluate_polynomial(i, coefficients))
        for i in ids
    }
    own_share = shamir.evaluate_polynomial(secret.identifier, coefficients)
    commitments = {
        i: tuple(g.decode_element(c) for c in round1_packages[i].commitment) for i in ids
    }
    commitments[secret.identifier] = secret.commitment
    round2 = Round2Secret(
        secret.identifier,
        secret.min_participants,
        secret.max_participants,
        secret.context,
        own_share,
        commitments,
    )
    secret.zeroize()
    return round2, packages


def part3(
    secret: Round2Secret,
    round1_packages: Mapping[int, Round1Package],
    round2_packages: Mapping[int, Round2Package],
) -> tuple[KeyPackage, PublicKeyPackage]:
    """Finalize: verify every received share (Feldman), sum them, derive the public keys.

    Every dealer whose share fails is named in one InvalidShare. The round-1
    packages must be the ones seen in part2. The round-2 secret is zeroed.
    """
    if not isinstance(secret, Round2Secret) or secret.used:
        raise InvalidParameters("part3 needs an unused Round2Secret")
    me = secret.identifier
    ids1 = _check_peer_map(round1_packages, me, secret.max_participants, "round1")
    ids2 = _check_peer_map(round2_packages, me, secret.max_participants, "round2")
    if ids1 != ids2 or set(ids1) | {me} != set(secret.commitments):
        raise InvalidParameters("round-1 and round-2 packages come from different participants")
    for i in ids1:
        if tuple(round1_packages[i].commitment) != secret.commitments[i]:
            raise InvalidParameters(f"round-1 package of {i} differs from the one seen in part2")

    culprits: list[int] = []
    total = bytearray(secret._own_share)
    for i in ids2:
        package = round2_packages[i]
        if not isinstance(package, Round2Package) or package.sender != i:
            raise InvalidParameters(f"round2 package under key {i} is not from {i}")
        if package.recipient != me:
            culprits.append(i)
            continue
        try:
            vss.verify_share(me, package.signing_share, secret.commitments[i], dealer=i)
        except InvalidShare:
            culprits.append(i)
            continue
        total[:] = g.scalar_add(bytes(total), package.signing_share)
    if culprits:
        _zero(total)
        raise InvalidShare("round-2 shares do not match their dealers' commitments", culprits)

    group_commitment = vss.sum_commitments(
        [secret.commitments[i] for i in sorted(secret.commitments)]
    )
    group_public_key = g.decode_element(group_commitment[0])
    verifying_shares = {
        i: g.decode_element(vss.evaluate_commitment(i, group_commitment))
        for i in sorted(secret.commitments)
    }
    signing_share = bytes(total)
    _zero(total)
    key_package = KeyPackage(
        me, signing_share, verifying_shares[me], group_public_key, secret.min_participants
    )
    secret.zeroize()
    return key_package, PublicKeyPackage(verifying_shares, group_public_key)


__all__ = [
    "MAX_CONTEXT_SIZE",
    "POK_CONTEXT",
    "KeyPackage",
    "PublicKeyPackage",
    "Round1Package",
    "Round1Secret",
    "Round2Package",
    "Round2Secret",
    "part1",
    "part2",
    "part3",
    "pok_challenge",
    "verify_proof_of_knowledge",
]
