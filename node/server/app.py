"""The node's HTTPS API (aiohttp, TLS 1.3, client certificates required).

Identity is the client certificate: `(name, role)` from its identity URI
(docs/pki.md), and the name must be registered with that role in this node's
replica (a removed principal is refused). Client endpoints live under `/v1/`,
member-to-member endpoints under `/v1/peer/` (role `node`, current members
only, msgpack bodies). Errors are `{"error": code, "message": text}`.

Writes become commands proposed through Raft (forwarded to the leader when this
node is not it); every command a principal signs (operators, approvers) is
signed on the principal's side and verified by every replica; the API only
checks that the command's author is the caller. Reads are linearizable
(ReadIndex) unless `stale=true`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from consensus.driver import NodeStopped, ProposalDropped
from node import tlsctx
from node.hsm.errors import HsmError
from node.pki.names import Identity, PkiError
from node.protocols.wire import CommitRequest, Round2Delivery, ShareRequest, WireError
from node.server.dkg import DkgRefused
from node.server.runtime import MSGPACK, NoLeader, Runtime
from node.server.signer import ShareRefused
from node.server.views import (
    alias_view,
    aliases_of,
    audit_view,
    key_view,
    policy_view,
    request_view,
)
from node.state import (
    Approve,
    Command,
    CreateKey,
    DecodeError,
    Outcome,
    RequestSign,
    decode_command,
    encode_command,
)
from node.state.digest import command_digest
from node.state.model import RequestKind, RequestState, Role

log = logging.getLogger("custody.api")

RUNTIME = web.AppKey("runtime", Runtime)
IDENTITY = "custody.identity"
MAX_WAIT_S = 30.0
READ_ROLES = frozenset({"operator", "approver", "client", "auditor"})
AUDIT_ROLES = frozenset({"operator", "approver", "auditor"})

# Rejection code -> HTTP status (anything else: 409, a conflict with the state).
_STATUS = {
    "malformed": 400, "invalid_argument": 400, "invalid_principal": 400, "invalid_policy": 400,
    "bad_signature": 401, "unknown_author": 403, "unauthorized": 403, "not_an_approver": 403,
    "self_approval": 403, "operation_not_allowed": 403, "unknown_key": 404,
    "unknown_request": 404, "unknown_policy": 404, "unknown_principal": 404,
    "unknown_version": 404, "request_id_conflict": 409, "limit_reached": 429,
    "not_bootstrapped": 503, "outside_grant": 403, "unknown_grant": 404,
    "grant_exhausted": 429, "unknown_alias": 404, "rollback_not_allowed": 409,
}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _err(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


# ---------------------------------------------------------------- identity


def _identity(request: web.Request) -> Identity:
    ident = request.get(IDENTITY)
    if ident is None:
        ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        try:
            ident = tlsctx.peer_identity(ssl_obj)
        except PkiError as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None
        request[IDENTITY] = ident
    return ident


def _require(request: web.Request, roles: frozenset[str] | set[str]) -> Identity:
    """The caller, if its certificate role is in `roles` and its replica registration
    agrees (name registered with that role; members for role node)."""
    ident = _identity(request)
    if ident.role not in roles:
        raise ApiError(403, "forbidden", f"role {ident.role} may not call this endpoint")
    st = request.app[RUNTIME].machine.state
    if ident.role == "node":
        if ident.name not in st.members:
            raise ApiError(403, "forbidden", f"{ident.name} is not a current member")
        return ident
    if not st.bootstrapped:
        raise ApiError(503, "not_bootstrapped", "the cluster is not bootstrapped yet")
    who = st.principals.get(ident.name)
    if who is None or who.role is not Role(ident.role):
        raise ApiError(403, "forbidden", f"{ident.name} is not a registered {ident.role}")
    return ident


# ---------------------------------------------------------------- input


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise ApiError(400, "bad_request", f"field {name!r} is required")
        return default
    value = body[name]
    if kind is int and (type(value) is not int):
        raise ApiError(400, "bad_request", f"field {name!r} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise ApiError(400, "bad_request", f"field {name!r} must be a {kind.__name__}")
    return value


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise ApiError(400, "bad_request", f"unknown field {extra[0]!r}")


def _hex(body: dict[str, Any], name: str, size: int | None = None) -> bytes:
    text = _field(body, name, str)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ApiError(400, "bad_request", f"field {name!r} must be hex") from None
    if size is not None and len(raw) != size:
        raise ApiError(400, "bad_request", f"field {name!r} must be {size} bytes")
    return raw


def _checked(cmd: Command) -> bytes:
    """The command's canonical bytes, or 400 naming the field that is out of schema."""
    try:
        return encode_command(cmd)
    except (DecodeError, ValueError, TypeError) as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


