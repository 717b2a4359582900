"""A real local cluster for tests: `custody cluster init/up/down` in a temporary
directory, node processes with their own SoftHSM2 tokens, loopback mTLS.

Tests drive it through the CLI (in process) and through raw HTTPS calls made
with any identity's certificate (a principal's or a node's), so that they can
also play a malicious insider.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node import tlsctx
from node.cli import main as custody

REF = re.compile(r"\b([a-z][a-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9._@-]*)")


class CliFailed(AssertionError):
    pass


class Live:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = json.loads((root / "cluster.json").read_text())
        self.api = {n["name"]: n["api"] for n in self.cluster["nodes"]}

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls, root: Path, *, schedule: dict[str, float] | None = None, nodes: int = 3,
        raft: dict[str, int] | None = None,
    ) -> Live:  # fmt: skip
        cli("cluster", "init", "--dir", str(root), "--nodes", str(nodes), "--threshold", "2",
            "--approvers", "alice,bob,carol", "--clients", "app1,app2", "--operators", "ops",
            "--auditors", "audit")  # fmt: skip
        for i in range(1, nodes + 1):
            toml = root / f"node-{i}" / "node.toml"
            text = toml.read_text()
            for key, value in (schedule or {}).items():
                text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
                if n == 0:
                    text = text.replace("[schedule]\n", f"[schedule]\n{key} = {value}\n")
            for key, value in (raft or {}).items():
                text = text.replace("[raft]\n", f"[raft]\n{key} = {value}\n")
            toml.write_text(text)
        return cls(root)

    def up(self) -> None:
        cli("cluster", "up", "--dir", str(self.root))

    def down(self) -> None:
        with contextlib.suppress(CliFailed):
            cli("cluster", "down", "--dir", str(self.root))

    def pid(self, node: str) -> int | None:
        f = self.root / node / "node.pid"
        return int(f.read_text()) if f.exists() else None

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        pid = self.pid(node)
        assert pid is not None
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)

    def status(self) -> list[dict[str, Any]]:
        """Every node's status row (a node that is down has `"status": None`)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            custody(["cluster", "status", "--dir", str(self.root), "--json"])  # 1 if one is down
        return json.loads(out.getvalue())

    def leader(self, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for row in self.status():
                st = row.get("status") or {}
                if st.get("role") == "leader" and st.get("health") == "ok":
                    return row["name"]
            if time.monotonic() > deadline:
                raise AssertionError("no leader")
            time.sleep(0.2)

    def profile(self, name: str) -> str:
        return str(self.root / "profiles" / f"{name}.toml")

    # ------------------------------------------------------------ CLI

    def cli(self, *args: str, who: str | None = None) -> str:
        extra = ["--profile", self.profile(who)] if who else []
        return cli(*args, *extra)

    def submit_ref(self, *args: str, who: str) -> str:
        m = REF.search(self.cli(*args, who=who))
        assert m, args
        return m.group(1)

    def approve(self, ref: str, *who: str) -> None:
        for name in who:
            self.cli("approve", ref, "--yes", who=name)

    def policy(self, policy_id: str = "p1", requesters: str = "app1") -> None:
        ref = self.submit_ref("policy", "set", policy_id, "--requesters", requesters,
                              "--approvers", "alice,bob,carol", "--k", "2", who="ops")  # fmt: skip
        self.approve(ref, "alice", "bob")

    def key(self, key_id: str, policy_id: str = "p1", *, activate: bool = True) -> str:
        """Create a key by DKG (two approvals) and activate it; its create request ref."""
        ref = self.submit_ref("keys", "create", key_id, "--policy", policy_id, who="ops")
        self.approve(ref, "alice", "bob")
        req = self.wait_request(ref, timeout=30)
        assert req["state"] == "executed", req
        if activate:
            self.cli("epoch", "advance", who="ops")
            assert self.key_view(key_id)["primary"] >= 1
        return ref

    def key_view(self, key_id: str) -> dict[str, Any]:
        return json.loads(self.cli("keys", "show", key_id, "--json", who="audit"))

    def group_key(self, key_id: str) -> Ed25519PublicKey:
        k = self.key_view(key_id)
        v = next(x for x in k["versions"] if x["version"] == k["primary"])
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["group_public_key"]))

    def sign_needing(self, member: str, key_id: str, message: bytes) -> None:
        """Sign `message` and verify it under the key's group key while another member,
        not the leader, is down: with t = 2 of 3 the quorum left needs `member`."""
        other = next(n for n in self.api if n not in (member, self.leader()))
        self.kill(other)
        try:
            self.group_key(key_id).verify(self.sign(key_id, message, timeout=60), message)
        finally:
            self.up()

    def request(self, ref: str, who: str = "audit") -> dict[str, Any]:
        return json.loads(self.cli("requests", "show", ref, "--json", who=who))

    def wait_request(self, ref: str, timeout: float = 20, who: str = "audit") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.request(ref, who)
            if r["state"] in ("executed", "failed") or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def sign_request(self, key_id: str, message: bytes, who: str = "app1") -> str:
        return self.submit_ref("sign", "--key", key_id, "--message-hex", message.hex(), who=who)

    def sign(self, key_id: str, message: bytes, timeout: float = 30) -> bytes:
        ref = self.sign_request(key_id, message)
        self.approve(ref, "alice", "bob")
        r = self.wait_request(ref, timeout)
        assert r["state"] == "executed", r
        return bytes.fromhex(r["signature"])

    def audit(self) -> list[dict[str, Any]]:
        """The whole audit chain, from the first node that answers."""
        for node in sorted(self.api):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, out = asyncio.run(
                    self.http("audit", "GET", node, "/v1/audit?limit=1000&after=-1")
                )
                if status == 200:
                    return out["records"]
        raise AssertionError("no node served the audit chain")

    # ------------------------------------------------------------ raw HTTPS

    def creds(self, who: str) -> tuple[Path, Path, Path]:
        pki = self.root / "pki"
        base = pki / ("nodes" if who.startswith("node-") else "principals") / who
        return pki / "ca" / "ca.crt", base / "tls.crt", base / "tls.key"

    async def http(
        self, who: str, method: str, node: str, path: str, *, json_body: Any = None,
        data: bytes | None = None, timeout: float = 10,
    ) -> tuple[int, Any]:  # fmt: skip
        """One HTTPS call to `node` with `who`'s certificate: (status, JSON or bytes)."""
        ctx = tlsctx.client_context(*self.creds(who))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as s, s.request(method, f"https://{self.api[node]}{path}", json=json_body,
                          data=data) as r:  # fmt: skip
            body = await r.read()
            try:
                return r.status, json.loads(body)
            except ValueError:
                return r.status, body


