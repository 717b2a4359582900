"""FROST(Ed25519, SHA-512) two-round threshold Schnorr signing, per RFC 9591.

Functions carry the RFC's names and argument order (RFC 9591 sections 4 and 5,
Appendix C for the trusted dealer). Identifiers are ints in [1, 255]; scalars
and elements are `bytes` in the RFC's encodings (section 6.1). Wherever the RFC
draws random bytes, the caller passes `rng` (a callable n -> bytes) or, to
replay a test vector, the random bytes themselves.

Every element or scalar that comes from another participant is decoded
strictly (RFC 9591 section 6.1 DeserializeElement / DeserializeScalar: canonical,
on the curve, in the prime-order subgroup, not the identity). Values a signer
produced itself are not re-checked, and the validation that libsodium's
variable-base multiplication already performs on its input point (canonical,
not small order, in the prime-order subgroup) is not repeated in Python.

Nonces are single use (RFC 9591 section 5.1, section 7.3): `SigningNonces`
refuses a second use with `NonceReuse` and zeroes its buffers after use.
Nonce randomness drawn from an `rng` is hedged (`shares.rng.hedged_random`:
a per-process value and a counter are mixed in), so a repeating RNG does not
repeat nonces; `nonce_generate` itself is the RFC's, byte for byte.
CPython cannot guarantee that no other copy of a secret survives in memory
(immutable `bytes` intermediates, the allocator), so zeroing is best effort.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from nacl import bindings as _sodium
from nacl.exceptions import BadSignatureError

from . import group as g
from . import shamir, vss
from .errors import (
    IncorrectCommitment,
    InvalidCommitment,
    InvalidElement,
    InvalidParameters,
    InvalidScalar,
    InvalidSignature,
    InvalidSignatureShare,
    NonceReuse,
    SharesError,
)
from .rng import hedged_random

#: RFC 9591 section 6.5: contextString of FROST(Ed25519, SHA-512).
CONTEXT_STRING = b"FROST-ED25519-SHA512-v1"
#: Domain of the hedge applied to nonce randomness drawn from an rng (not part of RFC 9591).
NONCE_HEDGE_DOMAIN = b"custody/shares/frost/nonce-hedge/v1"
#: Bound on the message length accepted for signing (release digests, payment
#: orders and audit checkpoints are far smaller).
MAX_MESSAGE_SIZE = 1 << 20
SIGNATURE_SIZE = 64

Identifier = int


class NonceCommitment(NamedTuple):
    """(hiding_nonce_commitment, binding_nonce_commitment): RFC 9591 section 5.1 `comm`."""

    hiding: g.Element
    binding: g.Element


class CommitmentEntry(NamedTuple):
    """One row of the RFC's commitment_list: (identifier, hiding, binding)."""

    identifier: Identifier
    hiding: g.Element
    binding: g.Element


def _zero(*buffers: bytearray) -> None:
    for buf in buffers:
        for k in range(len(buf)):
            buf[k] = 0


class SigningNonces:
    """A signer's (hiding_nonce, binding_nonce) pair: usable for exactly one `sign`.

    RFC 9591 section 5.1 requires nonces never be reused (reuse reveals the
    signing share). `take()` hands the scalars out once, then zeroes the
    buffers; a second `take()` raises NonceReuse. Prints as <redacted>.
    """

    __slots__ = ("_slot", "commitments")

    def __init__(self, hiding_nonce: g.Scalar, binding_nonce: g.Scalar) -> None:
        h = g.decode_scalar(hiding_nonce)
        b = g.decode_scalar(binding_nonce)
        if g.scalar_is_zero(h) or g.scalar_is_zero(b):
            raise InvalidScalar("nonces must be non-zero")
        # One-element list: list.pop() is a single atomic step under the GIL, so
        # two threads racing to use the same nonces cannot both get them.
        self._slot = [(bytearray(h), bytearray(b))]
        #: The public commitments to these nonces (RFC 9591 section 5.1 `comm`).
        self.commitments = NonceCommitment(g.base_mult(h), g.base_mult(b))

    @property
    def used(self) -> bool:
        return not self._slot

    def take(self) -> tuple[g.Scalar, g.Scalar]:
        """Return (hiding_nonce, binding_nonce) once; zero the stored copies."""
        try:
            hiding, binding = self._slot.pop()
        except IndexError:
            raise NonceReuse("these signing nonces were already used") from None
        out = (bytes(hiding), bytes(binding))
        _zero(hiding, binding)
        return out

    def zeroize(self) -> None:
        """Discard the nonces without using them (e.g. the signing round was abandoned)."""
        while self._slot:
            try:
                _zero(*self._slot.pop())
            except IndexError:  # another thread took them meanwhile
                return

    def __repr__(self) -> str:
        return f"SigningNonces(<redacted>, used={self.used})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("SigningNonces must not be pickled or copied")