# ---------------------------------------------------------------- writes


def _outcome_response(out: Outcome, **extra: Any) -> web.Response:
    body = {"ok": out.ok, "code": out.code, "detail": out.detail, "seq": out.seq, **extra}
    if out.ok:
        return web.json_response(body, status=200)
    status = _STATUS.get(out.code, 409)
    return web.json_response({"error": out.code, "message": out.detail or out.code, **body},
                             status=status)  # fmt: skip


async def _submit(request: web.Request, cmd: Command, **extra: Any) -> web.Response:
    rt = request.app[RUNTIME]
    data = _checked(cmd)
    prior = rt.machine.state.outcomes.get(f"{cmd.author}:{cmd.request_id}")
    if prior is not None and not hmac.compare_digest(prior.command_digest, command_digest(data)):
        # Refused here, before the log: a failed call changes nothing (not even the audit).
        # The replica may lag; the state machine makes the same check on apply.
        raise ApiError(409, "request_id_conflict", "request id already used by another command")
    out = await rt.propose_bytes(data)
    return _outcome_response(out, request=f"{cmd.author}:{cmd.request_id}", **extra)


async def post_command(request: web.Request) -> web.StreamResponse:
    """A command signed on the caller's side: `{"command_b64": ...}`; author must be the
    caller (operators: lifecycle and governance; approvers: approve, cancel)."""
    ident = _require(request, {"operator", "approver"})
    body = await _json(request)
    _only(body, {"command_b64"})
    try:
        raw = base64.b64decode(_field(body, "command_b64", str), validate=True)
        cmd = decode_command(raw)
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise ApiError(400, "bad_request", f"command_b64: {exc}") from None
    if cmd.author != ident.name:
        raise ApiError(403, "forbidden", "a command's author must be the caller")
    if cmd.KIND in ("bootstrap", "request_sign", "request_decrypt"):
        raise ApiError(403, "forbidden", f"{cmd.KIND} is not submitted through this endpoint")
    return await _submit(request, cmd)


def _tags(body: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """`tags`: a JSON object of strings, as the command's sorted (key, value) pairs."""
    tags = _field(body, "tags", dict, {})
    if not all(type(v) is str for v in tags.values()):
        raise ApiError(400, "bad_request", "field 'tags' must map names to strings")
    return tuple(sorted(tags.items()))


async def create_key(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"operator"})
    b = await _json(request)
    _only(b, {"request_id", "key_id", "purpose", "policy_id", "activate_epoch", "signature",
              "owner", "description", "tags"})  # fmt: skip
    cmd = CreateKey(
        request_id=_field(b, "request_id", str), author=ident.name,
        key_id=_field(b, "key_id", str), purpose=_field(b, "purpose", str),
        policy_id=_field(b, "policy_id", str), activate_epoch=_field(b, "activate_epoch", int, 0),
        owner=_field(b, "owner", str, ""), description=_field(b, "description", str, ""),
        tags=_tags(b), signature=_hex(b, "signature", 64),
    )  # fmt: skip
    return await _submit(request, cmd)


async def resolve_key(request: web.Request) -> str:
    """The key id the `{key_id}` path segment names: a key id, or a live alias resolved
    against this replica (after a read barrier when it is not a key id here), so that
    commands, requests and the audit only ever name real key ids (docs/metadata.md).
    A name that is neither is passed on as is (the state machine refuses it)."""
    name = request.match_info["key_id"]
    machine = request.app[RUNTIME].machine
    if name in machine.state.keys:
        return name
    await request.app[RUNTIME].read_index()
    return machine.resolve(name) or name


