"""`custody officers` and `custody recover`: recovery officers, escrow, and the recovery of
a lost cluster by k officers (docs/recovery.md, README runbook "Lost cluster").

    custody officers set --officer F.officer.json ... --k K   (operator; governance,
                                       time-locked) register the officers and their k
    custody officers show              officers, escrow per member, the latest recovery

    custody recover node-keys --config node.toml
                                       a fresh node's identity and recovery keys, read from
                                       its own token (run it on the node's machine)
    custody recover request --member NAME=IDENTITY:RECOVERY ...
                                       (operator) fresh nodes take the named members' places
    custody recover approve REF --officer-key F --out FILE
                                       (each officer, on their own machine) sign an approval
    custody recover release --officer-key F --out FILE
                                       (each officer) re-seal your escrow pieces of every
                                       member being recovered to its fresh node
    custody recover submit FILE ...    (operator) post officers' approvals and releases
    custody recover status [--watch]   the recovery's progress per member

An officer's files are signed with the officer's Ed25519 key; the operator who submits
them can neither change nor forge them, and a release opens only in the fresh node it is
sealed to.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, run_client
from node.client.http import Client, new_request_id
from node.client.profile import Profile

FILE_FORMAT = "custody-officer-post/v1"


def register(subparsers: argparse._SubParsersAction) -> None:
    off = subparsers.add_parser("officers", help="recovery officers and escrow")
    osub = off.add_subparsers(dest="officers_command", metavar="ACTION", required=True)
    st = osub.add_parser(
        "set", help="register the recovery officers and their quorum (operator; governance)",
        description="Members escrow their shares of versions whose policy says `escrow: "
        "true` to these officers, split k-of-m. k officers together can rebuild those "
        "shares, so this is a governance change that always waits the time lock. Officer "
        "files come from `custody backup officer-keygen` (names: [a-z][a-z0-9_-]{0,31}).")
    st.add_argument("--officer", action="append", type=Path, required=True,
                    help="an officer's NAME.officer.json (public keys), once per officer")
    st.add_argument("--k", required=True, type=int, help="officers needed (2..m)")
    st.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(st)
    st.set_defaults(func=_set_officers)
    sh = osub.add_parser("show", help="officers, escrow per member, the latest recovery")
    add_client_args(sh)
    sh.set_defaults(func=_show)

    rec = subparsers.add_parser("recover", help="recover a lost cluster with the officers")
    sub = rec.add_subparsers(dest="recover_command", metavar="ACTION", required=True)
    nk = sub.add_parser("node-keys", help="a fresh node's identity and recovery keys")
    nk.add_argument("--config", required=True, type=Path, help="the node's node.toml")
    nk.add_argument("--json", action="store_true", help="machine-readable output")
    nk.set_defaults(func=_node_keys)
    rq = sub.add_parser(
        "request", help="fresh nodes take the named members' places (operator)",
        description="Opens a recover_members request: it executes once the governance "
        "quorum AND k officers approved it (no time lock: no member of a lost cluster is "
        "left to vote epochs). Each fresh node must run with the restored state.")
    rq.add_argument("--member", action="append", required=True,
                    help="NAME=IDENTITY_HEX:RECOVERY_HEX (from custody recover node-keys)")
    rq.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(rq)
    rq.set_defaults(func=_request)
    ap = sub.add_parser("approve", help="sign an officer's approval of a recovery (officer)")
    ap.add_argument("request", help="the recover_members request reference")
    ap.add_argument("--officer-key", required=True, type=Path, help="your NAME.officer-key.json")
    ap.add_argument("--out", required=True, type=Path, help="file for the operator to submit")
    add_client_args(ap)
    ap.set_defaults(func=_approve)
    rl = sub.add_parser("release", help="re-seal your escrow pieces to the fresh nodes (officer)")
    rl.add_argument("--officer-key", required=True, type=Path, help="your NAME.officer-key.json")
    rl.add_argument("--out", required=True, type=Path, help="file for the operator to submit")
    rl.add_argument("--member", action="append", default=[],
                    help="only these members (default: every member not yet recovered)")
    add_client_args(rl)
    rl.set_defaults(func=_release)
    sm = sub.add_parser("submit", help="post officers' approval and release files (operator)")
    sm.add_argument("files", nargs="+", type=Path)
    add_client_args(sm)
    sm.set_defaults(func=_submit)
    ss = sub.add_parser("status", help="the latest recovery's progress")
    ss.add_argument("--watch", action="store_true", help="refresh until it is done")
    add_client_args(ss)
    ss.set_defaults(func=_status)

    bg = subparsers.add_parser("breakglass", help="export one key version whole (last resort)")
    bsub = bg.add_subparsers(dest="breakglass_command", metavar="ACTION", required=True)
    br = bsub.add_parser(
        "request", help="ask for a key version whole, sealed to a key made here (operator)",
        description="The ONLY path that makes a key whole. Refused unless the key's policy "
        "says escrow: true. Needs the governance quorum AND k officers (custody recover "
        "approve), then waits the time lock, during which the quorum may cancel it. The "
        "recipient key is made here and never leaves this machine.")
    br.add_argument("key_id")
    br.add_argument("--version", required=True, type=int)
    br.add_argument("--reason", required=True, help="kept in the audit chain")
    br.add_argument("--key-out", required=True, type=Path,
                    help="where to write the recipient's private key (0600; keep it offline)")
    br.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(br)
    br.set_defaults(func=_breakglass_request)
    bo = bsub.add_parser("open", help="combine the members' pieces into the key (requester)")
    bo.add_argument("request", help="the export_key request reference")
    bo.add_argument("--key", required=True, type=Path, help="the --key-out file of the request")
    bo.add_argument("--out", required=True, type=Path, help="file for the secret (0600)")
    add_client_args(bo)
    bo.set_defaults(func=_breakglass_open)


# ------------------------------------------------------------------ helpers


def _hex(value: str, what: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what}: not hex") from None
    if len(raw) != size:
        raise ValueError(f"{what}: expected {size} bytes")
    return raw


def _write(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    """Write `doc` as JSON to a new file (never over an existing one), fsynced."""
    from node.backup.formats import write_file

    write_file(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode)


def describe(data: dict[str, Any]) -> str:
    lines = [f"officers: {', '.join(o['name'] for o in data['officers']) or 'none'}"
             + (f" (k = {data['k']})" if data["k"] else "")]  # fmt: skip
    esc = data.get("escrowed") or {}
    due = data.get("escrow_due") or {}
    if data["k"]:
        lines.append("escrow: " + ", ".join(f"{m} {esc.get(m, 0)} held, {n} due"
                                            for m, n in sorted(due.items())))  # fmt: skip
    rec = data.get("recovery")
    if rec is None:
        lines.append("no recovery")
        return "\n".join(lines)
    lines.append(f"recovery {rec['request']}: {rec['state']}, "
                 f"{len(rec['recovered'])}/{len(rec['members'])} recovered")  # fmt: skip
    for name, m in sorted(rec["members"].items()):
        released = min((len(v["released_by"]) for v in m["versions"]), default=0)
        state = "recovered" if m["recovered"] else "repaired" if m.get("repaired") else "waiting"
        lines.append(f"  {name}: {state}; "
                     f"{len(m['versions'])} escrowed version(s); releases {released}/"
                     f"{rec['k']} (fewest of any version)"
                     + ("" if m["versions"] else "; no escrow: repair it from t recovered "
                        f"members (custody node repair {name})"))  # fmt: skip
    return "\n".join(lines)


# ------------------------------------------------------------------ officers


def _set_officers(args: argparse.Namespace) -> int:
    from node.backup.officers import load_public
    from node.cli.keys import post_signed
    from node.state import OfficerSpec, SetOfficers

    officers = sorted((load_public(p) for p in args.officer), key=lambda o: o.name)
    specs = tuple(OfficerSpec(o.name, o.x25519, o.ed25519) for o in officers)

    async def body(client: Client, profile: Profile) -> int:
        cmd = SetOfficers(request_id=args.request_id or new_request_id("set-officers"),
                          author=profile.principal, officers=specs, k=args.k)  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"governance request {o['request']}: {o['code']} "
             f"{o.get('detail', '')}\n(needs the governance quorum: custody approve "
             f"{o['request']}; then it waits the time lock)")  # fmt: skip
        return 0

    return run_client(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        emit(args, await client.get("/v1/recovery"), describe)
        return 0

    return run_client(args, body)


# ------------------------------------------------------------------ recovery


def _node_keys(args: argparse.Namespace) -> int:
    from node.backup.node_ops import open_slot
    from node.server.config import load_config
    from node.server.escrow import recovery_public

    cfg = load_config(args.config, create_data_dir=False)
    slot = open_slot(cfg, observer=True)
    try:
        data = {"member": cfg.name, "identity_key": slot.identity_public_key().hex(),
                "recovery_key": recovery_public(slot, cfg.cluster_id, cfg.name).hex()}  # fmt: skip
    finally:
        slot.close()
    emit(args, data, lambda d: f"{d['member']}={d['identity_key']}:{d['recovery_key']}")
    return 0


def _request(args: argparse.Namespace) -> int:
    from node.cli.keys import post_signed
    from node.state import RecoverMembers, RecoverSpec

    specs = []
    for item in args.member:
        name, sep, keys = item.partition("=")
        ident, sep2, rec = keys.partition(":")
        if not sep or not sep2:
            raise ValueError(f"--member {item!r}: expected NAME=IDENTITY_HEX:RECOVERY_HEX")
        specs.append(RecoverSpec(name, _hex(ident, f"{name} identity key", 32),
                                 _hex(rec, f"{name} recovery key", 32)))  # fmt: skip

    async def body(client: Client, profile: Profile) -> int:
        cmd = RecoverMembers(request_id=args.request_id or new_request_id("recover"),
                             author=profile.principal, members=tuple(specs))  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"RECOVERY request {o['request']}: {o['code']}\n(needs the "
             f"governance quorum: custody approve {o['request']}; and k officers: custody "
             f"recover approve {o['request']} --officer-key ..., then custody recover submit)")
        return 0

    return run_client(args, body)


def _approve(args: argparse.Namespace) -> int:
    from node.backup.officers import load_private
    from node.state.recovery import officer_approval

    key = load_private(args.officer_key)

    async def body(client: Client, profile: Profile) -> int:
        from node.cli.requests import recompute_digest
        from node.state import decode_change

        view = await client.get(f"/v1/requests/{args.request}")
        if view.get("kind") not in ("recover_members", "export_key"):
            raise ValueError(f"{args.request} is a {view.get('kind')} request: officers "
                             "approve recoveries and break-glass exports only")  # fmt: skip
        if view["cluster_id"] != profile.cluster_id:
            raise ValueError("the request belongs to another cluster than the profile's")
        digest = recompute_digest(view)  # from the change itself, not the node's word
        if digest.hex() != view["digest"]:
            raise ValueError("the node's digest differs from the one recomputed here: refusing")
        change: Any = decode_change(base64.b64decode(view["payload_b64"]))
        if view["kind"] == "export_key":
            print(f"{args.request}: BREAK-GLASS export of {change.key_id} v{change.version} "
                  f"WHOLE to recipient key {change.recipient.hex()}; reason: {change.reason}",
                  file=sys.stderr)  # fmt: skip
        else:
            print(f"{args.request}: fresh nodes take these members' places; compare each "
                  "with `custody recover node-keys` on that node:", file=sys.stderr)
            for m in change.members:
                print(f"  {m.name}={m.public_key.hex()}:{m.recovery_key.hex()}",
                      file=sys.stderr)  # fmt: skip
        msg = officer_approval(profile.cluster_id, args.request, digest)
        doc = {"format": FILE_FORMAT, "kind": "officer_approve", "request": args.request,
               "officer": key.officer.name,
               "signature": key.ed25519_private.sign(msg).hex()}  # fmt: skip
        _write(args.out, doc)
        emit(args, doc, lambda d: f"{d['officer']} approves {d['request']}: wrote {args.out} "
             "(give it to an operator: custody recover submit)")  # fmt: skip
        return 0

    return run_client(args, body)


def _release(args: argparse.Namespace) -> int:
    from node.backup.officers import load_private
    from node.protocols import escrow as esc
    from node.protocols.batch import KeyVersion
    from node.state.recovery import release_message
    from shares.rng import system_rng

    key = load_private(args.officer_key)
    me = key.officer.name

    async def body(client: Client, profile: Profile) -> int:
        data = await client.get("/v1/recovery")
        rec = data.get("recovery")
        if rec is None or rec["state"] != "running":
            raise ValueError("no recovery is under way")
        if me not in rec["officers"]:
            raise ValueError(f"{me} is not one of this recovery's officers")
        rows = [(o["name"], bytes.fromhex(o["x25519"])) for o in data["officers"]]
        if [r[0] for r in rows] != rec["officers"]:
            raise ValueError("the officer set changed since the recovery started")
        rng = system_rng()
        posts = []
        for name, m in sorted(rec["members"].items()):
            if m["recovered"] or m.get("repaired") or (args.member and name not in args.member):
                continue
            node_public = bytes.fromhex(m["recovery_key"])
            items = []
            for v in m["versions"]:
                if me in v["released_by"] or v["package_b64"] is None:
                    continue
                vs = {i + 1: bytes.fromhex(y) for i, y in enumerate(v["verification_shares"])}
                kv = KeyVersion(v["key_id"], v["version"], bytes.fromhex(v["group_public_key"]),
                                vs)  # fmt: skip
                ctx = esc.escrow_context(data["cluster_id"], m["index"], [kv], rows, rec["k"])
                blob = esc.officer_release(ctx, base64.b64decode(v["package_b64"]), m["index"],
                                           [kv], rows, rec["k"], me, key.x25519_private,
                                           node_public, rng)  # fmt: skip
                items.append((v["key_id"], v["version"], blob))
            for i in range(0, len(items), 64):
                chunk = tuple(items[i : i + 64])
                msg = release_message(profile.cluster_id, rec["request"], name, me, chunk)
                posts.append({"member": name, "items": [
                    {"key_id": k, "version": n, "blob_b64": base64.b64encode(b).decode()}
                    for k, n, b in chunk], "signature": key.ed25519_private.sign(msg).hex()})
        doc = {"format": FILE_FORMAT, "kind": "officer_release", "recovery": rec["request"],
               "officer": me, "posts": posts}  # fmt: skip
        _write(args.out, doc)
        count = sum(len(p["items"]) for p in posts)
        emit(args, {"officer": me, "posts": len(posts), "pieces": count},
             lambda d: f"{me} re-sealed {count} piece(s) for {len(posts)} post(s): wrote "
             f"{args.out} (give it to an operator: custody recover submit)")  # fmt: skip
        return 0

    return run_client(args, body)


def _submit(args: argparse.Namespace) -> int:
    from node.cli.keys import post_signed
    from node.state import OfficerApprove, PostRelease, ReleaseItem

    docs = []
    for path in args.files:
        doc = json.loads(path.read_text())
        if doc.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not an officer's approval or release file")
        docs.append((path, doc))

    async def body(client: Client, profile: Profile) -> int:
        results = []
        for path, doc in docs:
            if doc["kind"] == "officer_approve":
                cmds: list[Any] = [OfficerApprove(
                    request_id=new_request_id("officer-approve"), author=profile.principal,
                    request=doc["request"], officer=doc["officer"],
                    officer_signature=_hex(doc["signature"], f"{path} signature", 64))]  # fmt: skip
            elif doc["kind"] == "officer_release":
                cmds = [PostRelease(
                    request_id=new_request_id("officer-release"), author=profile.principal,
                    member=p["member"], officer=doc["officer"],
                    items=tuple(ReleaseItem(i["key_id"], i["version"],
                                            base64.b64decode(i["blob_b64"])) for i in p["items"]),
                    officer_signature=_hex(p["signature"], f"{path} signature", 64),
                ) for p in doc["posts"]]  # fmt: skip
            else:
                raise ValueError(f"{path}: unknown kind {doc.get('kind')!r}")
            for cmd in cmds:
                out = await post_signed(client, profile, cmd)
                results.append({"file": str(path), **out})
        emit(args, results, lambda rs: "\n".join(
            f"{r['file']}: {r['code']} {r.get('detail', '')}" for r in rs))  # fmt: skip
        return 0 if all(r.get("ok", True) for r in results) else 1

    return run_client(args, body)


BREAKGLASS_KEY_FORMAT = "custody-breakglass-key/v1"


def _breakglass_request(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from node.cli.keys import post_signed
    from node.protocols import sealbox
    from node.state import ExportKey

    if args.key_out.exists():
        raise ValueError(f"{args.key_out} exists; choose another --key-out")
    private = X25519PrivateKey.generate()
    public = sealbox.public_bytes(private)

    async def body(client: Client, profile: Profile) -> int:
        cmd = ExportKey(request_id=args.request_id or new_request_id("export"),
                        author=profile.principal, key_id=args.key_id, version=args.version,
                        recipient=public, reason=args.reason)  # fmt: skip
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        _write(args.key_out, {"format": BREAKGLASS_KEY_FORMAT, "x25519": public.hex(),
                                      "x25519_private": raw.hex()}, mode=0o600)  # fmt: skip
        out = await post_signed(client, profile, cmd)
        emit(args, out, lambda o: f"BREAK-GLASS request {o['request']}: {o['code']}\n(needs "
             f"the governance quorum: custody approve {o['request']}; k officers: custody "
             f"recover approve {o['request']} ...; then the time lock. Recipient key: "
             f"{args.key_out})")  # fmt: skip
        return 0

    return run_client(args, body)


def _breakglass_open(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from node.protocols import breakglass as bg
    from node.protocols.batch import zero

    doc = json.loads(args.key.read_text())
    if doc.get("format") != BREAKGLASS_KEY_FORMAT:
        raise ValueError(f"{args.key}: not a break-glass recipient key")
    private = X25519PrivateKey.from_private_bytes(_hex(doc["x25519_private"], "key", 32))
    if args.out.exists():
        raise ValueError(f"{args.out} exists; choose another --out")

    async def body(client: Client, profile: Profile) -> int:
        data = await client.get("/v1/recovery")
        e = next((x for x in data["exports"] if x["request"] == args.request), None)
        if e is None:
            raise ValueError(f"no executed export {args.request} (approved by the quorum and "
                             "k officers, time lock over?)")  # fmt: skip
        if e["recipient"] != doc["x25519"]:
            raise ValueError("this export is sealed to another recipient key")
        group_key = bytes.fromhex(e["group_public_key"])
        ctx = bg.export_context(profile.cluster_id, e["request"], e["key_id"], e["version"],
                                group_key)  # fmt: skip
        vshares = {i + 1: bytes.fromhex(y) for i, y in enumerate(e["verification_shares"])}
        pieces = {p["index"]: base64.b64decode(p["piece_b64"]) for p in e["pieces"].values()}
        secret, bad = bg.open_pieces(ctx, pieces, private, vshares, group_key, e["threshold"])
        try:
            _write(args.out, {
                "format": "custody-exported-key/v1", "key_id": e["key_id"],
                "version": e["version"], "group_public_key": e["group_public_key"],
                "secret_scalar": bytes(secret).hex(),
                "note": "Ed25519 group secret scalar (little-endian, < L), not an RFC 8032 "
                "seed: it signs with any Ed25519 implementation that takes an expanded key "
                "or scalar. Destroy this file when done."}, mode=0o600)  # fmt: skip
        finally:
            zero(secret)
        emit(args, {"request": e["request"], "key_id": e["key_id"], "version": e["version"],
                    "out": str(args.out), "bad_pieces": bad},
             lambda d: f"BREAK-GLASS: {d['key_id']} v{d['version']} combined and checked "
             f"against its group key; written to {d['out']} (0600)"
             + (f"; bad pieces from members {bad}" if bad else ""))  # fmt: skip
        return 0

    return run_client(args, body)


def _status(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        while True:
            data = await client.get("/v1/recovery")
            rec = data.get("recovery")
            if not args.watch or rec is None or rec["state"] != "running":
                emit(args, data, describe)
                return 0
            await asyncio.sleep(1.0)

    return run_client(args, body)
