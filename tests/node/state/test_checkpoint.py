"""Snapshot authentication (issue 9 item 3): members' checkpoints, sealing and opening.

A follower installs a snapshot only when `threshold` members it knows signed its state
hash at that index; a forged snapshot (an approver's key replaced, any byte changed)
signed by fewer is refused and the follower's state is unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import struct

import msgpack
import pytest

from node.state import (
    Machine,
    PostCheckpoint,
    Reason,
    RemoveMember,
    SetThreshold,
    SnapshotGuard,
    SnapshotRefused,
    Verifier,
    open_snapshot,
    seal_snapshot,
    sign_checkpoint,
)
from node.state.checkpoint import SEAL_MAGIC, wrap_snapshot
from node.state.errors import DecodeError
from node.state.snapshot import encode_state, state_hash

INDEX = 100


def post(world, member: str, index: int, hash_: bytes, *, signer: str | None = None, rid=None):
    sig = sign_checkpoint(world.private_key(signer or member), world.m.state.genesis, index, hash_)
    return world.do(PostCheckpoint(rid or f"checkpoint-{index}", member, index, hash_, sig))


def certify(world, data: bytes, index: int = INDEX, members=("node-1", "node-2")) -> None:
    for m in members:
        assert post(world, m, index, state_hash(data, index)).ok


def follower(world) -> Machine:
    """A member that lags behind: it knows the cluster (same members, keys, threshold)."""
    return Machine.from_snapshot(world.m.snapshot(), genesis=world.m.genesis)


def verifier(m: Machine) -> Verifier:
    return Verifier.of_state(m.state, m.genesis)


def test_a_certified_snapshot_is_installed(ready):
    w = ready
    f = follower(w)
    w.active_key()  # the follower misses this: it will get it by snapshot
    data = w.m.snapshot()
    assert seal_snapshot(w.m.state, INDEX, data) is None  # nobody signed it yet
    certify(w, data, members=("node-1",))
    assert seal_snapshot(w.m.state, INDEX, data) is None  # 1 of t = 2
    certify(w, data, members=("node-3",))
    sealed = seal_snapshot(w.m.state, INDEX, data)  # later state: it holds the checkpoints
    assert sealed is not None and sealed.endswith(data)
    raw = open_snapshot(verifier(f), INDEX, sealed)
    assert raw == data
    f.restore(raw)
    assert f.snapshot() == data and f.active_version("k1") == 1


def test_forged_snapshots_signed_by_fewer_than_t_are_refused(ready):
    """Issue 9 item 3: a malicious leader (with t − 1 = 1 colluding member) replaces an
    approver's key; any changed byte; a genuine certificate moved onto other bytes."""
    w = ready
    f = follower(w)
    before = f.snapshot()
    forged_state = copy.deepcopy(w.m.state)
    forged_state.principals["alice"].public_key = w.public_key("mallory")
    forged = encode_state(forged_state)
    Machine(genesis=w.m.genesis).restore(forged)  # restore alone would take it
    certify(w, forged, members=("node-1",))  # the one malicious member signs the forgery
    assert seal_snapshot(w.m.state, INDEX, forged) is None
    one = [(n, c.signature) for n, cs in w.m.state.checkpoints.items() for c in cs]
    with pytest.raises(SnapshotRefused, match="certified by 1 members, 2 required"):
        open_snapshot(verifier(f), INDEX, wrap_snapshot(INDEX, one, forged))
    # A genuinely certified snapshot with one byte changed, or its certificate moved:
    data = w.m.snapshot()
    certify(w, data, index=INDEX + 1, members=("node-2", "node-3"))
    sealed = seal_snapshot(w.m.state, INDEX + 1, data)
    assert sealed is not None
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    moved = sealed[: len(sealed) - len(data)] + forged
    for bad in (flipped, moved):
        with pytest.raises(SnapshotRefused):
            open_snapshot(verifier(f), INDEX + 1, bad)
    with pytest.raises(SnapshotRefused):  # sent as the snapshot at another index
        open_snapshot(verifier(f), INDEX, sealed)
    assert f.snapshot() == before  # the follower's state never changed