async def sign_request(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"client"})
    b = await _json(request)
    _only(b, {"request_id", "message_b64", "context", "version"})
    try:
        message = base64.b64decode(_field(b, "message_b64", str), validate=True)
    except binascii.Error:
        raise ApiError(400, "bad_request", "field 'message_b64' must be base64") from None
    cmd = RequestSign(
        request_id=_field(b, "request_id", str), author=ident.name,
        key_id=await resolve_key(request), version=_field(b, "version", int, 0),
        context=_field(b, "context", str, ""), message=message,
    )  # fmt: skip
    return await _submit(request, cmd, key_id=cmd.key_id)


async def approve(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"approver"})
    b = await _json(request)
    _only(b, {"request_id", "signature"})
    cmd = Approve(
        request_id=_field(b, "request_id", str), author=ident.name,
        request=request.match_info["ref"], signature=_hex(b, "signature", 64),
    )  # fmt: skip
    return await _submit(request, cmd)


async def epoch_advance(request: web.Request) -> web.StreamResponse:
    """An operator's nudge: every member votes for the next epoch now (members decide:
    the epoch moves on t votes, at most once per `epoch_min_interval_s` per member)."""
    _require(request, {"operator"})
    rt = request.app[RUNTIME]
    before = rt.machine.state.epoch
    voted = [rt.name] if await rt.nudge_epoch() else []
    peers = rt.peer_names()
    results = await asyncio.gather(
        *(_peer_post(rt, p, "/v1/peer/epoch/nudge", b"") for p in peers),
        return_exceptions=True,
    )
    voted += [p for p, r in zip(peers, results, strict=True) if r is True]
    deadline = time.monotonic() + 5
    while rt.machine.state.epoch == before and time.monotonic() < deadline:
        await rt.changed(deadline - time.monotonic())
    return web.json_response(
        {"epoch_before": before, "epoch": rt.machine.state.epoch, "voted": sorted(voted)}
    )


async def _peer_post(rt: Runtime, peer: str, path: str, body: bytes) -> bool:
    assert rt.http is not None
    async with rt.http.post(rt.peer_url(peer, path), data=body) as r:
        return r.status == 200


# ---------------------------------------------------------------- reads


async def _read(request: web.Request) -> None:
    if request.query.get("stale") not in ("true", "1"):
        await request.app[RUNTIME].read_index()


async def health(request: web.Request) -> web.StreamResponse:
    _identity(request)
    st = request.app[RUNTIME].status()
    body = {k: st[k] for k in ("node", "role", "leader", "applied", "bootstrapped", "epoch")}
    body["status"] = st["health"]
    return web.json_response(body, status=200 if st["health"] == "ok" else 503)


async def status(request: web.Request) -> web.StreamResponse:
    _identity(request)
    return web.json_response(request.app[RUNTIME].status())


async def list_keys(request: web.Request) -> web.StreamResponse:
    _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    names = aliases_of(st)
    keys = [key_view(st.keys[k], aliases=names.get(k, ())) for k in sorted(st.keys)]
    return web.json_response({"keys": keys})


async def show_key(request: web.Request) -> web.StreamResponse:
    """One key, by id or by a live alias (the view names the real key id)."""
    _require(request, READ_ROLES)
    await _read(request)
    machine = request.app[RUNTIME].machine
    key_id = machine.resolve(request.match_info["key_id"])
    if key_id is None:
        raise ApiError(404, "unknown_key", "no such key or alias")
    st = machine.state
    return web.json_response(key_view(st.keys[key_id], aliases=aliases_of(st).get(key_id, ())))


async def list_aliases(request: web.Request) -> web.StreamResponse:
    """The live aliases, sorted by name (`key=`: those naming that key)."""
    _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    want = request.query.get("key")
    found = [alias_view(st.aliases[n]) for n in sorted(st.aliases)
             if not st.aliases[n].deleted_epoch and want in (None, st.aliases[n].key_id)]
    return web.json_response({"aliases": found})


async def list_policies(request: web.Request) -> web.StreamResponse:
    _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    policies = [policy_view(st.policies[p]) for p in sorted(st.policies)]
    return web.json_response({"policies": policies})


def _visible(ident: Identity, author: str) -> bool:
    return ident.role != "client" or author == ident.name


