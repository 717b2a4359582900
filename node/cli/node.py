"""`custody node run --config FILE`: run one custody node in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    node = subparsers.add_parser("node", help="run a custody node")
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


def _run(args: argparse.Namespace) -> int:
    from node.server.config import load_config
    from node.server.main import run

    cfg = load_config(args.config)  # ConfigError (a ValueError): one line, exit 2
    return run(cfg)
