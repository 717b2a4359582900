"""`Slot` on a PKCS#11 token through python-pkcs11 (SoftHSM2 here, any module by path).

Layout of a provisioned token:
- `custody/slot-kek`: AES-256 secret key, CKA_SENSITIVE, not CKA_EXTRACTABLE;
  every share is encrypted under it with CKM_AES_GCM inside the token.
- `custody/identity`: the node's Ed25519 key pair (CKM_EC_EDWARDS_KEY_PAIR_GEN,
  signing with CKM_EDDSA); the private half is sensitive and non-extractable.
- one private token CKO_DATA object per share, labelled
  `custody/share/v1/<key>/<version>/<index>/<generation>`, whose CKA_VALUE is
  `format || nonce || AES-GCM(share)` with AAD from `node.hsm.aad.share_aad`.

Writes are crash-safe: a share is created under a temporary label, read back,
and only then relabelled to its final label (a replaced share is first set
aside under an `old/` label and destroyed last). Opening the slot sweeps what
an interrupted store left behind.

Module loading: SoftHSM2 reads SOFTHSM2_CONF when the module is initialised,
and python-pkcs11 initialises a module path once per process. A node is a
process, so in production each node loads the module once with its own conf.
`load_module` records the conf each path was loaded with and refuses a second,
different one instead of silently using the wrong token directory.

Plaintext shares pass through host memory as Python `bytes` on their way into
and out of the token (python-pkcs11 takes and returns `bytes`); we zero the
`bytearray`s we own, but CPython cannot guarantee zeroization of those copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from node.hsm import aad
from node.hsm.errors import (
    BackupFormatError,
    HsmError,
    InvalidInputError,
    MechanismUnsupportedError,
    ModuleConfigConflictError,
    ModuleFailureError,
    ModuleLoadError,
    PinIncorrectError,
    PinLockedError,
    PinSourceError,
    ShareExistsError,
    ShareIntegrityError,
    ShareNotFoundError,
    SlotNotProvisionedError,
    TokenFullError,
    TokenNotFoundError,
)
from node.hsm.slot import (
    ShareId,
    check_backup_key,
    check_identifier,
    check_message,
    check_share_bytes,
)

KEK_LABEL = "custody/slot-kek"
IDENTITY_LABEL = "custody/identity"
MAX_PIN_LEN = 255
MAX_TOKEN_LABEL_LEN = 32

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# Ed25519 curve parameters: RFC 8410 OID first (what SoftHSM2 2.6 accepts), then
# the PKCS#11 3.0 printable-string form for modules that want the curve name.
_ED25519_PARAMS = (
    encode_named_curve_parameters("1.3.101.112"),
    b"\x13\x0cedwards25519",
)

# What a failed AES-GCM open looks like across modules (SoftHSM2 says GeneralError).
_GCM_OPEN_FAILURES = (
    p11e.GeneralError,
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.DataInvalid,
    p11e.FunctionFailed,
)


def find_module(explicit: str | None = None) -> str:
    """The PKCS#11 module path: `explicit`, else the first usual SoftHSM2 path that exists.

    Symlinks are resolved so one module file always has one path (python-pkcs11
    caches modules by path string, and a second C_Initialize would fail).
    """
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ModuleLoadError(f"PKCS#11 module not found at {explicit}")
        return os.path.realpath(explicit)
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return os.path.realpath(candidate)
    raise ModuleLoadError("no PKCS#11 module configured and SoftHSM2 not found in usual paths")


_module_lock = threading.Lock()
_module_confs: dict[str, str | None] = {}


def load_module(module_path: str | None = None, softhsm_conf: str | None = None) -> Any:
    """Load (once per process) a PKCS#11 module, with SOFTHSM2_CONF set to `softhsm_conf`.

    `softhsm_conf=None` keeps the process environment as it is (production: the
    node's launcher sets it). Loading a path again with another conf raises
    `ModuleConfigConflictError`: the module would keep reading the first one.
    """
    path = find_module(module_path)
    with _module_lock:
        conf = softhsm_conf if softhsm_conf is not None else os.environ.get("SOFTHSM2_CONF")
        if path in _module_confs and _module_confs[path] != conf:
            raise ModuleConfigConflictError(
                f"{path} is already initialised in this process with another SOFTHSM2_CONF; "
                "run each node's slot in its own process"
            )
        saved = os.environ.get("SOFTHSM2_CONF")
        if softhsm_conf is not None:
            os.environ["SOFTHSM2_CONF"] = softhsm_conf
        try:
            lib = pkcs11.lib(path)
        except p11e.PKCS11Error as exc:
            raise ModuleLoadError(f"cannot load PKCS#11 module {path}: {exc!r}") from exc
        finally:
            if softhsm_conf is not None:
                if saved is None:
                    os.environ.pop("SOFTHSM2_CONF", None)
                else:
                    os.environ["SOFTHSM2_CONF"] = saved
        _module_confs[path] = conf
        return lib


def read_pin(pin_file: str | None = None, pin_env: str | None = None) -> str:
    """Read the user PIN from a file (owner-only permissions) or an environment variable.

    Never from the command line; the PIN is never logged or put in an error message.
    """
    if (pin_file is None) == (pin_env is None):
        raise PinSourceError("configure exactly one of pin_file or pin_env")
    if pin_file is not None:
        try:
            st = os.stat(pin_file)
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise PinSourceError(f"PIN file {pin_file} must not be group/other accessible")
            with open(pin_file, encoding="utf-8") as fh:
                pin = fh.read(MAX_PIN_LEN + 2)
        except OSError as exc:
            raise PinSourceError(f"cannot read PIN file {pin_file}: {exc.strerror}") from exc
        pin = pin.rstrip("\r\n")
    else:
        assert pin_env is not None
        pin = os.environ.get(pin_env, "")
    if not 4 <= len(pin) <= MAX_PIN_LEN:
        raise PinSourceError("PIN is missing or not 4..255 characters")
    return pin


@dataclass(frozen=True)
class SlotConfig:
    """Where a node's slot lives and how to unlock it."""

    token_label: str
    cluster_id: str
    pin_file: str | None = None
    pin_env: str | None = None
    module_path: str | None = None
    softhsm_conf: str | None = None
    max_shares: int = 4096
    sync_dir: str | None = None
    """A directory on the filesystem holding the token's storage. If set, every
    store and destroy ends with syncfs() on it: SoftHSM2 writes its object files
    in place without fsync, so without this a power cut can lose a share the
    slot reported stored. Leave unset for a hardware HSM."""

    def __post_init__(self) -> None:
        check_identifier(self.token_label, "token_label")
        if len(self.token_label.encode()) > MAX_TOKEN_LABEL_LEN:
            raise InvalidInputError("token_label must be at most 32 bytes")
        check_identifier(self.cluster_id, "cluster_id")
        if not 1 <= self.max_shares <= 1_000_000:
            raise InvalidInputError("max_shares must be in [1, 1000000]")


def translate(exc: p11e.PKCS11Error, what: str) -> HsmError:
    """Map a python-pkcs11 exception to this package's distinct errors."""
    name = type(exc).__name__
    if isinstance(exc, p11e.PinIncorrect):
        return PinIncorrectError(f"{what}: the token rejected the PIN")
    if isinstance(exc, p11e.PinLocked):
        return PinLockedError(f"{what}: the user PIN is locked")
    if isinstance(exc, p11e.NoSuchToken | p11e.TokenNotPresent | p11e.TokenNotRecognised):
        return TokenNotFoundError(f"{what}: token not present ({name})")
    if isinstance(exc, p11e.DeviceMemory):
        return TokenFullError(f"{what}: the token is out of memory ({name})")
    if isinstance(exc, p11e.MechanismInvalid | p11e.FunctionNotSupported):
        return MechanismUnsupportedError(f"{what}: mechanism not supported ({name})")
    return ModuleFailureError(f"{what}: PKCS#11 module failure ({name})")


def _raw_ec_point(point: bytes) -> bytes:
    """Raw 32-byte Ed25519 key from CKA_EC_POINT (DER OCTET STRING or raw)."""
    if len(point) == 34 and point[0] == 0x04 and point[1] == 0x20:
        return bytes(point[2:])
    if len(point) == 32:
        return bytes(point)
    raise ModuleFailureError("identity public key has an unexpected CKA_EC_POINT encoding")


class Pkcs11Slot:
    """A node's HSM slot on one PKCS#11 token. Use `Pkcs11Slot.open(config)`."""

    def __init__(self, config: SlotConfig, session: Any, *, sweep: bool = True) -> None:
        self._config = config
        self._session = session
        self._lock = threading.RLock()
        self._closed = False
        # label -> object handle of final share objects, and how many there are.
        # A cache only: every use re-reads the handle's label from the token, so an
        # object destroyed or relabelled since (by this slot or another process)
        # is never used; a miss searches the token (it may hold an object another
        # process made). Stores use it too: a handle still carrying the label is an
        # existing share, found without a search. Destroy always searches.
        self._handles: dict[str, Any] = {}
        self._share_count = 0
        try:
            self._kek = self._find_one(ObjectClass.SECRET_KEY, KEK_LABEL)
            self._identity = self._find_one(ObjectClass.PRIVATE_KEY, IDENTITY_LABEL)
            pub = self._find_one(ObjectClass.PUBLIC_KEY, IDENTITY_LABEL)
            self._identity_pub = _raw_ec_point(pub[Attribute.EC_POINT])
            if self._kek[Attribute.EXTRACTABLE] or not self._kek[Attribute.SENSITIVE]:
                raise SlotNotProvisionedError("slot KEK is extractable or not sensitive")
            if sweep:
                self._sweep()
            else:
                self._index()
        except p11e.PKCS11Error as exc:
            raise translate(exc, "open slot") from exc

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, config: SlotConfig, *, sweep: bool = True) -> Pkcs11Slot:
        """Log in to the node's token and check it is provisioned.

        `sweep=False` is for read-only observers (another process checking the
        token while its node runs): it leaves in-flight temporaries alone.
        """
        session = _open_session(config)
        try:
            return cls(config, session, sweep=sweep)
        except BaseException:
            session.close()
            raise

    @classmethod
    def provision_keys(cls, config: SlotConfig, *, pin: str | None = None) -> bytes:
        """Create the slot KEK and identity key if missing; return the identity public key.

        Works on any module that supports CKM_AES_KEY_GEN and
        CKM_EC_EDWARDS_KEY_PAIR_GEN (SoftHSM2 >= 2.5 built with EdDSA does).
        `pin` overrides the config's PIN source (the provisioning child has it in hand).
        """
        session = _open_session(config, pin)
        try:
            if not _exists(session, ObjectClass.SECRET_KEY, KEK_LABEL):
                session.generate_key(
                    KeyType.AES,
                    256,
                    label=KEK_LABEL,
                    id=b"custody-kek",
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.PRIVATE: True,
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                        Attribute.DERIVE: False,
                    },
                )
            if not _exists(session, ObjectClass.PRIVATE_KEY, IDENTITY_LABEL):
                _generate_identity(session)
            pub = next(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: IDENTITY_LABEL}
                )
            )
            return _raw_ec_point(pub[Attribute.EC_POINT])
        except p11e.PKCS11Error as exc:
            raise translate(exc, "provision slot keys") from exc
        finally:
            session.close()

    # -------------------------------------------------------------- properties

    @property
    def cluster_id(self) -> str:
        return self._config.cluster_id

    @property
    def token_label(self) -> str:
        return self._config.token_label

    def identity_public_key(self) -> bytes:
        self._check_open()
        return self._identity_pub

    # -------------------------------------------------------------- operations

    def sign(self, message: bytes) -> bytes:
        msg = check_message(message)
        with self._lock:
            self._check_open()
            try:
                return bytes(self._identity.sign(msg, mechanism=Mechanism.EDDSA))
            except p11e.PKCS11Error as exc:
                raise translate(exc, "identity sign") from exc

    def store_share(
        self, share_id: ShareId, share: bytes | bytearray, *, replace: bool = False
    ) -> None:
        check_share_bytes(share)
        label = aad.share_label(share_id)
        with self._lock:
            self._check_open()
            try:
                # The cached handle if it still carries the label (read back from the
                # token), else a search of the token (O(objects) in SoftHSM2's file
                # store): whether the share exists is as exact as with a search. Not
                # looked for on a hit, as in load_share: a second object under the same
                # label, which only a store racing this one in another process (a race
                # a search does not close either) or a writer bypassing the slot makes.
                existing = self._lookup(label)
                if existing and not replace:
                    raise ShareExistsError(f"share {label} already exists")
                if not existing and self._share_count >= self._config.max_shares:
                    raise TokenFullError(
                        f"slot holds its maximum of {self._config.max_shares} shares"
                    )
                value = self._seal(share_id, share)
            except p11e.PKCS11Error as exc:
                raise translate(exc, "store share") from exc
            self._handles[label] = self._write(label, value, existing)
            if not existing:
                self._share_count += 1
            self._sync("store share")

    def load_share(self, share_id: ShareId) -> bytearray:
        label = aad.share_label(share_id)
        with self._lock:
            self._check_open()
            try:
                objs = self._lookup(label)
                if not objs:
                    raise ShareNotFoundError(f"no share {label}")
                if len(objs) > 1:
                    raise ShareIntegrityError(f"several objects carry the label {label}")
                value = bytes(objs[0][Attribute.VALUE])
            except p11e.PKCS11Error as exc:
                raise translate(exc, "load share") from exc
            nonce, ct = aad.unpack_share_value(value)
            try:
                pt = self._kek.decrypt(
                    ct,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=pkcs11.GCMParams(
                        nonce, aad.share_aad(self.cluster_id, share_id)
                    ),
                )
            except _GCM_OPEN_FAILURES as exc:
                raise ShareIntegrityError(
                    f"share object {label} does not open under this slot's KEK and binding"
                ) from exc
            except p11e.PKCS11Error as exc:
                raise translate(exc, "load share") from exc
            return bytearray(pt)

    def has_share(self, share_id: ShareId) -> bool:
        label = aad.share_label(share_id)
        with self._lock:
            self._check_open()
            try:
                return bool(self._lookup(label))
            except p11e.PKCS11Error as exc:
                raise translate(exc, "find share") from exc

    def list_shares(self, key_id: str | None = None) -> list[ShareId]:
        if key_id is not None:
            check_identifier(key_id, "key_id")
        with self._lock:
            self._check_open()
            try:
                ids = [aad.parse_share_label(label) for label in self._index()]
            except p11e.PKCS11Error as exc:
                raise translate(exc, "list shares") from exc
        return sorted(i for i in ids if i is not None and (key_id is None or i.key_id == key_id))

    def destroy_share(self, share_id: ShareId) -> None:
        label = aad.share_label(share_id)
        with self._lock:
            self._check_open()
            try:
                self._handles.pop(label, None)
                objs = list(self._find_data(label))
                if not objs:
                    raise ShareNotFoundError(f"no share {label}")
                for obj in objs:
                    obj.destroy()
                self._share_count = max(0, self._share_count - 1)
            except p11e.PKCS11Error as exc:
                raise translate(exc, "destroy share") from exc
            self._sync("destroy share")

    def destroy_shares(self, share_ids: Iterable[ShareId]) -> int:
        """One listing of the token instead of one search per share (SoftHSM2's search is
        linear): exact, every object under one of the labels goes, duplicates included."""
        labels = {aad.share_label(s) for s in share_ids}
        if not labels:
            return 0
        with self._lock:
            self._check_open()
            try:
                objs = self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: aad.APPLICATION}
                )
                doomed = [obj for obj in objs if obj[Attribute.LABEL] in labels]
                for label in labels:
                    self._handles.pop(label, None)
                for obj in doomed:
                    obj.destroy()
                self._share_count = max(0, self._share_count - len(doomed))
            except p11e.PKCS11Error as exc:
                raise translate(exc, "destroy shares") from exc
            self._sync("destroy shares")
        return len(doomed)

    def export_share(self, share_id: ShareId, backup_key: bytes) -> bytes:
        check_backup_key(backup_key)
        share = self.load_share(share_id)
        try:
            return aad.seal_backup(
                self.cluster_id, share_id, share, backup_key, secrets.token_bytes(aad.NONCE_LEN)
            )
        finally:
            aad.zero(share)

    def import_share(self, blob: bytes, backup_key: bytes, *, replace: bool = False) -> ShareId:
        header, share = aad.open_backup(blob, backup_key)
        try:
            if header.cluster_id != self.cluster_id:
                raise BackupFormatError("backup blob belongs to another cluster")
            self.store_share(header.share_id, share, replace=replace)
            return header.share_id
        finally:
            aad.zero(share)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(p11e.PKCS11Error):  # gone either way
                    self._session.close()

    def __enter__(self) -> Pkcs11Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- helpers

    def _sync(self, what: str) -> None:
        """Make the token's storage durable (see `SlotConfig.sync_dir`)."""
        if self._config.sync_dir is None:
            return
        try:
            fd = os.open(self._config.sync_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise ModuleFailureError(f"{what}: cannot open sync_dir ({exc.strerror})") from exc
        try:
            if _libc().syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise ModuleFailureError(
                    f"{what}: done in the token but syncfs failed ({os.strerror(err)}); "
                    "durability unknown"
                )
        finally:
            os.close(fd)

    def _check_open(self) -> None:
        if self._closed:
            raise HsmError("slot is closed")

    def _find_one(self, cls: ObjectClass, label: str) -> Any:
        objs = list(self._session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))
        if len(objs) != 1:
            raise SlotNotProvisionedError(
                f"token {self._config.token_label!r} has {len(objs)} objects labelled "
                f"{label!r}; expected 1 (provision the slot first)"
            )
        return objs[0]

    def _find_data(self, label: str) -> Iterator[Any]:
        # The label before the application: a module may match the template in order
        # and stop at the first mismatch, and SoftHSM2 decrypts each byte-string
        # attribute of a private object to compare it, so almost every object costs
        # one decryption instead of two (measured: a search about 25% faster). The
        # same three conditions either way.
        return self._session.get_objects(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.LABEL: label,
                Attribute.APPLICATION: aad.APPLICATION,
            }
        )

    def _lookup(self, label: str) -> list[Any]:
        """Objects labelled `label`: the cached handle if it still carries the label,
        else a search of the token (O(objects) in SoftHSM2's file store)."""
        obj = self._handles.get(label)
        if obj is not None:
            try:
                if obj[Attribute.LABEL] == label:
                    return [obj]
            except (p11e.ObjectHandleInvalid, p11e.SessionHandleInvalid):
                pass
            self._handles.pop(label, None)
        objs = list(self._find_data(label))
        if len(objs) == 1:
            self._handles[label] = objs[0]
        return objs

    def _index(self) -> list[str]:
        """Labels of all our data objects; refreshes the handle cache and share count."""
        objs = self._session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: aad.APPLICATION}
        )
        labelled = [(obj[Attribute.LABEL], obj) for obj in objs]
        finals = [(lb, obj) for lb, obj in labelled if lb.startswith(aad.LABEL_PREFIX)]
        self._handles = dict(finals)
        self._share_count = len(finals)
        return [lb for lb, _ in labelled]

    def _seal(self, share_id: ShareId, share: bytes | bytearray) -> bytes:
        nonce = secrets.token_bytes(aad.NONCE_LEN)
        ct = self._kek.encrypt(
            bytes(share),
            mechanism=Mechanism.AES_GCM,
            mechanism_param=pkcs11.GCMParams(nonce, aad.share_aad(self.cluster_id, share_id)),
        )
        return aad.pack_share_value(nonce, bytes(ct))

    def _write(self, label: str, value: bytes, existing: list[Any]) -> Any:
        """Create under a temporary label, verify, set old aside, relabel, drop old."""
        tmp = None
        set_aside: list[Any] = []
        try:
            tmp = self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: True,
                    Attribute.LABEL: aad.TEMP_LABEL_PREFIX + secrets.token_hex(8),
                    Attribute.APPLICATION: aad.APPLICATION,
                    Attribute.VALUE: value,
                }
            )
            if bytes(tmp[Attribute.VALUE]) != value:
                raise ModuleFailureError("store share: read-back of the new object differs")
            for obj in existing:
                obj[Attribute.LABEL] = aad.OLD_LABEL_PREFIX + label
                set_aside.append(obj)
            self._relabel(tmp, label)
        except p11e.PKCS11Error as exc:
            self._undo(tmp, set_aside, label)
            raise translate(exc, "store share") from exc
        except BaseException:
            self._undo(tmp, set_aside, label)
            raise
        # Committed: the new share is in place. Dropping the old one may fail
        # without harm; the sweep at the next open removes `old/` leftovers.
        for obj in set_aside:
            with contextlib.suppress(p11e.PKCS11Error):
                obj.destroy()
        return tmp

    def _relabel(self, obj: Any, label: str) -> None:
        """The commit point of a store (a separate method so tests can fail it)."""
        obj[Attribute.LABEL] = label

    def _undo(self, tmp: Any, set_aside: list[Any], label: str) -> None:
        """Best-effort rollback; anything left is swept when the slot next opens."""
        try:
            if tmp is not None:
                tmp.destroy()
            for obj in set_aside:
                obj[Attribute.LABEL] = label
        except p11e.PKCS11Error:
            pass  # the sweep at the next open finishes the job

    def _sweep(self) -> None:
        """Remove temporaries of interrupted stores; finish or undo interrupted replaces."""
        objs = list(
            self._session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: aad.APPLICATION}
            )
        )
        labels = [obj[Attribute.LABEL] for obj in objs]
        finals = {lb for lb in labels if lb.startswith(aad.LABEL_PREFIX)}
        for obj, lb in zip(objs, labels, strict=True):
            if lb.startswith(aad.TEMP_LABEL_PREFIX):
                obj.destroy()
            elif lb.startswith(aad.OLD_LABEL_PREFIX):
                target = lb[len(aad.OLD_LABEL_PREFIX) :]
                if target in finals:
                    obj.destroy()
                else:
                    obj[Attribute.LABEL] = target
                    finals.add(target)
        self._index()


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.syncfs.argtypes = [ctypes.c_int]
    libc.syncfs.restype = ctypes.c_int
    return libc


