"""`custody keys create|rotate|rollback|revoke|destroy|list|show|metadata|alias`,
`custody sign`,
`custody policy set`, `custody epoch advance`, `custody status`: the operator's and
client's commands.

Operator commands are signed here, with the operator's own approval key from
the profile; no node ever holds it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, progress, run_client, table
from node.client.http import Client, new_request_id
from node.client.profile import Profile

MAX_MESSAGE = 64 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list and show keys")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="request a new key (DKG once approved; operator)")
    c.add_argument("key_id")
    c.add_argument("--purpose", choices=("sign", "encrypt"), default="sign")
    c.add_argument("--policy", required=True, help="policy id deciding the key's requests")
    c.add_argument("--activate-epoch", type=int, default=0, help="earliest activation epoch")
    _metadata_args(c)
    c.add_argument("--request-id", help="reuse to retry a create safely")
    add_client_args(c)
    c.set_defaults(func=_create)
    md = sub.add_parser("metadata", help="change a key's owner, description, tags (operator; "
                        "at once, audited; labels only: they grant nothing)")  # fmt: skip
    md.add_argument("key_id", help="a key id or alias")
    _metadata_args(md)
    md.add_argument(
        "--untag", action="append", default=[], metavar="NAME", help="remove this tag (repeatable)"
    )
    md.add_argument("--clear", action="store_true", help="start from empty metadata")
    md.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(md)
    md.set_defaults(func=_set_metadata)
    al = sub.add_parser("alias", help="aliases: names bound to one key for ever")
    alsub = al.add_subparsers(dest="alias_command", metavar="ACTION", required=True)
    a_set = alsub.add_parser("set", help="create ALIAS for KEY (operator; never repoints)")
    a_set.add_argument("alias")
    a_set.add_argument("key_id", help="the key id (not another alias)")
    a_set.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(a_set)
    a_set.set_defaults(func=_alias_set)
    a_del = alsub.add_parser("delete", help="delete ALIAS (its name stays reserved for its key)")
    a_del.add_argument("alias")
    a_del.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(a_del)
    a_del.set_defaults(func=_alias_delete)
    a_ls = alsub.add_parser("list", help="live aliases")
    a_ls.add_argument("--key", help="only those naming this key")
    add_client_args(a_ls)
    a_ls.set_defaults(func=_alias_list)
    r = sub.add_parser("rotate", help="request a new version (DKG once approved; operator)")
    r.add_argument("key_id")
    r.add_argument("--activate-epoch", type=int, default=0, help="earliest activation epoch")
    r.add_argument("--request-id", help="reuse to retry a rotation request safely")
    add_client_args(r)
    r.set_defaults(func=_rotate)
    rb = sub.add_parser("rollback", help="make the version the primary replaced the primary "
                        "again, within the grace period (operator; approvals)")  # fmt: skip
    rb.add_argument("key_id")
    rb.add_argument(
        "--version",
        type=int,
        required=True,
        help="the retired version to restore (the one the primary replaced)",
    )
    rb.add_argument("--request-id", help="reuse to retry a rollback request safely")
    add_client_args(rb)
    rb.set_defaults(func=_rollback)
    for action, what in (
        ("revoke", "revoke a version: it can do nothing any more (operator; approvals)"),
        ("destroy", "destroy a revoked, or retired past its grace, version (operator; "
                    "approvals); members erase their shares"),
    ):  # fmt: skip
        e = sub.add_parser(action, help=what)
        e.add_argument("key_id")
        e.add_argument("--version", type=int, required=True)
        e.add_argument("--request-id", help=f"reuse to retry a {action} request safely")
        add_client_args(e)
        e.set_defaults(func=_end_version, action=action)
    ls = sub.add_parser("list", help="list keys")
    add_client_args(ls)
    ls.add_argument("--stale", action="store_true", help="read this node's replica as is")
    ls.set_defaults(func=_list)
    sh = sub.add_parser("show", help="a key's versions, states, epochs and public keys")
    sh.add_argument("key_id")
    sh.add_argument("--pem", action="store_true", help="print the primary public key as PEM")
    add_client_args(sh)
    sh.set_defaults(func=_show)

    s = subparsers.add_parser("sign", help="submit a sign request (client)")
    s.add_argument("--key", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--message-file", type=Path)
    g.add_argument("--message-hex")
    s.add_argument("--context", default="", help="printable ASCII, bound into the approval")
    s.add_argument("--version", type=int, default=0, help="key version (default: primary)")
    s.add_argument("--wait", action="store_true", help="wait for approvals and the signature")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (--wait)")
    s.add_argument("--out", type=Path, help="write the 64-byte signature here")
    s.add_argument(
        "--out-previous",
        type=Path,
        help="dual-sign window: write the previous version's signature here",
    )
    s.add_argument("--request-id", help="reuse to retry a submission safely")
    add_client_args(s)
    s.set_defaults(func=_sign)

    e = subparsers.add_parser("epoch", help="epochs")
    esub = e.add_subparsers(dest="epoch_command", metavar="ACTION", required=True)
    adv = esub.add_parser("advance", help="ask every member to vote the next epoch now")
    add_client_args(adv)
    adv.set_defaults(func=_epoch_advance)

    st = subparsers.add_parser("status", help="the cluster as the profile's nodes see it")
    add_client_args(st)
    st.set_defaults(func=_status)


def _metadata_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--owner", help="owning team or contact (printable ASCII, <= 128)")
    p.add_argument("--description", help="free text (printable ASCII, <= 1024)")
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a tag (repeatable; NAME: [a-z0-9][a-z0-9_.:/-]{0,62})",
    )


def _tag_pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--tag {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


async def resolve_key_id(client: Client, name: str) -> str:
    """The key id `name` (a key id or a live alias) denotes, from the key view: signed
    commands name key ids (docs/metadata.md)."""
    view = await client.get(f"/v1/keys/{name}")
    return str(view["key_id"])


async def signed_command(profile: Profile, cmd: Any) -> str:
    """Sign `cmd` with the profile's approval key; base64 of its canonical bytes."""
    from node.pki.store import read_private_key
    from node.state import DecodeError, encode_command, sign_command

    if profile.approval_key is None:
        raise ValueError(f"profile of {profile.principal} has no approval key")
    key = read_private_key(profile.approval_key)
    try:
        signed = sign_command(key, cmd, profile.cluster_id)
        return base64.b64encode(encode_command(signed)).decode()
    except DecodeError as exc:  # out of the command's schema: say which field, send nothing
        raise ValueError(str(exc)) from None


