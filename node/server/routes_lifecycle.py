"""HTTP routes for key lifecycle (registered by `node.server.app.create_app`).

- `POST /v1/keys/{key_id}/rollback` (operator): `{"request_id", "version", "signature"}`.
  The node builds the `request_rollback` command (author = the caller, key = the key the
  path names, an alias resolved) and the signature must be the operator's own over it
  (`signing_message`): every replica verifies it on apply. Opens a `rollback` request the
  key policy's quorum approves with `POST /v1/requests/{ref}/approve` (docs/lifecycle.md).
"""

from __future__ import annotations

from aiohttp import web

from node.server.app import _field, _hex, _json, _only, _require, _submit, resolve_key
from node.state import RequestRollback


async def rollback_request(request: web.Request) -> web.StreamResponse:
    ident = _require(request, {"operator"})
    b = await _json(request)
    _only(b, {"request_id", "version", "signature"})
    cmd = RequestRollback(
        request_id=_field(b, "request_id", str), author=ident.name,
        key_id=await resolve_key(request), version=_field(b, "version", int),
        signature=_hex(b, "signature", 64),
    )  # fmt: skip
    return await _submit(request, cmd, key_id=cmd.key_id)


def register(app: web.Application) -> None:
    """Add this module's routes to the node's app."""
    app.router.add_routes([web.post("/v1/keys/{key_id}/rollback", rollback_request)])
