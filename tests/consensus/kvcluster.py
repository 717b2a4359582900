"""Real kv processes for tests: `python -m consensus.examples.kv serve` nodes on
loopback with mTLS between them, started, killed and queried over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
TICK_MS = 50
ELECTION_TICKS = 10
ELECTION_S = TICK_MS * ELECTION_TICKS / 1000


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class ProcCluster:
    """Three kv nodes; `extra` arguments go to every `serve`, `data` overrides a
    node's data directory (e.g. one on a small tmpfs)."""

    def __init__(self, tmp: Path, extra: Sequence[str] = ()) -> None:
        self.tmp = tmp
        self.extra = list(extra)
        self.data: dict[int, Path] = {i: tmp / f"data{i}" for i in (1, 2, 3)}
        ports = free_ports(6)
        self.peers = ",".join(f"{i}=127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3))
        self.http = {i: f"127.0.0.1:{ports[2 + i]}" for i in (1, 2, 3)}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        subprocess.run(
            [sys.executable, "-m", "consensus.examples.kv", "certs", "--dir",
             str(tmp / "certs"), "--nodes", "3"],
            check=True, cwd=ROOT, capture_output=True,
        )

    def start(self, i: int) -> None:
        log = open(self.tmp / f"node{i}.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "consensus.examples.kv", "serve", "--id", str(i),
             "--dir", str(self.tmp / "certs"), "--data", str(self.data[i]),
             "--peers", self.peers, "--http", self.http[i],
             "--tick-ms", str(TICK_MS), "--election-ticks", str(ELECTION_TICKS),
             "--snapshot-every", "200", *self.extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def kill(self, i: int) -> None:
        p = self.procs.pop(i)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def url(self, i: int, path: str) -> str:
        return f"http://{self.http[i]}{path}"

    async def status(self, s: aiohttp.ClientSession, i: int) -> dict | None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with s.get(self.url(i, "/status")) as r:
                return await r.json()
        return None

    async def leader(self, s: aiohttp.ClientSession, budget: float) -> int:
        """The id of a leader that has advertised its HTTP address, within `budget` s."""
        async with asyncio.timeout(budget):
            while True:
                for i in self.procs:
                    st = await self.status(s, i)
                    if st and st["role"] == "leader" and str(i) in st["http"]:
                        return i
                await asyncio.sleep(0.05)


