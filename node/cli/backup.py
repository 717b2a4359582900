"""`custody backup ...`: a node's backup bundle, its officers, and restoring from it.

    custody backup officer-keygen --out DIR --name NAME     an officer's key files
    custody backup create --config node.toml --out BUNDLE --officers A,B,C --k 2
    custody backup verify BUNDLE [--config node.toml] [--officer-key F]...
                                 [--restore-key F --release R ...]
    custody backup request BUNDLE --out DIR                 a one-time restore key
    custody backup release BUNDLE --officer-key F --to restore-request.json --out R
    custody backup restore BUNDLE --config node.toml (--officer-key F ... |
                                  --restore-key F --release R ...) [--force]

Exit status: 0 success; 1 a check failed or an operation was refused (one line says
why); 2 bad arguments or configuration. docs/backup.md has the runbook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    backup = subparsers.add_parser(
        "backup", help="back up a node (snapshot + shares) to officers; verify; restore",
        description="A node's backup bundle: its newest Raft snapshot and every share object "
        "of its HSM slot, exported under a fresh backup key that is split k-of-m among "
        "recovery officers (never stored in the clear). See docs/backup.md.",
    )  # fmt: skip
    sub = backup.add_subparsers(dest="backup_command", metavar="ACTION", required=True)

    kg = sub.add_parser("officer-keygen", help="make a recovery officer's key pairs",
                        description="Write NAME.officer.json (public: give it to whoever "
                        "makes bundles) and NAME.officer-key.json (private, 0600: keep it "
                        "offline). Never overwrites.")  # fmt: skip
    kg.add_argument("--out", required=True, type=Path, help="directory for the two files")
    kg.add_argument("--name", required=True, help="the officer's name ([A-Za-z0-9._-], 1-64)")
    kg.add_argument("--json", action="store_true", help="machine-readable output")
    kg.set_defaults(func=_keygen)

    cr = sub.add_parser("create", help="write a node's backup bundle",
                        description="Export the node's newest Raft snapshot and every share "
                        "object of its token under a fresh backup key, split the key k-of-m to "
                        "the officers, write an authenticated manifest. Safe while the node "
                        "runs (reads only complete snapshot files, opens the token as an "
                        "observer); a stopped node gives the quietest copy.")  # fmt: skip
    cr.add_argument("--config", required=True, type=Path, help="the node's node.toml")
    cr.add_argument("--out", required=True, type=Path, help="new bundle directory")
    cr.add_argument("--officers", required=True,
                    help="comma-separated officer public files (NAME.officer.json)")
    cr.add_argument("--k", required=True, type=int, help="officers needed to open it (>= 2)")
    cr.add_argument("--allow-no-snapshot", action="store_true",
                    help="if the node has no snapshot yet, back up the shares only")
    cr.add_argument("--json", action="store_true", help="machine-readable output")
    cr.set_defaults(func=_create)

    ve = sub.add_parser("verify", help="check a bundle without restoring it",
                        description="Without officers: structure, bounds, SHA256SUMS, the "
                        "manifest's hashes and every share blob's header (integrity only). With "
                        "k officers (keys or releases): also rebuild the backup key, verify the "
                        "manifest MAC, decrypt and decode the snapshot, open every share blob "
                        "and check it against the snapshot's verification shares (nothing is "
                        "stored).")  # fmt: skip
    ve.add_argument("bundle", type=Path)
    ve.add_argument("--config", type=Path, help="also check the bundle is this node's")
    _unlock_args(ve)
    ve.add_argument("--json", action="store_true", help="machine-readable output")
    ve.set_defaults(func=_verify)

    rq = sub.add_parser("request", help="make a one-time restore key for officer releases",
                        description="Write DIR/restore-request.json (send it to the officers) "
                        "and DIR/restore.key (0600, stays on the node's machine).")  # fmt: skip
    rq.add_argument("bundle", type=Path)
    rq.add_argument("--out", required=True, type=Path)
    rq.add_argument("--json", action="store_true", help="machine-readable output")
    rq.set_defaults(func=_request)

    rl = sub.add_parser("release", help="(officer) release your piece to a restore request",
                        description="Open your piece of the bundle's backup key with your "
                        "private key and re-seal it to the request's restore key, signed. Run "
                        "it on your own machine: your private key never leaves it.")  # fmt: skip
    rl.add_argument("bundle", type=Path)
    rl.add_argument("--officer-key", required=True, type=Path, help="your NAME.officer-key.json")
    rl.add_argument("--to", required=True, type=Path, help="the restore-request.json")
    rl.add_argument("--out", required=True, type=Path, help="where to write your release")
    rl.add_argument("--json", action="store_true", help="machine-readable output")
    rl.set_defaults(func=_release)

    rs = sub.add_parser("restore", help="bring a stopped node back from its bundle",
                        description="Refuses while the node runs, and if its data directory or "
                        "token already holds data unless --force. Rebuilds the backup key from "
                        "k officers, checks everything, imports every share into the node's "
                        "token (after a token loss, make a new one first: custody node "
                        "provision), and installs the snapshot as the data directory so the "
                        "node starts from it and Raft catches it up.")  # fmt: skip
    rs.add_argument("bundle", type=Path)
    rs.add_argument("--config", required=True, type=Path, help="the node's node.toml")
    _unlock_args(rs)
    rs.add_argument("--force", action="store_true",
                    help="replace shares the token holds; move a non-empty data directory "
                    "aside (never deleted)")  # fmt: skip
    part = rs.add_mutually_exclusive_group()
    part.add_argument("--shares-only", action="store_true", help="leave the data directory")
    part.add_argument("--snapshot-only", action="store_true", help="leave the token")
    rs.add_argument("--json", action="store_true", help="machine-readable output")
    rs.set_defaults(func=_restore)


def _unlock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--officer-key", action="append", type=Path, default=[],
                   help="an officer's private key file; give it k times (k officers)")
    p.add_argument("--restore-key", type=Path, help="restore.key from `custody backup request`")
    p.add_argument("--release", action="append", type=Path, default=[],
                   help="an officer's release (with --restore-key); k of them")


def _guard(body: Any) -> Any:
    """Run a handler: a failed check or refusal is one line and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        from node.backup.formats import BackupError
        from node.hsm.errors import HsmError
        from node.server.config import ConfigError

        try:
            return int(body(args))
        except ConfigError:
            raise  # exit 2 in node.cli.main
        except (BackupError, HsmError) as exc:
            print(f"custody: backup: {exc}", file=sys.stderr)
            return 1

    return run


