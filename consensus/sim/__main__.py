"""Replay or sweep simulator seeds: `python -m consensus.sim --seed N`."""

from __future__ import annotations

import argparse
import sys
import time

from .cluster import SimConfig, run_seed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__)
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--count", type=int, default=1, help="number of consecutive seeds")
    p.add_argument("--safety-ms", type=int, help="override the safety phase length")
    p.add_argument("-v", "--verbose", action="store_true", help="print the scenario")
    args = p.parse_args(argv)
    overrides = {} if args.safety_ms is None else {"safety_ms": args.safety_ms}
    failed = 0
    start = time.perf_counter()
    for seed in range(args.seed, args.seed + args.count):
        if args.verbose:
            print(SimConfig.from_seed(seed, **overrides))
        res = run_seed(seed, **overrides)
        status = "ok" if res.ok else "FAIL"
        print(
            f"seed {seed}: {status} ops={res.ops_completed}/{res.ops_total} "
            f"elections={res.elections} term={res.max_term} crashes={res.crashes} "
            f"conf={res.conf_changes} snaps={res.snapshots} msgs={res.messages} "
            f"t={res.virtual_ms}ms"
        )
        if not res.ok:
            failed += 1
            for line in res.violations:
                print("  " + line)
            extra = "" if args.safety_ms is None else f" --safety-ms {args.safety_ms}"
            print(f"  replay: {res.replay_command()}{extra}")
    elapsed = time.perf_counter() - start
    print(f"{args.count - failed}/{args.count} seeds ok in {elapsed:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
