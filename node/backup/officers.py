"""Recovery officers' keys: an X25519 pair (their piece of a backup key is sealed to it)
and an Ed25519 pair (they sign the releases they make).

Officers are not registered in the replicated state yet (docs/recovery.md): for
now an officer is whoever holds the private file that `custody backup
officer-keygen` wrote, and a bundle names its officers by the public files given
to `custody backup create`. Files:

- ``NAME.officer.json`` (public, 0644): ``{"format", "name", "x25519", "ed25519"}``,
  keys as raw 32-byte lower-case hex;
- ``NAME.officer-key.json`` (private, 0600, refused if group/other-readable):
  the same plus ``x25519_private`` and ``ed25519_private``.

The private file is not encrypted with a passphrase: keep it on the officer's
own (offline) machine or removable medium (docs/backup.md, "Gaps").
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from node.protocols import sealbox
from node.state.ed25519 import is_strict_public_key

from .formats import (
    MAX_SMALL_JSON_BYTES,
    NAME_RE,
    OFFICER_FORMAT,
    OFFICER_KEY_FORMAT,
    BackupError,
    canonical_json,
    fields,
    hex_bytes,
    parse_json,
    read_bounded,
    read_private,
    text,
    write_file,
)

PUBLIC_SUFFIX = ".officer.json"
PRIVATE_SUFFIX = ".officer-key.json"


@dataclass(frozen=True)
class Officer:
    """An officer as a bundle names it: name and public keys."""

    name: str
    x25519: bytes
    ed25519: bytes

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "x25519": self.x25519.hex(), "ed25519": self.ed25519.hex()}


@dataclass(frozen=True, repr=False)
class OfficerKey:
    """An officer's private keys (never printed)."""

    officer: Officer
    x25519_private: X25519PrivateKey
    ed25519_private: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"OfficerKey({self.officer.name!r}, <private>)"


def check_officer(name: object, x25519: object, ed25519: object, what: str) -> Officer:
    if type(name) is not str or not NAME_RE.fullmatch(name):
        raise BackupError(f"{what}: officer name must be 1-64 characters of [A-Za-z0-9._-]")
    try:
        x = sealbox.check_public_key(x25519, "x25519 key")
    except sealbox.SealError as exc:
        raise BackupError(f"{what}: {exc}") from None
    if not isinstance(ed25519, bytes) or not is_strict_public_key(ed25519):
        raise BackupError(f"{what}: ed25519 key is not a valid prime-order Ed25519 key")
    return Officer(name, x, bytes(ed25519))


def _raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def generate(name: str) -> OfficerKey:
    """Fresh key pairs for officer `name` (from the OS RNG)."""
    x = X25519PrivateKey.generate()
    e = Ed25519PrivateKey.generate()
    officer = check_officer(name, _raw_public(x), _raw_public(e), "new officer")
    return OfficerKey(officer, x, e)


def write_keys(key: OfficerKey, out_dir: Path) -> tuple[Path, Path]:
    """Write NAME.officer.json (0644) and NAME.officer-key.json (0600); never overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = key.officer.name
    public = out_dir / f"{name}{PUBLIC_SUFFIX}"
    private = out_dir / f"{name}{PRIVATE_SUFFIX}"
    for p in (public, private):
        if p.exists() or p.is_symlink():
            raise BackupError(f"{p} already exists; not overwriting an officer's keys")
    doc = {"format": OFFICER_FORMAT, **key.officer.to_json()}
    secret = {
        "format": OFFICER_KEY_FORMAT, **key.officer.to_json(),
        "x25519_private": _raw_private(key.x25519_private).hex(),
        "ed25519_private": _raw_private(key.ed25519_private).hex(),
    }  # fmt: skip
    write_file(private, canonical_json(secret), 0o600)
    write_file(public, canonical_json(doc), 0o644)
    return public, private


def load_public(path: Path) -> Officer:
    """An officer's public file."""
    what = f"officer file {path}"
    doc = parse_json(read_bounded(path, MAX_SMALL_JSON_BYTES, "officer file"), what)
    if doc.get("format") != OFFICER_FORMAT:
        hint = " (this is a PRIVATE key file: give the .officer.json)" \
            if doc.get("format") == OFFICER_KEY_FORMAT else ""  # fmt: skip
        raise BackupError(f"{what}: format must be {OFFICER_FORMAT!r}{hint}")
    fields(doc, {"format", "name", "x25519", "ed25519"}, what)
    return check_officer(text(doc, "name", what), hex_bytes(doc, "x25519", what, 32),
                         hex_bytes(doc, "ed25519", what, 32), what)  # fmt: skip


def load_private(path: Path) -> OfficerKey:
    """An officer's private file; the public halves must match the private ones."""
    what = f"officer key file {path}"
    raw = read_private(path, MAX_SMALL_JSON_BYTES, "officer key file")
    doc = parse_json(raw, what)
    if doc.get("format") != OFFICER_KEY_FORMAT:
        raise BackupError(f"{what}: format must be {OFFICER_KEY_FORMAT!r}")
    fields(doc, {"format", "name", "x25519", "ed25519", "x25519_private", "ed25519_private"},
           what)  # fmt: skip
    officer = check_officer(text(doc, "name", what), hex_bytes(doc, "x25519", what, 32),
                            hex_bytes(doc, "ed25519", what, 32), what)  # fmt: skip
    x = X25519PrivateKey.from_private_bytes(hex_bytes(doc, "x25519_private", what, 32))
    e = Ed25519PrivateKey.from_private_bytes(hex_bytes(doc, "ed25519_private", what, 32))
    if not (hmac.compare_digest(_raw_public(x), officer.x25519)
            and hmac.compare_digest(_raw_public(e), officer.ed25519)):  # fmt: skip
        raise BackupError(f"{what}: the public keys do not match the private keys")
    return OfficerKey(officer, x, e)


def check_officers(officers: list[Officer], k: object) -> tuple[list[Officer], int]:
    """2..MAX_OFFICERS distinct officers (names and keys), sorted by name; 2 <= k <= m."""
    from .formats import MAX_OFFICERS

    if not 2 <= len(officers) <= MAX_OFFICERS:
        raise BackupError(f"a bundle needs 2..{MAX_OFFICERS} officers, got {len(officers)}")
    ordered = sorted(officers, key=lambda o: o.name)
    names = [o.name for o in ordered]
    if len(set(names)) != len(names):
        raise BackupError(f"officer names must be distinct: {names}")
    keys = [o.x25519 for o in ordered] + [o.ed25519 for o in ordered]
    if len(set(keys)) != len(keys):
        raise BackupError("two officers share a key")
    if type(k) is not int or not 2 <= k <= len(ordered):
        raise BackupError(f"k must be an integer in 2..{len(ordered)} (the number of officers)")
    return ordered, k


def private_dir_ok(path: Path) -> bool:
    """Whether a key directory is private to its owner (advice only)."""
    try:
        return not os.stat(path).st_mode & 0o077
    except OSError:
        return False
