"""``custody drill run SCENARIO|all | list | clean``: disaster-recovery drills (docs/chaos.md).

A thin shim: the drills live in the ``chaos`` package, which drives nodes from
outside; the node never imports it. This runs ``python -m chaos ...`` in a
subprocess and returns its exit status.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "drill",
        help="run disaster-recovery drills against a local cluster (docs/chaos.md)",
        description="Start a fresh local cluster, inject faults while clients sign (process: "
        "SIGKILL, SIGSTOP/SIGCONT, restart; a node's token lost and repaired; network "
        "partitions, one-way loss, latency, flapping links; a full or slow disk; clock "
        "jumps), check the invariants, write a report. Network and disk faults need root "
        "(the drill runs in a network namespace of its own); without it those scenarios "
        "are skipped and said so. Runs `python -m chaos`.",
    )
    sub = p.add_subparsers(dest="drill_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="run a scenario (or all) and write a report")
    run.add_argument("scenario", help="a scenario name (see `custody drill list`), a YAML "
                     "file, or `all`")  # fmt: skip
    run.add_argument("--seed", type=int, help="seed for every random choice (default: random)")
    run.add_argument("--out", help="report directory (default drill-reports/<time>-seed<N>)")
    run.add_argument("--keep", action="store_true", help="keep the cluster work directory")
    run.set_defaults(func=_run)
    sub.add_parser("list", help="list the scenarios").set_defaults(func=_run)
    sub.add_parser("clean", help="kill leftover drill nodes and remove drill work "
                   "directories").set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import subprocess
    import sys
    from pathlib import Path

    argv = [args.drill_command]
    if args.drill_command == "run":
        argv.append(args.scenario)
        if args.seed is not None:
            argv += ["--seed", str(args.seed)]
        if args.out:
            argv += ["--out", args.out]
        if args.keep:
            argv.append("--keep")
    project = Path(__file__).resolve().parents[2]
    return subprocess.call([sys.executable, "-m", "chaos", *argv], cwd=Path.cwd(),
                           env=_env(project))  # fmt: skip


def _env(project: object) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH")) if p)
    return env
