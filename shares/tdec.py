"""Threshold decryption of envelope-wrapped data keys (threshold ECIES on Ed25519).

Wrap (anyone, with the group public key Y = s * B): pick r, send R = r * B and
encrypt the data key under a key derived from the shared point r * Y. Unwrap
(t custody nodes, none of which ever holds s): node i returns the partial
decryption D_i = s_i * R with a Chaum-Pedersen proof that log_B(Y_i) =
log_R(D_i); the combiner checks every proof, interpolates s * R = sum
lambda_i D_i in the exponent (= r * Y) and opens the envelope.

- Key derivation: HKDF-SHA-256, ikm = the shared point, info = a context
  string naming this scheme || len-prefixed caller context || R || Y. A key
  wrapped under one context never opens under another.
- AEAD: AES-256-GCM; associated data = envelope header (version, R, nonce) ||
  len-prefixed caller AAD (the node binds key id, version and context there).
- Proofs: Fiat-Shamir with SHA-512 over a domain-separated transcript binding
  the identifier, Y_i, R, D_i, both commitments, a digest of the exact envelope
  bytes and an optional request binding (e.g. the approved request digest). A
  node's proof nonce is hedged: derived from its share, fresh RNG output and the
  transcript, so a weak RNG alone does not leak the share.
- A bad partial raises `InvalidProof` naming every bad author; fewer than t
  good partials is `InvalidParameters`; anything wrong with the ciphertext,
  AAD, context or key is `DecryptionError` (indistinguishable on purpose).

Envelope format v1 (all lengths fixed or implied; parsing is strict):
``0x01 || R (32) || nonce (12) || AES-GCM ciphertext || tag (16)``, where the
data key is 16..64 bytes, so an envelope is 77..125 bytes.
Partial decryption format v1: ``0x01 || identifier (1) || D (32) || c (32) || z (32)``.

Derived keys and data keys are immutable `bytes` that CPython cannot zeroize.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import group as g
from .errors import (
    DecryptionError,
    EncodingError,
    InvalidElement,
    InvalidParameters,
    InvalidProof,
    InvalidScalar,
)
from .shamir import MAX_PARTICIPANTS, SecretShare, check_identifiers, lagrange_coefficient

ENVELOPE_VERSION = 1
PARTIAL_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
MIN_DATA_KEY = 16
MAX_DATA_KEY = 64
MAX_AAD = 4096
MAX_CONTEXT = 255
MAX_REQUEST = 1024
_HEADER_SIZE = 1 + g.ELEMENT_SIZE + NONCE_SIZE
MIN_ENVELOPE = _HEADER_SIZE + MIN_DATA_KEY + TAG_SIZE
MAX_ENVELOPE = _HEADER_SIZE + MAX_DATA_KEY + TAG_SIZE
PARTIAL_SIZE = 2 + g.ELEMENT_SIZE + 2 * g.SCALAR_SIZE

_KDF_INFO = b"custody/shares/tdec/v1/kek"
_ENVELOPE_DIGEST = b"custody/shares/tdec/v1/envelope"
_DLEQ_CHALLENGE = b"custody/shares/tdec/v1/dleq-challenge"
_DLEQ_NONCE = b"custody/shares/tdec/v1/dleq-nonce"


# ---------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: ephemeral point R, GCM nonce, ciphertext with tag."""

    ephemeral: g.Element
    nonce: bytes
    ciphertext: bytes

    @property
    def header(self) -> bytes:
        return bytes([ENVELOPE_VERSION]) + self.ephemeral + self.nonce

    def to_bytes(self) -> bytes:
        return self.header + self.ciphertext


def parse_envelope(raw: bytes) -> Envelope:
    """Strictly parse an envelope: version, length bounds, canonical prime-order R."""
    if not isinstance(raw, bytes | bytearray):
        raise EncodingError("envelope must be bytes")
    raw = bytes(raw)
    if not MIN_ENVELOPE <= len(raw) <= MAX_ENVELOPE:
        raise EncodingError(f"envelope must be {MIN_ENVELOPE}..{MAX_ENVELOPE} bytes")
    if raw[0] != ENVELOPE_VERSION:
        raise EncodingError(f"unknown envelope version {raw[0]}")
    ephemeral = g.decode_element(raw[1 : 1 + g.ELEMENT_SIZE])  # InvalidElement if bad
    nonce = raw[1 + g.ELEMENT_SIZE : _HEADER_SIZE]
    return Envelope(ephemeral, nonce, raw[_HEADER_SIZE:])


