"""The simulated application: a tiny key-value store with exactly-once writes.

Commands carry (client, seq); the store remembers each client's last seq and
result, so a retried write commits at most once. The snapshot includes that
session table, as a real state machine's must.
"""

from __future__ import annotations

import json
from typing import Any


def encode_command(client: int, seq: int, op: str, key: str, *args: Any) -> bytes:
    return json.dumps({"c": client, "s": seq, "o": op, "k": key, "a": list(args)}).encode()


class KVStore:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sessions: dict[int, tuple[int, Any]] = {}

    def apply(self, raw: bytes) -> tuple[int, int, Any] | None:
        """Apply one command; returns (client, seq, result), or None for a stale duplicate."""
        cmd = json.loads(raw)
        client, seq = int(cmd["c"]), int(cmd["s"])
        last = self.sessions.get(client)
        if last is not None and last[0] >= seq:
            return (client, seq, last[1]) if last[0] == seq else None
        op, key, args = cmd["o"], cmd["k"], cmd["a"]
        if op == "put":
            self.data[key] = args[0]
            result: Any = True
        elif op == "cas":
            result = self.data.get(key) == args[0]
            if result:
                self.data[key] = args[1]
        else:
            raise ValueError(f"unknown op {op!r}")
        self.sessions[client] = (seq, result)
        return client, seq, result

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def dump(self) -> bytes:
        return json.dumps(
            {"d": self.data, "s": [[c, s, r] for c, (s, r) in sorted(self.sessions.items())]},
            sort_keys=True,
        ).encode()

    @classmethod
    def load(cls, raw: bytes) -> KVStore:
        kv = cls()
        if raw:
            obj = json.loads(raw)
            kv.data = dict(obj["d"])
            kv.sessions = {int(c): (int(s), r) for c, s, r in obj["s"]}
        return kv
