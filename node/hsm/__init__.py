"""The node's HSM slot: shares, slot KEK and identity key in a PKCS#11 token.

`Slot` is the protocol; `Pkcs11Slot` the real implementation (python-pkcs11,
SoftHSM2 or any module by path); `MemorySlot` an in-process stand-in for unit
tests of pure logic. See docs/hsm.md.
"""

from node.hsm.errors import (
    BackupAuthenticationError,
    BackupFormatError,
    HsmError,
    InvalidInputError,
    MechanismUnsupportedError,
    ModuleConfigConflictError,
    ModuleFailureError,
    ModuleLoadError,
    PinIncorrectError,
    PinLockedError,
    PinSourceError,
    ShareExistsError,
    ShareIntegrityError,
    ShareNotFoundError,
    SlotNotProvisionedError,
    TokenFullError,
    TokenNotFoundError,
)
from node.hsm.memory import MemorySlot
from node.hsm.slot import MAX_SHARE_LEN, ShareId, Slot

__all__ = [
    "MAX_SHARE_LEN",
    "BackupAuthenticationError",
    "BackupFormatError",
    "HsmError",
    "InvalidInputError",
    "MechanismUnsupportedError",
    "MemorySlot",
    "ModuleConfigConflictError",
    "ModuleFailureError",
    "ModuleLoadError",
    "PinIncorrectError",
    "PinLockedError",
    "PinSourceError",
    "ShareExistsError",
    "ShareId",
    "ShareIntegrityError",
    "ShareNotFoundError",
    "Slot",
    "SlotNotProvisionedError",
    "TokenFullError",
    "TokenNotFoundError",
]
