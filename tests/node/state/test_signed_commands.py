"""Governance and member reports are signed by their author: a malicious leader or node
cannot forge them in someone else's name (DESIGN.md §2, invariant 2)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import msgpack
import pytest

from node.state import (
    AddPrincipal,
    CreateKey,
    DecodeError,
    Machine,
    Reason,
    RecordDkgResult,
    RecordFailure,
    RecordResult,
    RequestSign,
    decode_outcome,
    encode_command,
)
from node.state.approvals import sign_command
from node.state.commands import SIGNED_KINDS, signing_bytes
from node.state.digest import signing_digest


@pytest.fixture
def approved_sign(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "", b"m"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    return ready


def commands(w):
    return [
        AddPrincipal("x1", "ops", "dave", "approver", w.public_key("dave")),
        w.policy_command("x2", k=1),
        RecordResult("x3", "node-1", "s1", w.result("s1")),
        RecordFailure("x4", "node-1", "s1", "boom"),
    ]


def test_signed_kinds():
    """Everything operators and nodes issue is signed; clients' and approvers' are not
    (client requests need signed approvals; approvals are signatures themselves). A
    checkpoint is a signature itself too (over the checkpoint digest, test_checkpoint.py)."""
    from node.state import COMMANDS
    from node.state.model import Role
    from node.state.rules import COMMAND_ROLES

    for kind in COMMANDS:
        by_operator_or_node = bool(COMMAND_ROLES[kind] & {Role.OPERATOR, Role.NODE})
        if kind == "checkpoint":
            assert kind not in SIGNED_KINDS
            continue
        assert (kind in SIGNED_KINDS) == by_operator_or_node, kind


def test_signature_by_another_key_rejected(approved_sign):
    w = approved_sign
    for cmd in commands(w):
        w.rejects(w.signed(cmd, signer="eve"), Reason.BAD_SIGNATURE)
        # a member forging an operator's command, or another member's report
        forged = dataclasses.replace(cmd, request_id=cmd.request_id + "-n2")
        w.rejects(w.signed(forged, signer="node-2"), Reason.BAD_SIGNATURE)
    ok = dataclasses.replace(commands(w)[2], request_id="x3-ok")
    assert w.ok(ok).code == "executed"  # correctly signed: accepted


def test_signature_does_not_transfer_to_another_command(approved_sign):
    w = approved_sign
    good = w.signed(w.policy_command("x2", k=1))
    w.rejects(dataclasses.replace(good, approvers=("alice",)), Reason.BAD_SIGNATURE)
    w.rejects(dataclasses.replace(good, request_id="x2b"), Reason.BAD_SIGNATURE)
    res = w.signed(RecordResult("x3", "node-1", "s1", approved_sign.result("s1")))
    changed = dataclasses.replace(res, request_id="x3b", result=b"\x01" * 64)
    w.rejects(changed, Reason.BAD_SIGNATURE)


def test_signature_is_bound_to_the_cluster(approved_sign):
    w = approved_sign
    cmd = w.policy_command("x2", k=1)
    other_cluster = sign_command(w.private_key("ops"), cmd, "cluster-b")
    w.rejects(other_cluster, Reason.BAD_SIGNATURE)


def test_forged_dkg_post_rejected(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    # node-1 tries to post in every member's name: only its own post counts
    for member in ("node-2", "node-3"):
        forged = RecordDkgResult(f"d-{member}", member, "ck", ready.GPK, ready.VSHARES)
        ready.rejects(ready.signed(forged, signer="node-1"), Reason.BAD_SIGNATURE)
    assert ready.m.state.keys["k1"].versions[1].dkg_posts == {}


def test_unsigned_command_is_malformed(ready):
    with pytest.raises(DecodeError, match="signature"):
        encode_command(RecordResult("x", "node-1", "app:s1", bytes(64)))
    raw = msgpack.unpackb(encode_command(ready.signed(ready.policy_command("x2"))), raw=False)
    del raw["signature"]
    m = Machine.from_snapshot(ready.snap())
    out = decode_outcome(m.apply(msgpack.packb(raw, use_bin_type=True)))
    assert out.code == "malformed" and m.snapshot() == ready.snap()


def test_operator_needs_a_signing_key(ready):
    ready.rejects(AddPrincipal("x", "ops", "ops2", "operator", b""), Reason.INVALID_PRINCIPAL)


def test_signing_digest_encoding():
    cmd = RecordFailure("r", "node-1", "s1", "boom")
    body = signing_bytes(cmd)
    raw = msgpack.unpackb(body, raw=False)
    assert "signature" not in raw and raw["reason"] == "boom" and raw["kind"] == "record_failure"

    def lp(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    expected = hashlib.sha512(lp(b"custody-cluster/v1/signed-command") + lp(b"c") + body).digest()
    assert signing_digest("c", body) == expected
    with pytest.raises(TypeError):
        signing_bytes(RequestSign("r", "app", "k", 0, "", b"m"))


def test_forged_operator_and_node_commands_rejected(ready):
    from node.state import AdvanceEpoch, RequestDestroy, RequestRevoke, RequestRotate

    ready.active_key("k1")
    for cmd in [
        AdvanceEpoch("f1", "node-1", 2, 0),
        CreateKey("f2", "ops", "k2", "sign", "p1"),
        RequestRotate("f3", "ops", "k1", 0),
        RequestRevoke("f4", "ops", "k1", 1),
        RequestDestroy("f5", "ops", "k1", 1),
    ]:
        ready.rejects(
            ready.signed(cmd, signer="node-3" if cmd.author == "ops" else "ops"),
            Reason.BAD_SIGNATURE,
        )


def test_forged_bootstrap_rejected(world):
    boot = world.signed(world.bootstrap_command(), signer="alice")
    world.rejects(boot, Reason.BAD_SIGNATURE)
    assert not world.m.state.bootstrapped


def test_external_signer_path(ready):
    """The path a node takes with its HSM: sign the message elsewhere, attach the bytes."""
    from node.state import AdvanceEpoch, signing_message, with_signature

    cmd = AdvanceEpoch("ext", "node-2", 2, 0)
    sig = ready.private_key("node-2").sign(signing_message(cmd, "cluster-a"))
    assert ready.ok(with_signature(cmd, sig)).code == "pending"
    assert ready.m.state.epoch_votes["node-2"].epoch == 2
