"""The `Slot` contract, run against a real SoftHSM2 token and the in-memory slot."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.hsm import aad
from node.hsm.errors import (
    BackupAuthenticationError,
    BackupFormatError,
    HsmError,
    InvalidInputError,
    ShareExistsError,
    ShareIntegrityError,
    ShareNotFoundError,
    TokenFullError,
)
from node.hsm.memory import MemorySlot
from node.hsm.slot import MAX_SHARE_LEN, ShareId, Slot

from .helpers import move_blob, put_blob, read_blob


def test_implements_protocol(any_slot: Slot) -> None:
    assert isinstance(any_slot, Slot)


def test_store_load_round_trip(any_slot: Slot, sid: ShareId) -> None:
    share = secrets.token_bytes(32)
    any_slot.store_share(sid, share)
    loaded = any_slot.load_share(sid)
    assert isinstance(loaded, bytearray)
    assert loaded == share
    assert any_slot.has_share(sid)


def test_bytearray_share_and_bounds(any_slot: Slot, sid: ShareId) -> None:
    share = bytearray(secrets.token_bytes(MAX_SHARE_LEN))
    any_slot.store_share(sid, share)
    assert any_slot.load_share(sid) == share
    other = dataclasses.replace(sid, index=2)
    for bad in (b"", b"x" * (MAX_SHARE_LEN + 1), "not-bytes", 7):
        with pytest.raises(InvalidInputError):
            any_slot.store_share(other, bad)  # type: ignore[arg-type]
    assert not any_slot.has_share(other)


def test_blob_does_not_contain_plaintext(any_slot: Slot, sid: ShareId) -> None:
    share = secrets.token_bytes(32)
    any_slot.store_share(sid, share)
    blob = read_blob(any_slot, sid)  # type: ignore[arg-type]
    assert share not in blob
    assert len(blob) == 1 + aad.NONCE_LEN + 32 + aad.TAG_LEN


def test_existing_share_refused_unless_replace(any_slot: Slot, sid: ShareId) -> None:
    first, second = secrets.token_bytes(32), secrets.token_bytes(32)
    any_slot.store_share(sid, first)
    with pytest.raises(ShareExistsError):
        any_slot.store_share(sid, second)
    assert any_slot.load_share(sid) == first
    any_slot.store_share(sid, second, replace=True)
    assert any_slot.load_share(sid) == second
    assert any_slot.list_shares(sid.key_id) == [sid]


def test_list_is_sorted_and_filtered(any_slot: Slot, sid: ShareId) -> None:
    ids = [
        dataclasses.replace(sid, version=2),
        sid,
        dataclasses.replace(sid, generation=3),
        dataclasses.replace(sid, key_id=sid.key_id + "x"),
    ]
    for i in ids:
        any_slot.store_share(i, secrets.token_bytes(32))
    assert any_slot.list_shares() == sorted(ids)
    assert any_slot.list_shares(sid.key_id) == sorted(ids[:3])
    with pytest.raises(InvalidInputError):
        any_slot.list_shares("bad/key")


def test_destroy_erases(any_slot: Slot, sid: ShareId) -> None:
    any_slot.store_share(sid, secrets.token_bytes(32))
    any_slot.destroy_share(sid)
    assert not any_slot.has_share(sid)
    assert sid not in any_slot.list_shares()
    with pytest.raises(ShareNotFoundError):
        any_slot.load_share(sid)
    with pytest.raises(ShareNotFoundError):
        any_slot.destroy_share(sid)


@pytest.mark.parametrize(
    "field,value",
    [("version", 2), ("generation", 1), ("index", 9), ("key_id", "other-key")],
)
def test_blob_moved_to_another_identity_fails(
    any_slot: Slot, sid: ShareId, field: str, value: object
) -> None:
    any_slot.store_share(sid, secrets.token_bytes(32))
    target = dataclasses.replace(sid, **{field: value})
    move_blob(any_slot, sid, target)  # type: ignore[arg-type]
    assert any_slot.has_share(target)
    with pytest.raises(ShareIntegrityError, match="does not open"):
        any_slot.load_share(target)


def test_tampered_blob_fails(any_slot: Slot, sid: ShareId) -> None:
    any_slot.store_share(sid, secrets.token_bytes(32))
    blob = bytearray(read_blob(any_slot, sid))  # type: ignore[arg-type]
    blob[-1] ^= 1
    put_blob(any_slot, sid, bytes(blob))  # type: ignore[arg-type]
    with pytest.raises(ShareIntegrityError):
        any_slot.load_share(sid)
    put_blob(any_slot, sid, b"\x02" + bytes(blob[1:]))  # type: ignore[arg-type]
    with pytest.raises(ShareIntegrityError, match="unknown format"):
        any_slot.load_share(sid)


def test_identity_signature_verifies_with_cryptography(any_slot: Slot) -> None:
    pub = any_slot.identity_public_key()
    assert len(pub) == 32
    message = b"custody node hello"
    sig = any_slot.sign(message)
    assert len(sig) == 64
    verifier = Ed25519PublicKey.from_public_bytes(pub)
    verifier.verify(sig, message)
    with pytest.raises(InvalidSignature):
        verifier.verify(sig, message + b"!")
    with pytest.raises(InvalidInputError):
        any_slot.sign(b"x" * ((1 << 20) + 1))


def test_export_import_round_trip(any_slot: Slot, sid: ShareId) -> None:
    share = secrets.token_bytes(32)
    backup_key = secrets.token_bytes(32)
    any_slot.store_share(sid, share)
    blob = any_slot.export_share(sid, backup_key)
    assert share not in blob
    assert blob.startswith(aad.BACKUP_MAGIC)
    with pytest.raises(ShareExistsError):
        any_slot.import_share(blob, backup_key)
    any_slot.destroy_share(sid)
    assert any_slot.import_share(blob, backup_key) == sid
    assert any_slot.load_share(sid) == share
    assert any_slot.import_share(blob, backup_key, replace=True) == sid


def test_export_between_implementations(any_slot: Slot, sid: ShareId) -> None:
    """Memory and PKCS#11 slots share one backup format."""
    other = MemorySlot(any_slot.cluster_id)
    share = secrets.token_bytes(32)
    key = secrets.token_bytes(32)
    other.store_share(sid, share)
    assert any_slot.import_share(other.export_share(sid, key), key) == sid
    assert any_slot.load_share(sid) == share


