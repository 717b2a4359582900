"""`custody requests list|show`, `custody approve`, `custody policy set`, `custody audit`.

`approve` never signs a digest a node hands it: it recomputes the canonical
request digest from the fields and payload it shows the approver (and the
policy's content, whose hash it checks against the one the request was
submitted under), and signs that with the approver's own key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, run_client, table
from node.cli.keys import signed_command
from node.client.http import Client, new_request_id
from node.client.profile import Profile


def register(subparsers: argparse._SubParsersAction) -> None:
    req = subparsers.add_parser("requests", help="list and show requests")
    sub = req.add_subparsers(dest="requests_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="requests, newest first")
    ls.add_argument("--state", choices=("pending", "approved", "executed", "failed"))
    ls.add_argument("--key", help="only requests about this key")
    ls.add_argument("--limit", type=int, default=100)
    add_client_args(ls)
    ls.set_defaults(func=_list)
    sh = sub.add_parser("show", help="one request")
    sh.add_argument("ref", help="<author>:<request id>")
    add_client_args(sh)
    sh.set_defaults(func=_show)

    ap = subparsers.add_parser("approve", help="approve a request (approver)")
    ap.add_argument("ref", help="<author>:<request id>")
    ap.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ap.add_argument("--request-id", help="reuse to retry an approval safely")
    add_client_args(ap)
    ap.set_defaults(func=_approve)

    pol = subparsers.add_parser("policy", help="policies (governance requests)")
    psub = pol.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    ps = psub.add_parser("set", help="create or replace a policy (operator; governance quorum)")
    ps.add_argument("policy_id")
    ps.add_argument("--requesters", default="", help="clients, comma-separated")
    ps.add_argument("--operations", default="sign", help="sign,decrypt")
    ps.add_argument("--approvers", required=True, help="approvers, comma-separated")
    ps.add_argument("--k", type=int, required=True, help="approvals needed per request")
    ps.add_argument("--rotation-interval-s", type=int, default=0)
    ps.add_argument("--max-uses", type=int, default=0)
    ps.add_argument("--grace-epochs", type=int, default=1)
    ps.add_argument("--waiting-epochs", type=int, default=1)
    ps.add_argument("--request-id")
    add_client_args(ps)
    ps.set_defaults(func=_policy_set)
    pl = psub.add_parser("list", help="policies")
    add_client_args(pl)
    pl.set_defaults(func=_policy_list)

    au = subparsers.add_parser("audit", help="the audit chain")
    asub = au.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    tail = asub.add_parser("tail", help="the newest records")
    tail.add_argument("-n", type=int, default=20)
    add_client_args(tail)
    tail.set_defaults(func=_audit_tail)
    ex = asub.add_parser("export", help="export the whole chain and verify it offline")
    ex.add_argument("--out", type=Path, required=True)
    add_client_args(ex)
    ex.set_defaults(func=_audit_export)


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted(x for x in (s.strip() for s in text.split(",")) if x))


def _row(r: dict[str, Any]) -> list[str]:
    return [r["ref"], r["kind"], r["state"], r["key_id"] or "-", str(r["version"] or "-"),
            f"{len(r['approvals'])}/{r['k']}"]  # fmt: skip


def _list(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        params = {"limit": str(args.limit)}
        if args.state:
            params["state"] = args.state
        if args.key:
            params["key"] = args.key
        out = await client.get("/v1/requests", **params)
        emit(args, out, lambda o: table([_row(r) for r in o["requests"]],
                                        ["REQUEST", "KIND", "STATE", "KEY", "V", "APPROVALS"]))
        return 0

    return run_client(args, body)


def describe(r: dict[str, Any]) -> str:
    lines = [
        f"request    {r['ref']}",
        f"kind       {r['kind']}  state {r['state']}",
        f"requester  {r['author']}",
    ]
    if r.get("key_id"):
        lines.append(f"key        {r['key_id']} version {r['version'] or '(new)'} ({r['purpose']})")
    if r.get("payload_sha256"):
        lines.append(f"sha256     {r['payload_sha256']}  (of the message / payload)")
    lines.append(f"context    {r['context']!r}")
    change = _change(r)
    if change:
        lines.append(f"change     {change}")
    lines.append(f"quorum     {r['k']} of {', '.join(r['approvers'])}; approved by "
                 f"{', '.join(r['approvals']) or 'nobody yet'}")  # fmt: skip
    if r.get("signature"):
        lines.append(f"signature  {r['signature']}")
    if r.get("failure"):
        lines.append(f"failure    {r['failure']}")
    return "\n".join(lines)


def _change(r: dict[str, Any]) -> str:
    """A governance request's change, decoded from its payload (what is approved)."""
    if "governance" not in r or not r.get("payload_b64"):
        return ""
    from node.state import decode_change
    from node.state.commands import command_fields

    try:
        cmd = decode_change(base64.b64decode(r["payload_b64"]))
    except Exception as exc:  # shown, not trusted: the digest check decides
        return f"(undecodable: {exc})"
    fields = {k: v for k, v in command_fields(cmd).items()
              if k not in ("request_id", "author", "signature")}  # fmt: skip
    shown = ", ".join(f"{k}={v.hex() if isinstance(v, bytes) else v}" for k, v in fields.items())
    return f"{cmd.KIND}: {shown}"


