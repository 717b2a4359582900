"""Fixtures for backup tests: a bootstrapped custody state with real verification shares,
its Raft snapshot file (written by the real FileStorage), an in-memory slot holding
node-1's shares, and three recovery officers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from consensus.filestore import FileStorage
from consensus.messages import ConfState, HardState, Snapshot, SnapshotMeta
from consensus.session import ReplicatedMachine
from node.backup import officers
from node.backup.snapshot import SnapshotFile, read_newest
from node.hsm.memory import MemorySlot
from node.hsm.slot import ShareId
from node.state import CreateKey, RecordDkgResult
from node.state.approvals import genesis_of
from shares import group as g
from tests.node.state.conftest import CLUSTER, MEMBERS, World, bootstrap_command

GENESIS = genesis_of(World.signed(bootstrap_command()))
NODE, INDEX = "node-1", 1


def seeded(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


@dataclass
class Env:
    world: World
    shares: dict[tuple[str, int], list[bytes]]  # (key, version) -> share of member i at [i-1]
    snapshot: SnapshotFile
    slot: MemorySlot
    officers: list[officers.OfficerKey]
    tmp: Path

    @property
    def publics(self) -> list[officers.Officer]:
        return [o.officer for o in self.officers]


def real_key(world: World, key_id: str, rng) -> list[bytes]:
    """Create key `key_id` through the state's flow with real per-member shares."""
    rid = world.rid("ck")
    world.ok(CreateKey(rid, "ops", key_id, "sign", "p1"))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    shares = [bytes(g.scalar_from_int(int.from_bytes(rng(31), "big") + 1)) for _ in MEMBERS]
    vshares = tuple(bytes(g.base_mult(s)) for s in shares)
    gpk = bytes(g.base_mult(g.scalar_from_int(7)))
    for m in MEMBERS:
        world.ok(RecordDkgResult(world.rid("d"), m, world.ref(rid), gpk, vshares))
    world.advance()
    return shares


def snapshot_file(world: World, directory: Path, index: int = 40, term: int = 3) -> SnapshotFile:
    data = ReplicatedMachine(world.m).snapshot()
    directory.mkdir(parents=True, exist_ok=True)
    st = FileStorage(directory)
    try:
        snap = Snapshot(SnapshotMeta(index, term, ConfState(frozenset({1, 2, 3}))), data)
        st.save(HardState(term, 1, index), [], snap)
    finally:
        st.close()
    found = read_newest(directory)
    assert found is not None
    return found


@pytest.fixture
def env(tmp_path: Path) -> Env:
    rng = seeded(1)
    world = World().setup()
    shares = {("k1", 1): real_key(world, "k1", rng), ("k2", 1): real_key(world, "k2", rng)}
    snap = snapshot_file(world, tmp_path / "source-data")
    slot = MemorySlot(CLUSTER, rng=seeded(2))
    for (key_id, version), values in shares.items():
        slot.store_share(ShareId(key_id, version, INDEX, 0), values[INDEX - 1])
    keys = [officers.generate(n) for n in ("alice-o", "bob-o", "carol-o")]
    return Env(world, shares, snap, slot, keys, tmp_path)
