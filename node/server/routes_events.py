"""`GET /v1/events`: lifecycle events as server-sent events (registered by `create_app`).

One event per lifecycle-relevant audit record (docs/events.md): its SSE `id` is the
record's audit sequence number, so a stream resumes exactly where it stopped, with
`Last-Event-ID` (what an EventSource sends on reconnect) or `?after=SEQ`. The stream
replays the backlog from the replica's audit chain, then follows new records as the
replica applies them (`Runtime.changed`). Events are derived from the audit record and
from fields of the replicated state that never change once set (a version's group
public key and activation epoch, a request's kind), so a replay yields the same events
as the live stream did.

Public values only: no payloads, messages, ciphertexts, signatures or approvals.

Roles operator, approver, auditor and node see every event; a client sees the events
of keys whose policy names it as a requester (now), the `epoch.advanced` events
restricted to those keys, and `policy.changed`.

At most `MAX_STREAMS` streams per node (beyond: 503 `too_many_streams`); a comment
line every `KEEPALIVE_S` seconds keeps idle connections (and proxies) alive; streams
end when the node shuts down or the caller's registration is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from node.pki.names import Identity
from node.server.app import RUNTIME, ApiError, _err, _read, _require
from node.state import rules
from node.state.model import AuditRecord, RequestKind, RequestState, State

EVENT_ROLES = frozenset({"operator", "approver", "auditor", "client", "node"})
MAX_STREAMS = 64
KEEPALIVE_S = 15.0
LIVENESS_S = 1.0  # how often an idle stream checks that its caller is still there
RETRY_MS = 1000
BATCH = 512  # audit records scanned (and their events written) per chunk

DKG_KINDS = frozenset({RequestKind.CREATE_KEY, RequestKind.ROTATE})
# Named explicitly: a request kind added later makes no event until it is given one here.
GOVERNANCE_KINDS = frozenset(
    RequestKind(k)
    for k in ("add_principal", "remove_principal", "rekey_principal", "set_policy",
              "set_governance", "set_threshold", "add_member", "remove_member", "cancel")
)  # fmt: skip

EVENT_TYPES = (
    "key.requested",
    "rotation.requested",
    "version.pending",
    "version.published",
    "version.aborted",
    "epoch.advanced",
    "revocation.requested",
    "destruction.requested",
    "version.revoked",
    "rollback.requested",
    "version.rolled_back",
    "version.destroyed",
    "version.erased",
    "policy.changed",
    "governance.scheduled",
    "governance.changed",
    "key.metadata_changed",
    "key.alias_changed",
)
CLIENT_UNSEEN = frozenset({"governance.scheduled", "governance.changed"})


class Streams:
    """The open event streams of this node (counted; cancelled on shutdown)."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0
        self.closing = asyncio.Event()


STREAMS = web.AppKey("custody.event_streams", Streams)


# ---------------------------------------------------------------- events


def event_of(st: State, a: AuditRecord) -> tuple[str, dict[str, Any]] | None:
    """The event an audit record means, or None (rejections, sign/decrypt traffic,
    intermediate posts, checkpoints...). Deterministic for a given chain: only stable
    fields of `st` are read."""
    outcome = a.outcome.split("!", 1)[0]
    if a.outcome.startswith("rejected:"):
        return None
    base: dict[str, Any] = {
        "seq": a.seq, "epoch": a.epoch, "kind": a.kind, "author": a.author,
        "request": a.subject, "key_id": a.key_id or None, "version": a.version or None,
        "outcome": a.outcome,
    }  # fmt: skip
    req = st.requests.get(a.subject)
    kind = a.kind
    if kind == "create_key":
        key = st.keys.get(a.key_id)
        extra = {"purpose": key.purpose.value, "policy_id": key.policy_id} if key else {}
        return "key.requested", {**base, **extra}
    if kind == "request_rotate":
        if outcome == "approved":  # a scheduled rotation: approved by its policy at once
            return "version.pending", {**base, "request_kind": "rotate", "trigger": "scheduled"}
        return "rotation.requested", base
    if kind == "request_revoke":
        return "revocation.requested", base
    if kind == "request_rollback":
        return "rollback.requested", base
    if kind == "request_destroy":
        return "destruction.requested", base
    if kind == "approve" and req is not None:
        return _approval(st, a, base, req.kind, outcome, req.effective_epoch)
    if kind == "record_dkg_result" and outcome in ("executed", "failed"):
        if outcome == "failed":
            return "version.aborted", {**base, "reason": req.failure if req else None}
        version = _version(st, a.key_id, a.version)
        gpk = version.group_public_key.hex() if version is not None else None
        activation = version.activation_epoch if version is not None else None
        return "version.published", {
            **base, "group_public_key": gpk, "activation_epoch": activation,
        }  # fmt: skip
    if kind == "record_failure" and outcome == "failed" and req and req.kind in DKG_KINDS:
        return "version.aborted", {**base, "reason": req.failure or None}
    if kind == "record_erasure":
        return "version.erased", {**base, "member": a.author}
    if kind == "set_key_metadata":
        return "key.metadata_changed", {**base, "metadata_sha512": a.digest.hex()}
    if kind in ("create_alias", "delete_alias"):
        return "key.alias_changed", {**base, "alias_sha512": a.digest.hex()}
    if kind == "advance_epoch" and outcome == "ok":
        weakening = a.outcome.endswith("!weakening")
        return "epoch.advanced", {**base, **_epoch_changes(st, a.epoch, weakening)}
    return None


