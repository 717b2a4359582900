"""The simulator with the asyncio runner's I/O order (`consensus.driver.plan_ready`).

The base simulator follows the core's runner contract to the letter: save
(hard state, entries, snapshot), send, apply, advance. The runner in
`consensus/driver.py` takes liberties the contract allows and decides them in
one pure function, `plan_ready`: a leader sends APPEND/HEARTBEAT before its
fsync when `split_early` allows, a commit-only hard state is not fsynced on
its own (deferred to the next save, or, with `defer_commit=False`, saved by a
leader after applying and before sending), and a leader applies and answers
before sending the rest. `PlannedSim` orders each Ready's I/O exactly as the
plan says, so the simulator's crashes (and torn writes) can hit either save.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core import Ready, Role
from ..driver import ReadyPlan, plan_ready
from ..messages import HardState
from .cluster import SimConfig, SimNode, Simulation

Policy = Callable[[Ready, int, bool, HardState, HardState], ReadyPlan]


class PlannedSim(Simulation):
    """A `Simulation` whose runner loop follows `policy` (default: `plan_ready`)."""

    def __init__(self, cfg: SimConfig, policy: Policy = plan_ready) -> None:
        self.policy = policy
        # (node, incarnation) -> the newest hard state the core produced, which
        # may be ahead of the durable one by a deferred commit index.
        self.latest: dict[tuple[int, int], HardState] = {}
        super().__init__(cfg)

    def _process(self, node: SimNode) -> None:
        while node.core is not None and node.core.has_ready():
            core = node.core
            rd = self._take_ready(node, core)
            durable = node.storage.initial_state()[0]
            key = (node.id, node.incarnation)
            latest = self.latest[key] = rd.hard_state or self.latest.get(key, durable)
            plan = self.policy(rd, node.id, core.role is Role.LEADER, durable, latest)
            for m in plan.early:
                self.net.send(m)
            if plan.save_first:
                if node.crash_on_save:
                    self._torn_save(node, rd)
                    return
                hs = latest if latest != durable else None  # incl. a deferred commit
                node.storage.save(hs, rd.entries, rd.snapshot)
            if not plan.resolve_first:
                for m in plan.late:
                    self.net.send(m)
            self._apply_ready(node, rd)
            if plan.save_commit_after_apply:
                if node.crash_on_save:
                    self._crash(node)
                    return
                node.storage.save(latest, [], None)
            if plan.resolve_first:
                for m in plan.late:
                    self.net.send(m)
            core.advance(rd)
            self._maybe_snapshot(node)

    def _maybe_snapshot(self, node: SimNode) -> None:
        # Like the driver: a deferred commit index is written before a snapshot.
        st, every = node.storage, self.cfg.snapshot_every
        if every and node.core is not None and node.applied - st.snapshot().meta.index >= every:
            latest = self.latest.get((node.id, node.incarnation))
            if latest is not None and st.initial_state()[0].commit < node.applied:
                st.save(latest, [])
        super()._maybe_snapshot(node)


__all__ = ["PlannedSim", "Policy"]
