"""``node.toml`` and client profiles: a valid file loads; every kind of mistake is one line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.client.profile import (
    PROFILE_ENV,
    ProfileError,
    find_profile,
    load_profile,
    render_profile,
)
from node.server.config import (
    ConfigError,
    PeerConfig,
    load_config,
    parse_address,
    render_config,
)
from node.state import Bootstrap, MemberSpec, PrincipalSpec, encode_command
from node.state.approvals import genesis_of, sign_command

CLUSTER = "demo"


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _bootstrap(cluster_id: str = CLUSTER, nodes: int = 3) -> Bootstrap:
    ops = Ed25519PrivateKey.generate()
    cmd = Bootstrap(
        request_id="bootstrap",
        author="ops",
        cluster_id=cluster_id,
        threshold=2,
        members=tuple(
            MemberSpec(f"node-{i}", i, _raw(Ed25519PrivateKey.generate()))
            for i in range(1, nodes + 1)
        ),
        principals=(
            PrincipalSpec("alice", "approver", _raw(Ed25519PrivateKey.generate())),
            PrincipalSpec("bob", "approver", _raw(Ed25519PrivateKey.generate())),
            PrincipalSpec("ops", "operator", _raw(ops)),
        ),
        governance_approvers=("alice", "bob"),
        governance_k=2,
        time_lock_epochs=2,
    )
    return sign_command(ops, cmd, cluster_id)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(v)  # ASCII test strings: JSON and TOML basic strings agree


def to_toml(doc: dict[str, Any]) -> str:
    out = []
    for name, table in doc.items():
        items = table if isinstance(table, list) else [table]
        for item in items:
            out.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            out += [f"{k} = {_value(v)}" for k, v in item.items()]
            out.append("")
    return "\n".join(out)


class Env:
    """A directory with everything a valid node-1 config points at."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bootstrap = _bootstrap()
        (root / "bootstrap.bin").write_bytes(encode_command(self.bootstrap))
        pki = root / "pki"
        pki.mkdir()
        (pki / "ca.crt").write_text("ca\n")
        (pki / "tls.crt").write_text("cert\n")
        key = pki / "tls.key"
        key.write_text("key\n")
        key.chmod(0o600)
        node = root / "node-1"
        (node / "hsm").mkdir(parents=True)
        pin = node / "hsm" / "user.pin"
        pin.write_text("123456\n")
        pin.chmod(0o600)
        (node / "hsm" / "softhsm2.conf").write_text("x\n")
        self.config = node / "node.toml"

    def doc(self) -> dict[str, Any]:
        return {
            "node": {
                "name": "node-1",
                "cluster_id": CLUSTER,
                "genesis": genesis_of(self.bootstrap).hex(),
                "bootstrap": "../bootstrap.bin",
                "data_dir": "data",
            },
            "tls": {"ca": "../pki/ca.crt", "cert": "../pki/tls.crt", "key": "../pki/tls.key"},
            "hsm": {
                "token_label": "node-1",
                "pin_file": "hsm/user.pin",
                "softhsm_conf": "hsm/softhsm2.conf",
            },
            "api": {"listen": "127.0.0.1:8401"},
            "raft": {"listen": "127.0.0.1:7401"},
            "peers": [
                {"name": f"node-{i}", "raft": f"127.0.0.1:740{i}", "api": f"127.0.0.1:840{i}"}
                for i in (1, 2, 3)
            ],
        }

    def write(self, doc: dict[str, Any]) -> Path:
        self.config.write_text(to_toml(doc))
        return self.config


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_valid_config_loads_with_defaults(env: Env) -> None:
    cfg = load_config(env.write(env.doc()))
    node_dir = env.config.parent
    assert (cfg.name, cfg.index, cfg.cluster_id) == ("node-1", 1, CLUSTER)
    assert cfg.genesis == genesis_of(env.bootstrap)
    assert cfg.bootstrap_command == env.bootstrap
    assert cfg.bootstrap == (env.root / "bootstrap.bin").resolve()
    assert cfg.tls_key == (env.root / "pki" / "tls.key").resolve()
    assert cfg.hsm_pin_file == (node_dir / "hsm" / "user.pin").resolve()
    assert cfg.hsm_pin_env is None and cfg.hsm_module is None
    assert cfg.data_dir == (node_dir / "data").resolve()
    assert cfg.data_dir.is_dir() and cfg.data_dir.stat().st_mode & 0o777 == 0o700
    assert cfg.api_listen == ("127.0.0.1", 8401) and cfg.raft_listen == ("127.0.0.1", 7401)
    assert cfg.raft_peers == {i: ("127.0.0.1", 7400 + i) for i in (1, 2, 3)}
    assert cfg.peers["node-2"] == PeerConfig("node-2", 2, ("127.0.0.1", 7402), ("127.0.0.1", 8402))
    assert (cfg.max_body_bytes, cfg.tick_ms, cfg.election_ticks, cfg.snapshot_every) == (
        262144,
        50,
        10,
        1000,
    )
    assert (cfg.epoch_interval_s, cfg.epoch_min_interval_s) == (30.0, 1.0)
    assert (cfg.dkg_timeout_s, cfg.sign_timeout_s) == (30.0, 5.0)
    assert cfg.audit_checkpoint_every == 64
    assert (cfg.log_format, cfg.log_level) == ("text", "info")