def _len_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _check_bytes(name: str, value: bytes, maximum: int) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidParameters(f"{name} must be bytes")
    if len(value) > maximum:
        raise InvalidParameters(f"{name} longer than {maximum} bytes")
    return bytes(value)


def _derive_key(
    shared: g.Element, ephemeral: g.Element, public_key: g.Element, context: bytes
) -> bytes:
    info = _KDF_INFO + _len_prefixed(context) + ephemeral + public_key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _aead_data(envelope: Envelope, aad: bytes) -> bytes:
    return envelope.header + _len_prefixed(aad)


def wrap(
    group_public_key: g.Element,
    data_key: bytes,
    aad: bytes,
    context: bytes,
    rng: g.RandomSource,
) -> bytes:
    """Encrypt `data_key` (16..64 bytes) to the group; returns envelope bytes."""
    public_key = g.decode_element(group_public_key)
    if not isinstance(data_key, bytes | bytearray):
        raise InvalidParameters("data key must be bytes")
    if not MIN_DATA_KEY <= len(data_key) <= MAX_DATA_KEY:
        raise InvalidParameters(f"data key must be {MIN_DATA_KEY}..{MAX_DATA_KEY} bytes")
    aad = _check_bytes("aad", aad, MAX_AAD)
    context = _check_bytes("context", context, MAX_CONTEXT)
    r = g.random_scalar(rng)
    ephemeral = g.base_mult(r)
    key = _derive_key(g.scalar_mult(r, public_key), ephemeral, public_key, context)
    nonce = rng(NONCE_SIZE)
    header = Envelope(ephemeral, nonce, b"")
    ciphertext = AESGCM(key).encrypt(nonce, bytes(data_key), _aead_data(header, aad))
    return Envelope(ephemeral, nonce, ciphertext).to_bytes()


def _envelope_digest(raw: bytes) -> bytes:
    return hashlib.sha512(_ENVELOPE_DIGEST + raw).digest()