# ---------------------------------------------------------------------------
# Ciphersuite hash functions (RFC 9591 section 6.5)
# ---------------------------------------------------------------------------


def _sha512(*parts: bytes) -> bytes:
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.digest()


def H1(m: bytes) -> g.Scalar:
    """Binding factor hash: SHA-512(contextString || "rho" || m) mod L."""
    return g.scalar_reduce(_sha512(CONTEXT_STRING, b"rho", m))


def H2(m: bytes) -> g.Scalar:
    """Challenge hash: SHA-512(m) mod L, without context, for RFC 8032 compatibility."""
    return g.scalar_reduce(_sha512(m))


def H3(m: bytes) -> g.Scalar:
    """Nonce hash: SHA-512(contextString || "nonce" || m) mod L."""
    return g.scalar_reduce(_sha512(CONTEXT_STRING, b"nonce", m))


def H4(m: bytes) -> bytes:
    """Message hash: SHA-512(contextString || "msg" || m)."""
    return _sha512(CONTEXT_STRING, b"msg", m)


def H5(m: bytes) -> bytes:
    """Commitment-list hash: SHA-512(contextString || "com" || m)."""
    return _sha512(CONTEXT_STRING, b"com", m)


# ---------------------------------------------------------------------------
# Input validation helpers
# ---------------------------------------------------------------------------


def _identifier_scalar(identifier: Identifier) -> bytes:
    return identifier.to_bytes(g.SCALAR_SIZE, "little")


def _check_message(msg: bytes) -> bytes:
    if not isinstance(msg, bytes | bytearray):
        raise InvalidParameters("message must be bytes")
    if len(msg) > MAX_MESSAGE_SIZE:
        raise InvalidParameters(f"message longer than {MAX_MESSAGE_SIZE} bytes")
    return bytes(msg)


def _check_group_public_key(group_public_key: bytes) -> g.Element:
    return g.decode_element(group_public_key)


def _commitment_list_shape(commitment_list: Sequence[Sequence[object]]) -> list[CommitmentEntry]:
    """Check the list's shape: 2..255 rows of (int, 32 bytes, 32 bytes), ids ascending.

    Element validity is checked separately (and only once per element).
    """
    if not isinstance(commitment_list, Sequence) or isinstance(
        commitment_list, bytes | bytearray | str
    ):
        raise InvalidParameters("commitment_list must be a sequence of entries")
    if not 2 <= len(commitment_list) <= shamir.MAX_PARTICIPANTS:
        raise InvalidParameters("commitment_list must have between 2 and 255 entries")
    for row in commitment_list:
        if not isinstance(row, tuple | list) or len(row) != 3:
            raise InvalidParameters("commitment_list entries are (identifier, hiding, binding)")
    ids = shamir.check_identifiers(row[0] for row in commitment_list)
    if list(ids) != sorted(ids):
        raise InvalidParameters("commitment_list must be sorted by identifier (RFC 9591 5.2)")
    out: list[CommitmentEntry] = []
    for ident, hiding, binding in commitment_list:
        for elem in (hiding, binding):
            if not isinstance(elem, bytes | bytearray) or len(elem) != g.ELEMENT_SIZE:
                raise InvalidCommitment("commitment must be 32 bytes", culprits=[ident])
        out.append(CommitmentEntry(ident, bytes(hiding), bytes(binding)))
    return out


def _decode_commitment(entry: CommitmentEntry, elem: bytes) -> g.Element:
    try:
        return g.decode_element(elem)
    except InvalidElement as exc:
        raise InvalidCommitment(
            f"invalid nonce commitment: {exc}", culprits=[entry.identifier]
        ) from exc