def test_optional_tables_and_pin_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = env.doc()
    del doc["hsm"]["pin_file"]
    doc["hsm"]["pin_env"] = "CUSTODY_PIN"
    doc["api"]["max_body_bytes"] = 4096
    doc["raft"].update(tick_ms=10, election_ticks=5, snapshot_every=7)
    doc["schedule"] = {"epoch_interval_s": 0, "dkg_timeout_s": 2, "sign_timeout_s": 0.5,
                       "audit_checkpoint_every": 8}
    doc["log"] = {"format": "json", "level": "debug"}
    cfg = load_config(env.write(doc))
    assert cfg.hsm_pin_file is None and cfg.hsm_pin_env == "CUSTODY_PIN"
    assert (cfg.max_body_bytes, cfg.tick_ms, cfg.election_ticks, cfg.snapshot_every) == (
        4096,
        10,
        5,
        7,
    )
    assert (cfg.epoch_interval_s, cfg.dkg_timeout_s, cfg.sign_timeout_s) == (0.0, 2.0, 0.5)
    assert cfg.audit_checkpoint_every == 8
    assert (cfg.log_format, cfg.log_level) == ("json", "debug")


def test_render_config_round_trips(env: Env) -> None:
    peers = [
        PeerConfig(f"node-{i}", i, ("127.0.0.1", 7400 + i), ("127.0.0.1", 8400 + i))
        for i in (1, 2, 3)
    ]
    text = render_config(
        name="node-1",
        cluster_id=CLUSTER,
        genesis=genesis_of(env.bootstrap),
        bootstrap="../bootstrap.bin",
        data_dir="data",
        tls_ca="../pki/ca.crt",
        tls_cert="../pki/tls.crt",
        tls_key="../pki/tls.key",
        token_label="node-1",
        pin_file="hsm/user.pin",
        api_listen=("127.0.0.1", 8401),
        raft_listen=("127.0.0.1", 7401),
        peers=peers,
        tick_ms=20,
        schedule={"epoch_interval_s": 0.0, "epoch_min_interval_s": 2},
        log_level="warning",
    )
    env.config.write_text(text)
    cfg = load_config(env.config)
    assert list(cfg.peers.values()) == peers
    assert (cfg.tick_ms, cfg.epoch_interval_s, cfg.epoch_min_interval_s) == (20, 0.0, 2.0)
    assert cfg.log_level == "warning"


def _set(table: str, key: str, value: Any) -> Callable[[Env, dict[str, Any]], None]:
    def edit(env: Env, doc: dict[str, Any]) -> None:
        doc.setdefault(table, {})[key] = value

    return edit


def _drop(table: str, key: str | None = None) -> Callable[[Env, dict[str, Any]], None]:
    def edit(env: Env, doc: dict[str, Any]) -> None:
        if key is None:
            del doc[table]
        else:
            del doc[table][key]

    return edit


def _chmod(rel: str, mode: int) -> Callable[[Env, dict[str, Any]], None]:
    def edit(env: Env, doc: dict[str, Any]) -> None:
        (env.root / rel).chmod(mode)

    return edit


def _peer(i: int, key: str, value: Any) -> Callable[[Env, dict[str, Any]], None]:
    def edit(env: Env, doc: dict[str, Any]) -> None:
        doc["peers"][i][key] = value

    return edit


def _other_bootstrap(env: Env, doc: dict[str, Any]) -> None:
    (env.root / "bootstrap.bin").write_bytes(encode_command(_bootstrap()))


def _two_peers(env: Env, doc: dict[str, Any]) -> None:
    doc["peers"] = doc["peers"][:2]


