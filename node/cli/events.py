"""`custody events [--follow] [--after SEQ] [--key K] [--type T] [--limit N] [--json]`:
the cluster's lifecycle events (`GET /v1/events`, docs/events.md).

Without `--follow` it prints the events recorded so far and exits; with it, it keeps
printing new ones until interrupted. A dropped connection (or a node that answers
502/503/504) is resumed on the profile's next node with `Last-Event-ID`, so no event
is lost or printed twice. Human output: one line per event; `--json`: one JSON object
per line (the event's data, which includes `seq` and `type`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from node.cli._common import add_client_args, profile_of

RETRY_STATUSES = frozenset({502, 503, 504})
READ_TIMEOUT_S = 45.0  # the node writes a keep-alive every 15 s


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help="lifecycle events: rotations, revocations, ...")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--after", type=int, default=-1, help="start after this audit seq")
    p.add_argument("--key", help="only this key's events")
    p.add_argument(
        "--type", action="append", dest="types", metavar="TYPE", help="only this event type"
    )
    p.add_argument("--limit", type=int, default=0, help="stop after N events (0: no limit)")
    p.add_argument("--stale", action="store_true", help="no read barrier (this node as is)")
    add_client_args(p)
    p.set_defaults(func=_events)


def human(event: dict[str, Any]) -> str:
    """One line: `#SEQ epoch E TYPE key vN request ...`."""
    parts = [f"#{event['seq']}", f"epoch {event['epoch']}", event["type"]]
    if event.get("key_id"):
        parts.append(event["key_id"] + (f" v{event['version']}" if event.get("version") else ""))
    etype = event["type"]
    if etype == "epoch.advanced":
        for name in ("activated", "retired"):
            items = event.get(name) or []
            if items:
                parts.append(f"{name} " + ",".join(f"{x['key_id']}@{x['version']}" for x in items))
        for change in event.get("governance_changes") or []:
            parts.append(f"took effect {change['request_kind']} {change['request']}")
    else:
        if etype == "version.published":
            parts.append(f"activates at epoch {event.get('activation_epoch')}")
        if etype == "version.erased":
            parts.append(f"by {event.get('member')}")
        if etype == "governance.scheduled":
            parts.append(f"effective at epoch {event.get('effective_epoch')}")
        if event.get("request_kind") and not event.get("key_id"):
            parts.append(event["request_kind"])
        if event.get("reason"):
            parts.append(f"reason {event['reason']}")
        parts.append(f"({event.get('request')}, {event.get('author')})")
    return "  ".join(str(p) for p in parts)


def _events(args: argparse.Namespace) -> int:
    import asyncio

    if args.after < -1:
        raise ValueError("--after must be >= -1")
    if args.limit < 0:
        raise ValueError("--limit must be >= 0")
    profile = profile_of(args)
    try:
        return asyncio.run(_run(args, profile))
    except KeyboardInterrupt:
        return 0


class _Failed(Exception):
    pass


async def _run(args: argparse.Namespace, profile: Any) -> int:
    import asyncio

    import aiohttp

    from node import tlsctx

    ctx = tlsctx.client_context(profile.ca, profile.cert, profile.key)
    params = {"follow": "true" if args.follow else "false"}
    if args.key:
        params["key"] = args.key
    if args.types:
        params["types"] = ",".join(args.types)
    if args.stale:
        params["stale"] = "true"
    state = {"last": args.after, "printed": 0}
    nodes = profile.nodes
    node = 0
    failures = 0  # consecutive attempts that got no event through
    delay = 0.1
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=READ_TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout
    ) as session:
        while True:
            base = nodes[node % len(nodes)]
            before = state["last"]
            try:
                done = await _stream(session, base, params, args, state)
                if done:
                    return 0
                # The node ended the stream (shutting down): resume elsewhere.
            except _Failed as exc:
                print(f"custody: error: {exc}", file=sys.stderr)
                return 1
            except (aiohttp.ClientError, TimeoutError, _Retry) as exc:
                if not args.follow and failures + 1 >= 6 * len(nodes):
                    print(f"custody: error: no node answered ({exc})", file=sys.stderr)
                    return 1
            if state["last"] != before:
                failures, delay = 0, 0.1
            else:
                failures += 1
            node += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class _Retry(Exception):
    pass


async def _stream(
    session: Any, base: str, params: dict[str, str], args: argparse.Namespace,
    state: dict[str, int],
) -> bool:  # fmt: skip
    """Read one connection's events. True: finished (no --follow and the node said the
    head was reached, or --limit met); False: the stream ended early (node stopping);
    raises to try another node."""
    headers = {"Accept": "text/event-stream"}
    query = dict(params)
    if state["last"] >= 0:
        headers["Last-Event-ID"] = str(state["last"])
    query["after"] = str(state["last"])
    async with session.get(f"{base}/v1/events", params=query, headers=headers) as resp:
        if resp.status in RETRY_STATUSES:
            raise _Retry(f"{base}: HTTP {resp.status}")
        if resp.status != 200:
            try:
                body = await resp.json(content_type=None)
                text = f"{body.get('error')}: {body.get('message')}"
            except ValueError:
                text = (await resp.text())[:200]
            raise _Failed(f"{resp.status} {text}")
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line == ": end":  # the node says: that was the backlog, complete
                return True
            if line:
                if not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = fields.get(name, "") + value.removeprefix(" ")
                continue
            if "data" in fields and "id" in fields:
                seq = int(fields["id"])
                if seq > state["last"]:  # never print an event twice
                    event = json.loads(fields["data"])
                    print(json.dumps(event, sort_keys=True) if args.json else human(event),
                          flush=True)  # fmt: skip
                    state["last"] = seq
                    state["printed"] += 1
                    if args.limit and state["printed"] >= args.limit:
                        return True
            fields = {}
    return False  # closed early (the node is stopping): resume elsewhere