async def post_signed(client: Client, profile: Profile, cmd: Any) -> dict[str, Any]:
    """Submit `cmd`, signed with the profile's key, through `POST /v1/commands`."""
    return await client.post("/v1/commands", {"command_b64": await signed_command(profile, cmd)})


def _create(args: argparse.Namespace) -> int:
    from node.state import CreateKey

    async def body(client: Client, profile: Profile) -> int:
        rid = args.request_id or new_request_id("create")
        cmd = CreateKey(
            request_id=rid, author=profile.principal, key_id=args.key_id,
            purpose=args.purpose, policy_id=args.policy, activate_epoch=args.activate_epoch,
            owner=args.owner or "", description=args.description or "",
            tags=tuple(sorted(_tag_pairs(args.tag).items())),
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"request {o['request']}: {o['code']} "
             f"(needs approvals: custody approve {o['request']})")  # fmt: skip
        return 0

    return run_client(args, body)


async def _post_lifecycle(args: argparse.Namespace, client: Client, profile: Profile,
                          cmd: Any) -> int:  # fmt: skip
    out = await post_signed(client, profile, cmd)
    emit(args, out, lambda o: f"request {o['request']}: {o['code']} "
         f"(needs approvals: custody approve {o['request']})")  # fmt: skip
    return 0


def _rotate(args: argparse.Namespace) -> int:
    import time

    from node.state import RequestRotate

    async def body(client: Client, profile: Profile) -> int:
        cmd = RequestRotate(
            request_id=args.request_id or new_request_id("rotate"), author=profile.principal,
            key_id=await resolve_key_id(client, args.key_id), at=int(time.time()),
            activate_epoch=args.activate_epoch,
        )  # fmt: skip
        return await _post_lifecycle(args, client, profile, cmd)

    return run_client(args, body)