def _garbage_bootstrap(env: Env, doc: dict[str, Any]) -> None:
    (env.root / "bootstrap.bin").write_bytes(b"\x93not msgpack of a command")


def _pin_env_too(env: Env, doc: dict[str, Any]) -> None:
    doc["hsm"]["pin_env"] = "CUSTODY_PIN"


ERRORS = [
    ("unknown key", _set("node", "nmae", "x"), "[node]", "nmae"),
    ("unknown table", _set("extra", "a", 1), "unknown table", "[extra]"),
    ("missing key", _drop("tls", "cert"), "[tls] cert", "missing"),
    ("missing table", _drop("api"), "missing table", "[api]"),
    ("wrong type", _set("raft", "tick_ms", "50"), "[raft] tick_ms", "integer"),
    ("bool as int", _set("raft", "election_ticks", True), "[raft] election_ticks", "integer"),
    ("int bound", _set("api", "max_body_bytes", 100), "[api] max_body_bytes", "4096"),
    ("float bound", _set("schedule", "epoch_interval_s", 0.01), "epoch_interval_s", "0 or"),
    ("unknown schedule key", _set("schedule", "epoch", 1), "[schedule]", "epoch"),
    ("checkpoint every 0", _set("schedule", "audit_checkpoint_every", 0),
     "[schedule] audit_checkpoint_every", "1"),
    ("checkpoint every float", _set("schedule", "audit_checkpoint_every", 2.5),
     "[schedule] audit_checkpoint_every", "integer"),
    ("bad log level", _set("log", "level", "loud"), "[log] level", "loud"),
    ("bad name", _set("node", "name", "node-0"), "[node] name", "node-0"),
    ("bad cluster id", _set("node", "cluster_id", "a/b"), "[node] cluster_id", "a/b"),
    ("short genesis", _set("node", "genesis", "ab"), "[node] genesis", "128 hex"),
    ("missing file", _set("tls", "ca", "nope.crt"), "[tls] ca", "does not exist"),
    ("key file 0644", _chmod("pki/tls.key", 0o644), "[tls] key", "group or others"),
    ("pin file 0644", _chmod("node-1/hsm/user.pin", 0o644), "[hsm] pin_file", "group or others"),
    ("pin file and env", _pin_env_too, "[hsm] pin_file", "exactly one"),
    ("no pin source", _drop("hsm", "pin_file"), "[hsm] pin_file", "exactly one"),
    ("genesis mismatch", _other_bootstrap, "[node] genesis", "does not match"),
    ("foreign bootstrap", _set("node", "cluster_id", "other"), "[node] bootstrap", "'demo'"),
    ("garbage bootstrap", _garbage_bootstrap, "[node] bootstrap", "not an encoded command"),
    ("bad listen", _set("api", "listen", "127.0.0.1:0"), "[api] listen", "port"),
    ("listen not host:port", _set("raft", "listen", "localhost"), "[raft] listen", "HOST:PORT"),
    ("peer raft differs", _peer(0, "raft", "127.0.0.1:7409"), "[[peers]] raft", "node-1"),
    ("peer api differs", _peer(0, "api", "127.0.0.1:8409"), "[[peers]] api", "node-1"),
    ("duplicate peer", _peer(1, "name", "node-1"), "[[peers]] #2 name", "twice"),
    ("shared address", _peer(2, "api", "127.0.0.1:8402"), "[[peers]] api", "share"),
    ("peer unknown key", _peer(1, "port", 1), "[[peers]] #2", "port"),
    ("peers not members", _two_peers, "[[peers]] name", "bootstrap"),
]


