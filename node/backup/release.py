"""Offline officer release: officers open their piece on their own machine and re-seal it
to a one-time restore key, so that no officer's private key ever travels to the node.

    node side:  custody backup request BUNDLE --out DIR
                -> DIR/restore-request.json (public) and DIR/restore.key (0600)
    officer:    custody backup release BUNDLE --officer-key ME.officer-key.json
                    --to restore-request.json --out ME.release.json
    node side:  custody backup restore BUNDLE --config node.toml
                    --restore-key DIR/restore.key --release A.release.json --release B...

A release is the officer's piece sealed with sealbox from the officer's static X25519
key to the request's restore key (so only the holder of restore.key can open it, and
it provably comes from that officer's X25519 key), with an AAD binding the bundle id,
the manifest digest, the request id, the officer's name and position, k and m; the
whole release is also signed with the officer's Ed25519 key. A release therefore
opens for one bundle and one restore request only. The restore key is random,
single-use, and should be deleted after the restore.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from node.protocols import sealbox
from node.state.ed25519 import is_strict_signature
from shares import gf256

from .bundle import Bundle, check_piece, open_piece
from .formats import (
    BUNDLE_ID_LEN,
    MAX_SMALL_JSON_BYTES,
    NAME_RE,
    NODE_RE,
    RELEASE_DOMAIN,
    RELEASE_FORMAT,
    RELEASE_SIG_DOMAIN,
    REQUEST_FORMAT,
    RESTORE_KEY_FORMAT,
    BackupError,
    canonical_json,
    fields,
    hex_bytes,
    hex_var,
    integer,
    lp,
    parse_json,
    read_bounded,
    read_private,
    text,
    write_file,
    zero,
)
from .officers import OfficerKey

REQUEST_FILE = "restore-request.json"
RESTORE_KEY_FILE = "restore.key"
_REQUEST_ID_LEN = 16


def _release_aad(bundle: Bundle, request_id: bytes, officer: str, pos: int,
                 restore_pub: bytes) -> bytes:  # fmt: skip
    m = bundle.manifest
    return (lp(RELEASE_DOMAIN) + lp(m.bundle_id) + bundle.mhash + lp(request_id)
            + lp(officer.encode()) + bytes([pos, m.k, len(m.officers)]) + restore_pub)  # fmt: skip


def _signed_bytes(body: dict[str, Any]) -> bytes:
    return lp(RELEASE_SIG_DOMAIN) + canonical_json(body)


# ------------------------------------------------------------------ request (node side)


def make_request(bundle: Bundle, out_dir: Path) -> tuple[Path, Path]:
    """A fresh restore key pair for this bundle: the public request and the 0600 key file."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = X25519PrivateKey.generate()
    request_id = os.urandom(_REQUEST_ID_LEN)
    m = bundle.manifest
    req = {
        "format": REQUEST_FORMAT, "bundle_id": m.bundle_id.hex(),
        "manifest_sha256": bundle.mhash.hex(), "cluster_id": m.cluster_id, "node": m.node,
        "request_id": request_id.hex(), "restore_x25519": sealbox.public_bytes(private).hex(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    raw = bytearray(private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    key = {"format": RESTORE_KEY_FORMAT, "bundle_id": m.bundle_id.hex(),
           "request_id": request_id.hex(), "x25519_private": raw.hex()}  # fmt: skip
    zero(raw)
    key_path, req_path = out_dir / RESTORE_KEY_FILE, out_dir / REQUEST_FILE
    write_file(key_path, canonical_json(key), 0o600)
    write_file(req_path, canonical_json(req), 0o644)
    return req_path, key_path


def load_request(path: Path, bundle: Bundle) -> dict[str, Any]:
    what = f"restore request {path}"
    doc = parse_json(read_bounded(path, MAX_SMALL_JSON_BYTES, "restore request"), what)
    fields(doc, {"format", "bundle_id", "manifest_sha256", "cluster_id", "node", "request_id",
                 "restore_x25519", "created_at"}, what)  # fmt: skip
    if doc["format"] != REQUEST_FORMAT:
        raise BackupError(f"{what}: format must be {REQUEST_FORMAT!r}")
    m = bundle.manifest
    if (hex_bytes(doc, "bundle_id", what, BUNDLE_ID_LEN) != m.bundle_id
            or not hmac.compare_digest(hex_bytes(doc, "manifest_sha256", what, 32), bundle.mhash)
            or text(doc, "cluster_id", what, NAME_RE) != m.cluster_id
            or text(doc, "node", what, NODE_RE, max_chars=8) != m.node):  # fmt: skip
        raise BackupError(f"{what}: is for another bundle, manifest, cluster or node")
    hex_bytes(doc, "request_id", what, _REQUEST_ID_LEN)
    text(doc, "created_at", what, max_chars=20)
    try:
        sealbox.check_public_key(hex_bytes(doc, "restore_x25519", what, 32), "restore key")
    except sealbox.SealError as exc:
        raise BackupError(f"{what}: {exc}") from None
    return doc


# ------------------------------------------------------------------ release (officer side)


def make_release(bundle: Bundle, key: OfficerKey, request: dict[str, Any]) -> dict[str, Any]:
    """Open this officer's piece and re-seal it to the request's restore key; signed."""
    m = bundle.manifest
    pos, officer = m.officer(key.officer.name)
    piece = open_piece(bundle, key)  # checks the key is the one the bundle names
    restore_pub = bytes.fromhex(request["restore_x25519"])
    request_id = bytes.fromhex(request["request_id"])
    raw = bytearray(piece.to_bytes())
    try:
        box = sealbox.seal(key.x25519_private, officer.x25519, restore_pub, bytes(raw),
                           _release_aad(bundle, request_id, officer.name, pos, restore_pub),
                           os.urandom)  # fmt: skip
    except sealbox.SealError as exc:
        raise BackupError(f"cannot seal the release: {exc}") from None
    finally:
        zero(raw)
    body = {
        "format": RELEASE_FORMAT, "bundle_id": m.bundle_id.hex(),
        "manifest_sha256": bundle.mhash.hex(), "request_id": request_id.hex(),
        "officer": officer.name, "identifier": pos, "restore_x25519": restore_pub.hex(),
        "box": box.hex(),
    }  # fmt: skip
    return {**body, "signature": key.ed25519_private.sign(_signed_bytes(body)).hex()}


# ------------------------------------------------------------------ open (node side)


def load_restore_key(path: Path, bundle: Bundle) -> tuple[X25519PrivateKey, bytes]:
    """(private key, request id) of a restore key file made for this bundle."""
    what = f"restore key {path}"
    doc = parse_json(read_private(path, MAX_SMALL_JSON_BYTES, "restore key"), what)
    fields(doc, {"format", "bundle_id", "request_id", "x25519_private"}, what)
    if doc["format"] != RESTORE_KEY_FORMAT:
        raise BackupError(f"{what}: format must be {RESTORE_KEY_FORMAT!r}")
    if hex_bytes(doc, "bundle_id", what, BUNDLE_ID_LEN) != bundle.manifest.bundle_id:
        raise BackupError(f"{what}: was made for another bundle")
    raw = bytearray(hex_bytes(doc, "x25519_private", what, 32))
    try:
        return (X25519PrivateKey.from_private_bytes(bytes(raw)),
                hex_bytes(doc, "request_id", what, _REQUEST_ID_LEN))  # fmt: skip
    finally:
        zero(raw)


def open_release(bundle: Bundle, path: Path, private: X25519PrivateKey,
                 request_id: bytes) -> tuple[str, gf256.ByteShare]:  # fmt: skip
    what = f"release {path}"
    doc = parse_json(read_bounded(path, MAX_SMALL_JSON_BYTES, "release"), what)
    fields(doc, {"format", "bundle_id", "manifest_sha256", "request_id", "officer", "identifier",
                 "restore_x25519", "box", "signature"}, what)  # fmt: skip
    if doc["format"] != RELEASE_FORMAT:
        raise BackupError(f"{what}: format must be {RELEASE_FORMAT!r}")
    m = bundle.manifest
    if (hex_bytes(doc, "bundle_id", what, BUNDLE_ID_LEN) != m.bundle_id
            or not hmac.compare_digest(hex_bytes(doc, "manifest_sha256", what, 32), bundle.mhash)):
        raise BackupError(f"{what}: is for another bundle or manifest")
    if not hmac.compare_digest(hex_bytes(doc, "request_id", what, _REQUEST_ID_LEN), request_id):
        raise BackupError(f"{what}: answers another restore request")
    restore_pub = sealbox.public_bytes(private)
    if not hmac.compare_digest(hex_bytes(doc, "restore_x25519", what, 32), restore_pub):
        raise BackupError(f"{what}: is sealed to another restore key")
    pos, officer = m.officer(text(doc, "officer", what, NAME_RE))
    if integer(doc, "identifier", what, 1, 255) != pos:
        raise BackupError(f"{what}: names the wrong position for officer {officer.name}")
    signature = hex_bytes(doc, "signature", what, 64)
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        if not is_strict_signature(signature):
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(officer.ed25519).verify(signature, _signed_bytes(body))
    except InvalidSignature:
        raise BackupError(f"{what}: officer {officer.name}'s signature does not verify") from None
    box = hex_var(doc, "box", what, sealbox.MAX_SEALED)
    try:
        raw = bytearray(sealbox.open_(private, restore_pub, officer.x25519, box,
                                      _release_aad(bundle, request_id, officer.name, pos,
                                                   restore_pub)))  # fmt: skip
    except sealbox.SealError:
        raise BackupError(f"{what}: does not open with this restore key") from None
    try:
        return officer.name, check_piece(bytes(raw), bundle, pos)
    finally:
        zero(raw)


def open_releases(bundle: Bundle, restore_key: Path,
                  releases: Sequence[Path]) -> dict[str, gf256.ByteShare]:  # fmt: skip
    private, request_id = load_restore_key(restore_key, bundle)
    out: dict[str, gf256.ByteShare] = {}
    for path in releases:
        name, piece = open_release(bundle, path, private, request_id)
        if name in out:
            raise BackupError(f"two releases from officer {name}")
        out[name] = piece
    return out
