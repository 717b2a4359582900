"""Exceptions raised by `shares`.

Every validation failure raises a subclass of `SharesError`. Errors caused by a
particular participant carry that participant's identifier(s) in `culprits`, so
that the caller can exclude or report them (as frost-core's `culprits` does).
"""

from __future__ import annotations

from collections.abc import Iterable


class SharesError(Exception):
    """Base class of every error raised by the `shares` package."""


class EncodingError(SharesError):
    """Bytes from outside are not a valid encoding (wrong length, non-canonical)."""


class InvalidScalar(EncodingError):
    """A scalar is not the canonical 32-byte little-endian encoding of a value < L."""


class InvalidElement(EncodingError):
    """A group element is malformed, not on the curve, of small order, or the identity."""


class InvalidParameters(SharesError):
    """Threshold, participant count, identifiers or sizes are out of range or inconsistent."""


class CulpritError(SharesError):
    """An error attributable to specific participants, named in `culprits`."""

    def __init__(self, message: str, culprits: Iterable[int] = ()) -> None:
        self.culprits: tuple[int, ...] = tuple(sorted(set(culprits)))
        if self.culprits:
            message = f"{message} (culprits: {', '.join(map(str, self.culprits))})"
        super().__init__(message)


class InvalidShare(CulpritError):
    """A secret share does not match its dealer's public commitments."""


class InvalidProofOfKnowledge(CulpritError):
    """A DKG participant's Schnorr proof of knowledge of its secret does not verify."""


class InvalidSignatureShare(CulpritError):
    """A FROST signature share does not verify against its signer's verification share."""


class InvalidSignature(SharesError):
    """An aggregated Schnorr/Ed25519 signature does not verify."""


class InvalidProof(CulpritError):
    """A DLEQ (Chaum-Pedersen) proof attached to a partial decryption does not verify."""


class DecryptionError(SharesError):
    """An envelope failed to open: wrong key, wrong AAD/context, or tampered ciphertext."""


class InvalidEnvelope(DecryptionError):
    """An envelope's proof of well-formedness does not verify for this key and label.

    Raised before any share is used: a node never computes a partial decryption
    for an envelope whose wrapper did not prove knowledge of its randomness
    bound to the label (key, version, context, AAD) it is asked to decrypt under.
    """


class RandomnessError(SharesError):
    """The random source returned something other than exactly the bytes requested."""


class NonceReuse(SharesError):
    """A single-use FROST nonce was used a second time."""


class InvalidCommitment(InvalidElement, CulpritError):
    """A participant's published commitment is not a valid element; names the participant.

    It is an `InvalidElement` (so encoding checks can be caught as one type) that also
    carries `culprits`, because a bad commitment is always some participant's fault.
    """


class IncorrectCommitment(SharesError):
    """A signer's own nonce commitment is missing from, or altered in, the commitment list."""
