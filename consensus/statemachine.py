"""The application state machine the runner replicates.

The runner (`consensus.driver.Driver`) hands every committed command to
`apply`, in log order, on every node. Implementations must be deterministic:
the same commands in the same order yield the same results and the same state
on every replica (no clocks, no randomness, no I/O). `snapshot` and `restore`
let the runner compact the log and bring a lagging or restarted node up to
date without replaying everything.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class StateMachine(Protocol):
    def apply(self, command: bytes) -> bytes:
        """Apply one committed command and return its result.

        Must not raise for a bad command: a command that cannot be applied
        should return an error *result*, so that every replica records the
        same outcome. An exception here stops the node (the replicas could
        diverge otherwise).
        """
        ...

    def snapshot(self) -> bytes:
        """Serialize the whole state (called between applies, never during)."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot produced by `snapshot`."""
        ...
