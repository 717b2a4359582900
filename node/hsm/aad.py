"""Byte formats of the slot: share-object AAD, object values, labels, backup blobs.

Pure functions, shared by the PKCS#11 and the in-memory slot so both bind and
parse identically. Every encoding is length-prefixed and starts with its own
context string, so no byte string means two things.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.hsm.errors import (
    BackupAuthenticationError,
    BackupFormatError,
    InvalidInputError,
    ShareIntegrityError,
)
from node.hsm.slot import MAX_SHARE_LEN, ShareId, check_backup_key, check_identifier

SHARE_AAD_CONTEXT = b"custody-cluster/hsm/share-object/v1"
BACKUP_AAD_CONTEXT = b"custody-cluster/hsm/share-backup/v1"

NONCE_LEN = 12
TAG_LEN = 16

# Share object value: FORMAT (1 byte) || nonce (12) || AES-GCM ciphertext+tag.
SHARE_VALUE_FORMAT = 1
MAX_SHARE_VALUE_LEN = 1 + NONCE_LEN + MAX_SHARE_LEN + TAG_LEN

# Object labels. Key ids cannot contain '/', so labels parse unambiguously.
LABEL_PREFIX = "custody/share/v1/"
TEMP_LABEL_PREFIX = "custody/tmp/"
OLD_LABEL_PREFIX = "custody/old/"
APPLICATION = "custody-cluster"

# Backup blob (all of it before the ciphertext is authenticated as AAD):
#   MAGIC "CCSB" | FORMAT u8 | SUITE u8 | len u8 + cluster id | len u8 + key id |
#   version u32 | index u32 | generation u32 | share length u8 | nonce (12) |
#   AES-256-GCM ciphertext + tag (share length + 16)
BACKUP_MAGIC = b"CCSB"
BACKUP_FORMAT = 1
BACKUP_SUITE_AES256_GCM = 1
MAX_BACKUP_BLOB_LEN = 512


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def share_aad(cluster_id: str, share_id: ShareId) -> bytes:
    """AAD binding a share object to its cluster, key, version, index and generation."""
    check_identifier(cluster_id, "cluster_id")
    return (
        _lp(SHARE_AAD_CONTEXT)
        + _lp(cluster_id.encode())
        + _lp(share_id.key_id.encode())
        + struct.pack(">III", share_id.version, share_id.index, share_id.generation)
    )


def share_label(share_id: ShareId) -> str:
    """The CKA_LABEL of a stored share object."""
    if not isinstance(share_id, ShareId):
        raise InvalidInputError("share_id must be a ShareId")
    return (
        f"{LABEL_PREFIX}{share_id.key_id}/{share_id.version}/{share_id.index}/{share_id.generation}"
    )


def parse_share_label(label: str) -> ShareId | None:
    """The `ShareId` a final share label names, or None for any other label."""
    if not label.startswith(LABEL_PREFIX):
        return None
    parts = label[len(LABEL_PREFIX) :].split("/")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
        return None
    # Reject non-canonical numbers ("01") so one share has exactly one label.
    if any(p != str(int(p)) for p in parts[1:]):
        return None
    try:
        return ShareId(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))
    except ValueError:
        return None


def pack_share_value(nonce: bytes, ciphertext: bytes) -> bytes:
    """The CKA_VALUE of a share object."""
    if len(nonce) != NONCE_LEN or not TAG_LEN < len(ciphertext) <= MAX_SHARE_LEN + TAG_LEN:
        raise ShareIntegrityError("share ciphertext has an invalid size")
    return bytes([SHARE_VALUE_FORMAT]) + nonce + ciphertext


def unpack_share_value(value: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of a share object's value; `ShareIntegrityError` if malformed."""
    if not 1 + NONCE_LEN + TAG_LEN < len(value) <= MAX_SHARE_VALUE_LEN:
        raise ShareIntegrityError("share object value has an invalid size")
    if value[0] != SHARE_VALUE_FORMAT:
        raise ShareIntegrityError("share object value has an unknown format")
    return value[1 : 1 + NONCE_LEN], value[1 + NONCE_LEN :]


