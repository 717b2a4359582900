"""Grants: capabilities a key's quorum approves in advance (docs/grants.md).

Pure helpers shared by the machine and the restore checks: the canonical encoding of a
grant (the payload of its `grant` request, what approvers sign through the request
digest), context matching, and the rebuilding of the command a grantee signed from the
request stored in the state (so that `Machine.executable` re-verifies the grantee's
signature on every replica, trusting nothing stored for authorisation).
"""

from __future__ import annotations

from .commands import (
    _HEADER,
    CreateGrant,
    RequestDecrypt,
    RequestSign,
    _check_fields,
    _unpack,
    signing_bytes,
)
from .errors import DecodeError
from .model import Grant, Request, RequestKind

CONTEXT_MATCHES = ("exact", "prefix")


def grant_command(grant: Grant) -> CreateGrant:
    """The `create_grant` command (without signature) that proposed `grant`."""
    author, _, request_id = grant.request.partition(":")
    return CreateGrant(
        request_id=request_id, author=author, grant_id=grant.grant_id, grantee=grant.grantee,
        key_id=grant.key_id, operations=tuple(grant.operations), context=grant.context,
        context_match=grant.context_match, max_uses=grant.max_uses,
        expires_epoch=grant.expires_epoch,
    )  # fmt: skip


def grant_payload(grant: Grant) -> bytes:
    """The grant's canonical encoding: the `signing_bytes` of the `create_grant` that
    proposed it. It is the payload of the grant's request, so the request digest (which
    the approvers sign) binds every field of the grant, its proposer and request id."""
    return signing_bytes(grant_command(grant))


def context_matches(grant: Grant, context: str) -> bool:
    """Does a request's `context` fall within the grant's (exact match, or prefix)?"""
    if grant.context_match == "exact":
        return context == grant.context
    return grant.context_match == "prefix" and context.startswith(grant.context)


def op_of(kind: RequestKind) -> str:
    """The operation a sign/decrypt request uses ("" for any other kind)."""
    return {RequestKind.SIGN: "sign", RequestKind.DECRYPT: "decrypt"}.get(kind, "")


def grantee_command(req: Request) -> RequestSign | RequestDecrypt:
    """The command the grantee signed, rebuilt from a sign/decrypt request made under a
    grant (while it is open: the payload is dropped once the request is decided)."""
    common = dict(
        request_id=req.request_id, author=req.author, key_id=req.key_id,
        version=req.grant_version, context=req.context, grant=req.grant,
        signature=req.grant_signature,
    )  # fmt: skip
    if req.kind is RequestKind.SIGN:
        return RequestSign(message=req.payload, **common)
    if req.kind is RequestKind.DECRYPT:
        return RequestDecrypt(ciphertext=req.payload, **common)
    raise ValueError(f"a {req.kind.value} request is never made under a grant")


def decode_grant(payload: bytes) -> CreateGrant:
    """A `grant` request's payload back to the `create_grant` it encodes (with an empty
    signature), for approver tools to show what they approve. Strict and canonical;
    raises `DecodeError`. (Shown, not trusted: the approver signs the digest it
    recomputes from these bytes.)"""
    cls, rest = _unpack(payload)
    if cls is not CreateGrant:
        raise DecodeError("not a grant")
    schema = tuple((name, spec) for name, spec in cls.SCHEMA if name != "signature")
    cmd = CreateGrant(**_check_fields(rest, (*_HEADER, *schema), cls.KIND))
    if signing_bytes(cmd) != payload:
        raise DecodeError("grant is not in canonical form")
    return cmd
