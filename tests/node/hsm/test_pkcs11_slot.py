"""Behaviour specific to real PKCS#11 tokens (SoftHSM2): key attributes, erasure,
errors, crash safety, and isolation between nodes' tokens."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from node.hsm import aad
from node.hsm.errors import (
    MechanismUnsupportedError,
    ModuleConfigConflictError,
    ModuleFailureError,
    ModuleLoadError,
    PinIncorrectError,
    PinLockedError,
    PinSourceError,
    ShareIntegrityError,
    ShareNotFoundError,
    SlotNotProvisionedError,
    TokenFullError,
    TokenNotFoundError,
)
from node.hsm.pkcs11_slot import (
    IDENTITY_LABEL,
    KEK_LABEL,
    Pkcs11Slot,
    SlotConfig,
    find_module,
    load_module,
    translate,
)
from node.hsm.slot import ShareId

from .conftest import Fleet, Node
from .helpers import put_blob, raw_data_labels, read_blob

CHILD = Path(__file__).with_name("child_slot.py")


def _config_json(cfg: SlotConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg))


def _run_child(node: Node, *args: str, module_path: str | None = None) -> Any:
    cfg = dataclasses.replace(node.config(), module_path=module_path or node.env.module_path)
    return subprocess.run(
        [sys.executable, str(CHILD), args[0], _config_json(cfg), *args[1:]],
        capture_output=True,
        text=True,
        env=node.env.child_env(),
        timeout=60,
        check=False,
    )


def _object_files(node: Node) -> int:
    return sum(1 for _ in Path(node.env.tokendir).rglob("*.object"))


# ------------------------------------------------------------------ key objects


def test_kek_is_sensitive_and_not_extractable(slot_a: Pkcs11Slot) -> None:
    kek = next(
        slot_a._session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: KEK_LABEL}
        )
    )
    assert kek[Attribute.SENSITIVE] is True
    assert kek[Attribute.EXTRACTABLE] is False
    assert kek[Attribute.VALUE_LEN] == 32
    assert kek[Attribute.TOKEN] is True
    with pytest.raises(p11e.AttributeSensitive):
        kek[Attribute.VALUE]


def test_identity_key_in_token(slot_a: Pkcs11Slot, fleet: Fleet) -> None:
    priv = next(
        slot_a._session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: IDENTITY_LABEL}
        )
    )
    assert priv[Attribute.SENSITIVE] is True
    assert priv[Attribute.EXTRACTABLE] is False
    assert slot_a.identity_public_key() == fleet.a.identity
    sig = slot_a.sign(b"m")
    Ed25519PublicKey.from_public_bytes(fleet.a.identity).verify(sig, b"m")


def test_share_is_private_token_data_object(slot_a: Pkcs11Slot, sid: ShareId) -> None:
    slot_a.store_share(sid, secrets.token_bytes(32))
    obj = next(slot_a._find_data(aad.share_label(sid)))
    assert obj[Attribute.CLASS] == ObjectClass.DATA
    assert obj[Attribute.TOKEN] is True
    assert obj[Attribute.PRIVATE] is True
    assert obj[Attribute.APPLICATION] == aad.APPLICATION


# --------------------------------------------------------------------- erasure


def test_destroyed_share_is_gone_from_token_storage(
    slot_a: Pkcs11Slot, fleet: Fleet, sid: ShareId
) -> None:
    before = _object_files(fleet.a)
    slot_a.store_share(sid, secrets.token_bytes(32))
    assert _object_files(fleet.a) == before + 1
    slot_a.destroy_share(sid)
    assert _object_files(fleet.a) == before
    assert aad.share_label(sid) not in raw_data_labels(slot_a)
    slot_a.close()
    with Pkcs11Slot.open(fleet.a.config()) as again:
        with pytest.raises(ShareNotFoundError):
            again.load_share(sid)
        assert sid not in again.list_shares()


# ---------------------------------------------------------------------- errors


def test_wrong_pin(fleet: Fleet, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pin"
    bad.write_text("not-the-pin\n")
    bad.chmod(0o600)
    with pytest.raises(PinIncorrectError):
        Pkcs11Slot.open(fleet.a.config(pin_file=str(bad)))


def test_missing_token(fleet: Fleet) -> None:
    cfg = dataclasses.replace(fleet.a.config(), token_label="no-such-node")
    with pytest.raises(TokenNotFoundError):
        Pkcs11Slot.open(cfg)


def test_bad_module_path(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(ModuleLoadError, match="not found"):
        Pkcs11Slot.open(fleet.a.config(module_path=str(tmp_path / "missing.so")))
    not_a_module = tmp_path / "fake.so"
    not_a_module.write_bytes(b"\x7fELF not really")
    with pytest.raises(ModuleLoadError, match="cannot load"):
        Pkcs11Slot.open(fleet.a.config(module_path=str(not_a_module)))


def test_pin_sources(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loose = tmp_path / "loose.pin"
    loose.write_text(fleet.a.pin)
    loose.chmod(0o644)
    with pytest.raises(PinSourceError, match="group/other"):
        Pkcs11Slot.open(fleet.a.config(pin_file=str(loose)))
    with pytest.raises(PinSourceError):
        Pkcs11Slot.open(fleet.a.config(pin_file=str(tmp_path / "absent.pin")))
    with pytest.raises(PinSourceError):
        Pkcs11Slot.open(fleet.a.config(pin_file=None, pin_env="HSM_TEST_PIN_UNSET"))
    with pytest.raises(PinSourceError, match="exactly one"):
        Pkcs11Slot.open(fleet.a.config(pin_env="HSM_TEST_PIN"))
    monkeypatch.setenv("HSM_TEST_PIN", fleet.a.pin)
    with Pkcs11Slot.open(fleet.a.config(pin_file=None, pin_env="HSM_TEST_PIN")) as slot:
        assert slot.identity_public_key() == fleet.a.identity


def test_error_messages_never_contain_the_pin(fleet: Fleet, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pin"
    bad.write_text("secret-wrong-pin")
    bad.chmod(0o600)
    with pytest.raises(PinIncorrectError) as info:
        Pkcs11Slot.open(fleet.a.config(pin_file=str(bad)))
    assert "secret-wrong-pin" not in str(info.value)
    assert fleet.a.pin not in str(info.value)


def test_second_conf_for_loaded_module_refused(fleet: Fleet, tmp_path: Path) -> None:
    with pytest.raises(ModuleConfigConflictError):
        load_module(fleet.a.env.module_path, str(tmp_path / "other.conf"))


def test_one_slot_per_token_per_process(slot_a: Pkcs11Slot, fleet: Fleet) -> None:
    with pytest.raises(ModuleConfigConflictError, match="already open"):
        Pkcs11Slot.open(fleet.a.config())
    assert slot_a.sign(b"still usable")


def test_unprovisioned_token(fleet: Fleet) -> None:
    with pytest.raises(SlotNotProvisionedError, match="provision"):
        Pkcs11Slot.open(fleet.bare.config())


def test_find_module_default() -> None:
    assert Path(find_module()).is_file()


# ------------------------------------------------------------ half-written state


def _failing_relabel(self: Pkcs11Slot, obj: object, label: str) -> None:
    raise p11e.FunctionFailed()


def test_failed_store_leaves_nothing(
    slot_a: Pkcs11Slot, sid: ShareId, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels_before = raw_data_labels(slot_a)
    monkeypatch.setattr(Pkcs11Slot, "_relabel", _failing_relabel)
    with pytest.raises(ModuleFailureError):
        slot_a.store_share(sid, secrets.token_bytes(32))
    assert raw_data_labels(slot_a) == labels_before
    assert not slot_a.has_share(sid)


def test_failed_replace_keeps_old_share(
    slot_a: Pkcs11Slot, sid: ShareId, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = secrets.token_bytes(32)
    slot_a.store_share(sid, old)
    labels_before = raw_data_labels(slot_a)
    monkeypatch.setattr(Pkcs11Slot, "_relabel", _failing_relabel)
    with pytest.raises(ModuleFailureError):
        slot_a.store_share(sid, secrets.token_bytes(32), replace=True)
    assert raw_data_labels(slot_a) == labels_before
    assert slot_a.load_share(sid) == old


def _labels_on_token(node: Node) -> list[str]:
    lib = load_module(node.env.module_path, node.env.conf_path)
    session = lib.get_token(token_label=node.label).open(user_pin=node.pin)
    try:
        return sorted(
            o[Attribute.LABEL] for o in session.get_objects({Attribute.CLASS: ObjectClass.DATA})
        )
    finally:
        session.close()


@pytest.mark.parametrize("mode", ["crash-store", "crash-replace"])
def test_crash_mid_store_is_swept_on_open(fleet: Fleet, mode: str) -> None:
    proc = _run_child(fleet.spare, mode)
    assert proc.returncode == 3, proc.stderr
    leftovers = _labels_on_token(fleet.spare)
    assert any(lb.startswith(aad.TEMP_LABEL_PREFIX) for lb in leftovers)
    crash_id = ShareId("crash-key", 1, 1, 0)
    with Pkcs11Slot.open(fleet.spare.config()) as slot:
        labels = raw_data_labels(slot)
        assert not any(
            lb.startswith((aad.TEMP_LABEL_PREFIX, aad.OLD_LABEL_PREFIX)) for lb in labels
        )
        if mode == "crash-replace":
            assert slot.load_share(crash_id) == b"\x01" * 32  # the old share survives
            slot.destroy_share(crash_id)
        else:
            assert not slot.has_share(crash_id)
        assert slot.list_shares() == []


# ------------------------------------------------------------------- isolation


def test_node_a_cannot_open_node_b_blob(
    slot_a: Pkcs11Slot, slot_b: Pkcs11Slot, sid: ShareId
) -> None:
    share = secrets.token_bytes(32)
    slot_b.store_share(sid, share)
    assert not slot_a.has_share(sid)
    assert slot_a.list_shares() == []
    put_blob(slot_a, sid, read_blob(slot_b, sid))
    with pytest.raises(ShareIntegrityError):
        slot_a.load_share(sid)
    assert slot_b.load_share(sid) == share
    assert slot_a.identity_public_key() != slot_b.identity_public_key()


def test_tokens_in_separate_token_dirs(fleet: Fleet, slot_a: Pkcs11Slot, sid: ShareId) -> None:
    """Node C lives in another token directory, loaded through its own module instance."""
    with Pkcs11Slot.open(fleet.c.config()) as slot_c:
        slot_c.store_share(sid, secrets.token_bytes(32))
        assert not slot_a.has_share(sid)
        put_blob(slot_a, sid, read_blob(slot_c, sid))
        with pytest.raises(ShareIntegrityError):
            slot_a.load_share(sid)
        slot_c.destroy_share(sid)
    lib_c = load_module(fleet.c.env.module_path, fleet.c.env.conf_path)
    labels_c = {s.get_token().label for s in lib_c.get_slots(token_present=True)}
    assert "node-c" in labels_c
    assert "node-a" not in labels_c


def test_each_node_in_its_own_process(fleet: Fleet) -> None:
    """Production shape: one process per node, the system module, its own SOFTHSM2_CONF."""
    system_module = find_module()
    out_a = _run_child(fleet.a, "node", json.dumps("node-c"), module_path=system_module)
    out_c = _run_child(fleet.c, "node", json.dumps("node-a"), module_path=system_module)
    assert out_a.returncode == 0, out_a.stderr
    assert out_c.returncode == 0, out_c.stderr
    a, c = json.loads(out_a.stdout), json.loads(out_c.stdout)
    assert a["conf"] == fleet.a.env.conf_path and c["conf"] == fleet.c.env.conf_path
    assert "node-a" in a["labels"] and "node-c" not in a["labels"]
    assert "node-c" in c["labels"] and "node-a" not in c["labels"]
    assert a["foreign"] == "not-found" and c["foreign"] == "not-found"
    assert a["identity"] == fleet.a.identity.hex()
    assert c["identity"] == fleet.c.identity.hex()
    Ed25519PublicKey.from_public_bytes(fleet.c.identity).verify(
        bytes.fromhex(c["signature"]), b"isolation"
    )
    # Same share, same id, two tokens: different ciphertexts under different KEKs.
    assert a["blob"] != c["blob"]
    assert os.environ.get("SOFTHSM2_CONF") not in (fleet.a.env.conf_path, fleet.c.env.conf_path)


def test_object_destroyed_behind_the_slot_is_not_served(slot_a: Pkcs11Slot, sid: ShareId) -> None:
    slot_a.store_share(sid, secrets.token_bytes(32))
    assert slot_a.load_share(sid)  # handle now cached
    for obj in list(slot_a._find_data(aad.share_label(sid))):
        obj.destroy()
    assert not slot_a.has_share(sid)
    with pytest.raises(ShareNotFoundError):
        slot_a.load_share(sid)
    with pytest.raises(ShareNotFoundError):
        slot_a.destroy_share(sid)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (p11e.PinIncorrect(), PinIncorrectError),
        (p11e.PinLocked(), PinLockedError),
        (p11e.NoSuchToken(), TokenNotFoundError),
        (p11e.TokenNotPresent(), TokenNotFoundError),
        (p11e.DeviceMemory(), TokenFullError),
        (p11e.MechanismInvalid(), MechanismUnsupportedError),
        (p11e.DeviceError(), ModuleFailureError),
        (p11e.GeneralError(), ModuleFailureError),
    ],
)
def test_translate_maps_module_errors(exc: p11e.PKCS11Error, expected: type) -> None:
    err = translate(exc, "op")
    assert type(err) is expected
    assert str(err).startswith("op:")


def test_concurrent_use_from_threads(slot_a: Pkcs11Slot, sid: ShareId) -> None:
    """Callers run slot operations in worker threads (asyncio.to_thread); they serialise."""
    shares = {i: secrets.token_bytes(32) for i in range(1, 33)}

    def work(i: int) -> bool:
        share_id = dataclasses.replace(sid, index=i)
        slot_a.store_share(share_id, shares[i])
        sig = slot_a.sign(shares[i])
        Ed25519PublicKey.from_public_bytes(slot_a.identity_public_key()).verify(sig, shares[i])
        return slot_a.load_share(share_id) == shares[i]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, shares))
    assert len(slot_a.list_shares(sid.key_id)) == len(shares)


def test_sync_failure_is_reported(fleet: Fleet, sid: ShareId, tmp_path: Path) -> None:
    """A store whose durability cannot be established says so (the object is in the token)."""
    with Pkcs11Slot.open(fleet.a.config(sync_dir=str(tmp_path / "absent"))) as slot:
        with pytest.raises(ModuleFailureError, match="sync_dir"):
            slot.store_share(sid, secrets.token_bytes(32))
        assert slot.has_share(sid)
        with pytest.raises(ModuleFailureError, match="sync_dir"):
            slot.destroy_share(sid)
        assert not slot.has_share(sid)


def test_env_slot_config_syncs_token_dir(fleet: Fleet) -> None:
    assert fleet.a.config().sync_dir == fleet.a.env.tokendir


def test_module_symlink_resolves_to_the_same_instance(fleet: Fleet, tmp_path: Path) -> None:
    link = tmp_path / "module-link.so"
    link.symlink_to(fleet.a.env.module_path)
    assert find_module(str(link)) == os.path.realpath(fleet.a.env.module_path)
    same = load_module(str(link), fleet.a.env.conf_path)
    assert same is load_module(fleet.a.env.module_path, fleet.a.env.conf_path)
