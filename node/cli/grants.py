"""`custody grants create|list|show|revoke|keygen|client-key` and `custody grant-sign`:
grants, capabilities a key's quorum approves in advance for services that cannot wait
for people (docs/grants.md).

Operators and approvers sign their commands here with the profile's approval key; a
client signs its requests under a grant with its own signing key: the profile's
`approval_key` (issued by `pki init`, registered at bootstrap), unless `--signing-key`
or `$CUSTODY_SIGNING_KEY` names another (one made by `grants keygen` and registered by
`grants client-key`, to rotate it).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, progress, run_client, table
from node.client.http import Client, new_request_id
from node.client.profile import Profile

MAX_MESSAGE = 64 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("grants", help="grants: pre-approved capabilities for services")
    sub = g.add_subparsers(dest="grants_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="propose a grant (operator; the key's quorum approves)")
    c.add_argument("grant_id")
    c.add_argument("--grantee", required=True, help="the client that may use it")
    c.add_argument("--key", required=True, help="key id or alias (the grant names the key id)")
    c.add_argument("--operations", default="sign", help="sign and/or decrypt (comma-separated)")
    c.add_argument("--context", required=True, help="the context requests must carry")
    c.add_argument("--prefix", action="store_true", help="--context is a prefix (else exact)")
    c.add_argument("--max-uses", type=int, required=True)
    c.add_argument("--expires-epoch", type=int, required=True, help="usable below this epoch")
    c.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(c)
    c.set_defaults(func=_create)
    ls = sub.add_parser("list", help="grants (a client sees its own)")
    ls.add_argument("--key")
    ls.add_argument("--grantee")
    ls.add_argument("--state", choices=("pending", "active", "revoked", "failed"))
    add_client_args(ls)
    ls.set_defaults(func=_list)
    sh = sub.add_parser("show", help="one grant")
    sh.add_argument("grant_id")
    add_client_args(sh)
    sh.set_defaults(func=_show)
    rv = sub.add_parser("revoke", help="revoke at once (operator, or one approver of its quorum)")
    rv.add_argument("grant_id")
    rv.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(rv)
    rv.set_defaults(func=_revoke)
    kg = sub.add_parser("keygen", help="make a new client signing key (Ed25519, PKCS#8, 0600)")
    kg.add_argument("--out", type=Path, required=True)
    kg.set_defaults(func=_keygen)
    ck = sub.add_parser(
        "client-key",
        help="register a client's new signing key (operator; governance rekey_principal)",
    )
    ck.add_argument("client")
    ck.add_argument("--public-key-hex", required=True, help="32-byte Ed25519 public key")
    ck.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(ck)
    ck.set_defaults(func=_client_key)

    s = subparsers.add_parser("grant-sign", help="sign under a grant, no approvals (client)")
    s.add_argument("--grant", required=True)
    s.add_argument("--key", required=True)
    m = s.add_mutually_exclusive_group(required=True)
    m.add_argument("--message-file", type=Path)
    m.add_argument("--message-hex")
    s.add_argument("--context", default="", help="must fall within the grant's context")
    s.add_argument("--version", type=int, default=0, help="key version (default: primary)")
    s.add_argument(
        "--signing-key",
        help="the client's signing key, if not the profile's approval_key "
        "(default: $CUSTODY_SIGNING_KEY, else the profile's)",
    )
    s.add_argument("--wait", action="store_true", help="wait for the signature")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (--wait)")
    s.add_argument("--out", type=Path, help="write the 64-byte signature here")
    s.add_argument("--request-id", help="reuse to retry a submission safely")
    add_client_args(s)
    s.set_defaults(func=_grant_sign)


def _row(g: dict[str, Any]) -> list[str]:
    ctx = g["context"] + ("*" if g["context_match"] == "prefix" else "")
    state = g["state"] + (" (expired)" if g["expired"] else "")
    return [g["grant_id"], g["grantee"], g["key_id"], ",".join(g["operations"]), ctx,
            f"{g['uses']}/{g['max_uses']}", str(g["expires_epoch"]), state]  # fmt: skip


HEADER = ["GRANT", "GRANTEE", "KEY", "OPS", "CONTEXT", "USES", "EXPIRES", "STATE"]


def _create(args: argparse.Namespace) -> int:
    from node.cli.keys import resolve_key_id, signed_command
    from node.state import CreateGrant

    ops = tuple(o.strip() for o in args.operations.split(",") if o.strip())

    async def body(client: Client, profile: Profile) -> int:
        cmd = CreateGrant(
            request_id=args.request_id or new_request_id("grant"), author=profile.principal,
            grant_id=args.grant_id, grantee=args.grantee,
            key_id=await resolve_key_id(client, args.key), operations=ops,
            context=args.context, context_match="prefix" if args.prefix else "exact",
            max_uses=args.max_uses, expires_epoch=args.expires_epoch,
        )  # fmt: skip
        out = await client.post("/v1/grants", {"command_b64": await signed_command(profile, cmd)})
        emit(args, out, lambda o: f"grant {args.grant_id}: request {o['request']} {o['code']} "
             f"(needs the key quorum's approvals: custody approve {o['request']})")  # fmt: skip
        return 0

    return run_client(args, body)


def _list(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        q = {k: v for k, v in (("key", args.key), ("grantee", args.grantee),
                               ("state", args.state)) if v}  # fmt: skip
        out = await client.get("/v1/grants", **q)
        emit(args, out, lambda o: table([_row(g) for g in o["grants"]], HEADER))
        return 0

    return run_client(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        g = await client.get(f"/v1/grants/{args.grant_id}")

        def human(g: dict[str, Any]) -> str:
            lines = [table([_row(g)], HEADER), f"request {g['request']} ({g['request_state']}); "
                     f"approved by {', '.join(g['approvals']) or 'nobody yet'} "
                     f"({g['k']} of {', '.join(g['approvers'])})"]  # fmt: skip
            if g["revoked_by"]:
                lines.append(f"revoked by {g['revoked_by']} at epoch {g['revoked_epoch']}")
            return "\n".join(lines)

        emit(args, g, human)
        return 0

    return run_client(args, body)


def _revoke(args: argparse.Namespace) -> int:
    from node.cli.keys import signed_command
    from node.state import RevokeGrant

    async def body(client: Client, profile: Profile) -> int:
        cmd = RevokeGrant(
            request_id=args.request_id or new_request_id("revoke-grant"),
            author=profile.principal, grant_id=args.grant_id,
        )  # fmt: skip
        out = await client.post(f"/v1/grants/{args.grant_id}/revoke",
                                {"command_b64": await signed_command(profile, cmd)})  # fmt: skip
        emit(args, out, lambda o: f"grant {args.grant_id}: {o['code']} ({o['detail']})")
        return 0

    return run_client(args, body)


def _keygen(args: argparse.Namespace) -> int:
    from node.client.grants import new_signing_key

    pub = new_signing_key(args.out)
    print(pub.hex())
    progress(args, f"wrote {args.out}; register it: custody grants client-key <client> "
             f"--public-key-hex {pub.hex()} (operator)")  # fmt: skip
    return 0


def _client_key(args: argparse.Namespace) -> int:
    from node.cli.keys import post_signed
    from node.state import RekeyPrincipal

    try:
        pub = bytes.fromhex(args.public_key_hex)
    except ValueError:
        raise ValueError("--public-key-hex must be hex") from None

    async def body(client: Client, profile: Profile) -> int:
        cmd = RekeyPrincipal(
            request_id=args.request_id or new_request_id("client-key"),
            author=profile.principal, name=args.client, public_key=pub,
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"request {o['request']}: {o['code']} "
             f"(governance: custody approve {o['request']})")  # fmt: skip
        return 0

    return run_client(args, body)


def _message(args: argparse.Namespace) -> bytes:
    if args.message_file is not None:
        data = args.message_file.read_bytes()
    else:
        try:
            data = bytes.fromhex(args.message_hex)
        except ValueError:
            raise ValueError("--message-hex must be hex") from None
    if not 1 <= len(data) <= MAX_MESSAGE:
        raise ValueError(f"the message must be 1..{MAX_MESSAGE} bytes")
    return data


def _grant_sign(args: argparse.Namespace) -> int:
    from node.cli.keys import wait_request
    from node.client.grants import load_signing_key, signed_request

    message = _message(args)

    async def body(client: Client, profile: Profile) -> int:
        key = load_signing_key(args.signing_key, profile.approval_key)
        b64 = signed_request(
            key, profile.cluster_id, request_id=args.request_id or new_request_id("gsign"),
            author=profile.principal, grant=args.grant, key_id=args.key, op="sign",
            payload=message, context=args.context, version=args.version,
        )  # fmt: skip
        out = await client.post("/v1/requests/signed", {"command_b64": b64})
        ref = out["request"]
        progress(args, f"request {ref} {out['code']} under grant {args.grant} ({out['detail']}); "
                 f"message sha256 {hashlib.sha256(message).hexdigest()}")  # fmt: skip
        if not args.wait:
            emit(args, out, lambda o: f"{ref} {o['code']}")
            return 0
        r = await wait_request(client, ref, args.timeout, lambda s: progress(args, s))
        if r["state"] != "executed":
            print(f"custody: error: request {ref} {r['state']}: {r.get('failure')}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if args.out:
            args.out.write_bytes(bytes.fromhex(r["signature"]))
        emit(args, r, lambda o: o["signature"])
        return 0

    return run_client(args, body)


__all__ = ["register"]
