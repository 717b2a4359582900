"""HTTP routes for envelope encryption (registered by `node.server.app.create_app`).

- `POST /v1/keys/{key_id}/decrypt` (client): submit a `request_decrypt` whose
  ciphertext is a wrapped data key (a `shares.tdec` envelope). Approvers then
  approve it like any request.
- `POST /v1/requests/{ref}/partial` (client, the request's author only): this
  member's partial decryption of the wrapped data key, with its DLEQ proof.

The member decides on its own replica, as for a signature share
(`node/server/signer.py`): it takes key, version, context and the wrapped key
from its replica (the caller sends none of them), requires `executable(ref)`
for a decrypt request, verifies the envelope's proof against the label it builds
itself before it reads its share, zeroes the share buffer afterwards, and records
its confirmation (`record_result`: a digest of the partial, never the partial
nor any plaintext) through the log before it answers. See docs/envelope.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os

from aiohttp import web

from node.protocols.envelope import confirmation_of, label_for, partial_request
from node.server.app import (
    RUNTIME,
    ApiError,
    _field,
    _json,
    _only,
    _require,
    _submit,
    resolve_key,
)
from node.server.runtime import result_request_id
from node.state import Op, RecordResult, RequestDecrypt
from node.state.errors import Reason, Rejected
from node.state.model import Purpose, RequestKind, RequestState
from shares import tdec
from shares.errors import SharesError
from shares.shamir import SecretShare

log = logging.getLogger("custody.decrypt")

MAX_INDEX_WAIT_S = 5.0
MAX_PARTIALS_PER_REQUEST = 8  # partials one member gives for one request (retries included)
_given: dict[str, int] = {}


def _refused(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)


def _zero(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


async def decrypt_request(request: web.Request) -> web.StreamResponse:
    """Submit a decrypt request: `{request_id, version, context, ciphertext_b64}`."""
    ident = _require(request, {"client"})
    b = await _json(request)
    _only(b, {"request_id", "version", "context", "ciphertext_b64"})
    try:
        ciphertext = base64.b64decode(_field(b, "ciphertext_b64", str), validate=True)
    except binascii.Error:
        raise ApiError(400, "bad_request", "field 'ciphertext_b64' must be base64") from None
    cmd = RequestDecrypt(
        request_id=_field(b, "request_id", str), author=ident.name,
        key_id=await resolve_key(request), version=_field(b, "version", int),
        context=_field(b, "context", str, ""), ciphertext=ciphertext,
    )  # fmt: skip
    return await _submit(request, cmd, key_id=cmd.key_id)


async def _body(request: web.Request) -> dict[str, object]:
    if not await request.read():
        return {}
    return await _json(request)


async def partial(request: web.Request) -> web.StreamResponse:
    """This member's partial decryption for an approved decrypt request (its author only)."""
    ident = _require(request, {"client"})
    rt = request.app[RUNTIME]
    ref = request.match_info["ref"]
    b = await _body(request)
    _only(b, {"index"})
    index = _field(b, "index", int, 0)
    if index > 0 and not await rt.wait_applied(index, MAX_INDEX_WAIT_S):
        raise ApiError(503, "not_caught_up", f"this replica has not applied index {index} yet")
    machine = rt.machine
    req = machine.state.requests.get(ref)
    if req is None or req.state is RequestState.PENDING:
        await rt.read_index()  # this replica may lag behind the approval: catch up once
        req = machine.state.requests.get(ref)
    if req is None:
        raise ApiError(404, "unknown_request", "no such request")
    if req.author != ident.name:
        raise _refused("not_requester", "only the request's author may collect its partials")
    if req.kind is not RequestKind.DECRYPT:
        raise _refused("wrong_request_kind", f"{ref} is a {req.kind.value} request, not decrypt")
    try:
        req = machine.executable(ref)
    except Rejected as exc:
        late = machine.late_partial(ref, rt.name) if req.state is RequestState.EXECUTED else None
        if late is not None:  # executed, but this member has not given its partial yet
            req = late
        elif exc.reason is Reason.NOT_APPROVED and req.state is RequestState.PENDING:
            raise _refused("not_approved", f"{ref} is pending: not approved yet") from None
        elif req.state in (RequestState.EXECUTED, RequestState.FAILED):
            raise _refused("request_decided", f"{ref} is already {req.state.value}: "
                           "no more partials (submit a new decrypt request)") from None  # fmt: skip
        elif exc.reason is Reason.VERSION_NOT_USABLE:
            raise _refused("version_not_usable",
                           f"key {req.key_id} v{req.version} may no longer decrypt") from None
        else:
            raise _refused(exc.reason.value, f"not executable here: {exc}") from None
    st = machine.state
    key = st.keys[req.key_id]
    if key.purpose is not Purpose.ENCRYPT or not machine.may_use(key.key_id, req.version,
                                                                  Op.DECRYPT):  # fmt: skip
        raise _refused("version_not_usable", f"key {key.key_id} v{req.version} may not decrypt")
    if not machine.holds(rt.name, req.key_id, req.version) or not rt.registered():
        raise _refused("repairing", f"{rt.name}'s share of {key.key_id} v{req.version} is being "
                       "rebuilt (custody node repairs): ask another member")  # fmt: skip
    version = key.versions[req.version]
    envelope = req.payload
    try:
        label = label_for(st.cluster_id, req.key_id, req.version, req.context)
        tdec.verify_envelope(envelope, version.group_public_key, label)
    except (SharesError, UnicodeEncodeError) as exc:
        raise _refused(
            "invalid_envelope",
            "the wrapped key's proof does not verify for this cluster, key version and "
            f"context (wrong context, or tampered): {exc.__class__.__name__}",
        ) from None
    given = _given.get(ref, 0)
    if given >= MAX_PARTIALS_PER_REQUEST:
        raise _refused("limit_reached", "partial limit for this request reached")
    _given[ref] = given + 1
    if len(_given) > 10_000:
        _given.pop(next(iter(_given)))

    def compute() -> bytes:
        share = rt.slot.load_share(rt.share_id(req.key_id, req.version))
        try:
            p = tdec.partial_decrypt(
                SecretShare(rt.index, bytes(share)), envelope, version.group_public_key, label,
                os.urandom, partial_request(ref),
            )  # fmt: skip
        finally:
            _zero(share)
        return p.to_bytes()

    encoded = await asyncio.to_thread(compute)
    confirm = RecordResult(
        request_id=result_request_id("dec", ref), author=rt.name, request=ref,
        result=confirmation_of(encoded),
    )  # fmt: skip
    out = await rt.propose_quietly(await rt.sign_command(confirm), f"decrypt confirmation {ref}")
    if out is None:
        raise ApiError(503, "no_leader", "the confirmation could not be recorded now; retry")
    benign = ("duplicate_post", "request_id_conflict", "request_decided")
    if not out.ok and out.code not in benign:
        raise ApiError(409, out.code, f"the confirmation was refused: {out.detail[:200]}")
    now = machine.state.requests.get(ref)
    if out.code == "request_decided" and (now is None or now.state is not RequestState.EXECUTED):
        raise _refused("request_decided", f"{ref} was decided meanwhile: no partial given")
    log.info("decrypt %s: partial given to %s (%s)", ref, ident.name, out.code)
    return web.json_response({
        "request": ref, "member": rt.name, "index": rt.index, "key_id": req.key_id,
        "version": req.version, "confirmation": out.code,
        "partial_b64": base64.b64encode(encoded).decode(),
    })  # fmt: skip


def register(app: web.Application) -> None:
    """Add this module's routes (and middlewares, if any) to the node's app."""
    app.router.add_routes(
        [
            web.post("/v1/keys/{key_id}/decrypt", decrypt_request),
            web.post("/v1/requests/{ref}/partial", partial),
        ]
    )
