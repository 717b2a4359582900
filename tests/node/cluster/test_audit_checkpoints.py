"""Audit checkpoints on a real cluster: the bootstrap's audit key, the leader's
threshold-signed checkpoints, `custody audit export` + `verify` (docs/audit.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from node.protocols.wire import ShareRequest
from node.state import decode_records, encode_records
from node.state.audit_checkpoint import AUDIT_KEY_ID, checkpoint_message, share_ref

from .harness import CliFailed, Live, running

B = bytes.fromhex("58" + "66" * 31)  # the Ed25519 base point (a valid commitment encoding)
EVERY = 64  # node/server/audit_checkpoints.AUDIT_CHECKPOINT_EVERY


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster") / "c"
    with running(root, schedule={"epoch_min_interval_s": 0.0}) as c:
        yield c


def _wait_checkpoint(live: Live, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in live.audit() if r["kind"] == "audit_checkpoint"
                and r["outcome"] == "ok"]  # fmt: skip
        if recs or time.monotonic() > deadline:
            return recs
        live.cli("epoch", "advance", who="ops")  # traffic until the next boundary
        time.sleep(0.3)


def test_checkpoints_export_and_verify(live: Live, tmp_path: Path) -> None:
    key = live.key_view(AUDIT_KEY_ID)
    assert key["purpose"] == "audit" and key["primary"] >= 1, key
    assert _wait_checkpoint(live), "the leader posted no audit checkpoint"
    out = tmp_path / "audit.bin"
    live.cli("audit", "export", "--out", str(out), who="audit")
    assert (tmp_path / "audit.bin.checkpoints").exists()
    gpk = next(v for v in key["versions"] if v["version"] == key["primary"])["group_public_key"]
    report = live.cli("audit", "verify", "--in", str(out), "--public-key", gpk)
    assert "VERIFIED" in report and "NOT covered" in report, report
    # truncating the export after a checkpoint's seq: caught (the checkpoints file knows it)
    records = decode_records(out.read_bytes())
    cp_seq = EVERY - 1
    cut = tmp_path / "cut.bin"
    cut.write_bytes(encode_records(records[:cp_seq]))
    with pytest.raises(CliFailed):
        live.cli("audit", "verify", "--in", str(cut), "--checkpoints",
                 str(tmp_path / "audit.bin.checkpoints"), "--public-key", gpk)  # fmt: skip
    # altering a record before the checkpoint (and re-hashing everything): caught
    from node.state.audit import make_record

    forged, prev = [], None
    for i, r in enumerate(records):
        fields = {f: getattr(r, f) for f in ("epoch", "author", "kind", "request_id", "subject",
                                             "key_id", "version", "digest", "outcome")}  # fmt: skip
        if i == 5:
            fields = dict(fields, outcome="rejected:unauthorized")
        prev = make_record(prev, **fields)
        forged.append(prev)
    alt = tmp_path / "alt.bin"
    alt.write_bytes(encode_records(forged))
    with pytest.raises(CliFailed):
        live.cli("audit", "verify", "--in", str(alt), "--checkpoints",
                 str(tmp_path / "audit.bin.checkpoints"), "--public-key", gpk)  # fmt: skip
    # another pinned key: nothing verifies
    with pytest.raises(CliFailed):
        live.cli("audit", "verify", "--in", str(out), "--public-key", "11" * 32)


def test_member_refuses_a_checkpoint_over_another_head(live: Live) -> None:
    key = live.key_view(AUDIT_KEY_ID)
    version = key["primary"]
    records = live.audit()
    seq = len(records) - 1
    status_row = next(r for r in live.status() if r["name"] == "node-2")
    cluster_id = status_row["status"]["cluster_id"]
    forged = checkpoint_message(cluster_id, seq, bytes(64), records[seq]["epoch"])
    req = ShareRequest(share_ref(seq), 1, AUDIT_KEY_ID, version,
                       ((1, B, B), (2, B, B)), 0, forged)  # fmt: skip
    status, body = asyncio.run(
        live.http("node-1", "POST", "node-2", "/v1/peer/sign/share", data=req.encode())
    )
    assert status in (403, 409), (status, body)
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert "not over this member's chain" in text, text