def _rollback(args: argparse.Namespace) -> int:
    """POST /v1/keys/{key}/rollback with this operator's signature over the command."""
    from node.pki.store import read_private_key
    from node.state import RequestRollback, sign_command

    async def body(client: Client, profile: Profile) -> int:
        if profile.approval_key is None:
            raise ValueError(f"profile of {profile.principal} has no approval key")
        key_id = await resolve_key_id(client, args.key_id)
        cmd = RequestRollback(
            request_id=args.request_id or new_request_id("rollback"), author=profile.principal,
            key_id=key_id, version=args.version,
        )  # fmt: skip
        signed = sign_command(read_private_key(profile.approval_key), cmd, profile.cluster_id)
        out = await client.post(
            f"/v1/keys/{key_id}/rollback",
            {"request_id": cmd.request_id, "version": cmd.version,
             "signature": signed.signature.hex()},
        )  # fmt: skip
        emit(args, out, lambda o: f"request {o['request']}: {o['code']} "
             f"(needs approvals: custody approve {o['request']})")  # fmt: skip
        return 0

    return run_client(args, body)


def _end_version(args: argparse.Namespace) -> int:
    from node.state import RequestDestroy, RequestRevoke

    kind = RequestRevoke if args.action == "revoke" else RequestDestroy

    async def body(client: Client, profile: Profile) -> int:
        cmd = kind(
            request_id=args.request_id or new_request_id(args.action), author=profile.principal,
            key_id=await resolve_key_id(client, args.key_id), version=args.version,
        )  # fmt: skip
        return await _post_lifecycle(args, client, profile, cmd)

    return run_client(args, body)


def _set_metadata(args: argparse.Namespace) -> int:
    """Read the key (an alias resolves to its id), change what the options name, and
    submit the whole new metadata (`set_key_metadata` replaces all three fields)."""
    from node.state.commands import SetKeyMetadata

    async def body(client: Client, profile: Profile) -> int:
        k = await client.get(f"/v1/keys/{args.key_id}")
        owner = "" if args.clear else k.get("owner", "")
        description = "" if args.clear else k.get("description", "")
        tags = {} if args.clear else dict(k.get("tags", {}))
        owner = owner if args.owner is None else args.owner
        description = description if args.description is None else args.description
        tags.update(_tag_pairs(args.tag))
        for name in args.untag:
            tags.pop(name, None)
        cmd = SetKeyMetadata(
            request_id=args.request_id or new_request_id("meta"), author=profile.principal,
            key_id=k["key_id"], owner=owner, description=description,
            tags=tuple(sorted(tags.items())),
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"metadata of key {k['key_id']}: {o['code']} "
             f"(audit record {o['seq']})")  # fmt: skip
        return 0

    return run_client(args, body)


def _alias_set(args: argparse.Namespace) -> int:
    from node.state.commands import CreateAlias

    async def body(client: Client, profile: Profile) -> int:
        cmd = CreateAlias(
            request_id=args.request_id or new_request_id("alias"), author=profile.principal,
            alias=args.alias, key_id=args.key_id,
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"alias {args.alias} -> key {args.key_id}: {o['code']}")
        return 0

    return run_client(args, body)


def _alias_delete(args: argparse.Namespace) -> int:
    from node.state.commands import DeleteAlias

    async def body(client: Client, profile: Profile) -> int:
        cmd = DeleteAlias(
            request_id=args.request_id or new_request_id("unalias"), author=profile.principal,
            alias=args.alias,
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"alias {args.alias} deleted: {o['code']}")
        return 0

    return run_client(args, body)


