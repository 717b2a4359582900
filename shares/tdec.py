"""Threshold decryption of envelope-wrapped data keys, chosen-ciphertext secure (TDH2).

This is the TDH2 scheme of Shoup and Gennaro ("Securing Threshold
Cryptosystems against Chosen Ciphertext Attack", EUROCRYPT 1998; J. Cryptology
15(2), 2002) on Ed25519, with the one-time pad of the paper replaced by
HKDF-SHA-256 + AES-256-GCM (a KEM/DEM split, as in ECIES):

- Wrap (anyone, with the group public key Y = s * B and a `Label`): pick r;
  R = r * B, R_bar = r * B_bar (B_bar a second generator whose discrete log
  nobody knows); K = HKDF(r * Y); encrypt the data key under K; and prove,
  non-interactively, that R and R_bar have the same discrete log r
  (Chaum-Pedersen: W = w * B, W_bar = w * B_bar, e = H(Y, label, R, R_bar, W,
  W_bar, nonce, ciphertext), f = w + r * e). The proof shows the wrapper
  knows r and binds it to the label (key id, version, context, AAD) and to the
  exact ciphertext.
- Partial decryption (custody node i, share s_i): first `verify_envelope`
  against the key and the label the request was approved for; only then
  D_i = s_i * R with a Chaum-Pedersen proof that log_B(Y_i) = log_R(D_i).
- Combine (the requester): check the envelope proof and every partial's proof,
  interpolate s * R = r * Y in the exponent and open the envelope.

Why the envelope proof: without it a partial is s_i * R for *any* R, a
decryption oracle. A requester entitled to one decryption under a key version
takes a victim's R, submits R' = a * R with junk ciphertext, combines the
(valid, proven) partials into a * r * Y, multiplies by 1/a and opens the
victim's data key. With it, R' needs a proof of knowledge of a * r bound to a
label, which nobody who does not know r can make; and the victim's own R
carries a proof bound to the victim's label, so it is refused under any other.

Hedging: r is derived from fresh RNG output *and* the data key, label and key
(a repeating RNG gives different r for different data keys); the proof nonces
w and k are derived from the secret they protect, fresh RNG output and the
transcript, so a broken RNG alone never reveals r or a share.

Errors: a bad envelope proof or wrong label is `InvalidEnvelope` (a
`DecryptionError`); a bad partial raises `InvalidProof` naming every bad author;
fewer than t good partials is `InvalidParameters`; an envelope that passes its
proof but does not open is `DecryptionError`.

Envelope format v2 (fixed or implied lengths; parsing is strict; v1 is refused):
``0x02 || R (32) || R_bar (32) || e (32) || f (32) || nonce (12) || ct || tag (16)``,
where the data key is 16..64 bytes, so an envelope is 173..221 bytes.
Partial decryption format v2: ``0x02 || identifier (1) || D (32) || c (32) || z (32)``.

Partial decryptions are secret-equivalent: t of them and the (public)
envelope give the data key. They print as <redacted> and must travel only to
the requester over an encrypted, authenticated channel, never to the log or
the audit trail. Derived keys and data keys are immutable `bytes` that
CPython cannot zeroize.
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
    InvalidEnvelope,
    InvalidParameters,
    InvalidProof,
    InvalidScalar,
)
from .rng import read_random
from .shamir import MAX_PARTICIPANTS, SecretShare, check_identifiers, lagrange_coefficient

ENVELOPE_VERSION = 2
PARTIAL_VERSION = 2
NONCE_SIZE = 12
TAG_SIZE = 16
MIN_DATA_KEY = 16
MAX_DATA_KEY = 64
MAX_AAD = 4096
MAX_CONTEXT = 255
MAX_KEY_ID = 255
MAX_KEY_VERSION = 2**32 - 1
MAX_REQUEST = 1024
_HEADER_SIZE = 1 + 2 * g.ELEMENT_SIZE + 2 * g.SCALAR_SIZE + NONCE_SIZE
MIN_ENVELOPE = _HEADER_SIZE + MIN_DATA_KEY + TAG_SIZE
MAX_ENVELOPE = _HEADER_SIZE + MAX_DATA_KEY + TAG_SIZE
PARTIAL_SIZE = 2 + g.ELEMENT_SIZE + 2 * g.SCALAR_SIZE

_LABEL = b"custody/shares/tdec/v2/label"
_KDF_INFO = b"custody/shares/tdec/v2/kek"
_ENVELOPE_DIGEST = b"custody/shares/tdec/v2/envelope"
_ENVELOPE_CHALLENGE = b"custody/shares/tdec/v2/envelope-challenge"
_EPHEMERAL_NONCE = b"custody/shares/tdec/v2/ephemeral"
_ENVELOPE_PROOF_NONCE = b"custody/shares/tdec/v2/envelope-nonce"
_DLEQ_CHALLENGE = b"custody/shares/tdec/v2/dleq-challenge"
_DLEQ_NONCE = b"custody/shares/tdec/v2/dleq-nonce"

#: TDH2's second generator g-bar: hashed to the curve, so log_B(B_BAR) is unknown.
B_BAR = g.hash_to_element(b"custody/shares/tdec/v2/second-generator")


# ---------------------------------------------------------------------------
# Label
# ---------------------------------------------------------------------------


def _len_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _check_bytes(name: str, value: bytes, maximum: int) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidParameters(f"{name} must be bytes")
    if len(value) > maximum:
        raise InvalidParameters(f"{name} longer than {maximum} bytes")
    return bytes(value)


@dataclass(frozen=True)
class Label:
    """What an envelope is for: key id, key version, context and AAD. Public.

    TDH2's label L: bound into the wrapper's proof, the key derivation and the
    AEAD. Approvers approve a decryption *for a label*; a node verifies the
    envelope against that label before it computes anything, so an envelope
    made for one key, version, context or AAD is refused under another.
    """

    key_id: str
    version: int
    context: bytes
    aad: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str):
            raise InvalidParameters("label key_id must be a str")
        if not 1 <= len(self.key_id.encode("utf-8")) <= MAX_KEY_ID:
            raise InvalidParameters(f"label key_id must be 1..{MAX_KEY_ID} UTF-8 bytes")
        v = self.version
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_KEY_VERSION:
            raise InvalidParameters(f"label version must be an int in 1..{MAX_KEY_VERSION}")
        object.__setattr__(self, "context", _check_bytes("context", self.context, MAX_CONTEXT))
        object.__setattr__(self, "aad", _check_bytes("aad", self.aad, MAX_AAD))

    def encode(self) -> bytes:
        """Canonical, length-framed encoding (the same bytes on every node)."""
        key_id = self.key_id.encode("utf-8")
        return (
            _LABEL
            + len(key_id).to_bytes(2, "big")
            + key_id
            + self.version.to_bytes(4, "big")
            + len(self.context).to_bytes(2, "big")
            + self.context
            + _len_prefixed(self.aad)
        )

    def digest(self) -> bytes:
        return hashlib.sha512(self.encode()).digest()


def _check_label(label: Label) -> bytes:
    if not isinstance(label, Label):
        raise InvalidParameters("label must be a tdec.Label")
    return label.digest()


# ---------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: R, R_bar, proof (e, f), GCM nonce, ciphertext with tag. Public."""

    ephemeral: g.Element
    ephemeral_bar: g.Element
    challenge: g.Scalar
    response: g.Scalar
    nonce: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        return (
            bytes([ENVELOPE_VERSION])
            + self.ephemeral
            + self.ephemeral_bar
            + self.challenge
            + self.response
            + self.nonce
            + self.ciphertext
        )