@contextlib.contextmanager
def running(
    root: Path, *, schedule: dict[str, float] | None = None, raft: dict[str, int] | None = None,
    key: str | None = "k1", more_keys: tuple[str, ...] = (),
) -> Iterator[Live]:  # fmt: skip
    """A started cluster with policy `p1` (requester app1) and, unless `key` is None, a
    signing key made by DKG and active (and `more_keys`); stopped afterwards, no node
    process left."""
    c = Live.init(root, schedule=schedule, raft=raft)
    c.up()
    try:
        c.policy("p1", requesters="app1")
        for k in ((key,) if key is not None else ()) + more_keys:
            c.key(k)
        yield c
    finally:
        c.down()
        left = [n for n in c.api if c.pid(n) is not None]
        assert not left, f"{left} left behind"


# Epochs move only when asked; a DKG or a stalled recovery run is reported after 15 s.
QUIET_SCHEDULE = {"epoch_min_interval_s": 0.0, "epoch_interval_s": 0.0, "dkg_timeout_s": 15.0}


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    """Poll `check()` until it returns something true (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def cli(*args: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = custody(list(args))
    if code != 0:
        raise CliFailed(f"custody {' '.join(args)} -> {code}: {err.getvalue()[-800:]}")
    return out.getvalue()


def custody_process(*args: str | Path) -> str:
    """`custody ARGS` as its own process (as an operator or an officer runs it on their
    own machine: a process loads the SoftHSM2 module with one node's configuration)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"custody {' '.join(map(str, args))} -> {proc.returncode}: "
                             f"{proc.stderr[-1500:]}")  # fmt: skip
    return proc.stdout


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_SLOT_SCRIPT = """
import json, sys
from node.server.config import load_config
from node.server.runtime import open_slot
slot = open_slot(load_config(sys.argv[1]))
try:
    shares = slot.list_shares()
    if sys.argv[2] == "drop":
        for sid in shares:
            slot.destroy_share(sid)
    print(json.dumps([[s.key_id, s.version, s.generation] for s in shares]))
finally:
    slot.close()
"""


def token_shares(root: Path, node: str, *, drop: bool = False) -> list[tuple[str, int, int]]:
    """The share objects in a node's token, (key id, version, generation), sorted; with
    `drop`, erase them all (the identity key stays). In a child process: a process loads
    the SoftHSM2 module with one node's configuration only."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SLOT_SCRIPT, str(root / node / "node.toml"),
         "drop" if drop else "list"],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"reading {node}'s token failed: {proc.stderr[-500:]}")
    return sorted((k, v, g) for k, v, g in json.loads(proc.stdout))


def wait_dead(pid: int, timeout: float = 60.0) -> None:
    """Wait until process `pid` (a node that is to exit by itself, e.g. at a fault
    point) is gone, reaping it if it is our child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} did not exit")
