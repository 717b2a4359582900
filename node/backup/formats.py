"""Byte and JSON formats of a backup bundle, its bounds, and the key schedule.

Pure helpers (plus bounded, symlink-refusing file reads and atomic writes) shared by
`bundle`, `officers`, `release` and `restore`. Every hash, key derivation and AAD
starts with its own `custody-cluster/v1/backup-...` context string, so no value
means two things. JSON documents are written canonically (sorted keys, no spaces,
ASCII) and read back only if they are byte-identical to their canonical form: one
document, one encoding, one hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# ------------------------------------------------------------------ versions, names

BUNDLE_FORMAT = "custody-backup/v1"
PIECES_FORMAT = "custody-backup-pieces/v1"
OFFICER_FORMAT = "custody-backup-officer/v1"
OFFICER_KEY_FORMAT = "custody-backup-officer-key/v1"
REQUEST_FORMAT = "custody-backup-restore-request/v1"
RESTORE_KEY_FORMAT = "custody-backup-restore-key/v1"
RELEASE_FORMAT = "custody-backup-release/v1"

MANIFEST_FILE = "manifest.json"
MAC_FILE = "manifest.mac"
PIECES_FILE = "pieces.json"
SNAPSHOT_FILE = "snapshot.enc"
SUMS_FILE = "SHA256SUMS"
SHARES_DIR = "shares"
TOP_LEVEL = (MANIFEST_FILE, MAC_FILE, PIECES_FILE, SNAPSHOT_FILE, SUMS_FILE)

# ------------------------------------------------------------------ domains

DOMAIN = b"custody-cluster/v1/backup"
MANIFEST_HASH_DOMAIN = b"custody-cluster/v1/backup-manifest"
MAC_DOMAIN = b"custody-cluster/v1/backup-manifest-mac"
KDF_SALT = b"custody-cluster/v1/backup-kdf"
KDF_MAC = b"custody-cluster/v1/backup-key/manifest-mac"
KDF_SHARES = b"custody-cluster/v1/backup-key/share-export"
KDF_SNAPSHOT = b"custody-cluster/v1/backup-key/snapshot"
SNAPSHOT_AAD_DOMAIN = b"custody-cluster/v1/backup-snapshot"
PIECE_DOMAIN = b"custody-cluster/v1/backup-piece"
RELEASE_DOMAIN = b"custody-cluster/v1/backup-release"
RELEASE_SIG_DOMAIN = b"custody-cluster/v1/backup-release-signature"

# ------------------------------------------------------------------ bounds

BACKUP_KEY_LEN = 32
BUNDLE_ID_LEN = 16
MAX_OFFICERS = 32
MAX_SHARES = 65_536
MAX_MANIFEST_BYTES = 16 << 20
MAX_SUMS_BYTES = 16 << 20
MAX_MAC_BYTES = 128
MAX_PIECES_BYTES = 64 << 10
MAX_SMALL_JSON_BYTES = 8 << 10  # officer files, restore requests and keys, releases
MAX_SHARE_FILE_BYTES = 512  # node.hsm.aad.MAX_BACKUP_BLOB_LEN
MAX_SNAPSHOT_FILE_BYTES = (1 << 30) + (1 << 20)  # node.state MAX_SNAPSHOT_BYTES + framing
MAX_ENCRYPTED_SNAPSHOT_BYTES = MAX_SNAPSHOT_FILE_BYTES + 64
MAX_BUNDLE_ENTRIES = MAX_SHARES + 16

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
NODE_RE = re.compile(r"node-([1-9][0-9]?)")


class BackupError(ValueError):
    """A bundle, officer file, request or release is unusable, or a check failed.

    The message says what and where; it never contains key material.
    """


# ------------------------------------------------------------------ encodings


def lp(data: bytes) -> bytes:
    """u32 length prefix || data."""
    return struct.pack(">I", len(data)) + data


def canonical_json(doc: Any) -> bytes:
    """The one byte encoding of a JSON document that this package writes and accepts."""
    return (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            + "\n").encode("ascii")  # fmt: skip


def parse_canonical_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object that must be in canonical form (so its hash is unambiguous)."""
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BackupError(f"{what} is not ASCII JSON: {type(exc).__name__}") from None
    if type(doc) is not dict:
        raise BackupError(f"{what} must be a JSON object")
    if canonical_json(doc) != data:
        raise BackupError(f"{what} is not in canonical form (edited by hand?)")
    return doc


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object (any formatting) from a small file."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BackupError(f"{what} is not JSON: {type(exc).__name__}") from None
    if type(doc) is not dict:
        raise BackupError(f"{what} must be a JSON object")
    return doc