def _out(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else human)


# ------------------------------------------------------------------ officer-keygen


@_guard
def _keygen(args: argparse.Namespace) -> int:
    from node.backup import officers

    key = officers.generate(args.name)
    public, private = officers.write_keys(key, args.out)
    _out(args, {"name": key.officer.name, "public": str(public), "private": str(private),
                **{k: v for k, v in key.officer.to_json().items() if k != "name"}},
         f"officer {key.officer.name}:\n  public  {public}  (give it to whoever makes "
         f"bundles)\n  private {private}  (0600; keep it offline, never next to a bundle)")
    return 0


# ------------------------------------------------------------------ create


def _officer_files(value: str) -> list[Path]:
    items = [s.strip() for s in value.split(",")]
    if not items or any(not s for s in items):
        raise ValueError(f"--officers: empty item in {value!r}")
    return [Path(s) for s in items]


@_guard
def _create(args: argparse.Namespace) -> int:
    from node.backup import node_ops, officers
    from node.server.config import load_config

    cfg = load_config(args.config, create_data_dir=False)
    listed = [officers.load_public(p) for p in _officer_files(args.officers)]
    manifest, running = node_ops.create_for_node(cfg, args.out, listed, args.k,
                                                 allow_no_snapshot=args.allow_no_snapshot)
    m = manifest
    data = {"bundle": str(args.out), **m.to_json(), "node_was_running": running is not None}
    snap = (f"snapshot at index {m.snapshot.index} (term {m.snapshot.term})" if m.snapshot
            else "NO snapshot (shares only)")  # fmt: skip
    _out(args, data,
         f"bundle {args.out}: {m.node} of cluster {m.cluster_id}, {snap}, {len(m.shares)} "
         f"share(s)\n  id {m.bundle_id.hex()}\n  opens with any {m.k} of: "
         f"{', '.join(o.name for o in m.officers)}\n"
         + (f"  (the node was running: {running})\n" if running else "")
         + f"check it: custody backup verify {args.out}")  # fmt: skip
    return 0


