"""The whole cluster is lost (every data directory and every token), and k officers bring
it back (real processes, SoftHSM2 tokens, mTLS; every CLI step as its own process, as the
operators and the officers would run it on their own machines):

members escrow their shares to three officers (2 of 3) -> each node is backed up -> all
nodes and tokens are destroyed -> fresh tokens, the state from the backups (unlocked by
two officers) -> `custody recover request` (governance quorum AND two officers) -> two
officers release their pieces to t = 2 fresh nodes -> each combines its own member's
shares, checks and stores them -> the third member is repaired from those two -> same
group keys, an old signature verifies, an old envelope decrypts, new signatures are made,
one of them by a quorum that needs the repaired member.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from node.backup.snapshot import decode_state, read_newest
from node.server.config import load_config
from node.state.audit_checkpoint import AUDIT_KEY_ID
from tests.node.cluster.harness import QUIET_SCHEDULE, Live, wait_for
from tests.node.cluster.harness import custody_process as custody

pytestmark = pytest.mark.slow

MEMBERS = ("node-1", "node-2", "node-3")
OFFICERS = ("olga", "oscar", "otto")
CTX = "lost-cluster-test"


def officers_view(live: Live) -> dict[str, Any]:
    return json.loads(live.cli("officers", "show", "--json", who="audit"))


def group_keys(live: Live) -> dict[str, str]:
    return {k: next(v["group_public_key"] for v in live.key_view(k)["versions"]
                    if v["version"] == 1) for k in ("k1", "e1")}  # fmt: skip


def test_a_lost_cluster_is_recovered_by_the_officers(tmp_path: Path) -> None:
    root = tmp_path / "c"
    live = Live.init(root, schedule=QUIET_SCHEDULE, raft={"snapshot_every": 16})
    live.up()
    try:
        _run(live, root, tmp_path)
    finally:
        live.down()


def _run(live: Live, root: Path, tmp: Path) -> None:
    keys = tmp / "officers"
    for name in OFFICERS:
        custody("backup", "officer-keygen", "--out", keys, "--name", name)
    pub = [a for n in OFFICERS for a in ("--officer", str(keys / f"{n}.officer.json"))]
    ref = live.submit_ref("officers", "set", *pub, "--k", "2", who="ops")
    live.approve(ref, "alice", "bob")
    for _ in range(8):  # registering officers is always time-locked
        if live.request(ref)["state"] == "executed":
            break
        live.cli("epoch", "advance", who="ops")
    assert live.request(ref)["state"] == "executed"

    ps = live.submit_ref("policy", "set", "p1", "--requesters", "app1", "--operations",
                         "sign,decrypt", "--approvers", "alice,bob,carol", "--k", "2",
                         "--escrow", who="ops")  # fmt: skip
    live.approve(ps, "alice", "bob")
    live.key("k1")
    ek = live.submit_ref("keys", "create", "e1", "--purpose", "encrypt", "--policy", "p1",
                         who="ops")  # fmt: skip
    live.approve(ek, "alice", "bob")
    assert live.wait_request(ek, timeout=30)["state"] == "executed"
    live.cli("epoch", "advance", who="ops")
    # Every member escrows its share of k1 v1, e1 v1 and the cluster's audit key.
    view = wait_for("every member to escrow", lambda: (
        (v := officers_view(live))["escrowed"] == {m: 3 for m in MEMBERS}
        and not any(v["escrow_due"].values()) and v))  # fmt: skip
    assert [o["name"] for o in view["officers"]] == list(OFFICERS) and view["k"] == 2

    before = group_keys(live)
    old_sig = live.sign("k1", b"signed before the disaster")
    plaintext = os.urandom(5000) + b"sealed before the disaster"
    (tmp / "data.bin").write_bytes(plaintext)
    live.cli("encrypt", "--key", "e1", "--context", CTX, "--in", str(tmp / "data.bin"),
             "--out", str(tmp / "data.env"), who="app1")  # fmt: skip

    # Each node's backup (nodes running), once its snapshot holds every member's escrow.
    genesis = load_config(root / "node-1" / "node.toml").genesis

    def escrow_in_snapshots() -> bool:
        for m in MEMBERS:
            snap = read_newest(root / m / "data")
            if snap is None or len(decode_state(snap.snapshot, genesis).escrows) < 9:
                return False
        return True

    for i in range(120):
        if escrow_in_snapshots():
            break
        live.sign_request("k1", f"filler {i}".encode())
    assert escrow_in_snapshots()
    officer_files = ",".join(str(keys / f"{n}.officer.json") for n in OFFICERS)
    for m in MEMBERS:
        custody("backup", "create", "--config", root / m / "node.toml", "--out",
                tmp / f"bundle-{m}", "--k", "2", "--officers", officer_files)  # fmt: skip

    # The disaster: every node, every data directory, every token.
    live.down()
    for m in MEMBERS:
        shutil.rmtree(root / m / "data")
        shutil.rmtree(root / m / "hsm" / "tokens")

    # Fresh tokens; each node's state from its backup, unlocked by two officers.
    for m in MEMBERS:
        custody("node", "provision", "--config", root / m / "node.toml")
        custody("backup", "restore", tmp / f"bundle-{m}", "--config", root / m / "node.toml",
                "--snapshot-only", "--officer-key", keys / "olga.officer-key.json",
                "--officer-key", keys / "otto.officer-key.json")  # fmt: skip
    live.up()  # every node replicates, none is registered: nothing can sign
    specs = [custody("recover", "node-keys", "--config", root / m / "node.toml").strip()
             for m in MEMBERS]  # fmt: skip
    leader = wait_for("a stable leader", lambda: _leader_any(live))
    time.sleep(1.0)
    assert _leader_any(live) == leader  # fresh nodes do not bounce leadership between them

    members = [a for s in specs for a in ("--member", s)]
    rec_ref = live.submit_ref("recover", "request", *members, who="ops")
    live.approve(rec_ref, "alice", "bob")
    assert live.request(rec_ref)["state"] == "approved"  # the approvers alone: not enough
    for name in ("olga", "oscar"):
        custody("recover", "approve", rec_ref, "--officer-key",
                keys / f"{name}.officer-key.json", "--out", tmp / f"{name}.approve.json",
                "--profile", live.profile("audit"))  # fmt: skip
    live.cli("recover", "submit", str(tmp / "olga.approve.json"), who="ops")
    assert live.request(rec_ref)["state"] == "approved"  # one officer: not enough
    live.cli("recover", "submit", str(tmp / "oscar.approve.json"), who="ops")
    assert live.wait_request(rec_ref)["state"] == "executed"

    # The officers release to t = 2 members only; the third is repaired from them.
    for name in ("oscar", "otto"):
        custody("recover", "release", "--officer-key", keys / f"{name}.officer-key.json",
                "--out", tmp / f"{name}.release.json", "--profile", live.profile("audit"),
                "--member", "node-1", "--member", "node-2")  # fmt: skip
        live.cli("recover", "submit", str(tmp / f"{name}.release.json"), who="ops")
    wait_for("node-1 and node-2 to recover", lambda: (
        officers_view(live)["recovery"]["recovered"] == ["node-1", "node-2"]), timeout=90)
    assert {v["key_id"] for v in officers_view(live)["recovery"]["members"]["node-1"][
        "versions"]} == {"k1", "e1", AUDIT_KEY_ID}
    repair = live.submit_ref("node", "repair", "node-3", who="ops")
    live.approve(repair, "alice", "bob")  # its key is registered already: no time lock
    done = wait_for("the recovery to finish", lambda: (
        (r := officers_view(live)["recovery"]) and r["state"] == "done" and r), timeout=90)
    assert done["recovered"] == ["node-1", "node-2"] and done["repaired"] == ["node-3"]

    # Same group keys; the old signature verifies; new signatures need recovered members.
    assert group_keys(live) == before
    live.group_key("k1").verify(old_sig, b"signed before the disaster")
    message = b"signed by the recovered cluster"
    live.group_key("k1").verify(live.sign("k1", message, timeout=60), message)
    live.sign_needing("node-3", "k1", b"signed with the repaired member")
    out = tmp / "data.out"
    args = ("decrypt", "--in", str(tmp / "data.env"), "--context", CTX, "--out", str(out))
    dref = live.submit_ref(*args, who="app1")
    live.approve(dref, "alice", "bob")
    live.cli(*args, "--request-id", dref.split(":", 1)[1], "--wait", who="app1")
    assert out.read_bytes() == plaintext
    _break_glass(live, keys, tmp, before["k1"])
    # Loud in the audit chain of the new cluster: the request, each officer, each member.
    audit = live.audit()
    kinds = [a["kind"] for a in audit]
    assert kinds.count("officer_approve") == 4 and kinds.count("officer_release") == 4
    assert kinds.count("export_piece") >= 2  # officer approvals: 2 recovery + 2 export
    assert kinds.count("record_recovery") == 2 and "record_repair" in kinds
    recover = [a for a in audit if a["kind"] == "approve" and a["subject"] == rec_ref]
    assert any("recovery" in a["outcome"] for a in audit if a["subject"] == rec_ref), recover


def _leader_any(live: Live) -> str | None:
    for row in live.status():
        st = row.get("status") or {}
        if st.get("role") == "leader":
            return row["name"]
    return None


def _break_glass(live: Live, keys: Path, tmp: Path, group_key: str) -> None:
    """The recovered cluster exports k1 v1 whole: only with the quorum, two officers and
    the time lock; the requester's tool combines t pieces, checked against the group key."""
    from shares import group as g

    ref = live.submit_ref("breakglass", "request", "k1", "--version", "1", "--reason",
                          "lost-cluster test", "--key-out", str(tmp / "recipient.key"),
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    for name in ("olga", "otto"):
        custody("recover", "approve", ref, "--officer-key", keys / f"{name}.officer-key.json",
                "--out", tmp / f"{name}.export.json", "--profile", live.profile("audit"))
        live.cli("recover", "submit", str(tmp / f"{name}.export.json"), who="ops")
    with pytest.raises(AssertionError, match="no executed export"):  # the time lock runs
        custody("breakglass", "open", ref, "--key", tmp / "recipient.key", "--out",
                tmp / "k1.exported", "--profile", live.profile("ops"))  # fmt: skip
    for _ in range(8):
        if live.request(ref)["state"] == "executed":
            break
        live.cli("epoch", "advance", who="ops")
    assert live.request(ref)["state"] == "executed"
    wait_for("t pieces", lambda: len(next(
        e for e in officers_view(live)["exports"] if e["request"] == ref)["pieces"]) >= 2)
    custody("breakglass", "open", ref, "--key", tmp / "recipient.key", "--out",
            tmp / "k1.exported", "--profile", live.profile("ops"))  # fmt: skip
    exported = json.loads((tmp / "k1.exported").read_text())
    assert (tmp / "k1.exported").stat().st_mode & 0o077 == 0
    scalar = bytes.fromhex(exported["secret_scalar"])
    assert g.base_mult(scalar).hex() == group_key == exported["group_public_key"]
    audit = [a for a in live.audit() if a["subject"] == ref]
    assert any("weakening" in a["outcome"] for a in audit), audit  # time-locked, audited
