"""``custody pki init | show | verify``: argument parsing and printing only.

``show --json`` and ``verify --json`` print one JSON document on stdout for
scripts; the exit statuses do not change (verify: 0 all good, 1 problems found;
both: 2 for an unusable directory, reported on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from node.pki.manifest import Pki, load_pki
from node.pki.names import MAX_NODES, MIN_NODES
from node.pki.store import (
    DEFAULT_CA_DAYS,
    DEFAULT_LEAF_DAYS,
    init_pki,
    make_request,
    principal_pairs,
    read_certificate,
    verify_pki,
)

MAX_ARG_LEN = 8192


def _names(value: str) -> list[str]:
    """A comma-separated list of names; empty items are an error, not silently dropped."""
    if len(value) > MAX_ARG_LEN:
        raise argparse.ArgumentTypeError("list too long")
    items = value.split(",")
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"empty name in {value!r}")
    return items


def _node_hosts(value: str) -> list[list[str]]:
    """``H1,H2,...``: one entry per node; an entry may name several hosts joined by ``+``."""
    if len(value) > MAX_ARG_LEN:
        raise argparse.ArgumentTypeError("list too long")
    entries = [entry.split("+") for entry in value.split(",")]
    if any(not h for entry in entries for h in entry):
        raise argparse.ArgumentTypeError(f"empty host in {value!r}")
    return entries


def _flatten(lists: list[list[str]] | None) -> list[str]:
    return [x for sub in lists or [] for x in sub]


def register(subparsers: argparse._SubParsersAction) -> None:
    pki = subparsers.add_parser("pki", help="create and inspect the cluster PKI")
    sub = pki.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init",
        help="create a CA, node and principal certificates, approval keys and pki.json",
        description=(
            "Create the cluster PKI in DIR. Re-running with the same arguments is a no-op; "
            "adding principals or nodes issues only the new ones (the CA key must be "
            "available); anything else is refused unless --force re-creates everything."
        ),
    )
    init.add_argument("--dir", required=True, type=Path, help="PKI directory")
    init.add_argument(
        "--nodes", required=True, type=int, help=f"number of nodes ({MIN_NODES}..{MAX_NODES})"
    )
    init.add_argument(
        "--node-hosts",
        type=_node_hosts,
        help="hosts of each node, comma-separated in node order; several hosts for one node "
        "joined by '+' (default: 127.0.0.1+localhost for every node)",
    )
    for role in ("approvers", "clients", "operators", "auditors"):
        init.add_argument(
            f"--{role}",
            type=_names,
            action="append",
            metavar="NAME[,NAME...]",
            help=f"{role}: lower-case names, comma-separated",
        )
    init.add_argument(
        "--ca-key",
        "--ca-key-out",
        dest="ca_key",
        type=Path,
        help="keep the CA private key at this path outside DIR (e.g. removable media): "
        "written there on creation, read from there when adding identities",
    )
    init.add_argument("--ca-days", type=int, default=DEFAULT_CA_DAYS, help="CA validity (days)")
    init.add_argument(
        "--leaf-days", type=int, default=DEFAULT_LEAF_DAYS, help="leaf validity (days)"
    )
    init.add_argument(
        "--force", action="store_true", help="overwrite an existing PKI (new CA, new keys)"
    )
    init.set_defaults(func=cmd_init)

    show = sub.add_parser("show", help="print the identities in a PKI directory")
    show.add_argument("--dir", required=True, type=Path)
    show.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    show.set_defaults(func=cmd_show)

    verify = sub.add_parser(
        "verify", help="check every certificate, key and permission against pki.json"
    )
    verify.add_argument("--dir", required=True, type=Path)
    verify.add_argument("--ca-key", type=Path, help="also check an offline CA key")
    verify.add_argument(
        "--json", action="store_true", help='print {"ok": bool, "problems": [...]} as JSON'
    )
    verify.set_defaults(func=cmd_verify)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cmd_init(args: argparse.Namespace) -> int:
    request = make_request(
        args.nodes,
        node_hosts=args.node_hosts,
        principals=principal_pairs(
            _flatten(args.approvers),
            _flatten(args.clients),
            _flatten(args.operators),
            _flatten(args.auditors),
        ),
        ca_days=args.ca_days,
        leaf_days=args.leaf_days,
    )
    result = init_pki(args.dir, request, now=_now(), ca_key_path=args.ca_key, force=args.force)
    if result.action == "noop":
        print(f"PKI in {args.dir} is already complete and matches the arguments; nothing to do")
    elif result.action == "extend":
        noun = "identity" if len(result.issued) == 1 else "identities"
        print(f"issued {len(result.issued)} new {noun} in {args.dir}: {', '.join(result.issued)}")
    else:
        where = args.ca_key if args.ca_key is not None else args.dir / "ca" / "ca.key"
        print(
            f"created PKI in {args.dir}: CA, {request.nodes} nodes, "
            f"{len(request.principals)} principals; CA key at {where}"
        )
    return 0


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


def show_summary(pki: Pki) -> dict[str, Any]:
    """What ``pki show --json`` prints: the manifest's identities, public values only."""
    m = pki.manifest
    ca = read_certificate(pki.ca_cert_path)
    return {
        "ca": {
            "sha256": m.ca_sha256,
            "not_valid_after": ca.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "key": m.ca_key,  # None: kept outside the directory
        },
        "validity_days": {"ca": m.ca_days, "leaf": m.leaf_days},
        "nodes": [{"id": n.id, "index": n.index, "hosts": list(n.hosts)} for n in m.nodes],
        "principals": [
            {"name": p.name, "role": p.role, "approval_public_key_hex": p.approval_public_key_hex}
            for p in m.principals
        ],
    }


def cmd_show(args: argparse.Namespace) -> int:
    pki = load_pki(args.dir)
    if args.json:
        _print_json(show_summary(pki))
        return 0
    m = pki.manifest
    ca = read_certificate(pki.ca_cert_path)
    ca_key = m.ca_key if m.ca_key is not None else "(kept outside the directory)"
    print(f"CA        sha256:{m.ca_sha256}  until {ca.not_valid_after_utc:%Y-%m-%d}  key {ca_key}")
    for n in m.nodes:
        print(f"{n.id:<9} node      {' '.join(n.hosts)}")
    for p in m.principals:
        extra = f"approval key {p.approval_public_key_hex}" if p.approval_public_key_hex else ""
        print(f"{p.name:<9} {p.role:<9} {extra}".rstrip())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    pki = load_pki(args.dir)
    problems = verify_pki(pki, now=_now(), ca_key_path=args.ca_key)
    if args.json:
        _print_json({"ok": not problems, "problems": problems})
        return 1 if problems else 0
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        return 1
    m = pki.manifest
    print(f"ok: CA, {len(m.nodes)} nodes, {len(m.principals)} principals verified")
    return 0


__all__ = ["cmd_init", "cmd_show", "cmd_verify", "register", "show_summary"]
