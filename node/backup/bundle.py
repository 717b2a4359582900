"""A node's backup bundle: make it, check it, unlock it with k officers, open it.

Layout of a bundle directory (docs/backup.md has the full description):

    manifest.json   canonical JSON: format, bundle id, cluster id, genesis, node name and
                    index, creation time, the snapshot's index/term/size/SHA-256, every
                    share's id/size/SHA-256, the officers (name, X25519, Ed25519), k
    manifest.mac    HMAC-SHA256 over the manifest digest under a sub-key of the backup key
    pieces.json     the backup key split k-of-m (GF(2^8), tagged) and each piece sealed
                    to one officer's X25519 key, bound to the bundle id, the manifest
                    digest, the officer's name and position, k and m
    snapshot.enc    the node's newest Raft snapshot file, AES-256-GCM under a sub-key
    shares/*.blob   every share object of the node's slot, `Slot.export_share` blobs
                    under a sub-key (their headers name cluster, key, version, index,
                    generation in the clear)
    SHA256SUMS      plain SHA-256 of every other file (`sha256sum -c` format)

What can be checked by whom:
- anyone (`inspect`): structure, bounds, SHA256SUMS, the manifest's own hashes, that
  every share blob's clear header matches the manifest. This is *integrity* against
  accidents: whoever can write the bundle can rewrite all of it consistently;
- k officers (`unlock` then `open_contents`): the pieces open only for the manifest
  they were sealed with, the combined key carries its own tag (gf256), the manifest
  MAC verifies, the snapshot decrypts and decodes for this cluster, every share blob
  opens and matches the verification share the snapshot's state publishes for it.
  That is *authenticity*: only the creator (who held the backup key for the moment
  it made the bundle) or k officers together can make a bundle that passes.

The backup key is 32 random bytes, held in a `bytearray` that is zeroed after use;
it is never written anywhere, only its k-of-m pieces sealed to the officers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.hsm import aad
from node.hsm.errors import HsmError
from node.hsm.slot import ShareId
from node.protocols import sealbox
from node.protocols.batch import matches
from node.state.model import State, VersionState
from shares import gf256
from shares.errors import SharesError

from . import snapshot as snapmod
from .formats import (
    BACKUP_KEY_LEN,
    BUNDLE_FORMAT,
    BUNDLE_ID_LEN,
    HEX64_RE,
    KDF_SHARES,
    KDF_SNAPSHOT,
    MAC_FILE,
    MANIFEST_FILE,
    MAX_BUNDLE_ENTRIES,
    MAX_ENCRYPTED_SNAPSHOT_BYTES,
    MAX_MAC_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_PIECES_BYTES,
    MAX_SHARE_FILE_BYTES,
    MAX_SHARES,
    MAX_SUMS_BYTES,
    NAME_RE,
    NODE_RE,
    PIECES_FILE,
    PIECES_FORMAT,
    SHARES_DIR,
    SNAPSHOT_FILE,
    SUMS_FILE,
    TOP_LEVEL,
    BackupError,
    canonical_json,
    derive,
    fields,
    fsync_dir,
    hex_bytes,
    hex_var,
    integer,
    manifest_hash,
    manifest_mac,
    parse_canonical_json,
    piece_aad,
    read_bounded,
    sha256,
    snapshot_aad,
    text,
    write_file,
    zero,
)
from .officers import Officer, OfficerKey, check_officer, check_officers

Rng = Callable[[int], bytes]
_U63 = (1 << 63) - 1
_CREATED_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_SHARE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\.v[0-9]+\.i[0-9]+\.g[0-9]+\.blob")
_SUMS_LINE = re.compile(r"([0-9a-f]{64})  ([A-Za-z0-9._/-]{1,200})")
_SNAPSHOT_FORMAT = 1
_NONCE = 12
_PIECE_SIZE = 3 + gf256.SPLIT_ID_SIZE + BACKUP_KEY_LEN + gf256.TAG_SIZE


def share_file(sid: ShareId) -> str:
    return f"{SHARES_DIR}/{sid.key_id}.v{sid.version}.i{sid.index}.g{sid.generation}.blob"


# ------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class ShareEntry:
    share_id: ShareId
    size: int
    sha256: str

    @property
    def file(self) -> str:
        return share_file(self.share_id)

    def to_json(self) -> dict[str, Any]:
        s = self.share_id
        return {"file": self.file, "key_id": s.key_id, "version": s.version, "index": s.index,
                "generation": s.generation, "size": self.size, "sha256": self.sha256}  # fmt: skip


@dataclass(frozen=True)
class SnapshotEntry:
    index: int
    term: int
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"file": SNAPSHOT_FILE, "index": self.index, "term": self.term,
                "size": self.size, "sha256": self.sha256}  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    bundle_id: bytes
    cluster_id: str
    genesis: bytes
    node: str
    index: int
    created_at: str
    snapshot: SnapshotEntry | None
    shares: tuple[ShareEntry, ...]
    officers: tuple[Officer, ...]
    k: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "bundle_id": self.bundle_id.hex(),
            "cluster_id": self.cluster_id, "genesis": self.genesis.hex(), "node": self.node,
            "index": self.index, "created_at": self.created_at,
            "snapshot": self.snapshot.to_json() if self.snapshot else None,
            "shares": [s.to_json() for s in self.shares],
            "officers": [o.to_json() for o in self.officers], "k": self.k,
        }  # fmt: skip

    def officer(self, name: str) -> tuple[int, Officer]:
        """(1-based position, officer) of `name`; BackupError if not one of them."""
        for pos, o in enumerate(self.officers, start=1):
            if o.name == name:
                return pos, o
        raise BackupError(f"{name!r} is not one of this bundle's officers "
                          f"({', '.join(o.name for o in self.officers)})")  # fmt: skip

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        what = MANIFEST_FILE
        fields(doc, {"format", "bundle_id", "cluster_id", "genesis", "node", "index",
                     "created_at", "snapshot", "shares", "officers", "k"}, what)  # fmt: skip
        if doc["format"] != BUNDLE_FORMAT:
            raise BackupError(f"{what}: format {str(doc['format'])[:40]!r} is not "
                              f"{BUNDLE_FORMAT!r}")  # fmt: skip
        bundle_id = hex_bytes(doc, "bundle_id", what, BUNDLE_ID_LEN)
        cluster_id = text(doc, "cluster_id", what, NAME_RE)
        genesis = hex_bytes(doc, "genesis", what, 64)
        node = text(doc, "node", what, NODE_RE, max_chars=8)
        index = integer(doc, "index", what, 1, 99)
        if node != f"node-{index}":
            raise BackupError(f"{what}: node {node} does not have index {index}")
        created_at = text(doc, "created_at", what, _CREATED_RE, max_chars=20)
        snap = None
        if doc["snapshot"] is not None:
            s = doc["snapshot"]
            w = f"{what} snapshot"
            if type(s) is not dict:
                raise BackupError(f"{w} must be an object or null")
            fields(s, {"file", "index", "term", "size", "sha256"}, w)
            if s["file"] != SNAPSHOT_FILE:
                raise BackupError(f"{w}: file must be {SNAPSHOT_FILE!r}")
            snap = SnapshotEntry(integer(s, "index", w, 1, _U63), integer(s, "term", w, 0, _U63),
                                 integer(s, "size", w, 1, MAX_ENCRYPTED_SNAPSHOT_BYTES),
                                 text(s, "sha256", w, HEX64_RE))  # fmt: skip
        rows = doc["shares"]
        if type(rows) is not list or len(rows) > MAX_SHARES:
            raise BackupError(f"{what}: shares must be a list of at most {MAX_SHARES}")
        shares = []
        for n, row in enumerate(rows):
            w = f"{what} shares[{n}]"
            if type(row) is not dict:
                raise BackupError(f"{w} must be an object")
            fields(row, {"file", "key_id", "version", "index", "generation", "size", "sha256"},
                   w)  # fmt: skip
            try:
                sid = ShareId(text(row, "key_id", w, NAME_RE), integer(row, "version", w, 1, _U63),
                              integer(row, "index", w, 1, _U63),
                              integer(row, "generation", w, 0, _U63))  # fmt: skip
            except HsmError as exc:
                raise BackupError(f"{w}: {exc}") from None
            if sid.index != index:
                raise BackupError(f"{w}: share of member index {sid.index} in a bundle of "
                                  f"{node}")  # fmt: skip
            entry = ShareEntry(sid, integer(row, "size", w, 1, MAX_SHARE_FILE_BYTES),
                               text(row, "sha256", w, HEX64_RE))  # fmt: skip
            if row["file"] != entry.file:
                raise BackupError(f"{w}: file must be {entry.file!r}")
            shares.append(entry)
        ids = [s.share_id for s in shares]
        if ids != sorted(set(ids)):
            raise BackupError(f"{what}: shares must be sorted and distinct")
        orows = doc["officers"]
        if type(orows) is not list:
            raise BackupError(f"{what}: officers must be a list")
        officers = []
        for n, row in enumerate(orows):
            w = f"{what} officers[{n}]"
            if type(row) is not dict:
                raise BackupError(f"{w} must be an object")
            fields(row, {"name", "x25519", "ed25519"}, w)
            officers.append(check_officer(row["name"], hex_bytes(row, "x25519", w, 32),
                                          hex_bytes(row, "ed25519", w, 32), w))  # fmt: skip
        ordered, k = check_officers(officers, doc["k"])
        if ordered != officers:
            raise BackupError(f"{what}: officers must be sorted by name")
        return cls(bundle_id, cluster_id, genesis, node, index, created_at, snap, tuple(shares),
                   tuple(officers), k)  # fmt: skip


@dataclass(frozen=True)
class Piece:
    officer: str
    identifier: int
    ephemeral: bytes
    box: bytes

    def to_json(self) -> dict[str, Any]:
        return {"officer": self.officer, "identifier": self.identifier,
                "ephemeral_x25519": self.ephemeral.hex(), "box": self.box.hex()}  # fmt: skip


def _parse_pieces(doc: dict[str, Any], manifest: Manifest, mhash: bytes) -> tuple[Piece, ...]:
    what = PIECES_FILE
    fields(doc, {"format", "bundle_id", "manifest_sha256", "pieces"}, what)
    if doc["format"] != PIECES_FORMAT:
        raise BackupError(f"{what}: format must be {PIECES_FORMAT!r}")
    if hex_bytes(doc, "bundle_id", what, BUNDLE_ID_LEN) != manifest.bundle_id:
        raise BackupError(f"{what}: belongs to another bundle")
    if not hmac.compare_digest(hex_bytes(doc, "manifest_sha256", what, 32), mhash):
        raise BackupError(f"{what}: was made for another manifest (manifest.json changed?)")
    rows = doc["pieces"]
    if type(rows) is not list or len(rows) != len(manifest.officers):
        raise BackupError(f"{what}: must hold exactly one piece per officer "
                          f"({len(manifest.officers)})")  # fmt: skip
    out = []
    for pos, (row, officer) in enumerate(zip(rows, manifest.officers, strict=True), start=1):
        w = f"{what} pieces[{pos - 1}]"
        if type(row) is not dict:
            raise BackupError(f"{w} must be an object")
        fields(row, {"officer", "identifier", "ephemeral_x25519", "box"}, w)
        if row["officer"] != officer.name or row["identifier"] != pos:
            raise BackupError(f"{w}: must be officer {officer.name}'s piece, identifier {pos}")
        try:
            eph = sealbox.check_public_key(hex_bytes(row, "ephemeral_x25519", w, 32))
        except sealbox.SealError as exc:
            raise BackupError(f"{w}: {exc}") from None
        out.append(Piece(officer.name, pos, eph, hex_var(row, "box", w, sealbox.MAX_SEALED)))
    return tuple(out)


# ------------------------------------------------------------------ create


def _now_utc(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _seal_pieces(backup_key: bytearray, manifest: Manifest, mhash: bytes,
                 rng: Rng) -> list[Piece]:  # fmt: skip
    m, k = len(manifest.officers), manifest.k
    try:
        split = gf256.split(backup_key, k, m, rng)
    except SharesError as exc:
        raise BackupError(f"cannot split the backup key: {exc}") from None
    out = []
    for pos, (officer, piece) in enumerate(zip(manifest.officers, split, strict=True), start=1):
        raw = bytearray(piece.to_bytes())
        seed = bytearray(rng(32))
        try:
            eph = X25519PrivateKey.from_private_bytes(bytes(seed))
            eph_pub = sealbox.public_bytes(eph)
            box = sealbox.seal(eph, eph_pub, officer.x25519, bytes(raw),
                               piece_aad(manifest.bundle_id, mhash, officer.name, pos, k, m),
                               rng)  # fmt: skip
        except sealbox.SealError as exc:
            raise BackupError(f"cannot seal officer {officer.name}'s piece: {exc}") from None
        finally:
            zero(raw)
            zero(seed)
        out.append(Piece(officer.name, pos, eph_pub, box))
    return out


def create_bundle(
    out: Path, *, slot: Any, cluster_id: str, genesis: bytes, node: str, index: int,
    snapshot: snapmod.SnapshotFile | None, officers: Sequence[Officer], k: int,
    rng: Rng = os.urandom, now: float | None = None,
) -> Manifest:  # fmt: skip
    """Write a bundle of `slot`'s shares and `snapshot` to the new directory `out`.

    The bundle is built in a hidden sibling directory and renamed into place at the end,
    so `out` is either a complete bundle or absent."""
    ordered, k = check_officers(list(officers), k)
    if len(genesis) != 64 or not NAME_RE.fullmatch(cluster_id) or node != f"node-{index}":
        raise BackupError("cluster id, genesis, node name and index are inconsistent")
    if slot.cluster_id != cluster_id:
        raise BackupError(f"the slot belongs to cluster {slot.cluster_id!r}, not {cluster_id!r}")
    out = out.absolute()
    if (out.exists() or out.is_symlink()) and (
        not out.is_dir() or out.is_symlink() or any(out.iterdir())
    ):
        raise BackupError(f"{out} exists and is not an empty directory")
    if snapshot is not None:
        snapmod.decode_state(snapshot.snapshot, genesis)  # refuse what the node would refuse
    ids = slot.list_shares()
    if len(ids) > MAX_SHARES:
        raise BackupError(f"the slot holds {len(ids)} shares; a bundle holds at most {MAX_SHARES}")
    foreign = [s for s in ids if s.index != index]
    if foreign:
        raise BackupError(f"the slot holds shares of another member index: {foreign[0]}")
    bundle_id = bytes(rng(BUNDLE_ID_LEN))
    backup_key = bytearray(rng(BACKUP_KEY_LEN))
    if len(backup_key) != BACKUP_KEY_LEN or len(bundle_id) != BUNDLE_ID_LEN:
        raise BackupError("the random source returned a short read")
    files: dict[str, bytes] = {}
    try:
        share_key = derive(backup_key, KDF_SHARES, bundle_id)
        entries = []
        for sid in sorted(ids):
            blob = slot.export_share(sid, share_key)
            header = aad.parse_backup_header(blob)[0]
            if header.cluster_id != cluster_id or header.share_id != sid:
                raise BackupError(f"the slot exported a blob that does not name {sid}")
            entry = ShareEntry(sid, len(blob), sha256(blob))
            files[entry.file] = blob
            entries.append(entry)
        snap_entry = None
        if snapshot is not None:
            nonce = bytes(rng(_NONCE))
            ct = AESGCM(derive(backup_key, KDF_SNAPSHOT, bundle_id)).encrypt(
                nonce, snapshot.raw,
                snapshot_aad(bundle_id, cluster_id, node, snapshot.index, snapshot.term))
            enc = bytes([_SNAPSHOT_FORMAT]) + nonce + ct
            files[SNAPSHOT_FILE] = enc
            snap_entry = SnapshotEntry(snapshot.index, snapshot.term, len(enc), sha256(enc))
        manifest = Manifest(bundle_id, cluster_id, bytes(genesis), node, index,
                            _now_utc(time.time() if now is None else now), snap_entry,
                            tuple(entries), tuple(ordered), k)  # fmt: skip
        mbytes = canonical_json(manifest.to_json())
        mhash = manifest_hash(mbytes)
        files[MANIFEST_FILE] = mbytes
        files[MAC_FILE] = (manifest_mac(backup_key, bundle_id, mhash).hex() + "\n").encode()
        pieces = _seal_pieces(backup_key, manifest, mhash, rng)
    finally:
        zero(backup_key)
    files[PIECES_FILE] = canonical_json({
        "format": PIECES_FORMAT, "bundle_id": bundle_id.hex(), "manifest_sha256": mhash.hex(),
        "pieces": [p.to_json() for p in pieces]})  # fmt: skip
    files[SUMS_FILE] = "".join(f"{sha256(data)}  {name}\n"
                               for name, data in sorted(files.items())).encode()  # fmt: skip
    _write_bundle(out, files)
    return manifest


def _write_bundle(out: Path, files: dict[str, bytes]) -> None:
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        (tmp / SHARES_DIR).mkdir(mode=0o700)
        for name, data in files.items():
            write_file(tmp / name, data, 0o600)
        fsync_dir(tmp / SHARES_DIR)
        fsync_dir(tmp)
        if out.is_dir():
            out.rmdir()  # checked empty by the caller
        os.rename(tmp, out)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ inspect


@dataclass
class Bundle:
    """A bundle whose structure and integrity were checked (not yet its authenticity)."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    mhash: bytes
    mac: bytes
    pieces: tuple[Piece, ...]
    blobs: dict[ShareId, bytes] = field(repr=False)

    def snapshot_bytes(self) -> bytes:
        """The encrypted snapshot, read again and checked against the manifest."""
        entry = self.manifest.snapshot
        if entry is None:
            raise BackupError("this bundle holds no snapshot")
        data = read_bounded(self.path / SNAPSHOT_FILE, MAX_ENCRYPTED_SNAPSHOT_BYTES, "snapshot")
        if len(data) != entry.size or not hmac.compare_digest(sha256(data), entry.sha256):
            raise BackupError(f"{SNAPSHOT_FILE}: does not match its SHA-256 in the manifest")
        return data