async def list_requests(request: web.Request) -> web.StreamResponse:
    ident = _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    q = request.query
    want_state, want_key, want_kind = q.get("state"), q.get("key"), q.get("kind")
    try:
        limit = max(1, min(1000, int(q.get("limit", "100"))))
    except ValueError:
        raise ApiError(400, "bad_request", "limit must be an integer") from None
    if want_state is not None and want_state not in {s.value for s in RequestState}:
        raise ApiError(400, "bad_request", "state must be pending|approved|executed|failed")
    found = []
    def submitted(ref: str) -> int:
        dedup = st.outcomes.get(ref)
        return dedup.outcome.seq if dedup is not None else -1

    for ref in sorted(st.requests, key=submitted, reverse=True):
        r = st.requests[ref]
        if (want_state and r.state.value != want_state) or (want_key and r.key_id != want_key):
            continue
        if (want_kind and r.kind.value != want_kind) or not _visible(ident, r.author):
            continue
        found.append(request_view(st, r, show_payload=False))
        if len(found) >= limit:
            break
    return web.json_response({"requests": found})


async def show_request(request: web.Request) -> web.StreamResponse:
    """One request; `wait=S` long-polls (≤ 30 s) until it is executed or failed, or with
    `until=approved` until it is no longer pending (a decrypt requester's cue)."""
    ident = _require(request, READ_ROLES)
    rt = request.app[RUNTIME]
    ref = request.match_info["ref"]
    try:
        wait = min(MAX_WAIT_S, max(0.0, float(request.query.get("wait", "0"))))
    except ValueError:
        raise ApiError(400, "bad_request", "wait must be a number of seconds") from None
    final = (RequestState.EXECUTED, RequestState.FAILED)
    until = request.query.get("until", "decided")
    if until not in ("decided", "approved"):
        raise ApiError(400, "bad_request", "until must be decided or approved")
    enough = final if until == "decided" else (*final, RequestState.APPROVED)
    r = rt.machine.state.requests.get(ref)
    if r is None or r.state not in final:
        # A final state is a committed fact, final for ever: it needs no read barrier.
        # Anything else might be stale here, so the answer waits for one.
        await _read(request)
    deadline = time.monotonic() + wait
    while True:
        r = rt.machine.state.requests.get(ref)
        if r is None or not _visible(ident, r.author):
            raise ApiError(404, "unknown_request", "no such request")
        left = deadline - time.monotonic()
        if r.state in enough or left <= 0:
            break
        await rt.changed(left)
    # What officers approve (a recovery's fresh keys, a break-glass export's key version and
    # recipient) is shown to auditors too: officers read it with an auditor profile to check
    # it before they sign (custody recover approve).
    officers_review = (RequestKind.RECOVER_MEMBERS, RequestKind.EXPORT_KEY)
    show = (ident.role == "approver" or r.author == ident.name
            or (r.kind in officers_review and ident.role == "auditor"))  # fmt: skip
    return web.json_response(request_view(rt.machine.state, r, show_payload=show))


async def audit_tail(request: web.Request) -> web.StreamResponse:
    _require(request, AUDIT_ROLES)
    await _read(request)
    audit = request.app[RUNTIME].machine.state.audit
    try:
        after = int(request.query.get("after", "-1"))
        limit = max(1, min(1000, int(request.query.get("limit", "50"))))
    except ValueError:
        raise ApiError(400, "bad_request", "after and limit must be integers") from None
    start = max(after + 1, 0) if "after" in request.query else max(0, len(audit) - limit)
    records = [audit_view(a) for a in audit[start : start + limit]]
    head = audit[-1].hash.hex() if audit else None
    return web.json_response({"records": records, "head": head, "count": len(audit)})


async def audit_export(request: web.Request) -> web.StreamResponse:
    from node.state import encode_records

    _require(request, AUDIT_ROLES)
    await _read(request)
    audit = request.app[RUNTIME].machine.state.audit
    head = audit[-1].hash.hex() if audit else ""
    return web.Response(body=encode_records(audit), content_type=MSGPACK,
                        headers={"X-Audit-Head": head})  # fmt: skip


# ---------------------------------------------------------------- peers


async def peer_propose(request: web.Request) -> web.StreamResponse:
    from node.state import encode_outcome

    _require(request, {"node"})
    rt = request.app[RUNTIME]
    if not rt.is_leader():
        raise NoLeader("not the leader")
    out = await rt.propose_bytes(await request.read())
    return web.Response(body=encode_outcome(out), content_type=MSGPACK)