def _show(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        r = await client.get(f"/v1/requests/{args.ref}")
        emit(args, r, describe)
        return 0

    return run_client(args, body)


def recompute_digest(r: dict[str, Any]) -> bytes:
    """The request digest from what the approver sees, checking the policy's hash."""
    from node.state.digest import (
        VERSIONED_KINDS,
        governance_hash,
        payload_hash,
        policy_hash,
        request_digest,
    )

    if "policy" in r:
        p = r["policy"]
        ph = policy_hash(
            policy_id=p["policy_id"], requesters=tuple(p["requesters"]),
            operations=tuple(p["operations"]), approvers=tuple(p["approvers"]), k=p["k"],
            rotation_interval_s=p["rotation_interval_s"], max_uses=p["max_uses"],
            grace_epochs=p["grace_epochs"], waiting_epochs=p["waiting_epochs"],
            escrow=p["escrow"],
        )  # fmt: skip
    elif "governance" in r:
        g = r["governance"]
        ph = governance_hash(tuple(g["approvers"]), g["k"], g["time_lock_epochs"])
    else:
        raise ValueError("the node did not show the policy this request is decided under")
    if ph.hex() != r["policy_hash"]:
        raise ValueError("the policy changed since this request was submitted: not approving")
    payload = base64.b64decode(r["payload_b64"]) if r.get("payload_b64") else b""
    if r["payload_hash"] and not payload:
        raise ValueError("the node did not show the request's payload: cannot review it")
    if payload and hashlib.sha256(payload).hexdigest() != r["payload_sha256"]:
        raise ValueError("payload and its shown hash disagree")
    return request_digest(
        cluster_id=r["cluster_id"], kind=r["kind"], request_id=r["request_id"],
        author=r["author"], key_id=r["key_id"] or "", purpose=r["purpose"] or "",
        policy_id=r["policy_id"] or "", policy_sha512=ph, approvers=tuple(r["approvers"]),
        k=r["k"], version=r["version"] if r["kind"] in VERSIONED_KINDS else 0,
        context=r["context"], payload_sha512=payload_hash(payload) if payload else b"",
        activate_epoch=r["activate_epoch"],
    )  # fmt: skip


def _approve(args: argparse.Namespace) -> int:
    async def body(client: Client, profile: Profile) -> int:
        from node.pki.store import read_private_key
        from node.state import sign_approval

        r = await client.get(f"/v1/requests/{args.ref}")
        if r["cluster_id"] != profile.cluster_id:
            raise ValueError("the request belongs to another cluster than the profile's")
        digest = recompute_digest(r)
        if digest.hex() != r["digest"]:
            raise ValueError("the node's digest differs from the one recomputed here: refusing")
        if not getattr(args, "json", False):
            print(describe(r), file=sys.stderr)
        if not args.yes:
            answer = input(f"approve {args.ref} as {profile.principal}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not approved", file=sys.stderr)
                return 1
        if profile.approval_key is None:
            raise ValueError(f"profile of {profile.principal} has no approval key")
        sig = sign_approval(read_private_key(profile.approval_key), digest)
        rid = args.request_id or new_request_id("approve")
        out = await client.post(f"/v1/requests/{args.ref}/approve",
                                {"request_id": rid, "signature": sig.hex()})  # fmt: skip
        emit(args, out, lambda o: f"approved {args.ref}: request now {o['code']}")
        return 0

    return run_client(args, body)


def _policy_set(args: argparse.Namespace) -> int:
    from node.state import SetPolicy

    async def body(client: Client, profile: Profile) -> int:
        cmd = SetPolicy(
            request_id=args.request_id or new_request_id("policy"), author=profile.principal,
            policy_id=args.policy_id, requesters=_names(args.requesters),
            operations=_names(args.operations), approvers=_names(args.approvers), k=args.k,
            rotation_interval_s=args.rotation_interval_s, max_uses=args.max_uses,
            grace_epochs=args.grace_epochs, waiting_epochs=args.waiting_epochs, escrow=False,
        )  # fmt: skip
        out = await client.post("/v1/commands", {"command_b64": await signed_command(profile, cmd)})
        emit(args, out, lambda o: f"governance request {o['request']}: {o['code']}")
        return 0

    return run_client(args, body)


def _policy_list(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        out = await client.get("/v1/policies")
        rows = [[p["policy_id"], ",".join(p["requesters"]), ",".join(p["operations"]),
                 f"{p['k']} of {','.join(p['approvers'])}"] for p in out["policies"]]  # fmt: skip
        emit(args, out, lambda _o: table(rows, ["POLICY", "REQUESTERS", "OPS", "QUORUM"]))
        return 0

    return run_client(args, body)


def _audit_tail(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        out = await client.get("/v1/audit", limit=str(max(1, min(1000, args.n))))
        rows = [[str(a["seq"]), str(a["epoch"]), a["author"], a["kind"], a["subject"],
                 a["outcome"]] for a in out["records"]]  # fmt: skip
        emit(args, out, lambda _o: table(rows, ["SEQ", "EPOCH", "AUTHOR", "KIND", "SUBJECT",
                                                "OUTCOME"]))  # fmt: skip
        return 0

    return run_client(args, body)


def _audit_export(args: argparse.Namespace) -> int:
    from node.state import decode_records, verify_export

    async def body(client: Client, _p: Profile) -> int:
        data, headers = await client.call("GET", "/v1/audit/export", raw=True)
        head = bytes.fromhex(headers.get("X-Audit-Head", ""))
        verify_export(data, head or None)
        args.out.write_bytes(data)
        n = len(decode_records(data))
        emit(args, {"records": n, "head": head.hex(), "out": str(args.out), "verified": True},
             lambda o: f"{o['records']} records, chain verified, head {o['head'][:16]}…, "
             f"written to {o['out']}")  # fmt: skip
        return 0

    return run_client(args, body)
