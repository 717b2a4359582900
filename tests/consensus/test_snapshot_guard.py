"""The runner's snapshot guard: real drivers, cores and MemoryStorage over an
in-process network; only the wire is simulated.

- with a guard, snapshots are taken exactly at multiples of `snapshot_every`,
  identical on every member;
- a leader whose guard cannot seal yet does not send the snapshot; a follower
  whose guard refuses never installs it (counted), and catches up once it
  accepts; the core and storage only ever see raw snapshot bytes;
- end to end with the custody state machine: members sign each deterministic
  snapshot's state hash (`PostCheckpoint`), and a lagging member installs the
  snapshot only once `threshold` members' signatures certify it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consensus.driver import Driver, DriverConfig, NotLeader, ProposalDropped, SnapshotRefused
from consensus.memstore import MemoryStorage
from tests.consensus.transports import LoopNet

CFG = DriverConfig(tick_interval=0.01, election_ticks=10, snapshot_every=10, keep_entries=2)
PREFIX = b"SEALED:"


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def apply(self, command: bytes) -> bytes:
        with contextlib.suppress(ValueError):
            self.total += int(command)
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return msgpack.packb(self.total)

    def restore(self, data: bytes) -> None:
        self.total = msgpack.unpackb(data)


class FakeGuard:
    """Seals by a prefix naming the index; switchable refusal and sealing."""

    def __init__(self) -> None:
        self.can_seal = True
        self.accept = True
        self.taken: list[tuple[int, bytes]] = []

    def seal(self, index: int, data: bytes) -> bytes | None:
        return PREFIX + index.to_bytes(8, "big") + data if self.can_seal else None

    def open(self, index: int, data: bytes) -> bytes:
        head = PREFIX + index.to_bytes(8, "big")
        if not self.accept or not data.startswith(head):
            raise SnapshotRefused(f"snapshot at {index} is not certified")
        return data[len(head) :]

    def on_snapshot(self, index: int, data: bytes) -> None:
        self.taken.append((index, data))


class Net(LoopNet):
    """The in-process wire, with helpers to find the leader and propose."""

    async def leader(self, timeout: float = 10.0) -> Driver:
        async with asyncio.timeout(timeout):
            while True:
                for d in self.nodes.values():
                    if d.id not in self.cut and d.status().role == "leader":
                        return d
                await asyncio.sleep(0.01)

    async def propose(self, command: bytes) -> bytes:
        async with asyncio.timeout(20):
            while True:
                try:
                    return await (await self.leader()).propose(command, timeout=2)
                except (NotLeader, ProposalDropped, TimeoutError):
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for d in self.nodes.values():
            await d.stop()


async def start(net: Net, machines: dict, guards: dict, cfg: DriverConfig = CFG) -> None:
    for i in machines:
        d = Driver(
            i, MemoryStorage(), machines[i], voters=tuple(machines), config=cfg,
            transport=net.endpoint(i), seed=i, snapshot_guard=guards.get(i),
        )  # fmt: skip
        net.nodes[i] = d
        await d.start()


async def until(cond, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def counters():
    net = Net()
    machines = {i: Counter() for i in (1, 2, 3)}
    guards = {i: FakeGuard() for i in (1, 2, 3)}
    await start(net, machines, guards)
    try:
        yield net, machines, guards
    finally:
        await net.stop()


async def lag_one_follower(net: Net, n: int = 40) -> Driver:
    """Cut a follower off and write until the leader compacted what it lacks."""
    leader = await net.leader()
    victim = next(d for d in net.nodes.values() if d is not leader)
    net.cut.add(victim.id)
    for _ in range(n):
        await net.propose(b"1")
    assert leader.storage.first_index() > victim.applied_index + 1  # it needs the snapshot
    return victim


async def test_snapshots_at_multiples_of_snapshot_every_identical_everywhere(counters):
    net, _, guards = counters
    for _ in range(35):
        await net.propose(b"2")
    leader = await net.leader()
    await until(lambda: all(d.applied_index >= leader.applied_index for d in net.nodes.values()))
    for i, d in net.nodes.items():
        taken = [index for index, _ in guards[i].taken]
        assert taken == list(range(10, d.applied_index + 1, 10)), (i, taken)
        snap = d.storage.snapshot()
        assert snap.meta.index == taken[-1] and d.status().snapshot_index == taken[-1]
        assert snap.meta.conf.voters == frozenset({1, 2, 3})
        assert not snap.data.startswith(PREFIX)  # storage holds raw bytes
    first = dict(guards[1].taken)
    for i in (2, 3):
        assert dict(guards[i].taken) == first  # same state at the same index on every member


async def test_a_refusing_follower_never_installs_then_catches_up(counters):
    net, machines, guards = counters
    victim = await lag_one_follower(net)
    before = machines[victim.id].total
    guards[victim.id].accept = False
    net.cut.clear()
    await until(lambda: victim.stats["refused_SnapshotRefused"] >= 2)
    assert victim.applied_index < CFG.snapshot_every and machines[victim.id].total == before
    assert victim.storage.snapshot().is_empty and victim.stats["snapshots_opened"] == 0
    guards[victim.id].accept = True  # a certified snapshot now gets in
    leader = await net.leader()
    await until(lambda: victim.applied_index >= leader.applied_index)
    assert machines[victim.id].total == machines[leader.id].total == 40
    assert victim.stats["snapshots_opened"] >= 1
    assert victim.storage.snapshot().data == leader.storage.snapshot().data  # raw, not sealed


async def test_a_leader_that_cannot_seal_does_not_send_the_snapshot(counters):
    net, machines, guards = counters
    for g in guards.values():
        g.can_seal = False
    victim = await lag_one_follower(net)
    leader = await net.leader()
    net.cut.clear()
    await until(lambda: leader.stats["snapshot_unsealed"] >= 2)
    assert victim.stats["snapshots_opened"] == 0 and victim.stats["refused_SnapshotRefused"] == 0
    assert machines[victim.id].total < 40
    for g in guards.values():
        g.can_seal = True
    await until(lambda: victim.applied_index >= leader.applied_index)
    assert machines[victim.id].total == 40 and leader.stats["snapshots_sealed"] >= 1


async def test_without_a_guard_nothing_changes():
    net = Net()
    machines = {i: Counter() for i in (1, 2, 3)}
    await start(net, machines, {})
    try:
        victim = await lag_one_follower(net, 30)
        net.cut.clear()
        leader = await net.leader()
        await until(lambda: victim.applied_index >= leader.applied_index)
        assert machines[victim.id].total == 30
        assert leader.stats["snapshots_sealed"] == 0 and victim.stats["snapshots_opened"] == 0
    finally:
        await net.stop()


# --- end to end with the custody state machine ------------------------------------


def _key(name: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(b"guard-test:" + name.encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _pub(name: str) -> bytes:
    return _key(name).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


async def test_custody_members_certify_snapshots_and_a_lagging_member_installs_one():
    from node.state import (
        Bootstrap,
        Machine,
        MemberSpec,
        PostCheckpoint,
        PrincipalSpec,
        SnapshotGuard,
        decode_outcome,
        encode_command,
        sign_checkpoint,
        sign_command,
    )
    from node.state.approvals import genesis_of

    members = ("node-1", "node-2", "node-3")
    boot = Bootstrap(
        "boot", "ops", "guard-cluster", 2,
        tuple(MemberSpec(m, i + 1, _pub(m)) for i, m in enumerate(members)),
        (PrincipalSpec("ops", "operator", _pub("ops")),
         PrincipalSpec("alice", "approver", _pub("alice")),
         PrincipalSpec("bob", "approver", _pub("bob"))),
        ("alice", "bob"), 2, 2,
    )  # fmt: skip
    boot = sign_command(_key("ops"), boot, "guard-cluster")
    genesis = genesis_of(boot)
    net = Net()
    machines = {i: Machine(genesis=genesis) for i in (1, 2, 3)}
    tasks: set[asyncio.Task] = set()
    posted: list[tuple[int, int]] = []

    def signer(i: int):
        def on_checkpoint(index: int, hash_: bytes) -> None:
            if i in net.cut:
                return  # a cut-off member cannot reach the leader anyway
            sig = sign_checkpoint(_key(f"node-{i}"), genesis, index, hash_)
            cmd = PostCheckpoint(f"checkpoint-{index}", f"node-{i}", index, hash_, sig)
            posted.append((i, index))
            task = asyncio.get_running_loop().create_task(net.propose(encode_command(cmd)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return on_checkpoint

    guards = {i: SnapshotGuard(machines[i], on_checkpoint=signer(i)) for i in machines}
    await start(net, machines, guards)
    try:
        assert decode_outcome(await net.propose(encode_command(boot))).ok
        victim = await lag_one_follower(net, 45)
        leader = await net.leader()
        await until(lambda: not tasks)  # the other two members' checkpoints are in the log
        assert leader.machine.app.state.checkpoints
        before = machines[victim.id].snapshot()
        net.cut.clear()
        await until(lambda: victim.applied_index >= leader.applied_index)
        assert victim.stats["snapshots_opened"] >= 1
        assert machines[victim.id].snapshot() != before
        await until(lambda: machines[victim.id].snapshot() == machines[leader.id].snapshot())
        assert {i for i, _ in posted} >= {leader.id}
    finally:
        for t in list(tasks):
            t.cancel()
        await net.stop()