@pytest.mark.parametrize(("what", "edit", "where", "problem"), ERRORS, ids=[e[0] for e in ERRORS])
def test_config_errors_name_the_key(
    env: Env,
    what: str,
    edit: Callable[[Env, dict[str, Any]], None],
    where: str,
    problem: str,
) -> None:
    doc = env.doc()
    edit(env, doc)
    path = env.write(doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    assert where in message and problem in message, message
    assert "123456" not in message  # never the PIN


def test_missing_and_unparseable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node config not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_wildcard_listen_matches_advertised_port(env: Env) -> None:
    doc = env.doc()
    doc["api"]["listen"] = "0.0.0.0:8401"
    assert load_config(env.write(doc)).api_listen == ("0.0.0.0", 8401)  # noqa: S104 - a value, nothing binds


def test_parse_address() -> None:
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("node-1.example:65535") == ("node-1.example", 65535)
    for bad in ("::1:80", "host:", ":80", "h:65536", "h:+1", "[zz]:1", "a b:1"):
        with pytest.raises(ValueError):
            parse_address(bad)


# ---------------------------------------------------------------- profiles


def _profile_files(root: Path) -> None:
    (root / "ca.crt").write_text("ca\n")
    (root / "tls.crt").write_text("cert\n")
    for name in ("tls.key", "approval.key"):
        (root / name).write_text("key\n")
        (root / name).chmod(0o600)


def _profile(root: Path, role: str = "approver", **kwargs: Any) -> Path:
    _profile_files(root)
    args: dict[str, Any] = {
        "principal": "alice",
        "role": role,
        "cluster_id": CLUSTER,
        "nodes": ["https://127.0.0.1:8401", "https://[::1]:8402/"],
        "ca": "ca.crt",
        "cert": "tls.crt",
        "key": "tls.key",
        "approval_key": "approval.key" if role in ("approver", "operator", "client") else None,
    }
    args.update(kwargs)
    path = root / "profiles" / "p.toml"
    path.parent.mkdir(exist_ok=True)
    for k in ("ca", "cert", "key", "approval_key"):
        if args[k] is not None:
            args[k] = f"../{args[k]}"
    path.write_text(render_profile(**args))
    return path


def test_profile_loads(tmp_path: Path) -> None:
    p = load_profile(_profile(tmp_path))
    assert (p.principal, p.role, p.cluster_id) == ("alice", "approver", CLUSTER)
    assert p.nodes == ("https://127.0.0.1:8401", "https://[::1]:8402")
    assert p.key == (tmp_path / "tls.key").resolve()
    assert p.approval_key == (tmp_path / "approval.key").resolve()
    client = load_profile(_profile(tmp_path, role="client"))
    assert client.role == "client" and client.approval_key == (tmp_path / "approval.key").resolve()
    # a client profile written before clients had a signing key still loads
    old = load_profile(_profile(tmp_path, role="client", approval_key=None))
    assert old.role == "client" and old.approval_key is None
    with pytest.raises(ProfileError, match="role auditor has no approval key"):
        render_profile(principal="audit", role="auditor", cluster_id=CLUSTER,
                       nodes=["https://127.0.0.1:8401"], ca="ca.crt", cert="tls.crt",
                       key="tls.key", approval_key="approval.key")  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "where", "problem"),
    [
        (lambda t: t.replace('role = "approver"', 'role = "boss"'), "[profile] role", "boss"),
        (lambda t: t.replace("https://127.0.0.1:8401", "http://x:1"), "nodes[0]", "https://"),
        (lambda t: t.replace("127.0.0.1:8401", "127.0.0.1:8401/v1"), "nodes[0]", "path"),
        (lambda t: t + "colour = 1\n", "[profile]", "colour"),
        (lambda t: t + "[extra]\n", "unknown table", "[extra]"),
        (lambda t: t.replace('principal = "alice"', ""), "[profile] principal", "missing"),
        (lambda t: t.replace('"../tls.crt"', '"../nope.crt"'), "[profile] cert", "does not"),
    ],
)
def test_profile_errors(
    tmp_path: Path, edit: Callable[[str], str], where: str, problem: str
) -> None:
    path = _profile(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and where in message and problem in message, message


def test_profile_key_permissions_and_roles(tmp_path: Path) -> None:
    path = _profile(tmp_path)
    (tmp_path / "approval.key").chmod(0o644)
    with pytest.raises(ProfileError, match=r"\[profile\] approval_key: .*group or others"):
        load_profile(path)
    (tmp_path / "approval.key").chmod(0o600)
    (tmp_path / "tls.key").chmod(0o640)
    with pytest.raises(ProfileError, match=r"\[profile\] key: .*group or others"):
        load_profile(path)
    (tmp_path / "tls.key").chmod(0o600)
    text = path.read_text().replace('role = "approver"', 'role = "auditor"')
    path.write_text(text)
    with pytest.raises(
        ProfileError, match=r"\[profile\] approval_key: role auditor has no approval key"
    ):
        load_profile(path)


def test_find_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    with pytest.raises(ProfileError, match="--profile FILE or set CUSTODY_PROFILE"):
        find_profile(None)
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "env.toml"))
    assert find_profile(None) == tmp_path / "env.toml"
    assert find_profile(str(tmp_path / "x.toml")) == tmp_path / "x.toml"
    assert os.environ[PROFILE_ENV]  # the explicit one wins without unsetting the variable
