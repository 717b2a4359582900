"""The invariants checked after every drill: pure functions over what was recorded.

Each takes the workload's history and what the members answered after the
cluster settled (request views, audit records, verify reports) and returns a
`Check` (passed or not, with details). Nothing here talks to the cluster;
`chaos.runner` collects the evidence. The unit tests feed them synthetic
histories.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from chaos.workload import Event, Op
from consensus.sim.linearizability import Operation, check_history

MAX_DETAILS = 20
# The clients' flows (availability, recovery times); rotate / revoke are the operator's.
CLIENT_KINDS = ("sign", "decrypt")


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "summary": self.summary,
                "details": self.details[:MAX_DETAILS], "data": self.data}  # fmt: skip


def _fail(name: str, problems: list[str], ok_summary: str, data: dict[str, Any]) -> Check:
    if problems:
        return Check(name, False, f"{len(problems)} problem(s): {problems[0]}", problems, data)
    return Check(name, True, ok_summary, [], data)


def _accepted(rec: Mapping[str, Any]) -> bool:
    return not str(rec.get("outcome", "")).startswith("rejected")


# ---------------------------------------------------------------- 1. approval before signature


def no_signature_without_approval(
    ops: Sequence[Op], views: Mapping[str, Mapping[str, Any] | None],
    chains: Mapping[str, Sequence[Mapping[str, Any]]], k: int = 2,
) -> Check:  # fmt: skip
    """Every signature the workload received belongs to a request that the cluster shows
    as executed with its quorum of approvals; and in every member's audit chain every
    accepted record_result of a sign request comes after accepted approvals by `k`
    distinct approvers of that request."""
    name = "no signature without an approved request"
    problems: list[str] = []
    signed = [o for o in ops if o.outcome == "ok" and o.kind == "sign"]
    for o in signed:
        v = views.get(o.ref)
        if v is None:
            problems.append(f"{o.ref}: signature received but the request is unknown")
            continue
        if v.get("state") != "executed":
            problems.append(f"{o.ref}: signature received but state is {v.get('state')!r}")
        approvals = set(v.get("approvals", []))
        need = int(v.get("k", k))
        if len(approvals) < need or not approvals <= set(v.get("approvers", approvals)):
            problems.append(f"{o.ref}: approvals {sorted(approvals)} do not meet k={need}")
        if (v.get("signature") or "") != o.signature:
            problems.append(f"{o.ref}: the cluster's signature differs from the one received")
    results = 0
    for node, chain in sorted(chains.items()):
        sign_refs = {r["subject"] for r in chain if r["kind"] == "request_sign" and _accepted(r)}
        approvers: dict[str, set[str]] = defaultdict(set)
        for r in sorted(chain, key=lambda r: r["seq"]):
            subj = r.get("subject", "")
            if r["kind"] == "approve" and _accepted(r):
                approvers[subj].add(r["author"])
            elif r["kind"] == "record_result" and _accepted(r) and subj in sign_refs:
                results += 1
                need = int((views.get(subj) or {}).get("k", k))
                if len(approvers[subj]) < need:
                    problems.append(
                        f"{node}: audit seq {r['seq']}: record_result for {subj} after only "
                        f"{len(approvers[subj])} approval(s) {sorted(approvers[subj])} (k={need})"
                    )
    return _fail(name, problems,
                 f"{len(signed)} signature(s) received, each on an executed request with its "
                 f"quorum; {results} accepted record_result(s) in {len(chains)} audit chain(s), "
                 "each after its quorum of approvals",
                 {"signatures": len(signed), "audit_results": results})  # fmt: skip


# ---------------------------------------------------------------- 2. RPO = 0


def acknowledged_not_lost(
    events: Sequence[Event], ops: Sequence[Op],
    member_views: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    after_backup: tuple[float, float] | None = None,
) -> Check:  # fmt: skip
    """Everything acknowledged to a client is on every member after the cluster settled:
    each acked submission exists, each acked approval is among the request's approvals,
    each received signature is there, executed, with the same bytes.

    `after_backup` (a whole-cluster loss restored from backups): `(backup, loss)`, the
    moment every node's backup had been taken and the moment of the loss. A write whose
    call came after `backup` was appended after the backups' snapshot (which existed by
    then), so a point-in-time restore loses it by design: one that the lost cluster
    acknowledged before `loss` and that is missing is counted apart (`lost_by_design`),
    not as a problem. Everything else missing is a problem, also a write called before
    `backup` and acknowledged after it (its place in the log is not known: no excuse)."""
    name = "acknowledged operations not lost (RPO = 0)"
    problems: list[str] = []
    lost: set[tuple[str, str, str]] = set()
    by_design: set[tuple[str, str, str]] = set()
    acked = 0

    def excused(call: float, ret: float | None) -> bool:
        return (after_backup is not None and call >= after_backup[0] and ret is not None
                and ret < after_backup[1])  # fmt: skip

    def missing(what: tuple[str, str, str], call: float, ret: float | None, msg: str) -> None:
        if excused(call, ret):
            by_design.add(what)
        else:
            lost.add(what)
            problems.append(msg)

    for e in events:
        if e.status != "ok" or e.kind not in ("submit", "approve"):
            continue
        acked += 1
        for node, views in sorted(member_views.items()):
            v = views.get(e.ref)
            if v is None:
                missing((e.kind, e.ref, e.who), e.call, e.ret,
                        f"{node}: acknowledged {e.kind} of {e.ref} by {e.who}: the request "
                        "is missing")  # fmt: skip
            elif e.kind == "approve" and e.who not in v.get("approvals", []):
                missing((e.kind, e.ref, e.who), e.call, e.ret,
                        f"{node}: acknowledged approval of {e.ref} by {e.who} is missing")
    for o in ops:
        if o.outcome != "ok":
            continue
        acked += 1
        for node, views in sorted(member_views.items()):
            v = views.get(o.ref) or {}
            if o.kind != "sign":  # decrypt: approved (partials given); rotate/revoke: done
                want = ("approved", "executed") if o.kind == "decrypt" else ("executed",)
                if v.get("state") not in want:
                    missing((o.kind, o.ref, ""), o.invoke, o.complete,
                            f"{node}: {o.kind} {o.ref} acknowledged, but the request is "
                            f"{v.get('state')!r}")  # fmt: skip
                continue
            if v.get("state") != "executed" or (v.get("signature") or "") != o.signature:
                missing(("signature", o.ref, ""), o.invoke, o.complete,
                        f"{node}: signed {o.ref}: state {v.get('state')!r}, signature "
                        f"{'same' if v.get('signature') == o.signature else 'DIFFERENT'}")
    data: dict[str, Any] = {"acknowledged": acked, "lost": len(lost),
                            "members": sorted(member_views)}  # fmt: skip
    ok = f"{acked} acknowledged operation(s), all present on {len(member_views)} member(s)"
    if after_backup is not None:
        data["lost_by_design"] = len(by_design)
        data["backup_window"] = [round(after_backup[0], 2), round(after_backup[1], 2)]
        ok = (f"{acked - len(by_design)} of {acked} acknowledged operation(s) present on "
              f"{len(member_views)} member(s); {len(by_design)} acknowledged after the newest "
              f"backup (t={after_backup[0]:.2f}..{after_backup[1]:.2f} s) and missing: lost by "
              "design (point-in-time restore: after the newest backup)")  # fmt: skip
    return _fail(name, problems, ok, data)


# ---------------------------------------------------------------- 3. linearizability


class RequestModel:
    """The sequential spec of one request, a register moved by client calls:
    submit creates it `pending`; each approval adds its approver, and the k-th answers
    `approved` (earlier ones `pending`); the signing that follows is internal, seen by
    a read as `approved` turning `executed` (with one signature, forever) or `failed`;
    a request executed by its quorum's approval itself (a revocation) answers that
    approval `executed`; a pending request may fail before its quorum (it became
    impossible: its key version was rotated away or revoked).
    A read returns (state, approvals, signature). A refused call changes nothing."""

    def __init__(self, k: int = 2) -> None:
        self.k = k

    def init(self) -> Hashable:
        return (None, frozenset(), None)

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        phase, approvals, sig = state  # type: ignore[misc]
        kind, _ref, who = op.input
        out = op.output
        if isinstance(out, str) and out.startswith("rejected"):
            return True, state
        if kind == "submit":
            if phase is None:
                return (op.pending or out == "pending"), ("pending", approvals, sig)
            return op.pending, state
        if kind == "approve":
            if phase != "pending" or who in approvals:
                return op.pending, state
            new = approvals | {who}
            quorum = len(new) >= self.k
            if quorum and out == "executed":  # executed within the approval (a revocation)
                return True, ("executed", new, sig)
            ok = op.pending or out == ("approved" if quorum else "pending")
            return ok, ("approved" if quorum else "pending", new, sig)
        if kind == "read":
            st, seen, s = out[0], frozenset(out[1]), out[2]
            if st == "absent":
                return phase is None, state
            if seen != approvals:
                return False, state
            if st == phase and (phase != "executed" or s == sig):
                return True, state
            if phase == "approved" and st in ("executed", "failed"):
                return True, (st, approvals, s if st == "executed" else None)
            if phase == "pending" and st == "failed":  # became impossible before its quorum
                return True, (st, approvals, None)  # (e.g. its key version was replaced)
            return False, state
        raise ValueError(f"unknown operation {kind!r}")


def to_operations(events: Iterable[Event]) -> list[Operation]:
    ops = []
    for e in events:
        out = e.output
        if e.kind == "read":
            out = (out[0], tuple(out[1]), out[2])
        ops.append(Operation(
            client=hash((e.worker, e.who)) & 0xFFFF, input=(e.kind, e.ref, e.who), output=out,
            call=int(e.call * 1e6), ret=None if e.ret is None else int(e.ret * 1e6),
        ))  # fmt: skip
    return ops


def linearizable(events: Sequence[Event], k: int = 2) -> Check:
    name = "linearizability of request-state operations"
    ops = to_operations(events)
    res = check_history(ops, RequestModel(k), partition=lambda o: o.input[1])
    refs = len({o.input[1] for o in ops})
    data = {"operations": len(ops), "requests": refs,
            "unknown": sum(1 for o in ops if o.pending)}  # fmt: skip
    if res.ok:
        return Check(
            name,
            True,
            f"{len(ops)} operation(s) on {refs} request(s) "
            f"({data['unknown']} with unknown outcome): linearizable",
            [],
            data,
        )
    lines = [f"{o.input[0]} by {o.input[2]} [{o.call / 1e6:.3f}, "
             f"{'?' if o.ret is None else f'{o.ret / 1e6:.3f}'}] -> {o.output}"
             for o in sorted(res.bad_partition, key=lambda o: o.call)]  # fmt: skip
    data["bad_request"] = res.key
    return Check(
        name,
        False,
        f"request {res.key}: no linearization of its {len(res.bad_partition)} operation(s)",
        lines,
        data,
    )


# ---------------------------------------------------------------- 4. audit chains


def audit_chains_agree(
    chains: Mapping[str, Sequence[Mapping[str, Any]]], verified: Mapping[str, Mapping[str, Any]],
) -> Check:  # fmt: skip
    """Every member's audit chain verifies (hash chain and checkpoints, `custody audit
    verify`), and all are identical up to the shortest one's length."""
    name = "audit chains identical and verified"
    problems: list[str] = []
    for node in sorted(set(chains) | set(verified)):
        v = verified.get(node)
        if v is None:
            problems.append(f"{node}: no audit export")
        elif not v.get("ok"):
            problems.append(f"{node}: audit verify failed: {v.get('detail')}")
        if not chains.get(node):
            problems.append(f"{node}: empty or missing audit chain")
    lengths = {n: len(c) for n, c in chains.items()}
    common = min(lengths.values(), default=0)
    if chains:
        ref_node = sorted(chains)[0]
        base = chains[ref_node]
        for node, chain in sorted(chains.items()):
            for i in range(common):
                if chain[i].get("hash") != base[i].get("hash") or chain[i].get("seq") != i:
                    problems.append(
                        f"{node}: record {i} differs from {ref_node}'s "
                        f"({chain[i].get('kind')} vs {base[i].get('kind')})"
                    )
                    break
    cps = {n: v.get("checkpoints", 0) for n, v in verified.items()}
    return _fail(name, problems,
                 f"{len(chains)} chain(s) identical up to record {common}, each verified "
                 f"(lengths {lengths}; checkpoints {cps})",
                 {"lengths": lengths, "common": common, "checkpoints": cps})  # fmt: skip


# ---------------------------------------------------------------- 5. signatures verify


def usable_at(v: Mapping[str, Any], epoch: int) -> bool:
    """Was key version `v` (its view) usable at `epoch`: activated by then, and not yet
    revoked, destroyed or rolled back?"""
    act = v.get("activation_epoch") or 0
    if not act or epoch < act:
        return False
    ends = [e for e in (v.get("revoked_epoch"), v.get("destroyed_epoch"),
                        v.get("rolled_back_epoch")) if e]  # fmt: skip
    return all(epoch < e for e in ends)


def signatures_verify(
    ops: Sequence[Op], key_before: str, key_after: str,
    views: Mapping[str, Mapping[str, Any] | None] | None = None,
    versions: Mapping[int, Mapping[str, Any]] | None = None,
) -> Check:  # fmt: skip
    """Every signature received verifies. Without `versions` (no rotation in the drill):
    under the one group key, unchanged from before to after. With `versions` (the signing
    key's version views after the drill, by number) and `views` (each request as the
    cluster shows it): under the group key of the version the request was signed with,
    which must have been usable at the epoch the request was decided in; the version
    that was primary before the workload keeps its group key."""
    if versions is None:
        name = "signatures verify under the unchanged group key"
    else:
        name = "signatures verify under a version usable at their epoch"
    problems: list[str] = []
    if key_before != key_after and versions is None:
        problems.append(f"group public key changed: {key_before[:16]}… -> {key_after[:16]}…")
    if versions is not None and key_before not in {v.get("group_public_key")
                                                   for v in versions.values()}:  # fmt: skip
        problems.append(f"the version with group key {key_before[:16]}… is gone or changed")
    n = 0
    used: dict[int, int] = {}
    for o in ops:
        if o.outcome != "ok" or o.kind != "sign":
            continue
        n += 1
        gpk = key_before
        if versions is not None:
            v = (views or {}).get(o.ref) or {}
            num = int(v.get("version") or 0)
            epoch = int(v.get("decided_epoch") or 0)
            ver = versions.get(num)
            if ver is None or not ver.get("group_public_key"):
                problems.append(f"{o.ref}: signed with version {num}, unknown to the cluster")
                continue
            if not usable_at(ver, epoch):
                problems.append(
                    f"{o.ref}: signed with v{num} at epoch {epoch}, when it was not usable "
                    f"(activated {ver.get('activation_epoch')}, revoked "
                    f"{ver.get('revoked_epoch')}, destroyed {ver.get('destroyed_epoch')})")
            gpk = str(ver["group_public_key"])
            used[num] = used.get(num, 0) + 1
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(gpk)).verify(
                bytes.fromhex(o.signature), bytes.fromhex(o.message_hex))
        except (InvalidSignature, ValueError):
            problems.append(f"{o.ref}: signature does not verify")
    if versions is None:
        ok = f"{n} signature(s) verified under {key_before[:16]}…"
    else:
        per = ", ".join(f"v{k}: {c}" for k, c in sorted(used.items()))
        ok = f"{n} signature(s) verified, each under a version usable at its epoch ({per})"
    return _fail(name, problems, ok,
                 {"verified": n - len(problems), "group_public_key": key_before,
                  "by_version": {str(k): c for k, c in sorted(used.items())}})  # fmt: skip


# ---------------------------------------------------------------- 5b. envelope decryption


def decrypts_return_plaintext(
    ops: Sequence[Op], views: Mapping[str, Mapping[str, Any] | None], k: int = 2,
) -> Check:  # fmt: skip
    """Every decrypt flow that returned ok opened its payload to exactly the plaintext
    that was encrypted, and its request is one the cluster shows with its quorum of
    approvals, for the file's key version."""
    name = "decrypts return the encrypted plaintext, only after approval"
    problems: list[str] = []
    done = [o for o in ops if o.kind == "decrypt" and o.outcome == "ok"]
    for o in done:
        if o.result_hex != o.message_hex:
            what = "did not open" if not o.result_hex else "opened to other bytes"
            problems.append(f"{o.ref}: the payload {what} ({o.detail or 'no detail'})")
        v = views.get(o.ref)
        if v is None:
            problems.append(f"{o.ref}: decrypted, but the request is unknown")
            continue
        approvals = set(v.get("approvals", []))
        need = int(v.get("k", k))
        if len(approvals) < need or not approvals <= set(v.get("approvers", approvals)):
            problems.append(f"{o.ref}: decrypted with approvals {sorted(approvals)} (k={need})")
        if v.get("state") not in ("approved", "executed"):
            problems.append(f"{o.ref}: decrypted, but the request is {v.get('state')!r}")
        if int(v.get("version") or 0) != o.version:
            problems.append(f"{o.ref}: request for v{v.get('version')}, file for v{o.version}")
    tried = sum(1 for o in ops if o.kind == "decrypt")
    return _fail(name, problems,
                 f"{len(done)} of {tried} decrypt flow(s) returned ok, each with the "
                 "plaintext encrypted, on an approved request",
                 {"decrypted": len(done), "decrypt_flows": tried})  # fmt: skip


# ---------------------------------------------------------------- 5c. operator actions


def operator_actions_done(actions: Sequence[Mapping[str, Any]]) -> Check:
    """Each operator action the schedule asked for (rotate, refresh) ended as it must:
    a rotation executed with a new primary version; a refresh `done`."""
    name = "operator actions completed"
    problems: list[str] = []
    parts = []
    for a in actions:
        label = f"fault {a.get('index')} ({a.get('action')})"
        if a.get("status") != "injected":
            problems.append(f"{label}: not started ({a.get('status')})")
            continue
        state = str(a.get("op_state") or "")
        if state != "done":
            problems.append(f"{label}: {state or 'no outcome'}")
            continue
        parts.append(f"{label}: done in {a.get('op_s')} s")
    if not actions:
        problems.append("no operator action in the scenario")
    return _fail(name, problems, "; ".join(parts), {"actions": len(actions)})


# ---------------------------------------------------------------- 6. availability (opt-in)


def longest_gap(ops: Sequence[Op], duration: float) -> tuple[float, float] | None:
    """The longest stretch of the workload [start, end] in which no flow completed ok."""
    ops = [o for o in ops if o.kind in CLIENT_KINDS]
    if not ops:
        return None
    done = [0.0, *sorted(o.complete for o in ops if o.outcome == "ok")]
    done.append(max(duration, max(o.complete for o in ops)))
    return max(itertools.pairwise(done), key=lambda g: g[1] - g[0])


def availability(ops: Sequence[Op], duration: float, max_gap_s: float) -> Check:
    """Opt-in per scenario (`max_gap_s`), for faults that leave a healthy majority:
    signing must go on, no stretch without a successful flow longer than `max_gap_s`."""
    name = f"availability: no gap over {max_gap_s:g} s without a successful signature"
    gap = longest_gap(ops, duration)
    if gap is None:
        return Check(name, False, "no operations at all")
    width = gap[1] - gap[0]
    data = {"longest_gap_s": round(width, 2), "from": round(gap[0], 2), "to": round(gap[1], 2)}
    if width > max_gap_s:
        return Check(name, False, f"no successful flow for {width:.2f} s "
                     f"(t={gap[0]:.2f}..{gap[1]:.2f} s)", [], data)  # fmt: skip
    return Check(name, True, f"longest gap {width:.2f} s", [], data)


# ---------------------------------------------------------------- 7. token loss repaired (opt-in)


def token_loss_repaired(faults: Sequence[Mapping[str, Any]], ops: Sequence[Op]) -> Check:
    """For scenarios with `lose-token` faults (`faults`: every fault record, as a dict):
    each token loss was injected and its member's repair ended `done` with every key
    version rebuilt, within the fault's timeout; and while an `other-follower` fault had
    another member down (so that the quorum left needed the repaired member), at least
    one signing flow was invoked and completed successfully."""
    name = "token loss repaired, and the repaired member signs"
    problems: list[str] = []
    times: dict[str, float | None] = {}
    quorum: dict[str, int] = {}

    def label(f: Mapping[str, Any]) -> str:
        return f"fault {f.get('index')} ({f.get('action')} {f.get('node') or f.get('target')})"

    lost = [f for f in faults if f.get("action") == "lose-token"]
    if not lost:
        problems.append("no lose-token fault in the scenario")
    for f in lost:
        if f.get("status") != "injected":
            problems.append(f"{label(f)}: not injected ({f.get('status')})")
            continue
        times[label(f)] = f.get("repair_s")
        state = str(f.get("repair_state") or "")
        if state != "done":
            problems.append(f"{label(f)}: repair {state or 'never started'}")
            continue
        done, _, total = str(f.get("repair_versions") or "").partition("/")
        if not done or done != total or f.get("repair_s") is None:
            problems.append(f"{label(f)}: repair done with {f.get('repair_versions')!r} versions")
    _needed_member_signs(faults, ops, problems, quorum, "repaired")
    parts = [f"{k}: repaired {v:.2f} s after the loss" for k, v in times.items() if v is not None]
    parts += [f"{k}: {n} flow(s) signed with the repaired member" for k, n in quorum.items()]
    return _fail(name, problems, "; ".join(parts) or "nothing to check",
                 {"repair_s": times, "signed_while_needed": quorum})  # fmt: skip


def _fault_label(f: Mapping[str, Any]) -> str:
    return f"fault {f.get('index')} ({f.get('action')} {f.get('node') or f.get('target')})"


def _needed_member_signs(
    faults: Sequence[Mapping[str, Any]], ops: Sequence[Op], problems: list[str],
    quorum: dict[str, int], who: str,
) -> None:  # fmt: skip
    """For every `other-follower` fault: the signing flows invoked after it took its node
    down and completed ok before that node was back (with t = 2 of 3 each needed the
    member the earlier fault hit); none, or the fault not injected, is a problem."""
    for f in faults:
        if f.get("target") != "other-follower":
            continue
        start, end = f.get("injected_at"), f.get("ended_at")
        if f.get("status") != "injected" or start is None:
            problems.append(f"{_fault_label(f)}: not injected ({f.get('status')}): the {who} "
                            "member was never needed for a quorum")  # fmt: skip
            continue
        n = sum(1 for o in ops if o.outcome == "ok" and o.kind == "sign" and o.invoke >= start
                and (end is None or o.complete <= end))  # fmt: skip
        quorum[_fault_label(f)] = n
        if n == 0:
            problems.append(f"{_fault_label(f)}: no signing flow succeeded while "
                            f"{f.get('node')} was down (t={start:.2f}.."
                            f"{'end' if end is None else f'{end:.2f}'} s)")  # fmt: skip


# ---------------------------------------------------------------- 7b. refusing HSM (opt-in)

_METRIC_RE = re.compile(r'^(custody_hsm_(?:operations|errors)_total)\{([^}]*)\}\s+(\S+)')
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def hsm_counters(text: str) -> dict[str, dict[str, float]]:
    """The slot counters of one node's `GET /metrics` (Prometheus text): `calls`
    (`custody_hsm_operations_total` by op) and `errors` (`custody_hsm_errors_total` by
    "op error")."""
    out: dict[str, dict[str, float]] = {"calls": {}, "errors": {}}
    for line in text.splitlines():
        m = _METRIC_RE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2)))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if m.group(1) == "custody_hsm_operations_total":
            out["calls"][labels.get("op", "?")] = value
        else:
            key = f"{labels.get('op', '?')} {labels.get('error', '?')}"
            out["errors"][key] = value
    return out


def hsm_delta(
    after: Mapping[str, Mapping[str, float]], before: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, int]]:  # fmt: skip
    """What the counters grew by between two scrapes (`before` None: since the process
    started), zero entries left out."""
    out: dict[str, dict[str, int]] = {}
    for part in ("calls", "errors"):
        base = (before or {}).get(part, {})
        out[part] = {k: int(v - base.get(k, 0.0)) for k, v in sorted(after.get(part, {}).items())
                     if v - base.get(k, 0.0) > 0}  # fmt: skip
    return out


def _brief(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def hsm_refuse_recovered(faults: Sequence[Mapping[str, Any]], ops: Sequence[Op]) -> Check:
    """For scenarios with `hsm-refuse` faults (`faults`: every fault record, as a dict):
    each was injected and its token put back; the node's own HSM counters show calls that
    failed while the token was away (the fault took effect) and none failing from the
    token's return (or the node's restart) to the end of the workload; and while an
    `other-follower` fault had another member down, at least one signing flow succeeded
    (with t = 2 of 3 it needed the refused member's HSM)."""
    name = "refused HSM failed, then the member signs again"
    problems: list[str] = []
    quorum: dict[str, int] = {}
    parts: list[str] = []
    refused = [f for f in faults if f.get("action") == "hsm-refuse"]
    if not refused:
        problems.append("no hsm-refuse fault in the scenario")
    for f in refused:
        label = _fault_label(f)
        if f.get("status") != "injected":
            problems.append(f"{label}: not injected ({f.get('status')})")
            continue
        if f.get("ended_at") is None:
            problems.append(f"{label}: the token was never put back")
            continue
        during, after = f.get("hsm_during") or {}, f.get("hsm_after") or {}
        if "error" in during or not during:
            problems.append(f"{label}: no HSM counters for the fault "
                            f"({during.get('error', 'not read')})")  # fmt: skip
            continue
        if not during.get("errors"):
            problems.append(f"{label}: no HSM call of {f.get('node')} failed while the token "
                            f"was away (calls: {_brief(during.get('calls', {}))})")  # fmt: skip
        if "error" in after or not after:
            problems.append(f"{label}: no HSM counters after the fault "
                            f"({after.get('error', 'not read')})")  # fmt: skip
        elif after.get("errors"):
            problems.append(f"{label}: HSM calls of {f.get('node')} still fail after the token "
                            f"came back: {_brief(after['errors'])} (calls: "
                            f"{_brief(after.get('calls', {}))})")  # fmt: skip
        parts.append(f"{label}: failed while away: {_brief(during.get('errors', {}))}; after: "
                     f"{_brief(after.get('calls', {}))} call(s), "
                     f"{sum(after.get('errors', {}).values())} failed")  # fmt: skip
    _needed_member_signs(faults, ops, problems, quorum, "refused")
    parts += [f"{k}: {n} flow(s) signed with the refused member" for k, n in quorum.items()]
    return _fail(name, problems, "; ".join(parts) or "nothing to check",
                 {"signed_while_needed": quorum})  # fmt: skip


# ---------------------------------------------------------------- 8. group keys unchanged (opt-in)


def group_keys_unchanged(
    before: Mapping[str, str | None], after: Mapping[str, Mapping[str, str | None]],
) -> Check:  # fmt: skip
    """Every key version's group public key (`"k1 v1" -> hex`), read before the workload,
    is the same on every member after the drill: repair and refresh never change one."""
    name = "group public keys unchanged on every member"
    problems: list[str] = []
    before = {kv: gpk for kv, gpk in before.items() if gpk}  # versions that had a key
    if not before:
        problems.append("no key version with a group public key before the drill")
    for node, keys in sorted(after.items()):
        for kv, gpk in sorted(before.items()):
            if kv not in keys:
                problems.append(f"{node}: {kv} is missing")
            elif keys[kv] != gpk:
                problems.append(f"{node}: {kv} group public key changed: "
                                f"{str(gpk)[:16]}… -> {str(keys[kv])[:16]}…")  # fmt: skip
    if not after:
        problems.append("no member read after the drill")
    return _fail(name, problems,
                 f"{len(before)} key version(s) ({', '.join(sorted(before))}) unchanged on "
                 f"{len(after)} member(s)", {"versions": dict(before)})  # fmt: skip


# ---------------------------------------------------------------- 12. lost cluster (opt-in)


def cluster_recovered(
    faults: Sequence[Mapping[str, Any]], ops: Sequence[Op],
    chains: Mapping[str, Sequence[Mapping[str, Any]]],
    audit_before: Mapping[int, Sequence[str]], members: Sequence[str],
) -> Check:  # fmt: skip
    """For scenarios with a `lose-cluster` action (`faults`: every fault record, as a dict):
    the loss happened after every node's backup had been taken at one snapshot index, at
    or above the commit index of the moment the clients were held; the recovery request
    executed and the recovery ended `done` with every member recovered, within the
    action's timeout; every member's audit chain begins with the chain read from the lost
    cluster before its backups (`audit_before`: fault index -> record hashes), record for
    record; and at least one signing flow invoked after the loss completed (the recovered
    members sign with their escrowed shares), and one decrypt flow if any was invoked after
    the loss (they decrypt with them)."""
    name = "lost cluster restored from backups and recovered by the officers"
    problems: list[str] = []
    parts: list[str] = []
    lost = [f for f in faults if f.get("action") == "lose-cluster"]
    if not lost:
        problems.append("no lose-cluster action in the scenario")
    for f in lost:
        label = f"fault {f.get('index')} (lose-cluster)"
        b = f.get("backup") or {}
        if f.get("status") != "injected":
            problems.append(f"{label}: the cluster was not lost ({f.get('status')})")
            continue
        indexes = b.get("bundle_indexes") or {}
        commit = b.get("commit_at_hold")
        if sorted(indexes) != sorted(members):
            problems.append(f"{label}: backups of {sorted(indexes)}, not of every member")
        elif len(set(indexes.values())) != 1:
            problems.append(f"{label}: the backups' snapshots are at different indexes {indexes}")
        elif commit is None or min(indexes.values()) < commit:
            problems.append(f"{label}: the backups' snapshot index {min(indexes.values())} is "
                            f"below the commit index {commit} of the hold")  # fmt: skip
        state = str(f.get("op_state") or "")
        if state != "done":
            problems.append(f"{label}: recovery {state or 'never started'}")
        elif sorted(f.get("recovered") or []) != sorted(members):
            problems.append(f"{label}: recovery done, but recovered {f.get('recovered')} of "
                            f"{list(members)}")  # fmt: skip
        before = list(audit_before.get(int(f.get("index", -1)), ()))
        if not before:
            problems.append(f"{label}: no audit chain read before the loss")
        for node, chain in sorted(chains.items()):
            head = [str(r.get("hash")) for r in chain[: len(before)]]
            if len(head) < len(before):
                problems.append(f"{node}: audit chain of {len(chain)} record(s), shorter than "
                                f"the {len(before)} read before the loss")  # fmt: skip
            elif head != before:
                at = next(k for k, (x, y) in enumerate(zip(head, before, strict=True)) if x != y)
                problems.append(f"{node}: audit record {at} differs from the one read before "
                                "the loss")  # fmt: skip
        t = f.get("injected_at")
        after = [o for o in ops if o.kind == "sign" and o.outcome == "ok" and t is not None
                 and o.invoke >= t]  # fmt: skip
        if not after:
            problems.append(f"{label}: no signing flow invoked after the loss succeeded")
        dec = [o for o in ops if o.kind == "decrypt" and t is not None and o.invoke >= t]
        dec_ok = sum(1 for o in dec if o.outcome == "ok")
        if dec and not dec_ok:
            problems.append(f"{label}: none of the {len(dec)} decrypt flow(s) invoked after the "
                            "loss succeeded")  # fmt: skip
        parts.append(
            f"{label}: backups at snapshot index {sorted(set(indexes.values()))} (commit "
            f"{commit} at the hold); recovery {state or '—'} {f.get('op_s')} s after the "
            f"loss, recovered {', '.join(f.get('recovered') or []) or 'none'}; "
            f"{len(before)} audit record(s) from before the loss kept on {len(chains)} "
            f"member(s); {len(after)} signing flow(s) after the loss succeeded"
            + (f", {dec_ok} decrypt flow(s)" if dec else ""))
    return _fail(name, problems, "; ".join(parts) or "nothing to check",
                 {"audit_before": {str(k): len(v) for k, v in audit_before.items()}})  # fmt: skip
