"""Transports on loopback for tests: a `Node` that collects what it receives,
a free port, and a polling `until` with a failure guard (not a threshold)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus import tls
from consensus.driver import Driver
from consensus.messages import Message, MsgType
from consensus.transport import Transport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(cond: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Node:
    """One transport whose received messages land in `inbox`."""

    def __init__(
        self, node_id: int, addrs: dict[int, tuple[str, int]], pki: Path, **kw: Any
    ) -> None:
        self.inbox: list[Message] = []
        server, client = tls.contexts_from_dir(pki, node_id)
        self.t = Transport(
            node_id,
            addrs[node_id],
            {i: a for i, a in addrs.items() if i != node_id},
            server,
            client,
            self.inbox.append,
            rng=random.Random(node_id),
            backoff_base=0.01,
            backoff_max=0.2,
            **kw,
        )

    def snapshots(self) -> list[Message]:
        return [m for m in self.inbox if m.type is MsgType.SNAPSHOT]


class LoopNet:
    """An in-process network for drivers over MemoryStorage, with partitions.

    Only the wire is simulated: the drivers, the core and the storage are the
    real ones. Used where a test must control exactly who hears whom.
    """

    def __init__(self) -> None:
        self.nodes: dict[int, Driver] = {}
        self.cut: set[int] = set()  # nodes isolated from everyone

    def endpoint(self, node_id: int) -> _Endpoint:
        return _Endpoint(self, node_id)


class _Endpoint:
    def __init__(self, net: LoopNet, node_id: int) -> None:
        self.net, self.id = net, node_id

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def send(self, msg) -> None:
        if self.id in self.net.cut or msg.to in self.net.cut:
            return
        dest = self.net.nodes.get(msg.to)
        if dest is not None:
            asyncio.get_running_loop().call_soon(dest.deliver, msg)
