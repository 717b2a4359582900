"""Clients of the simulated kv store and the history they leave behind.

Each client runs one operation at a time: put, get (a ReadIndex read) or
compare-and-set on a few shared keys. A timed-out write is retried with the
same (client, seq), which the store applies at most once; a history entry
spans from the first attempt to the response that finally arrived.
"""

from __future__ import annotations

import random
from typing import Any

from .kv import encode_command
from .linearizability import Operation


class Client:
    def __init__(self, cid: int, nodes: list[int]) -> None:
        self.id = cid
        self.seq = 0
        self.op: tuple[Any, ...] | None = None
        self.call = 0
        self.attempt = 0
        self.target = nodes[cid % len(nodes)]
        self.redirect: int | None = None
        self.seen: dict[str, Any] = {}

    def begin(self, rng: random.Random, keys: int, now: int) -> None:
        self.seq += 1
        key = f"k{rng.randrange(keys)}"
        r = rng.random()
        if r < 0.4:
            self.op = ("get", key)
        elif r < 0.75:
            self.op = ("put", key, self.id * 100_000 + self.seq)
        else:
            old = self.seen.get(key) if rng.random() < 0.8 else None
            self.op = ("cas", key, old, self.id * 100_000 + self.seq)
        self.call = now

    def command(self) -> bytes:
        assert self.op is not None
        return encode_command(self.id, self.seq, self.op[0], self.op[1], *self.op[2:])

    def finish(self, result: Any = None) -> None:
        self.op = None


class History:
    def __init__(self) -> None:
        self._clock = 0
        self.ops: list[Operation] = []
        self._open: dict[int, Client] = {}

    def tick(self) -> int:
        """Logical time: a strictly increasing counter of history events."""
        self._clock += 1
        return self._clock

    @property
    def completed(self) -> int:
        return len(self.ops)

    def record(self, client: Client, result: Any) -> None:
        assert client.op is not None
        self.ops.append(Operation(client.id, client.op, result, client.call, self.tick()))
        if client.op[0] == "get":
            client.seen[client.op[1]] = result
        elif client.op[0] == "put" or (client.op[0] == "cas" and result):
            client.seen[client.op[1]] = client.op[-1]

    def operations(self, clients: list[Client] | None = None) -> list[Operation]:
        return list(self.ops)