def _open_session(config: SlotConfig, pin: str | None = None) -> Any:
    if pin is None:
        pin = read_pin(config.pin_file, config.pin_env)
    lib = load_module(config.module_path, config.softhsm_conf)
    try:
        token = lib.get_token(token_label=config.token_label)
    except p11e.NoSuchToken as exc:
        raise TokenNotFoundError(f"no token labelled {config.token_label!r}") from exc
    except p11e.PKCS11Error as exc:
        raise translate(exc, "find token") from exc
    try:
        return token.open(rw=True, user_pin=pin)
    except p11e.UserAlreadyLoggedIn as exc:
        # PKCS#11 login state is per token per process: one slot per token per process.
        raise ModuleConfigConflictError(
            f"token {config.token_label!r} is already open in this process"
        ) from exc
    except p11e.PKCS11Error as exc:
        raise translate(exc, f"log in to token {config.token_label!r}") from exc
    finally:
        del pin


def _exists(session: Any, cls: ObjectClass, label: str) -> bool:
    return any(True for _ in session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: label}))


def _generate_identity(session: Any) -> None:
    last: Exception | None = None
    for params in _ED25519_PARAMS:
        try:
            session.generate_keypair(
                KeyType.EC_EDWARDS,
                None,
                label=IDENTITY_LABEL,
                id=b"custody-identity",
                store=True,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                public_template={Attribute.EC_PARAMS: params},
                private_template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.PRIVATE: True,
                },
            )
            return
        except (p11e.MechanismInvalid, p11e.FunctionNotSupported) as exc:
            raise MechanismUnsupportedError(
                "the PKCS#11 module does not support Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN)"
            ) from exc
        except p11e.PKCS11Error as exc:
            last = exc  # e.g. SoftHSM2 2.6 rejects the curve-name form: try the next form
    raise MechanismUnsupportedError(
        f"the PKCS#11 module rejected both Ed25519 parameter encodings ({type(last).__name__})"
    )
