"""Deterministic simulator for the Raft core (VOPR style).

Many `RaftCore`s run in one process on a virtual clock over a seeded, faulty
virtual network; one seed drives every choice, so any failure replays exactly
with `python -m consensus.sim --seed N`.
"""

from .cluster import SimConfig, SimResult, run_seed

__all__ = ["SimConfig", "SimResult", "run_seed"]
