"""A node's configuration file (``node.toml``), read strictly; see docs/config.md.

Why strict: a misspelt key that silently falls back to a default is how a node
ends up with the wrong PIN source or an unguarded key file. So unknown tables
and keys, missing required keys, wrong types and out-of-range numbers are all
errors, each reported in one line naming the file, the table, the key and the
problem (``ConfigError``). Paths in the file are relative to the file's own
directory, so a cluster directory can be moved as a whole. The signed
bootstrap command is decoded and checked against the configured genesis here,
so a node never starts with a bootstrap it would refuse to apply.

The small TOML helpers (``Table``, ``parse_address``, ``toml_string``) are
shared with the client profile (``node.client.profile``).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.state.approvals import genesis_of
from node.state.commands import MAX_COMMAND_BYTES, Bootstrap, decode_command
from node.state.errors import DecodeError
from node.state.names import member_index

if TYPE_CHECKING:
    from node.hsm.pkcs11_slot import SlotConfig

MAX_CONFIG_BYTES = 1 << 20
MAX_PATH_CHARS = 4096
MAX_TOKEN_LABEL_BYTES = 32  # PKCS#11 token labels are 32 bytes
# The HSM slot's identifier rule (node.hsm.slot.check_identifier): the state machine would
# also allow ':' and '@' in a cluster id, but a node could then never open its token.
CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TOKEN_LABEL_RE = CLUSTER_ID_RE
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
GENESIS_RE = re.compile(r"[0-9a-fA-F]{128}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not a bind

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_EPOCH_INTERVAL_S = 86400.0 * 365

# Defaults and bounds of the optional keys (documented in docs/config.md).
DEFAULT_MAX_BODY_BYTES = 262144
MAX_BODY_BYTES_RANGE = (4096, 16 * 1024 * 1024)
DEFAULT_TICK_MS = 50
TICK_MS_RANGE = (1, 10000)
DEFAULT_ELECTION_TICKS = 10
ELECTION_TICKS_RANGE = (2, 1000)
DEFAULT_SNAPSHOT_EVERY = 1000
SNAPSHOT_EVERY_RANGE = (1, 10_000_000)
DEFAULT_EPOCH_INTERVAL_S = 30.0
EPOCH_INTERVAL_RANGE = (0.1, MAX_EPOCH_INTERVAL_S)  # or exactly 0 (manual epochs)
DEFAULT_EPOCH_MIN_INTERVAL_S = 1.0
EPOCH_MIN_INTERVAL_RANGE = (0.0, 86400.0)
DEFAULT_DKG_TIMEOUT_S = 30.0
DKG_TIMEOUT_RANGE = (0.1, 86400.0)
DEFAULT_SIGN_TIMEOUT_S = 5.0
DEFAULT_AUDIT_CHECKPOINT_EVERY = 64
AUDIT_CHECKPOINT_EVERY_RANGE = (1, 1_000_000)
DEFAULT_REFRESH_EVERY_EPOCHS = 0  # 0 = proactive refresh only on demand
REFRESH_EVERY_EPOCHS_RANGE = (0, 1_000_000)
SIGN_TIMEOUT_RANGE = (0.1, 86400.0)
DEFAULT_LOG_FORMAT = "text"
DEFAULT_LOG_LEVEL = "info"

Address = tuple[str, int]


class ConfigError(ValueError):
    """A configuration file is unusable; the one-line message names file, key and problem."""


# ---------------------------------------------------------------- shared helpers


def parse_address(text: str) -> Address:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to ``(host, port)``; ValueError says what is wrong."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("write an IPv6 address in brackets: [::1]:PORT")
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not in 1..65535")
    return host, int(port)


def format_address(addr: Address) -> str:
    """The inverse of ``parse_address``."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def toml_string(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{value!r} is not valid UTF-8") from None
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def read_toml(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """Parse a bounded TOML file; every failure is one ``error`` line naming the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {what} is not a regular file")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise error(f"{path}: {what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: {what} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def check_tables(
    file: Path, doc: Mapping[str, Any], allowed: Iterable[str], error: type[ValueError]
) -> None:
    """Refuse top-level keys or tables other than ``allowed``."""
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        name = unknown[0]
        kind = "table" if isinstance(doc[name], dict | list) else "top-level key"
        raise error(f"{file}: unknown {kind} [{name}] (allowed: {', '.join(allowed)})")


class Table:
    """One TOML table being read: every key taken is remembered, leftovers are errors."""

    def __init__(
        self,
        file: Path,
        where: str,
        raw: object,
        error: type[ValueError] = ConfigError,
    ) -> None:
        self.file, self.where, self.error_type = file, where, error
        self.base = file.parent
        if not isinstance(raw, dict):
            raise error(f"{file}: {where} must be a table")
        self.raw: dict[str, Any] = raw
        self.seen: set[str] = set()

    def error(self, key: str | None, problem: str) -> ValueError:
        where = f"{self.where} {key}" if key else self.where
        return self.error_type(f"{self.file}: {where}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            if required:
                raise self.error(key, "missing (required)")
            return None
        return self.raw[key]

    def text(
        self,
        key: str,
        *,
        required: bool = True,
        pattern: re.Pattern[str] | None = None,
        choices: Sequence[str] = (),
        what: str = "",
        max_chars: int = 256,
    ) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.error(key, f"{value[:80]!r} is not one of {', '.join(choices)}")
        if len(value) > max_chars or (pattern is not None and not pattern.fullmatch(value)):
            raise self.error(key, f"{value[:80]!r} is not {what or 'valid'}")
        return value

    def integer(self, key: str, lo: int, hi: int, default: int) -> int:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise self.error(key, f"{value} is outside {lo}..{hi}")
        return value

    def number(
        self, key: str, lo: float, hi: float, default: float, *, zero_ok: bool = False
    ) -> float:
        value = self._get(key, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_kind(value)}")
        number = float(value)
        if zero_ok and number == 0:
            return 0.0
        if not math.isfinite(number) or not lo <= number <= hi:
            also = "0 or " if zero_ok else ""
            raise self.error(key, f"{value} is outside {also}{lo:g}..{hi:g}")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def path(self, key: str, *, required: bool = True) -> Path | None:
        """A path relative to the file's directory, resolved (nothing checked on disk)."""
        value = self.text(key, required=required, max_chars=MAX_PATH_CHARS)
        if value is None:
            return None
        if not value or "\0" in value:
            raise self.error(key, "expected a non-empty path")
        return (self.base / value).resolve()

    def file_path(self, key: str, *, required: bool = True, private: bool = False) -> Path | None:
        """An existing regular file; ``private``: not group/other accessible either."""
        path = self.path(key, required=required)
        if path is None:
            return None
        try:
            st = path.stat()
        except FileNotFoundError:
            raise self.error(key, f"{path} does not exist") from None
        except OSError as exc:
            raise self.error(key, f"cannot stat {path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise self.error(key, f"{path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise self.error(
                key,
                f"{path} is accessible by group or others (mode {st.st_mode & 0o777:o}); "
                "chmod 600 it",
            )
        return path

    def address(self, key: str) -> Address:
        value = self.text(key, max_chars=300)
        assert value is not None
        try:
            return parse_address(value)
        except ValueError as exc:
            raise self.error(key, f"{value[:80]!r}: {exc}") from None

    def finish(self) -> None:
        """Refuse keys nobody asked for (typos, keys of another version)."""
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise self.error(None, f"unknown key(s) {', '.join(unknown)}")


def _kind(value: object) -> str:
    return {dict: "a table", list: "an array", bool: "a boolean", str: "a string"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------- the node config


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One cluster member as this node dials it."""

    name: str
    index: int
    raft: Address
    api: Address


@dataclass(frozen=True)
class NodeConfig:
    """A loaded, checked ``node.toml``: absolute paths, parsed addresses, defaults filled in."""

    path: Path
    name: str
    index: int
    cluster_id: str
    genesis: bytes
    bootstrap: Path
    bootstrap_command: Bootstrap = field(repr=False)
    data_dir: Path
    tls_ca: Path
    tls_cert: Path
    tls_key: Path
    hsm_token_label: str
    hsm_pin_file: Path | None
    hsm_pin_env: str | None
    hsm_softhsm_conf: Path | None
    hsm_module: str | None
    api_listen: Address
    max_body_bytes: int
    raft_listen: Address
    tick_ms: int
    election_ticks: int
    snapshot_every: int
    raft_join: bool  # a member added after the bootstrap: starts empty, the leader adds it
    peers: dict[str, PeerConfig]
    epoch_interval_s: float
    epoch_min_interval_s: float
    dkg_timeout_s: float
    sign_timeout_s: float
    audit_checkpoint_every: int
    refresh_every_epochs: int
    log_format: str
    log_level: str

    @property
    def raft_peers(self) -> dict[int, Address]:
        """Member index -> Raft address, this node included (what the Raft transport dials)."""
        return {p.index: p.raft for p in sorted(self.peers.values(), key=lambda p: p.index)}


TABLES = ("node", "tls", "hsm", "api", "raft", "peers", "schedule", "log")
MEMBER_NAME = re.compile(r"node-([1-9][0-9]?)")


def load_config(path: str | os.PathLike[str], *, create_data_dir: bool = True) -> NodeConfig:
    """Read and check ``path``; create ``data_dir`` (0700) if missing unless told not to."""
    file = Path(path).absolute()
    doc = read_toml(file, "node config", ConfigError)
    check_tables(file, doc, TABLES, ConfigError)
    for required in ("node", "tls", "hsm", "api", "raft", "peers"):
        if required not in doc:
            raise ConfigError(f"{file}: missing table [{required}]")

    node = Table(file, "[node]", doc["node"])
    name = node.text("name", pattern=MEMBER_NAME, what="a node name (node-1 .. node-15)")
    assert name is not None
    index = member_index(name)
    if index == 0:
        raise node.error("name", f"{name!r} is not a node name (node-1 .. node-15)")
    cluster_id = node.text(
        "cluster_id", pattern=CLUSTER_ID_RE, what="a cluster id ([A-Za-z0-9][A-Za-z0-9._-]{0,63})"
    )
    assert cluster_id is not None
    genesis_hex = node.text("genesis", pattern=GENESIS_RE, what="128 hex characters")
    assert genesis_hex is not None
    genesis = bytes.fromhex(genesis_hex)
    bootstrap_path = node.file_path("bootstrap")
    assert bootstrap_path is not None
    bootstrap = _read_bootstrap(node, bootstrap_path, cluster_id, genesis)
    data_dir = node.path("data_dir")
    assert data_dir is not None
    node.finish()
    _check_data_dir(node, data_dir, create_data_dir)

    tls = Table(file, "[tls]", doc["tls"])
    tls_ca = tls.file_path("ca")
    tls_cert = tls.file_path("cert")
    tls_key = tls.file_path("key", private=True)
    tls.finish()

    hsm = Table(file, "[hsm]", doc["hsm"])
    label = hsm.text(
        "token_label", pattern=TOKEN_LABEL_RE, what="a token label ([A-Za-z0-9._-], 1..32)"
    )
    assert label is not None
    if len(label.encode()) > MAX_TOKEN_LABEL_BYTES:
        raise hsm.error("token_label", f"longer than {MAX_TOKEN_LABEL_BYTES} bytes")
    if hsm.has("pin_file") == hsm.has("pin_env"):
        raise hsm.error("pin_file", "give exactly one of pin_file and pin_env")
    pin_file = hsm.file_path("pin_file", required=False, private=True)
    pin_env = hsm.text(
        "pin_env", required=False, pattern=ENV_NAME_RE, what="an environment variable name"
    )
    softhsm_conf = hsm.file_path("softhsm_conf", required=False)
    module = hsm.file_path("module", required=False)
    hsm.finish()

    api = Table(file, "[api]", doc["api"])
    api_listen = api.address("listen")
    max_body = api.integer("max_body_bytes", *MAX_BODY_BYTES_RANGE, DEFAULT_MAX_BODY_BYTES)
    api.finish()

    raft = Table(file, "[raft]", doc["raft"])
    raft_listen = raft.address("listen")
    tick_ms = raft.integer("tick_ms", *TICK_MS_RANGE, DEFAULT_TICK_MS)
    election_ticks = raft.integer("election_ticks", *ELECTION_TICKS_RANGE, DEFAULT_ELECTION_TICKS)
    snapshot_every = raft.integer("snapshot_every", *SNAPSHOT_EVERY_RANGE, DEFAULT_SNAPSHOT_EVERY)
    raft_join = raft.boolean("join", False)
    raft.finish()

    peers = _read_peers(file, doc["peers"])
    _check_peers(file, peers, name, raft_listen, api_listen, bootstrap, raft_join)

    sched = Table(file, "[schedule]", doc.get("schedule", {}))
    epoch_interval = sched.number(
        "epoch_interval_s", *EPOCH_INTERVAL_RANGE, DEFAULT_EPOCH_INTERVAL_S, zero_ok=True
    )
    epoch_min = sched.number(
        "epoch_min_interval_s", *EPOCH_MIN_INTERVAL_RANGE, DEFAULT_EPOCH_MIN_INTERVAL_S
    )
    dkg_timeout = sched.number("dkg_timeout_s", *DKG_TIMEOUT_RANGE, DEFAULT_DKG_TIMEOUT_S)
    sign_timeout = sched.number("sign_timeout_s", *SIGN_TIMEOUT_RANGE, DEFAULT_SIGN_TIMEOUT_S)
    checkpoint_every = sched.integer(
        "audit_checkpoint_every", *AUDIT_CHECKPOINT_EVERY_RANGE, DEFAULT_AUDIT_CHECKPOINT_EVERY
    )
    refresh_every = sched.integer(
        "refresh_every_epochs", *REFRESH_EVERY_EPOCHS_RANGE, DEFAULT_REFRESH_EVERY_EPOCHS
    )
    sched.finish()

    log = Table(file, "[log]", doc.get("log", {}))
    log_format = log.text("format", required=False, choices=LOG_FORMATS) or DEFAULT_LOG_FORMAT
    log_level = log.text("level", required=False, choices=LOG_LEVELS) or DEFAULT_LOG_LEVEL
    log.finish()

    assert tls_ca is not None and tls_cert is not None and tls_key is not None
    return NodeConfig(
        path=file,
        name=name,
        index=index,
        cluster_id=cluster_id,
        genesis=genesis,
        bootstrap=bootstrap_path,
        bootstrap_command=bootstrap,
        data_dir=data_dir,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        hsm_token_label=label,
        hsm_pin_file=pin_file,
        hsm_pin_env=pin_env,
        hsm_softhsm_conf=softhsm_conf,
        hsm_module=str(module) if module is not None else None,
        api_listen=api_listen,
        max_body_bytes=max_body,
        raft_listen=raft_listen,
        tick_ms=tick_ms,
        election_ticks=election_ticks,
        snapshot_every=snapshot_every,
        raft_join=raft_join,
        peers=peers,
        epoch_interval_s=epoch_interval,
        epoch_min_interval_s=epoch_min,
        dkg_timeout_s=dkg_timeout,
        sign_timeout_s=sign_timeout,
        audit_checkpoint_every=checkpoint_every,
        refresh_every_epochs=refresh_every,
        log_format=log_format,
        log_level=log_level,
    )


def _read_bootstrap(node: Table, path: Path, cluster_id: str, genesis: bytes) -> Bootstrap:
    """The signed bootstrap command, which must be exactly the one ``genesis`` names."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_COMMAND_BYTES + 1)
    except OSError as exc:
        raise node.error("bootstrap", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_COMMAND_BYTES:
        raise node.error("bootstrap", f"{path} is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        cmd = decode_command(data)
    except DecodeError as exc:
        raise node.error("bootstrap", f"{path} is not an encoded command: {exc}") from None
    if not isinstance(cmd, Bootstrap):
        raise node.error("bootstrap", f"{path} holds a {cmd.KIND} command, not a bootstrap")
    if cmd.cluster_id != cluster_id:
        raise node.error(
            "bootstrap", f"{path} is for cluster {cmd.cluster_id!r}, not {cluster_id!r}"
        )
    if not hmac.compare_digest(genesis_of(cmd), genesis):
        raise node.error("genesis", f"does not match the genesis digest of {path}")
    return cmd


def _check_data_dir(node: Table, data_dir: Path, create: bool) -> None:
    if data_dir.exists():
        if not data_dir.is_dir():
            raise node.error("data_dir", f"{data_dir} is not a directory")
        return
    if not create:
        return
    try:
        data_dir.mkdir(mode=0o700, parents=True)
        os.chmod(data_dir, 0o700)  # the umask may have narrowed it; make it exact
    except OSError as exc:
        raise node.error("data_dir", f"cannot create {data_dir}: {exc.strerror}") from None


def _read_peers(file: Path, raw: object) -> dict[str, PeerConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{file}: [[peers]] must be a non-empty array of tables")
    peers: dict[str, PeerConfig] = {}
    for number, item in enumerate(raw, start=1):
        t = Table(file, f"[[peers]] #{number}", item)
        name = t.text("name", pattern=MEMBER_NAME, what="a node name (node-1 .. node-15)")
        assert name is not None
        index = member_index(name)
        if index == 0:
            raise t.error("name", f"{name!r} is not a node name (node-1 .. node-15)")
        if name in peers:
            raise t.error("name", f"{name} is listed twice")
        peers[name] = PeerConfig(name, index, t.address("raft"), t.address("api"))
        t.finish()
    return dict(sorted(peers.items(), key=lambda kv: kv[1].index))


def _listen_matches(listen: Address, advertised: Address) -> bool:
    """A node may listen on a wildcard host; the port must be the advertised one."""
    return listen == advertised or (listen[0] in WILDCARD_HOSTS and listen[1] == advertised[1])


def _check_peers(
    file: Path,
    peers: dict[str, PeerConfig],
    name: str,
    raft_listen: Address,
    api_listen: Address,
    bootstrap: Bootstrap,
    join: bool = False,
) -> None:
    indexes = [p.index for p in peers.values()]
    if indexes != list(range(1, len(peers) + 1)):
        raise ConfigError(
            f"{file}: [[peers]] name: members must be node-1 .. node-{len(peers)} without gaps"
        )
    for what in ("raft", "api"):
        seen: dict[Address, str] = {}
        for p in peers.values():
            addr = getattr(p, what)
            if addr in seen:
                raise ConfigError(
                    f"{file}: [[peers]] {what}: {p.name} and {seen[addr]} share "
                    f"{format_address(addr)}"
                )
            seen[addr] = p.name
    me = peers.get(name)
    if me is None:
        raise ConfigError(f"{file}: [[peers]] name: this node ({name}) is not listed")
    if not _listen_matches(raft_listen, me.raft):
        raise ConfigError(
            f"{file}: [[peers]] raft: {name} is advertised at {format_address(me.raft)} "
            f"but [raft] listen is {format_address(raft_listen)}"
        )
    if not _listen_matches(api_listen, me.api):
        raise ConfigError(
            f"{file}: [[peers]] api: {name} is advertised at {format_address(me.api)} "
            f"but [api] listen is {format_address(api_listen)}"
        )
    members = {m.name: m.index for m in bootstrap.members}
    listed = {p.name: p.index for p in peers.values()}
    # A node added later (join) also lists the members added since the bootstrap.
    later = join and listed.items() >= members.items() and name not in members
    if members != listed and not later:
        raise ConfigError(
            f"{file}: [[peers]] name: peers {sorted(listed, key=listed.__getitem__)} are not "
            f"the bootstrap's members {sorted(members, key=members.__getitem__)}"
        )


# ---------------------------------------------------------------- writing


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value!r}")
        return repr(value)
    if isinstance(value, Path):
        return toml_string(str(value))
    if isinstance(value, str):
        return toml_string(value)
    raise TypeError(f"cannot write a {type(value).__name__} to TOML")


def _table(header: str, items: Iterable[tuple[str, object]]) -> str:
    lines = [header]
    lines += [f"{key} = {_value(value)}" for key, value in items if value is not None]
    return "\n".join(lines) + "\n"


def render_config(
    *,
    name: str,
    cluster_id: str,
    genesis: bytes,
    bootstrap: str | Path,
    data_dir: str | Path,
    tls_ca: str | Path,
    tls_cert: str | Path,
    tls_key: str | Path,
    token_label: str,
    api_listen: Address,
    raft_listen: Address,
    peers: Sequence[PeerConfig],
    pin_file: str | Path | None = None,
    pin_env: str | None = None,
    softhsm_conf: str | Path | None = None,
    module: str | Path | None = None,
    max_body_bytes: int | None = None,
    tick_ms: int | None = None,
    election_ticks: int | None = None,
    snapshot_every: int | None = None,
    join: bool | None = None,
    schedule: Mapping[str, float] | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> str:
    """A ``node.toml`` text (paths are written as given: relative to the file's directory).

    Optional values left ``None`` are omitted, so the node uses its defaults.
    ``load_config`` is what checks the result.
    """
    if (pin_file is None) == (pin_env is None):
        raise ConfigError("render_config: give exactly one of pin_file and pin_env")
    parts = [
        "# custody node configuration; every key is described in docs/config.md\n",
        _table(
            "[node]",
            [
                ("name", name),
                ("cluster_id", cluster_id),
                ("genesis", genesis.hex()),
                ("bootstrap", bootstrap),
                ("data_dir", data_dir),
            ],
        ),
        _table("[tls]", [("ca", tls_ca), ("cert", tls_cert), ("key", tls_key)]),
        _table(
            "[hsm]",
            [
                ("token_label", token_label),
                ("pin_file", pin_file),
                ("pin_env", pin_env),
                ("softhsm_conf", softhsm_conf),
                ("module", module),
            ],
        ),
        _table(
            "[api]", [("listen", format_address(api_listen)), ("max_body_bytes", max_body_bytes)]
        ),
        _table(
            "[raft]",
            [
                ("listen", format_address(raft_listen)),
                ("tick_ms", tick_ms),
                ("election_ticks", election_ticks),
                ("snapshot_every", snapshot_every),
                ("join", join),
            ],
        ),
    ]
    for p in sorted(peers, key=lambda p: p.index):
        parts.append(
            _table(
                "[[peers]]",
                [
                    ("name", p.name),
                    ("raft", format_address(p.raft)),
                    ("api", format_address(p.api)),
                ],
            )
        )
    if schedule:
        unknown = set(schedule) - {
            "epoch_interval_s",
            "epoch_min_interval_s",
            "dkg_timeout_s",
            "sign_timeout_s",
            "audit_checkpoint_every",
            "refresh_every_epochs",
        }
        if unknown:
            raise ConfigError(f"render_config: unknown [schedule] key(s) {sorted(unknown)}")
        integers = ("audit_checkpoint_every", "refresh_every_epochs")
        rows = [(k, int(v) if k in integers else float(v))
                for k, v in schedule.items()]  # fmt: skip
        parts.append(_table("[schedule]", rows))
    if log_format is not None or log_level is not None:
        parts.append(_table("[log]", [("format", log_format), ("level", log_level)]))
    return "\n".join(parts)


__all__ = [
    "Address",
    "ConfigError",
    "NodeConfig",
    "PeerConfig",
    "Table",
    "format_address",
    "load_config",
    "parse_address",
    "read_toml",
    "render_config",
    "toml_string",
]


def slot_config(cfg: NodeConfig) -> SlotConfig:
    """How this node opens its token: in its own process, in a fresh one that probes it,
    or in an operator's tool (backup, node keys)."""
    from node.hsm.pkcs11_slot import SlotConfig

    sync_dir = None
    if cfg.hsm_softhsm_conf is not None:
        sync_dir = str(cfg.hsm_softhsm_conf.parent / "tokens")
    return SlotConfig(
        token_label=cfg.hsm_token_label,
        cluster_id=cfg.cluster_id,
        pin_file=str(cfg.hsm_pin_file) if cfg.hsm_pin_file else None,
        pin_env=cfg.hsm_pin_env,
        module_path=cfg.hsm_module,
        softhsm_conf=str(cfg.hsm_softhsm_conf) if cfg.hsm_softhsm_conf else None,
        sync_dir=sync_dir,
    )
