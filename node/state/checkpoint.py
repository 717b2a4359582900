"""Snapshot authentication: member checkpoints, sealing and opening snapshots.

A leader can always send a follower a snapshot instead of log entries, and nothing
in a snapshot proves that the signed commands behind it produced it (an approver's
key or the membership could be rewritten). So a member installs a snapshot only
when at least `threshold` members signed its state hash at that log index:

- every member takes a snapshot at the same log indexes (the runner's deterministic
  snapshot points), computes `snapshot.state_hash(data, index)` over the runner's
  snapshot bytes and posts a `checkpoint` command: Ed25519 by its identity key over
  `checkpoint_message(genesis, index, state_hash)`. The machine verifies it strictly
  and keeps each member's newest `MAX_CHECKPOINTS`;
- a leader about to send the snapshot at `index` *seals* it (`seal_snapshot`): the
  bytes are wrapped with the stored signatures that match their hash, if at least
  `threshold` members signed it (else nothing is sent yet). A signature over index
  `i` can only be in the log after `i`, so sealing happens at send time, with the
  leader's later state;
- a follower *opens* it (`open_snapshot`) against its own current state, before
  installing anything: at least `threshold` distinct members that it knows (present,
  not removed) must have signed exactly (genesis, index, hash of these bytes);
  otherwise `SnapshotRefused`.

Why `threshold`: the threshold cryptography already assumes at most t − 1 malicious
members, so t valid signatures include at least one honest member, who signed the hash
it computed itself from the log.

Pure: no I/O, no clock. `SnapshotGuard` only holds a reference to the live `Machine`.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .commands import signing_bytes
from .digest import checkpoint_digest, genesis_digest
from .ed25519 import is_strict_public_key, is_strict_signature
from .errors import Reason, Rejected, StateError
from .model import State
from .names import is_member_name
from .snapshot import MAX_SNAPSHOT_BYTES, state_hash

SEAL_MAGIC = b"custody-sealed-snapshot/v1\n"
SEAL_VERSION = 1
MAX_SEAL_HEADER = 4096  # 15 signers x (name + 64-byte signature) fit with room to spare
MAX_SIGNERS = 15


class SnapshotRefused(StateError, ValueError):
    """A snapshot that is not certified by enough members (or a malformed wrapper).

    A `ValueError`, so that the runner drops the message and counts it
    (`refused_SnapshotRefused`) without knowing this package.
    """


def checkpoint_message(genesis: bytes, index: int, hash_: bytes) -> bytes:
    """The 64 bytes a member signs (e.g. in its HSM slot) for the snapshot at `index`."""
    return checkpoint_digest(genesis, index, hash_)


def sign_checkpoint(
    private_key: Ed25519PrivateKey, genesis: bytes, index: int, hash_: bytes
) -> bytes:
    """Member side with an in-process key (tools, tests)."""
    return private_key.sign(checkpoint_message(genesis, index, hash_))


def checkpoint_valid(
    public_key: bytes, genesis: bytes, index: int, hash_: bytes, signature: bytes
) -> bool:
    """Strict Ed25519 check of one checkpoint signature (canonical prime-order key and R,
    reduced S)."""
    if len(public_key) != 32 or len(signature) != 64 or len(hash_) != 64:
        return False
    if not is_strict_public_key(public_key) or not is_strict_signature(signature):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, checkpoint_message(genesis, index, hash_)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_checkpoint(
    public_key: bytes, genesis: bytes, index: int, hash_: bytes, signature: bytes
) -> None:
    """Raise `Rejected(BAD_SIGNATURE)` unless the checkpoint signature verifies."""
    if not checkpoint_valid(public_key, genesis, index, hash_, signature):
        raise Rejected(Reason.BAD_SIGNATURE, "checkpoint signature does not verify")


# ------------------------------------------------------------------ seal / open


@dataclass(frozen=True, slots=True)
class Verifier:
    """Whom a receiver trusts to certify a snapshot: its members' identity keys (present,
    not removed), the threshold, and the cluster's genesis."""

    genesis: bytes
    members: Mapping[str, bytes]  # name -> identity key
    threshold: int

    @classmethod
    def of_state(cls, state: State, genesis: bytes | None = None) -> Verifier:
        keys = {name: m.public_key for name, m in state.members.items()}
        return cls(genesis if genesis is not None else state.genesis, keys, state.threshold)

    @classmethod
    def of_bootstrap(cls, bootstrap: Any, genesis: bytes) -> Verifier:
        """For a member whose state is still empty (a new or rebuilt node): the members
        and threshold of the cluster's bootstrap command, which must match `genesis`."""
        if not hmac.compare_digest(genesis_digest(signing_bytes(bootstrap)), genesis):
            raise SnapshotRefused("the bootstrap anchor does not match this cluster's genesis")
        keys = {m.name: m.public_key for m in bootstrap.members}
        return cls(genesis, keys, bootstrap.threshold)


def signers_for(state: State, index: int, hash_: bytes) -> list[tuple[str, bytes]]:
    """Present members' stored checkpoint signatures over exactly (index, hash), by name."""
    found = []
    for name in sorted(state.checkpoints):
        if name not in state.members:
            continue
        for c in state.checkpoints[name]:
            if c.index == index and hmac.compare_digest(c.state_hash, hash_):
                found.append((name, c.signature))
    return found