def _listing(path: Path) -> set[str]:
    """Relative names of every file in the bundle; refuses anything unexpected."""
    if path.is_symlink() or not path.is_dir():
        raise BackupError(f"{path}: not a bundle directory")
    names: set[str] = set()
    count = 0
    with os.scandir(path) as top:
        for entry in top:
            count += 1
            if entry.name == SHARES_DIR and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    for e in inner:
                        count += 1
                        if count > MAX_BUNDLE_ENTRIES:
                            raise BackupError(f"{path}: too many files for a bundle")
                        if not (e.is_file(follow_symlinks=False)
                                and _SHARE_FILE_RE.fullmatch(e.name)):  # fmt: skip
                            raise BackupError(f"{path}: unexpected entry {SHARES_DIR}/{e.name}")
                        names.add(f"{SHARES_DIR}/{e.name}")
                continue
            if entry.name not in TOP_LEVEL or not entry.is_file(follow_symlinks=False):
                raise BackupError(f"{path}: unexpected entry {entry.name!r} (not part of a "
                                  "bundle, or not a regular file)")  # fmt: skip
            names.add(entry.name)
    return names


def _parse_sums(data: bytes) -> dict[str, str]:
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise BackupError(f"{SUMS_FILE}: not ASCII") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        m = _SUMS_LINE.fullmatch(line)
        if m is None:
            raise BackupError(f"{SUMS_FILE}: line {n} is not '<sha256>  <file>'")
        if m.group(2) in out or m.group(2) == SUMS_FILE:
            raise BackupError(f"{SUMS_FILE}: line {n} lists {m.group(2)} again")
        out[m.group(2)] = m.group(1)
    return out