def parse_envelope(raw: bytes) -> Envelope:
    """Strictly parse: version 2, length bounds, canonical prime-order points and scalars.

    Parsing proves nothing about the envelope: use `verify_envelope`.
    """
    if not isinstance(raw, bytes | bytearray):
        raise EncodingError("envelope must be bytes")
    raw = bytes(raw)
    if raw[:1] == b"\x01":
        raise EncodingError(
            "envelope version 1 is refused: it carries no proof of well-formedness, so "
            "decrypting it would make the nodes a decryption oracle; re-wrap the data key"
        )
    if not MIN_ENVELOPE <= len(raw) <= MAX_ENVELOPE:
        raise EncodingError(f"envelope must be {MIN_ENVELOPE}..{MAX_ENVELOPE} bytes")
    if raw[0] != ENVELOPE_VERSION:
        raise EncodingError(f"unknown envelope version {raw[0]}")
    e, s = g.ELEMENT_SIZE, g.SCALAR_SIZE
    return Envelope(
        ephemeral=g.decode_element(raw[1 : 1 + e]),  # InvalidElement if bad
        ephemeral_bar=g.decode_element(raw[1 + e : 1 + 2 * e]),
        challenge=g.decode_scalar(raw[1 + 2 * e : 1 + 2 * e + s]),  # InvalidScalar if bad
        response=g.decode_scalar(raw[1 + 2 * e + s : 1 + 2 * e + 2 * s]),
        nonce=raw[_HEADER_SIZE - NONCE_SIZE : _HEADER_SIZE],
        ciphertext=raw[_HEADER_SIZE:],
    )


