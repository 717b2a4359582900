"""The `Slot` protocol and its value types.

A slot is one node's HSM token: it keeps that node's shares of the root keys
(encrypted under a non-extractable slot KEK), the node's Ed25519 identity key,
and nothing else. Two implementations follow the same contract:
`node.hsm.pkcs11_slot.Pkcs11Slot` (real PKCS#11 tokens) and
`node.hsm.memory.MemorySlot` (in-process, for unit tests of pure logic).

Contract shared by both:
- `load_share` returns a fresh `bytearray` the caller owns; zero it after use
  (CPython cannot guarantee that no other copy exists, but we drop ours).
- `store_share` never leaves a half-written object behind, and refuses to
  overwrite an existing share unless `replace=True`.
- `destroy_share` removes the object (crypto-erasure of that share).
- Blobs are bound to (cluster id, key id, version, index, generation): a blob
  moved to another identity fails with `ShareIntegrityError`.
- Methods are safe to call from several threads; they serialise internally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from node.hsm.errors import InvalidInputError

MAX_SHARE_LEN = 64
"""Shares are 32-byte scalars; 64 leaves room for other encodings, nothing more."""
MAX_SIGN_MESSAGE_LEN = 1 << 20
"""Upper bound on messages signed with the identity key."""
MAX_U32 = 0xFFFFFFFF
MAX_INDEX = 0xFFFF

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_identifier(value: object, what: str) -> str:
    """Validate a cluster or key identifier: 1-64 chars of [A-Za-z0-9._-], no '/'."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidInputError(f"{what} must be 1-64 characters of [A-Za-z0-9._-]")
    return value


def _check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{what} must be an integer in [{low}, {high}]")
    return value


def check_share_bytes(share: object) -> None:
    """Validate a share value without copying it."""
    if not isinstance(share, bytes | bytearray | memoryview):
        raise InvalidInputError("share must be bytes-like")
    if not 1 <= len(share) <= MAX_SHARE_LEN:
        raise InvalidInputError(f"share length must be 1..{MAX_SHARE_LEN} bytes")


def check_message(message: object) -> bytes:
    """Validate a message to sign with the identity key."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise InvalidInputError("message must be bytes-like")
    if len(message) > MAX_SIGN_MESSAGE_LEN:
        raise InvalidInputError(f"message longer than {MAX_SIGN_MESSAGE_LEN} bytes")
    return bytes(message)


def check_backup_key(key: object) -> None:
    """A backup key is exactly 32 bytes (AES-256)."""
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise InvalidInputError("backup key must be 32 bytes (AES-256)")


@dataclass(frozen=True, order=True)
class ShareId:
    """Which share: key id, key version, participant index and share generation.

    The generation counts proactive refreshes and repairs of the same
    (key, version, index); a refreshed share is a new generation.
    """

    key_id: str
    version: int
    index: int
    generation: int

    def __post_init__(self) -> None:
        check_identifier(self.key_id, "key_id")
        _check_int(self.version, "version", 1, MAX_U32)
        _check_int(self.index, "index", 1, MAX_INDEX)
        _check_int(self.generation, "generation", 0, MAX_U32)


@runtime_checkable
class Slot(Protocol):
    """One node's HSM slot. See the module docstring for the shared contract."""

    @property
    def cluster_id(self) -> str:
        """The cluster this slot's blobs are bound to."""
        ...

    def identity_public_key(self) -> bytes:
        """The node's Ed25519 identity public key, raw 32 bytes."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Sign `message` (pure Ed25519, 64-byte signature) with the identity key."""
        ...

    def store_share(
        self, share_id: ShareId, share: bytes | bytearray, *, replace: bool = False
    ) -> None:
        """Encrypt and store a share; `ShareExistsError` if present and not `replace`."""
        ...

    def load_share(self, share_id: ShareId) -> bytearray:
        """Decrypt and return a share (caller zeroes it); `ShareNotFoundError` if absent."""
        ...

    def has_share(self, share_id: ShareId) -> bool:
        """Whether a share object exists for `share_id`."""
        ...

    def list_shares(self, key_id: str | None = None) -> list[ShareId]:
        """Sorted ids of stored shares, optionally only those of `key_id`."""
        ...

    def destroy_share(self, share_id: ShareId) -> None:
        """Remove the share object (crypto-erasure); `ShareNotFoundError` if absent."""
        ...

    def destroy_shares(self, share_ids: Iterable[ShareId]) -> int:
        """Remove every object of these shares in one pass over the token (ids that are
        absent are skipped); how many objects were removed."""
        ...

    def export_share(self, share_id: ShareId, backup_key: bytes) -> bytes:
        """A self-describing, authenticated blob of the share under `backup_key`."""
        ...

    def import_share(self, blob: bytes, backup_key: bytes, *, replace: bool = False) -> ShareId:
        """Open an exported blob with `backup_key` and store the share it holds."""
        ...

    def close(self) -> None:
        """Release the session; further calls fail."""
        ...