# ---------------------------------------------------------------------------
# Helper functions (RFC 9591 section 4)
# ---------------------------------------------------------------------------


def nonce_generate(
    secret: g.Scalar,
    *,
    rng: g.RandomSource | None = None,
    random_bytes: bytes | None = None,
) -> g.Scalar:
    """RFC 9591 section 4.1: H3(random_bytes(32) || SerializeScalar(secret)).

    Pass `random_bytes` to replay a vector: exactly the RFC. With `rng`, the 32
    random bytes are hedged before they enter H3 (`hedged_random`: the RNG's
    output mixed with a per-process value and a counter), because the RFC's
    hedge (the secret) is the same for every signing by this participant: if
    the RNG repeats (a restored VM snapshot, a cloned process, a broken
    source), two signings would get the same nonces and reveal the share.
    """
    secret_enc = g.decode_scalar(secret)
    if random_bytes is None:
        if rng is None:
            raise InvalidParameters("nonce_generate needs rng or random_bytes")
        random_bytes = hedged_random(rng, 32, NONCE_HEDGE_DOMAIN)
    if not isinstance(random_bytes, bytes | bytearray) or len(random_bytes) != 32:
        raise InvalidParameters("nonce randomness must be 32 bytes")
    return H3(bytes(random_bytes) + secret_enc)


def derive_interpolating_value(L: Sequence[Identifier], x_i: Identifier) -> g.Scalar:
    """RFC 9591 section 4.2: Lagrange coefficient of x_i over the participant list L at 0."""
    return shamir.lagrange_coefficient(x_i, L, at=0)


def encode_group_commitment_list(commitment_list: Sequence[Sequence[object]]) -> bytes:
    """RFC 9591 section 4.3: concatenated (identifier, hiding, binding) encodings."""
    entries = _commitment_list_shape(commitment_list)
    return _encode_entries(entries)


def _encode_entries(entries: Sequence[CommitmentEntry]) -> bytes:
    return b"".join(_identifier_scalar(e.identifier) + e.hiding + e.binding for e in entries)


def participants_from_commitment_list(
    commitment_list: Sequence[Sequence[object]],
) -> list[Identifier]:
    """RFC 9591 section 4.3: the identifiers in the commitment list, in order."""
    return [e.identifier for e in _commitment_list_shape(commitment_list)]


def binding_factor_for_participant(
    binding_factor_list: Sequence[tuple[Identifier, g.Scalar]], identifier: Identifier
) -> g.Scalar:
    """RFC 9591 section 4.3: the binding factor of `identifier`; InvalidParameters if absent."""
    for i, factor in binding_factor_list:
        if i == identifier:
            return factor
    raise InvalidParameters(f"no binding factor for participant {identifier}")


def _binding_factor_prefix(
    group_public_key: g.Element, entries: Sequence[CommitmentEntry], msg: bytes
) -> bytes:
    return group_public_key + H4(msg) + H5(_encode_entries(entries))


def compute_binding_factor_inputs(
    group_public_key: g.Element, commitment_list: Sequence[Sequence[object]], msg: bytes
) -> list[tuple[Identifier, bytes]]:
    """The rho_input of each participant (RFC 9591 section 4.4), for test vectors."""
    entries = _commitment_list_shape(commitment_list)
    prefix = _binding_factor_prefix(
        _check_group_public_key(group_public_key), entries, _check_message(msg)
    )
    return [(e.identifier, prefix + _identifier_scalar(e.identifier)) for e in entries]


def _binding_factors(
    group_public_key: g.Element, entries: Sequence[CommitmentEntry], msg: bytes
) -> list[tuple[Identifier, g.Scalar]]:
    prefix = _binding_factor_prefix(group_public_key, entries, msg)
    return [(e.identifier, H1(prefix + _identifier_scalar(e.identifier))) for e in entries]


def compute_binding_factors(
    group_public_key: g.Element, commitment_list: Sequence[Sequence[object]], msg: bytes
) -> list[tuple[Identifier, g.Scalar]]:
    """RFC 9591 section 4.4: rho_i = H1(PK || H4(msg) || H5(commitments) || i)."""
    entries = _commitment_list_shape(commitment_list)
    return _binding_factors(_check_group_public_key(group_public_key), entries, _check_message(msg))


