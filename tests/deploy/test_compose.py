"""The compose deployment run for real (docs/deploy.md): build, start, use, tear down.

Real processes only: the base image built from the Debian mirror
(deploy/build-base-image.sh, cached as a tarball in /var/cache/custody-deploy),
the wheelhouse (deploy/build-wheels.sh), `podman build` of the Dockerfile,
`podman-compose up` of docker-compose.yml: the init service makes the cluster
and three node containers run it over the compose network. The custody CLI
then runs on this machine against the ports compose publishes, with the
profiles the init service wrote (profiles-host/ in the admin volume): a
policy, a key by DKG, a sign request approved by two approvers, and the
signature checked with `cryptography` against the key's group public key. One
CLI call also runs inside a container on the compose network, where the nodes
are reached by service name. Containers, volumes and the network are removed
afterwards, also on failure.

Podman runs through this test's own CONTAINERS_CONF (deploy/containers.conf.in:
runc, rlimits within the host's hard limits); the system's config is untouched.
It needs root, podman, podman-compose, runc and (for a cold base image)
debootstrap: scripts/bootstrap.sh installs them. On 2 cores: 20-30 s with the
base image cached, about 80 s from nothing (debootstrap is most of it).
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from http.client import HTTPSConnection
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from node import tlsctx
from tests.node.cluster.harness import REF, cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/custody-node:latest"  # docker-compose.yml's image
NODES = ("node-1", "node-2", "node-3")
NPROC_CAP = 32768  # this machine refuses a container nproc limit of 65536 even below the hard limit
UP_TIMEOUT = 120.0
LOCK = Path("/tmp/custody-deploy-test.lock")


def _need_tools() -> None:
    missing = [t for t in ("podman", "podman-compose", "runc") if shutil.which(t) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: the compose deployment test runs real "
            "containers; run scripts/bootstrap.sh (as root) to install them",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the compose deployment test runs rootful podman: run it as root",
                    pytrace=False)  # fmt: skip


def _containers_conf(tmp: Path) -> Path:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
    nproc = NPROC_CAP if nproc == resource.RLIM_INFINITY else min(nproc, NPROC_CAP)
    text = (ROOT / "deploy" / "containers.conf.in").read_text()
    path = tmp / "containers.conf"
    path.write_text(text.replace("@NOFILE@", str(nofile)).replace("@NPROC@", str(nproc)))
    return path


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Compose:
    """One compose project of this test: its environment, commands and clean-up."""

    def __init__(self, tmp: Path) -> None:
        self.project = f"custodytest{os.getpid()}"
        self.ports = _free_ports(len(NODES))
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(_containers_conf(tmp)),
            **{f"CUSTODY_API_PORT_{i}": str(p) for i, p in enumerate(self.ports, 1)},
        }
        self.times: dict[str, float] = {}

    def run(self, *cmd: str, timeout: float = 300, check: bool = True) -> str:
        """Run a command; on failure the assertion carries its output."""
        start = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        label = f"{cmd[0]} {cmd[3]}" if cmd[0] == "podman-compose" else " ".join(cmd[:2])
        self.times[label] = self.times.get(label, 0.0) + time.monotonic() - start
        if check and proc.returncode != 0:
            out = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{out}")
        return proc.stdout

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return self.run("podman-compose", "-p", self.project, *args, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's container names

    def logs(self) -> str:
        out = []
        for service in ("init", *NODES):
            text = self.run("podman", "logs", "--tail", "30", self.container(service), check=False)
            out.append(f"--- {service} ---\n{text}")
        return "\n".join(out)

    def teardown(self) -> list[str]:
        """`down`, then what it leaves: the volumes (`down -v` works but is slow with
        podman-compose 1.0), the network (which it keeps), containers of a failed `up`.
        Returns what could not be removed."""
        # One `podman stop` stops them all at once; podman-compose 1.0 stops one after
        # the other and pauses a second after each volume it removes.
        self.run("podman", "stop", "-t", "10", *map(self.container, ("init", *NODES)),
                 timeout=120, check=False)  # fmt: skip
        self.compose("down", "-t", "5", timeout=180, check=False)
        ids = self.run(
            "podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}",
            check=False,
        ).split()  # fmt: skip
        if ids:
            self.run("podman", "rm", "-f", "-t", "0", *ids, check=False)
        vols = [v for v in self._volumes() if v.startswith(f"{self.project}_")]
        if vols:
            self.run("podman", "volume", "rm", "-f", *vols, check=False)
        network = f"{self.project}_default"
        if self._network():
            self.run("podman", "network", "rm", "-f", network, check=False)
        left = [v for v in self._volumes() if v.startswith(f"{self.project}_")]
        left += self.run(
            "podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={self.project}",
            check=False,
        ).split()  # fmt: skip
        if self._network():
            left.append(network)
        return left

    def _volumes(self) -> list[str]:
        return self.run("podman", "volume", "ls", "--format", "{{.Name}}", check=False).split()

    def _network(self) -> bool:
        names = self.run("podman", "network", "ls", "--format", "{{.Name}}", check=False).split()
        return f"{self.project}_default" in names


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Compose]:
    _need_tools()
    # One run at a time on a machine: runs share deploy/wheels/ and the image tag,
    # and one run's `podman rmi` of the previous image must not hit another's.
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _deployment(tmp_path)


def _deployment(tmp_path: Path) -> Iterator[Compose]:
    c = Compose(tmp_path)
    start = time.monotonic()
    c.run("deploy/build-base-image.sh", timeout=600)
    c.run("deploy/build-wheels.sh", timeout=300)
    old = c.run("podman", "image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).strip()
    c.run("podman", "build", "-q", "-t", IMAGE, ".", timeout=600)
    new = c.run("podman", "image", "inspect", "--format", "{{.Id}}", IMAGE).strip()
    if old and old != new:  # the previous build would linger as a dangling image
        c.run("podman", "rmi", old, check=False)
    c.times["images"] = time.monotonic() - start
    try:
        c.compose("up", "-d", timeout=300)
        yield c
    finally:
        left = c.teardown()
        assert not left, f"left behind after teardown: {left}"


def _wait_healthy(c: Compose, admin: Path) -> None:
    """podman-compose does not wait for healthchecks: poll each node's health through
    its published port, as the operator, until all are healthy and one leads."""
    ops = admin / "pki" / "principals" / "ops"
    ctx = tlsctx.client_context(admin / "pki" / "ca" / "ca.crt", ops / "tls.crt", ops / "tls.key")
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        roles, why = {}, {}
        for name, port in zip(NODES, c.ports, strict=True):
            conn = HTTPSConnection("127.0.0.1", port, context=ctx, timeout=3)
            try:
                conn.request("GET", "/v1/sys/health")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                if resp.status == 200 and body.get("status") == "ok":
                    roles[name] = body.get("role")
                else:
                    why[name] = f"HTTP {resp.status} {body}"
            except (OSError, ssl.SSLError, ValueError) as exc:
                why[name] = repr(exc)
            finally:
                conn.close()
        if len(roles) == len(NODES) and "leader" in roles.values():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster not healthy after {UP_TIMEOUT:g} s: {why}\n{c.logs()}")
        time.sleep(0.5)


def _ref(output: str) -> str:
    m = REF.search(output)
    assert m, output
    return m.group(1)


def test_compose_cluster_signs(deployment: Compose, tmp_path: Path) -> None:
    try:
        _flow(deployment, tmp_path)
    except BaseException:
        print(deployment.logs())  # pytest shows it with the failure
        raise


def _flow(c: Compose, tmp_path: Path) -> None:
    admin = Path(
        c.run(
            "podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{c.project}_admin"
        ).strip()
    )
    start = time.monotonic()
    _wait_healthy(c, admin)
    c.times["healthy"] = time.monotonic() - start

    def as_(who: str, *args: str) -> str:
        return cli(*args, "--profile", str(admin / "profiles-host" / f"{who}.toml"))

    # A policy and a key, each approved by two approvers; the key is made by DKG
    # among the three containers and activated at the next epoch.
    ref = _ref(as_("ops", "policy", "set", "release", "--requesters", "app1",
                   "--approvers", "alice,bob,carol", "--k", "2"))  # fmt: skip
    as_("alice", "approve", ref, "--yes")
    as_("bob", "approve", ref, "--yes")
    ref = _ref(as_("ops", "keys", "create", "release-signing", "--policy", "release"))
    as_("alice", "approve", ref, "--yes")
    as_("bob", "approve", ref, "--yes")
    deadline = time.monotonic() + 60
    while (state := json.loads(as_("audit", "requests", "show", ref, "--json"))["state"]) not in (
        "executed",
        "failed",
    ):
        assert time.monotonic() < deadline, f"key creation still {state}\n{c.logs()}"
        time.sleep(0.2)
    assert state == "executed", f"key creation {state}\n{c.logs()}"
    as_("ops", "epoch", "advance")
    pem = as_("audit", "keys", "show", "release-signing", "--pem")
    public_key = load_pem_public_key(pem.encode())
    assert isinstance(public_key, Ed25519PublicKey)

    # A sign request, approved, signed by a quorum of the containers.
    message = b"release 1.0 built in containers"
    sign = ("sign", "--key", "release-signing", "--message-hex", message.hex(),
            "--context", "compose-test")  # fmt: skip
    ref = _ref(as_("app1", *sign))
    as_("alice", "approve", ref, "--yes")
    as_("bob", "approve", ref, "--yes")
    out = tmp_path / "sig.bin"
    request_id = ref.split(":", 1)[1]
    as_("app1", *sign, "--request-id", request_id, "--wait", "--timeout", "60", "--out", str(out))
    public_key.verify(out.read_bytes(), message)  # raises InvalidSignature if wrong

    # Inside the compose network the admin volume's own profiles and cluster.json
    # address the nodes by service name.
    inside = ("podman", "run", "--rm", "--network", f"{c.project}_default",
              "-v", f"{c.project}_admin:/admin:ro", IMAGE)  # fmt: skip
    status = json.loads(c.run(*inside, "custody", "cluster", "status", "--dir", "/admin", "--json"))
    assert [row["name"] for row in status] == list(NODES)
    assert all(row["reachable"] and row["status"]["health"] == "ok" for row in status), status
    c.times["flow"] = time.monotonic() - start
    print(f"\ncompose test phases (s): {json.dumps({k: round(v, 1) for k, v in c.times.items()})}")