def fields(doc: dict[str, Any], names: set[str], what: str) -> None:
    """Exactly these fields, no more, no fewer."""
    if set(doc) != names:
        missing, extra = sorted(names - set(doc)), sorted(set(doc) - names)
        raise BackupError(f"{what}: fields must be exactly {sorted(names)} "
                          f"(missing {missing}, unknown {extra})")  # fmt: skip


def text(doc: dict[str, Any], key: str, what: str, pattern: re.Pattern[str] | None = None,
         max_chars: int = 64) -> str:  # fmt: skip
    value = doc.get(key)
    if type(value) is not str or not 1 <= len(value) <= max_chars:
        raise BackupError(f"{what}: {key} must be a string of 1..{max_chars} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise BackupError(f"{what}: {key} {value[:80]!r} is malformed")
    return value


def integer(doc: dict[str, Any], key: str, what: str, low: int, high: int) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        raise BackupError(f"{what}: {key} must be an integer in {low}..{high}")
    return value


def hex_bytes(doc: dict[str, Any], key: str, what: str, size: int) -> bytes:
    """Lower-case hex of exactly `size` bytes."""
    value = doc.get(key)
    if type(value) is not str or len(value) != 2 * size or not re.fullmatch(r"[0-9a-f]*", value):
        raise BackupError(f"{what}: {key} must be {2 * size} lower-case hex digits")
    return bytes.fromhex(value)


def hex_var(doc: dict[str, Any], key: str, what: str, max_size: int) -> bytes:
    value = doc.get(key)
    if (type(value) is not str or not 2 <= len(value) <= 2 * max_size or len(value) % 2
            or not re.fullmatch(r"[0-9a-f]*", value)):  # fmt: skip
        raise BackupError(f"{what}: {key} must be lower-case hex of 1..{max_size} bytes")
    return bytes.fromhex(value)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_hash(manifest_bytes: bytes) -> bytes:
    """The domain-separated digest that pieces, releases and the MAC bind."""
    return hashlib.sha256(lp(MANIFEST_HASH_DOMAIN) + manifest_bytes).digest()


# ------------------------------------------------------------------ key schedule


def derive(backup_key: bytes | bytearray, info: bytes, bundle_id: bytes) -> bytes:
    """A 32-byte sub-key of the backup key, bound to its purpose and to the bundle."""
    if len(backup_key) != BACKUP_KEY_LEN:
        raise BackupError("the backup key must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=KDF_SALT,
                info=lp(info) + lp(bundle_id)).derive(bytes(backup_key))  # fmt: skip


def manifest_mac(backup_key: bytes | bytearray, bundle_id: bytes, mhash: bytes) -> bytes:
    """HMAC-SHA256 over the manifest digest, under the backup key's MAC sub-key."""
    key = derive(backup_key, KDF_MAC, bundle_id)
    return hmac.new(key, lp(MAC_DOMAIN) + lp(bundle_id) + mhash, hashlib.sha256).digest()


def snapshot_aad(bundle_id: bytes, cluster_id: str, node: str, index: int, term: int) -> bytes:
    return (lp(SNAPSHOT_AAD_DOMAIN) + lp(bundle_id) + lp(cluster_id.encode())
            + lp(node.encode()) + struct.pack(">QQ", index, term))  # fmt: skip


def piece_aad(bundle_id: bytes, mhash: bytes, officer: str, identifier: int, k: int,
              m: int) -> bytes:  # fmt: skip
    return (lp(PIECE_DOMAIN) + lp(bundle_id) + mhash + lp(officer.encode())
            + bytes([identifier, k, m]))  # fmt: skip


def zero(buf: bytearray) -> None:
    """Overwrite a buffer we own (best effort: CPython may hold other copies)."""
    buf[:] = bytes(len(buf))


# ------------------------------------------------------------------ files


def read_bounded(path: Path, max_bytes: int, what: str) -> bytes:
    """A regular file (never through a symlink) of at most `max_bytes`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackupError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot open {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BackupError(f"{path}: {what} is not a regular file")
        if st.st_size > max_bytes:
            raise BackupError(f"{path}: {what} is larger than {max_bytes} bytes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BackupError(f"{path}: {what} is larger than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_private(path: Path, max_bytes: int, what: str) -> bytes:
    """Like `read_bounded`, and refuse a file group or others can read (a private key)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BackupError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot stat {what}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        raise BackupError(f"{path}: {what} is accessible by group or others "
                          f"(mode {st.st_mode & 0o777:o}); chmod 600 it")  # fmt: skip
    return read_bounded(path, max_bytes, what)


def write_file(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = True) -> None:
    """Write and fsync a file with exactly `mode`; refuse to overwrite unless told."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise BackupError(f"{path} already exists; not overwriting it") from None
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