def _derive_key(
    shared: g.Element, ephemeral: g.Element, public_key: g.Element, label_digest: bytes
) -> bytes:
    info = _KDF_INFO + ephemeral + public_key + label_digest
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def _aead_data(
    ephemeral: g.Element, ephemeral_bar: g.Element, nonce: bytes, label_digest: bytes
) -> bytes:
    return bytes([ENVELOPE_VERSION]) + ephemeral + ephemeral_bar + nonce + label_digest


def _envelope_challenge(
    public_key: g.Element,
    label_digest: bytes,
    ephemeral: g.Element,
    ephemeral_bar: g.Element,
    commit: g.Element,
    commit_bar: g.Element,
    nonce: bytes,
    ciphertext: bytes,
) -> g.Scalar:
    """TDH2's e = H(c, L, u, w, u_bar, w_bar), with the key and version byte added."""
    h = hashlib.sha512(_ENVELOPE_CHALLENGE + bytes([ENVELOPE_VERSION]))
    for part in (public_key, label_digest, ephemeral, ephemeral_bar, commit, commit_bar, nonce):
        h.update(part)
    h.update(_len_prefixed(ciphertext))
    return g.scalar_reduce(h.digest())


def _hashed_scalar(*parts: bytes) -> g.Scalar:
    """A non-zero scalar from SHA-512 over length-framed parts (hedged nonces)."""
    h = hashlib.sha512()
    for part in parts:
        h.update(_len_prefixed(part))
    k = g.scalar_reduce(h.digest())
    if g.scalar_is_zero(k):  # probability 2^-252
        raise InvalidParameters("hashed scalar is zero; retry with fresh randomness")
    return k


def wrap(
    group_public_key: g.Element,
    data_key: bytes,
    label: Label,
    rng: g.RandomSource,
) -> bytes:
    """Encrypt `data_key` (16..64 bytes) to the group for `label`; returns envelope v2 bytes."""
    public_key = g.decode_element(group_public_key)
    if not isinstance(data_key, bytes | bytearray):
        raise InvalidParameters("data key must be bytes")
    if not MIN_DATA_KEY <= len(data_key) <= MAX_DATA_KEY:
        raise InvalidParameters(f"data key must be {MIN_DATA_KEY}..{MAX_DATA_KEY} bytes")
    label_digest = _check_label(label)
    data_key = bytes(data_key)
    r = _hashed_scalar(
        _EPHEMERAL_NONCE, read_random(rng, 64), public_key, label_digest, data_key
    )
    ephemeral = g.base_mult(r)
    ephemeral_bar = g.scalar_mult(r, B_BAR)
    key = _derive_key(g.scalar_mult(r, public_key), ephemeral, public_key, label_digest)
    nonce = read_random(rng, NONCE_SIZE)
    aead_data = _aead_data(ephemeral, ephemeral_bar, nonce, label_digest)
    ciphertext = AESGCM(key).encrypt(nonce, data_key, aead_data)
    w = _hashed_scalar(
        _ENVELOPE_PROOF_NONCE, r, read_random(rng, 32), label_digest, nonce, ciphertext
    )
    e = _envelope_challenge(
        public_key,
        label_digest,
        ephemeral,
        ephemeral_bar,
        g.base_mult(w),
        g.scalar_mult(w, B_BAR),
        nonce,
        ciphertext,
    )
    f = g.scalar_add(w, g.scalar_mul(r, e))
    return Envelope(ephemeral, ephemeral_bar, e, f, nonce, ciphertext).to_bytes()