# ------------------------------------------------------------------ unlock helpers


def _backup_key(args: argparse.Namespace, bundle: Any) -> tuple[bytearray, list[str], list[str]]:
    """(backup key, officers used, officers whose pieces disagreed) from the arguments."""
    from node.backup import bundle as bmod
    from node.backup import officers
    from node.backup.formats import BackupError

    if args.officer_key and (args.restore_key or args.release):
        raise BackupError("give either --officer-key (k times) or --restore-key with --release")
    if args.release and not args.restore_key:
        raise BackupError("--release needs --restore-key")
    if args.restore_key:
        from node.backup.release import open_releases

        pieces = open_releases(bundle, args.restore_key, args.release)
        key, bad = bmod.combine(bundle, pieces)
        return key, sorted(pieces), bad
    keys = [officers.load_private(p) for p in args.officer_key]
    key, bad = bmod.unlock(bundle, keys)
    return key, sorted(k.officer.name for k in keys), bad


def _describe(m: Any) -> str:
    snap = (f"index {m.snapshot.index}, term {m.snapshot.term}, {m.snapshot.size} bytes "
            "encrypted" if m.snapshot else "none (shares only)")  # fmt: skip
    shares = ", ".join(f"{s.share_id.key_id} v{s.share_id.version}" for s in m.shares[:8])
    more = f" and {len(m.shares) - 8} more" if len(m.shares) > 8 else ""
    return (f"bundle {m.bundle_id.hex()}: {m.node} of cluster {m.cluster_id} (genesis "
            f"{m.genesis.hex()[:16]}...), made {m.created_at}\n"
            f"  snapshot: {snap}\n  shares:   {len(m.shares)} ({shares or '-'}{more})\n"
            f"  officers: any {m.k} of {', '.join(o.name for o in m.officers)}")  # fmt: skip


# ------------------------------------------------------------------ verify


@_guard
def _verify(args: argparse.Namespace) -> int:
    from node.backup import bundle as bmod
    from node.backup.formats import zero

    b = bmod.inspect(args.bundle)
    m = b.manifest
    if args.config is not None:
        from node.server.config import load_config

        cfg = load_config(args.config, create_data_dir=False)
        bmod.check_for_node(b, cluster_id=cfg.cluster_id, genesis=cfg.genesis, node=cfg.name)
    out: dict[str, Any] = {"bundle": str(args.bundle), "manifest": m.to_json(),
                           "integrity": "ok", "authenticity": "not checked"}  # fmt: skip
    lines = [_describe(m), "integrity: ok (structure, SHA256SUMS, manifest hashes, share "
             "headers); this does not prove who made the bundle"]  # fmt: skip
    if args.config is not None:
        lines.append(f"node: the bundle is {m.node}'s, of this cluster ({args.config})")
    if not (args.officer_key or args.restore_key or args.release):
        lines.append(f"authenticity: not checked (give {m.k} officers: --officer-key, or "
                     "--restore-key with --release)")  # fmt: skip
        _out(args, out, "\n".join(lines))
        return 0
    key, used, bad = _backup_key(args, b)
    try:
        contents = bmod.open_contents(b, key)
    finally:
        zero(key)
    summary = contents.summary()
    out.update(authenticity="ok", officers=used, disagreeing_officers=bad, shares=summary)
    lines.append(f"authenticity: ok: the manifest MAC verifies with {', '.join(used)}; "
                 + ("the snapshot decrypts and decodes for this cluster; " if m.snapshot else "")
                 + f"{len(contents.shares)} share blob(s) open ("
                 + ", ".join(f"{n} {k}" for k, n in sorted(summary.items())) + ")")
    if bad:
        lines.append(f"warning: these officers' pieces disagree with the key: {', '.join(bad)}")
    _out(args, out, "\n".join(lines))
    return 0


