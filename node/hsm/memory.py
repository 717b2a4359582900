"""In-memory `Slot`: same contract and formats as the PKCS#11 slot, no token.

For unit tests of pure logic elsewhere (coordinators, state machine glue). It
offers no protection at all: keys live in Python objects. The RNG is passed in
so tests can be deterministic.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.hsm import aad
from node.hsm.errors import (
    BackupFormatError,
    HsmError,
    ShareExistsError,
    ShareIntegrityError,
    ShareNotFoundError,
    TokenFullError,
)
from node.hsm.slot import (
    ShareId,
    check_backup_key,
    check_identifier,
    check_message,
    check_share_bytes,
)

Rng = Callable[[int], bytes]


class MemorySlot:
    """A `Slot` kept in a dict of label -> encrypted value."""

    def __init__(self, cluster_id: str, *, rng: Rng = os.urandom, max_shares: int = 4096) -> None:
        self._cluster_id = check_identifier(cluster_id, "cluster_id")
        self._rng = rng
        self._max_shares = max_shares
        self._kek = AESGCM(rng(32))
        self._identity = Ed25519PrivateKey.from_private_bytes(rng(32))
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    def _check_open(self) -> None:
        if self._closed:
            raise HsmError("slot is closed")

    def identity_public_key(self) -> bytes:
        self._check_open()
        return self._identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, message: bytes) -> bytes:
        self._check_open()
        return self._identity.sign(check_message(message))

    def store_share(
        self, share_id: ShareId, share: bytes | bytearray, *, replace: bool = False
    ) -> None:
        check_share_bytes(share)
        with self._lock:
            self._check_open()
            label = aad.share_label(share_id)
            if label in self._objects and not replace:
                raise ShareExistsError(f"share {label} already exists")
            if label not in self._objects and len(self._objects) >= self._max_shares:
                raise TokenFullError(f"slot holds its maximum of {self._max_shares} shares")
            nonce = self._rng(aad.NONCE_LEN)
            ct = self._kek.encrypt(nonce, bytes(share), aad.share_aad(self._cluster_id, share_id))
            self._objects[label] = aad.pack_share_value(nonce, ct)

    def load_share(self, share_id: ShareId) -> bytearray:
        with self._lock:
            self._check_open()
            label = aad.share_label(share_id)
            value = self._objects.get(label)
            if value is None:
                raise ShareNotFoundError(f"no share {label}")
            nonce, ct = aad.unpack_share_value(value)
            try:
                pt = self._kek.decrypt(nonce, ct, aad.share_aad(self._cluster_id, share_id))
            except InvalidTag as exc:
                raise ShareIntegrityError(
                    f"share object {label} does not open under this slot's KEK and binding"
                ) from exc
            return bytearray(pt)

    def has_share(self, share_id: ShareId) -> bool:
        with self._lock:
            self._check_open()
            return aad.share_label(share_id) in self._objects

    def list_shares(self, key_id: str | None = None) -> list[ShareId]:
        if key_id is not None:
            check_identifier(key_id, "key_id")
        with self._lock:
            self._check_open()
            ids = [aad.parse_share_label(label) for label in self._objects]
        return sorted(i for i in ids if i is not None and (key_id is None or i.key_id == key_id))

    def destroy_share(self, share_id: ShareId) -> None:
        with self._lock:
            self._check_open()
            label = aad.share_label(share_id)
            if self._objects.pop(label, None) is None:
                raise ShareNotFoundError(f"no share {label}")

    def destroy_shares(self, share_ids: Iterable[ShareId]) -> int:
        labels = {aad.share_label(s) for s in share_ids}
        with self._lock:
            self._check_open()
            return sum(1 for label in labels if self._objects.pop(label, None) is not None)

    def export_share(self, share_id: ShareId, backup_key: bytes) -> bytes:
        check_backup_key(backup_key)
        share = self.load_share(share_id)
        try:
            return aad.seal_backup(
                self._cluster_id, share_id, share, backup_key, self._rng(aad.NONCE_LEN)
            )
        finally:
            aad.zero(share)

    def import_share(self, blob: bytes, backup_key: bytes, *, replace: bool = False) -> ShareId:
        header, share = aad.open_backup(blob, backup_key)
        try:
            if not hmac.compare_digest(header.cluster_id.encode(), self._cluster_id.encode()):
                raise BackupFormatError("backup blob belongs to another cluster")
            self.store_share(header.share_id, share, replace=replace)
            return header.share_id
        finally:
            aad.zero(share)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._objects.clear()

    def __enter__(self) -> MemorySlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Test support: the raw object table, to simulate moving or tampering a blob.
    def _raw_objects(self) -> dict[str, bytes]:
        return self._objects
