"""The invariant functions on synthetic histories: good ones pass, each kind of
violation is caught (a lost acknowledged operation, a non-linearizable history,
a signature without approvals, diverging audit chains, a bad signature, an
unrepaired token loss, a changed group key)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from chaos import invariants as inv
from chaos.workload import Event, Op

ROOT = Path(__file__).resolve().parents[2]
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
MSG = b"message one"
SIG = KEY.sign(MSG).hex()
REF = "app1:r1"


def good_events(ref: str = REF, sig: str = SIG) -> list[Event]:
    """submit, two concurrent approvals, reads: a correct single-request history."""
    return [
        Event(0, ref, "submit", "app1", 0.0, 0.1, "ok", "pending"),
        Event(0, ref, "read", "alice", 0.2, 0.3, "ok", ["pending", [], None]),
        Event(0, ref, "read", "bob", 0.2, 0.3, "ok", ["pending", [], None]),
        # concurrent approvals: either may be the one that met the quorum
        Event(0, ref, "approve", "alice", 0.4, 0.6, "ok", "approved"),
        Event(0, ref, "approve", "bob", 0.4, 0.6, "ok", "pending"),
        Event(0, ref, "read", "app1", 0.7, 0.8, "ok", ["approved", ["alice", "bob"], None]),
        Event(0, ref, "read", "app1", 0.9, 1.0, "ok", ["executed", ["alice", "bob"], sig]),
    ]


def good_op(ref: str = REF) -> Op:
    return Op(0, ref, MSG.hex(), 0.0, 1.0, "ok", SIG)


def view(state: str = "executed", approvals: tuple[str, ...] = ("alice", "bob"),
         sig: str | None = SIG) -> dict:  # fmt: skip
    return {"state": state, "approvals": list(approvals), "signature": sig, "k": 2,
            "approvers": ["alice", "bob", "carol"]}  # fmt: skip


def chain(*approvers_before_result: str, ref: str = REF) -> list[dict]:
    recs = [{"kind": "request_sign", "subject": ref, "author": "app1", "outcome": "pending"}]
    recs += [{"kind": "approve", "subject": ref, "author": a, "outcome": "pending"}
             for a in approvers_before_result]  # fmt: skip
    recs.append({"kind": "record_result", "subject": ref, "author": "node-1",
                 "outcome": "executed"})  # fmt: skip
    for i, r in enumerate(recs):
        r.update(seq=i, hash=f"h{i}")
    return recs


# ---------------------------------------------------------------- 3. linearizability


def test_good_history_is_linearizable() -> None:
    assert inv.linearizable(good_events()).passed


def test_unknown_outcomes_are_allowed_either_way() -> None:
    ev = good_events()
    ev[4] = Event(0, REF, "approve", "bob", 0.4, None, "unknown", None)  # took effect
    assert inv.linearizable(ev).passed
    ev2 = [
        *good_events()[:3],
        Event(0, REF, "approve", "alice", 0.4, None, "unknown", None),
        Event(0, REF, "read", "app1", 0.7, 0.8, "ok", ["pending", [], None]),
    ]  # no effect
    assert inv.linearizable(ev2).passed


def test_stale_read_after_execution_is_caught() -> None:
    ev = good_events()
    ev.append(Event(0, REF, "read", "carol", 1.1, 1.2, "ok", ["approved", ["alice", "bob"], None]))
    c = inv.linearizable(ev)
    assert not c.passed and c.data["bad_request"] == REF and c.details


def test_two_quorum_answers_are_caught() -> None:
    ev = good_events()
    ev[4] = Event(0, REF, "approve", "bob", 0.4, 0.6, "ok", "approved")  # both "met" quorum
    assert not inv.linearizable(ev).passed


def test_lost_acknowledged_approval_in_reads_is_caught() -> None:
    read = Event(0, REF, "read", "app1", 0.7, 0.8, "ok", ["pending", ["alice"], None])
    ev = [*good_events()[:5], read]
    assert not inv.linearizable(ev).passed


def test_signature_changing_is_caught() -> None:
    ev = good_events()
    ev.append(Event(0, REF, "read", "app1", 1.1, 1.2, "ok", ["executed", ["alice", "bob"], "ff"]))
    assert not inv.linearizable(ev).passed


def test_read_of_absent_request_after_acked_submit_is_caught() -> None:
    ev = [*good_events()[:1], Event(0, REF, "read", "alice", 0.2, 0.3, "ok", ["absent", [], None])]
    assert not inv.linearizable(ev).passed


# ---------------------------------------------------------------- 2. RPO = 0


def test_nothing_lost_passes() -> None:
    members = {n: {REF: view()} for n in ("node-1", "node-2", "node-3")}
    c = inv.acknowledged_not_lost(good_events(), [good_op()], members)
    assert c.passed and c.data["lost"] == 0


def test_lost_acked_op_is_caught() -> None:
    members = {"node-1": {REF: view()}, "node-2": {REF: view()}, "node-3": {REF: None}}
    c = inv.acknowledged_not_lost(good_events(), [good_op()], members)
    assert not c.passed and c.data["lost"] >= 1 and "node-3" in c.summary


def test_lost_acked_approval_and_changed_signature_are_caught() -> None:
    members = {"node-1": {REF: view(approvals=("alice",))}, "node-2": {REF: view(sig="00" * 64)}}
    c = inv.acknowledged_not_lost(good_events(), [good_op()], members)
    assert not c.passed
    assert any("approval" in d for d in c.details) and any("DIFFERENT" in d for d in c.details)


# ---------------------------------------------------------------- 1. approvals before results


def test_signature_with_quorum_passes() -> None:
    c = inv.no_signature_without_approval([good_op()], {REF: view()},
                                          {"node-1": chain("alice", "bob")})  # fmt: skip
    assert c.passed and c.data["audit_results"] == 1


def test_signature_without_quorum_in_state_is_caught() -> None:
    c = inv.no_signature_without_approval([good_op()], {REF: view(approvals=("alice",))},
                                          {"node-1": chain("alice", "bob")})  # fmt: skip
    assert not c.passed


def test_result_before_quorum_in_audit_is_caught() -> None:
    c = inv.no_signature_without_approval([good_op()], {REF: view()},
                                          {"node-1": chain("alice")})  # fmt: skip
    assert not c.passed and "record_result" in c.summary


def test_rejected_approvals_do_not_count() -> None:
    ch = chain("alice", "bob")
    ch[2]["outcome"] = "rejected:bad_signature"
    assert not inv.no_signature_without_approval([good_op()], {REF: view()},
                                                 {"node-1": ch}).passed  # fmt: skip


def test_signature_for_unknown_request_is_caught() -> None:
    assert not inv.no_signature_without_approval([good_op()], {}, {}).passed


# ---------------------------------------------------------------- 4. audit chains


def test_identical_prefix_chains_pass() -> None:
    a = chain("alice", "bob")
    c = inv.audit_chains_agree({"node-1": a, "node-2": a[:3]},
                               {"node-1": {"ok": True}, "node-2": {"ok": True}})  # fmt: skip
    assert c.passed and c.data["common"] == 3


def test_diverging_or_unverified_chains_are_caught() -> None:
    a, b = chain("alice", "bob"), chain("alice", "bob")
    b[2]["hash"] = "other"
    ok = {"node-1": {"ok": True}, "node-2": {"ok": True}}
    assert not inv.audit_chains_agree({"node-1": a, "node-2": b}, ok).passed
    bad = {"node-1": {"ok": True}, "node-2": {"ok": False, "detail": "checkpoint"}}
    assert not inv.audit_chains_agree({"node-1": a, "node-2": a}, bad).passed
    assert not inv.audit_chains_agree({"node-1": a}, ok).passed  # node-2 has no chain


# ---------------------------------------------------------------- 5. signatures


def test_signatures_verify() -> None:
    assert inv.signatures_verify([good_op()], PUB, PUB).passed
    bad = Op(0, REF, b"other".hex(), 0, 1, "ok", SIG)
    assert not inv.signatures_verify([bad], PUB, PUB).passed
    other = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    assert not inv.signatures_verify(
        [good_op()], PUB, other.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    ).passed


KEY2 = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUB2 = KEY2.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def version(n: int, pub: str, act: int, revoked: int | None = None) -> dict:
    return {"version": n, "group_public_key": pub, "activation_epoch": act,
            "revoked_epoch": revoked, "destroyed_epoch": None,
            "rolled_back_epoch": None}  # fmt: skip


def test_signatures_after_rotation_verify_under_a_version_usable_at_their_epoch() -> None:
    versions = {1: version(1, PUB, 2, revoked=6), 2: version(2, PUB2, 5)}
    op1 = good_op("app1:a")
    op2 = Op(0, "app1:b", MSG.hex(), 1, 2, "ok", KEY2.sign(MSG).hex())
    views = {"app1:a": {"version": 1, "decided_epoch": 4},
             "app1:b": {"version": 2, "decided_epoch": 7}}  # fmt: skip
    ok = inv.signatures_verify([op1, op2], PUB, PUB2, views, versions)
    assert ok.passed and ok.data["by_version"] == {"1": 1, "2": 1}, ok.summary
    # v1 revoked at epoch 6: a v1 signature decided at epoch 6 is one too many
    late = {**views, "app1:a": {"version": 1, "decided_epoch": 6}}
    assert "not usable" in inv.signatures_verify([op1], PUB, PUB2, late, versions).summary
    # before v2's activation
    early = {**views, "app1:b": {"version": 2, "decided_epoch": 4}}
    assert not inv.signatures_verify([op2], PUB, PUB2, early, versions).passed
    # the cluster says v1 signed it, but the bytes verify only under v2
    wrong = {**views, "app1:b": {"version": 1, "decided_epoch": 4}}
    bad = inv.signatures_verify([op2], PUB, PUB2, wrong, versions)
    assert "does not verify" in bad.summary
    # an unknown version, and the pre-drill key gone
    assert not inv.signatures_verify([op1], PUB, PUB2, {"app1:a": {"version": 9}}, versions).passed
    assert not inv.signatures_verify([op2], PUB, PUB2, views, {2: versions[2]}).passed
    # decrypt, rotate and revoke ops carry no signature to verify
    other = Op(0, "ops:r", "", 0, 1, "ok", kind="rotate")
    assert inv.signatures_verify([other], PUB, PUB2, {}, versions).passed


def dec_op(result: str = MSG.hex(), ref: str = "app1:d1", v: int = 1) -> Op:
    return Op(0, ref, MSG.hex(), 0, 1, "ok", kind="decrypt", key_id="k2", version=v,
              result_hex=result)  # fmt: skip


def test_decrypts_return_the_encrypted_plaintext() -> None:
    views = {"app1:d1": {**view("executed", sig=None), "version": 1}}
    ok = inv.decrypts_return_plaintext([dec_op(), Op(0, "x", "00", 0, 1, "unknown",
                                                     kind="decrypt")], views)  # fmt: skip
    assert ok.passed and ok.data == {"decrypted": 1, "decrypt_flows": 2}
    assert "other bytes" in inv.decrypts_return_plaintext([dec_op("00")], views).summary
    assert "did not open" in inv.decrypts_return_plaintext([dec_op("")], views).summary
    pending = {"app1:d1": {**view("pending", ("alice",), None), "version": 1}}
    assert not inv.decrypts_return_plaintext([dec_op()], pending).passed
    assert not inv.decrypts_return_plaintext([dec_op()], {}).passed
    assert not inv.decrypts_return_plaintext([dec_op(v=2)], views).passed
    # the signing invariants leave decrypts to this one
    assert inv.no_signature_without_approval([dec_op()], views, {}).passed


def test_revocation_executed_by_its_quorum_approval_is_linearizable() -> None:
    ref = "ops:rev-1"
    evs = [
        Event(0, ref, "submit", "ops", 0.0, 0.1, "ok", "pending"),
        Event(0, ref, "approve", "alice", 0.2, 0.3, "ok", "pending"),
        Event(0, ref, "approve", "bob", 0.4, 0.5, "ok", "executed"),
        Event(0, ref, "read", "ops", 0.6, 0.7, "ok", ["executed", ["alice", "bob"], None]),
    ]
    assert inv.linearizable(evs).passed
    # ... but not by the first approval of two
    evs[1] = Event(0, ref, "approve", "alice", 0.2, 0.3, "ok", "executed")
    assert not inv.linearizable(evs).passed


def test_pending_request_may_fail_before_its_quorum() -> None:
    ref = "app1:f"
    evs = [
        Event(0, ref, "submit", "app1", 0.0, 0.1, "ok", "pending"),
        Event(0, ref, "read", "alice", 0.2, 0.3, "ok", ["failed", [], None]),
        Event(0, ref, "approve", "bob", 0.4, 0.5, "failed", "rejected:request_not_pending"),
        Event(0, ref, "read", "app1", 0.6, 0.7, "ok", ["failed", [], None]),
    ]
    assert inv.linearizable(evs).passed
    # but never back: failed, then pending again
    evs.append(Event(0, ref, "read", "app1", 0.8, 0.9, "ok", ["pending", [], None]))
    assert not inv.linearizable(evs).passed


def test_operator_actions_done() -> None:
    done = {"index": 1, "action": "refresh", "status": "injected", "op_state": "done",
            "op_s": 4.2}  # fmt: skip
    assert inv.operator_actions_done([done]).passed
    assert not inv.operator_actions_done([]).passed
    assert not inv.operator_actions_done([{**done, "op_state": "failed: x"}]).passed
    assert not inv.operator_actions_done([{**done, "status": "skipped: no"}]).passed


def test_availability_counts_client_flows_only() -> None:
    ops = [Op(0, "ops:rot", "", 0, 9, "ok", kind="rotate"), Op(0, "a", "00", 0, 1, "ok")]
    assert inv.longest_gap(ops, 10) == (1.0, 10.0)


# ---------------------------------------------------------------- layering (DESIGN.md §3)


def test_chaos_imports_only_client_side_node_modules() -> None:
    allowed = {"node.client.http", "node.client.profile", "node.cli.requests",
               "node.client.envelope"}
    for path in sorted((ROOT / "chaos").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            mods = (
                [a.name for a in n.names]
                if isinstance(n, ast.Import)
                else [n.module]
                if isinstance(n, ast.ImportFrom) and n.module
                else []
            )
            for m in mods:
                if m.split(".")[0] == "node":
                    assert m in allowed, f"{path.name} imports {m}"


def test_node_never_imports_chaos() -> None:
    for path in sorted((ROOT / "node").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                assert n.module.split(".")[0] != "chaos", path
            if isinstance(n, ast.Import):
                assert all(a.name.split(".")[0] != "chaos" for a in n.names), path


# ---------------------------------------------------------------- 6. availability (opt-in)


def test_availability_gap() -> None:
    ops = [Op(0, f"app1:r{i}", "00", i - 0.2, float(i), "ok", SIG) for i in range(1, 11)]
    assert inv.availability(ops, 10, 2).passed
    stalled = [o for o in ops if not 3 < o.complete < 9]  # nothing ok between 3 and 9
    c = inv.availability(stalled, 10, 2)
    assert not c.passed and c.data["longest_gap_s"] == 6.0 and c.data["from"] == 3.0
    assert inv.longest_gap(stalled, 12) == (3.0, 9.0)
    assert inv.longest_gap([*stalled, Op(0, "x", "00", 9, 17, "unknown")], 10) == (10.0, 17.0)


# ---------------------------------------------------------------- 7. token loss repaired (opt-in)


def lost(**kw: object) -> dict:
    f = {"index": 0, "action": "lose-token", "target": "follower", "node": "node-3",
         "status": "injected", "injected_at": 6.0, "ended_at": 6.7, "repair_state": "done",
         "repair_versions": "2/2", "repair_s": 6.2}  # fmt: skip
    f.update(kw)
    return f


def other(**kw: object) -> dict:
    f = {"index": 1, "action": "kill", "target": "other-follower", "node": "node-1",
         "status": "injected", "injected_at": 30.0, "ended_at": 38.0}  # fmt: skip
    f.update(kw)
    return f


def signed(invoke: float, complete: float, outcome: str = "ok") -> Op:
    return Op(0, f"app1:r{invoke}", MSG.hex(), invoke, complete, outcome, SIG)


def test_repair_done_and_signing_with_the_repaired_member_passes() -> None:
    ops = [signed(29.5, 30.2), signed(31.0, 31.3), signed(37.0, 37.4)]
    c = inv.token_loss_repaired([lost(), other()], ops)
    assert c.passed, c.summary
    assert c.data["signed_while_needed"] == {"fault 1 (kill node-1)": 2}
    assert "repaired 6.20 s" in c.summary


@pytest.mark.parametrize(("fault", "expect"), [
    (lost(repair_state="timeout: repair running after 60 s", repair_s=None),
     "repair timeout: repair running after 60 s"),
    (lost(repair_state="failed: fewer than t helpers left", repair_s=None),
     "repair failed: fewer than t helpers left"),
    (lost(repair_state="error: provision: RuntimeError: boom", repair_s=None),
     "repair error: provision"),
    (lost(repair_state=""), "repair never started"),
    (lost(repair_versions="1/2"), "repair done with '1/2' versions"),
    (lost(status="skipped: no live follower", node=""), "not injected (skipped: no live follower)"),
])  # fmt: skip
def test_unrepaired_token_loss_is_caught(fault: dict, expect: str) -> None:
    c = inv.token_loss_repaired([fault, other()], [signed(31.0, 31.3)])
    assert not c.passed and expect in c.summary, c.summary


def test_no_signature_while_the_repaired_member_was_needed_is_caught() -> None:
    # ok flows only outside the window, or invoked before it, or failed inside it
    ops = [signed(29.0, 30.5), signed(31.0, 33.0, "failed"), signed(36.0, 38.5), signed(39, 40)]
    c = inv.token_loss_repaired([lost(), other()], ops)
    assert not c.passed and "no signing flow succeeded while node-1 was down" in c.summary
    skipped = other(status="skipped: no live follower other than node-3", injected_at=None)
    c = inv.token_loss_repaired([lost(), skipped], ops)
    assert not c.passed and "never needed for a quorum" in c.summary
    assert not inv.token_loss_repaired([other()], ops).passed  # no lose-token at all


# ---------------------------------------------------------------- 8. group keys unchanged (opt-in)


def test_group_keys_unchanged() -> None:
    before = {"cluster-audit v1": "aa" * 32, "k1 v1": PUB, "k2 v1": None}  # k2: no key yet
    same = {"cluster-audit v1": "aa" * 32, "k1 v1": PUB, "k2 v1": "bb" * 32, "k3 v1": "cc" * 32}
    c = inv.group_keys_unchanged(before, {"node-1": same, "node-2": same})
    assert c.passed and "2 key version(s)" in c.summary
    changed = {**same, "k1 v1": "dd" * 32}
    c = inv.group_keys_unchanged(before, {"node-1": same, "node-2": changed})
    assert not c.passed and c.details == [f"node-2: k1 v1 group public key changed: {PUB[:16]}… "
                                          f"-> {'dd' * 8}…"]  # fmt: skip
    missing = {"k1 v1": PUB}
    c = inv.group_keys_unchanged(before, {"node-3": missing})
    assert not c.passed and "node-3: cluster-audit v1 is missing" in c.summary
    assert not inv.group_keys_unchanged({}, {"node-1": same}).passed
    assert not inv.group_keys_unchanged(before, {}).passed


# ---------------------------------------------------------------- 7b. refusing HSM (opt-in)

METRICS = """\
# HELP custody_hsm_operations_total slot calls
# TYPE custody_hsm_operations_total counter
custody_hsm_operations_total{op="sign"} 7.0
custody_hsm_operations_total{op="load_share"} 120.0
custody_hsm_operations_total{op="store_share"} 2.0
# TYPE custody_hsm_errors_total counter
custody_hsm_errors_total{error="ShareNotFoundError",op="load_share"} 4.0
custody_hsm_errors_total{op="sign",error="ModuleFailureError"} 1.0
custody_hsm_operation_seconds_bucket{op="sign",le="0.001"} 3.0
custody_http_requests_total{route="/metrics"} 9.0
"""


def test_hsm_counters_and_delta() -> None:
    now = inv.hsm_counters(METRICS)
    assert now == {"calls": {"sign": 7.0, "load_share": 120.0, "store_share": 2.0},
                   "errors": {"load_share ShareNotFoundError": 4.0,
                              "sign ModuleFailureError": 1.0}}  # fmt: skip
    before = {"calls": {"sign": 5.0, "load_share": 100.0, "store_share": 2.0},
              "errors": {"load_share ShareNotFoundError": 4.0}}  # fmt: skip
    assert inv.hsm_delta(now, before) == {
        "calls": {"load_share": 20, "sign": 2}, "errors": {"sign ModuleFailureError": 1}}
    assert inv.hsm_delta(now, None)["errors"] == {"load_share ShareNotFoundError": 4,
                                                  "sign ModuleFailureError": 1}  # fmt: skip
    assert inv.hsm_counters("") == {"calls": {}, "errors": {}}


def refused(**kw: object) -> dict:
    f = {"index": 0, "action": "hsm-refuse", "target": "follower", "node": "node-3",
         "status": "injected", "injected_at": 6.0, "ended_at": 16.0,
         "hsm_during": {"calls": {"load_share": 12, "sign": 1},
                        "errors": {"load_share ShareNotFoundError": 12,
                                   "sign ModuleFailureError": 1}},
         "hsm_after": {"calls": {"load_share": 40, "sign": 2}, "errors": {}}}  # fmt: skip
    f.update(kw)
    return f


def test_refused_hsm_that_recovers_passes() -> None:
    ops = [signed(25.0, 25.3), signed(29.0, 29.2)]
    c = inv.hsm_refuse_recovered([refused(), other(injected_at=24.0, ended_at=32.0)], ops)
    assert c.passed, c.summary
    assert c.data["signed_while_needed"] == {"fault 1 (kill node-1)": 2}
    assert "failed while away: load_share ShareNotFoundError 12" in c.summary


@pytest.mark.parametrize(("fault", "expect"), [
    (refused(status="skipped: no live follower", node=""), "not injected (skipped"),
    (refused(ended_at=None), "the token was never put back"),
    (refused(hsm_during={"error": "Unreachable: no node answered"}),
     "no HSM counters for the fault (Unreachable"),
    (refused(hsm_during={"calls": {"load_share": 3}, "errors": {}}),
     "no HSM call of node-3 failed while the token was away (calls: load_share 3)"),
    (refused(hsm_after={"calls": {"load_share": 9},
                        "errors": {"load_share ShareNotFoundError": 9}}),
     "HSM calls of node-3 still fail after the token came back: load_share ShareNotFoundError 9"),
    (refused(hsm_after={}), "no HSM counters after the fault (not read)"),
])  # fmt: skip
def test_refused_hsm_problems_are_caught(fault: dict, expect: str) -> None:
    ops = [signed(25.0, 25.3)]
    c = inv.hsm_refuse_recovered([fault, other(injected_at=24.0, ended_at=32.0)], ops)
    assert not c.passed and expect in c.summary, c.summary


def test_no_signature_while_the_refused_member_was_needed_is_caught() -> None:
    ops = [signed(23.0, 24.5), signed(26.0, 27.0, "failed"), signed(33.0, 33.5)]
    c = inv.hsm_refuse_recovered([refused(), other(injected_at=24.0, ended_at=32.0)], ops)
    assert not c.passed and "no signing flow succeeded while node-1 was down" in c.summary
    skipped = other(status="skipped: no live follower other than node-3", injected_at=None)
    c = inv.hsm_refuse_recovered([refused(), skipped], ops)
    assert not c.passed and "the refused member was never needed for a quorum" in c.summary
    assert not inv.hsm_refuse_recovered([other()], ops).passed  # no hsm-refuse at all


# ---------------------------------------------------------------- 12. lost cluster (opt-in)


def test_acked_after_the_backup_is_lost_by_design_before_it_is_a_failure() -> None:
    """A point-in-time restore loses what the lost cluster acknowledged after the backups
    (writes called after they were done): counted apart. Anything else missing fails,
    also a write called before the backups and acknowledged after them."""
    late = [Event(0, "app1:late", "submit", "app1", 12.5, 12.6, "ok", "pending"),
            Event(0, "app1:late", "approve", "alice", 12.7, 12.8, "ok", "pending")]
    members = {n: {REF: view(), "app1:late": None} for n in ("node-1", "node-2")}
    c = inv.acknowledged_not_lost(good_events() + late, [good_op()], members, (12.0, 13.0))
    assert c.passed, c.summary
    assert c.data["lost"] == 0 and c.data["lost_by_design"] == 2
    assert "2 acknowledged after the newest backup (t=12.00..13.00 s)" in c.summary
    assert "lost by design (point-in-time restore: after the newest backup)" in c.summary
    # without the window (or acknowledged after the loss: by the restored cluster) it fails
    assert not inv.acknowledged_not_lost(good_events() + late, [], members).passed
    assert not inv.acknowledged_not_lost(late, [], members, (12.0, 12.7)).passed
    # called before the backups were done: its place in the log is unknown, no excuse
    straddle = [Event(0, "app1:late", "submit", "app1", 11.9, 12.1, "ok", "pending")]
    c = inv.acknowledged_not_lost(straddle, [], members, (12.0, 13.0))
    assert not c.passed and c.data["lost"] == 1 and c.data["lost_by_design"] == 0
    # everything present: 0 by design, and the window is in the data
    c = inv.acknowledged_not_lost(good_events(), [good_op()], members, (12.0, 13.0))
    assert c.passed and c.data["lost_by_design"] == 0 and c.data["backup_window"] == [12.0, 13.0]


def loss(**kw: object) -> dict:
    f = {"index": 0, "action": "lose-cluster", "target": "cluster", "node": "all",
         "status": "injected", "injected_at": 12.3, "ended_at": 14.4, "op_state": "done",
         "op_s": 10.6, "op_request": "ops:drill-recover-7-0",
         "recovered": ["node-1", "node-2", "node-3"],
         "backup": {"commit_at_hold": 1210, "backups_done_at": 12.28,
                    "bundle_indexes": {"node-1": 1300, "node-2": 1300, "node-3": 1300}}}
    f.update(kw)
    return f


NODES = ["node-1", "node-2", "node-3"]


def chains_with(before: list[str], extra: int = 2) -> dict[str, list[dict]]:
    recs = [{"seq": i, "hash": h} for i, h in enumerate(before)]
    recs += [{"seq": len(before) + i, "hash": f"new{i}"} for i in range(extra)]
    return {n: recs for n in NODES}


def test_recovered_cluster_passes() -> None:
    before = ["h0", "h1", "h2"]
    ops = [signed(5.0, 5.2), signed(13.0, 23.5)]  # one before, one after the loss
    c = inv.cluster_recovered([loss()], ops, chains_with(before), {0: before}, NODES)
    assert c.passed, c.summary
    assert "backups at snapshot index [1300] (commit 1210 at the hold)" in c.summary
    assert "recovery done 10.6 s after the loss" in c.summary
    assert "3 audit record(s) from before the loss kept on 3 member(s)" in c.summary
    assert "1 signing flow(s) after the loss succeeded" in c.summary


@pytest.mark.parametrize(("fault", "expect"), [
    (loss(status="error: backups: RuntimeError: boom", injected_at=None),
     "the cluster was not lost (error: backups"),
    (loss(op_state="timeout: recovery running after 120 s"),
     "recovery timeout: recovery running after 120 s"),
    (loss(op_state="error: restore: RuntimeError: x"), "recovery error: restore"),
    (loss(op_state=""), "recovery never started"),
    (loss(recovered=["node-1", "node-2"]), "recovery done, but recovered ['node-1', 'node-2']"),
    (loss(backup={"commit_at_hold": 1210, "bundle_indexes": {"node-1": 1300, "node-2": 1200,
                                                              "node-3": 1300}}),
     "the backups' snapshots are at different indexes"),
    (loss(backup={"commit_at_hold": 1310, "bundle_indexes": {n: 1300 for n in NODES}}),
     "snapshot index 1300 is below the commit index 1310 of the hold"),
    (loss(backup={"commit_at_hold": 10, "bundle_indexes": {"node-1": 100, "node-2": 100}}),
     "backups of ['node-1', 'node-2'], not of every member"),
])  # fmt: skip
def test_unrecovered_cluster_is_caught(fault: dict, expect: str) -> None:
    before = ["h0", "h1"]
    c = inv.cluster_recovered([fault], [signed(13.0, 23.5)], chains_with(before), {0: before},
                              NODES)  # fmt: skip
    assert not c.passed and any(expect in d for d in c.details), c.details


def test_recovered_cluster_audit_and_signing_problems_are_caught() -> None:
    before = ["h0", "h1", "h2"]
    ops = [signed(13.0, 23.5)]
    chains = chains_with(before)
    chains["node-2"] = [{"seq": 0, "hash": "h0"}, {"seq": 1, "hash": "hX"},
                        {"seq": 2, "hash": "h2"}]  # fmt: skip
    chains["node-3"] = chains["node-3"][:2]
    c = inv.cluster_recovered([loss()], ops, chains, {0: before}, NODES)
    assert not c.passed
    assert "node-2: audit record 1 differs from the one read before the loss" in c.details
    assert any("node-3: audit chain of 2 record(s), shorter than the 3" in d for d in c.details)
    c = inv.cluster_recovered([loss()], ops, chains_with(before), {}, NODES)
    assert not c.passed and "no audit chain read before the loss" in c.summary
    # signing flows before the loss, or failed after it, do not show a recovered cluster
    ops = [signed(5.0, 5.2), signed(13.0, 40.0, "unknown"), signed(14.0, 20.0, "failed")]
    c = inv.cluster_recovered([loss()], ops, chains_with(before), {0: before}, NODES)
    assert not c.passed and "no signing flow invoked after the loss succeeded" in c.summary
    assert not inv.cluster_recovered([], ops, {}, {}, NODES).passed  # no lose-cluster at all


def test_recovered_cluster_must_decrypt_when_asked_to() -> None:
    before = ["h0"]
    dec = [Op(1, "app1:d1", "00", 14.0, 20.0, "unknown", kind="decrypt"),
           Op(1, "app1:d2", "00", 21.0, 21.5, "failed", kind="decrypt")]
    ops = [signed(13.0, 23.5), *dec]
    c = inv.cluster_recovered([loss()], ops, chains_with(before), {0: before}, NODES)
    assert not c.passed and "none of the 2 decrypt flow(s) invoked after the loss" in c.summary
    ok = Op(1, "app1:d3", "00", 22.0, 24.0, "ok", kind="decrypt", result_hex="00")
    c = inv.cluster_recovered([loss()], [*ops, ok], chains_with(before), {0: before}, NODES)
    assert c.passed and "1 signing flow(s) after the loss succeeded, 1 decrypt flow(s)" in c.summary