# ------------------------------------------------------------------ request / release


@_guard
def _request(args: argparse.Namespace) -> int:
    from node.backup import bundle as bmod
    from node.backup.release import make_request

    b = bmod.inspect(args.bundle)
    req, key = make_request(b, args.out)
    _out(args, {"request": str(req), "restore_key": str(key)},
         f"restore request {req} (send it to {b.manifest.k} of the officers: "
         f"{', '.join(o.name for o in b.manifest.officers)})\nrestore key {key} (0600: keep it "
         "here, delete it after the restore)\neach officer runs: custody backup release "
         f"BUNDLE --officer-key NAME.officer-key.json --to {req.name} --out NAME.release.json")
    return 0


@_guard
def _release(args: argparse.Namespace) -> int:
    from node.backup import bundle as bmod
    from node.backup import officers
    from node.backup.formats import canonical_json, write_file
    from node.backup.release import load_request, make_release

    b = bmod.inspect(args.bundle)
    request = load_request(args.to, b)
    key = officers.load_private(args.officer_key)
    release = make_release(b, key, request)
    write_file(args.out, canonical_json(release), 0o644)
    m = b.manifest
    _out(args, {"release": str(args.out), "officer": key.officer.name,
                "bundle_id": m.bundle_id.hex(), "node": m.node, "cluster_id": m.cluster_id},
         f"officer {key.officer.name}: released your piece of bundle {m.bundle_id.hex()} "
         f"({m.node} of cluster {m.cluster_id}, made {m.created_at}) to restore request "
         f"{request['request_id']}\n  -> {args.out} (only that request's restore key opens "
         "it)")  # fmt: skip
    return 0


# ------------------------------------------------------------------ restore


@_guard
def _restore(args: argparse.Namespace) -> int:
    from node.backup import bundle as bmod
    from node.backup import node_ops
    from node.backup.formats import BackupError, zero
    from node.server.config import load_config

    cfg = load_config(args.config, create_data_dir=False)
    why = node_ops.node_running(cfg)
    if why is not None:
        raise BackupError(f"{cfg.name} seems to be running ({why}); stop it first")
    b = bmod.inspect(args.bundle)
    bmod.check_for_node(b, cluster_id=cfg.cluster_id, genesis=cfg.genesis, node=cfg.name)
    if not (args.officer_key or args.restore_key):
        raise BackupError(f"give {b.manifest.k} officers: --officer-key (k times), or "
                          "--restore-key with --release (k times)")  # fmt: skip
    key, used, bad = _backup_key(args, b)
    try:
        report = node_ops.restore_node(b, key, cfg, force=args.force,
                                       shares=not args.snapshot_only,
                                       snapshot=not args.shares_only)  # fmt: skip
    finally:
        zero(key)
    data = {**report.to_json(), "officers": used, "disagreeing_officers": bad}
    lines = [f"restored {cfg.name} from bundle {report.bundle_id} (officers "
             f"{', '.join(used)})"]  # fmt: skip
    if not args.snapshot_only:
        lines.append(f"  shares imported: {len(report.imported)}"
                     + (f"; skipped {len(report.skipped)} (destroyed)" if report.skipped else "")
                     + "; checks: " + (", ".join(f"{n} {k}" for k, n in
                                                  sorted(report.checks.items())) or "-"))
    if report.snapshot:
        lines.append(f"  data directory {report.data_dir}: starts at snapshot index "
                     f"{report.snapshot['index']} (term {report.snapshot['term']})")
    lines += [f"  note: {n}" for n in report.notes]
    if bad:
        lines.append(f"  warning: these officers' pieces disagree: {', '.join(bad)}")
    lines.append(f"next: start the node (custody cluster up, or custody node run --config "
                 f"{args.config}); Raft catches it up from the leader")
    _out(args, data, "\n".join(lines))
    return 0
