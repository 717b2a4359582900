"""Envelope encryption against a real cluster: files encrypted to an `encrypt` key,
DEKs opened by 2-of-3 threshold decryption after approval, every refusal.

One 3-node cluster (threshold 2) per module; see docs/envelope.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.client import envelope as ev
from node.client.http import Client
from node.client.profile import load_profile
from shares import tdec
from shares.errors import SharesError
from tests.node.cluster.harness import CliFailed, Live, b64

pytestmark = pytest.mark.slow

CTX = "backup-2024"


def _create(live: Live, key_id: str, purpose: str, policy: str) -> str:
    ref = live.submit_ref("keys", "create", key_id, "--purpose", purpose, "--policy", policy,
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    return ref


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("cluster") / "c"
    c = Live.init(root, schedule={"dkg_timeout_s": 4.0, "epoch_min_interval_s": 0.0})
    c.up()
    try:
        ref = c.submit_ref("policy", "set", "pe", "--requesters", "app1,app2", "--operations",
                           "decrypt", "--approvers", "alice,bob,carol", "--k", "2",
                           who="ops")  # fmt: skip
        c.approve(ref, "alice", "bob")
        c.policy("p1", requesters="app1")
        refs = [_create(c, "e1", "encrypt", "pe"), _create(c, "s1", "sign", "p1")]
        for r in refs:
            assert c.wait_request(r, timeout=30)["state"] == "executed"
        c.cli("epoch", "advance", who="ops")
        assert c.key_view("e1")["primary"] == 1 and c.key_view("s1")["primary"] == 1
        yield c
    finally:
        c.down()
        for node in ("node-1", "node-2", "node-3"):
            assert c.pid(node) is None, f"{node} left behind"


@pytest.fixture(scope="module")
def sealed(live: Live, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A file encrypted to e1 v1 under CTX (path of the envelope, plaintext)."""
    d = tmp_path_factory.mktemp("files")
    plaintext = os.urandom(100_000) + b"the secret payload"
    (d / "data.bin").write_bytes(plaintext)
    live.cli("encrypt", "--key", "e1", "--context", CTX, "--in", str(d / "data.bin"),
             "--out", str(d / "data.env"), who="app1")  # fmt: skip
    return d / "data.env", plaintext


def _http(live: Live, who: str, method: str, path: str, body: Any = None,
          node: str = "node-1") -> tuple[int, Any]:  # fmt: skip
    return asyncio.run(live.http(who, method, node, path, json_body=body))


def _submit_raw(live: Live, rid: str, wrapped: bytes, context: str = CTX, version: int = 1,
                key: str = "e1", who: str = "app1") -> tuple[int, Any]:  # fmt: skip
    body = {"request_id": rid, "version": version, "context": context,
            "ciphertext_b64": b64(wrapped)}  # fmt: skip
    return _http(live, who, "POST", f"/v1/keys/{key}/decrypt", body)


def _approved(live: Live, rid: str, wrapped: bytes, context: str = CTX) -> str:
    status, out = _submit_raw(live, rid, wrapped, context)
    assert status == 200 and out["code"] == "pending", out
    live.approve(out["request"], "alice", "bob")
    return str(out["request"])


def _recover(live: Live, env: ev.EnvelopeFile, ref: str, who: str = "app1") -> bytearray:
    profile = load_profile(Path(live.profile(who)))

    async def run() -> bytearray:
        async with Client(profile) as c:
            return await ev.recover_dek(c, profile, env, CTX, ref, timeout=20)

    return asyncio.run(run())