def _alias_list(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        out = await client.get("/v1/aliases", **({"key": args.key} if args.key else {}))
        rows = [[a["alias"], a["key_id"], str(a["created_epoch"])] for a in out["aliases"]]
        emit(args, out, lambda _o: table(rows, ["ALIAS", "KEY", "SINCE EPOCH"]))
        return 0

    return run_client(args, body)


def _metadata_lines(k: dict[str, Any]) -> str:
    """The key's labels, marked as such: they carry no authority (docs/metadata.md)."""
    lines = [f"owner:       {k.get('owner') or '-'}",
             f"description: {k.get('description') or '-'}",
             "tags:        " + (", ".join(f"{n}={v}" for n, v in sorted(k.get("tags", {}).items()))
                                or "-"),
             f"aliases:     {', '.join(k.get('aliases', [])) or '-'}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _erased(v: dict[str, Any]) -> str:
    """Who confirmed erasing their shares of a destroyed version (`record_erasure`)."""
    if v["state"] != "destroyed":
        return ""
    if "erased_by" not in v:
        return "?"  # a node without erasure confirmations in its key view
    return ",".join(v["erased_by"]) or "none yet"


def _versions_line(k: dict[str, Any]) -> str:
    return ", ".join(f"v{v['version']}:{v['state']}@{v['activation_epoch']}" for v in k["versions"])


def _list(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        out = await client.get("/v1/keys", **({"stale": "true"} if args.stale else {}))
        rows = [[k["key_id"], k["purpose"], k["policy_id"], str(k["primary"] or "-"),
                 _versions_line(k)] for k in out["keys"]]  # fmt: skip
        emit(args, out, lambda _o: table(rows, ["KEY", "PURPOSE", "POLICY", "PRIMARY", "VERSIONS"]))
        return 0

    return run_client(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        k = await client.get(f"/v1/keys/{args.key_id}")
        if args.pem:
            primary = [v for v in k["versions"] if v["version"] == k["primary"]]
            if not primary or not primary[0]["group_public_key_pem"]:
                raise ValueError(f"key {args.key_id} has no active version yet")
            print(primary[0]["group_public_key_pem"], end="")
            return 0
        rows = [[str(v["version"]), v["state"], str(v["activation_epoch"]), str(v["uses"]),
                 _erased(v) or "-", v["group_public_key"] or "-"]
                for v in k["versions"]]  # fmt: skip
        header = ["V", "STATE", "ACTIVATES", "USES", "ERASED BY", "GROUP PUBLIC KEY"]
        emit(args, k, lambda o: f"key {o['key_id']} ({o['purpose']}, policy {o['policy_id']}, "
             f"primary v{o['primary']})\n" + _metadata_lines(o) + table(rows, header))  # fmt: skip
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


def _sign(args: argparse.Namespace) -> int:
    message = _message(args)

    async def body(client: Client, _p: Profile) -> int:
        rid = args.request_id or new_request_id("sign")
        out = await client.post(
            f"/v1/keys/{args.key}/sign",
            {"request_id": rid, "message_b64": base64.b64encode(message).decode(),
             "context": args.context, "version": args.version},
        )  # fmt: skip
        ref = out["request"]
        progress(args, f"request {ref} submitted ({out['code']}); "
                 f"message sha256 {hashlib.sha256(message).hexdigest()}")  # fmt: skip
        if not args.wait:
            emit(args, out, lambda o: f"{ref} {o['code']}: approve with `custody approve {ref}`")
            return 0
        r = await wait_request(client, ref, args.timeout, lambda s: progress(args, s))
        if r["state"] != "executed":
            print(f"custody: error: request {ref} {r['state']}: {r.get('failure')}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if args.out:
            args.out.write_bytes(bytes.fromhex(r["signature"]))
        if args.out_previous and r.get("previous_signature"):
            args.out_previous.write_bytes(bytes.fromhex(r["previous_signature"]))
        emit(args, r, _signatures)
        return 0

    return run_client(args, body)


def _signatures(r: dict[str, Any]) -> str:
    """The signature; inside a dual-sign window also the previous version's (labelled)."""
    if not r.get("previous_signature"):
        return str(r["signature"])
    return (f"{r['signature']}  (version {r['version']})\n"
            f"{r['previous_signature']}  (version {r['previous_version']}, previous)")  # fmt: skip


async def wait_request(client: Client, ref: str, timeout: float, say: Any) -> dict[str, Any]:
    """Long-poll a request until it is executed or failed (or `timeout` passes)."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = deadline - time.monotonic()
        r = await client.get(f"/v1/requests/{ref}", wait=str(max(0.0, min(20.0, left))))
        if r["state"] != last:
            say(f"  {ref}: {r['state']} ({len(r['approvals'])}/{r['k']} approvals)")
            last = r["state"]
        if r["state"] in ("executed", "failed") or left <= 0:
            return r


def _epoch_advance(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        out = await client.post("/v1/epoch/advance", {})
        emit(args, out, lambda o: f"epoch {o['epoch_before']} -> {o['epoch']} "
             f"(votes from {', '.join(o['voted']) or 'nobody'})")  # fmt: skip
        return 0 if out["epoch"] > out["epoch_before"] else 1

    return run_client(args, body)


def _status(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        st = await client.get("/v1/sys/status")
        emit(args, st, lambda s: "\n".join(f"{k}: {v}" for k, v in sorted(s.items())))
        return 0

    return run_client(args, body)
