"""`make demo` end to end: a real 3-node cluster, its evidence re-checked here with
other tools, and nothing left running or leaked into the logs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from node import demo
from node.state import verify_export

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text()


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _check_audit_checkpoints(ev: Path) -> None:
    """The checkpoints file holds a checkpoint whose signature verifies, under the audit
    key's PEM the demo pinned, over the message rebuilt here from docs/audit.md."""
    raw = msgpack.unpackb((ev / "audit.msgpack.checkpoints").read_bytes(), raw=False,
                         strict_map_key=False)  # keys: {audit key version: ...}
    key = load_pem_public_key((ev / "audit-key.pem").read_bytes())
    assert raw["checkpoints"], "the demo exported no audit checkpoint"
    for seq, head, epoch, _version, signature in raw["checkpoints"]:
        body = (_lp(b"custody-cluster/v1/audit-checkpoint") + _lp(raw["cluster_id"].encode())
                + seq.to_bytes(8, "big") + _lp(head) + epoch.to_bytes(8, "big"))  # fmt: skip
        key.verify(signature, hashlib.sha512(body).digest())  # raises if it does not verify


def test_make_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "demo complete: all checks passed" in out
    ev = tmp_path / "demo-out"
    pem = ev / "group-public-key.pem"
    key = load_pem_public_key(pem.read_bytes())
    for n in (1, 2):
        message = (ev / f"message-{n}.txt").read_bytes()
        signature = (ev / f"signature-{n}.bin").read_bytes()
        key.verify(signature, message)  # cryptography, independent of the cluster
        proc = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
             "-in", str(ev / f"message-{n}.txt"), "-sigfile", str(ev / f"signature-{n}.bin")],
            capture_output=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    verify_export((ev / "audit.msgpack").read_bytes())
    _check_audit_checkpoints(ev)
    status = json.loads((ev / "status.json").read_text())
    assert {row["name"] for row in status} == {"node-1", "node-2", "node-3"}
    assert len({row["status"]["applied"] for row in status}) == 1  # the restarted node caught up
    cluster = ev / "cluster"
    pids = [int(p.read_text()) for p in cluster.glob("node-*/node.pid")]
    assert not pids or not any(_alive(p) for p in pids), "a node process was left behind"
    # Nothing secret in the node logs: no PIN, no message that was signed.
    logs = b"".join(p.read_bytes() for p in cluster.glob("node-*/node.log"))
    assert b"api listening" in logs
    for pin in cluster.glob("node-*/hsm/*.pin"):
        assert pin.read_text().strip().encode() not in logs
    for n in (1, 2):
        assert (ev / f"message-{n}.txt").read_bytes().strip() not in logs
    # Envelope encryption: both decryptions gave the original back; the plaintext never
    # reached a node's log or the audit chain.
    plain = (ev / "payroll.csv").read_bytes()
    assert (ev / "payroll.decrypted.csv").read_bytes() == plain
    assert (ev / "payroll.decrypted-v2.csv").read_bytes() == plain
    for line in plain.splitlines()[1:]:
        assert line not in logs
        assert line not in (ev / "audit.msgpack").read_bytes()