def test_signatures_that_do_not_count(ready):
    """Non-members, removed members, duplicates, another index, another cluster."""
    w = ready
    data = w.m.snapshot()
    h = state_hash(data, INDEX)
    genesis = w.m.state.genesis
    good = ("node-1", sign_checkpoint(w.private_key("node-1"), genesis, INDEX, h))
    other = state_hash(data, INDEX + 1)
    bad = {
        "non-member": ("node-7", sign_checkpoint(w.private_key("node-7"), genesis, INDEX, h)),
        "non-member key as member": (
            "node-2", sign_checkpoint(w.private_key("eve"), genesis, INDEX, h)
        ),
        "duplicate signer": good,
        "another index": (
            "node-2", sign_checkpoint(w.private_key("node-2"), genesis, INDEX + 1, other)
        ),
        "another hash": (
            "node-2", sign_checkpoint(w.private_key("node-2"), genesis, INDEX, bytes(64))
        ),
        "another cluster": (
            "node-2", sign_checkpoint(w.private_key("node-2"), b"\x01" * 64, INDEX, h)
        ),
    }  # fmt: skip
    v = verifier(w.m)
    for why, sig in bad.items():
        with pytest.raises(SnapshotRefused, match="certified by 1 members"):
            open_snapshot(v, INDEX, wrap_snapshot(INDEX, [good, sig], data))
        assert why
    ok = ("node-2", sign_checkpoint(w.private_key("node-2"), genesis, INDEX, h))
    assert open_snapshot(v, INDEX, wrap_snapshot(INDEX, [good, ok], data)) == data
    # A removed member's signature no longer counts for a receiver that knows the removal.
    w.govern(RemoveMember(w.rid("g"), "ops", "node-3"))
    removed = ("node-3", sign_checkpoint(w.private_key("node-3"), genesis, INDEX, h))
    with pytest.raises(SnapshotRefused, match="certified by 1 members"):
        open_snapshot(verifier(w.m), INDEX, wrap_snapshot(INDEX, [good, removed], data))


def test_the_receivers_own_threshold_counts(ready):
    w = ready
    w.govern(SetThreshold(w.rid("g"), "ops", 3))
    data = w.m.snapshot()
    h = state_hash(data, INDEX)
    sigs = [
        (n, sign_checkpoint(w.private_key(n), w.m.state.genesis, INDEX, h))
        for n in ("node-1", "node-2")
    ]
    with pytest.raises(SnapshotRefused, match="2 members, 3 required"):
        open_snapshot(verifier(w.m), INDEX, wrap_snapshot(INDEX, sigs, data))
    certify(w, data)
    assert seal_snapshot(w.m.state, INDEX, data) is None  # the leader needs 3 too


def _header(raw) -> bytes:
    body = msgpack.packb(raw, use_bin_type=True)
    return SEAL_MAGIC + struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "sealed",
    [
        b"",
        b"raw snapshot bytes",
        SEAL_MAGIC,
        SEAL_MAGIC + struct.pack(">I", 10) + b"\x90",  # header longer than the bytes
        SEAL_MAGIC + struct.pack(">I", 1 << 20) + b"\x00" * 64,  # header over the bound
        _header({"v": 1}),
        _header([2, INDEX, []]),
        _header([True, INDEX, []]),
        _header([1, INDEX + 1, []]),
        _header([1, INDEX, [["node-1", bytes(64)]] * 16]),
        _header([1, INDEX, [["node-1"]]]),
        _header([1, INDEX, [["alice", bytes(64)]]]),
        _header([1, INDEX, [["node-1", bytes(63)]]]),
        _header([1, INDEX, [["node-1", "x" * 64]]]),
        _header([1, INDEX, []]) + b"data",  # well-formed, but nobody signed
    ],
)
def test_malformed_wrappers_are_refused(ready, sealed):
    with pytest.raises(SnapshotRefused):
        open_snapshot(verifier(ready.m), INDEX, sealed)


