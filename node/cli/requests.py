"""`custody requests list|show`, `custody approve`, `custody policy set`, `custody audit`.

`custody audit export` writes the chain and, beside it, its audit checkpoints (the
threshold signatures by the cluster's audit key found in the chain, the audit key's
group public keys and the cluster id); `custody audit verify` checks both offline
(docs/audit.md).

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
from node.cli.keys import post_signed
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
    ps.add_argument("--dual-sign-epochs", type=int, default=0,
                    help="epochs after a rotation in which sign requests on the primary are "
                    "also signed by the version it replaced (0: off; <= --grace-epochs)")
    ps.add_argument("--escrow", action="store_true",
                    help="members escrow their shares of this policy's keys to the recovery "
                    "officers (custody officers set), so that k officers can rebuild a lost "
                    "cluster (docs/recovery.md)")
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
    ex.add_argument("--checkpoints-out", type=Path, default=None,
                    help="where to write the checkpoints file (default: OUT.checkpoints)")
    add_client_args(ex)
    ex.set_defaults(func=_audit_export)
    ve = asub.add_parser("verify", help="verify an export and its checkpoints offline")
    ve.add_argument("--in", dest="inp", type=Path, required=True, help="an audit export")
    ve.add_argument("--checkpoints", type=Path, default=None,
                    help="a checkpoints file (default: IN.checkpoints if it exists)")
    ve.add_argument("--public-key", default=None,
                    help="the audit group public key to pin (hex, or a PEM file)")
    ve.add_argument("--cluster-id", default=None,
                    help="the cluster id (default: the checkpoints file's)")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=_audit_verify)


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
    if r["kind"] == "rollback":
        lines.append(f"effect     version {r['version']} becomes the primary again; the current "
                     "primary retires")  # fmt: skip
    if r.get("dual_version"):
        lines.append(f"dual-sign  also signed by version {r['dual_version']} (the version the "
                     "primary replaced): two signatures")  # fmt: skip
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
    if r.get("previous_signature"):
        lines.append(f"previous   {r['previous_signature']}  (version {r['previous_version']})")
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
            escrow=p["escrow"], dual_sign_epochs=p.get("dual_sign_epochs", 0),
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
        activate_epoch=r["activate_epoch"], dual_version=r.get("dual_version", 0),
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
            grace_epochs=args.grace_epochs, waiting_epochs=args.waiting_epochs, escrow=args.escrow,
            dual_sign_epochs=args.dual_sign_epochs,
        )  # fmt: skip
        out = await post_signed(client, profile, cmd)
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
    from node.state.audit_checkpoint import (
        AUDIT_KEY_ID,
        checkpoints_in_chain,
        encode_checkpoints,
    )

    async def body(client: Client, _p: Profile) -> int:
        data, headers = await client.call("GET", "/v1/audit/export", raw=True)
        head = bytes.fromhex(headers.get("X-Audit-Head", ""))
        verify_export(data, head or None)
        records = decode_records(data)
        cluster_id = (await client.get("/v1/sys/status"))["cluster_id"]
        key = await client.get(f"/v1/keys/{AUDIT_KEY_ID}")
        keys = {v["version"]: bytes.fromhex(v["group_public_key"])
                for v in key.get("versions", []) if v.get("group_public_key")}  # fmt: skip
        cps = checkpoints_in_chain(records)
        cp_out = args.checkpoints_out or args.out.with_name(args.out.name + ".checkpoints")
        args.out.write_bytes(data)
        cp_out.write_bytes(encode_checkpoints(cluster_id, cps, keys))
        out = {"records": len(records), "head": head.hex(), "out": str(args.out),
               "verified": True, "checkpoints": len(cps), "checkpoints_out": str(cp_out),
               "last_checkpoint": max((c.seq for c in cps), default=None)}  # fmt: skip
        emit(args, out,
             lambda o: f"{o['records']} records, chain verified, head {o['head'][:16]}…, "
             f"written to {o['out']}; {o['checkpoints']} checkpoint(s) (last at seq "
             f"{o['last_checkpoint']}) written to {o['checkpoints_out']}")  # fmt: skip
        return 0

    return run_client(args, body)


def _public_key_arg(value: str) -> bytes:
    """A pinned audit group public key: 64 hex digits, or a PEM file (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )

    text = value.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    pem = Path(value).read_bytes() if "BEGIN" not in value else value.encode()
    return load_pem_public_key(pem).public_bytes(Encoding.Raw, PublicFormat.Raw)


def _audit_verify(args: argparse.Namespace) -> int:
    """Offline: no node is contacted. Exit 0 only if the chain and every checkpoint
    verify; 1 otherwise (the report says what failed)."""
    import json

    from node.state.audit_checkpoint import decode_checkpoints, verify_audit
    from node.state.errors import DecodeError

    try:
        export = args.inp.read_bytes()
        cp_path = args.checkpoints
        if cp_path is None:
            default = args.inp.with_name(args.inp.name + ".checkpoints")
            cp_path = default if default.exists() else None
        cluster_id, keys, extra = "", {}, []
        if cp_path is not None:
            cluster_id, keys, extra = decode_checkpoints(cp_path.read_bytes())
        pinned = _public_key_arg(args.public_key) if args.public_key else None
    except (OSError, ValueError, DecodeError) as exc:
        print(f"custody audit verify: {exc}", file=sys.stderr)
        return 2
    cluster_id = args.cluster_id or cluster_id
    if not cluster_id:
        print("custody audit verify: no cluster id (give --cluster-id or a checkpoints file)",
              file=sys.stderr)  # fmt: skip
        return 2
    rep = verify_audit(export, cluster_id=cluster_id, public_keys=keys, pinned=pinned,
                       extra_checkpoints=extra)  # fmt: skip
    out = {
        "ok": rep.ok,
        "cluster_id": cluster_id,
        "records": rep.records,
        "head": rep.head.hex(),
        "chain": "ok" if rep.chain_ok else rep.chain_error,
        "key_source": rep.key_source if (pinned is not None or keys) else "none",
        "checkpoints": [
            {"seq": c.seq, "version": c.version, "source": c.source, "ok": c.ok,
             "problem": c.problem or None} for c in rep.checkpoints
        ],
        "last_checkpointed_seq": rep.last_checkpointed,
        "uncovered_records": rep.uncovered,
        "problems": rep.problems,
        "warnings": rep.warnings,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if rep.ok else 1
    lines = [f"cluster {cluster_id}: {rep.records} records, "
             f"hash chain {'verified' if rep.chain_ok else 'BROKEN: ' + rep.chain_error}"
             + (f", head {rep.head.hex()[:16]}…" if rep.chain_ok else "")]  # fmt: skip
    src = {"pinned": "the pinned public key", "file": "the keys in the checkpoints file "
           "(not pinned: give --public-key to pin the audit key)"}.get(out["key_source"],
                                                                      "no public key")
    lines.append(f"{len(rep.checkpoints)} checkpoint(s), checked against {src}:")
    for c in rep.checkpoints:
        state = "ok" if c.ok else f"FAILED: {c.problem}"
        lines.append(f"  seq {c.seq} (audit key v{c.version}, from {c.source}): {state}")
    last = rep.last_checkpointed
    lines.append(f"last checkpointed seq: {last if last is not None else 'none'}; "
                 f"{rep.uncovered} record(s) after it are NOT covered by a checkpoint")
    lines += [f"WARNING: {w}" for w in rep.warnings]
    lines += [f"PROBLEM: {p}" for p in rep.problems]
    lines.append("VERIFIED" if rep.ok else "VERIFICATION FAILED")
    print("\n".join(lines))
    return 0 if rep.ok else 1