def test_file_round_trip_with_two_of_three_threshold_unwrap(
    live: Live, sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, plaintext = sealed
    env = ev.parse(path.read_bytes())
    assert (env.key_id, env.version) == ("e1", 1)
    out = tmp_path / "data.out"
    args = ("decrypt", "--in", str(path), "--context", CTX, "--out", str(out))
    ref = live.submit_ref(*args, who="app1")
    assert not out.exists()
    live.approve(ref, "alice", "bob")
    done = json.loads(live.cli(*args, "--request-id", ref.split(":", 1)[1], "--wait", "--json",
                               who="app1"))  # fmt: skip
    assert done["request"] == ref
    assert out.read_bytes() == plaintext
    assert out.stat().st_mode & 0o077 == 0
    # exactly t = 2 members gave (and confirmed) a partial; that executed the request
    r = live.wait_request(ref, timeout=10)
    assert r["state"] == "executed", r
    confirmations = [a for a in live.audit()
                     if a["kind"] == "record_result" and a["subject"] == ref]  # fmt: skip
    gave = {a["author"] for a in confirmations}
    assert len(gave) == 2, confirmations
    # A member that confirmed gives nothing more; the third may still give a late partial
    # (one bad partial must not force a new request), which verifies and is confirmed too.
    status, again = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {},
                          sorted(gave)[0])  # fmt: skip
    assert status == 403 and again["error"] == "request_decided", again
    (third,) = {"node-1", "node-2", "node-3"} - gave
    status, late = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {}, third)
    assert status == 200 and late["confirmation"] == "ok", late
    partial = tdec.PartialDecryption.from_bytes(base64.b64decode(late["partial_b64"]))
    vshare = bytes.fromhex(live.key_view("e1")["versions"][0]["verification_shares"]
                           [late["index"] - 1])  # fmt: skip
    tdec.verify_partial(partial, env.wrapped, vshare, ev.partial_request(ref))
    confirmations = [a for a in live.audit()
                     if a["kind"] == "record_result" and a["subject"] == ref]  # fmt: skip
    assert {a["author"] for a in confirmations} == {"node-1", "node-2", "node-3"}
    assert live.wait_request(ref, timeout=10)["state"] == "executed"


def test_confirmations_execute_the_request_and_the_audit_holds_no_dek_or_plaintext(
    live: Live, sealed: tuple[Path, bytes]
) -> None:
    path, plaintext = sealed
    env = ev.parse(path.read_bytes())
    ref = _approved(live, "dec-audit-1", env.wrapped)
    dek = _recover(live, env, ref)
    try:
        cluster = load_profile(Path(live.profile("app1"))).cluster_id
        assert ev.decrypt_payload(env, dek, cluster) == plaintext
        r = live.wait_request(ref, timeout=10)
        assert r["state"] == "executed", r
        assert "payload_b64" not in r  # the wrapped key is never shown
        # kept for late partials until the second epoch step after execution, then dropped
        for _ in range(2):
            live.cli("epoch", "advance", who="ops")
        deadline = time.monotonic() + 10
        while live.wait_request(ref, timeout=10)["payload_sha256"] is not None:
            assert time.monotonic() < deadline, "the payload was kept after the window"
            time.sleep(0.1)
        (third,) = {"node-1", "node-2", "node-3"} - {
            a["author"] for a in live.audit()
            if a["kind"] == "record_result" and a["subject"] == ref}  # fmt: skip
        status, out = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {}, third)
        assert status == 403 and out["error"] == "request_decided", out
        status, export = _http(live, "audit", "GET", "/v1/audit/export")
        assert status == 200 and isinstance(export, bytes) and len(export) > 1000
        for secret in (bytes(dek), plaintext[:32], plaintext[-18:]):
            assert secret not in export
        assert bytes(dek).hex().encode() not in export
    finally:
        ev.zero(dek)
    assert live.key_view("e1")["versions"][0]["uses"] >= 1


def test_a_wrong_context_fails_with_a_clear_reason(
    live: Live, sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, _ = sealed
    with pytest.raises(CliFailed, match="wrong context"):
        live.cli("decrypt", "--in", str(path), "--context", "other", "--out",
                 str(tmp_path / "x"), who="app1")  # fmt: skip
    assert not (tmp_path / "x").exists()
    # Forcing it past the client: the members refuse the label, approved or not.
    ref = _approved(live, "dec-ctx-1", ev.parse(path.read_bytes()).wrapped, context="other")
    for node in ("node-1", "node-2", "node-3"):
        status, out = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {}, node)
        assert status == 403 and out["error"] == "invalid_envelope", out
        assert "context" in out["message"]
    assert live.request(ref)["state"] == "approved"  # nothing was confirmed


