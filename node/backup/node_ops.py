"""Backup and restore against one node: its config, token and data directory.

`create_for_node` is safe while the node runs: it reads the newest complete snapshot
file (see `snapshot`) and opens the token as a read-only observer (no sweep of the
running node's in-flight temporaries); a stopped node gives the quietest copy.

`restore` (the part that works on any `Slot` and data directory, unit-tested with the
in-memory slot) and `restore_node` (the command: config, running check, PKCS#11 token,
persistence check from a fresh process) refuse to touch a node that runs, a data
directory that holds anything or a token that holds shares, unless `force` (then the
data directory is moved aside, never deleted, and shares are replaced). Every part of
the bundle is opened and checked before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.hsm.errors import SlotNotProvisionedError, TokenNotFoundError
from node.hsm.pkcs11_slot import Pkcs11Slot
from node.server.config import slot_config

from . import bundle as bmod
from . import snapshot as snapmod
from .formats import KDF_SHARES, BackupError, derive
from .officers import Officer

PID_FILE = "node.pid"  # what `custody cluster up` writes next to node.toml
PROBE_TIMEOUT_S = 0.3


# ------------------------------------------------------------------ node access


def open_slot(cfg: Any, *, observer: bool) -> Pkcs11Slot:
    """Open the node's token; `observer`: leave in-flight temporaries alone (node may run)."""
    return Pkcs11Slot.open(slot_config(cfg), sweep=not observer)


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        if stat[stat.rfind(b")") + 2 :].startswith(b"Z"):
            return None  # a zombie runs nothing
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def node_running(cfg: Any) -> str | None:
    """Why we believe the node runs (pid file, a process naming its config, something
    listening on its ports), or None."""
    config = Path(cfg.path)
    names = {os.fsencode(str(config)), os.fsencode(str(config.resolve()))}
    me = os.getpid()
    pid_file = config.parent / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text(encoding="ascii").strip())
        args = _cmdline(pid) if pid != me else None
        if args is not None and names & set(args):
            return f"pid {pid} (from {pid_file}) runs with {config}"
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            args = _cmdline(int(entry.name))
            if args and names & set(args) and b"run" in args:
                return f"pid {entry.name} runs with {config}"
    for what, (host, port) in (("raft", cfg.raft_listen), ("api", cfg.api_listen)):
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a name
        with contextlib.suppress(OSError), socket.create_connection((host, port),
                                                                    PROBE_TIMEOUT_S):
            return f"something listens on its {what} address {host}:{port}"
    return None


# ------------------------------------------------------------------ create


def create_for_node(
    cfg: Any, out: Path, officers: Sequence[Officer], k: int, *, allow_no_snapshot: bool = False
) -> tuple[bmod.Manifest, str | None]:
    """Write `cfg`'s node's bundle to `out`; returns the manifest and whether it ran."""
    running = node_running(cfg)
    snap = snapmod.read_newest(Path(cfg.data_dir))
    if snap is None and not allow_no_snapshot:
        raise BackupError(
            f"{cfg.data_dir} holds no Raft snapshot yet (a node writes one every "
            f"snapshot_every = {cfg.snapshot_every} applied entries): try again later, or pass "
            "--allow-no-snapshot for a bundle of the shares only (a node restored from it "
            "replicates the whole log, or the leader's certified snapshot, from the cluster)")
    slot = open_slot(cfg, observer=True)
    try:
        manifest = bmod.create_bundle(
            out, slot=slot, cluster_id=cfg.cluster_id, genesis=cfg.genesis, node=cfg.name,
            index=cfg.index, snapshot=snap, officers=officers, k=k)  # fmt: skip
    finally:
        slot.close()
    return manifest, running


# ------------------------------------------------------------------ restore


