"""`python -m chaos run SCENARIO|all [--seed N] [--out DIR] | list | clean`
(`custody drill ...` runs this in a subprocess).

`run` exits 0 when every scenario that ran passed, 1 if one failed, 2 on a bad
scenario file, 3 when none could run here (each skipped scenario says why: network and
disk faults need root, clock jumps libfaketime).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from chaos import report, sandbox, scenario
    from chaos.runner import Drill, DrillResult

    names = [p.stem for p in scenario.available()] if args.scenario == "all" else [args.scenario]
    try:
        scs = [scenario.load(scenario.find(n)) for n in names]
    except scenario.ScenarioError as exc:
        print(f"custody drill: error: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    out = args.out or Path("drill-reports") / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"drill: seed {seed}; {len(scs)} scenario(s); report in {out}", flush=True)
    why_not = sandbox.can_isolate()
    print("drill: " + ("every drill runs in a network namespace of its own" if why_not is None
                       else f"no network namespace ({why_not}): nodes on the host's loopback, "
                       "process and clock faults only"), flush=True)  # fmt: skip
    results = []
    for sc in scs:
        why = sandbox.skip_reason(sc)
        if why:
            r = DrillResult(sc.name, seed, skipped=why)
            report.write_scenario(out / sc.name, r, [], sc.description)
            results.append(r)
            print(f"drill: {sc.name}: SKIPPED ({why})", flush=True)
            continue
        d = Drill(sc, seed, out / sc.name, keep=args.keep)
        r = d.run()
        report.write_scenario(out / sc.name, r, d.h.ops, sc.description)
        results.append(r)
        print(
            f"drill: {sc.name}: {'PASSED' if r.passed else 'FAILED'} "
            f"(acked lost: {r.acked_lost}; report {out / sc.name / 'summary.md'})",
            flush=True,
        )
        if not r.passed:
            print(f"drill: replay with: {r.replay}", flush=True)
    report.write_index(out, results, seed, ["custody", "drill", *sys.argv[1:]])
    ran = [r for r in results if not r.skipped]
    bad = [r.scenario for r in ran if not r.passed]
    skipped = [r for r in results if r.skipped]
    print(f"drill: seed {seed}: {len(ran) - len(bad)}/{len(ran)} passed"
          + (f", {len(skipped)} skipped" if skipped else "")
          + f"; {out / 'summary.md'}", flush=True)  # fmt: skip
    for r in results:
        if r.skipped:
            print(f"drill: SKIPPED {r.scenario}: {r.skipped}")
        elif not r.passed:
            print(f"drill: FAILED {r.scenario}; replay: {r.replay}")
    if bad:
        return 1
    return 3 if not ran else 0


def _list(_args: argparse.Namespace) -> int:
    from chaos import scenario

    for p in scenario.available():
        try:
            sc = scenario.load(p)
            faults = ", ".join(f"{f.action} {f.target}@{f.at:g}s" for f in sc.faults)
            print(f"{sc.name:24} {sc.duration:>4g}s  {sc.description}\n{'':24} faults: {faults}")
        except scenario.ScenarioError as exc:
            print(f"{p.stem:24} INVALID: {exc}")
    return 0


def _clean(_args: argparse.Namespace) -> int:
    from chaos import sandbox
    from chaos.cluster import proc_matches
    from chaos.runner import work_base

    base = work_base()
    killed = removed = 0
    if base.is_dir():
        for pid_file in sorted(base.glob("*/node-*/node.pid")):
            config = (pid_file.parent / "node.toml").resolve()
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                if proc_matches(pid, config):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
                        print(f"killed {pid_file.parent.name} (pid {pid}) of {pid_file.parents[1]}")
    # link delayers, mounted data disks, loop devices, blkio groups, network namespaces
    left = sandbox.clean(base)
    for line in left:
        print(line)
    if base.is_dir():
        for d in sorted(base.iterdir()):
            if d.is_dir() and (d / "cluster.json").exists():
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
    print(f"drill clean: {killed} process(es) killed, {len(left)} sandbox leftover(s) removed, "
          f"{removed} work dir(s) removed under {base}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="custody drill", description="Disaster-recovery drills.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario (or all) and write a report")
    r.add_argument("scenario", help="a scenario name (custody drill list), a YAML path, or all")
    r.add_argument("--seed", type=int, default=None, help="seed for every random choice")
    r.add_argument("--out", type=Path, default=None, help="report directory")
    r.add_argument("--keep", action="store_true", help="keep the cluster directory")
    r.set_defaults(func=_run)
    sub.add_parser("list", help="list the scenarios").set_defaults(func=_list)
    sub.add_parser("clean", help="kill leftover drill nodes, remove their namespaces, mounts, "
                   "cgroups and work dirs").set_defaults(func=_clean)  # fmt: skip
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
