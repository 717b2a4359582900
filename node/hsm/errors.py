"""Errors of the HSM slot.

Each failure a caller must handle differently has its own class: an operator
fixes a wrong PIN differently from a missing token, and a blob that fails to
open is evidence of tampering or misplacement, not an I/O hiccup.
Messages never contain PINs, shares or key material.
"""

from __future__ import annotations


class HsmError(Exception):
    """Base class of every error raised by `node.hsm`."""


class InvalidInputError(HsmError, ValueError):
    """An argument is malformed or out of bounds; nothing was changed."""


class PinSourceError(HsmError):
    """The PIN file or environment variable is missing, empty or unsafe."""


class ModuleLoadError(HsmError):
    """The PKCS#11 module could not be found or loaded."""


class ModuleConfigConflictError(HsmError):
    """The module is already initialised in this process with another configuration."""


class TokenNotFoundError(HsmError):
    """No token with the configured label is present."""


class PinIncorrectError(HsmError):
    """The token rejected the user PIN."""


class PinLockedError(HsmError):
    """The token has locked the user PIN after too many failures."""


class TokenFullError(HsmError):
    """The token (or the slot's configured share capacity) has no room left."""


class ModuleFailureError(HsmError):
    """The PKCS#11 module reported an unexpected failure."""


class SlotNotProvisionedError(HsmError):
    """The token lacks the slot KEK or identity key (run provisioning first)."""


class MechanismUnsupportedError(HsmError):
    """The module does not support a required mechanism (e.g. CKM_EDDSA)."""


class ShareNotFoundError(HsmError, KeyError):
    """No share object exists for this (key, version, index, generation)."""


class ShareExistsError(HsmError):
    """A share object already exists and replacing was not requested."""


class ShareIntegrityError(HsmError):
    """A share blob does not open: wrong label/version/generation/cluster, another
    token's KEK, or tampering."""


class BackupFormatError(HsmError):
    """An exported share blob is malformed, of an unknown version, or for another cluster."""


class BackupAuthenticationError(HsmError):
    """An exported share blob fails authentication: wrong backup key or tampered."""
