"""ReadIndex bookkeeping on the leader (Raft thesis §6.4).

A read request records the commit index at arrival; it may be served once a
heartbeat round started after it is acknowledged by a majority, which proves
no newer leader existed at that moment. Requests are released in arrival order:
an acknowledgement of a later round confirms every earlier one too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadRequest:
    index: int
    frm: int  # who asked (the leader itself or a follower)
    ctx: bytes
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """Pending ReadIndex requests keyed by their (cluster-unique) context."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadRequest] = {}

    def add(self, index: int, ctx: bytes, frm: int) -> bool:
        if ctx in self._pending:
            return False
        self._pending[ctx] = ReadRequest(index, frm, ctx)
        return True

    def recv_ack(self, frm: int, ctx: bytes) -> set[int] | None:
        req = self._pending.get(ctx)
        if req is None:
            return None
        req.acks.add(frm)
        return req.acks

    def advance(self, ctx: bytes) -> list[ReadRequest]:
        """Remove and return every request up to and including `ctx`."""
        if ctx not in self._pending:
            return []
        out: list[ReadRequest] = []
        for key in list(self._pending):
            out.append(self._pending.pop(key))
            if key == ctx:
                break
        return out

    def last_pending_ctx(self) -> bytes:
        if not self._pending:
            return b""
        return next(reversed(self._pending))

    def __len__(self) -> int:
        return len(self._pending)