def _approval(
    st: State, a: AuditRecord, base: dict[str, Any], rkind: RequestKind, outcome: str,
    effective_epoch: int,
) -> tuple[str, dict[str, Any]] | None:  # fmt: skip
    """An accepted approval matters when it met the quorum (outcome not `pending`)."""
    base = {**base, "request_kind": rkind.value}
    if rkind in DKG_KINDS and outcome == "approved":
        return "version.pending", {**base, "trigger": "approved"}
    if rkind is RequestKind.REVOKE and outcome == "executed":
        return "version.revoked", base
    if rkind is RequestKind.DESTROY and outcome == "executed":
        return "version.destroyed", base
    if rkind is RequestKind.ROLLBACK and outcome == "executed":
        return "version.rolled_back", {**base, "retired": _rolled_back_from(st, a)}
    if rkind in GOVERNANCE_KINDS:
        if outcome == "approved" and a.outcome.endswith("!weakening"):
            return "governance.scheduled", {**base, "effective_epoch": effective_epoch}
        if outcome == "executed":
            name = "policy.changed" if rkind is RequestKind.SET_POLICY else "governance.changed"
            return name, base
    return None


def _rolled_back_from(st: State, a: AuditRecord) -> int | None:
    """The version a rollback (approved in record `a`) retired: the primary then, i.e. the
    newest version that had replaced the restored one and was active by that epoch (any
    later one activates at a later epoch). Stable: `replaced` and activation epochs
    never change once set."""
    key = st.keys.get(a.key_id)
    if key is None:
        return None
    found = [
        n for n, v in key.versions.items()
        if v.replaced == a.version and 0 < v.activation_epoch <= a.epoch
    ]  # fmt: skip
    return max(found, default=None)


def _version(st: State, key_id: str, number: int) -> Any:
    key = st.keys.get(key_id)
    return key.versions.get(number) if key is not None else None


def _epoch_changes(st: State, epoch: int, weakening: bool) -> dict[str, Any]:
    """What entering `epoch` did to key versions and time-locked changes: versions that
    activated (activation epoch = `epoch`, and it really was active: not revoked while
    pending), the versions they replaced (retired then: `Version.replaced`, which stays
    put when a rollback later changes retirement epochs), governance changes that took
    effect."""
    activated, retired = [], []
    for key_id in sorted(st.keys):
        key = st.keys[key_id]
        for number in sorted(key.versions):
            v = key.versions[number]
            if v.activation_epoch == epoch and not rules.never_active(v):
                activated.append({"key_id": key_id, "version": number})
                if v.replaced:
                    retired.append({"key_id": key_id, "version": v.replaced})
    changes = []
    if weakening:  # only then did time-locked governance changes take effect
        for ref in sorted(st.requests):
            r = st.requests[ref]
            done = r.effective_epoch == epoch and r.state is RequestState.EXECUTED
            if r.kind in GOVERNANCE_KINDS and done:
                changes.append({"request": ref, "request_kind": r.kind.value})
    return {"activated": activated, "retired": retired, "governance_changes": changes}


def _client_keys(st: State, name: str) -> frozenset[str]:
    """The keys whose policy names the client as a requester (now)."""
    policies = {p for p, pol in st.policies.items() if name in pol.requesters}
    return frozenset(k for k, key in st.keys.items() if key.policy_id in policies)


def visible(
    st: State, ident: Identity, etype: str, data: dict[str, Any], key_filter: str | None
) -> dict[str, Any] | None:
    """The event as `ident` may see it (filtered), or None."""
    keys = _client_keys(st, ident.name) if ident.role == "client" else None
    if etype == "epoch.advanced":

        def keep(item: dict[str, Any]) -> bool:
            ok = keys is None or item["key_id"] in keys
            return ok and (key_filter is None or item["key_id"] == key_filter)

        data = {**data, "activated": [x for x in data["activated"] if keep(x)],
                "retired": [x for x in data["retired"] if keep(x)]}  # fmt: skip
        if keys is not None:
            data.pop("governance_changes", None)
        return data
    if key_filter is not None and data.get("key_id") != key_filter:
        return None
    if keys is not None:
        if etype in CLIENT_UNSEEN:
            return None
        if data.get("key_id") and data["key_id"] not in keys:
            return None
    return data


