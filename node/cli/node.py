"""`custody node ...`: run a node; repair a member's shares; re-provision a lost token.

    custody node run --config FILE            run one custody node in the foreground
    custody node provision --config FILE      make a new token for a node whose token was
                                              lost (SoftHSM2); prints its identity key
    custody node repair NAME [--public-key]   ask the governance quorum to rebuild NAME's
                                              shares (operator); a new key waits the time lock
    custody node repairs [--watch]            progress of repairs, per key version
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, run_client, table
from node.client.http import Client, new_request_id
from node.client.profile import Profile


def register(subparsers: argparse._SubParsersAction) -> None:
    node = subparsers.add_parser("node", help="run a custody node; repair a member")
    sub = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="run this node until SIGTERM",
        description="Open the node's HSM slot, join the Raft cluster and serve the HTTPS API. "
        "Exit status: 0 after SIGTERM/SIGINT, 1 on a start failure or fail-stop, "
        "2 for a bad configuration.",
    )
    run.add_argument("--config", required=True, type=Path, help="the node's node.toml")
    run.set_defaults(func=_run)
    prov = sub.add_parser(
        "provision",
        help="create a new token for a node whose token was lost (SoftHSM2)",
        description="Create the node's token again (same label, new PINs written to the "
        "node's PIN files) with a new identity key, and print that key. The node then "
        "replicates the log but signs nothing until `custody node repair NAME "
        "--public-key KEY` registers the key and rebuilds its shares. Refuses while the "
        "old token still exists.",
    )
    prov.add_argument("--config", required=True, type=Path, help="the node's node.toml")
    prov.add_argument("--json", action="store_true", help="machine-readable output")
    prov.set_defaults(func=_provision)
    rep = sub.add_parser(
        "repair",
        help="rebuild a member's shares of every key version from t helpers (operator)",
        description="Submit a repair_member governance request. Once the governance "
        "quorum approves it (and, with --public-key, once its time lock is over), t "
        "helpers rebuild NAME's share of every usable key version without any share or "
        "key leaving its holder; NAME checks each share against the published "
        "verification share before it stores it.",
    )
    rep.add_argument("name", help="the member, e.g. node-2")
    rep.add_argument("--public-key", help="its new identity key (hex), printed by "
                     "`custody node provision`, when its token was lost")  # fmt: skip
    rep.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(rep)
    rep.set_defaults(func=_repair)
    ls = sub.add_parser("repairs", help="repairs and their progress per key version")
    ls.add_argument("--watch", action="store_true", help="refresh until no repair runs")
    ls.add_argument("--versions", action="store_true", help="one line per key version")
    add_client_args(ls)
    ls.set_defaults(func=_repairs)


def _run(args: argparse.Namespace) -> int:
    from node.server.config import load_config
    from node.server.main import run

    cfg = load_config(args.config)  # ConfigError (a ValueError): one line, exit 2
    return run(cfg)


def _provision(args: argparse.Namespace) -> int:
    import json
    import secrets

    from node.hsm import softhsm
    from node.hsm.pkcs11_slot import find_module
    from node.server.config import load_config

    cfg = load_config(args.config)
    if cfg.hsm_softhsm_conf is None or cfg.hsm_pin_file is None:
        print("custody: provision needs a SoftHSM2 node (hsm softhsm_conf and pin_file); for "
              "another HSM, create the token and identity key with its own tools",
              file=sys.stderr)  # fmt: skip
        return 2
    hsm_dir = cfg.hsm_softhsm_conf.parent
    tokens = hsm_dir / "tokens"
    if tokens.exists() and any(tokens.iterdir()):
        print(f"custody: {tokens} still holds a token: remove it first if it is really lost "
              "(its shares cannot be used again once the member is repaired)", file=sys.stderr)
        return 1
    env = softhsm.SoftHsmEnv(str(cfg.hsm_softhsm_conf), str(tokens), find_module(cfg.hsm_module))
    tokens.mkdir(mode=0o700, exist_ok=True)
    user_pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    softhsm.write_pin_file(cfg.hsm_pin_file, user_pin)
    softhsm.write_pin_file(hsm_dir / "so.pin", so_pin)
    public_key = softhsm.provision_token(
        env, cfg.hsm_token_label, cfg.cluster_id, user_pin=user_pin, so_pin=so_pin
    )
    del user_pin, so_pin
    out = {"node": cfg.name, "token_label": cfg.hsm_token_label,
           "identity_public_key": public_key.hex()}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"new token {cfg.hsm_token_label} for {cfg.name}; identity key:\n"
              f"{public_key.hex()}\n"
              f"next: custody node repair {cfg.name} --public-key {public_key.hex()}")
    return 0


def _repair(args: argparse.Namespace) -> int:
    from node.cli.keys import post_signed
    from node.state import RepairMember

    key = b""
    if args.public_key:
        try:
            key = bytes.fromhex(args.public_key)
        except ValueError:
            key = b""
        if len(key) != 32:
            print("custody: --public-key must be 64 hex digits (a raw Ed25519 key)",
                  file=sys.stderr)  # fmt: skip
            return 2

    async def body(client: Client, profile: Profile) -> int:
        cmd = RepairMember(
            request_id=args.request_id or new_request_id("repair"), author=profile.principal,
            name=args.name, public_key=key,
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"governance request {o['request']}: {o['code']} "
             f"{o.get('detail', '')}\n(needs the governance quorum: custody approve "
             f"{o['request']}; then watch: custody node repairs --watch)")  # fmt: skip
        return 0

    return run_client(args, body)


def describe_repair(r: dict[str, Any], versions: bool = False) -> str:
    head = (f"{r['member']}: {r['state']}  {r['done']}/{r['total']} versions rebuilt  "
            f"run {r['run']}  helpers {', '.join(r['helpers']) or '-'}"
            + (f"  excluded {', '.join(r['excluded'])}" if r["excluded"] else "")
            + (f"  failure: {r['failure']}" if r["failure"] else ""))  # fmt: skip
    if not versions or not r["versions"]:
        return head
    rows = [[v["key_id"], str(v["version"]), v["state"]] for v in r["versions"]]
    return head + "\n" + table(rows, ["KEY", "VERSION", "STATE"])


def _repairs(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        while True:
            data = await client.get("/v1/repairs")
            emit(args, data, lambda d: "\n".join(
                describe_repair(r, args.versions) for r in d["repairs"]) or "no repairs")
            running = any(r["state"] == "running" for r in data["repairs"])
            if not args.watch or not running:
                return 0 if not any(r["state"] == "failed" for r in data["repairs"]) else 1
            await asyncio.sleep(1.0)

    return run_client(args, body)