def _verified(
    envelope: bytes, group_public_key: g.Element, label: Label
) -> tuple[Envelope, g.Element, bytes]:
    """Parse and check the envelope proof; returns (envelope, decoded key, label digest)."""
    parsed = parse_envelope(envelope)
    public_key = g.decode_element(group_public_key)
    label_digest = _check_label(label)
    e, f = parsed.challenge, parsed.response
    # W = f*B - e*R and W_bar = f*B_bar - e*R_bar: equal to the wrapper's w*B and
    # w*B_bar exactly when log_B(R) = log_B_bar(R_bar) and the wrapper knew it.
    commit = g.element_sub(g.base_mult(f), g.scalar_mult(e, parsed.ephemeral))
    commit_bar = g.element_sub(g.scalar_mult(f, B_BAR), g.scalar_mult(e, parsed.ephemeral_bar))
    expected = _envelope_challenge(
        public_key,
        label_digest,
        parsed.ephemeral,
        parsed.ephemeral_bar,
        commit,
        commit_bar,
        parsed.nonce,
        parsed.ciphertext,
    )
    if not g.scalar_eq(expected, e):
        raise InvalidEnvelope(
            "envelope proof does not verify for this key and label (mauled, or made for "
            "another key, version, context or AAD)"
        )
    return parsed, public_key, label_digest


def verify_envelope(envelope: bytes, group_public_key: g.Element, label: Label) -> None:
    """TDH2's ciphertext validity check; returns nothing or raises InvalidEnvelope.

    Every member runs it (inside `partial_decrypt`) before it uses its share,
    against the key and label the decryption request was approved for.
    Malformed bytes raise EncodingError (InvalidElement, InvalidScalar).
    """
    _verified(envelope, group_public_key, label)


def _envelope_digest(raw: bytes) -> bytes:
    return hashlib.sha512(_ENVELOPE_DIGEST + raw).digest()


# ---------------------------------------------------------------------------
# Partial decryptions with DLEQ proofs
# ---------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class PartialDecryption:
    """D_i = s_i * R from participant `identifier`, with proof (c, z).

    Secret-equivalent: t partials for an envelope and the envelope give its
    data key. Prints as <redacted>; export only with `to_bytes`, to the
    requester, over an encrypted channel; never log it.
    """

    identifier: int
    value: g.Element
    challenge: g.Scalar
    response: g.Scalar

    def __repr__(self) -> str:
        return f"PartialDecryption(identifier={self.identifier}, <redacted>)"

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
    share: SecretShare,
    envelope: bytes,
    group_public_key: g.Element,
    label: Label,
    rng: g.RandomSource,
    request: bytes = b"",
) -> PartialDecryption:
    """Participant's contribution D_i = s_i * R and its DLEQ proof.

    `label` is the one the decryption request was approved for (the caller,
    the custody node, checked the approval on its own replica). The envelope's
    proof is verified against `group_public_key` and `label` before the share
    is read at all: an envelope whose proof fails, or that was made for
    another label, raises InvalidEnvelope and no partial is computed.
    """
    if not isinstance(share, SecretShare):
        raise InvalidParameters("share must be a SecretShare")
    request = _check_bytes("request", request, MAX_REQUEST)
    parsed, _, _ = _verified(envelope, group_public_key, label)
    check_identifiers([share.identifier])
    s = g.decode_scalar(share.value)
    if g.scalar_is_zero(s):
        raise InvalidParameters("zero share")
    ephemeral = parsed.ephemeral
    value = g.scalar_mult(s, ephemeral)
    verification_share = g.base_mult(s)
    digest = _envelope_digest(parsed.to_bytes())
    k = _hashed_scalar(_DLEQ_NONCE, s, read_random(rng, 32), ephemeral, digest, request)
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


