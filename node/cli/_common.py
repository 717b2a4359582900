"""Shared plumbing of the client subcommands: profile, client, output, errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from node.client.http import ApiError, Client, Unreachable
from node.client.profile import Profile, find_profile, load_profile


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="client profile (default: $CUSTODY_PROFILE)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def profile_of(args: argparse.Namespace) -> Profile:
    return load_profile(find_profile(getattr(args, "profile", None)))


def run_client(
    args: argparse.Namespace, body: Callable[[Client, Profile], Awaitable[int]]
) -> int:
    """Run `body` with a connected client; API errors become one line and status 1."""
    profile = profile_of(args)

    async def main() -> int:
        async with Client(profile) as client:
            return await body(client, profile)

    try:
        return asyncio.run(main())
    except ApiError as exc:
        print(f"custody: error: {exc.status} {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except Unreachable as exc:
        print(f"custody: error: {exc}", file=sys.stderr)
        return 1


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(human(data))


def progress(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "json", False):
        print(text, file=sys.stderr, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]  # fmt: skip
    return "\n".join(lines)
