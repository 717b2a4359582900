"""Raft's safety properties, checked while the simulation runs and at its end.

Each check appends a human-readable violation instead of raising, so a run
reports everything it found together with the seed that reproduces it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..log import RaftLog
from ..messages import Entry
from ..storage import Compacted, Unavailable


class SafetyChecker:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.committed: dict[int, Entry] = {}  # index -> entry applied by some node
        self.applied: dict[int, int] = {}  # node -> last applied index

    def _fail(self, msg: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(msg)

    # --- Election Safety + Leader Completeness (checked at election time) ----------
    def on_leader(self, node: int, term: int, log: RaftLog) -> None:
        other = self.leaders.setdefault(term, node)
        if other != node:
            self._fail(f"election safety: term {term} has leaders {other} and {node}")
            return
        first = log.first_index()
        for index, e in self.committed.items():
            if e.term >= term or index < first:
                continue  # compacted entries live in the leader's snapshot
            try:
                t = log.term(index)
            except (Compacted, Unavailable):
                t = -1
            if t != e.term:
                self._fail(
                    f"leader completeness: leader {node} of term {term} lacks committed "
                    f"entry {index} (term {e.term}); has term {t}"
                )
                return

    # --- State Machine Safety ------------------------------------------------------
    def on_apply(self, node: int, e: Entry) -> None:
        last = self.applied.get(node, 0)
        if e.index != last + 1:
            self._fail(f"node {node} applied {e.index} after {last}: gap or repeat")
        self.applied[node] = e.index
        seen = self.committed.setdefault(e.index, e)
        if seen != e:
            self._fail(
                f"state machine safety: node {node} applied {e} at {e.index}, "
                f"another node applied {seen}"
            )

    def on_restore(self, node: int, index: int) -> None:
        """A node restored a snapshot (or restarted from one) at `index`."""
        if index < self.applied.get(node, 0):
            self._fail(f"node {node} restored a snapshot at {index}, behind its applied index")
        if index not in self.committed:
            self._fail(f"node {node} restored a snapshot at {index}, which no node applied")
        self.applied[node] = index

    def on_restart(self, node: int, applied: int) -> None:
        self.applied[node] = applied

    # --- Log Matching (checked over the durable logs at the end) ------------------
    def check_logs(self, logs: Mapping[int, Mapping[int, Entry]]) -> None:
        for node, log in logs.items():
            prev = 0
            for i in sorted(log):
                if log[i].term < prev:
                    self._fail(f"node {node}: term goes down at index {i}")
                prev = log[i].term
        ids = sorted(logs)
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1 :]:
                la, lb = logs[a], logs[b]
                common = sorted(set(la) & set(lb))
                top = max((i for i in common if la[i].term == lb[i].term), default=None)
                if top is None:
                    continue
                for i in common:
                    if i > top:
                        break
                    if la[i] != lb[i]:
                        self._fail(
                            f"log matching: nodes {a},{b} agree on term at {top} "
                            f"but differ at {i}"
                        )
                        break
