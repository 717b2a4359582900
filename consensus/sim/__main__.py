"""Replay or sweep simulator seeds: `python -m consensus.sim [--mode M] --seed N [--count K]`.

Modes (see consensus/sim/modes.py): base, planned, planned-torn, conservative,
conservative-torn, or `all` to run every mode over the same seeds. Each
failing seed prints the exact command that replays it. Exit status 1 if any
seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from .cluster import SimConfig, SimResult, run_seed
from .modes import MODES


def _run(task: tuple[int, str, dict[str, Any]]) -> SimResult:
    seed, mode, overrides = task
    return run_seed(seed, mode, **overrides)


def _results(seeds: range, mode: str, overrides: dict[str, Any], pool: Any) -> Iterator[SimResult]:
    tasks = [(seed, mode, overrides) for seed in seeds]
    if pool is None:
        return map(_run, tasks)
    return pool.imap(_run, tasks, chunksize=max(1, min(16, len(tasks) // 64)))


def _sweep(
    seeds: range, mode: str, overrides: dict[str, Any], args: argparse.Namespace, pool: Any
) -> list[SimResult]:
    extra = "" if args.safety_ms is None else f" --safety-ms {args.safety_ms}"
    failed: list[SimResult] = []
    start = time.perf_counter()
    for done, res in enumerate(_results(seeds, mode, overrides, pool), 1):
        if args.quiet and done % 1000 == 0 and done < len(seeds):
            print(
                f"{mode}: {done}/{len(seeds)} seeds run, {len(failed)} failed, "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
        if args.verbose:
            print(SimConfig.from_seed(res.seed, **{**MODES[mode][1], **overrides}))
        if not res.ok or not args.quiet:
            status = "ok" if res.ok else "FAIL"
            label = "" if mode == "base" else f" [{mode}]"
            print(
                f"seed {res.seed}{label}: {status} ops={res.ops_completed}/{res.ops_total} "
                f"elections={res.elections} term={res.max_term} crashes={res.crashes} "
                f"conf={res.conf_changes} snaps={res.snapshots} msgs={res.messages} "
                f"t={res.virtual_ms}ms"
            )
        if not res.ok:
            failed.append(res)
            for line in res.violations:
                print("  " + line)
            print(f"  replay: {res.replay_command()}{extra}", flush=True)
    elapsed = time.perf_counter() - start
    n = len(seeds)
    rate = n / elapsed if elapsed > 0 else float("inf")
    label = "" if mode == "base" and not args.all_modes else f"{mode}: "
    print(
        f"{label}{n - len(failed)}/{n} seeds ok in {elapsed:.1f}s ({rate:.1f} seeds/s)",
        flush=True,
    )
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m consensus.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--count", type=int, default=1, help="number of consecutive seeds")
    p.add_argument("--mode", default="base", choices=[*MODES, "all"], help="runner loop and faults")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--safety-ms", type=int, help="override the safety phase length")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and totals")
    p.add_argument("-v", "--verbose", action="store_true", help="print the scenario")
    args = p.parse_args(argv)
    args.all_modes = args.mode == "all"
    overrides = {} if args.safety_ms is None else {"safety_ms": args.safety_ms}
    modes = list(MODES) if args.all_modes else [args.mode]
    seeds = range(args.seed, args.seed + args.count)
    failed: list[SimResult] = []
    pool = multiprocessing.Pool(args.jobs) if args.jobs > 1 and args.count > 1 else None
    # A terminated sweep takes its workers with it (the `finally` below).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for mode in modes:
            failed += _sweep(seeds, mode, overrides, args, pool)
    finally:
        if pool is not None:
            pool.terminate()
    if len(modes) > 1 or failed:
        total = len(seeds) * len(modes)
        print(f"total: {total - len(failed)}/{total} ok, {len(failed)} failed")
        extra = "" if args.safety_ms is None else f" --safety-ms {args.safety_ms}"
        for res in failed[:100]:
            print(f"  replay: {res.replay_command()}{extra}")
        if len(failed) > 100:
            print(f"  ... and {len(failed) - 100} more (each is printed above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
