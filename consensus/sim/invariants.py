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
        # term -> the highest index some node knew to be committed while in that
        # term (a leader's own commit index, or an index a node applied): see
        # `commit_term` and `on_leader`.
        self.known_committed: dict[int, int] = {}

    def _fail(self, msg: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(msg)

    # --- Election Safety + Leader Completeness (checked at every Ready of a leader) --
    #
    # Leader Completeness (Raft §5.4): an entry committed in term T is in the log
    # of every leader of a term after T. T is the term in which the entry became
    # *committed*, not the term it was written in: under §5.4.2 an entry of
    # term 3 may be committed only indirectly in term 6, and a leader of term 5
    # (say one isolated with check-quorum off, still leading while term 6
    # commits) legitimately lacks it. Binding leaders by the entry's own term
    # raised exactly that false alarm (`--seed 92315`).
    #
    # The checker cannot see the instant an entry becomes committed (stored by
    # a majority under the §5.4.2 rule); it sees when a node learns it. So it
    # records, per term, the highest index some node knew committed while in
    # that term, and uses as an entry's commit term the lowest term in which
    # any node knew it committed (`commit_term`). Commitment is prefix-closed,
    # so "index <= known_committed[T]" means "committed by term T".
    #
    # Sound (no false alarms): a node knows an index is committed only after it
    # was, and terms never go down along the messages that carry that
    # knowledge, so the recorded term is >= the true commit term, and every
    # leader the check binds is of a term after the true commit term, which
    # Raft guarantees holds the entry.
    #
    # Strict enough: the first node to know is the leader that advanced its
    # commit index past the entry, and `on_leader` sees that commit index at
    # the leader's next Ready, in the same term. So for the usual case, an
    # entry committed by the leader of its own term, the recorded term is the
    # entry's term and the check is exactly as strict as binding by entry
    # term; for an entry committed indirectly it is the term of the leader
    # that committed it, the true commit term. The recorded term is later
    # than the true one only when a majority stored the entry but no node
    # learned it before that leader lost its term; leaders elected in between
    # are then not checked for it (nobody, not even the checker, could tell
    # such an entry from an uncommitted one then). Applying an index also
    # records the applier's term: a looser bound that only matters if a
    # leader's commit were somehow not seen.
    def on_leader(self, node: int, term: int, log: RaftLog) -> None:
        other = self.leaders.setdefault(term, node)
        if other != node:
            self._fail(f"election safety: term {term} has leaders {other} and {node}")
            return
        self._know(term, log.committed)
        bound = max((i for t, i in self.known_committed.items() if t < term), default=0)
        first = log.first_index()
        for index in range(first, bound + 1):
            e = self.committed.get(index)
            if e is None:
                continue  # known committed, not applied yet: checked at a later Ready
            try:
                t = log.term(index)
            except (Compacted, Unavailable):
                t = -1
            if t != e.term:
                self._fail(
                    f"leader completeness: leader {node} of term {term} lacks entry "
                    f"{index} (term {e.term}) committed by term {self.commit_term(index)}; "
                    f"has term {t}"
                )
                return

    def commit_term(self, index: int) -> int | None:
        """The lowest term in which some node knew `index` committed (None: none yet)."""
        return min((t for t, i in self.known_committed.items() if i >= index), default=None)

    def _know(self, term: int, index: int) -> None:
        if index > self.known_committed.get(term, 0):
            self.known_committed[term] = index

    # --- State Machine Safety ------------------------------------------------------
    def on_apply(self, node: int, e: Entry, term: int | None = None) -> None:
        """`node` applied `e` while in `term` (None: unknown, no commit-term evidence)."""
        if term is not None:
            self._know(term, e.index)
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
