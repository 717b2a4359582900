"""`custody node ...`: run a node; repair a member's shares; re-provision a lost token.

    custody node run --config FILE            run one custody node in the foreground
    custody node provision --config FILE      make a new token for a node whose token was
                                              lost (SoftHSM2); prints its identity key
    custody node repair NAME [--public-key]   ask the governance quorum to rebuild NAME's
                                              shares (operator); a new key waits the time lock
    custody node repairs [--watch]            progress of repairs, per key version
    custody node add NAME --public-key --raft --api
                                              add a member (operator; governance quorum,
                                              time-locked); it joins Raft as a learner
    custody node remove NAME                  remove a member (operator; governance quorum)
    custody node replace NAME --public-key --raft --api
                                              NAME on a new machine: new identity key and
                                              addresses, its shares rebuilt (a repair)
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
    add = sub.add_parser(
        "add",
        help="add a member (operator; governance quorum, time-locked)",
        description="Submit an add_member governance request with the new node's identity "
        "key and addresses. Once it takes effect, every member learns the addresses from "
        "the log; the leader adds the node to Raft as a learner and makes it a voter once "
        "it has caught up. It takes part in key versions created from then on (rotate "
        "keys to give it shares of them). Make the node with `custody cluster add-node` "
        "(local clusters) or by hand: certificate, token, node.toml with `join = true`.",
    )
    add.add_argument("name", help="node-<i>, the next free index")
    _identity_args(add)
    add.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(add)
    add.set_defaults(func=_add)
    rm = sub.add_parser(
        "remove",
        help="remove a member (operator; governance quorum, time-locked)",
        description="Refused while it would leave any usable key version with fewer than t "
        "members holding a share (rotate keys first).",
    )
    rm.add_argument("name")
    rm.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(rm)
    rm.set_defaults(func=_remove)
    rp = sub.add_parser(
        "replace",
        help="NAME on a new machine: new identity key and addresses, shares rebuilt",
        description="A repair_member request that also moves NAME's addresses in the "
        "replicated address book: the new machine (with NAME's certificate, a new token "
        "from `custody node provision`, and NAME's node.toml) takes NAME's place; t "
        "helpers rebuild its shares. The old machine's identity key is dead.",
    )
    rp.add_argument("name")
    _identity_args(rp)
    rp.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(rp)
    rp.set_defaults(func=_replace)
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


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-key", required=True, help="its identity key (hex), printed by "
                   "`custody node provision` or `custody cluster add-node`")  # fmt: skip
    p.add_argument("--raft", required=True, metavar="HOST:PORT", help="its Raft address")
    p.add_argument("--api", required=True, metavar="HOST:PORT", help="its API address")


def _public_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("--public-key must be 64 hex digits (a raw Ed25519 key)")
    return key


def _submit_governance(args: argparse.Namespace, make: Any) -> int:
    from node.cli.keys import post_signed

    async def body(client: Client, profile: Profile) -> int:
        out = await post_signed(client, profile, make(profile.principal))
        emit(args, out, lambda o: f"governance request {o['request']}: {o['code']} "
             f"{o.get('detail', '')}\n(needs the governance quorum: custody approve "
             f"{o['request']}; progress: custody node repairs --watch)")  # fmt: skip
        return 0

    return run_client(args, body)


def _add(args: argparse.Namespace) -> int:
    from node.state import AddMember
    from node.state.names import member_index

    key = _public_key(args.public_key)
    return _submit_governance(args, lambda author: AddMember(
        request_id=args.request_id or new_request_id("add-member"), author=author,
        name=args.name, index=member_index(args.name), public_key=key,
        raft_address=args.raft, api_address=args.api,
    ))  # fmt: skip


def _remove(args: argparse.Namespace) -> int:
    from node.state import RemoveMember

    return _submit_governance(args, lambda author: RemoveMember(
        request_id=args.request_id or new_request_id("remove-member"), author=author,
        name=args.name))  # fmt: skip


def _replace(args: argparse.Namespace) -> int:
    from node.state import RepairMember

    key = _public_key(args.public_key)
    return _submit_governance(args, lambda author: RepairMember(
        request_id=args.request_id or new_request_id("replace"), author=author,
        name=args.name, public_key=key, raft_address=args.raft, api_address=args.api,
    ))  # fmt: skip


def _repair(args: argparse.Namespace) -> int:
    from node.state import RepairMember

    key = _public_key(args.public_key) if args.public_key else b""
    return _submit_governance(args, lambda author: RepairMember(
        request_id=args.request_id or new_request_id("repair"), author=author,
        name=args.name, public_key=key,
    ))  # fmt: skip


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
