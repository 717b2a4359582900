"""Provision SoftHSM2 tokens for nodes: own conf file, own token directory, own PINs.

Production shape: one node = one process = one `SOFTHSM2_CONF` naming that
node's token directory. SoftHSM2 reads the conf (and scans the token
directory) when the module is initialised, and python-pkcs11 initialises a
module path once per process, so a token is always created in a *child
process* with its own environment: the caller's process can already have the
module loaded with another conf, and C_Initialize cannot run twice.

The child initialises the token through plain PKCS#11 (C_InitToken,
C_InitPIN via ctypes: python-pkcs11 0.10 has no C_InitToken), then creates
the slot KEK and identity key through `Pkcs11Slot.provision_keys`. PINs reach
the child on its stdin, never on a command line, and are never logged.

Command line (for the demo and drills; PINs from files or environment):

    python -m node.hsm.softhsm provision --dir DIR --label LABEL --cluster ID \
        --pin-file FILE --so-pin-file FILE      (or --pin-env VAR --so-pin-env VAR)
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.hsm.errors import (
    HsmError,
    InvalidInputError,
    ModuleFailureError,
    PinSourceError,
    ShareIntegrityError,
    ShareNotFoundError,
)
from node.hsm.pkcs11_slot import (
    MAX_PIN_LEN,
    MAX_TOKEN_LABEL_LEN,
    SlotConfig,
    find_module,
    read_pin,
)
from node.hsm.slot import ShareId, check_identifier

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CKF_TOKEN_INITIALIZED = 0x400
_CKF_RW_SERIAL = 0x2 | 0x4
_CKU_SO = 0
_PROVISION_TIMEOUT_S = 60


@dataclass(frozen=True)
class SoftHsmEnv:
    """A private SoftHSM2 configuration: one conf file and its token directory."""

    conf_path: str
    tokendir: str
    module_path: str

    def slot_config(self, token_label: str, cluster_id: str, **kwargs: Any) -> SlotConfig:
        """A `SlotConfig` for a token of this environment (kwargs override fields)."""
        fields: dict[str, Any] = {
            "module_path": self.module_path,
            "softhsm_conf": self.conf_path,
            "sync_dir": self.tokendir,
            **kwargs,
        }
        return SlotConfig(token_label=token_label, cluster_id=cluster_id, **fields)

    def child_env(self) -> dict[str, str]:
        """Environment for a child process that should use this SoftHSM2 config."""
        env = dict(os.environ)
        env["SOFTHSM2_CONF"] = self.conf_path
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        return env


def create_env(base_dir: str | os.PathLike[str], module_path: str | None = None) -> SoftHsmEnv:
    """Create (or reuse) `base_dir/softhsm2.conf` and `base_dir/tokens/`, owner-only."""
    base = Path(base_dir).resolve()
    tokendir = base / "tokens"
    tokendir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(tokendir, 0o700)
    conf = base / "softhsm2.conf"
    text = (
        f"directories.tokendir = {tokendir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
        "slots.mechanisms = ALL\n"
        "library.reset_on_fork = false\n"
    )
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return SoftHsmEnv(str(conf), str(tokendir), find_module(module_path))


def isolated_module_copy(env: SoftHsmEnv, dest_dir: str | os.PathLike[str]) -> SoftHsmEnv:
    """`env` with a private copy of the module file, for several token dirs in ONE process.

    The dynamic loader shares a library by file identity, so a copy at another
    path is an independent SoftHSM2 instance that reads `SOFTHSM2_CONF` at its
    own initialisation. Tests use this to keep their tokens apart from any
    other SoftHSM2 use in the same test process; production runs one node per
    process and does not need it.
    """
    dest = Path(dest_dir).resolve() / "libsofthsm2-private.so"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(env.module_path, dest)
    return SoftHsmEnv(env.conf_path, env.tokendir, str(dest))


def write_pin_file(path: str | os.PathLike[str], pin: str) -> str:
    """Write a PIN file readable by its owner only; returns its path."""
    _check_pin(pin)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode on open(): tighten it
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(pin + "\n")
    return str(path)


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not 4 <= len(pin) <= MAX_PIN_LEN or "\n" in pin:
        raise PinSourceError("PIN must be 4..255 characters without newlines")


def provision_token(
    env: SoftHsmEnv,
    token_label: str,
    cluster_id: str,
    *,
    user_pin: str,
    so_pin: str,
    create_keys: bool = True,
) -> bytes:
    """Create and initialise a token in `env`, with slot KEK and identity key.

    Runs in a child process (see module docstring). Returns the identity
    public key (raw 32 bytes; empty if `create_keys` is false, which leaves a
    bare token, for tests). Refuses a label that already exists in `env`.
    """
    check_identifier(token_label, "token_label")
    if len(token_label.encode()) > MAX_TOKEN_LABEL_LEN:
        raise InvalidInputError("token_label must be at most 32 bytes")
    check_identifier(cluster_id, "cluster_id")
    _check_pin(user_pin)
    _check_pin(so_pin)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.hsm.softhsm",
            "_child-provision",
            "--label",
            token_label,
            "--cluster",
            cluster_id,
            "--module",
            env.module_path,
            *([] if create_keys else ["--no-keys"]),
        ],
        input=f"{so_pin}\n{user_pin}\n",
        capture_output=True,
        text=True,
        env=env.child_env(),
        timeout=_PROVISION_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HsmError(f"provisioning token {token_label!r} failed: {last}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return bytes.fromhex(result["identity_public_key"])


def verify_persisted(
    config: SlotConfig, share_ids: list[ShareId], *, env: dict[str, str] | None = None
) -> list[ShareId]:
    """The shares that a *fresh process* cannot load from the token (empty list: all good).

    A module instance answers from its own memory, so a store can look fine
    in the process that made it while the token's storage never got it
    (SoftHSM2's file store does not report failed writes: seen with a file-size
    limit, the store succeeds and the share is gone for every other process).
    Call this after storing shares that must survive (e.g. after a DKG) and
    treat any id returned as not stored. Costs one process start (~0.3 s).
    """
    payload = json.dumps(
        {
            "config": dataclasses.asdict(config),
            "ids": [[s.key_id, s.version, s.index, s.generation] for s in share_ids],
        }
    )
    child_env = dict(env if env is not None else os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PROJECT_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-m", "node.hsm.softhsm", "_child-verify"],
        input=payload,
        capture_output=True,
        text=True,
        env=child_env,
        timeout=_PROVISION_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HsmError(f"verifying shares in a fresh process failed: {last}")
    missing = json.loads(proc.stdout.strip().splitlines()[-1])["missing"]
    return [ShareId(*m) for m in missing]


# --------------------------------------------------------------- child process


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial", ctypes.c_char * 16),
        ("flags", ctypes.c_ulong),
        ("rest", ctypes.c_ubyte * 256),  # remaining fields; we never read them
    ]


def _ck(rv: int, what: str) -> None:
    if rv != 0:
        raise ModuleFailureError(f"{what} failed: CKR 0x{rv:x}")


def _init_token_ctypes(module_path: str, label: str, so_pin: bytes, user_pin: bytes) -> None:
    """C_InitToken on the first uninitialised slot, then C_InitPIN as SO. Child only."""
    lib = ctypes.CDLL(module_path)
    ulong = ctypes.c_ulong
    _ck(lib.C_Initialize(None), "C_Initialize")
    try:
        count = ulong(0)
        _ck(lib.C_GetSlotList(ctypes.c_ubyte(0), None, ctypes.byref(count)), "C_GetSlotList")
        slots = (ulong * max(count.value, 1))()
        _ck(lib.C_GetSlotList(ctypes.c_ubyte(0), slots, ctypes.byref(count)), "C_GetSlotList")
        free = None
        for slot in slots[: count.value]:
            info = _TokenInfo()
            if lib.C_GetTokenInfo(ulong(slot), ctypes.byref(info)) != 0:
                continue
            if info.flags & _CKF_TOKEN_INITIALIZED:
                if info.label.decode(errors="replace").rstrip() == label:
                    raise InvalidInputError(f"a token labelled {label!r} already exists")
            elif free is None:
                free = slot
        if free is None:
            raise ModuleFailureError("no uninitialised token slot is available")
        padded = label.encode().ljust(32, b" ")
        _ck(lib.C_InitToken(ulong(free), so_pin, ulong(len(so_pin)), padded), "C_InitToken")
        session = ulong(0)
        _ck(
            lib.C_OpenSession(
                ulong(free), ulong(_CKF_RW_SERIAL), None, None, ctypes.byref(session)
            ),
            "C_OpenSession",
        )
        try:
            _ck(lib.C_Login(session, ulong(_CKU_SO), so_pin, ulong(len(so_pin))), "C_Login(SO)")
            _ck(lib.C_InitPIN(session, user_pin, ulong(len(user_pin))), "C_InitPIN")
            _ck(lib.C_Logout(session), "C_Logout")
        finally:
            lib.C_CloseSession(session)
    finally:
        lib.C_Finalize(None)


def _child_provision(label: str, cluster_id: str, module_path: str, create_keys: bool) -> int:
    from node.hsm.pkcs11_slot import Pkcs11Slot

    so_pin = sys.stdin.readline().rstrip("\n")
    user_pin = sys.stdin.readline().rstrip("\n")
    _check_pin(so_pin)
    _check_pin(user_pin)
    _init_token_ctypes(module_path, label, so_pin.encode(), user_pin.encode())
    if not create_keys:
        print(json.dumps({"token_label": label, "identity_public_key": ""}))
        return 0
    config = SlotConfig(token_label=label, cluster_id=cluster_id, module_path=module_path)
    pub = Pkcs11Slot.provision_keys(config, pin=user_pin)
    print(json.dumps({"token_label": label, "identity_public_key": pub.hex()}))
    return 0


def _child_verify() -> int:
    from node.hsm.aad import zero
    from node.hsm.pkcs11_slot import Pkcs11Slot

    request = json.loads(sys.stdin.read(1 << 20))
    config = SlotConfig(**request["config"])
    missing = []
    with Pkcs11Slot.open(config, sweep=False) as slot:
        for key_id, version, index, generation in request["ids"]:
            sid = ShareId(key_id, version, index, generation)
            try:
                zero(slot.load_share(sid))
            except (ShareNotFoundError, ShareIntegrityError):
                missing.append([key_id, version, index, generation])
    print(json.dumps({"missing": missing}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.hsm.softhsm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    prov = sub.add_parser("provision", help="create a node's SoftHSM2 environment and token")
    prov.add_argument("--dir", required=True, help="directory for softhsm2.conf and tokens/")
    prov.add_argument("--label", required=True)
    prov.add_argument("--cluster", required=True)
    prov.add_argument("--module", default=None)
    prov.add_argument("--pin-file")
    prov.add_argument("--pin-env")
    prov.add_argument("--so-pin-file")
    prov.add_argument("--so-pin-env")
    child = sub.add_parser("_child-provision")
    child.add_argument("--label", required=True)
    child.add_argument("--cluster", required=True)
    child.add_argument("--module", required=True)
    child.add_argument("--no-keys", action="store_true")
    sub.add_parser("_child-verify")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "_child-verify":
            return _child_verify()
        if args.cmd == "_child-provision":
            return _child_provision(args.label, args.cluster, args.module, not args.no_keys)
        env = create_env(args.dir, args.module)
        pub = provision_token(
            env,
            args.label,
            args.cluster,
            user_pin=read_pin(args.pin_file, args.pin_env),
            so_pin=read_pin(args.so_pin_file, args.so_pin_env),
        )
        print(
            json.dumps(
                {"conf": env.conf_path, "token_label": args.label, "identity_public_key": pub.hex()}
            )
        )
        return 0
    except HsmError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
