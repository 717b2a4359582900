"""`make demo`: a real local cluster doing real work, every step through the CLI.

Three node processes (threshold 2), each with its own SoftHSM2 token, over
loopback mTLS: a policy approved by the governance quorum, a signing key made
by DKG and approved by two approvers, a signature requested by `app1`,
approved by two approvers and checked by `openssl pkeyutl -verify`, a node
SIGKILLed and a second signature made by the other two, the node restarted and
caught up; then envelope encryption: a key-encryption key by DKG, a file
encrypted locally and decrypted with a 2-of-3 threshold unwrap after two
approvals, the key rotated and the envelope rewrapped to the new version; a
revoked version refused; the audit chain exported and verified offline against
the checkpoints the cluster-audit key (made by DKG at bootstrap) signed; the
cluster stopped.

Evidence for anyone to re-check with their own tools goes to `demo-out/`:
the group public key (PEM), the messages, the signatures, the audit export with
its checkpoints file and the audit key (PEM), and the cluster status (JSON).
No share, nonce, PIN or private key is printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from node.cli import main as custody

OUT = Path("demo-out")
CLUSTER = OUT / "cluster"
KEY = "release-signing"
KEK = "data-kek"
AUDIT_KEY = "cluster-audit"  # the reserved key the cluster signs its audit checkpoints with
POLICY = "release"


class DemoFailed(Exception):
    pass


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(*argv: str, profile: str | None = None, quiet: bool = False) -> str:
    """One `custody` command in process; its stdout (echoed unless `quiet`)."""
    args = list(argv)
    if profile is not None:
        args += ["--profile", str(CLUSTER / "profiles" / f"{profile}.toml")]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = custody(args)
    out = buf.getvalue()
    shown = " ".join(a for a in argv)
    print(f"$ custody {shown}{f'   (as {profile})' if profile else ''}")
    if not quiet and out.strip():
        print("  " + out.strip().replace("\n", "\n  "))
    if code != 0:
        raise DemoFailed(f"`custody {shown}` exited {code}")
    return out


def request_ref(out: str) -> str:
    m = re.search(r"\b([a-z][a-z0-9_-]{0,31}:[A-Za-z0-9][A-Za-z0-9._@-]*)", out)
    if not m:
        raise DemoFailed(f"no request reference in {out!r}")
    return m.group(1)


def approve(ref: str, *who: str) -> None:
    for name in who:
        run("approve", ref, "--yes", profile=name)


def wait_key_version(
    version: int, state: str, timeout: float = 30, *, key: str = KEY,
    with_public_key: bool = False,
) -> dict:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        k = json.loads(run("keys", "show", key, "--json", profile="audit", quiet=True))
        v = [x for x in k["versions"] if x["version"] == version]
        if v and v[0]["state"] == state and (v[0]["group_public_key"] or not with_public_key):
            return v[0]
        if v and v[0]["state"] in ("destroyed", "revoked"):
            raise DemoFailed(f"version {version} is {v[0]['state']}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"version {version} not {state} after {timeout:g}s: {v}")
        time.sleep(0.2)


def sign_and_verify(n: int, pem: Path) -> None:
    msg = OUT / f"message-{n}.txt"
    msg.write_text(f"release {n}: artifact sha256 {os.urandom(16).hex()}\n")
    out = run("sign", "--key", KEY, "--message-file", str(msg), "--context", f"release-{n}",
              profile="app1")  # fmt: skip
    ref = request_ref(out)
    approve(ref, "alice", "bob")
    sig = OUT / f"signature-{n}.bin"
    run("sign", "--key", KEY, "--message-file", str(msg), "--context", f"release-{n}",
        "--request-id", ref.split(":", 1)[1], "--wait", "--timeout", "30", "--out", str(sig),
        profile="app1")  # fmt: skip
    proc = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pem), "-rawin",
         "-in", str(msg), "-sigfile", str(sig)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(f"$ openssl pkeyutl -verify -pubin -inkey {pem} -rawin -in {msg} -sigfile {sig}")
    print(f"  {(proc.stdout + proc.stderr).strip()}")
    if proc.returncode != 0:
        raise DemoFailed("openssl did not verify the signature")


def advance_epoch() -> None:
    """Members honour an operator's nudge at most once per `epoch_min_interval_s`
    (1 s by default): try again shortly if this one came too soon."""
    for _ in range(6):
        try:
            run("epoch", "advance", profile="ops")
            return
        except DemoFailed:
            time.sleep(0.5)
    raise DemoFailed("the epoch did not advance")


def decrypt(envelope: Path, out: Path, context: str, verb: str = "decrypt") -> None:
    """Submit the decrypt request, have two approvers approve it, gather 2 partials."""
    ref = request_ref(run(verb, "--in", str(envelope), "--out", str(out), "--context", context,
                          profile="app1"))  # fmt: skip
    approve(ref, "alice", "bob")
    run(verb, "--in", str(envelope), "--out", str(out), "--context", context,
        "--request-id", ref.split(":", 1)[1], "--wait", "--timeout", "30", profile="app1")


def envelope_steps() -> None:
    step("8. envelope encryption: a key-encryption key by DKG; a file encrypted locally")
    out = run("policy", "set", "vault", "--requesters", "app1", "--operations", "decrypt",
              "--approvers", "alice,bob,carol", "--k", "2", profile="ops")  # fmt: skip
    approve(request_ref(out), "alice", "bob")
    out = run("keys", "create", KEK, "--purpose", "encrypt", "--policy", "vault", profile="ops")
    approve(request_ref(out), "alice", "bob")
    wait_key_version(1, "pending", key=KEK, with_public_key=True)
    advance_epoch()
    wait_key_version(1, "active", key=KEK)
    plain = OUT / "payroll.csv"
    plain.write_text("name,amount\nalice,100\nbob,200\n")
    env = OUT / "payroll.csv.env"
    run("encrypt", "--key", KEK, "--context", "payroll-2026", "--in", str(plain),
        "--out", str(env), profile="app1")  # fmt: skip
    step("9. decrypt: approved by two, unwrapped from 2 of 3 partials (DLEQ-checked)")
    back = OUT / "payroll.decrypted.csv"
    decrypt(env, back, "payroll-2026")
    if back.read_bytes() != plain.read_bytes():
        raise DemoFailed("the decrypted file differs from the original")
    print("  decrypted file is identical to the original")
    step("10. rotate the key-encryption key (DKG for v2), then rewrap the envelope to v2")
    out = run("keys", "rotate", KEK, profile="ops")
    approve(request_ref(out), "alice", "bob")
    wait_key_version(2, "pending", key=KEK, with_public_key=True)
    advance_epoch()
    wait_key_version(2, "active", key=KEK)
    env2 = OUT / "payroll.csv.v2.env"
    decrypt(env, env2, "payroll-2026", verb="rewrap")
    back2 = OUT / "payroll.decrypted-v2.csv"
    decrypt(env2, back2, "payroll-2026")
    if back2.read_bytes() != plain.read_bytes():
        raise DemoFailed("the rewrapped envelope does not decrypt to the original")
    print("  the rewrapped envelope (payload untouched) decrypts under version 2")


def audit_steps() -> None:
    """Pin the cluster-audit key's public key (PEM), export the chain, and verify chain
    and checkpoints offline with it (the leader signs a checkpoint every 64 records:
    export again until one is in)."""
    pem = OUT / "audit-key.pem"
    pem.write_text(run("keys", "show", AUDIT_KEY, "--pem", profile="audit", quiet=True))
    export = OUT / "audit.msgpack"
    deadline = time.monotonic() + 30
    while True:
        run("audit", "export", "--out", str(export), profile="audit", quiet=True)
        report = json.loads(run("audit", "verify", "--in", str(export), "--public-key",
                                str(pem), "--json", quiet=True))  # fmt: skip
        if report["checkpoints"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    run("audit", "tail", "-n", "4", profile="audit")
    run("audit", "verify", "--in", str(export), "--public-key", str(pem))
    if not report["ok"] or not any(c["ok"] for c in report["checkpoints"]):
        raise DemoFailed("the audit export did not verify against a signed checkpoint")


def node_pid(name: str) -> int:
    return int((CLUSTER / name / "node.pid").read_text().strip())


def leader() -> str:
    st = json.loads(run("cluster", "status", "--dir", str(CLUSTER), "--json", quiet=True))
    for row in st:
        if (row.get("status") or {}).get("role") == "leader":
            return row["name"]
    raise DemoFailed("no leader")


def main() -> int:
    started = time.monotonic()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    try:
        step("1. cluster init: PKI, one SoftHSM2 token per node, configs, signed bootstrap")
        run("cluster", "init", "--dir", str(CLUSTER), "--nodes", "3", "--threshold", "2",
            "--approvers", "alice,bob,carol", "--clients", "app1", "--operators", "ops",
            "--auditors", "audit")  # fmt: skip
        step("2. cluster up: three node processes, Raft over loopback mTLS")
        run("cluster", "up", "--dir", str(CLUSTER))
        step("3. a policy: app1 may sign with keys under it, 2 of alice/bob/carol approve")
        out = run("policy", "set", POLICY, "--requesters", "app1", "--operations", "sign",
                  "--approvers", "alice,bob,carol", "--k", "2", profile="ops")  # fmt: skip
        approve(request_ref(out), "alice", "bob")
        step("4. a signing key by DKG among the three members (the key never exists whole)")
        out = run("keys", "create", KEY, "--policy", POLICY, profile="ops")
        approve(request_ref(out), "alice", "bob")
        wait_key_version(1, "pending", with_public_key=True)
        advance_epoch()
        wait_key_version(1, "active")
        run("keys", "show", KEY, profile="ops")
        pem = OUT / "group-public-key.pem"
        pem.write_text(run("keys", "show", KEY, "--pem", profile="ops", quiet=True))
        step("5. app1 asks for a signature; alice and bob approve; the cluster signs")
        sign_and_verify(1, pem)
        victim = leader()
        step(f"6. SIGKILL {victim} (the leader); the other two sign alone")
        os.kill(node_pid(victim), signal.SIGKILL)
        print(f"$ kill -9 {node_pid(victim)}   ({victim})")
        sign_and_verify(2, pem)
        step(f"7. restart {victim}: it rejoins from its data directory and token and catches up")
        run("cluster", "up", "--dir", str(CLUSTER))
        deadline = time.monotonic() + 30
        while True:
            st = json.loads(run("cluster", "status", "--dir", str(CLUSTER), "--json", quiet=True))
            applied = {r["name"]: (r.get("status") or {}).get("applied") for r in st}
            if len(set(applied.values())) == 1 and None not in applied.values():
                break
            if time.monotonic() > deadline:
                raise DemoFailed(f"{victim} did not catch up: {applied}")
            time.sleep(0.3)
        run("cluster", "status", "--dir", str(CLUSTER))
        (OUT / "status.json").write_text(json.dumps(st, indent=2) + "\n")
        envelope_steps()
        step("11. revoke the signing key's version 1: the next sign request is refused")
        out = run("keys", "revoke", KEY, "--version", "1", profile="ops")
        approve(request_ref(out), "alice", "bob")
        refused = custody(["sign", "--key", KEY, "--message-hex", "00",
                           "--profile", str(CLUSTER / "profiles" / "app1.toml")])  # fmt: skip
        print(f"$ custody sign --key {KEY} --message-hex 00   (as app1)  -> exit {refused}")
        if refused == 0:
            raise DemoFailed("a revoked version still accepted a sign request")
        step("12. the audit chain, exported and verified offline against the audit key")
        audit_steps()
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            run("cluster", "logs", "--dir", str(CLUSTER), "-n", "15")
        return 1
    finally:
        step("13. cluster down")
        with contextlib.suppress(Exception):
            run("cluster", "down", "--dir", str(CLUSTER))
    print(f"\ndemo complete: all checks passed in {time.monotonic() - started:.1f} s; "
          f"evidence in {OUT}/")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