@dataclass
class RestoreReport:
    bundle_id: str
    node: str
    imported: list[str]
    skipped: list[str]
    checks: dict[str, int]
    details: list[str]
    snapshot: dict[str, int] | None
    data_dir: str
    moved_aside: str | None
    token_key: str
    registered_key: str | None
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore(
    bundle: bmod.Bundle, backup_key: bytearray, *, slot: Any, data_dir: Path, cluster_id: str,
    genesis: bytes, node: str, force: bool = False, shares: bool = True, snapshot: bool = True,
) -> RestoreReport:  # fmt: skip
    """Bring a node's token and data directory back from an unlocked bundle."""
    bmod.check_for_node(bundle, cluster_id=cluster_id, genesis=genesis, node=node)
    if slot.cluster_id != cluster_id:
        raise BackupError(f"the token belongs to cluster {slot.cluster_id!r}")
    contents = bmod.open_contents(bundle, backup_key)  # everything opens and checks, first
    m = bundle.manifest
    notes: list[str] = []
    # Refusals come before any write.
    if shares:
        held = slot.list_shares()
        if held and not force:
            raise BackupError(f"the token already holds {len(held)} share(s); restore into the "
                              "token they came from only with --force (they are replaced)")
    install_snapshot = snapshot and m.snapshot is not None
    if install_snapshot and snapmod.data_dir_in_use(data_dir) and not force:
        raise BackupError(f"{data_dir} already holds data; move it away, or pass --force (it is "
                          "then moved aside, not deleted)")  # fmt: skip
    if snapshot and m.snapshot is None:
        notes.append("the bundle holds no snapshot: the data directory is left as it is; the "
                     "node replicates the log (or the leader's certified snapshot) when it starts")
    imported, skipped = [], []
    if shares:
        share_key = derive(backup_key, KDF_SHARES, m.bundle_id)
        for check in contents.shares:
            sid = check.share_id
            label = f"{sid.key_id} v{sid.version} (index {sid.index}, generation {sid.generation})"
            if not check.importable:
                skipped.append(f"{label}: destroyed in the snapshot's state")
                continue
            slot.import_share(bundle.blobs[sid], share_key, replace=force)
            imported.append(label)
    moved = None
    if install_snapshot:
        moved = snapmod.install(data_dir, contents.snapshot, force=force)
        notes.append(
            "if, once started, the node's applied index stays at the snapshot index while the "
            "leader's moves on, the node had acknowledged log entries beyond this backup: the "
            "leader does not send a follower back below what it acknowledged until its log is "
            "compacted past it or leadership changes; restart the leader's process once "
            "(docs/backup.md, runbook step 6)")
        if moved is not None:
            notes.append(f"the old data directory was moved to {moved}; delete it once the node "
                         "is back")  # fmt: skip
    token_key = slot.identity_public_key()
    registered = None
    if contents.state is not None and node in contents.state.members:
        registered = contents.state.members[node].public_key
    if registered is not None and registered != token_key:
        notes.append(
            f"this token's identity key is not the key registered for {node} in the backup's "
            "snapshot: unless the cluster registered it since, the node replicates the log but "
            f"signs nothing until `custody node repair {node} "
            f"--public-key {token_key.hex()}` (governance quorum, then the time lock) registers "
            "it; that repair also rebuilds its shares from t helpers and overwrites the "
            "restored ones with the same values")
    return RestoreReport(
        bundle_id=m.bundle_id.hex(), node=node, imported=imported, skipped=skipped,
        checks=contents.summary(),
        details=[f"{c.share_id.key_id} v{c.share_id.version} g{c.share_id.generation}: "
                 f"{c.status}" for c in contents.shares],
        snapshot=({"index": m.snapshot.index, "term": m.snapshot.term}
                  if install_snapshot and m.snapshot else None),
        data_dir=str(data_dir), moved_aside=str(moved) if moved else None,
        token_key=token_key.hex(), registered_key=registered.hex() if registered else None,
        notes=notes,
    )  # fmt: skip


def restore_node(bundle: bmod.Bundle, backup_key: bytearray, cfg: Any, *, force: bool = False,
                 shares: bool = True, snapshot: bool = True) -> RestoreReport:  # fmt: skip
    """`restore` on a real node: refuses while it runs; checks from a fresh process that
    the token kept every imported share (SoftHSM2 does not report failed writes)."""
    why = node_running(cfg)
    if why is not None:
        raise BackupError(f"{cfg.name} seems to be running ({why}); stop it first "
                          "(custody cluster down, or SIGTERM)")  # fmt: skip
    bmod.check_for_node(bundle, cluster_id=cfg.cluster_id, genesis=cfg.genesis, node=cfg.name)
    try:
        slot = open_slot(cfg, observer=False)
    except (TokenNotFoundError, SlotNotProvisionedError) as exc:
        raise BackupError(
            f"{exc}: after a token loss, make a new token first (custody node provision "
            f"--config {cfg.path}); its identity key is new, so the member must then be "
            f"re-registered with custody node repair {cfg.name} --public-key KEY") from None
    try:
        report = restore(bundle, backup_key, slot=slot, data_dir=Path(cfg.data_dir),
                         cluster_id=cfg.cluster_id, genesis=cfg.genesis, node=cfg.name,
                         force=force, shares=shares, snapshot=snapshot)  # fmt: skip
        ids = slot.list_shares() if shares else []
    finally:
        slot.close()
    if ids and cfg.hsm_softhsm_conf is not None:
        from node.hsm.softhsm import verify_persisted

        missing = verify_persisted(slot_config(cfg), ids)
        if missing:
            raise BackupError(f"the token did not keep {len(missing)} imported share(s) (seen "
                              "from a fresh process): check the token's storage and restore "
                              "again with --force")  # fmt: skip
    return report
