"""A node whose disk fails must fail-stop, not linger as a zombie.

Before: on a full disk the storage refused further writes, but only the runner's
task ended; the ticker, transport and HTTP server went on, `/status` kept saying
"leader", every request got 504 and peer messages piled up. Now the node stops
serving, says why, exits non-zero for a supervisor, and refuses to restart
while the disk is still full. The disk here is a real, small tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from consensus.driver import Driver, DriverConfig, NodeStopped
from consensus.filestore import FileStorage
from consensus.messages import Message, MsgType
from tests.consensus.kvcluster import ELECTION_S, ProcCluster

MiB = 1 << 20


@contextlib.contextmanager
def small_disk(where: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `where` (needs root, as CI has)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700", "tmpfs", str(where)],
        check=True,
        capture_output=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def fill_to(disk: Path, leave: int) -> Path:
    """Write a filler file so that only about `leave` bytes stay free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


class Echo:
    def apply(self, command: bytes) -> bytes:
        return command[:8]

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


async def test_a_runner_whose_disk_fills_fail_stops(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 16) as disk:
        storage = FileStorage(disk / "data", segment_bytes=1 * MiB, min_free_bytes=2 * MiB)
        fill_to(disk, 3 * MiB)
        node = Driver(1, storage, Echo(), voters=[1], config=DriverConfig(tick_interval=0.01))
        await node.start()
        try:
            async with asyncio.timeout(30):
                while node.status().role != "leader":
                    await asyncio.sleep(0.01)
                with pytest.raises(NodeStopped, match="node failed"):
                    for _ in range(1000):  # about 64 MiB: far more than the disk holds
                        await node.propose(os.urandom(64 * 1024))
                err = await node.wait_failed()
            assert isinstance(err, OSError)
            st = node.status()
            assert st.role == "failed" and st.leader == 0 and "No space left" in (st.error or "")
            # Nothing more is taken: requests fail at once, peer messages are dropped,
            # the clock stopped.
            with pytest.raises(NodeStopped):
                await node.propose(b"more")
            with pytest.raises(NodeStopped):
                await node.read_index()
            node.deliver(Message(MsgType.HEARTBEAT, to=1, frm=2, term=99))
            assert not node._inbox
            _, running = await asyncio.wait(node._tasks, timeout=5)
            assert not running  # the ticker and the loop are gone
        finally:
            await node.stop()
        # A restart while the disk is still full is refused with a clear message.
        from consensus.filestore import StorageFull

        with pytest.raises(StorageFull, match="bytes free"):
            FileStorage(disk / "data", segment_bytes=1 * MiB, min_free_bytes=2 * MiB)


async def test_the_inbox_is_bounded_in_bytes_too() -> None:
    from consensus.memstore import MemoryStorage
    from consensus.messages import Entry

    cfg = DriverConfig(max_inbox_bytes=1 * MiB)
    node = Driver(1, MemoryStorage.bootstrap([1, 2, 3]), Echo(), voters=[], config=cfg)
    big = Message(
        MsgType.APPEND, to=1, frm=2, term=1, entries=(Entry(1, 4, data=b"x" * (300 * 1024)),),
        index=3, log_term=1,
    )
    for _ in range(10):
        node.deliver(big)
    assert len(node._inbox) == 3 and node.stats["inbox_dropped"] == 7


async def _status(s: aiohttp.ClientSession, c: ProcCluster, i: int) -> dict | None:
    return await c.status(s, i)


async def test_a_kv_node_on_a_full_disk_exits_non_zero_and_restarts_once_freed(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", 32) as disk:
        c = ProcCluster(tmp_path)
        c.data[3] = disk / "data3"
        filler = fill_to(disk, 10 * MiB)  # the node starts (needs 8 MiB), then fills it
        try:
            for i in (1, 2, 3):
                c.start(i)
            acked: dict[str, str] = {}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                leader = await c.leader(s, budget=20 * ELECTION_S + 10)
                target = 1 if leader == 3 else leader
                value = "v" * (60 * 1024)
                n = 0
                async with asyncio.timeout(120):
                    while c.procs[3].poll() is None:
                        n += 1
                        key = f"k{n % 8}"
                        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                            async with s.put(c.url(target, f"/kv/{key}"), data=value + str(n)) as r:
                                if r.status == 200:
                                    acked[key] = value + str(n)
                                elif r.status in (503, 504):
                                    target = 1 + target % 2  # node 3 may have been the leader
                        assert n < 2000, "node 3 never failed"
                    code = c.procs.pop(3).wait(timeout=30)
                log3 = (tmp_path / "node3.log").read_text(errors="replace")
                assert code != 0
                assert "failed and stopped serving" in log3 and "No space left" in log3
                # The other two go on serving.
                leader = await c.leader(s, budget=20 * ELECTION_S + 10)
                assert leader in (1, 2)
                async with s.put(c.url(leader, "/kv/after"), data="yes") as r:
                    assert r.status == 200
                acked["after"] = "yes"
                # A restart on the still-full disk is refused, loudly, with exit 1.
                c.start(3)
                code = c.procs.pop(3).wait(timeout=60)
                log3 = (tmp_path / "node3.log").read_text(errors="replace")
                assert code == 1 and "cannot start" in log3 and "bytes free" in log3
                # Freed, it starts, catches up, and serves every acknowledged write.
                filler.unlink()
                c.start(3)
                async with asyncio.timeout(60):
                    while True:
                        st3 = await _status(s, c, 3)
                        st = await _status(s, c, leader)
                        if st3 and st and st3["applied"] >= st["commit"] and st3["leader"]:
                            break
                        await asyncio.sleep(0.1)
                # A PUT answered 503/504 or cut off may still have been applied, so a
                # key may hold a newer value than the last acknowledged one, never older.
                for key, want in acked.items():
                    async with s.get(c.url(3, f"/kv/{key}")) as r:
                        got = await r.text()
                        assert r.status == 200, key
                        if key == "after":
                            assert got == want
                        else:
                            assert int(got.lstrip("v")) >= int(want.lstrip("v")), key
        finally:
            c.close()