def _verify_partial(
    partial: PartialDecryption,
    parsed: Envelope,
    digest: bytes,
    verification_share: g.Element,
    request: bytes,
) -> g.Element:
    """Check one DLEQ proof; returns the decoded D_i or raises InvalidProof naming its author."""
    culprit = [partial.identifier]
    public = g.decode_element(verification_share)
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
        partial.identifier, public, ephemeral, value, commit_base, commit_ephemeral, digest, request
    )
    if not g.scalar_eq(expected, c):
        raise InvalidProof("partial decryption proof does not verify", culprit)
    return value


def verify_partial(
    partial: PartialDecryption,
    envelope: bytes,
    verification_share: g.Element,
    request: bytes = b"",
) -> None:
    """Check the DLEQ proof; InvalidProof naming the partial's author if it fails.

    The proof binds the exact envelope bytes (and so, through the envelope's
    own proof, its label). It says nothing about the envelope's validity:
    `unwrap` checks that with `verify_envelope`.
    """
    parsed = parse_envelope(envelope)
    request = _check_bytes("request", request, MAX_REQUEST)
    if not isinstance(partial, PartialDecryption):
        raise InvalidParameters("expected a PartialDecryption")
    check_identifiers([partial.identifier])
    _verify_partial(
        partial, parsed, _envelope_digest(parsed.to_bytes()), verification_share, request
    )


def unwrap(
    envelope: bytes,
    partials: Sequence[PartialDecryption],
    verification_shares: Mapping[int, g.Element],
    min_participants: int,
    group_public_key: g.Element,
    label: Label,
    request: bytes = b"",
) -> bytes:
    """Verify the envelope and every partial, combine them in the exponent, open the envelope.

    Raises InvalidEnvelope if the envelope's proof fails for this key and
    label, InvalidProof naming all authors of bad partials (the caller drops
    them and asks others), InvalidParameters with fewer than t distinct
    partials, DecryptionError if the envelope does not open.
    """
    parsed, public_key, label_digest = _verified(envelope, group_public_key, label)
    request = _check_bytes("request", request, MAX_REQUEST)
    if isinstance(partials, bytes | bytearray | str) or not isinstance(partials, Sequence):
        raise InvalidParameters("partials must be a sequence")
    partials = list(partials)
    if not all(isinstance(p, PartialDecryption) for p in partials):
        raise InvalidParameters("partials must be PartialDecryption instances")
    ids = check_identifiers(p.identifier for p in partials)
    t = min_participants
    if not isinstance(t, int) or isinstance(t, bool) or not 2 <= t <= MAX_PARTICIPANTS:
        raise InvalidParameters("threshold must be an int in [2, 255]")
    if len(ids) < t:
        raise InvalidParameters(f"need {t} partial decryptions, got {len(ids)}")
    if not isinstance(verification_shares, Mapping):
        raise InvalidParameters("verification shares must map identifiers to elements")
    digest = _envelope_digest(parsed.to_bytes())
    culprits: list[int] = []
    values: dict[int, g.Element] = {}
    for p in partials:
        if p.identifier not in verification_shares:
            raise InvalidParameters(f"no verification share for participant {p.identifier}")
        try:
            values[p.identifier] = _verify_partial(
                p, parsed, digest, verification_shares[p.identifier], request
            )
        except InvalidProof:
            culprits.append(p.identifier)
    if culprits:
        raise InvalidProof("partial decryptions with invalid proofs", culprits)
    shared = g.IDENTITY
    for i, value in values.items():
        shared = g.element_add(shared, g.scalar_mult(lagrange_coefficient(i, ids), value))
    key = _derive_key(shared, parsed.ephemeral, public_key, label_digest)
    aead_data = _aead_data(parsed.ephemeral, parsed.ephemeral_bar, parsed.nonce, label_digest)
    try:
        return AESGCM(key).decrypt(parsed.nonce, parsed.ciphertext, aead_data)
    except InvalidTag as exc:
        raise DecryptionError("envelope does not open with this key and label") from exc