# ---------------------------------------------------------------------------
# Partial decryptions with DLEQ proofs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialDecryption:
    """D_i = s_i * R from participant `identifier`, with proof (c, z). Public."""

    identifier: int
    value: g.Element
    challenge: g.Scalar
    response: g.Scalar

    def to_bytes(self) -> bytes:
        return (
            bytes([PARTIAL_VERSION, self.identifier])
            + self.value
            + self.challenge
            + self.response
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartialDecryption:
        """Strict parse; EncodingError (or its InvalidElement/InvalidScalar subclasses)."""
        if not isinstance(raw, bytes | bytearray) or len(raw) != PARTIAL_SIZE:
            raise EncodingError(f"partial decryption must be {PARTIAL_SIZE} bytes")
        raw = bytes(raw)
        if raw[0] != PARTIAL_VERSION:
            raise EncodingError(f"unknown partial decryption version {raw[0]}")
        if not 1 <= raw[1] <= MAX_PARTICIPANTS:
            raise EncodingError("identifier out of range")
        e = 2 + g.ELEMENT_SIZE
        return cls(
            identifier=raw[1],
            value=g.decode_element(raw[2:e]),
            challenge=g.decode_scalar(raw[e : e + g.SCALAR_SIZE]),
            response=g.decode_scalar(raw[e + g.SCALAR_SIZE :]),
        )


def _challenge(
    identifier: int,
    verification_share: g.Element,
    ephemeral: g.Element,
    value: g.Element,
    commit_base: g.Element,
    commit_ephemeral: g.Element,
    envelope_digest: bytes,
    request: bytes,
) -> g.Scalar:
    h = hashlib.sha512(_DLEQ_CHALLENGE)
    h.update(identifier.to_bytes(2, "big"))
    for part in (verification_share, ephemeral, value, commit_base, commit_ephemeral):
        h.update(part)
    h.update(envelope_digest)
    h.update(_len_prefixed(request))
    return g.scalar_reduce(h.digest())


def partial_decrypt(
    share: SecretShare, envelope: bytes, rng: g.RandomSource, request: bytes = b""
) -> PartialDecryption:
    """Participant's contribution D_i = s_i * R and its DLEQ proof.

    The caller (the custody node) must have checked on its own replica that the
    request is approved before calling this: D_i is a decryption capability.
    """
    parsed = parse_envelope(envelope)
    request = _check_bytes("request", request, MAX_REQUEST)
    check_identifiers([share.identifier])
    s = g.decode_scalar(share.value)
    if g.scalar_is_zero(s):
        raise InvalidParameters("zero share")
    ephemeral = parsed.ephemeral
    value = g.scalar_mult(s, ephemeral)
    verification_share = g.base_mult(s)
    digest = _envelope_digest(parsed.to_bytes())
    while True:
        k = g.scalar_reduce(
            hashlib.sha512(
                _DLEQ_NONCE + s + rng(32) + ephemeral + digest + _len_prefixed(request)
            ).digest()
        )
        if not g.scalar_is_zero(k):
            break
    c = _challenge(
        share.identifier,
        verification_share,
        ephemeral,
        value,
        g.base_mult(k),
        g.scalar_mult(k, ephemeral),
        digest,
        request,
    )
    z = g.scalar_add(k, g.scalar_mul(c, s))
    return PartialDecryption(share.identifier, value, c, z)


def verify_partial(
    partial: PartialDecryption,
    envelope: bytes,
    verification_share: g.Element,
    request: bytes = b"",
) -> None:
    """Check the DLEQ proof; InvalidProof naming the partial's author if it fails."""
    parsed = parse_envelope(envelope)
    request = _check_bytes("request", request, MAX_REQUEST)
    if not isinstance(partial, PartialDecryption):
        raise InvalidParameters("expected a PartialDecryption")
    check_identifiers([partial.identifier])
    public = g.decode_element(verification_share)
    culprit = [partial.identifier]
    try:
        value = g.decode_element(partial.value)
        c = g.decode_scalar(partial.challenge)
        z = g.decode_scalar(partial.response)
    except (InvalidElement, InvalidScalar) as exc:
        raise InvalidProof(f"malformed partial decryption: {exc}", culprit) from exc
    ephemeral = parsed.ephemeral
    commit_base = g.element_sub(g.base_mult(z), g.scalar_mult(c, public))
    commit_ephemeral = g.element_sub(g.scalar_mult(z, ephemeral), g.scalar_mult(c, value))
    expected = _challenge(
        partial.identifier,
        public,
        ephemeral,
        value,
        commit_base,
        commit_ephemeral,
        _envelope_digest(parsed.to_bytes()),
        request,
    )
    if not g.scalar_eq(expected, c):
        raise InvalidProof("partial decryption proof does not verify", culprit)


def unwrap(
    envelope: bytes,
    partials: Sequence[PartialDecryption],
    verification_shares: Mapping[int, g.Element],
    min_participants: int,
    group_public_key: g.Element,
    aad: bytes,
    context: bytes,
    request: bytes = b"",
) -> bytes:
    """Verify every partial, combine them in the exponent and open the envelope.

    Raises InvalidProof naming all authors of bad partials (the caller drops
    them and asks others), InvalidParameters with fewer than t distinct
    partials, DecryptionError if the envelope does not open.
    """
    parsed = parse_envelope(envelope)
    public_key = g.decode_element(group_public_key)
    aad = _check_bytes("aad", aad, MAX_AAD)
    context = _check_bytes("context", context, MAX_CONTEXT)
    if isinstance(partials, bytes | bytearray | str):
        raise InvalidParameters("partials must be a sequence")
    partials = list(partials)
    if not all(isinstance(p, PartialDecryption) for p in partials):
        raise InvalidParameters("partials must be PartialDecryption instances")
    ids = check_identifiers(p.identifier for p in partials)
    if not isinstance(min_participants, int) or min_participants < 2:
        raise InvalidParameters("threshold must be an int >= 2")
    if len(ids) < min_participants:
        raise InvalidParameters(f"need {min_participants} partial decryptions, got {len(ids)}")
    culprits: list[int] = []
    for p in partials:
        if p.identifier not in verification_shares:
            raise InvalidParameters(f"no verification share for participant {p.identifier}")
        try:
            verify_partial(p, envelope, verification_shares[p.identifier], request)
        except InvalidProof:
            culprits.append(p.identifier)
    if culprits:
        raise InvalidProof("partial decryptions with invalid proofs", culprits)
    shared = g.IDENTITY
    for p in partials:
        lam = lagrange_coefficient(p.identifier, ids)
        shared = g.element_add(shared, g.scalar_mult(lam, p.value))
    key = _derive_key(shared, parsed.ephemeral, public_key, context)
    try:
        return AESGCM(key).decrypt(parsed.nonce, parsed.ciphertext, _aead_data(parsed, aad))
    except InvalidTag as exc:
        raise DecryptionError("envelope does not open with this key, AAD and context") from exc
