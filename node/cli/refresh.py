"""`custody refresh start|status`: proactive refresh of every member's shares.

    custody refresh start [--wait]    refresh every usable key version's shares (operator;
                                      group keys unchanged; old shares stop combining)
    custody refresh status [--watch]  the latest refresh and each version's generation
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from node.cli._common import add_client_args, emit, run_client
from node.client.http import Client, new_request_id
from node.client.profile import Profile


def register(subparsers: argparse._SubParsersAction) -> None:
    ref = subparsers.add_parser("refresh", help="proactive refresh of every member's shares")
    sub = ref.add_subparsers(dest="refresh_command", metavar="ACTION", required=True)
    st = sub.add_parser(
        "start",
        help="refresh every usable key version's shares now (operator)",
        description="Every member deals a random sharing of zero per key version and adds "
        "what it receives to its share: group public keys stay the same, the share "
        "generation moves on, and shares from before can no longer be combined with "
        "shares from after. Every member must take part (repair a lost one first). No "
        "quorum is needed: a refresh gives nobody any power.",
    )
    st.add_argument("--wait", action="store_true", help="wait until it is done or failed")
    st.add_argument("--request-id", help="reuse to retry safely")
    add_client_args(st)
    st.set_defaults(func=_start)
    ss = sub.add_parser("status", help="the latest refresh and each version's generation")
    ss.add_argument("--watch", action="store_true", help="refresh until it is over")
    add_client_args(ss)
    ss.set_defaults(func=_status)


def describe(data: dict[str, Any]) -> str:
    r = data.get("refresh")
    if r is None:
        return "no refresh yet"
    line = (f"refresh {r['request']}: {r['state']}  {r['done']}/{r['total']} versions  "
            f"run {r['run']}  posted {len(r['posted'])}/{len(r['participants'])}  "
            f"recorded {len(r['recorded'])}/{len(r['participants'])}"
            + (f"  failure: {r['failure']}" if r["failure"] else ""))  # fmt: skip
    gens = ", ".join(f"{k} g{g}" for k, g in data["generations"].items())
    return f"{line}\ngenerations: {gens or '-'}"


async def _watch(args: argparse.Namespace, client: Client, watch: bool) -> int:
    while True:
        data = await client.get("/v1/refresh")
        state = (data.get("refresh") or {}).get("state")
        if not watch or state != "running":
            emit(args, data, describe)
            return 1 if state == "failed" else 0
        await asyncio.sleep(0.5)


def _start(args: argparse.Namespace) -> int:
    from node.cli.keys import post_signed
    from node.state import StartRefresh

    async def body(client: Client, profile: Profile) -> int:
        cmd = StartRefresh(request_id=args.request_id or new_request_id("refresh"),
                           author=profile.principal)  # fmt: skip
        out = await post_signed(client, profile, cmd)
        if not args.wait:
            emit(args, out, lambda o: f"refresh {o['request']}: {o['code']} {o.get('detail', '')}")
            return 0
        return await _watch(args, client, True)

    return run_client(args, body)


def _status(args: argparse.Namespace) -> int:
    async def body(client: Client, _p: Profile) -> int:
        return await _watch(args, client, args.watch)

    return run_client(args, body)