def test_checkpoint_command(ready):
    w = ready
    h = state_hash(w.m.snapshot(), INDEX)
    out = post(w, "node-1", INDEX, h)
    assert out.ok and out.detail == f"index {INDEX}: 1/2 signatures agree"
    assert post(w, "node-1", INDEX, h).ok  # the same command again: exactly-once
    w.rejects(lambda: post(w, "node-2", INDEX, h, signer="node-1"), Reason.BAD_SIGNATURE)
    w.rejects(lambda: post(w, "alice", INDEX, h), Reason.UNAUTHORIZED)
    w.rejects(lambda: post(w, "node-2", INDEX, h, rid="other-id"), Reason.INVALID_ARGUMENT)
    assert post(w, "node-2", INDEX, h).ok  # that rejection was not remembered
    # A second hash for the same index (equivocation) reuses the id checkpoint-<index>.
    w.rejects(lambda: post(w, "node-1", INDEX, bytes(64)), Reason.REQUEST_ID_CONFLICT)
    for i in range(1, 6):  # only the newest four are kept, per member
        assert post(w, "node-1", INDEX + i, h).ok
    assert [c.index for c in w.m.state.checkpoints["node-1"]] == [102, 103, 104, 105]
    w.rejects(lambda: post(w, "node-1", INDEX - 1, h), Reason.INVALID_ARGUMENT)  # backwards
    # A far-future index only pushes out the poster's own checkpoints.
    assert post(w, "node-3", 10**15, h).ok
    assert [c.index for c in w.m.state.checkpoints["node-2"]] == [INDEX]
    # A removed member's checkpoints go, and it can post none.
    w.govern(RemoveMember(w.rid("g"), "ops", "node-3"))
    assert "node-3" not in w.m.state.checkpoints
    w.rejects(lambda: post(w, "node-3", 10**15 + 1, h), Reason.UNKNOWN_AUTHOR)


def test_conflicting_hashes_are_kept_apart_and_audited_as_a_fork(ready):
    w = ready
    data = w.m.snapshot()
    assert post(w, "node-1", INDEX, state_hash(data, INDEX)).ok
    out = post(w, "node-2", INDEX, state_hash(data + b"x", INDEX))
    assert out.ok and out.detail.startswith(f"FORK at index {INDEX}") and "node-1" in out.detail
    assert w.m.state.audit[-1].outcome == "ok!fork"
    assert seal_snapshot(w.m.state, INDEX, data) is None  # neither hash has t signatures
    assert post(w, "node-3", INDEX, state_hash(data, INDEX)).code == "ok"
    assert w.m.state.audit[-1].outcome == "ok!fork"
    assert seal_snapshot(w.m.state, INDEX, data) is not None


def test_checkpoints_survive_snapshots_and_restore_checks_them(ready):
    w = ready
    certify(w, w.m.snapshot())
    assert Machine.from_snapshot(w.m.snapshot(), genesis=w.m.genesis).snapshot() == w.m.snapshot()
    c = w.m.state.checkpoints["node-1"][0]
    broken = {
        "non-member": {**w.m.state.checkpoints, "node-9": (c,)},
        "too many": {"node-1": tuple(dataclasses.replace(c, index=i) for i in range(1, 6))},
        "unordered": {"node-1": (dataclasses.replace(c, index=5), dataclasses.replace(c, index=4))},
        "empty": {"node-1": ()},
        "short hash": {"node-1": (dataclasses.replace(c, state_hash=b"x"),)},
    }
    for why, table in broken.items():
        st = copy.deepcopy(w.m.state)
        st.checkpoints = table
        with pytest.raises(DecodeError, match="checkpoint"):
            Machine(genesis=w.m.genesis).restore(encode_state(st))
        assert why


def test_guard(ready):
    w = ready
    hashes = []
    guard = SnapshotGuard(w.m, on_checkpoint=lambda i, h: hashes.append((i, h)))
    data = w.m.snapshot()
    guard.on_snapshot(INDEX, data)
    assert hashes == [(INDEX, state_hash(data, INDEX))]
    assert guard.seal(INDEX, data) is None
    certify(w, data)
    sealed = guard.seal(INDEX, data)
    assert sealed is not None and guard.open(INDEX, sealed) == data
    # A member whose state is still empty needs the bootstrap as its anchor.
    fresh = Machine(genesis=w.m.genesis)
    with pytest.raises(SnapshotRefused, match="empty"):
        SnapshotGuard(fresh).open(INDEX, sealed)
    boot = w.signed(w.bootstrap_command())
    assert SnapshotGuard(fresh, bootstrap=boot).open(INDEX, sealed) == data
    other = w.signed(dataclasses.replace(w.bootstrap_command(), threshold=3))
    with pytest.raises(SnapshotRefused, match="genesis"):
        SnapshotGuard(fresh, bootstrap=other).open(INDEX, sealed)
    with pytest.raises(SnapshotRefused, match="genesis"):
        SnapshotGuard(Machine()).open(INDEX, sealed)
    assert isinstance(SnapshotRefused("x"), ValueError)  # the runner drops and counts it