async def peer_dkg_round2(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"node"})
    rt = request.app[RUNTIME]
    delivery = Round2Delivery.decode(await request.read())
    try:
        await rt.dkg.deliver(delivery, ident.name)
    except LookupError as exc:
        raise ApiError(404, "unknown_dkg", str(exc)) from None
    return web.Response(body=b"", content_type=MSGPACK)


async def peer_sign_commit(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"node"})
    rt = request.app[RUNTIME]
    resp = await rt.signer.commit(CommitRequest.decode(await request.read()), ident.name)
    return web.Response(body=resp.encode(), content_type=MSGPACK)


async def peer_sign_share(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"node"})
    rt = request.app[RUNTIME]
    resp = await rt.signer.share(ShareRequest.decode(await request.read()), ident.name)
    return web.Response(body=resp.encode(), content_type=MSGPACK)


async def peer_epoch_nudge(request: web.Request) -> web.StreamResponse:
    _require(request, {"node"})
    ok = await request.app[RUNTIME].nudge_epoch()
    return web.Response(status=200 if ok else 429)


# ---------------------------------------------------------------- assembly


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    failed = rt.driver is not None and rt.driver.failure is not None
    if failed and request.path not in ("/v1/sys/status", "/metrics"):
        return _err(503, "node_failed", "this node stopped after a storage failure",
                    **{"Retry-After": "1"})  # fmt: skip
    try:
        return await handler(request)
    except ApiError as exc:
        return _err(exc.status, exc.code, exc.message)
    except NoLeader as exc:
        return _err(503, "no_leader", str(exc), **{"Retry-After": "1"})
    except (TimeoutError, ProposalDropped, NodeStopped):
        return _err(504, "timeout", "outcome unknown: retry with the same request id")
    except ShareRefused as exc:
        return _err(403, "refused", str(exc))
    except DkgRefused as exc:
        return _err(409, "refused", str(exc))
    except WireError as exc:
        return _err(400, "bad_request", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _err(413, "too_large", "request body over the limit")
    except HsmError as exc:  # its token went away, its module failed: another node can help
        log.error("%s %s: the HSM failed (%s)", request.method, request.path,
                  type(exc).__name__)  # fmt: skip
        return _err(503, "hsm_unavailable", "this node's HSM failed; try another node",
                    **{"Retry-After": "1"})  # fmt: skip
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _err(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _err(500, "internal", "internal error (logged on the node)")


def create_app(rt: Runtime) -> web.Application:
    app = web.Application(client_max_size=rt.cfg.max_body_bytes, middlewares=[errors])
    app[RUNTIME] = rt
    app.router.add_routes(
        [
            web.get("/v1/sys/health", health),
            web.get("/v1/sys/status", status),
            web.get("/v1/keys", list_keys),
            web.post("/v1/keys", create_key),
            web.get("/v1/keys/{key_id}", show_key),
            web.get("/v1/aliases", list_aliases),
            web.post("/v1/keys/{key_id}/sign", sign_request),
            web.get("/v1/policies", list_policies),
            web.get("/v1/requests", list_requests),
            web.get("/v1/requests/{ref}", show_request),
            web.post("/v1/requests/{ref}/approve", approve),
            web.post("/v1/commands", post_command),
            web.post("/v1/epoch/advance", epoch_advance),
            web.get("/v1/audit", audit_tail),
            web.get("/v1/audit/export", audit_export),
            web.post("/v1/peer/propose", peer_propose),
            web.post("/v1/peer/dkg/round2", peer_dkg_round2),
            web.post("/v1/peer/sign/commit", peer_sign_commit),
            web.post("/v1/peer/sign/share", peer_sign_share),
            web.post("/v1/peer/epoch/nudge", peer_epoch_nudge),
        ]
    )
    from node.server import (
        routes_envelope,
        routes_events,
        routes_grants,
        routes_lifecycle,
        routes_metrics,
        routes_recovery,
        routes_repair,
    )

    for module in (routes_envelope, routes_lifecycle, routes_metrics, routes_events, routes_grants,
                   routes_repair, routes_recovery):  # fmt: skip
        module.register(app)
    from node.server.openapi import get_openapi

    app.router.add_routes([web.get("/v1/openapi.json", get_openapi)])
    return app
