"""Benchmark: the repair and refresh protocol engines (node/protocols), in one process.

What it measures, per run (3 members, t = 2; `--members 5` for 5, t = 3):

- repair of one member's shares from t helpers, for 1, 100 and 1000 key versions
  (batches of at most `MAX_ITEMS` versions per run, as the node will split them):
  wall time of every party's protocol work done one after the other in this
  process, and the busiest party's own CPU time (what one node would spend);
- refresh of 1000 versions among all members, the same two figures;
- reference in the same run: a fresh in-process DKG (`DkgSession`, all members)
  of one version, per version, which is what re-keying instead of repairing
  would cost.

Node-level figures (a running cluster: log commits, HSM writes, point-to-point
delivery, signing throughput during a repair or refresh) are in
`benchmarks/recovery_cluster.py`. Key material comes from a trusted dealer here
(setup, untimed).

    .venv/bin/python benchmarks/recovery.py [--members 3|5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.protocols.batch import MAX_ITEMS, KeyVersion
from node.protocols.dkg_session import DkgSession, dkg_context
from node.protocols.refresh_session import RefreshSession, refresh_context
from node.protocols.repair_session import RepairHelper, RepairTarget, repair_context
from shares import frost
from shares import group as g
from shares.repair import RepairRequest
from shares.rng import SeededRNG


def keys(n: int, t: int, count: int, rng: SeededRNG) -> tuple[list[KeyVersion], list[dict]]:
    items, shares = [], []
    for v in range(count):
        secret = g.random_scalar(rng)
        s, gpk, commitment = frost.trusted_dealer_keygen(secret, n, t, rng=rng)
        _, vshares = frost.derive_group_info(n, t, commitment)
        items.append(KeyVersion("bench", v + 1, gpk, {i + 1: y for i, y in enumerate(vshares)}))
        shares.append(dict(s))
    return items, shares


class Clock:
    """Per-party CPU seconds (process time spent inside each party's calls)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def run(self, party: str, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        self.cpu[party] = self.cpu.get(party, 0.0) + time.process_time() - t0
        return out


def repair_batch(items, shares, n, t, clock: Clock, rng) -> None:
    helpers = tuple(range(2, t + 2))
    request = RepairRequest(1, helpers, t)
    ctx = repair_context("bench", "ops:repair", request, items)
    target, target_post = clock.run("target", RepairTarget.start, ctx, request, items, rng)
    sessions, posts = {}, {}
    for h in helpers:
        sessions[h], posts[h] = clock.run(f"node-{h}", RepairHelper.start, ctx, h, request, items,
                                          [s[h] for s in shares], rng)  # fmt: skip
    boxes = {h: clock.run(f"node-{h}", sessions[h].on_posts, posts, target_post) for h in helpers}
    for sender, out in boxes.items():
        for recipient, message in out.items():
            clock.run(f"node-{recipient}", sessions[recipient].on_deltas, sender, message)
    clock.run("target", target.on_posts, posts, target_post)
    for h in helpers:
        clock.run("target", target.on_sigma, h, clock.run(f"node-{h}", sessions[h].sigma_message))
    result = clock.run("target", target.finish)
    assert [bytes(s) for s in result.shares] == [s[1] for s in shares]
    result.zeroize()


def refresh_batch(items, shares, n, t, clock: Clock, rng) -> None:
    ids = tuple(range(1, n + 1))
    ctx = refresh_context("bench", "ops:refresh", ids, t, items)
    sessions, posts = {}, {}
    for i in ids:
        sessions[i], posts[i] = clock.run(f"node-{i}", RefreshSession.start, ctx, i, ids, t,
                                          items, [s[i] for s in shares], rng)  # fmt: skip
    boxes = {i: clock.run(f"node-{i}", sessions[i].on_posts, posts) for i in ids}
    for sender, out in boxes.items():
        for recipient, message in out.items():
            clock.run(f"node-{recipient}", sessions[recipient].on_subshares, sender, message)
    for i in ids:
        clock.run(f"node-{i}", sessions[i].finish).zeroize()


def timed(fn, items, shares, n, t, rng) -> tuple[float, float]:
    """(wall seconds, busiest party's CPU seconds) over batches of MAX_ITEMS."""
    clock = Clock()
    t0 = time.perf_counter()
    for start in range(0, len(items), MAX_ITEMS):
        fn(items[start : start + MAX_ITEMS], shares[start : start + MAX_ITEMS], n, t, clock, rng)
    return time.perf_counter() - t0, max(clock.cpu.values())


def dkg_once(n: int, t: int, rng: SeededRNG) -> float:
    members = [(f"node-{i}", i) for i in range(1, n + 1)]
    ctx = dkg_context("bench", "ops:dkg", "bench", 1, members, t)
    t0 = time.perf_counter()
    sessions, posts = {}, {}
    for i in range(1, n + 1):
        sessions[i], posts[i] = DkgSession.start(ctx, i, n, t, rng)
    boxes = {i: s.on_round1(posts) for i, s in sessions.items()}
    for sender, out in boxes.items():
        for recipient, message in out.items():
            sessions[recipient].on_round2(sender, message)
    for s in sessions.values():
        s.finish().zeroize()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, choices=(3, 5), default=3)
    args = ap.parse_args()
    n = args.members
    t = 2 if n == 3 else 3
    rng = SeededRNG(2026)
    print(f"recovery protocol engines, {n} members, t = {t}, one process "
          f"(setup by a trusted dealer, untimed)\n")  # fmt: skip
    items, shares = keys(n, t, 1000, rng)
    dkg = statistics.median(dkg_once(n, t, rng) for _ in range(20))
    print(f"{'figure':44} {'wall':>9} {'busiest node CPU':>17} {'per version':>12}")
    for label, fn, count in (("repair of one member, 1 version", repair_batch, 1),
                             ("repair of one member, 100 versions", repair_batch, 100),
                             ("repair of one member, 1000 versions", repair_batch, 1000),
                             ("refresh of all members, 1000 versions", refresh_batch, 1000)):
        wall, cpu = timed(fn, items[:count], shares[:count], n, t, rng)
        print(f"{label:44} {wall:8.3f}s {cpu:16.3f}s {wall / count * 1000:9.2f} ms")
    print(f"{'reference: fresh DKG of 1 version (median/20)':44} {dkg:8.4f}s {'':>17} "
          f"{dkg * 1000:9.2f} ms")  # fmt: skip
    print("\nengines only: a running cluster's figures (log, HSM, network, signing during a "
          "repair or refresh) are printed by benchmarks/recovery_cluster.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