def frame(seq: int, etype: str, data: dict[str, Any]) -> bytes:
    body = json.dumps({"type": etype, **data}, sort_keys=True, separators=(",", ":"))
    return f"id: {seq}\nevent: {etype}\ndata: {body}\n\n".encode()


# ---------------------------------------------------------------- the stream


def _start_after(request: web.Request) -> int:
    """The last sequence number the caller has: `Last-Event-ID` (a reconnect) wins over
    `?after`; -1 = from the start of the chain."""
    text = request.headers.get("Last-Event-ID", "").strip() or request.query.get("after", "-1")
    try:
        after = int(text)
    except ValueError:
        raise ApiError(400, "bad_request", "after / Last-Event-ID must be an integer") from None
    if after < -1:
        raise ApiError(400, "bad_request", "after must be >= -1")
    return after


def _types(request: web.Request) -> frozenset[str] | None:
    text = request.query.get("types", "")
    if not text:
        return None
    wanted = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = sorted(wanted - set(EVENT_TYPES))
    if unknown:
        raise ApiError(400, "bad_request", f"unknown event type {unknown[0]!r}")
    return wanted


def _flag(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ApiError(400, "bad_request", f"{name} must be true or false")


async def get_events(request: web.Request) -> web.StreamResponse:
    """The event stream: `?after=SEQ` (or `Last-Event-ID`), `?key=K`, `?types=a,b`,
    `?follow=false` (stop at the head), `?stale=true` (no read barrier first)."""
    ident = _require(request, EVENT_ROLES)
    after = _start_after(request)
    wanted = _types(request)
    follow = _flag(request, "follow", True)
    key_filter = request.query.get("key") or None
    streams = request.app[STREAMS]
    if streams.open >= streams.limit:
        return _err(503, "too_many_streams", f"this node serves at most {streams.limit} "
                    "event streams; try another node or later", **{"Retry-After": "5"})  # fmt: skip
    streams.open += 1
    try:
        await _read(request)  # the backlog is at least as new as the call
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                   "X-Accel-Buffering": "no"}  # fmt: skip
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(f"retry: {RETRY_MS}\n: events after {after}\n\n".encode())
            await _pump(request, resp, ident, after, wanted, key_filter, follow)
        return resp
    finally:
        streams.open -= 1


async def _pump(
    request: web.Request, resp: web.StreamResponse, ident: Identity, after: int,
    wanted: frozenset[str] | None, key_filter: str | None, follow: bool,
) -> None:  # fmt: skip
    rt = request.app[RUNTIME]
    closing = request.app[STREAMS].closing
    next_seq = after + 1
    last_write = time.monotonic()
    head = len(rt.machine.state.audit)  # where a follow=false stream ends
    while not closing.is_set():
        if request.transport is None or request.transport.is_closing():
            return  # the caller went away: free its slot now, not at the next write
        try:
            _require(request, EVENT_ROLES)  # removed principals / members lose the stream
        except ApiError:
            return
        since = rt.generation
        st = rt.machine.state
        audit = st.audit
        chunk: list[bytes] = []
        stop = len(audit) if follow else min(len(audit), head)
        scan_to = min(stop, next_seq + BATCH)
        while next_seq < scan_to:
            a = audit[next_seq]
            next_seq += 1
            found = event_of(st, a)
            if found is None or (wanted is not None and found[0] not in wanted):
                continue
            data = visible(st, ident, found[0], found[1], key_filter)
            if data is not None:
                chunk.append(frame(a.seq, found[0], data))
        if chunk:
            await resp.write(b"".join(chunk))
            last_write = time.monotonic()
        if next_seq < stop:
            await asyncio.sleep(0)  # more backlog: let the node breathe, then go on
            continue
        if not follow and next_seq >= head:
            await resp.write(b": end\n\n")  # the head reached: not a dropped connection
            return
        idle = time.monotonic() - last_write
        if idle >= KEEPALIVE_S:
            await resp.write(b": keep-alive\n\n")
            last_write = time.monotonic()
            continue
        nap = min(KEEPALIVE_S - idle, LIVENESS_S)
        waiting = [asyncio.ensure_future(rt.changed(nap, since=since)),
                   asyncio.ensure_future(closing.wait())]  # fmt: skip
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiting:
                w.cancel()


async def _close_streams(app: web.Application) -> None:
    """On shutdown: end every stream now (else the runner waits for them)."""
    app[STREAMS].closing.set()


def register(app: web.Application) -> None:
    """Add this module's routes (and middlewares, if any) to the node's app."""
    app[STREAMS] = Streams()
    app.on_shutdown.append(_close_streams)
    app.router.add_get("/v1/events", get_events)
