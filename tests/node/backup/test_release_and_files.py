"""Offline officer releases, officer key files, snapshot files, the running-node check,
and the `custody backup` commands that need no token (in process)."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from node.backup import bundle as bmod
from node.backup import officers
from node.backup.formats import BackupError, canonical_json
from node.backup.node_ops import node_running
from node.backup.release import (
    RESTORE_KEY_FILE,
    load_request,
    make_release,
    make_request,
    open_releases,
)
from node.backup.snapshot import parse_snapshot_file, read_newest
from node.cli import main as custody
from tests.node.backup.conftest import CLUSTER, GENESIS, INDEX, NODE, Env, snapshot_file


def make(env: Env, out: Path | None = None) -> Path:
    out = out or env.tmp / "bundle"
    bmod.create_bundle(out, slot=env.slot, cluster_id=CLUSTER, genesis=GENESIS, node=NODE,
                       index=INDEX, snapshot=env.snapshot, officers=env.publics, k=2)  # fmt: skip
    return out


def release(env: Env, b: bmod.Bundle, req: Path, who: int, out: Path) -> Path:
    doc = make_release(b, env.officers[who], load_request(req, b))
    out.write_bytes(canonical_json(doc))
    return out


# ------------------------------------------------------------------ releases


def test_releases_to_a_restore_key_rebuild_the_same_key(env: Env) -> None:
    b = bmod.inspect(make(env))
    req, key_file = make_request(b, env.tmp / "req")
    assert key_file.stat().st_mode & 0o777 == 0o600
    rels = [release(env, b, req, i, env.tmp / f"r{i}.json") for i in (0, 2)]
    pieces = open_releases(b, key_file, rels)
    assert sorted(pieces) == ["alice-o", "carol-o"]
    key, bad = bmod.combine(b, pieces)
    direct, _ = bmod.unlock(b, [env.officers[1], env.officers[2]])
    assert key == direct and bad == []
    # A release carries no piece in the clear and no officer secret.
    text = rels[0].read_text()
    assert env.officers[0].x25519_private.private_bytes_raw().hex() not in text


def test_a_release_opens_for_its_request_and_bundle_only(env: Env) -> None:
    b = bmod.inspect(make(env))
    req1, key1 = make_request(b, env.tmp / "req1")
    req2, _ = make_request(b, env.tmp / "req2")
    r1 = release(env, b, req1, 0, env.tmp / "r1.json")
    r2 = release(env, b, req2, 1, env.tmp / "r2.json")
    with pytest.raises(BackupError, match="answers another restore request"):
        open_releases(b, key1, [r1, r2])
    with pytest.raises(BackupError, match="two releases from officer"):
        open_releases(b, key1, [r1, r1])
    other = bmod.inspect(make(env, env.tmp / "other"))
    with pytest.raises(BackupError, match="another bundle"):
        load_request(req1, other)
    with pytest.raises(BackupError, match="made for another bundle"):
        open_releases(other, key1, [r1])
    # Tampering: the box, the officer's name, the signature.
    doc = json.loads(r1.read_text())
    for field, value, message in [
        ("box", doc["box"][:-2] + ("00" if doc["box"][-2:] != "00" else "01"), "signature"),
        ("officer", "bob-o", "signature|wrong position"),
        ("signature", "00" * 64, "signature"),
    ]:
        bad = env.tmp / f"bad-{field}.json"
        bad.write_text(json.dumps({**doc, field: value}))
        with pytest.raises(BackupError, match=message):
            open_releases(b, key1, [bad])


def test_a_forged_release_signed_by_the_right_officer_but_for_another_key_fails(env: Env) -> None:
    """An officer cannot be impersonated by someone with only the public files."""
    b = bmod.inspect(make(env))
    req, _ = make_request(b, env.tmp / "req")
    mallory = officers.OfficerKey(env.officers[0].officer, officers.generate("x").x25519_private,
                                  officers.generate("x").ed25519_private)  # fmt: skip
    with pytest.raises(BackupError, match="does not open"):
        make_release(b, mallory, load_request(req, b))
    assert (env.tmp / "req" / RESTORE_KEY_FILE).exists()


# ------------------------------------------------------------------ officer files


def test_officer_key_files(tmp_path: Path) -> None:
    key = officers.generate("dora")
    public, private = officers.write_keys(key, tmp_path)
    assert private.stat().st_mode & 0o777 == 0o600
    assert officers.load_public(public) == key.officer
    assert officers.load_private(private).officer == key.officer
    assert "private" in repr(officers.load_private(private))
    with pytest.raises(BackupError, match="already exists"):
        officers.write_keys(key, tmp_path)
    with pytest.raises(BackupError, match="PRIVATE key file"):
        officers.load_public(private)
    private.chmod(0o644)
    with pytest.raises(BackupError, match="chmod 600"):
        officers.load_private(private)
    private.chmod(0o600)
    doc = json.loads(private.read_text())
    doc["x25519"] = officers.generate("e").officer.x25519.hex()
    private.write_text(json.dumps(doc))
    with pytest.raises(BackupError, match="do not match"):
        officers.load_private(private)
    with pytest.raises(BackupError, match="officer name"):
        officers.generate("../evil")
    (tmp_path / "deep.officer.json").write_bytes(b"[" * 5000)
    with pytest.raises(BackupError, match="not JSON"):
        officers.load_public(tmp_path / "deep.officer.json")
    (tmp_path / "huge.officer.json").write_bytes(b" " * 10_000)
    with pytest.raises(BackupError, match="larger than"):
        officers.load_public(tmp_path / "huge.officer.json")


# ------------------------------------------------------------------ snapshot files


def test_snapshot_files_are_read_like_filestorage_reads_them(env: Env) -> None:
    raw = env.snapshot.raw
    assert parse_snapshot_file(raw) == env.snapshot.snapshot
    with pytest.raises(BackupError, match="checksum"):
        parse_snapshot_file(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(BackupError, match="length mismatch"):
        parse_snapshot_file(raw[:-5])
    with pytest.raises(BackupError, match="magic"):
        parse_snapshot_file(b"X" * len(raw))
    # The newest of several (FileStorage keeps one, but a copy may hold more).
    newer = snapshot_file(env.world, env.tmp / "two", index=80, term=4)
    (env.tmp / "two" / "snap-0000000000000010-0000000000000001.snap").write_bytes(raw)
    assert read_newest(env.tmp / "two") == newer
    empty = env.tmp / "empty"
    empty.mkdir()
    assert read_newest(empty) is None


# ------------------------------------------------------------------ running check


def _cfg(tmp: Path) -> SimpleNamespace:
    config = tmp / "node.toml"
    config.write_text("# test\n")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return SimpleNamespace(path=config, raft_listen=("127.0.0.1", ports[0]),
                           api_listen=("127.0.0.1", ports[1]))  # fmt: skip


def test_a_running_node_is_recognised(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert node_running(cfg) is None
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "node", "run",
                             "--config", str(cfg.path)])  # fmt: skip
    try:
        (tmp_path / "node.pid").write_text(f"{proc.pid}\n")
        assert f"pid {proc.pid}" in (node_running(cfg) or "")
        (tmp_path / "node.pid").unlink()  # no pid file: found by its command line
        assert f"pid {proc.pid}" in (node_running(cfg) or "")
    finally:
        proc.kill()
        proc.wait()
    assert node_running(cfg) is None
    with socket.socket() as s:  # e.g. in a container: only its port shows it runs
        s.bind(cfg.raft_listen)
        s.listen()
        assert "listens on its raft address" in (node_running(cfg) or "")


# ------------------------------------------------------------------ CLI (no token needed)


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = custody(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_keygen_verify_request_release(env: Env) -> None:
    keys = env.tmp / "officers"
    code, out, _ = cli("backup", "officer-keygen", "--out", str(keys), "--name", "erin", "--json")
    assert code == 0 and json.loads(out)["name"] == "erin"
    assert cli("backup", "officer-keygen", "--out", str(keys), "--name", "erin")[0] == 1
    for o in env.officers:
        officers.write_keys(o, keys)
    bundle = make(env)
    code, out, _ = cli("backup", "verify", str(bundle))
    assert code == 0 and "integrity: ok" in out and "authenticity: not checked" in out
    priv = [str(keys / f"{o.officer.name}.officer-key.json") for o in env.officers]
    code, out, err = cli("backup", "verify", str(bundle), "--officer-key", priv[0],
                         "--officer-key", priv[1], "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["authenticity"] == "ok" and doc["shares"] == {"verified": 2}
    code, _, err = cli("backup", "verify", str(bundle), "--officer-key", priv[0])
    assert code == 1 and "needs 2 of 3" in err
    code, out, err = cli("backup", "request", str(bundle), "--out", str(env.tmp / "rq"))
    assert code == 0, err
    req = env.tmp / "rq" / "restore-request.json"
    for i in (1, 2):
        code, out, err = cli("backup", "release", str(bundle), "--officer-key", priv[i], "--to",
                             str(req), "--out", str(env.tmp / f"rel{i}.json"))  # fmt: skip
        assert code == 0, err
    code, out, err = cli("backup", "verify", str(bundle), "--restore-key",
                         str(env.tmp / "rq" / "restore.key"), "--release",
                         str(env.tmp / "rel1.json"), "--release", str(env.tmp / "rel2.json"))
    assert code == 0 and "authenticity: ok" in out and "bob-o, carol-o" in out, err
    # A flipped byte: verify fails with one line, exit status 1.
    blob = bundle / "shares/k1.v1.i1.g0.blob"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    code, _, err = cli("backup", "verify", str(bundle))
    assert code == 1 and "SHA-256 does not match" in err and "Traceback" not in err