def seal_snapshot(state: State, index: int, data: bytes) -> bytes | None:
    """Wrap the snapshot at `index` with the stored signatures over its hash, or None
    if fewer than `threshold` members signed it (not certifiable yet)."""
    if not state.bootstrapped or state.threshold < 1:
        return None
    sigs = signers_for(state, index, state_hash(data, index))
    if len(sigs) < state.threshold:
        return None
    return wrap_snapshot(index, sigs, data)


def wrap_snapshot(index: int, sigs: list[tuple[str, bytes]], data: bytes) -> bytes:
    """The sealed form: magic, u32 header length, msgpack header [v, index, [[member,
    signature], ...]], then the snapshot bytes unchanged."""
    header = msgpack.packb(
        [SEAL_VERSION, index, [[name, sig] for name, sig in sigs]], use_bin_type=True
    )
    return SEAL_MAGIC + struct.pack(">I", len(header)) + header + data


def _parse(index: int, sealed: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Bounded, schema-checked parse of a sealed snapshot: (signatures, data)."""
    if type(sealed) is not bytes or len(sealed) > MAX_SNAPSHOT_BYTES + MAX_SEAL_HEADER + 64:
        raise SnapshotRefused("sealed snapshot must be bytes of bounded size")
    n = len(SEAL_MAGIC)
    if not sealed.startswith(SEAL_MAGIC) or len(sealed) < n + 4:
        raise SnapshotRefused("not a sealed snapshot (no certificate)")
    (size,) = struct.unpack(">I", sealed[n : n + 4])
    if size > MAX_SEAL_HEADER or len(sealed) < n + 4 + size:
        raise SnapshotRefused("sealed snapshot header out of bounds")
    try:
        raw = msgpack.unpackb(
            sealed[n + 4 : n + 4 + size],
            raw=False,
            use_list=True,
            max_str_len=64,
            max_bin_len=64,
            max_array_len=MAX_SIGNERS + 1,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise SnapshotRefused(f"sealed snapshot header: {type(exc).__name__}") from None
    if type(raw) is not list or len(raw) != 3 or raw[0] != SEAL_VERSION or type(raw[0]) is not int:
        raise SnapshotRefused(f"sealed snapshot header is not a v{SEAL_VERSION} [v, index, sigs]")
    if type(raw[1]) is not int or raw[1] != index:
        raise SnapshotRefused(f"sealed for index {raw[1]!r}, sent as the snapshot at {index}")
    if type(raw[2]) is not list or len(raw[2]) > MAX_SIGNERS:
        raise SnapshotRefused("sealed snapshot: too many signatures")
    sigs = []
    for row in raw[2]:
        if (
            type(row) is not list
            or len(row) != 2
            or type(row[0]) is not str
            or not is_member_name(row[0])
            or type(row[1]) is not bytes
            or len(row[1]) != 64
        ):
            raise SnapshotRefused("sealed snapshot: a signature row is not [member, 64 bytes]")
        sigs.append((row[0], row[1]))
    return sigs, sealed[n + 4 + size :]


def open_snapshot(verifier: Verifier, index: int, sealed: bytes) -> bytes:
    """The snapshot bytes inside `sealed`, if at least `threshold` distinct members the
    receiver knows signed exactly (genesis, index, state hash of those bytes); else
    `SnapshotRefused`. Signatures by non-members, duplicates, and signatures over another
    index, hash or cluster do not count."""
    if verifier.threshold < 1 or not verifier.members:
        raise SnapshotRefused("this member knows no members yet: it cannot verify a snapshot")
    sigs, data = _parse(index, sealed)
    hash_ = state_hash(data, index)
    valid: set[str] = set()
    for name, sig in sigs:
        key = verifier.members.get(name)
        if key is None or name in valid:
            continue
        if checkpoint_valid(key, verifier.genesis, index, hash_, sig):
            valid.add(name)
    if len(valid) < verifier.threshold:
        raise SnapshotRefused(
            f"snapshot at {index} certified by {len(valid)} members, {verifier.threshold} required"
        )
    return data


# ------------------------------------------------------------------ the guard


class SnapshotGuard:
    """What the node runtime passes to the runner (`Driver(snapshot_guard=...)`).

    `seal` and `open` use the live machine's state as it is when they are called (the
    leader's later state; the follower's state before install). `on_snapshot` hands the
    state hash of each deterministic snapshot to `on_checkpoint(index, state_hash)`: the
    runtime signs `checkpoint_message(genesis, index, state_hash)` with its identity key
    and proposes a `PostCheckpoint`. `bootstrap`: the cluster's bootstrap command, used to
    verify snapshots while this member's own state is still empty.
    """

    def __init__(
        self,
        machine: Any,
        *,
        on_checkpoint: Callable[[int, bytes], None] | None = None,
        bootstrap: Any = None,
    ) -> None:
        self.machine = machine
        self.on_checkpoint = on_checkpoint
        self.bootstrap = bootstrap

    def seal(self, index: int, data: bytes) -> bytes | None:
        return seal_snapshot(self.machine.state, index, data)

    def open(self, index: int, data: bytes) -> bytes:
        state, genesis = self.machine.state, self.machine.genesis
        if genesis is None:
            raise SnapshotRefused("this member has no configured genesis")
        if state.bootstrapped:
            verifier = Verifier.of_state(state, genesis)
        elif self.bootstrap is not None:
            verifier = Verifier.of_bootstrap(self.bootstrap, genesis)
        else:
            raise SnapshotRefused("this member's state is empty and it has no bootstrap anchor")
        return open_snapshot(verifier, index, data)

    def on_snapshot(self, index: int, data: bytes) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(index, state_hash(data, index))