def _mult_commitment(entry: CommitmentEntry, factor: g.Scalar) -> g.Element:
    """factor * binding commitment, letting libsodium do DeserializeElement's checks.

    libsodium's variable-base multiplication rejects non-canonical, small-order
    and non-prime-order points itself; the identity is rejected here. A bad
    point is reported as the committing participant's fault.
    """
    try:
        if entry.binding == g.IDENTITY:
            raise InvalidElement("the identity is not a valid commitment")
        if g.scalar_is_zero(factor):  # probability 2^-252
            g.decode_element(entry.binding)
            return g.IDENTITY
        return g.scalar_mult(factor, entry.binding)
    except InvalidElement as exc:
        raise InvalidCommitment(
            f"invalid binding nonce commitment: {exc}", culprits=[entry.identifier]
        ) from exc


def _group_commitment(
    entries: Sequence[CommitmentEntry],
    binding_factor_list: Sequence[tuple[Identifier, g.Scalar]],
    own: tuple[Identifier, g.Scalar, g.Scalar] | None = None,
) -> g.Element:
    """Sum of D_j + rho_j * E_j. `own` = (identifier, d, e) lets a signer compute its
    own term as (d + rho * e) * B, one base multiplication instead of a variable one;
    its own commitments were produced by itself and need no validation."""
    terms: list[g.Element] = []
    culprits: list[Identifier] = []
    for entry in entries:
        factor = binding_factor_for_participant(binding_factor_list, entry.identifier)
        if own is not None and entry.identifier == own[0]:
            terms.append(g.base_mult(g.scalar_add(own[1], g.scalar_mul(own[2], factor))))
            continue
        try:
            _decode_commitment(entry, entry.hiding)
            terms.append(entry.hiding)
            terms.append(_mult_commitment(entry, factor))
        except InvalidCommitment:
            culprits.append(entry.identifier)
    if culprits:
        raise InvalidCommitment("invalid nonce commitments", culprits=culprits)
    acc = terms[0]
    for t in terms[1:]:
        acc = g.element_add(acc, t)
    if g.is_identity(acc):
        # RFC 9591 section 6.5: SerializeElement fails on the identity.
        raise SharesError("group commitment is the identity; abort this signing session")
    return acc


def compute_group_commitment(
    commitment_list: Sequence[Sequence[object]],
    binding_factor_list: Sequence[tuple[Identifier, g.Scalar]],
) -> g.Element:
    """RFC 9591 section 4.5: R = sum_j (D_j + rho_j * E_j)."""
    entries = _commitment_list_shape(commitment_list)
    if not isinstance(binding_factor_list, Sequence) or not all(
        isinstance(row, tuple | list) and len(row) == 2 for row in binding_factor_list
    ):
        raise InvalidParameters("binding_factor_list rows are (identifier, binding_factor)")
    factors = [(i, g.decode_scalar(rho)) for i, rho in binding_factor_list]
    return _group_commitment(entries, factors)


def compute_challenge(
    group_commitment: g.Element, group_public_key: g.Element, msg: bytes
) -> g.Scalar:
    """RFC 9591 section 4.6: c = H2(R || PK || msg), the RFC 8032 challenge."""
    for elem in (group_commitment, group_public_key):
        if not isinstance(elem, bytes | bytearray) or len(elem) != g.ELEMENT_SIZE:
            raise InvalidElement(f"elements must be {g.ELEMENT_SIZE} bytes")
    return H2(bytes(group_commitment) + bytes(group_public_key) + _check_message(msg))


# ---------------------------------------------------------------------------
# Round one (RFC 9591 section 5.1)
# ---------------------------------------------------------------------------


def commit(
    sk_i: g.Scalar,
    *,
    rng: g.RandomSource | None = None,
    hiding_randomness: bytes | None = None,
    binding_randomness: bytes | None = None,
) -> tuple[SigningNonces, NonceCommitment]:
    """RFC 9591 section 5.1: fresh nonces (kept, single use) and their commitments (sent)."""
    hiding_nonce = nonce_generate(sk_i, rng=rng, random_bytes=hiding_randomness)
    binding_nonce = nonce_generate(sk_i, rng=rng, random_bytes=binding_randomness)
    nonces = SigningNonces(hiding_nonce, binding_nonce)
    return nonces, nonces.commitments


