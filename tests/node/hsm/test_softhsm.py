"""Token provisioning: private SoftHSM2 environments, PIN handling, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.hsm import softhsm
from node.hsm.errors import HsmError, InvalidInputError, PinSourceError
from node.hsm.slot import ShareId

from .conftest import CLUSTER, Fleet


def test_env_files_are_owner_only(tmp_path: Path) -> None:
    env = softhsm.create_env(tmp_path / "n")
    assert stat.S_IMODE(os.stat(env.conf_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(env.tokendir).st_mode) == 0o700
    assert f"directories.tokendir = {env.tokendir}" in Path(env.conf_path).read_text()
    pin_file = softhsm.write_pin_file(tmp_path / "p", "1234abcd")
    assert stat.S_IMODE(os.stat(pin_file).st_mode) == 0o600
    os.chmod(pin_file, 0o644)
    softhsm.write_pin_file(pin_file, "5678efgh")
    assert stat.S_IMODE(os.stat(pin_file).st_mode) == 0o600
    assert Path(pin_file).read_text() == "5678efgh\n"


def test_duplicate_label_refused(fleet: Fleet) -> None:
    with pytest.raises(HsmError, match="already exists"):
        softhsm.provision_token(
            fleet.a.env, "node-a", CLUSTER, user_pin="12345678", so_pin="87654321"
        )


@pytest.mark.parametrize("label", ["", "a/b", "x" * 33])
def test_bad_labels_refused(fleet: Fleet, label: str) -> None:
    with pytest.raises(InvalidInputError):
        softhsm.provision_token(fleet.a.env, label, CLUSTER, user_pin="12345678", so_pin="87654321")


def test_bad_pins_refused(fleet: Fleet) -> None:
    with pytest.raises(PinSourceError):
        softhsm.provision_token(fleet.a.env, "node-x", CLUSTER, user_pin="12", so_pin="87654321")
    with pytest.raises(PinSourceError):
        softhsm.provision_token(
            fleet.a.env, "node-x", CLUSTER, user_pin="1234\n5678", so_pin="87654321"
        )


def test_cli_provision_with_pin_files(tmp_path: Path) -> None:
    user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    pin = softhsm.write_pin_file(tmp_path / "user.pin", user_pin)
    so = softhsm.write_pin_file(tmp_path / "so.pin", so_pin)
    args = [sys.executable, "-m", "node.hsm.softhsm", "provision", "--dir", str(tmp_path / "n")]
    args += ["--label", "cli-node", "--cluster", "c1", "--pin-file", pin, "--so-pin-file", so]
    env = {**os.environ, "PYTHONPATH": str(Path(softhsm.__file__).resolve().parents[2])}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["token_label"] == "cli-node" and len(bytes.fromhex(out["identity_public_key"])) == 32
    assert user_pin not in proc.stdout + proc.stderr and so_pin not in proc.stdout + proc.stderr
    # Same label again in the same directory: refused with a clear error, exit code 2.
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    # A PIN file others can read is refused before anything is created.
    os.chmod(pin, 0o644)
    loose = subprocess.run(
        [a if a != "cli-node" else "cli-node2" for a in args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert loose.returncode == 2 and "PinSourceError" in loose.stderr


def test_verify_persisted_catches_a_silently_failed_write(tmp_path: Path) -> None:
    """SoftHSM2 reports success when its object file cannot be written; a fresh
    process does not see the share. `verify_persisted` is how a node finds out."""
    env = softhsm.create_env(tmp_path / "fsz")
    pin = secrets.token_hex(8)
    pin_file = softhsm.write_pin_file(tmp_path / "fsz.pin", pin)
    softhsm.provision_token(env, "fsz-node", CLUSTER, user_pin=pin, so_pin=secrets.token_hex(8))
    config = env.slot_config("fsz-node", CLUSTER, pin_file=pin_file)
    child = Path(__file__).with_name("child_slot.py")
    proc = subprocess.run(
        [sys.executable, str(child), "fsize-store", json.dumps(dataclasses.asdict(config))],
        capture_output=True,
        text=True,
        env=env.child_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    good, lost = ShareId("fsize-key", 1, 1, 0), ShareId("fsize-key", 1, 2, 0)
    # SoftHSM2 2.6.1 says "ok" and the storing process still sees the share;
    # a module that reports the failure instead is fine too.
    if result["store"] == "ok":
        assert result["visible_here"] is True
    assert softhsm.verify_persisted(config, [good, lost]) == [lost]
    assert softhsm.verify_persisted(config, [good]) == []


def test_pins_never_on_a_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(args: list[str], **kwargs: object) -> object:
        seen.append(list(args))
        return real_run(args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(softhsm.subprocess, "run", recording_run)
    user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    env = softhsm.create_env(tmp_path / "argv")
    pub = softhsm.provision_token(env, "argv-node", CLUSTER, user_pin=user_pin, so_pin=so_pin)
    assert len(pub) == 32 and seen
    assert all(user_pin not in arg and so_pin not in arg for args in seen for arg in args)
