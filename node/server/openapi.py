"""The node API's OpenAPI 3.1 document, served at `GET /v1/openapi.json`.

Built here from the same bounds the API enforces (`node.state.commands` for the
command schemas, `node.server.app` for the query parameters), so that a bound
changed there changes here. Every route `create_app` registers is in it (the
member-to-member `/v1/peer/` routes under the tag `peer`, marked `x-internal`);
`tests/node/cluster/test_openapi.py` checks that, validates the document and
checks the status and body of every answer of a real cluster against it, and
`tests/node/cluster/test_authz.py` checks each operation's `x-roles`.

Vendor extensions: `x-roles` (certificate roles allowed to call the operation),
`x-registration` (whether the caller must also be registered with that role in
the replica: principals registered, nodes current members), `x-internal` (peer
routes, not for principals).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from aiohttp import web

from node.server.app import MAX_WAIT_S, _identity
from node.state.commands import (
    MAX_DUAL_SIGN_EPOCHS,
    MAX_EPOCH,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    U32,
)
from node.state.metadata import (
    ALIAS_RE,
    MAX_DESCRIPTION_CHARS,
    MAX_OWNER_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    TAG_KEY_RE,
)

OPENAPI_PATH = "/v1/openapi.json"
PRINCIPAL_ROLES = ["operator", "approver", "client", "auditor"]
ALL_ROLES = [*PRINCIPAL_ROLES, "node"]

_J = "application/json"
_MSGPACK = "application/msgpack"

# ---------------------------------------------------------------- small helpers


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A closed object: every listed property, `required` (default: all) and nothing else."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def _int(lo: int | None = 0, hi: int | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", **extra}
    if lo is not None:
        out["minimum"] = lo
    if hi is not None:
        out["maximum"] = hi
    return out


def _str(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {_J: {"schema": schema}}, **extra}


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


# ---------------------------------------------------------------- schemas

_HEX = "^[0-9a-f]*$"
_B64_MAX = 4 * ((MAX_PAYLOAD_BYTES + 2) // 3)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        {"error": _str(description="a stable code (`bad_request`, `forbidden`, ...)"),
         "message": _str(description="text for people")},
        description="Every error answer (docs/api.md, \"Other statuses\").",
    ),
    "Outcome": _obj(
        {
            "ok": {"type": "boolean", "const": True},
            "code": _str(description="`ok` or the request's state after the command "
                         "(`pending`, `approved`, `executed`, `failed`)"),
            "detail": _str(),
            "seq": _int(-1, description="the audit record the command produced"),
            "request": _str(description="`<author>:<request id>`: the command's reference"),
            "grant": _str(description="the grant id (grant routes only)"),
            "key_id": _ref("Name") | {"description": "sign/decrypt: the key the path named "
                                      "(an alias resolved to its key id)"},
        },
        required=["ok", "code", "detail", "seq", "request"],
        description="The outcome of an applied write (docs/api.md, \"Writes: outcomes\").",
    ),
    "Rejection": _obj(
        {
            "error": _str(description="the rejection reason (= `code`)"),
            "message": _str(),
            "ok": {"type": "boolean", "const": False},
            "code": _str(description="the rejection reason, e.g. `unknown_key`"),
            "detail": _str(),
            "seq": _int(-1, description="the audit record (`rejected:<reason>`), -1 if none"),
            "request": _str(),
            "grant": _str(description="the grant id (grant routes only)"),
            "key_id": _str(description="sign/decrypt: the key id the path resolved to"),
        },
        required=["error", "message", "ok", "code", "detail", "seq", "request"],
        description="A rejected command: an error body plus the outcome's fields.",
    ),
    "RequestId": _str(pattern="^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$",
                      description="chosen by the caller, scoped by author; a retry reuses it"),
    "Name": _str(pattern="^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"),
    "Text": _str(pattern="^[\\x20-\\x7e]*$", maxLength=MAX_TEXT_CHARS,
                 description="printable ASCII"),
    "Signature": _str(pattern="^[0-9a-fA-F]{128}$",
                      description="64 bytes in hex: an Ed25519 signature by the caller"),
    "Health": _obj(
        {
            "node": _str(), "role": _str(description="Raft role: leader, follower, ..."),
            "leader": _nullable(_str()), "applied": _int(), "bootstrapped": {"type": "boolean"},
            "epoch": _int(), "status": _str(enum=["ok", "degraded", "failed"]),
        }
    ),
    "Status": _obj(
        {
            "node": _str(), "cluster_id": _str(), "role": _str(), "term": _int(),
            "leader": _nullable(_str()), "commit": _int(), "applied": _int(),
            "snapshot_index": _int(), "log_first_index": _int(), "epoch": _int(),
            "bootstrapped": {"type": "boolean"},
            "audit_seq": _int(description="number of audit records"),
            "health": _str(enum=["ok", "degraded", "failed"]),
            "error": _nullable(_str(description="why the node fail-stopped, or `hsm: ...` "
                                        "while its HSM is unusable")),
            "hsm": {"type": "object", "properties": {
                "ok": {"type": "boolean"}, "error": _nullable(_str()),
                "since": _nullable({"type": "number"}),
                "last_probe_error": _nullable(_str())},
                "description": "this node's HSM as its own probes see it (docs/hsm.md)"},
            "started_at": {"type": "number", "description": "process image start (unix s): "
                           "a restart in place after an HSM failure keeps the pid"},
            "registered": _nullable({"type": "boolean", "description": "is the token's "
                                     "identity key the one the state registers for it"}),
            "identity_key": _str(pattern="^[0-9a-f]{64}$"),
            "recovery_key": _str(pattern="^[0-9a-f]{64}$",
                                 description="X25519 key officers release escrow pieces to"),
            "signing": {
                "type": "object", "required": ["count"],
                "properties": {"count": _int()},
                "additionalProperties": {"type": "number",
                                         "description": "`<phase>_ms`: median milliseconds"},
            },
            "snapshots": {"type": "object", "additionalProperties": _int()},
            "stocked_nonces": _int(),
        }
    ),
    "Version": _obj(
        {
            "version": _int(1, U32),
            "state": _str(enum=["pending", "active", "retired", "revoked", "destroyed"]),
            "request": _str(description="the create or rotate request id that made it"),
            "activation_epoch": _int(description="0: not scheduled yet"),
            "retired_epoch": _int(), "revoked_epoch": _int(), "destroyed_epoch": _int(),
            "uses": _int(),
            "replaced": _int(description="the version that was primary when this one "
                             "activated (0: none): what a rollback restores"),
            "rolled_back_epoch": _int(description="a rollback made it primary again "
                                      "then (0: never)"),
            "erased_by": _list(_str()),
            "dkg_posts": _list(_str()),
            "group_public_key": _nullable(_str(pattern="^[0-9a-f]{64}$")),
            "group_public_key_pem": _nullable(_str()),
            "verification_shares": _list(_str(pattern="^[0-9a-f]{64}$")),
        }
    ),
    "Key": _obj(
        {
            "key_id": _ref("Name"),
            "purpose": _str(enum=["sign", "encrypt", "audit"],
                            description="audit: the reserved cluster-audit key"),
            "policy_id": _str(), "primary": _int(description="0: none yet"),
            "lifecycle_request": _nullable(_str()),
            "owner": _str(maxLength=MAX_OWNER_CHARS, description="metadata (no authority)"),
            "description": _str(maxLength=MAX_DESCRIPTION_CHARS,
                                description="metadata (no authority)"),
            "tags": {"type": "object", "maxProperties": MAX_TAGS,
                     "propertyNames": {"pattern": f"^{TAG_KEY_RE.pattern}$"},
                     "additionalProperties": _str(maxLength=MAX_TAG_VALUE_CHARS),
                     "description": "metadata (no authority)"},
            "aliases": _list(_ref("AliasName")),
            "versions": _list(_ref("Version")),
        }
    ),
    "KeyList": _obj({"keys": _list(_ref("Key"))}),
    "AliasName": _str(pattern=f"^{ALIAS_RE.pattern}$"),
    "Alias": _obj(
        {
            "alias": _ref("AliasName"), "key_id": _ref("Name"),
            "created_epoch": _int(1, description="when this binding was (re)created"),
        }
    ),
    "AliasList": _obj({"aliases": _list(_ref("Alias"))}),
    "Policy": _obj(
        {
            "policy_id": _str(), "requesters": _list(_str()),
            "operations": _list(_str(enum=["sign", "decrypt"])),
            "approvers": _list(_str()), "k": _int(1), "rotation_interval_s": _int(),
            "max_uses": _int(), "grace_epochs": _int(), "waiting_epochs": _int(),
            "escrow": {"type": "boolean"},
            "dual_sign_epochs": _int(0, MAX_DUAL_SIGN_EPOCHS,
                                     description="epochs after a rotation in which the "
                                     "replaced version also signs (0: off)"),
        }
    ),
    "PolicyList": _obj({"policies": _list(_ref("Policy"))}),
    "Governance": _obj({"approvers": _list(_str()), "k": _int(1),
                        "time_lock_epochs": _int(1)}),
    "Request": _obj(
        {
            "ref": _str(), "request_id": _ref("RequestId"),
            "kind": _str(enum=[
                "create_key", "sign", "decrypt", "rotate", "revoke", "destroy", "rollback",
                "add_principal", "remove_principal", "rekey_principal", "set_policy",
                "set_governance", "set_threshold", "add_member", "remove_member", "cancel",
            ]),
            "author": _str(),
            "state": _str(enum=["pending", "approved", "executed", "failed"]),
            "key_id": _nullable(_str()), "purpose": _nullable(_str()), "version": _int(),
            "context": _str(), "policy_id": _nullable(_str()),
            "policy_hash": _str(pattern=_HEX), "approvers": _list(_str()), "k": _int(),
            "approvals": _list(_str()), "activate_epoch": _int(), "effective_epoch": _int(),
            "dual_version": _int(description="a dual-sign request: the replaced version "
                                 "that signs too (0: none)"),
            "submitted_epoch": _int(), "decided_epoch": _int(),
            "payload_hash": _str(pattern=_HEX),
            "payload_sha256": _nullable(_str(pattern="^[0-9a-f]{64}$")),
            "digest": _str(pattern=_HEX, description="the canonical request digest"),
            "failure": _nullable(_str()),
            "reports": {"type": "object", "additionalProperties": _str()},
            "cluster_id": _str(),
            "policy": _ref("Policy"),
            "governance": _ref("Governance"),
            "signature": _str(pattern="^[0-9a-f]{128}$",
                              description="an executed sign request's Ed25519 signature"),
            "previous_version": _int(1, U32, description="a dual-sign request: the "
                                     "version that made `previous_signature`"),
            "previous_signature": _str(pattern="^[0-9a-f]{128}$",
                                       description="a dual-sign request: the same message "
                                       "signed by `previous_version`"),
            "payload_b64": _str(contentEncoding="base64",
                                description="for approvers and the author only"),
        },
        required=[
            "ref", "request_id", "kind", "author", "state", "key_id", "purpose", "version",
            "context", "policy_id", "policy_hash", "approvers", "k", "approvals",
            "activate_epoch", "dual_version", "effective_epoch", "submitted_epoch",
            "decided_epoch", "payload_hash", "payload_sha256", "digest", "failure", "reports",
            "cluster_id",
        ],
    ),
    "RequestList": _obj({"requests": _list(_ref("Request"))},
                        description="requests without `payload_b64`"),
    "AuditRecord": _obj(
        {
            "seq": _int(), "epoch": _int(), "author": _str(), "kind": _str(),
            "request_id": _str(), "subject": _str(), "key_id": _str(), "version": _int(),
            "digest": _str(pattern=_HEX),
            "outcome": _str(description="`ok`, a request state, or `rejected:<reason>`"),
            "hash": _str(pattern="^[0-9a-f]+$"),
        }
    ),
    "AuditTail": _obj(
        {
            "records": _list(_ref("AuditRecord")),
            "head": _nullable(_str(pattern="^[0-9a-f]+$",
                                   description="hash of the last record")),
            "count": _int(description="number of records in the chain"),
        }
    ),
    "EpochAdvance": _obj(
        {"epoch_before": _int(), "epoch": _int(),
         "voted": _list(_str(description="members that accepted the nudge"))}
    ),
    "Partial": _obj(
        {
            "request": _str(), "member": _str(), "index": _int(1), "key_id": _str(),
            "version": _int(1), "confirmation": _str(description="outcome code of the "
                                                     "member's recorded confirmation"),
            "partial_b64": _str(contentEncoding="base64",
                                description="the partial decryption with its DLEQ proof"),
        }
    ),
    "Grant": _obj(
        {
            "grant_id": _str(), "grantee": _str(), "key_id": _str(),
            "operations": _list(_str()), "context": _str(), "context_match": _str(),
            "max_uses": _int(), "uses": _int(), "uses_left": _int(), "expires_epoch": _int(),
            "expired": {"type": "boolean"}, "state": _str(), "usable": {"type": "boolean"},
            "request": _str(), "request_state": _nullable(_str()),
            "approvers": _list(_str()), "k": _int(), "approvals": _list(_str()),
            "digest": _str(pattern=_HEX), "activated_epoch": _int(), "revoked_epoch": _int(),
            "revoked_by": _nullable(_str()), "epoch": _int(),
        },
        description="docs/grants.md",
    ),
    "GrantList": _obj({"grants": _list(_ref("Grant")), "epoch": _int()}),
    # ------------------------------------------------------------ request bodies
    "CreateKeyBody": _obj(
        {
            "request_id": _ref("RequestId"), "key_id": _ref("Name"),
            "purpose": _str(enum=["sign", "encrypt"]), "policy_id": _ref("Name"),
            "activate_epoch": _int(0, MAX_EPOCH, default=0,
                                   description="0 or a future epoch"),
            "owner": _str(maxLength=MAX_OWNER_CHARS, description="optional metadata"),
            "description": _str(maxLength=MAX_DESCRIPTION_CHARS,
                                description="optional metadata"),
            "tags": {"type": "object", "maxProperties": MAX_TAGS,
                     "additionalProperties": _str(maxLength=MAX_TAG_VALUE_CHARS),
                     "description": "optional metadata"},
            "signature": {**_ref("Signature"),
                          "description": "over the command's signing digest"},
        },
        required=["request_id", "key_id", "purpose", "policy_id", "signature"],
    ),
    "RollbackBody": _obj(
        {
            "request_id": _ref("RequestId"),
            "version": _int(1, U32, description="the retired version the primary replaced"),
            "signature": {**_ref("Signature"),
                          "description": "the caller's Ed25519 signature over the "
                          "request_rollback command (`signing_message`)"},
        },
    ),
    "SignBody": _obj(
        {
            "request_id": _ref("RequestId"),
            "message_b64": _str(contentEncoding="base64", minLength=4, maxLength=_B64_MAX,
                                description=f"the message, 1..{MAX_PAYLOAD_BYTES} bytes"),
            "context": {**_ref("Text"), "default": "",
                        "description": "bound into the approval"},
            "version": _int(0, U32, default=0,
                            description="0: the primary version at submission"),
        },
        required=["request_id", "message_b64"],
    ),
    "DecryptBody": _obj(
        {
            "request_id": _ref("RequestId"),
            "version": _int(1, U32),
            "context": {**_ref("Text"), "default": ""},
            "ciphertext_b64": _str(contentEncoding="base64", minLength=4, maxLength=_B64_MAX,
                                   description="the envelope's wrapped data key, "
                                               f"1..{MAX_PAYLOAD_BYTES} bytes"),
        },
        required=["request_id", "version", "ciphertext_b64"],
    ),
    "PartialBody": _obj(
        {"index": _int(None, description="the log index this replica should apply first "
                                          "(0 or less: none)", default=0)},
        required=[],
    ),
    "ApproveBody": _obj(
        {"request_id": {**_ref("RequestId"), "description": "the approval's own id"},
         "signature": {**_ref("Signature"), "description": "over the request digest"}},
    ),
    "CommandBody": _obj(
        {"command_b64": _str(contentEncoding="base64",
                             description="base64 of `encode_command(signed command)`")},
    ),
}  # fmt: skip

RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _json(_ref("Error"), "`bad_request`: not a JSON object, unknown or missing "
                        "field, wrong type, bad hex/base64, out-of-schema value"),
    "Unauthenticated": _json(_ref("Error"), "`unauthenticated`: the certificate names no "
                             "identity"),
    "Forbidden": _json(_ref("Error"), "`forbidden`: role not allowed here, not registered "
                       "with that role, not a current member"),
    "TooLarge": _json(_ref("Error"), "`too_large`: body over `[api] max_body_bytes`"),
    "Internal": _json(_ref("Error"), "`internal`: a bug, logged on the node"),
    "Unavailable": _json(
        _ref("Error"),
        "`no_leader` or `node_failed` (with `Retry-After: 1`), `not_bootstrapped`",
        headers={"Retry-After": {"schema": _str(), "description": "for no_leader, node_failed"}},
    ),
    "Timeout": _json(_ref("Error"), "`timeout`: the outcome is unknown; retry with the "
                     "same request id"),
    "Outcome": _json(_ref("Outcome"), "the command's outcome"),
    "Rejected": _json({"anyOf": [_ref("Rejection"), _ref("Error")]},
                      "a rejected command (see docs/api.md for code -> status), or an "
                      "error before the command was built"),
}  # fmt: skip


# ---------------------------------------------------------------- operations

_STALE = {
    "name": "stale", "in": "query", "required": False,
    "description": "`true` or `1`: read this node's replica without a read barrier",
    "schema": _str(),
}  # fmt: skip


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": _str()}  # fmt: skip


_KEY_ID = _path_param("key_id", "a key id, or a live alias (docs/metadata.md)")
_REF = _path_param("ref", "a request reference `<author>:<request id>`")


def _op(
    op_id: str, summary: str, roles: list[str], responses: dict[str, Any], *, tag: str,
    registration: bool = True, parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None, body_required: bool = True, msgpack_body: bool = False,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "operationId": op_id, "summary": summary, "tags": [tag],
        "x-roles": roles, "x-registration": registration,
    }  # fmt: skip
    if parameters:
        out["parameters"] = parameters
    if body is not None:
        out["requestBody"] = {"required": body_required, "content": {_J: {"schema": body}}}
    if msgpack_body:
        out["requestBody"] = {
            "required": True,
            "content": {_MSGPACK: {"schema": _str(contentMediaType=_MSGPACK)}},
        }
    common: dict[str, Any] = {"401": _resp("Unauthenticated"), "500": _resp("Internal")}
    if registration or roles != ALL_ROLES:
        common["403"] = _resp("Forbidden")
    if body is not None or msgpack_body:
        common["413"] = _resp("TooLarge")
    common["503"] = _resp("Unavailable")
    merged = {**common, **responses}
    out["responses"] = dict(sorted(merged.items()))
    if tag == "peer":
        out["x-internal"] = True
    return out


READ = ["operator", "approver", "client", "auditor"]
AUDIT = ["operator", "approver", "auditor"]


def _write(op_id: str, summary: str, roles: list[str], body: str, **kw: Any) -> dict[str, Any]:
    rejected = _resp("Rejected")
    return _op(
        op_id, summary, roles, tag=kw.pop("tag", "writes"), body=_ref(body),
        responses={
            "200": _resp("Outcome"), "400": rejected, "401": rejected, "403": rejected,
            "404": rejected, "409": rejected, "429": rejected, "503": rejected,
            "504": _resp("Timeout"),
        },
        **kw,
    )  # fmt: skip


def _msgpack_ok(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {_MSGPACK: {"schema": _str(contentMediaType=_MSGPACK)}}}  # fmt: skip


PATHS: dict[str, dict[str, Any]] = {
    "/v1/sys/health": {"get": _op(
        "health", "Health of this node (200 ok, 503 degraded)", ALL_ROLES, tag="sys",
        registration=False,
        responses={"200": _json(_ref("Health"), "healthy: a leader is known, bootstrapped"),
                   "503": _json({"anyOf": [_ref("Health"), _ref("Error")]},
                                "degraded (the Health body), or `node_failed`")},
    )},
    "/v1/sys/status": {"get": _op(
        "status", "This node's status (also served by a fail-stopped node)", ALL_ROLES,
        tag="sys", registration=False, responses={"200": _json(_ref("Status"), "the status")},
    )},
    OPENAPI_PATH: {"get": _op(
        "openapi", "This document", ALL_ROLES, tag="sys", registration=False,
        responses={"200": _json({"type": "object"}, "the OpenAPI 3.1 document")},
    )},
    "/v1/keys": {
        "get": _op("list_keys", "All keys, sorted by id", READ, tag="keys",
                   parameters=[_STALE], responses={"200": _json(_ref("KeyList"), "the keys")}),
        "post": _write("create_key", "An operator's signed create_key", ["operator"],
                       "CreateKeyBody", tag="keys"),
    },
    "/v1/keys/{key_id}": {"get": _op(
        "show_key", "One key, by id or live alias", READ, tag="keys",
        parameters=[_KEY_ID, _STALE],
        responses={"200": _json(_ref("Key"), "the key"),
                   "404": _json(_ref("Error"), "`unknown_key`")},
    )},
    "/v1/keys/{key_id}/sign": {"post": _write(
        "sign_request", "A client's request_sign", ["client"], "SignBody", tag="requests",
        parameters=[_KEY_ID],
    )},
    "/v1/keys/{key_id}/rollback": {"post": _write(
        "rollback_request", "An operator's signed request_rollback (the key policy's "
        "quorum decides; docs/lifecycle.md)", ["operator"], "RollbackBody", tag="keys",
        parameters=[_KEY_ID],
    )},
    "/v1/keys/{key_id}/decrypt": {"post": _write(
        "decrypt_request", "A client's request_decrypt (envelope's wrapped data key)",
        ["client"], "DecryptBody", tag="requests", parameters=[_KEY_ID],
    )},
    "/v1/aliases": {"get": _op(
        "list_aliases", "Live aliases, sorted by name (`key=K`: those naming K)", READ,
        tag="keys",
        parameters=[{"name": "key", "in": "query", "required": False, "schema": _str()},
                    _STALE],
        responses={"200": _json(_ref("AliasList"), "the aliases")},
    )},
    "/v1/policies": {"get": _op(
        "list_policies", "All policies", READ, tag="policies", parameters=[_STALE],
        responses={"200": _json(_ref("PolicyList"), "the policies")},
    )},
    "/v1/requests": {"get": _op(
        "list_requests", "Requests, newest first, without payloads (clients: their own)",
        READ, tag="requests",
        parameters=[
            {"name": "state", "in": "query", "required": False,
             "schema": _str(enum=["pending", "approved", "executed", "failed"]),
             "description": "anything else is 400"},
            {"name": "key", "in": "query", "required": False, "schema": _str()},
            {"name": "kind", "in": "query", "required": False, "schema": _str()},
            {"name": "limit", "in": "query", "required": False,
             "schema": _int(None, default=100), "description": "clamped to 1..1000"},
            _STALE,
        ],
        responses={"200": _json(_ref("RequestList"), "the requests"),
                   "400": _resp("BadRequest")},
    )},
    "/v1/requests/{ref}": {"get": _op(
        "show_request", "One request; `wait` long-polls until executed or failed", READ,
        tag="requests",
        parameters=[
            _REF,
            {"name": "wait", "in": "query", "required": False,
             "schema": {"type": "number", "default": 0},
             "description": f"seconds, clamped to 0..{MAX_WAIT_S:g}"},
            {"name": "until", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["decided", "approved"],
                        "default": "decided"},
             "description": "what `wait` waits for: executed or failed (`decided`), or "
                            "no longer pending (`approved`)"},
            _STALE,
        ],
        responses={"200": _json(_ref("Request"), "the request"),
                   "400": _resp("BadRequest"),
                   "404": _json(_ref("Error"), "`unknown_request` (or not the client's own)")},
    )},
    "/v1/requests/{ref}/approve": {"post": _write(
        "approve", "An approver's signed approval", ["approver"], "ApproveBody",
        tag="requests", parameters=[_REF],
    )},
    "/v1/requests/{ref}/partial": {"post": _op(
        "partial", "This member's partial decryption for an approved decrypt request "
        "(its author only)", ["client"], tag="requests", parameters=[_REF],
        body=_ref("PartialBody"), body_required=False,
        responses={
            "200": _json(_ref("Partial"), "the partial and its proof"),
            "400": _resp("BadRequest"),
            "403": _json(_ref("Error"), "`forbidden`, or a refusal: `not_requester`, "
                         "`not_approved`, `wrong_request_kind`, `version_not_usable`, "
                         "`request_decided`, `invalid_envelope`, `limit_reached`"),
            "404": _json(_ref("Error"), "`unknown_request`"),
            "409": _json(_ref("Error"), "the member's confirmation was refused"),
            "503": _json(_ref("Error"), "`not_caught_up`, `no_leader`, `node_failed`, "
                         "`not_bootstrapped`"),
            "504": _resp("Timeout"),
        },
    )},
    "/v1/commands": {"post": _write(
        "post_command", "A command signed on the caller's side (author = caller; not "
        "bootstrap, request_sign, request_decrypt)", ["operator", "approver"],
        "CommandBody",
    )},
    "/v1/epoch/advance": {"post": _op(
        "epoch_advance", "Vote for the next epoch and nudge every member (body ignored)",
        ["operator"], tag="writes",
        responses={"200": _json(_ref("EpochAdvance"), "the epoch before and after "
                                "(waits up to 5 s)")},
    )},
    "/v1/audit": {"get": _op(
        "audit_tail", "The newest `limit` records, or those after `after`", AUDIT,
        tag="audit",
        parameters=[
            {"name": "limit", "in": "query", "required": False,
             "schema": _int(None, default=50), "description": "clamped to 1..1000"},
            {"name": "after", "in": "query", "required": False, "schema": _int(None),
             "description": "a sequence number: the records after it"},
            _STALE,
        ],
        responses={"200": _json(_ref("AuditTail"), "the records"),
                   "400": _resp("BadRequest")},
    )},
    "/v1/audit/export": {"get": _op(
        "audit_export", "The whole audit chain (`node.state.encode_records`)", AUDIT,
        tag="audit", parameters=[_STALE],
        responses={"200": {
            **_msgpack_ok("the chain, msgpack"),
            "headers": {"X-Audit-Head": {"schema": _str(pattern=_HEX),
                                         "description": "hash of the last record, or empty"}},
        }},
    )},
    "/v1/events": {"get": _op(
        "events", "Lifecycle events as server-sent events (docs/events.md); clients see "
        "those of keys whose policy names them as a requester", ALL_ROLES, tag="audit",
        parameters=[
            {"name": "after", "in": "query", "required": False, "schema": _int(-1),
             "description": "the last sequence number the caller has (`Last-Event-ID` "
                            "wins); -1: from the start"},
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": _str()},
            {"name": "key", "in": "query", "required": False, "schema": _str()},
            {"name": "types", "in": "query", "required": False, "schema": _str(),
             "description": "comma-separated event types; an unknown one is 400"},
            {"name": "follow", "in": "query", "required": False,
             "schema": _str(enum=["true", "1", "false", "0"]),
             "description": "false: stop at the head (default true)"},
            _STALE,
        ],
        responses={"200": {"description": "the stream: `id: <seq>`, `event: <type>`, "
                                          "`data: <JSON object>`",
                           "content": {"text/event-stream": {"schema": _str()}}},
                   "400": _resp("BadRequest"),
                   "503": _json(_ref("Error"), "`too_many_streams` (`Retry-After: 5`), "
                                "`no_leader`, `node_failed`, `not_bootstrapped`")},
    )},
    "/v1/grants": {
        "get": _op("list_grants", "Grants (clients: their own); `key`, `grantee`, `state`",
                   READ, tag="grants",
                   parameters=[
                       {"name": "key", "in": "query", "required": False, "schema": _str()},
                       {"name": "grantee", "in": "query", "required": False, "schema": _str()},
                       {"name": "state", "in": "query", "required": False, "schema": _str(),
                        "description": "pending, active, revoked or failed; else 400"},
                       _STALE,
                   ],
                   responses={"200": _json(_ref("GrantList"), "the grants"),
                              "400": _resp("BadRequest")}),
        "post": _write("create_grant", "An operator's signed create_grant", ["operator"],
                       "CommandBody", tag="grants"),
    },
    "/v1/grants/{grant_id}": {"get": _op(
        "show_grant", "One grant", READ, tag="grants",
        parameters=[_path_param("grant_id", "a grant id"), _STALE],
        responses={"200": _json(_ref("Grant"), "the grant"),
                   "404": _json(_ref("Error"), "`unknown_grant`")},
    )},
    "/v1/grants/{grant_id}/revoke": {"post": _write(
        "revoke_grant", "A signed revoke_grant for this grant", ["operator", "approver"],
        "CommandBody", tag="grants", parameters=[_path_param("grant_id", "a grant id")],
    )},
    "/v1/requests/signed": {"post": _write(
        "signed_request", "A request_sign or request_decrypt the client signed, under a grant",
        ["client"], "CommandBody", tag="grants",
    )},
    "/metrics": {"get": _op(
        "metrics", "Prometheus metrics (docs/metrics.md)", ["operator", "auditor", "node"],
        tag="sys",
        responses={"200": {"description": "Prometheus text (or OpenMetrics if asked)",
                           "content": {"text/plain": {"schema": _str()},
                                       "application/openmetrics-text": {"schema": _str()}}}},
    )},
    "/v1/repairs": {"get": _op(
        "list_repairs", "Every member's latest share repair and its progress per key "
        "version (docs/recovery.md)", AUDIT, tag="recovery",
        responses={"200": _json({"type": "object"}, "`{repairs: [...]}`")},
    )},
    "/v1/recovery": {"get": _op(
        "show_recovery", "Recovery officers, escrow per member, and the latest recovery of "
        "a lost cluster with what officers need to release their pieces (docs/recovery.md)",
        AUDIT, tag="recovery",
        responses={"200": _json({"type": "object"}, "`{officers, k, escrowed, recovery}`")},
    )},
    "/v1/refresh": {"get": _op(
        "show_refresh", "The latest proactive refresh and each version's share generation "
        "(docs/recovery.md)", AUDIT, tag="recovery",
        responses={"200": _json({"type": "object"},
                                "`{refresh: {...} | null, generations: {...}}`")},
    )},
    # ------------------------------------------------------------ peers (internal)
    "/v1/peer/propose": {"post": _op(
        "peer_propose", "The leader proposes an encoded command; its encoded outcome",
        ["node"], tag="peer", msgpack_body=True,
        responses={"200": _msgpack_ok("encoded outcome"), "400": _resp("BadRequest"),
                   "504": _resp("Timeout")},
    )},
    "/v1/peer/dkg/round2": {"post": _op(
        "peer_dkg_round2", "One sealed DKG round-2 share", ["node"], tag="peer",
        msgpack_body=True,
        responses={"200": _msgpack_ok("empty"), "400": _resp("BadRequest"),
                   "404": _json(_ref("Error"), "`unknown_dkg`: resend later"),
                   "409": _json(_ref("Error"), "`refused`")},
    )},
    "/v1/peer/repair": {"post": _op(
        "peer_repair", "A helper's sealed pieces or sums for the current repair run",
        ["node"], tag="peer", msgpack_body=True,
        responses={"200": _msgpack_ok("empty"), "400": _resp("BadRequest"),
                   "404": _json(_ref("Error"), "`unknown_repair`: resend later"),
                   "409": _json(_ref("Error"), "`refused`")},
    )},
    "/v1/peer/refresh": {"post": _op(
        "peer_refresh", "A member's sealed sub-shares for the current refresh run",
        ["node"], tag="peer", msgpack_body=True,
        responses={"200": _msgpack_ok("empty"), "400": _resp("BadRequest"),
                   "404": _json(_ref("Error"), "`unknown_refresh`: resend later"),
                   "409": _json(_ref("Error"), "`refused`")},
    )},
    "/v1/peer/sign/commit": {"post": _op(
        "peer_sign_commit", "Fresh nonce commitments", ["node"], tag="peer",
        msgpack_body=True,
        responses={"200": _msgpack_ok("CommitResponse"), "400": _resp("BadRequest"),
                   "403": _json(_ref("Error"), "`forbidden` or `refused`")},
    )},
    "/v1/peer/sign/share": {"post": _op(
        "peer_sign_share", "This member's signature share", ["node"], tag="peer",
        msgpack_body=True,
        responses={"200": _msgpack_ok("ShareResponse"), "400": _resp("BadRequest"),
                   "403": _json(_ref("Error"), "`forbidden` or `refused`")},
    )},
    "/v1/peer/epoch/nudge": {"post": _op(
        "peer_epoch_nudge", "Vote for the next epoch now", ["node"], tag="peer",
        responses={"200": {"description": "voted (empty body)"},
                   "429": {"description": "nudged within `epoch_min_interval_s` "
                                          "(empty body)"}},
    )},
}  # fmt: skip


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "custody node API",
            "version": "1",
            "description": (
                "The HTTPS API every node serves (docs/api.md). TLS 1.3 with a client "
                "certificate from the cluster CA: the caller is its certificate's identity "
                "(name, role). `x-roles` lists the roles an operation accepts; with "
                "`x-registration` the name must also be registered with that role in the "
                "node's replica (nodes: a current member). Any path or method not listed "
                "is 404 `not_found` or 405 `method_not_allowed` with an Error body."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "servers": [{"url": "https://{node}", "variables": {"node": {
            "default": "127.0.0.1:8443", "description": "a node's `[api] listen` address"}}}],
        "security": [{"mutualTLS": []}],
        "tags": [
            {"name": "sys", "description": "health, status, metrics, this document"},
            {"name": "keys"}, {"name": "policies"}, {"name": "requests"},
            {"name": "writes", "description": "signed commands and epoch nudges"},
            {"name": "audit"}, {"name": "grants", "description": "docs/grants.md"},
            {"name": "recovery", "description": "share repair and refresh (docs/recovery.md)"},
            {"name": "peer", "description": "member-to-member, msgpack bodies; internal",
             "x-internal": True},
        ],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {"mutualTLS": {
                "type": "mutualTLS",
                "description": "a client certificate issued by the cluster CA (docs/pki.md); "
                               "no other authentication",
            }},
        },
    }  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())


def operations() -> set[tuple[str, str]]:
    """Every (METHOD, path template) the document describes."""
    return {(m.upper(), p) for p, item in PATHS.items() for m in item}


async def get_openapi(request: web.Request) -> web.StreamResponse:
    """`GET /v1/openapi.json`: any certificate that names an identity (nothing secret)."""
    _identity(request)
    return web.json_response(_document())