# ---------------------------------------------------------------------------
# Round two (RFC 9591 section 5.2)
# ---------------------------------------------------------------------------


def sign(
    identifier: Identifier,
    sk_i: g.Scalar,
    group_public_key: g.Element,
    nonce_i: SigningNonces,
    msg: bytes,
    commitment_list: Sequence[Sequence[object]],
    *,
    min_participants: int | None = None,
) -> g.Scalar:
    """RFC 9591 section 5.2: this participant's signature share z_i.

    Checks, before consuming the nonces, that the participant's own commitment
    is in the list unaltered (IncorrectCommitment otherwise) and, if
    `min_participants` is given, that enough participants take part. Every
    other participant's commitments are fully validated; a bad one raises
    InvalidCommitment naming its sender. The nonces are consumed as soon as the
    list's shape and this signer's own commitment check out, so an attempt that
    fails later never leaves them usable.
    """
    if not isinstance(nonce_i, SigningNonces):
        raise InvalidParameters("nonce_i must be SigningNonces from commit()")
    if nonce_i.used:
        raise NonceReuse("these signing nonces were already used")
    shamir.check_identifiers([identifier])
    secret = g.decode_scalar(sk_i)
    pk = _check_group_public_key(group_public_key)
    message = _check_message(msg)
    entries = _commitment_list_shape(commitment_list)
    participant_list = [e.identifier for e in entries]
    if min_participants is not None and len(entries) < min_participants:
        raise InvalidParameters(f"{len(entries)} signers, but the key needs {min_participants}")
    own = next((e for e in entries if e.identifier == identifier), None)
    if own is None or not (
        g.element_eq(own.hiding, nonce_i.commitments.hiding)
        and g.element_eq(own.binding, nonce_i.commitments.binding)
    ):
        raise IncorrectCommitment(f"commitment of participant {identifier} missing or altered")

    binding_factor_list = _binding_factors(pk, entries, message)
    binding_factor = binding_factor_for_participant(binding_factor_list, identifier)
    hiding_nonce, binding_nonce = nonce_i.take()
    group_commitment = _group_commitment(
        entries, binding_factor_list, own=(identifier, hiding_nonce, binding_nonce)
    )
    lambda_i = derive_interpolating_value(participant_list, identifier)
    challenge = H2(group_commitment + pk + message)
    return g.scalar_add(
        g.scalar_add(hiding_nonce, g.scalar_mul(binding_nonce, binding_factor)),
        g.scalar_mul(g.scalar_mul(lambda_i, secret), challenge),
    )


# ---------------------------------------------------------------------------
# Aggregation and share verification (RFC 9591 sections 5.3 and 5.4)
# ---------------------------------------------------------------------------


def verify_signature(msg: bytes, signature: bytes, group_public_key: g.Element) -> None:
    """Plain RFC 8032 Ed25519 verification (libsodium); raises InvalidSignature."""
    message = _check_message(msg)
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        raise InvalidSignature("signature must be 64 bytes")
    pk = _check_group_public_key(group_public_key)
    try:
        _sodium.crypto_sign_open(bytes(signature) + message, pk)
    except BadSignatureError as exc:
        raise InvalidSignature("signature does not verify") from exc


