"""``custody pki ...`` end to end: in-process via ``main`` and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import main
from node.pki import load_pki, verify_pki

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--nodes", "3",
    "--approvers", "alice,bob,carol",
    "--clients", "app1",
    "--operators", "ops",
    "--auditors", "audit",
]  # fmt: skip


def _init(root: Path, *extra: str) -> list[str]:
    return ["pki", "init", "--dir", str(root), *ARGS, *extra]


def test_init_show_verify_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root)) == 0
    assert "created PKI" in capsys.readouterr().out
    assert main(_init(root)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(_init(root, "--clients", "app2")) == 0
    assert "issued 1 new identity" in capsys.readouterr().out and "app2" in str(
        load_pki(root).manifest.principal("app2")
    )
    assert main(["pki", "show", "--dir", str(root)]) == 0
    shown = capsys.readouterr().out
    assert "node-3" in shown and "ops       operator  approval key" in shown
    assert main(["pki", "verify", "--dir", str(root)]) == 0
    assert capsys.readouterr().out.startswith("ok: CA, 3 nodes, 7 principals")


def test_verify_fails_on_tampering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root)) == 0
    (root / "nodes/node-1/tls.key").chmod(0o644)
    capsys.readouterr()
    assert main(["pki", "verify", "--dir", str(root)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root)) == 0
    fingerprint = load_pki(root).manifest.ca_sha256
    assert main(["pki", "init", "--dir", str(root), "--nodes", "2"]) == 2
    err = capsys.readouterr().err
    assert "custody: error:" in err and "--force" in err
    assert load_pki(root).manifest.ca_sha256 == fingerprint
    assert main(["pki", "init", "--dir", str(root), "--nodes", "2", "--force"]) == 0
    assert load_pki(root).manifest.ca_sha256 != fingerprint


def test_offline_ca_key_flag(tmp_path: Path) -> None:
    root, key = tmp_path / "pki", tmp_path / "offline" / "ca.key"
    assert main(_init(root, "--ca-key", str(key))) == 0
    assert key.exists() and not (root / "ca/ca.key").exists()
    assert main(_init(root, "--clients", "late")) == 2  # needs the key
    assert main(_init(root, "--clients", "late", "--ca-key", str(key))) == 0
    assert main(["pki", "verify", "--dir", str(root), "--ca-key", str(key)]) == 0


def test_subprocess_python_m_node_cli(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            *_init(root, "--node-hosts", "127.0.0.1+localhost,::1,n3.example"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "created PKI" in done.stdout
    doc = json.loads((root / "pki.json").read_text())
    assert [n["hosts"] for n in doc["nodes"]] == [
        ["127.0.0.1", "localhost"],
        ["::1"],
        ["n3.example"],
    ]
    assert verify_pki(load_pki(root)) == []
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "pki",
            "init",
            "--dir",
            str(tmp_path / "x"),
            "--nodes",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "node count" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "node count"),
        (["--nodes", "16"], "node count"),
        (["--nodes", "three"], "invalid int value"),
        (["--nodes", "3", "--approvers", "Alice"], "invalid principal name"),
        (["--nodes", "3", "--approvers", "a b"], "invalid principal name"),
        (["--nodes", "3", "--approvers", "alice,,bob"], "empty name"),
        (["--nodes", "3", "--approvers", "node-1"], "reserved"),
        (["--nodes", "3", "--approvers", "x" * 33], "invalid principal name"),
        (["--nodes", "3", "--approvers", "alice", "--clients", "alice"], "given twice"),
        (["--nodes", "3", "--approvers", "alice,alice"], "given twice"),
        (["--nodes", "2", "--node-hosts", "10.0.0.1"], "1 entries for 2 nodes"),
        (["--nodes", "1", "--node-hosts", "*.example"], "invalid host"),
        (["--nodes", "1", "--node-hosts", "a+"], "empty host"),
        (["--nodes", "1", "--leaf-days", "0"], "leaf validity"),
        (["--nodes", "1", "--ca-days", "10", "--leaf-days", "20"], "cannot exceed"),
        (["--nodes", "1", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    root = tmp_path / "pki"
    assert main(["pki", "init", "--dir", str(root), *args]) == 2
    assert message in capsys.readouterr().err
    assert not root.exists()


def test_missing_dir_argument_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["pki", "init", "--nodes", "3"]) == 2
    assert "--dir" in capsys.readouterr().err
    assert main(["pki", "init", "--help"]) == 0
    assert "--node-hosts" in capsys.readouterr().out
    assert main([]) == 2


def test_show_without_pki_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pki", "show", "--dir", str(tmp_path)]) == 2
    assert "no pki.json" in capsys.readouterr().err


def test_cli_modules_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A later ``node/cli/<name>.py`` adds a subcommand without editing node/cli/__init__.py."""
    import node.cli as cli_pkg

    plugin = tmp_path / "echo_test_plugin.py"
    plugin.write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('echo-test')\n"
        "    p.add_argument('word')\n"
        "    p.set_defaults(func=lambda a: print(a.word) or 7)\n"
    )
    monkeypatch.setattr(cli_pkg, "__path__", [*cli_pkg.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "node.cli.echo_test_plugin", raising=False)
    assert main(["echo-test", "hi"]) == 7
    assert capsys.readouterr().out == "hi\n"
    sys.modules.pop("node.cli.echo_test_plugin", None)


def test_ca_key_out_alias(tmp_path: Path) -> None:
    key = tmp_path / "offline.key"
    assert main(_init(tmp_path / "pki", "--ca-key-out", str(key))) == 0
    assert key.exists() and not (tmp_path / "pki/ca/ca.key").exists()


def test_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(_init(target)) == 2
    assert "not a directory" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_show_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root)) == 0
    capsys.readouterr()
    assert main(["pki", "show", "--dir", str(root), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = load_pki(root).manifest
    assert set(doc) == {"ca", "validity_days", "nodes", "principals"}
    assert doc["ca"]["sha256"] == m.ca_sha256 and doc["ca"]["key"] == "ca/ca.key"
    assert doc["ca"]["not_valid_after"].endswith("Z")
    assert doc["validity_days"] == {"ca": m.ca_days, "leaf": m.leaf_days}
    assert doc["nodes"] == [
        {"id": f"node-{i}", "index": i, "hosts": ["127.0.0.1", "localhost"]} for i in (1, 2, 3)
    ]
    roles = {p["name"]: p["role"] for p in doc["principals"]}
    assert roles == {"alice": "approver", "bob": "approver", "carol": "approver",
                     "app1": "client", "ops": "operator", "audit": "auditor"}  # fmt: skip
    keys = {p["name"]: p["approval_public_key_hex"] for p in doc["principals"]}
    assert keys["audit"] is None
    assert keys["app1"] == m.principal("app1").approval_public_key_hex  # clients sign too
    assert len(keys["app1"]) == 64
    assert keys["alice"] == m.principal("alice").approval_public_key_hex
    assert "PRIVATE" not in json.dumps(doc)  # public values only


def test_show_json_offline_ca_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root, "--ca-key", str(tmp_path / "offline.key"))) == 0
    capsys.readouterr()
    assert main(["pki", "show", "--dir", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ca"]["key"] is None


def test_verify_json_ok_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "pki"
    assert main(_init(root)) == 0
    capsys.readouterr()
    assert main(["pki", "verify", "--dir", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "problems": []}
    (root / "nodes/node-1/tls.key").chmod(0o644)
    assert main(["pki", "verify", "--dir", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["problems"]
    assert all(isinstance(p, str) for p in doc["problems"])
    assert any("node-1" in p for p in doc["problems"])


def test_json_unusable_dir_keeps_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for action in ("show", "verify"):
        assert main(["pki", action, "--dir", str(tmp_path), "--json"]) == 2
        out = capsys.readouterr()
        assert out.out == "" and "no pki.json" in out.err
