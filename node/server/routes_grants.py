"""HTTP routes for grants (registered by `node.server.app.create_app`; docs/grants.md).

- `GET /v1/grants` (operator, approver, client, auditor; a client sees its own grants):
  `?key=`, `?grantee=`, `?state=` filters.
- `GET /v1/grants/{grant_id}`.
- `POST /v1/grants` (operator): `{"command_b64"}`, a `create_grant` the operator signed
  with its own key (author = caller). Opens a `grant` request the key policy's quorum
  approves with `POST /v1/requests/{ref}/approve` like any request.
- `POST /v1/grants/{grant_id}/revoke` (operator, or an approver of the grant's quorum):
  `{"command_b64"}`, a signed `revoke_grant` for that grant. Takes effect at once.
- `POST /v1/requests/signed` (client): `{"command_b64"}`, a `request_sign` or
  `request_decrypt` the client signed with its own registered Ed25519 key, naming a
  grant. Approved at once if the grant allows it; the members then execute it like any
  approved request, each re-checking grant and signature on its own replica.

The API checks only that the author is the caller and the kind is right: every replica
verifies the signature and the grant when it applies the command.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from node.server.app import READ_ROLES, RUNTIME, ApiError, _field, _json, _only, _read, _require
from node.server.app import _submit as submit
from node.state import Command, DecodeError, decode_command
from node.state.model import Grant, GrantState, State


def grant_view(st: State, g: Grant) -> dict[str, Any]:
    """Public values of a grant (with the quorum that decided it)."""
    req = st.requests.get(g.request)
    expired = st.epoch >= g.expires_epoch
    usable = g.state is GrantState.ACTIVE and not expired and g.uses < g.max_uses
    return {
        "grant_id": g.grant_id,
        "grantee": g.grantee,
        "key_id": g.key_id,
        "operations": list(g.operations),
        "context": g.context,
        "context_match": g.context_match,
        "max_uses": g.max_uses,
        "uses": g.uses,
        "uses_left": max(0, g.max_uses - g.uses),
        "expires_epoch": g.expires_epoch,
        "expired": expired,
        "state": g.state.value,
        "usable": usable,
        "request": g.request,
        "request_state": req.state.value if req else None,
        "approvers": list(req.approvers) if req else [],
        "k": req.k if req else 0,
        "approvals": sorted(req.approvals) if req else [],
        "digest": req.digest.hex() if req else "",
        "activated_epoch": g.activated_epoch,
        "revoked_epoch": g.revoked_epoch,
        "revoked_by": g.revoked_by or None,
        "epoch": st.epoch,
    }


def _command(body: dict[str, Any], *kinds: str) -> Command:
    _only(body, {"command_b64"})
    try:
        raw = base64.b64decode(_field(body, "command_b64", str), validate=True)
        cmd = decode_command(raw)
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise ApiError(400, "bad_request", f"command_b64: {exc}") from None
    if cmd.KIND not in kinds:
        raise ApiError(400, "bad_request", f"expected a {' or '.join(kinds)} command")
    return cmd


async def list_grants(request: web.Request) -> web.StreamResponse:
    ident = _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    q = request.query
    want_state = q.get("state")
    if want_state is not None and want_state not in {s.value for s in GrantState}:
        raise ApiError(400, "bad_request", "state must be pending|active|revoked|failed")
    found = []
    for gid in sorted(st.grants):
        g = st.grants[gid]
        if ident.role == "client" and g.grantee != ident.name:
            continue
        if (q.get("key") and g.key_id != q["key"]) or (
            q.get("grantee") and g.grantee != q["grantee"]
        ):
            continue
        if want_state and g.state.value != want_state:
            continue
        found.append(grant_view(st, g))
    return web.json_response({"grants": found, "epoch": st.epoch})


async def show_grant(request: web.Request) -> web.StreamResponse:
    ident = _require(request, READ_ROLES)
    await _read(request)
    st = request.app[RUNTIME].machine.state
    g = st.grants.get(request.match_info["grant_id"])
    if g is None or (ident.role == "client" and g.grantee != ident.name):
        raise ApiError(404, "unknown_grant", "no such grant")
    return web.json_response(grant_view(st, g))


async def create_grant(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"operator"})
    cmd = _command(await _json(request), "create_grant")
    if cmd.author != ident.name:
        raise ApiError(403, "forbidden", "a command's author must be the caller")
    return await submit(request, cmd, grant=cmd.grant_id)  # type: ignore[attr-defined]


async def revoke_grant(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"operator", "approver"})
    cmd = _command(await _json(request), "revoke_grant")
    if cmd.author != ident.name:
        raise ApiError(403, "forbidden", "a command's author must be the caller")
    if cmd.grant_id != request.match_info["grant_id"]:  # type: ignore[attr-defined]
        raise ApiError(400, "bad_request", "the command revokes another grant")
    return await submit(request, cmd, grant=cmd.grant_id)  # type: ignore[attr-defined]


async def signed_request(request: web.Request) -> web.StreamResponse:
    """A sign/decrypt request the client signed itself, under a grant."""
    ident = _require(request, {"client"})
    cmd = _command(await _json(request), "request_sign", "request_decrypt")
    if cmd.author != ident.name:
        raise ApiError(403, "forbidden", "a command's author must be the caller")
    if not cmd.grant:  # type: ignore[attr-defined]
        raise ApiError(400, "bad_request", "a signed request names a grant")
    return await submit(request, cmd, grant=cmd.grant)  # type: ignore[attr-defined]


def register(app: web.Application) -> None:
    """Add this module's routes to the node's app."""
    app.router.add_routes(
        [
            web.get("/v1/grants", list_grants),
            web.post("/v1/grants", create_grant),
            web.get("/v1/grants/{grant_id}", show_grant),
            web.post("/v1/grants/{grant_id}/revoke", revoke_grant),
            web.post("/v1/requests/signed", signed_request),
        ]
    )
