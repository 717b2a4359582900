"""Fixtures: real SoftHSM2 tokens in private token directories, and the memory slot.

Tokens are provisioned once per session (SoftHSM2 scans its token directory
when the module is initialised, so they must exist before the in-process
module loads). Each environment uses a private copy of the module, so these
tests neither see nor disturb any other SoftHSM2 use in the same process.
Tests keep apart by using fresh key ids; every slot fixture destroys what it
stored.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.hsm import softhsm
from node.hsm.memory import MemorySlot
from node.hsm.pkcs11_slot import Pkcs11Slot, SlotConfig
from node.hsm.slot import ShareId

CLUSTER = "cluster-test"


@dataclass(frozen=True)
class Node:
    """A provisioned token: its environment, label, PIN file and identity key."""

    env: softhsm.SoftHsmEnv
    label: str
    pin: str
    pin_file: str
    identity: bytes

    def config(self, **kwargs: object) -> SlotConfig:
        kwargs.setdefault("pin_file", self.pin_file)
        kwargs.setdefault("cluster_id", CLUSTER)
        return self.env.slot_config(self.label, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Fleet:
    """Tokens of the session: A and B share one token dir, C has its own (and module copy)."""

    a: Node
    b: Node
    c: Node
    spare: Node
    bare: Node


def _provision(env: softhsm.SoftHsmEnv, base: Path, label: str, keys: bool = True) -> Node:
    pin = secrets.token_hex(8)
    pin_file = softhsm.write_pin_file(base / f"{label}.pin", pin)
    pub = softhsm.provision_token(
        env, label, CLUSTER, user_pin=pin, so_pin=secrets.token_hex(8), create_keys=keys
    )
    return Node(env, label, pin, pin_file, pub)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    base1 = tmp_path_factory.mktemp("hsm-env1")
    env1 = softhsm.isolated_module_copy(softhsm.create_env(base1), base1)
    base2 = tmp_path_factory.mktemp("hsm-env2")
    env2 = softhsm.isolated_module_copy(softhsm.create_env(base2), base2)
    return Fleet(
        a=_provision(env1, base1, "node-a"),
        b=_provision(env1, base1, "node-b"),
        c=_provision(env2, base2, "node-c"),
        spare=_provision(env1, base1, "node-spare"),
        bare=_provision(env1, base1, "node-bare", keys=False),
    )


def _wipe(slot: Pkcs11Slot | MemorySlot) -> None:
    if slot._closed:
        return
    for sid in slot.list_shares():
        slot.destroy_share(sid)


@pytest.fixture
def slot_a(fleet: Fleet) -> Iterator[Pkcs11Slot]:
    slot = Pkcs11Slot.open(fleet.a.config())
    yield slot
    _wipe(slot)
    slot.close()


@pytest.fixture
def slot_b(fleet: Fleet) -> Iterator[Pkcs11Slot]:
    slot = Pkcs11Slot.open(fleet.b.config())
    yield slot
    _wipe(slot)
    slot.close()


@pytest.fixture(params=["pkcs11", "memory"])
def any_slot(request: pytest.FixtureRequest, fleet: Fleet) -> Iterator[Pkcs11Slot | MemorySlot]:
    """The same protocol tests run against the real token and the in-memory slot."""
    if request.param == "pkcs11":
        slot: Pkcs11Slot | MemorySlot = Pkcs11Slot.open(fleet.a.config(max_shares=64))
    else:
        slot = MemorySlot(CLUSTER, max_shares=64)
    yield slot
    _wipe(slot)
    slot.close()


@pytest.fixture
def sid() -> ShareId:
    """A share id with a fresh key id, so tests never collide on a session token."""
    return ShareId(f"k-{uuid.uuid4().hex[:12]}", 1, 1, 0)