def aggregate(
    commitment_list: Sequence[Sequence[object]],
    msg: bytes,
    group_public_key: g.Element,
    sig_shares: Sequence[g.Scalar],
    *,
    verifying_shares: Mapping[Identifier, g.Element] | None = None,
) -> bytes:
    """RFC 9591 section 5.3: the Ed25519 signature (R || z) from all signature shares.

    `sig_shares` follows the order of `commitment_list`. As the RFC advises, the
    result is verified before it is returned; if it does not verify and
    `verifying_shares` (PK_i by identifier) are given, every share is checked
    (section 5.4) and InvalidSignatureShare names all bad signers; otherwise
    InvalidSignature is raised.
    """
    entries = _commitment_list_shape(commitment_list)
    pk = _check_group_public_key(group_public_key)
    message = _check_message(msg)
    if (
        not isinstance(sig_shares, Sequence)
        or isinstance(sig_shares, bytes | bytearray | str)
        or len(sig_shares) != len(entries)
    ):
        raise InvalidParameters("need exactly one signature share per commitment_list entry")
    if verifying_shares is not None and not isinstance(verifying_shares, Mapping):
        raise InvalidParameters("verifying_shares must map identifiers to elements")
    z = g.ZERO
    bad_encoding: list[Identifier] = []
    decoded: list[g.Scalar] = []  # immutable bytes: bytes-like input works on every path
    for entry, share in zip(entries, sig_shares, strict=True):
        try:
            decoded.append(g.decode_scalar(share))
            z = g.scalar_add(z, decoded[-1])
        except InvalidScalar:
            bad_encoding.append(entry.identifier)
    if bad_encoding:
        raise InvalidSignatureShare("malformed signature share", culprits=bad_encoding)
    binding_factor_list = _binding_factors(pk, entries, message)
    group_commitment = _group_commitment(entries, binding_factor_list)
    signature = group_commitment + z
    try:
        verify_signature(message, signature, pk)
    except InvalidSignature:
        if verifying_shares is None:
            raise
        culprits = _find_bad_shares(
            entries,
            message,
            pk,
            decoded,
            verifying_shares,
            binding_factor_list,
            group_commitment,
        )
        if culprits:
            raise InvalidSignatureShare("signature shares do not verify", culprits) from None
        raise
    return signature


def _find_bad_shares(
    entries: Sequence[CommitmentEntry],
    message: bytes,
    pk: g.Element,
    sig_shares: Sequence[g.Scalar],
    verifying_shares: Mapping[Identifier, g.Element],
    binding_factor_list: Sequence[tuple[Identifier, g.Scalar]],
    group_commitment: g.Element,
) -> list[Identifier]:
    participant_list = [e.identifier for e in entries]
    challenge = H2(group_commitment + pk + message)
    culprits = []
    for entry, share in zip(entries, sig_shares, strict=True):
        pk_i = verifying_shares.get(entry.identifier)
        if pk_i is None:
            raise InvalidParameters(f"no verifying share for participant {entry.identifier}")
        if not _share_is_valid(
            entry, g.decode_element(pk_i), share, participant_list, binding_factor_list, challenge
        ):
            culprits.append(entry.identifier)
    return culprits


def _share_is_valid(
    entry: CommitmentEntry,
    pk_i: g.Element,
    sig_share: g.Scalar,
    participant_list: Sequence[Identifier],
    binding_factor_list: Sequence[tuple[Identifier, g.Scalar]],
    challenge: g.Scalar,
) -> bool:
    """z_i * B == D_i + rho_i * E_i + (c * lambda_i) * PK_i (RFC 9591 section 5.4)."""
    factor = binding_factor_for_participant(binding_factor_list, entry.identifier)
    comm_share = g.element_add(entry.hiding, _mult_commitment(entry, factor))
    lambda_i = derive_interpolating_value(participant_list, entry.identifier)
    r = g.element_add(comm_share, g.scalar_mult(g.scalar_mul(challenge, lambda_i), pk_i))
    return g.element_eq(g.base_mult(sig_share), r)


def verify_signature_share(
    identifier: Identifier,
    PK_i: g.Element,
    comm_i: Sequence[g.Element],
    sig_share_i: g.Scalar,
    commitment_list: Sequence[Sequence[object]],
    group_public_key: g.Element,
    msg: bytes,
) -> None:
    """RFC 9591 section 5.4: check one signature share; InvalidSignatureShare names the signer.

    Returns nothing on success (the RFC returns True), following the
    verify-or-raise convention. A malformed share is also the signer's fault.
    """
    entries = _commitment_list_shape(commitment_list)
    pk = _check_group_public_key(group_public_key)
    message = _check_message(msg)
    try:
        pk_i = g.decode_element(PK_i)
        share = g.decode_scalar(sig_share_i)
    except (InvalidElement, InvalidScalar) as exc:
        raise InvalidSignatureShare(f"malformed input: {exc}", culprits=[identifier]) from exc
    entry = next((e for e in entries if e.identifier == identifier), None)
    if entry is None:
        raise InvalidParameters(f"participant {identifier} is not in commitment_list")
    if (
        not isinstance(comm_i, tuple | list)
        or len(comm_i) != 2
        or (entry.hiding, entry.binding) != (comm_i[0], comm_i[1])
    ):
        raise InvalidParameters("comm_i does not match the commitment_list entry")
    binding_factor_list = _binding_factors(pk, entries, message)
    group_commitment = _group_commitment(entries, binding_factor_list)
    challenge = H2(group_commitment + pk + message)
    if not _share_is_valid(
        entry, pk_i, share, [e.identifier for e in entries], binding_factor_list, challenge
    ):
        raise InvalidSignatureShare("signature share does not verify", culprits=[identifier])