def test_a_partial_for_another_clients_request_is_refused(
    live: Live, sealed: tuple[Path, bytes]
) -> None:
    ref = _approved(live, "dec-owner-1", ev.parse(sealed[0].read_bytes()).wrapped)
    status, out = _http(live, "app2", "POST", f"/v1/requests/{ref}/partial", {})
    assert status == 403 and out["error"] == "not_requester", out
    for who in ("alice", "ops", "audit"):  # not even an approver or an operator
        status, out = _http(live, who, "POST", f"/v1/requests/{ref}/partial", {})
        assert status == 403, (who, out)
    status, out = _http(live, "app1", "POST", "/v1/requests/app1:no-such/partial", {})
    assert status == 404 and out["error"] == "unknown_request", out


def test_a_partial_for_a_pending_request_is_refused(
    live: Live, sealed: tuple[Path, bytes]
) -> None:
    status, out = _submit_raw(live, "dec-pending-1", ev.parse(sealed[0].read_bytes()).wrapped)
    assert status == 200 and out["code"] == "pending", out
    ref = out["request"]
    live.approve(ref, "alice")  # one of the two approvals needed
    for node in ("node-1", "node-2", "node-3"):
        status, out = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {}, node)
        assert status == 403 and out["error"] == "not_approved", out


def test_a_partial_for_a_sign_request_is_refused(live: Live) -> None:
    ref = live.sign_request("s1", b"not a decryption")
    status, out = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {})
    assert status == 403 and out["error"] == "wrong_request_kind", out


def test_a_tampered_wrapped_key_is_refused_by_every_member(
    live: Live, sealed: tuple[Path, bytes]
) -> None:
    wrapped = bytearray(ev.parse(sealed[0].read_bytes()).wrapped)
    wrapped[-20] ^= 1  # inside the DEK ciphertext: still parses, proof fails
    ref = _approved(live, "dec-tamper-1", bytes(wrapped))
    for node in ("node-1", "node-2", "node-3"):
        status, out = _http(live, "app1", "POST", f"/v1/requests/{ref}/partial", {}, node)
        assert status == 403 and out["error"] == "invalid_envelope", out


