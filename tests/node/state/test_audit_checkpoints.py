"""The audit key and audit checkpoints (docs/state-machine.md, docs/audit.md)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from node.state import (
    CreateKey,
    DecodeError,
    Machine,
    PostAuditCheckpoint,
    Reason,
    RequestRotate,
    RequestSign,
    encode_records,
)
from node.state.audit_checkpoint import (
    AUDIT_KEY_ID,
    checkpoint_message,
    checkpoints_in_chain,
    decode_checkpoints,
    encode_checkpoints,
    verify_audit,
)
from node.state.model import Purpose, RequestKind, RequestState, VersionState
from node.state.snapshot import _dump

from .conftest import CLUSTER, World, private_key, public_key

AUDIT_GROUP = private_key("audit-group")  # stands in for the audit key's FROST group key
AUDIT_GPK = public_key("audit-group")
BOOT = "ops:boot"  # the bootstrap's own scoped id: the audit key's create request


def audit_ready(w: World) -> World:
    """Bootstrapped, policy p1, the audit key's DKG done and version 1 active."""
    w.post_dkg(BOOT, gpk=AUDIT_GPK)
    w.advance()
    assert w.m.active_version(AUDIT_KEY_ID) == 1
    return w


@pytest.fixture
def audited(ready: World) -> World:
    return audit_ready(ready)


def checkpoint(w: World, seq: int, *, head=None, epoch=None, version=1, signer=AUDIT_GROUP,
               author="node-1", rid=None, message=None):  # fmt: skip
    rec = w.m.state.audit[seq] if seq < len(w.m.state.audit) else None
    head = head if head is not None else (rec.hash if rec else bytes(64))
    epoch = epoch if epoch is not None else (rec.epoch if rec else 1)
    msg = message or checkpoint_message(CLUSTER, seq, head, epoch)
    return PostAuditCheckpoint(
        rid or f"audit-checkpoint-{seq}", author, seq, head, epoch, version, signer.sign(msg)
    )


def test_bootstrap_creates_the_audit_key_and_an_approved_create_request(ready: World):
    key = ready.m.state.keys[AUDIT_KEY_ID]
    assert key.purpose is Purpose.AUDIT and key.policy_id == ""
    assert key.versions[1].state is VersionState.PENDING and key.lifecycle_request == BOOT
    req = ready.m.state.requests[BOOT]
    assert req.kind is RequestKind.CREATE_KEY and req.state is RequestState.APPROVED
    assert req.approvals == {} and req.version == 1
    assert ready.m.executable(BOOT) is req  # the members' DKG duty runs it
    # the bootstrap's id stays taken: the operator cannot reuse it
    ready.rejects(CreateKey("boot", "ops", "k9", "sign", "p1"), Reason.REQUEST_ID_CONFLICT)


def test_audit_key_activates_after_its_dkg_like_any_version(ready: World):
    outs = ready.post_dkg(BOOT, gpk=AUDIT_GPK)
    assert outs[-1].code == "executed"
    ready.advance()
    assert ready.m.may_use(AUDIT_KEY_ID, 1, "audit")
    assert not ready.m.may_use(AUDIT_KEY_ID, 1, "sign")


def test_nobody_can_use_or_manage_the_audit_key(audited: World):
    w = audited
    w.rejects(RequestSign("s", "app", AUDIT_KEY_ID, 0, "", b"m"), Reason.WRONG_PURPOSE)
    w.rejects(RequestRotate("rot", "ops", AUDIT_KEY_ID, 0), Reason.WRONG_PURPOSE)
    w.rejects(CreateKey("ck", "ops", AUDIT_KEY_ID, "sign", "p1"), Reason.KEY_EXISTS)
    assert not w.m.rotation_due(AUDIT_KEY_ID, 10**9)


def test_checkpoint_accepted_over_the_replicas_own_head(audited: World):
    w = audited
    seq = len(w.m.state.audit) - 1
    out = w.ok(checkpoint(w, seq))
    assert w.m.state.audit_checkpoint_count == 1
    cp = w.m.state.audit_checkpoints[-1]
    assert (cp.seq, cp.head, cp.version) == (seq, w.m.state.audit[seq].hash, 1)
    rec = w.m.state.audit[out.seq]
    assert rec.kind == "audit_checkpoint" and rec.digest == cp.signature  # in every export
    assert checkpoints_in_chain(w.m.state.audit) == [cp]