def inspect(path: Path) -> Bundle:
    """Check a bundle's structure and integrity without any key. BackupError on the first
    problem found; what it checks is in the module docstring."""
    path = Path(path)
    present = _listing(path)
    for name in (MANIFEST_FILE, MAC_FILE, PIECES_FILE, SUMS_FILE):
        if name not in present:
            raise BackupError(f"{path}: {name} is missing (not a complete bundle)")
    sums = _parse_sums(read_bounded(path / SUMS_FILE, MAX_SUMS_BYTES, SUMS_FILE))
    listed, actual = set(sums), present - {SUMS_FILE}
    if listed != actual:
        missing, extra = sorted(listed - actual), sorted(actual - listed)
        raise BackupError(f"{path}: files differ from {SUMS_FILE}: missing {missing[:5]}, "
                          f"not listed {extra[:5]}")  # fmt: skip

    def small(name: str, limit: int) -> bytes:
        data = read_bounded(path / name, limit, name)
        if not hmac.compare_digest(sha256(data), sums[name]):
            raise BackupError(f"{name}: SHA-256 does not match {SUMS_FILE} (corrupted or changed)")
        return data

    mbytes = small(MANIFEST_FILE, MAX_MANIFEST_BYTES)
    manifest = Manifest.from_json(parse_canonical_json(mbytes, MANIFEST_FILE))
    mhash = manifest_hash(mbytes)
    mac_text = small(MAC_FILE, MAX_MAC_BYTES)
    if not re.fullmatch(rb"[0-9a-f]{64}\n", mac_text):
        raise BackupError(f"{MAC_FILE}: must be 64 lower-case hex digits and a newline")
    pieces = _parse_pieces(parse_canonical_json(small(PIECES_FILE, MAX_PIECES_BYTES),
                                                PIECES_FILE), manifest, mhash)  # fmt: skip
    expected = {MANIFEST_FILE, MAC_FILE, PIECES_FILE} | {s.file for s in manifest.shares}
    if manifest.snapshot is not None:
        expected.add(SNAPSHOT_FILE)
    if actual != expected:
        missing, extra = sorted(expected - actual), sorted(actual - expected)
        raise BackupError(f"{path}: files differ from the manifest: missing {missing[:5]}, "
                          f"not in the manifest {extra[:5]}")  # fmt: skip
    if manifest.snapshot is not None:
        h = hashlib.sha256()
        size = 0
        fd = os.open(path / SNAPSHOT_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                if size > MAX_ENCRYPTED_SNAPSHOT_BYTES:
                    raise BackupError(f"{SNAPSHOT_FILE}: too large")
                h.update(chunk)
        digest = h.hexdigest()
        if not hmac.compare_digest(digest, sums[SNAPSHOT_FILE]):
            raise BackupError(f"{SNAPSHOT_FILE}: SHA-256 does not match {SUMS_FILE}")
        if size != manifest.snapshot.size or not hmac.compare_digest(digest,
                                                                      manifest.snapshot.sha256):
            raise BackupError(f"{SNAPSHOT_FILE}: does not match the manifest")
    blobs: dict[ShareId, bytes] = {}
    for entry in manifest.shares:
        blob = small(entry.file, MAX_SHARE_FILE_BYTES)
        if len(blob) != entry.size or not hmac.compare_digest(sha256(blob), entry.sha256):
            raise BackupError(f"{entry.file}: does not match the manifest")
        try:
            header = aad.parse_backup_header(blob)[0]
        except HsmError as exc:
            raise BackupError(f"{entry.file}: {exc}") from None
        if header.cluster_id != manifest.cluster_id or header.share_id != entry.share_id:
            raise BackupError(f"{entry.file}: its header names another cluster or share")
        blobs[entry.share_id] = blob
    return Bundle(path, manifest, mbytes, mhash, bytes.fromhex(mac_text[:64].decode()), pieces,
                  blobs)  # fmt: skip


def check_for_node(bundle: Bundle, *, cluster_id: str, genesis: bytes, node: str) -> None:
    """Refuse a bundle of another cluster (id or genesis) or another member."""
    m = bundle.manifest
    if m.cluster_id != cluster_id or not hmac.compare_digest(m.genesis, genesis):
        raise BackupError(f"the bundle belongs to cluster {m.cluster_id!r} (genesis "
                          f"{m.genesis.hex()[:16]}...), not to this node's cluster {cluster_id!r} "
                          f"(genesis {genesis.hex()[:16]}...)")  # fmt: skip
    if m.node != node:
        raise BackupError(f"the bundle is {m.node}'s, not {node}'s (shares are bound to "
                          "their member index)")  # fmt: skip


# ------------------------------------------------------------------ unlock


def open_piece(bundle: Bundle, key: OfficerKey) -> gf256.ByteShare:
    """The officer's piece of the backup key (in memory only)."""
    m = bundle.manifest
    pos, officer = m.officer(key.officer.name)
    if not (hmac.compare_digest(officer.x25519, key.officer.x25519)
            and hmac.compare_digest(officer.ed25519, key.officer.ed25519)):  # fmt: skip
        raise BackupError(f"officer {officer.name}: this key file does not hold the keys the "
                          "bundle names for that officer")  # fmt: skip
    piece = bundle.pieces[pos - 1]
    try:
        raw = bytearray(sealbox.open_(key.x25519_private, officer.x25519, piece.ephemeral,
                                      piece.box, piece_aad(m.bundle_id, bundle.mhash, officer.name,
                                                           pos, m.k, len(m.officers))))  # fmt: skip
    except sealbox.SealError:
        raise BackupError(f"officer {officer.name}'s piece does not open: wrong key, or the "
                          "manifest or pieces were changed") from None  # fmt: skip
    try:
        return check_piece(bytes(raw), bundle, pos)
    finally:
        zero(raw)


def check_piece(raw: bytes, bundle: Bundle, pos: int) -> gf256.ByteShare:
    if len(raw) != _PIECE_SIZE:
        raise BackupError(f"officer #{pos}'s piece has the wrong size")
    try:
        share = gf256.ByteShare.from_bytes(raw)
    except SharesError as exc:
        raise BackupError(f"officer #{pos}'s piece is malformed: {exc}") from None
    if share.identifier != pos or share.threshold != bundle.manifest.k:
        raise BackupError(f"officer #{pos}'s piece names another position or quorum")
    return share


def combine(bundle: Bundle, pieces: dict[str, gf256.ByteShare]) -> tuple[bytearray, list[str]]:
    """The backup key from >= k officers' pieces, checked by the manifest MAC (caller zeroes
    it), and the officers whose pieces disagreed with it (only possible with more than k)."""
    m = bundle.manifest
    if len(pieces) < m.k:
        raise BackupError(f"{len(pieces)} officer(s) given ({', '.join(sorted(pieces)) or '-'}); "
                          f"this bundle needs {m.k} of {len(m.officers)}")  # fmt: skip
    try:
        secret, culprits = gf256.combine_robust(list(pieces.values()))
    except SharesError:
        raise BackupError("the officers' pieces do not combine into the backup key (a wrong or "
                          "altered piece)") from None  # fmt: skip
    key = bytearray(secret)
    del secret
    if len(key) != BACKUP_KEY_LEN:
        zero(key)
        raise BackupError("the combined backup key has the wrong length")
    expected = manifest_mac(key, m.bundle_id, bundle.mhash)
    if not hmac.compare_digest(expected, bundle.mac):
        zero(key)
        raise BackupError("the manifest MAC does not verify: manifest.mac or the manifest was "
                          "changed, or the pieces belong to another bundle")  # fmt: skip
    return key, [m.officers[i - 1].name for i in culprits]


def unlock(bundle: Bundle, keys: Sequence[OfficerKey]) -> tuple[bytearray, list[str]]:
    """The backup key from k officers' private keys (caller zeroes it); see `combine`."""
    pieces: dict[str, gf256.ByteShare] = {}
    for key in keys:
        if key.officer.name in pieces:
            raise BackupError(f"officer {key.officer.name} is given twice")
        pieces[key.officer.name] = open_piece(bundle, key)
    return combine(bundle, pieces)


# ------------------------------------------------------------------ open


@dataclass(frozen=True)
class ShareCheck:
    share_id: ShareId
    status: str  # "verified" | "destroyed" | "unchecked: ..."

    @property
    def importable(self) -> bool:
        return self.status != "destroyed"


@dataclass
class Contents:
    """What an unlocked bundle holds, every part opened and checked."""

    snapshot: Any  # consensus.messages.Snapshot | None
    state: State | None
    shares: list[ShareCheck]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shares:
            key = s.status.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out


def open_contents(bundle: Bundle, backup_key: bytearray) -> Contents:
    """Decrypt and check the snapshot and open every share blob (nothing is stored)."""
    m = bundle.manifest
    snap, state = None, None
    if m.snapshot is not None:
        enc = bundle.snapshot_bytes()
        if len(enc) < 1 + _NONCE + 16 or enc[0] != _SNAPSHOT_FORMAT:
            raise BackupError(f"{SNAPSHOT_FILE}: unknown format")
        try:
            raw = AESGCM(derive(backup_key, KDF_SNAPSHOT, m.bundle_id)).decrypt(
                enc[1 : 1 + _NONCE], enc[1 + _NONCE :],
                snapshot_aad(m.bundle_id, m.cluster_id, m.node, m.snapshot.index, m.snapshot.term))
        except InvalidTag:
            raise BackupError(f"{SNAPSHOT_FILE}: does not decrypt (tampered)") from None
        snap = snapmod.parse_snapshot_file(raw, SNAPSHOT_FILE)
        if (snap.meta.index, snap.meta.term) != (m.snapshot.index, m.snapshot.term):
            raise BackupError(f"{SNAPSHOT_FILE}: index/term differ from the manifest")
        state = snapmod.decode_state(snap, m.genesis)
        if state.bootstrapped and state.cluster_id != m.cluster_id:
            raise BackupError(f"the snapshot is of cluster {state.cluster_id!r}")
        member = state.members.get(m.node)
        if state.bootstrapped and (member is None or member.index != m.index):
            raise BackupError(f"the snapshot's state has no member {m.node} at index {m.index}")
    share_key = derive(backup_key, KDF_SHARES, m.bundle_id)
    checks = []
    for entry in m.shares:
        sid = entry.share_id
        try:
            header, share = aad.open_backup(bundle.blobs[sid], share_key)
        except HsmError:
            raise BackupError(f"{entry.file}: does not open under the backup key "
                              "(tampered)") from None  # fmt: skip
        try:
            if header.share_id != sid or header.cluster_id != m.cluster_id:
                raise BackupError(f"{entry.file}: names another share")
            checks.append(ShareCheck(sid, _check_share(state, sid, share)))
        finally:
            zero(share)
    return Contents(snap, state, checks)


def _check_share(state: State | None, sid: ShareId, share: bytearray) -> str:
    if state is None or not state.bootstrapped:
        return "unchecked: no snapshot to check it against"
    key = state.keys.get(sid.key_id)
    version = key.versions.get(sid.version) if key else None
    if version is None:
        return "unchecked: newer than the snapshot"
    if version.state is VersionState.DESTROYED:
        return "destroyed"
    if version.generation != sid.generation:
        return f"unchecked: the snapshot names generation {version.generation}"
    if len(version.verification_shares) < sid.index:
        return "unchecked: no verification share in the snapshot"
    if not matches(share, version.verification_shares[sid.index - 1]):
        raise BackupError(f"share {sid.key_id} v{sid.version} does not match the verification "
                          "share the snapshot publishes for this member")  # fmt: skip
    return "verified"
