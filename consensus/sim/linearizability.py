"""A Wing–Gong / Lowe linearizability checker (the algorithm porcupine uses).

A history is a list of operations with call and return times (a return of None
means the outcome is unknown: it may or may not have taken effect). The checker
searches for a total order consistent with real time and the sequential model,
caching (linearized set, model state) pairs it has already explored (Lowe's
memoization). Histories are split by key first (P-compositionality), which
keeps each search small.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Operation:
    client: int
    input: Any
    output: Any
    call: int
    ret: int | None  # None: no response was seen (pending / unknown outcome)
    # Real-time order: a precedes b iff a.ret < b.call (equal times overlap).

    @property
    def pending(self) -> bool:
        return self.ret is None


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Is `op` (with its output, unless pending) legal in `state`; the next state."""
        ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    bad_partition: tuple[Operation, ...] = ()
    key: Any = None


class _Node:
    __slots__ = ("is_call", "match", "next", "op", "prev")

    def __init__(self, op: int, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _lift(call: _Node) -> None:
    ret = call.match
    assert call.prev is not None and ret is not None and ret.prev is not None
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    assert call.prev is not None and ret is not None and ret.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def check_operations(ops: Sequence[Operation], model: Model) -> bool:
    """True if `ops` (one partition) is linearizable with respect to `model`."""
    if not ops:
        return True
    horizon = max(max(o.call for o in ops), max(o.ret or 0 for o in ops)) + 1
    events: list[tuple[int, int, int, bool]] = []
    for i, o in enumerate(ops):
        ret = o.ret if o.ret is not None else horizon + i
        if ret < o.call:
            raise ValueError(f"operation {i} returns before it is called")
        # At equal times calls sort before returns: such operations overlap.
        events.append((o.call, 0, i, True))
        events.append((ret, 1, i, False))
    events.sort()
    head = _Node(-1, False)
    prev = head
    calls: dict[int, _Node] = {}
    for _, _, i, is_call in events:
        node = _Node(i, is_call)
        if is_call:
            calls[i] = node
        else:
            calls[i].match = node
        node.prev = prev
        prev.next = node
        prev = node

    state = model.init()
    linearized = 0
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Node, Hashable]] = []
    entry = head.next
    while head.next is not None:
        assert entry is not None
        if entry.is_call:
            ok, new_state = model.step(state, ops[entry.op])
            if ok:
                new_lin = linearized | (1 << entry.op)
                key = (new_lin, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state, linearized = new_state, new_lin
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # Reached the return of an operation we could not linearize: backtrack.
            if not stack:
                return False
            top, state = stack.pop()
            linearized &= ~(1 << top.op)
            _unlift(top)
            entry = top.next
    return True


def check_history(
    ops: Sequence[Operation], model: Model, partition: Callable[[Operation], Any] | None = None
) -> CheckResult:
    """Check a whole history, split into independent partitions by `partition`."""
    groups: dict[Any, list[Operation]] = defaultdict(list)
    for o in ops:
        groups[partition(o) if partition else None].append(o)
    for key in sorted(groups, key=repr):
        if not check_operations(groups[key], model):
            return CheckResult(False, tuple(groups[key]), key)
    return CheckResult(True)


class KVModel:
    """Sequential spec of one key: put(v) -> True, get() -> v, cas(old, new) -> bool.

    Inputs are tuples: ("put", key, v), ("get", key), ("cas", key, old, new).
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        kind = op.input[0]
        if kind == "put":
            return (op.pending or op.output is True), op.input[2]
        if kind == "get":
            return (op.pending or op.output == state), state
        if kind == "cas":
            if state == op.input[2]:
                return (op.pending or op.output is True), op.input[3]
            return (op.pending or op.output is False), state
        raise ValueError(f"unknown op {kind!r}")


def kv_key(op: Operation) -> Any:
    return op.input[1]
