"""A seeded faulty network: drops, delays, reorders, duplicates and partitions.

Delivery is scheduled on the simulator clock; the recipient may be down by the
time a message arrives, in which case it is lost like any other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..messages import Message
from .clock import Clock


@dataclass(slots=True)
class NetFaults:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability it is delivered twice
    min_delay: int = 1
    max_delay: int = 10
    long_delay: float = 0.0  # probability of an extra long delay (reordering)
    long_delay_max: int = 100


class Network:
    def __init__(self, rng: random.Random, clock: Clock, faults: NetFaults) -> None:
        self.rng = rng
        self.clock = clock
        self.faults = faults
        self._cut: set[tuple[int, int]] = set()  # directed (from, to) pairs that cannot talk
        self.sent = 0
        self.dropped = 0

    # --- partitions ---------------------------------------------------------------
    def partition(self, group_a: list[int], group_b: list[int]) -> None:
        for a in group_a:
            for b in group_b:
                self._cut.add((a, b))
                self._cut.add((b, a))

    def cut_one_way(self, frm: int, to: int) -> None:
        self._cut.add((frm, to))

    def heal(self) -> None:
        self._cut.clear()

    @property
    def partitioned(self) -> bool:
        return bool(self._cut)

    def connected(self, frm: int, to: int) -> bool:
        return (frm, to) not in self._cut

    # --- delivery -----------------------------------------------------------------
    def send(self, m: Message) -> None:
        self.sent += 1
        f = self.faults
        if not self.connected(m.frm, m.to) or self.rng.random() < f.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(f.min_delay, f.max_delay)
            if self.rng.random() < f.long_delay:
                delay += self.rng.randint(0, f.long_delay_max)
            self.clock.after(delay, "deliver", m)