def test_checkpoint_refusals(audited: World):
    w = audited
    seq = len(w.m.state.audit) - 1
    other = bytes(63) + b"\x01"
    w.rejects(checkpoint(w, seq, head=other), Reason.INVALID_ARGUMENT)  # not this chain's head
    w.rejects(checkpoint(w, seq, epoch=5), Reason.INVALID_ARGUMENT)  # not the record's epoch
    w.rejects(checkpoint(w, seq + 5), Reason.INVALID_ARGUMENT)  # no such record yet
    w.rejects(checkpoint(w, seq, signer=private_key("x")), Reason.BAD_RESULT)  # another key
    bad_msg = checkpoint_message("other-cluster", seq, w.m.state.audit[seq].hash, 1)
    w.rejects(checkpoint(w, seq, message=bad_msg), Reason.BAD_RESULT)  # another cluster
    w.rejects(checkpoint(w, seq, version=2), Reason.UNKNOWN_VERSION)
    w.rejects(checkpoint(w, seq, rid="cp"), Reason.INVALID_ARGUMENT)
    w.rejects(checkpoint(w, seq, author="app"), Reason.UNAUTHORIZED)
    # a refusal is not remembered: the good one goes through under the same id
    w.ok(checkpoint(w, seq))
    w.rejects(checkpoint(w, seq, author="node-2"), Reason.DUPLICATE_POST)  # one per seq
    w.rejects(checkpoint(w, seq - 1, author="node-2"), Reason.DUPLICATE_POST)  # backwards


def test_checkpoint_refused_before_the_audit_key_is_active(ready: World):
    seq = len(ready.m.state.audit) - 1
    ready.rejects(checkpoint(ready, seq), Reason.VERSION_NOT_USABLE)


def test_forged_node_signature_refused(audited: World):
    w = audited
    cmd = w.signed(checkpoint(w, len(w.m.state.audit) - 1), signer="node-2")
    w.rejects(cmd, Reason.BAD_SIGNATURE)


def test_snapshot_keeps_checkpoints_and_restore_checks_them(audited: World):
    w = audited
    w.ok(checkpoint(w, len(w.m.state.audit) - 1))
    clone = Machine.from_snapshot(w.snap(), genesis=w.m.genesis)
    assert clone.snapshot() == w.snap()
    assert clone.state.audit_checkpoints == w.m.state.audit_checkpoints

    def forged(**changes) -> bytes:
        cp = dataclasses.replace(w.m.state.audit_checkpoints[-1], **changes)
        st = dataclasses.replace(w.m.state, audit_checkpoints=(cp,))
        return msgpack.packb({"v": 7, "state": _dump(st)}, use_bin_type=True)

    for bad in (
        forged(signature=AUDIT_GROUP.sign(b"something else")),
        forged(head=bytes(64)),
        forged(seq=len(w.m.state.audit) + 3),
        forged(version=2),
    ):
        with pytest.raises(DecodeError):
            Machine.from_snapshot(bad, genesis=w.m.genesis)
    no_key = dataclasses.replace(w.m.state, keys={})
    with pytest.raises(DecodeError):
        Machine.from_snapshot(
            msgpack.packb({"v": 7, "state": _dump(no_key)}, use_bin_type=True),
            genesis=w.m.genesis,
        )


def test_offline_verifier(audited: World):
    w = audited
    for _ in range(3):  # some traffic, then a checkpoint, then more traffic
        w.advance()
    seq = len(w.m.state.audit) - 1
    w.ok(checkpoint(w, seq))
    w.advance()
    export = encode_records(w.m.state.audit)
    keys = {1: AUDIT_GPK}
    report = verify_audit(export, cluster_id=CLUSTER, public_keys=keys)
    assert report.ok and report.records == len(w.m.state.audit)
    assert report.last_checkpointed == seq and report.uncovered == len(w.m.state.audit) - seq - 1
    pinned = verify_audit(export, cluster_id=CLUSTER, pinned=AUDIT_GPK)
    assert pinned.ok and pinned.key_source == "pinned"
    # another pinned key, another cluster id: the checkpoint does not verify
    assert not verify_audit(export, cluster_id=CLUSTER, pinned=public_key("x")).ok
    assert not verify_audit(export, cluster_id="other", public_keys=keys).ok
    # truncating after the checkpoint's seq: caught with the checkpoints file
    cps = checkpoints_in_chain(w.m.state.audit)
    cid, fkeys, fcps = decode_checkpoints(encode_checkpoints(CLUSTER, cps, keys))
    assert (cid, fkeys, fcps) == (CLUSTER, keys, cps)
    cut = encode_records(w.m.state.audit[:seq])
    report = verify_audit(cut, cluster_id=CLUSTER, public_keys=keys, extra_checkpoints=fcps)
    assert report.chain_ok and not report.ok and "truncated" in report.checkpoints[0].problem
    # altering a record before the checkpoint and re-hashing the whole chain: caught
    from node.state.audit import make_record

    recs, prev = [], None
    for i, r in enumerate(w.m.state.audit):
        fields = {f: getattr(r, f) for f in ("epoch", "author", "kind", "request_id", "subject",
                                             "key_id", "version", "digest", "outcome")}  # fmt: skip
        if i == 2:
            fields["outcome"] = "rejected:unauthorized"
        prev = make_record(prev, **fields)
        recs.append(prev)
    report = verify_audit(encode_records(recs), cluster_id=CLUSTER, public_keys=keys)
    assert report.chain_ok and not report.ok
    # altering without re-hashing: the chain itself breaks
    tampered = list(w.m.state.audit)
    tampered[1] = dataclasses.replace(tampered[1], outcome="ok!")
    assert not verify_audit(encode_records(tampered), cluster_id=CLUSTER, public_keys=keys).ok