@dataclass(frozen=True)
class BackupHeader:
    """The authenticated, cleartext part of an exported share blob."""

    cluster_id: str
    share_id: ShareId
    share_len: int

    def encode(self) -> bytes:
        cid = self.cluster_id.encode()
        kid = self.share_id.key_id.encode()
        return (
            BACKUP_MAGIC
            + bytes([BACKUP_FORMAT, BACKUP_SUITE_AES256_GCM, len(cid)])
            + cid
            + bytes([len(kid)])
            + kid
            + struct.pack(
                ">IIIB",
                self.share_id.version,
                self.share_id.index,
                self.share_id.generation,
                self.share_len,
            )
        )


def seal_backup(
    cluster_id: str, share_id: ShareId, share: bytes | bytearray, backup_key: bytes, nonce: bytes
) -> bytes:
    """Encrypt a share into a self-describing backup blob (AES-256-GCM, header as AAD)."""
    check_backup_key(backup_key)
    check_identifier(cluster_id, "cluster_id")
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    if not 1 <= len(share) <= MAX_SHARE_LEN:
        raise ValueError("share has an invalid length")
    header = BackupHeader(cluster_id, share_id, len(share)).encode() + nonce
    ct = AESGCM(bytes(backup_key)).encrypt(nonce, bytes(share), _lp(BACKUP_AAD_CONTEXT) + header)
    return header + ct


def parse_backup_header(blob: bytes) -> tuple[BackupHeader, bytes, bytes, bytes]:
    """(header, header bytes incl. nonce, nonce, ciphertext) of a blob; checks structure only."""
    if not isinstance(blob, bytes | bytearray) or not len(blob) <= MAX_BACKUP_BLOB_LEN:
        raise BackupFormatError("backup blob must be bytes of bounded size")
    blob = bytes(blob)
    if blob[:4] != BACKUP_MAGIC:
        raise BackupFormatError("not a share backup blob (bad magic)")
    pos = 4
    try:
        fmt, suite, cid_len = blob[pos], blob[pos + 1], blob[pos + 2]
        if fmt != BACKUP_FORMAT:
            raise BackupFormatError(f"unsupported backup format version {fmt}")
        if suite != BACKUP_SUITE_AES256_GCM:
            raise BackupFormatError(f"unsupported backup cipher suite {suite}")
        pos += 3
        cid = blob[pos : pos + cid_len]
        pos += cid_len
        kid_len = blob[pos]
        pos += 1
        kid = blob[pos : pos + kid_len]
        pos += kid_len
        version, index, generation, share_len = struct.unpack_from(">IIIB", blob, pos)
        pos += 13
        nonce = blob[pos : pos + NONCE_LEN]
        pos += NONCE_LEN
    except (IndexError, struct.error) as exc:
        raise BackupFormatError("backup blob is truncated") from exc
    ct = blob[pos:]
    if len(cid) != cid_len or len(kid) != kid_len or len(nonce) != NONCE_LEN:
        raise BackupFormatError("backup blob is truncated")
    if not 1 <= share_len <= MAX_SHARE_LEN or len(ct) != share_len + TAG_LEN:
        raise BackupFormatError("backup blob ciphertext has an invalid size (truncated?)")
    try:
        header = BackupHeader(
            cid.decode("ascii"),
            ShareId(kid.decode("ascii"), version, index, generation),
            share_len,
        )
        check_identifier(header.cluster_id, "cluster_id")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupFormatError(f"backup blob header is invalid: {exc}") from exc
    return header, blob[:pos], nonce, ct


def open_backup(blob: bytes, backup_key: bytes) -> tuple[BackupHeader, bytearray]:
    """Authenticate and decrypt a backup blob; returns the header and the share (zero it)."""
    check_backup_key(backup_key)
    header, header_bytes, nonce, ct = parse_backup_header(blob)
    try:
        share = AESGCM(bytes(backup_key)).decrypt(nonce, ct, _lp(BACKUP_AAD_CONTEXT) + header_bytes)
    except InvalidTag as exc:
        raise BackupAuthenticationError(
            "backup blob does not authenticate: wrong backup key or tampered blob"
        ) from exc
    return header, bytearray(share)


def zero(buf: bytearray) -> None:
    """Overwrite a buffer we own (best effort: CPython may hold other copies)."""
    buf[:] = bytes(len(buf))
