"""Fault targets resolved by the runner, against a stub cluster (no processes):
`other-follower` never picks the leader nor a member whose token was lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chaos.runner import Drill
from chaos.scenario import Fault, Scenario, Workload


class StubCluster:
    def __init__(self, leader: str | None, down: tuple[str, ...] = ()) -> None:
        self.names = ["node-1", "node-2", "node-3"]
        self.paused: set[str] = set()
        self._leader = leader
        self._down = down

    def running(self, name: str) -> bool:
        return name not in self._down

    async def leader(self, timeout: float = 10) -> str | None:
        return self._leader


def drill(tmp_path: Path, cluster: StubCluster, lost: set[str]) -> Drill:
    sc = Scenario("t", "", 20, 60, Workload(), (Fault(1, "lose-token", "follower"),))
    d = Drill(sc, 7, tmp_path)
    d.cluster = cluster  # type: ignore[assignment]
    d.token_lost = set(lost)
    return d


def test_other_follower_avoids_the_leader_and_the_repaired_member(tmp_path: Path) -> None:
    for seed_round in range(20):
        d = drill(tmp_path, StubCluster("node-2"), {"node-3"})
        d.rng.seed(seed_round)
        assert asyncio.run(d._resolve("other-follower")) == ("node-1", "")
    picks = set()  # plain `follower` may pick the repaired member
    for seed_round in range(20):
        d = drill(tmp_path, StubCluster("node-2"), {"node-3"})
        d.rng.seed(seed_round)
        picks.add(asyncio.run(d._resolve("follower"))[0])
    assert picks == {"node-1", "node-3"}


def test_other_follower_is_skipped_when_none_qualifies(tmp_path: Path) -> None:
    d = drill(tmp_path, StubCluster("node-2", down=("node-1",)), {"node-3"})
    assert asyncio.run(d._resolve("other-follower")) == (
        None, "no live follower other than node-3")  # fmt: skip
    d = drill(tmp_path, StubCluster(None), {"node-3"})
    assert asyncio.run(d._resolve("other-follower")) == (None, "no leader found within 8 s")


def test_other_follower_avoids_a_refused_member(tmp_path: Path) -> None:
    for seed_round in range(20):
        d = drill(tmp_path, StubCluster("node-1"), set())
        d.hsm_refused = {"node-2"}
        d.rng.seed(seed_round)
        assert asyncio.run(d._resolve("other-follower")) == ("node-3", "")
    d = drill(tmp_path, StubCluster("node-1"), {"node-3"})
    d.hsm_refused = {"node-2"}
    assert asyncio.run(d._resolve("other-follower")) == (
        None, "no live follower other than node-2, node-3")  # fmt: skip


def test_log_errors_lists_hsm_lines_first(tmp_path: Path) -> None:
    d = drill(tmp_path, StubCluster("node-1"), set())
    d.root = tmp_path
    (tmp_path / "node-2").mkdir()
    log = tmp_path / "node-2" / "node.log"
    old = "2026-12-03T08:00:00Z WARNING custody.x: before the fault\n"
    log.write_text(old + "".join(
        f"2026-12-03T08:00:0{i}Z {line}\n" for i, line in enumerate([
            "INFO custody.signer: sign r1: share given to node-1",
            "WARNING custody.runtime: duty round failed; retrying",
            "ERROR custody.app: load share: PKCS#11 module failure (ObjectHandleInvalid)",
            "WARNING custody.runtime: duty round failed; retrying",
        ])))  # fmt: skip
    lines, end = d._log_errors("node-2", len(old))
    assert lines == [
        "1x ERROR custody.app: load share: PKCS#11 module failure (ObjectHandleInvalid)",
        "2x WARNING custody.runtime: duty round failed; retrying",
    ]
    assert end == log.stat().st_size
    assert d._log_errors("node-9", 0) == ([], 0)
