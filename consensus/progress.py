"""The leader's view of one follower: how far it matches and how to feed it.

PROBE: send one append at a time until the follower's match is found.
REPLICATE: stream appends optimistically, at most `max_inflight` unacknowledged.
SNAPSHOT: a snapshot was sent; pause until the follower acknowledges it (or a
retry timer in the core gives up and probes again).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """Last index of each unacknowledged append, oldest first, bounded."""

    __slots__ = ("_q", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("inflight capacity must be positive")
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise OverflowError("inflight window full")
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Forget every append whose last index is <= `index` (acknowledged)."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def reset(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    is_learner: bool = False
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_elapsed: int = 0  # ticks spent in SNAPSHOT without an answer
    recent_active: bool = False

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement of index `n`; True if match moved forward."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def sent_entries(self, last_index: int) -> None:
        """Account for an append carrying entries up to `last_index`."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the append at `rejected`; False if it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        new_next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        if new_next == self.next:
            # No way back below match: the follower lost entries it acknowledged (its
            # storage broke the contract). Do not ping-pong; the next heartbeat retries.
            return False
        self.next = new_next
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
