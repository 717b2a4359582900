"""``custody cluster init | up | down | status | logs`` end to end.

``init`` runs for real (PKI, SoftHSM2 tokens, signed bootstrap). The node
program does not run here: ``up`` starts a small fake node (``FAKE_NODE``
below, through ``$CUSTODY_NODE_CMD``) that serves the two endpoints ``up`` and
``status`` use over mTLS with the node's real certificate. Processes are really
started and stopped, and a finalizer makes sure none is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import main
from node.client.profile import load_profile
from node.server.config import load_config
from node.state import Bootstrap, Machine, decode_command

INIT = [
    "--nodes", "3",
    "--threshold", "2",
    "--approvers", "alice,bob,carol",
    "--clients", "app1",
    "--operators", "ops",
    "--auditors", "audit",
    "--cluster-id", "demo",
]  # fmt: skip

FAKE_NODE = r"""
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from node.server.config import load_config
from node.tlsctx import server_context

cfg = load_config(sys.argv[sys.argv.index("--config") + 1])
print(f"fake {cfg.name} starting", flush=True)
if os.environ.get("FAKE_NODE_FAIL") == cfg.name:
    print("boom: cannot open the token", flush=True)
    sys.exit(3)
if os.environ.get("FAKE_NODE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sick = os.environ.get("FAKE_NODE_SICK") == cfg.name
role = "leader" if cfg.index == 1 else "follower"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v1/sys/health":
            body = {"status": "starting" if sick else "ok", "role": role}
        elif self.path == "/v1/sys/status":
            body = {"role": role, "term": 3, "commit": 10, "applied": 9, "epoch": 1,
                    "leader": 1, "health": "ok"}
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(cfg.api_listen, Handler)
ctx = server_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(f"fake {cfg.name} serving", flush=True)
server.serve_forever()
"""


def _init(root: Path, *extra: str) -> int:
    return main(["cluster", "init", "--dir", str(root), *INIT, *extra])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "c"
    assert _init(root) == 0
    return root


def _pids(root: Path) -> dict[str, int]:
    return {
        p.parent.name: int(p.read_text())
        for p in sorted(root.glob("node-*/node.pid"))
        if p.read_text().strip().isdigit()
    }


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def fake_nodes(cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """$CUSTODY_NODE_CMD runs the fake node; afterwards every started process is gone."""
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    monkeypatch.setenv("CUSTODY_NODE_CMD", f"{sys.executable} {script}")
    started: set[int] = set()
    yield cluster
    started |= set(_pids(cluster).values())
    main(["cluster", "down", "--dir", str(cluster), "--timeout", "2"])
    for pid in started:  # belt and braces: nothing may outlive the test
        with contextlib.suppress(OSError):
            if (
                not _gone(pid)
                and str(cluster.resolve()) in Path(f"/proc/{pid}/cmdline").read_text()
            ):
                os.kill(pid, signal.SIGKILL)
    assert not list(cluster.glob("node-*/node.pid"))


# ---------------------------------------------------------------- init


def test_init_layout(cluster: Path) -> None:
    doc = json.loads((cluster / "cluster.json").read_text())
    assert doc["v"] == 1 and doc["cluster_id"] == "demo" and doc["threshold"] == 2
    assert [n["name"] for n in doc["nodes"]] == ["node-1", "node-2", "node-3"]
    assert {(p["name"], p["role"]) for p in doc["principals"]} == {
        ("alice", "approver"),
        ("bob", "approver"),
        ("carol", "approver"),
        ("app1", "client"),
        ("ops", "operator"),
        ("audit", "auditor"),
    }
    ports = [int(a.rsplit(":", 1)[1]) for n in doc["nodes"] for a in (n["raft"], n["api"])]
    assert len(set(ports)) == 6
    assert (cluster / "pki" / "pki.json").is_file()
    assert (cluster / "bootstrap.bin").stat().st_mode & 0o777 == 0o644
    for i in (1, 2, 3):
        hsm = cluster / f"node-{i}" / "hsm"
        for pin in ("user.pin", "so.pin"):
            assert (hsm / pin).stat().st_mode & 0o777 == 0o600
        assert (hsm / "softhsm2.conf").is_file() and (hsm / "tokens").is_dir()
        assert (cluster / f"node-{i}" / "data").stat().st_mode & 0o777 == 0o700
    assert sorted(p.stem for p in (cluster / "profiles").glob("*.toml")) == sorted(
        ["alice", "bob", "carol", "app1", "ops", "audit"]
    )


def test_configs_and_bootstrap_are_consistent(cluster: Path) -> None:
    configs = [load_config(cluster / f"node-{i}" / "node.toml") for i in (1, 2, 3)]
    cmd = decode_command((cluster / "bootstrap.bin").read_bytes())
    assert isinstance(cmd, Bootstrap)
    assert cmd.author == "ops" and cmd.threshold == 2 and not cmd.unsafe
    assert cmd.governance_approvers == ("alice", "bob", "carol") and cmd.governance_k == 2
    assert cmd.time_lock_epochs == 2
    genesis = {c.genesis for c in configs}
    assert len(genesis) == 1
    outcome = Machine(genesis=genesis.pop()).apply_command(cmd)
    assert outcome.ok, outcome
    for cfg in configs:
        assert cfg.bootstrap_command == cmd and cfg.cluster_id == "demo"
        assert cfg.hsm_pin_file == cluster.resolve() / cfg.name / "hsm" / "user.pin"
        assert cfg.epoch_interval_s == 0.0
        assert cfg.raft_peers == configs[0].raft_peers
    roles = {p.name: p for p in cmd.principals}
    # every principal with a signing key is registered with it, clients included (grants);
    # the auditor has none
    manifest = json.loads((cluster / "pki" / "pki.json").read_text())
    for entry in manifest["principals"]:
        expected = bytes.fromhex(entry["approval_public_key_hex"] or "")
        assert roles[entry["name"]].public_key == expected, entry["name"]
    assert len(roles["app1"].public_key) == 32 and roles["audit"].public_key == b""


def test_member_keys_are_the_token_identity_keys(cluster: Path) -> None:
    # Each token is opened in its own process (one SoftHSM2 conf per process).
    cmd = decode_command((cluster / "bootstrap.bin").read_bytes())
    code = (
        "import sys; from node.hsm.pkcs11_slot import Pkcs11Slot, SlotConfig\n"
        "c = SlotConfig(token_label=sys.argv[1], cluster_id='demo', pin_file=sys.argv[2],"
        " softhsm_conf=sys.argv[3])\n"
        "s = Pkcs11Slot.open(c); print(s.identity_public_key().hex()); s.close()\n"
    )
    for member in cmd.members:
        hsm = cluster / member.name / "hsm"
        out = subprocess.run(
            [sys.executable, "-c", code, member.name, hsm / "user.pin", hsm / "softhsm2.conf"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "SOFTHSM2_CONF": str(hsm / "softhsm2.conf")},
        )
        assert bytes.fromhex(out.stdout.strip()) == member.public_key


def test_profiles_load(cluster: Path) -> None:
    cfg = load_config(cluster / "node-2" / "node.toml")
    urls = tuple(f"https://127.0.0.1:{p.api[1]}" for p in cfg.peers.values())
    for name, role in [("alice", "approver"), ("ops", "operator"), ("app1", "client")]:
        p = load_profile(cluster / "profiles" / f"{name}.toml")
        assert (p.principal, p.role, p.cluster_id, p.nodes) == (name, role, "demo", urls)
        assert p.key == cluster.resolve() / "pki" / "principals" / name / "tls.key"
        # clients have a signing key too (requests under a grant)
        assert p.approval_key == cluster.resolve() / "pki" / "principals" / name / "approval.key"


def test_init_refuses_existing_dir(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = (cluster / "cluster.json").read_bytes()
    assert _init(cluster) == 2
    assert "not empty (pass --force" in capsys.readouterr().err
    assert (cluster / "cluster.json").read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert _init(other, "--force") == 2
    assert "refusing to delete it even with --force" in capsys.readouterr().err
    assert (other / "precious.txt").read_text() == "keep me"


def test_force_replaces_a_cluster_dir_and_unsafe_is_explicit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "small"
    args = ["--nodes", "2", "--approvers", "alice", "--operators", "ops", "--json"]
    run = ["cluster", "init", "--dir", str(root), "--threshold", "1", *args]
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "threshold 1" in err and "governance k=1" in err and "--unsafe" in err
    assert not root.exists()
    assert main([*run, "--unsafe", "--base-port", "20000"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["unsafe"] is True and first["nodes"][1]["api"] == "127.0.0.1:20102"
    assert decode_command((root / "bootstrap.bin").read_bytes()).unsafe is True
    (root / "stray").write_text("x")
    assert main([*run, "--unsafe", "--force"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["genesis"] != first["genesis"] and not (root / "stray").exists()
    assert load_config(root / "node-2" / "node.toml").genesis.hex() == second["genesis"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "0"], "--threshold"),
        (["--threshold", "4"], "--threshold"),
        (["--nodes", "16"], "--nodes"),
        (["--governance-k", "4"], "--governance-k"),
        (["--threshold", "1"], "--unsafe"),
        (["--cluster-id", "a:b"], "--cluster-id"),
        (["--clients", "Bad"], "Bad"),
        (["--clients", "alice"], "alice"),
        (["--time-lock-epochs", "0"], "--time-lock-epochs"),
        (["--epoch-interval", "0.01"], "--epoch-interval"),
        (["--base-port", "65500"], "--base-port"),
        (["--hosts", "h1,h2", "--base-port", "20000"], "--hosts names 2 hosts for 3 nodes"),
        (["--hosts", "h1,h2,h3"], "--hosts needs --base-port"),
        (["--hosts", "h1,H2,h3", "--base-port", "20000"], "--hosts: invalid host 'H2'"),
    ],
)
def test_invalid_arguments_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    root = tmp_path / "c"
    assert _init(root, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("custody: error: ") and err.count("\n") == 1 and message in err
    assert not root.exists()


def test_hosts_put_each_node_on_its_own_host(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # For containers (docker-compose.yml): node-i listens on all interfaces, and peers,
    # profiles and cluster.json dial it by its host; its certificate names that host and
    # the loopback names (for ports published on the container host).
    from cryptography import x509

    root = tmp_path / "c"
    hosts = "node-1,node-2,10.0.0.3"
    assert _init(root, "--hosts", hosts, "--base-port", "8300", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    expected = [("node-1", 8301, 8401), ("node-2", 8302, 8402), ("10.0.0.3", 8303, 8403)]
    assert [(n["raft"], n["api"]) for n in doc["nodes"]] == [
        (f"{h}:{r}", f"{h}:{a}") for h, r, a in expected
    ]
    for i, (host, raft, api) in enumerate(expected, 1):
        cfg = load_config(root / f"node-{i}" / "node.toml")
        any_host = "0.0.0.0"  # noqa: S104 - what the config says, not a bind
        assert cfg.raft_listen == (any_host, raft) and cfg.api_listen == (any_host, api)
        assert [(p.raft, p.api) for p in cfg.peers.values()] == [
            ((h, r), (h, a)) for h, r, a in expected
        ]
        cert = x509.load_pem_x509_certificate(
            (root / "pki" / "nodes" / f"node-{i}" / "tls.crt").read_bytes()
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for t in (x509.DNSName, x509.IPAddress) for v in san.get_values_for_type(t)]
        assert sorted(names) == sorted({host, "127.0.0.1", "localhost"})
    profile = load_profile(root / "profiles" / "ops.toml")
    assert profile.nodes == tuple(f"https://{h}:{a}" for h, _, a in expected)


def test_no_operator_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "c"
    assert main(["cluster", "init", "--dir", str(root), "--approvers", "a,b"]) == 2
    assert "--operators" in capsys.readouterr().err and not root.exists()


# ---------------------------------------------------------------- up / status / logs / down


def _alive(pid: int) -> bool:
    return not _gone(pid)


@pytest.mark.slow
def test_up_status_logs_down(fake_nodes: Path, capsys: pytest.CaptureFixture) -> None:
    d = str(fake_nodes)
    assert main(["cluster", "up", "--dir", d, "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert "node-3: started" in out and "is up: 3 nodes, leader node-1" in out
    pids = _pids(fake_nodes)
    assert len(pids) == 3 and all(_alive(p) for p in pids.values())

    assert main(["cluster", "up", "--dir", d]) == 0
    assert "node-2: already running (pid" in capsys.readouterr().out
    assert _pids(fake_nodes) == pids

    assert main(["cluster", "status", "--dir", d, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["node-1", "node-2", "node-3"]
    assert all(r["reachable"] and r["running"] for r in rows)
    assert [r["pid"] for r in rows] == [pids[f"node-{i}"] for i in (1, 2, 3)]
    assert rows[0]["status"]["role"] == "leader" and rows[1]["status"]["commit"] == 10
    assert main(["cluster", "status", "--dir", d]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NODE", "PID", "API", "ROLE"]
    assert table[2].split()[3:6] == ["follower", "3", "10"]

    assert main(["cluster", "logs", "--dir", d, "--node", "node-2", "-n", "1"]) == 0
    assert capsys.readouterr().out == "fake node-2 serving\n"
    assert main(["cluster", "logs", "--dir", d]) == 0
    assert "==> node-3" in capsys.readouterr().out

    assert main(["cluster", "down", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert all(f"node-{i}: stopped (pid {pids[f'node-{i}']})" in out for i in (1, 2, 3))
    assert all(_gone(p) for p in pids.values())
    assert not _pids(fake_nodes)
    assert main(["cluster", "status", "--dir", d]) == 1
    assert "unreachable" in capsys.readouterr().out


@pytest.mark.slow
def test_up_reports_a_node_that_exits(
    fake_nodes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_NODE_FAIL", "node-2")
    assert main(["cluster", "up", "--dir", str(fake_nodes), "--timeout", "20"]) == 1
    err = capsys.readouterr().err
    assert "node-2 (pid" in err and "exited with status 3" in err
    assert "boom: cannot open the token" in err  # the log tail


@pytest.mark.slow
def test_up_times_out_on_an_unhealthy_node(
    fake_nodes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_NODE_SICK", "node-3")
    assert main(["cluster", "up", "--dir", str(fake_nodes), "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "node-3 not healthy after 2 s: health status 'starting'" in err
    assert "fake node-3 serving" in err


@pytest.mark.slow
def test_down_kills_a_node_ignoring_sigterm(
    fake_nodes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FAKE_NODE_IGNORE_TERM", "1")
    d = str(fake_nodes)
    assert main(["cluster", "up", "--dir", d, "--timeout", "30"]) == 0
    pids = _pids(fake_nodes)
    capsys.readouterr()
    started = time.monotonic()
    assert main(["cluster", "down", "--dir", d, "--timeout", "0.5"]) == 0
    assert time.monotonic() - started < 5
    assert "sent SIGKILL" in capsys.readouterr().out
    # `down` counts a zombie as stopped; reaping it here may take a moment under load
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids.values()):
        assert time.monotonic() < deadline, "a SIGKILLed fake node is still there"
        time.sleep(0.05)


def test_down_never_signals_a_reused_pid(cluster: Path, capsys: pytest.CaptureFixture) -> None:
    pid_file = cluster / "node-1" / "node.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # a live process that is not node-1
    try:
        assert main(["cluster", "down", "--dir", str(cluster)]) == 0
    finally:
        pid_file.unlink(missing_ok=True)
    assert "node-1: not running (stale pid file removed)" in capsys.readouterr().out


def test_commands_on_a_non_cluster_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for action in ("up", "down", "status", "logs"):
        assert main(["cluster", action, "--dir", str(tmp_path)]) == 2
        assert "not a cluster directory" in capsys.readouterr().err
