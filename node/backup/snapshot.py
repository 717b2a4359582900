"""The node's Raft snapshot in a backup: read it from a data directory, check it, put
it back.

Reading is safe while the node runs: `consensus.filestore` writes every snapshot
file atomically (temporary file, fsync, rename) and deletes older ones only after
the newer one is in place, so the newest ``snap-<index>-<term>.snap`` is always
complete; if it disappears between listing and reading (a newer one replaced it),
we list again. The bytes are checked like `FileStorage` checks them (magic,
version, CRC, names) and the state inside is decoded by the custody state machine
with the cluster's genesis, so a bundle never carries a snapshot the node would
refuse at start.

Installing goes through `FileStorage` itself: a new data directory whose log starts
at the snapshot (a SNAPMARK record, hard state term = snapshot term, commit =
snapshot index, no vote), built beside the target and renamed into place. The node
then starts from that state and Raft brings it the entries after the snapshot (or
the leader's newer certified snapshot).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from consensus.filestore import SNAP_HEADER_SIZE, FileStorage, decode_snapshot_file
from consensus.messages import HardState, Snapshot
from consensus.session import ReplicatedMachine
from consensus.storage import CorruptLog
from node.state import Machine
from node.state.model import State

from .formats import MAX_SNAPSHOT_FILE_BYTES, BackupError, fsync_dir, read_bounded

SNAP_NAME = re.compile(r"^snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_HDR = struct.Struct(">8sIQ")  # consensus.filestore: magic, version, payload length
_U63 = (1 << 63) - 1
_MAX_MEMBERS = 64
READ_ATTEMPTS = 5


@dataclass(frozen=True)
class SnapshotFile:
    """One snapshot file's bytes, as stored by FileStorage, and what they hold."""

    raw: bytes
    snapshot: Snapshot

    @property
    def index(self) -> int:
        return self.snapshot.meta.index

    @property
    def term(self) -> int:
        return self.snapshot.meta.term


def parse_snapshot_file(raw: bytes, where: str = "snapshot") -> Snapshot:
    """Decode a `snap-*.snap` file (FileStorage's own decoder); BackupError if anything is
    off, including sizes and memberships no node would write."""
    if len(raw) < SNAP_HEADER_SIZE or len(raw) > MAX_SNAPSHOT_FILE_BYTES:
        raise BackupError(f"{where}: snapshot file has an impossible size ({len(raw)} bytes)")
    try:
        snap = decode_snapshot_file(raw, where)
    except CorruptLog as exc:
        raise BackupError(str(exc)) from None
    conf = snap.meta.conf
    ids = [*conf.voters, *conf.learners]
    if snap.meta.index < 1 or len(ids) > _MAX_MEMBERS or not all(1 <= v <= _MAX_MEMBERS
                                                                 for v in ids):  # fmt: skip
        raise BackupError(f"{where}: snapshot index, term or membership out of range")
    return snap


def read_newest(data_dir: Path) -> SnapshotFile | None:
    """The newest complete snapshot in a node's data directory, or None if it has none.

    Safe while the node runs (see the module docstring)."""
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir}: the node's data directory does not exist")
    for _ in range(READ_ATTEMPTS):
        found = []
        for entry in os.scandir(data_dir):
            m = SNAP_NAME.match(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                found.append((int(m.group(1), 16), int(m.group(2), 16), entry.name))
        if not found:
            return None
        index, term, name = max(found)
        try:
            raw = read_bounded(data_dir / name, MAX_SNAPSHOT_FILE_BYTES, "snapshot file")
        except BackupError:
            if not (data_dir / name).exists():  # replaced by a newer one meanwhile
                time.sleep(0.05)
                continue
            raise
        snap = parse_snapshot_file(raw, str(data_dir / name))
        if (snap.meta.index, snap.meta.term) != (index, term):
            raise BackupError(f"{data_dir / name}: contents do not match the file name")
        return SnapshotFile(raw, snap)
    raise BackupError(f"{data_dir}: the newest snapshot kept changing; try again")


def decode_state(snapshot: Snapshot, genesis: bytes) -> State:
    """The custody state inside a runner snapshot, checked against this cluster's genesis
    exactly as the node checks it when it restores at start."""
    machine = Machine(genesis=genesis)
    try:
        ReplicatedMachine(machine).restore(snapshot.data)
    except Exception as exc:  # DecodeError, MalformedEnvelope, msgpack errors
        raise BackupError(f"the snapshot's state does not decode for this cluster: {exc}") from None
    return machine.state


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether the data directory exists and holds anything."""
    if not data_dir.exists() and not data_dir.is_symlink():
        return False
    if not data_dir.is_dir() or data_dir.is_symlink():
        return True
    with os.scandir(data_dir) as it:
        return any(True for _ in it)


def install(data_dir: Path, snapshot: Snapshot | None, *, force: bool) -> Path | None:
    """Make `data_dir` a Raft data directory that starts at `snapshot` (or an empty one if
    None: the node then replicates everything from the leader). A directory that holds
    anything is refused unless `force`, which moves it aside (never deletes it); returns
    where it went."""
    data_dir = data_dir.absolute()
    moved = None
    if data_dir_in_use(data_dir):
        if not force:
            raise BackupError(f"{data_dir} already holds data; stop and move it away, or pass "
                              "--force (it is then moved aside, not deleted)")  # fmt: skip
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = data_dir.with_name(f"{data_dir.name}.pre-restore-{stamp}-{secrets.token_hex(3)}")
        os.rename(data_dir, moved)
    elif data_dir.is_dir():
        data_dir.rmdir()  # empty: replaced by the one built below
    parent = data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{data_dir.name}.restore-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        if snapshot is not None:
            storage = FileStorage(tmp)
            try:
                hs = HardState(term=snapshot.meta.term, vote=0, commit=snapshot.meta.index)
                storage.save(hs, [], snapshot)
            finally:
                storage.close()
        os.chmod(tmp, 0o700)
        os.rename(tmp, data_dir)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return moved
