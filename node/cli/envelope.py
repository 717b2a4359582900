"""`custody encrypt`, `custody decrypt`, `custody rewrap`: envelope encryption (client).

Encryption is local: the file is encrypted under a fresh data key (DEK), wrapped
to the key's primary version (public). Decryption and rewrap submit a decrypt
request for the wrapped DEK; once approvers approved it, `--wait` collects and
verifies `t` partial decryptions from the members and opens the DEK here. See
docs/envelope.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path
from typing import Any

from node.cli._common import add_client_args, emit, progress, run_client
from node.client.http import Client, new_request_id
from node.client.profile import Profile


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("encrypt", help="encrypt a file to an encrypt key (local)")
    e.add_argument("--key", required=True, help="an encrypt key; its primary version is used")
    e.add_argument("--context", default="", help="printable ASCII, needed again to decrypt")
    e.add_argument("--in", dest="infile", type=Path, help="file to encrypt (without: only a "
                   "fresh data key and its wrapped form are printed)")  # fmt: skip
    e.add_argument("--out", type=Path, help="envelope file (default: <in>.env)")
    add_client_args(e)
    e.set_defaults(func=_encrypt)

    for name, helptext in (
        ("decrypt", "decrypt an envelope file (a decrypt request; needs approvals)"),
        ("rewrap", "re-wrap an envelope's data key to the key's current primary version"),
    ):
        d = subparsers.add_parser(name, help=helptext)
        d.add_argument("--in", dest="infile", type=Path, required=True, help="envelope file")
        d.add_argument("--out", type=Path, required=True,
                       help="plaintext (decrypt) or new envelope file (rewrap)")  # fmt: skip
        d.add_argument("--context", default="", help="the context given at encryption")
        d.add_argument("--request-id", help="the decrypt request's id (reuse to resume)")
        d.add_argument("--wait", action="store_true",
                       help="wait for approvals, collect the partials, write --out")  # fmt: skip
        d.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (--wait)")
        add_client_args(d)
        d.set_defaults(func=_decrypt if name == "decrypt" else _rewrap)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _encrypt(args: argparse.Namespace) -> int:
    from node.client import envelope as ev
    from node.protocols.envelope import check_context

    check_context(args.context)
    plaintext = args.infile.read_bytes() if args.infile is not None else None

    async def body(client: Client, profile: Profile) -> int:
        key = await client.get(f"/v1/keys/{args.key}")
        # `--key` may be an alias: the label and the file name the key id the view names.
        key_id = key["key_id"]
        v = ev.primary_version(key)
        gpk = bytes.fromhex(v["group_public_key"])
        common = {"key_id": key_id, "version": v["version"], "context": args.context,
                  "group_public_key": v["group_public_key"]}  # fmt: skip
        if plaintext is None:
            dek, wrapped = ev.wrap_only(gpk, profile.cluster_id, key_id, v["version"],
                                        args.context, os.urandom)  # fmt: skip
            try:
                out = {**common, "dek_b64": base64.b64encode(dek).decode(),
                       "wrapped_b64": base64.b64encode(wrapped).decode()}  # fmt: skip
            finally:
                ev.zero(dek)
            emit(args, out, lambda o: f"dek_b64 {o['dek_b64']}\nwrapped_b64 {o['wrapped_b64']}")
            return 0
        data = ev.encrypt_file(gpk, profile.cluster_id, key_id, v["version"], args.context,
                               plaintext, os.urandom)  # fmt: skip
        dest = args.out or args.infile.with_name(args.infile.name + ".env")
        dest.write_bytes(data)
        out = {**common, "out": str(dest), "bytes": len(data)}
        emit(args, out, lambda o: f"encrypted to {o['key_id']} v{o['version']}: {o['out']}")
        return 0

    return run_client(args, body)


async def _submit(
    args: argparse.Namespace, client: Client, env: Any
) -> tuple[str, dict[str, Any]]:
    from node.client import envelope as ev

    rid = args.request_id or new_request_id("dec")
    out = await ev.submit_decrypt(client, env, args.context, rid)
    ref = out["request"]
    progress(args, f"request {ref} submitted ({out['code']}); approve with `custody approve {ref}`")
    return ref, out


def _load(args: argparse.Namespace) -> Any:
    from node.client import envelope as ev

    env = ev.parse(args.infile.read_bytes())
    env.check_context(args.context)
    return env


def _not_waiting(args: argparse.Namespace, ref: str, out: dict[str, Any]) -> int:
    rid = ref.split(":", 1)[1]
    emit(args, out, lambda o: f"{ref} {o['code']}: approve with `custody approve {ref}`, then "
         f"rerun with --request-id {rid} --wait")  # fmt: skip
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    from node.client import envelope as ev

    env = _load(args)

    async def body(client: Client, profile: Profile) -> int:
        ref, out = await _submit(args, client, env)
        if not args.wait:
            return _not_waiting(args, ref, out)
        dek = await ev.recover_dek(client, profile, env, args.context, ref, args.timeout,
                                   lambda s: progress(args, s))  # fmt: skip
        try:
            plaintext = ev.decrypt_payload(env, dek, profile.cluster_id)
        finally:
            ev.zero(dek)
        _write_private(args.out, plaintext)
        result = {"request": ref, "out": str(args.out), "bytes": len(plaintext),
                  "key_id": env.key_id, "version": env.version}  # fmt: skip
        emit(args, result, lambda o: f"decrypted ({o['bytes']} bytes) to {o['out']}")
        return 0

    return _run(args, body)


def _rewrap(args: argparse.Namespace) -> int:
    from node.client import envelope as ev
    from shares import tdec

    env = _load(args)

    async def body(client: Client, profile: Profile) -> int:
        key = await client.get(f"/v1/keys/{env.key_id}")
        target = ev.primary_version(key)
        if target["version"] == env.version:
            raise ev.EnvelopeError(f"already wrapped to the primary version v{env.version}")
        ref, out = await _submit(args, client, env)
        if not args.wait:
            return _not_waiting(args, ref, out)
        dek = await ev.recover_dek(client, profile, env, args.context, ref, args.timeout,
                                   lambda s: progress(args, s))  # fmt: skip
        try:
            ev.decrypt_payload(env, dek, profile.cluster_id)  # never re-wrap a damaged file
            key = await client.get(f"/v1/keys/{env.key_id}")
            target = ev.primary_version(key)
            label = ev.label_for(profile.cluster_id, env.key_id, target["version"], args.context)
            wrapped = tdec.wrap(bytes.fromhex(target["group_public_key"]), dek, label, os.urandom)
        finally:
            ev.zero(dek)
        args.out.write_bytes(ev.rewrapped(env, target["version"], wrapped))
        result = {"request": ref, "out": str(args.out), "key_id": env.key_id,
                  "from_version": env.version, "version": target["version"]}  # fmt: skip
        emit(args, result, lambda o: f"re-wrapped v{o['from_version']} -> v{o['version']}: "
             f"{o['out']}")  # fmt: skip
        return 0

    return _run(args, body)


def _run(args: argparse.Namespace, body: Any) -> int:
    from node.client.envelope import EnvelopeError

    try:
        return run_client(args, body)
    except EnvelopeError as exc:
        print(f"custody: error: {exc}", file=sys.stderr)
        return 1
