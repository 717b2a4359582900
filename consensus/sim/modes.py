"""The simulator's modes: which runner loop, and which fault overrides.

- `base`: the runner contract to the letter (`Simulation`), the seed's own
  crash rate, half of the crashes tearing a write.
- `planned`, `conservative`: the asyncio runner's I/O order as decided by
  `consensus.driver.plan_ready` (`PlannedSim`), with its default deferred
  commit fsync or with `defer_commit=False`.
- `planned-torn`, `conservative-torn`: the same with many more crashes
  (`crash_p=0.05`) and every crash tearing the write it hits (`torn_p=1.0`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ..driver import plan_ready
from .cluster import SimConfig, Simulation
from .planned import PlannedSim

TORN: dict[str, Any] = {"crash_p": 0.05, "torn_p": 1.0}

# mode -> (make a Simulation from a SimConfig, SimConfig overrides)
MODES: dict[str, tuple[Callable[[SimConfig], Simulation], dict[str, Any]]] = {
    "base": (Simulation, {}),
    "planned": (partial(PlannedSim, policy=plan_ready), {}),
    "planned-torn": (partial(PlannedSim, policy=plan_ready), TORN),
    "conservative": (partial(PlannedSim, policy=partial(plan_ready, defer_commit=False)), {}),
    "conservative-torn": (
        partial(PlannedSim, policy=partial(plan_ready, defer_commit=False)),
        TORN,
    ),
}


def simulation(seed: int, mode: str = "base", **overrides: Any) -> Simulation:
    """The simulation of `seed` in `mode`; `overrides` (SimConfig fields) win over the mode's."""
    try:
        make, mode_overrides = MODES[mode]
    except KeyError:
        raise ValueError(f"unknown simulator mode {mode!r}; one of {', '.join(MODES)}") from None
    sim = make(SimConfig.from_seed(seed, **{**mode_overrides, **overrides}))
    sim.mode = mode
    return sim


__all__ = ["MODES", "TORN", "simulation"]