def test_tampered_export_rejected(any_slot: Slot, sid: ShareId) -> None:
    any_slot.store_share(sid, secrets.token_bytes(32))
    key = secrets.token_bytes(32)
    blob = any_slot.export_share(sid, key)
    any_slot.destroy_share(sid)
    # Flip one bit anywhere after the magic/format/suite bytes: header or ciphertext.
    for pos in (7, len(blob) - 20, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises((BackupAuthenticationError, BackupFormatError)):
            any_slot.import_share(bytes(bad), key)
    # Header field change (generation) that still parses: only the AAD catches it.
    gen_pos = blob.index(sid.key_id.encode()) + len(sid.key_id) + 8 + 3
    bad = bytearray(blob)
    bad[gen_pos] ^= 0x01
    with pytest.raises(BackupAuthenticationError):
        any_slot.import_share(bytes(bad), key)
    with pytest.raises(BackupAuthenticationError):
        any_slot.import_share(blob, secrets.token_bytes(32))
    with pytest.raises(BackupFormatError):
        any_slot.import_share(blob[:-20], key)
    with pytest.raises(BackupFormatError):
        any_slot.import_share(b"XXXX" + blob[4:], key)
    with pytest.raises(InvalidInputError):
        any_slot.import_share(blob, b"short")
    assert not any_slot.has_share(sid)


def test_import_from_another_cluster_refused(any_slot: Slot, sid: ShareId) -> None:
    foreign = MemorySlot("other-cluster")
    key = secrets.token_bytes(32)
    foreign.store_share(sid, secrets.token_bytes(32))
    with pytest.raises(BackupFormatError, match="another cluster"):
        any_slot.import_share(foreign.export_share(sid, key), key)
    assert not any_slot.has_share(sid)


def test_capacity_is_enforced(any_slot: Slot, sid: ShareId) -> None:
    # The fixture configures 64 shares of capacity.
    for i in range(64):
        any_slot.store_share(dataclasses.replace(sid, index=i + 1), b"\x01" * 32)
    extra = dataclasses.replace(sid, index=100)
    with pytest.raises(TokenFullError):
        any_slot.store_share(extra, b"\x02" * 32)
    assert not any_slot.has_share(extra)
    # Replacing an existing share needs no new room.
    any_slot.store_share(sid, b"\x03" * 32, replace=True)
    assert any_slot.load_share(sid) == b"\x03" * 32


def test_closed_slot_refuses(any_slot: Slot, sid: ShareId) -> None:
    any_slot.store_share(sid, b"\x05" * 32)
    any_slot.destroy_share(sid)
    any_slot.close()
    with pytest.raises(HsmError, match="closed"):
        any_slot.load_share(sid)
    with pytest.raises(HsmError, match="closed"):
        any_slot.sign(b"m")


def test_moved_blob_no_longer_answers_to_its_old_id(any_slot: Slot, sid: ShareId) -> None:
    """Lookups re-check what they find (the PKCS#11 slot caches object handles)."""
    any_slot.store_share(sid, secrets.token_bytes(32))
    assert any_slot.load_share(sid)
    target = dataclasses.replace(sid, generation=sid.generation + 1)
    move_blob(any_slot, sid, target)  # type: ignore[arg-type]
    assert not any_slot.has_share(sid)
    with pytest.raises(ShareNotFoundError):
        any_slot.load_share(sid)


def test_share_id_type_checked(any_slot: Slot) -> None:
    for op in (any_slot.load_share, any_slot.has_share, any_slot.destroy_share):
        with pytest.raises(InvalidInputError):
            op(("k", 1, 1, 0))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        any_slot.store_share(("k", 1, 1, 0), b"s" * 32)  # type: ignore[arg-type]