def test_a_tampered_payload_is_detected_after_unwrap(
    live: Live, sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    raw = bytearray(sealed[0].read_bytes())
    raw[-1] ^= 1  # the GCM tag of the payload
    bad = tmp_path / "bad.env"
    bad.write_bytes(bytes(raw))
    args = ("decrypt", "--in", str(bad), "--context", CTX, "--out", str(tmp_path / "out"))
    ref = live.submit_ref(*args, who="app1")
    live.approve(ref, "alice", "bob")
    with pytest.raises(CliFailed, match="payload does not open"):
        live.cli(*args, "--request-id", ref.split(":", 1)[1], "--wait", who="app1")
    assert not (tmp_path / "out").exists()


def test_every_header_field_is_bound(live: Live, sealed: tuple[Path, bytes]) -> None:
    """Each byte of a file, flipped, is refused locally (parse, context digest), by the
    members' label check (key id, version, wrapped DEK) or by the payload's tag."""
    raw = sealed[0].read_bytes()
    env = ev.parse(raw)
    k = live.key_view("e1")["versions"][0]
    gpk = bytes.fromhex(k["group_public_key"])
    cluster = load_profile(Path(live.profile("app1"))).cluster_id
    header = len(env.header())
    dek = bytearray(os.urandom(32))  # a wrong DEK stands in for "whatever opened"
    for i in [*range(header), header, len(raw) - 1]:
        t = bytearray(raw)
        t[i] ^= 0x01
        try:
            e = ev.parse(bytes(t))
            e.check_context(CTX)
            tdec.verify_envelope(e.wrapped, gpk, ev.label_for(cluster, e.key_id, e.version,
                                                                  CTX))  # fmt: skip
        except (ev.EnvelopeError, SharesError):
            continue
        # only the nonce or the ciphertext changed: the payload's tag refuses it
        assert i >= header - 20, i
        with pytest.raises(ev.EnvelopeError):
            ev.decrypt_payload(e, dek, cluster)


def test_wrong_purpose_is_refused_both_ways(
    live: Live, sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    wrapped = ev.parse(sealed[0].read_bytes()).wrapped
    status, out = _submit_raw(live, "dec-purpose-1", wrapped, key="s1")
    assert status == 409 and out["error"] == "wrong_purpose", out
    status, out = _http(live, "app1", "POST", "/v1/keys/e1/sign",
                        {"request_id": "sig-purpose-1", "message_b64": b64(b"m")})  # fmt: skip
    assert status == 409 and out["error"] == "wrong_purpose", out
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(CliFailed, match="not encrypt"):
        live.cli("encrypt", "--key", "s1", "--in", str(tmp_path / "f"), who="app1")


def test_wrap_only_gives_a_dek_and_its_wrapped_form(live: Live) -> None:
    out = json.loads(live.cli("encrypt", "--key", "e1", "--context", CTX, "--json", who="app1"))
    assert len(base64.b64decode(out["dek_b64"])) == 32 and out["version"] == 1
    cluster = load_profile(Path(live.profile("app1"))).cluster_id
    tdec.verify_envelope(base64.b64decode(out["wrapped_b64"]),
                            bytes.fromhex(out["group_public_key"]),
                            ev.label_for(cluster, "e1", 1, CTX))  # fmt: skip


def _rotate(live: Live, key_id: str) -> None:
    from node.cli.keys import signed_command
    from node.state import RequestRotate

    profile = load_profile(Path(live.profile("ops")))
    cmd = RequestRotate(request_id=f"rotate-{key_id}-1", author="ops", key_id=key_id,
                        at=int(time.time()))  # fmt: skip
    body = {"command_b64": asyncio.run(signed_command(profile, cmd))}
    status, out = _http(live, "ops", "POST", "/v1/commands", body)
    assert status == 200, out
    live.approve(out["request"], "alice", "bob")
    assert live.wait_request(out["request"], timeout=30)["state"] == "executed"
    live.cli("epoch", "advance", who="ops")


def test_rewrap_after_rotation_keeps_the_payload_and_decrypts(
    live: Live, sealed: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, plaintext = sealed
    _rotate(live, "e1")
    k = live.key_view("e1")
    assert k["primary"] == 2 and k["versions"][0]["state"] == "retired", k
    new = tmp_path / "data.v2.env"
    args = ("rewrap", "--in", str(path), "--out", str(new), "--context", CTX)
    ref = live.submit_ref(*args, who="app1")
    live.approve(ref, "alice", "bob")
    live.cli(*args, "--request-id", ref.split(":", 1)[1], "--wait", who="app1")
    old_env, new_env = ev.parse(path.read_bytes()), ev.parse(new.read_bytes())
    assert new_env.version == 2 and new_env.wrapped != old_env.wrapped
    assert (new_env.nonce, new_env.ciphertext) == (old_env.nonce, old_env.ciphertext)
    out = tmp_path / "data.out"
    args = ("decrypt", "--in", str(new), "--context", CTX, "--out", str(out))
    ref = live.submit_ref(*args, who="app1")
    live.approve(ref, "alice", "bob")
    live.cli(*args, "--request-id", ref.split(":", 1)[1], "--wait", who="app1")
    assert out.read_bytes() == plaintext
    # and new files go to v2
    (tmp_path / "n").write_bytes(b"new")
    live.cli("encrypt", "--key", "e1", "--context", CTX, "--in", str(tmp_path / "n"),
             who="app1")  # fmt: skip
    assert ev.parse((tmp_path / "n.env").read_bytes()).version == 2