# ---------------------------------------------------------------------------
# Trusted dealer key generation (RFC 9591 Appendix C) — tests and bootstrap only;
# production keys come from shares.dkg.
# ---------------------------------------------------------------------------


def secret_share_shard(
    s: g.Scalar, coefficients: Sequence[g.Scalar], MAX_PARTICIPANTS: int
) -> list[tuple[Identifier, g.Scalar]]:
    """RFC 9591 Appendix C.1: shares (i, f(i)) for i = 1..MAX_PARTICIPANTS, f(0) = s."""
    if not 1 <= MAX_PARTICIPANTS <= shamir.MAX_PARTICIPANTS:
        raise InvalidParameters("MAX_PARTICIPANTS out of range")
    poly = [g.decode_scalar(s), *(g.decode_scalar(c) for c in coefficients)]
    return [(i, shamir.evaluate_polynomial(i, poly)) for i in range(1, MAX_PARTICIPANTS + 1)]


def trusted_dealer_keygen(
    secret_key: g.Scalar,
    MAX_PARTICIPANTS: int,
    MIN_PARTICIPANTS: int,
    *,
    rng: g.RandomSource | None = None,
    coefficients: Sequence[g.Scalar] | None = None,
) -> tuple[list[tuple[Identifier, g.Scalar]], g.Element, list[g.Element]]:
    """RFC 9591 Appendix C: (participant_private_keys, group_public_key, vss_commitment).

    The RFC draws the MIN_PARTICIPANTS - 1 polynomial coefficients at random;
    pass `rng` for that, or `coefficients` to replay a test vector.
    """
    shamir.check_threshold(MIN_PARTICIPANTS, MAX_PARTICIPANTS)
    s = g.decode_scalar(secret_key)
    if g.scalar_is_zero(s):
        raise InvalidScalar("secret key must be non-zero")
    if coefficients is None:
        if rng is None:
            raise InvalidParameters("trusted_dealer_keygen needs rng or coefficients")
        coefficients = [g.random_scalar(rng) for _ in range(MIN_PARTICIPANTS - 1)]
    elif isinstance(coefficients, bytes | bytearray | str) or len(coefficients) != (
        MIN_PARTICIPANTS - 1
    ):
        raise InvalidParameters("need MIN_PARTICIPANTS - 1 coefficients")
    coefficients = [g.decode_scalar(c) for c in coefficients]
    participant_private_keys = secret_share_shard(s, coefficients, MAX_PARTICIPANTS)
    vss_commitment = vss.commit([s, *coefficients])
    return participant_private_keys, vss_commitment[0], vss_commitment


def vss_verify(share_i: tuple[Identifier, g.Scalar], vss_commitment: Sequence[g.Element]) -> bool:
    """RFC 9591 Appendix C.2: does share_i match the dealer's commitment?"""
    i, sk_i = share_i
    try:
        vss.verify_share(i, sk_i, vss_commitment, dealer=i)
    except SharesError:
        return False
    return True


def derive_group_info(
    MAX_PARTICIPANTS: int,
    MIN_PARTICIPANTS: int,
    vss_commitment: Sequence[g.Element],
) -> tuple[g.Element, list[g.Element]]:
    """RFC 9591 Appendix C.2: (group public key, [PK_1, ..., PK_MAX_PARTICIPANTS])."""
    shamir.check_threshold(MIN_PARTICIPANTS, MAX_PARTICIPANTS)
    commitments = vss.decode_commitments(vss_commitment)
    if len(commitments) != MIN_PARTICIPANTS:
        raise InvalidParameters("vss_commitment must have MIN_PARTICIPANTS elements")
    pk = g.decode_element(commitments[0])
    return pk, [vss.evaluate_commitment(i, commitments) for i in range(1, MAX_PARTICIPANTS + 1)]
