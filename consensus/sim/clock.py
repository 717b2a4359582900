"""Virtual time: a priority queue of events in integer milliseconds.

Ties are broken by insertion order, so the run is a pure function of the seed.
"""

from __future__ import annotations

import heapq
from typing import Any


class Clock:
    __slots__ = ("_heap", "_seq", "now")

    def __init__(self) -> None:
        self.now = 0
        self._seq = 0
        self._heap: list[tuple[int, int, tuple[Any, ...]]] = []

    def at(self, when: int, *event: Any) -> None:
        """Schedule `event` at virtual time `when` (never in the past)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, event))

    def after(self, delay: int, *event: Any) -> None:
        self.at(self.now + delay, *event)

    def pop(self) -> tuple[Any, ...] | None:
        if not self._heap:
            return None
        when, _, event = heapq.heappop(self._heap)
        self.now = when
        return event

    def peek_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None
