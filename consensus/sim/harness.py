"""A step-by-step harness for unit tests: cores, storages and a hand-driven network.

Unlike the randomized simulator, nothing happens unless the test says so:
`tick`, `deliver` one round of queued messages, or `stabilize` until quiet.
The runner loop is the documented contract (save, send, apply, advance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..core import Config, RaftCore, ReadState, Role
from ..memstore import MemoryStorage
from ..messages import Entry, EntryType, Message


class Harness:
    def __init__(self, ids: Iterable[int], **config: Any) -> None:
        self.ids = sorted(ids)
        self.config = config
        self.storages: dict[int, MemoryStorage] = {
            i: MemoryStorage.bootstrap(self.ids) for i in self.ids
        }
        self.cores: dict[int, RaftCore] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.queue: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        self.drop: Callable[[Message], bool] | None = None
        for i in self.ids:
            self.start(i)

    # --- nodes -------------------------------------------------------------------
    def start(self, nid: int, storage: MemoryStorage | None = None) -> RaftCore:
        if storage is not None:
            self.storages[nid] = storage
        st = self.storages[nid]
        cfg = Config(id=nid, seed=nid, **{"election_tick": 10, **self.config})
        self.cores[nid] = RaftCore(cfg, st)
        self.applied[nid] = []
        self.read_states.setdefault(nid, [])
        self.down.discard(nid)
        self.process(nid)
        return self.cores[nid]

    def crash(self, nid: int) -> None:
        self.down.add(nid)

    def __getitem__(self, nid: int) -> RaftCore:
        return self.cores[nid]

    def leader(self) -> int:
        ids = [i for i in self.cores if i not in self.down and self.cores[i].role is Role.LEADER]
        return max(ids, key=lambda i: self.cores[i].term, default=0)

    def data(self, nid: int) -> list[bytes]:
        """Application commands applied by `nid`, in order (no-ops and conf changes skipped)."""
        return [e.data for e in self.applied[nid] if e.type is EntryType.NORMAL and e.data]

    # --- the runner loop ---------------------------------------------------------------
    def process(self, nid: int) -> None:
        core = self.cores[nid]
        while nid not in self.down and core.has_ready():
            rd = core.ready()
            self.storages[nid].save(rd.hard_state, rd.entries, rd.snapshot)
            self.queue.extend(rd.messages)
            self.applied[nid].extend(rd.committed_entries)
            self.read_states[nid].extend(rd.read_states)
            core.advance(rd)

    def process_all(self) -> None:
        for nid in list(self.cores):
            self.process(nid)

    # --- network -----------------------------------------------------------------
    def isolate(self, nid: int) -> None:
        for other in self.cores:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    def take(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        """Remove and return queued messages matching `pred` (all if None)."""
        taken = [m for m in self.queue if pred is None or pred(m)]
        self.queue = [m for m in self.queue if not (pred is None or pred(m))]
        return taken

    def deliver(self, pred: Callable[[Message], bool] | None = None) -> int:
        """Deliver one round of queued messages (those matching `pred`); returns count."""
        self.process_all()
        batch = self.take(pred)
        n = 0
        for m in batch:
            if (m.frm, m.to) in self.cut or m.to in self.down or m.to not in self.cores:
                continue
            if self.drop is not None and self.drop(m):
                continue
            self.cores[m.to].step(m)
            n += 1
            self.process(m.to)
        return n

    def stabilize(self, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            self.process_all()
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("the cluster did not go quiet")

    def tick(self, nid: int, n: int = 1) -> None:
        for _ in range(n):
            self.cores[nid].tick()
        self.process(nid)

    def tick_all(self, n: int = 1, settle: bool = True) -> None:
        for _ in range(n):
            for nid in self.cores:
                if nid not in self.down:
                    self.cores[nid].tick()
            if settle:
                self.stabilize()

    def elect(self, nid: int) -> None:
        self.cores[nid].campaign()
        self.stabilize()
        assert self.cores[nid].role is Role.LEADER, f"{nid} failed to win"

    def propose(self, data: bytes) -> int:
        lead = self.leader()
        index = self.cores[lead].propose(data)
        self.stabilize()
        return index
