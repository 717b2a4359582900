"""The OpenAPI document (`GET /v1/openapi.json`, node/server/openapi.py) against a
real cluster: the document is valid OpenAPI 3.1, it describes exactly the routes the
app registers, and every answer of a representative session (reads, a signature, a
decryption with partials, approvals, errors, an epoch advance) has a documented status
and a body that validates against the documented schema.

One 3-node cluster (threshold 2) per module.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from node import tlsctx
from node.client import envelope as ev
from node.pki.store import read_private_key
from node.server.openapi import OPENAPI_PATH, document, operations
from node.state import CreateKey, sign_approval, sign_command
from tests.node.cluster.harness import Live, b64, running

pytestmark = pytest.mark.slow

DOC_URI = "urn:custody:openapi"
DOC = document()
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(
    DOC, default_specification=DRAFT202012))  # fmt: skip


def _ptr(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _validator(pointer: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=REGISTRY)


def _operation(method: str, template: str) -> dict[str, Any]:
    assert template in DOC["paths"], f"{template} not documented"
    item = DOC["paths"][template]
    assert method.lower() in item, f"{method} {template} not documented"
    return item[method.lower()]


def _response(method: str, template: str, status: int) -> tuple[dict[str, Any], str]:
    """The documented response object for a status and its JSON pointer."""
    responses = _operation(method, template)["responses"]
    assert str(status) in responses, f"{method} {template}: {status} is not documented"
    resp = responses[str(status)]
    pointer = _ptr("paths", template, method.lower(), "responses", str(status))
    if "$ref" in resp:
        pointer = resp["$ref"].removeprefix("#")
        name = pointer.rsplit("/", 1)[1]
        resp = DOC["components"]["responses"][name]
    return resp, pointer


def check_response(method: str, template: str, status: int, body: Any,
                   content_type: str) -> None:  # fmt: skip
    resp, pointer = _response(method, template, status)
    content = resp.get("content", {})
    if "application/json" in content:
        assert content_type == "application/json", (method, template, status, content_type)
        schema = _ptr("content", "application/json", "schema")
        _validator(pointer + schema).validate(body)
    elif content:
        assert content_type in content, (method, template, status, content_type)
    else:
        assert body in (b"", None), body


def request_valid(method: str, template: str, body: Any) -> bool:
    """Whether `body` is valid for the operation's documented JSON request body."""
    op = _operation(method, template)
    pointer = _ptr("paths", template, method.lower(), "requestBody", "content",
                   "application/json", "schema")  # fmt: skip
    assert "requestBody" in op, (method, template)
    return _validator(pointer).is_valid(body)


class Api:
    """Raw HTTPS calls whose every answer is checked against the document."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.seen: set[tuple[str, str, int]] = set()

    def __call__(
        self, who: str, method: str, template: str, path: str | None = None, *,
        body: Any = None, node: str = "node-1", expect: int | None = 200,
        valid_request: bool | None = None,
    ) -> Any:  # fmt: skip
        if "?" in template:  # a documented path with a query string
            path, template = template, template.split("?", 1)[0]
        if body is not None and valid_request is not None:
            assert request_valid(method, template, body) is valid_request, body
        status, ctype, out = asyncio.run(self._call(who, method, node, path or template, body))
        if expect is not None:
            assert status == expect, (method, path or template, status, out)
        check_response(method, template, status, out, ctype)
        self.seen.add((method, template, status))
        return out

    async def _call(self, who: str, method: str, node: str, path: str,
                    body: Any) -> tuple[int, str, Any]:  # fmt: skip
        ctx = tlsctx.client_context(*self.live.creds(who))
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as s,
            s.request(method, f"https://{self.live.api[node]}{path}", json=body) as r,
        ):
            raw = await r.read()
            return r.status, r.content_type, json.loads(raw) if r.content_type.endswith(
                "json") else raw  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("cluster") / "c"
    with running(root, schedule={"dkg_timeout_s": 4.0, "epoch_min_interval_s": 0.0}) as c:
        yield c


@pytest.fixture(scope="module")
def api(live: Live) -> Api:
    return Api(live)


def _approve_raw(api: Api, ref: str, who: str, rid: str) -> dict[str, Any]:
    r = api("audit", "GET", "/v1/requests/{ref}", f"/v1/requests/{ref}")
    key = read_private_key(api.live.root / "pki" / "principals" / who / "approval.key")
    body = {"request_id": rid, "signature": sign_approval(key, bytes.fromhex(r["digest"])).hex()}
    return api(who, "POST", "/v1/requests/{ref}/approve", f"/v1/requests/{ref}/approve",
               body=body, valid_request=True)  # fmt: skip


# ---------------------------------------------------------------- the document itself


def test_document_is_valid_openapi() -> None:
    validate_spec(document())
    assert DOC["openapi"].startswith("3.1")
    assert DOC["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert DOC["security"] == [{"mutualTLS": []}]
    for template, item in DOC["paths"].items():
        for method, op in item.items():
            assert op["x-roles"], (method, template)
            assert "401" in op["responses"], (method, template)
            assert template.startswith("/v1/peer/") == (op["tags"] == ["peer"])


def test_document_describes_exactly_the_registered_routes() -> None:
    from node.server.app import create_app

    # `create_app` touches only these attributes of the runtime while building the app.
    stub = SimpleNamespace(cfg=SimpleNamespace(max_body_bytes=262144), slot=None)
    app = create_app(stub)  # type: ignore[arg-type]
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}  # fmt: skip
    assert routes == operations()


def test_served_document_is_the_document(api: Api) -> None:
    for who in ("audit", "app1", "node-2"):
        served = api(who, "GET", OPENAPI_PATH)
        assert served == DOC
    validate_spec(served)


# ---------------------------------------------------------------- a session, checked


def test_sys_and_reads_match_the_document(api: Api, live: Live) -> None:
    for node in live.api:
        api("ops", "GET", "/v1/sys/health", node=node)
        api("app1", "GET", "/v1/sys/status", node=node)
    keys = api("audit", "GET", "/v1/keys")
    assert [k["key_id"] for k in keys["keys"]] == ["cluster-audit", "k1"]
    api("app1", "GET", "/v1/keys?stale=true", node="node-3")
    api("alice", "GET", "/v1/keys/{key_id}", "/v1/keys/k1")
    api("audit", "GET", "/v1/keys/{key_id}", "/v1/keys/nope", expect=404)
    policies = api("ops", "GET", "/v1/policies")
    assert [p["policy_id"] for p in policies["policies"]] == ["p1"]
    api("ops", "GET", "/v1/requests")
    api("alice", "GET", "/v1/requests?state=executed&limit=5")
    api("audit", "GET", "/v1/requests", "/v1/requests?state=bogus", expect=400)
    api("audit", "GET", "/v1/requests", "/v1/requests?limit=x", expect=400)
    api("audit", "GET", "/v1/requests/{ref}", "/v1/requests/app1:none", expect=404)
    api("audit", "GET", "/v1/requests/{ref}", "/v1/requests/app1:none?wait=x", expect=400)
    tail = api("audit", "GET", "/v1/audit?limit=3")
    assert len(tail["records"]) == 3 and tail["count"] >= 3
    api("alice", "GET", "/v1/audit", "/v1/audit?after=0&limit=1000")
    api("audit", "GET", "/v1/audit", "/v1/audit?after=zz", expect=400)
    api("app1", "GET", "/v1/audit", expect=403)
    export = api("ops", "GET", "/v1/audit/export")
    assert isinstance(export, bytes) and export
    metrics = api("ops", "GET", "/metrics")
    assert b"custody_http_requests" in metrics
    api("alice", "GET", "/metrics", expect=403)
    events = api("audit", "GET", "/v1/events", "/v1/events?follow=false")
    assert isinstance(events, bytes)
    api("audit", "GET", "/v1/events", "/v1/events?types=nope", expect=400)
    assert api("audit", "GET", "/v1/repairs") == {"repairs": []}
    api("app1", "GET", "/v1/repairs", expect=403)
    refresh = api("audit", "GET", "/v1/refresh")
    assert refresh["refresh"] is None and all(g == 0 for g in refresh["generations"].values())
    recovery = api("audit", "GET", "/v1/recovery")
    assert recovery["officers"] == [] and recovery["k"] == 0 and recovery["recovery"] is None
    api("app1", "GET", "/v1/recovery", expect=403)


def test_sign_flow_matches_the_document(api: Api, live: Live) -> None:
    sign = "/v1/keys/{key_id}/sign"
    body = {"request_id": "oa-1", "message_b64": b64(b"openapi"), "context": "doc"}
    out = api("app1", "POST", sign, "/v1/keys/k1/sign", body=body, valid_request=True)
    assert out["code"] == "pending" and out["request"] == "app1:oa-1"
    ref = out["request"]
    # the same again: the first outcome (idempotent retry)
    assert api("app1", "POST", sign, "/v1/keys/k1/sign", body=body, node="node-2") == out
    # 4xx: documented and invalid by the document's request schema too
    for bad in (
        {"request_id": "oa-x"},
        {"request_id": "oa-x", "message_b64": b64(b"m"), "surprise": 1},
        {"request_id": "bad id", "message_b64": b64(b"m")},
        {"request_id": "oa-x", "message_b64": b64(b"m"), "version": "1"},
        {"request_id": "oa-x", "message_b64": b64(b"m"), "context": "caf\u00e9"},
    ):
        api("app1", "POST", sign, "/v1/keys/k1/sign", body=bad, expect=400,
            valid_request=False)  # fmt: skip
    conflict = {"request_id": "oa-1", "message_b64": b64(b"other")}
    err = api("app1", "POST", sign, "/v1/keys/k1/sign", body=conflict, expect=409)
    assert err["error"] == "request_id_conflict"
    rej = api("app1", "POST", sign, "/v1/keys/nope/sign", body={**body, "request_id": "oa-2"},
              expect=404, valid_request=True)  # fmt: skip
    assert rej["ok"] is False and rej["error"] == "unknown_key"
    api("alice", "POST", sign, "/v1/keys/k1/sign", body=body, expect=403)
    # approvals: a bad signature is a 401 rejection, then two good ones
    bad_sig = {"request_id": "oa-a0", "signature": "00" * 64}
    rej = api("alice", "POST", "/v1/requests/{ref}/approve", f"/v1/requests/{ref}/approve",
              body=bad_sig, expect=401, valid_request=True)  # fmt: skip
    assert rej["error"] == "bad_signature"
    api(
        "alice",
        "POST",
        "/v1/requests/{ref}/approve",
        f"/v1/requests/{ref}/approve",
        body={"request_id": "oa-a9", "signature": "zz"},
        expect=400,
        valid_request=False,
    )
    assert _approve_raw(api, ref, "alice", "oa-a1")["code"] == "pending"
    assert _approve_raw(api, ref, "bob", "oa-a2")["code"] == "approved"
    done = api("app1", "GET", "/v1/requests/{ref}", f"/v1/requests/{ref}?wait=20")
    assert done["state"] == "executed" and "signature" in done
    seen = api("audit", "GET", "/v1/requests/{ref}", f"/v1/requests/{ref}")
    assert "payload_b64" not in seen and "policy" in seen
    listing = api("app1", "GET", "/v1/requests", "/v1/requests?key=k1&kind=sign")
    assert ref in [r["ref"] for r in listing["requests"]]
    # a governance request shows the governance quorum instead of a policy
    gov = api("ops", "GET", "/v1/requests", "/v1/requests?kind=set_policy")["requests"]
    assert gov and all("governance" in r for r in gov)


def test_commands_create_key_and_epoch_match_the_document(api: Api, live: Live) -> None:
    ops_key = read_private_key(live.root / "pki" / "principals" / "ops" / "approval.key")
    cmd = sign_command(ops_key, CreateKey(
        request_id="oa-create", author="ops", key_id="k-doc", purpose="sign", policy_id="p1",
    ), "local")  # fmt: skip
    body = {"request_id": "oa-create", "key_id": "k-doc", "purpose": "sign",
            "policy_id": "p1", "signature": cmd.signature.hex()}  # fmt: skip
    out = api("ops", "POST", "/v1/keys", body=body, valid_request=True)
    assert out["code"] == "pending"
    api("ops", "POST", "/v1/keys", body={**body, "purpose": "nope"}, expect=400,
        valid_request=False)  # fmt: skip
    api("ops", "POST", "/v1/keys", body={**body, "activate_epoch": True}, expect=400,
        valid_request=False)  # fmt: skip
    api("alice", "POST", "/v1/keys", body=body, expect=403)
    # the same command through /v1/commands: the first outcome (same id, same command)
    from node.state import encode_command

    again = api(
        "ops",
        "POST",
        "/v1/commands",
        body={"command_b64": b64(encode_command(cmd))},
        valid_request=True,
    )
    assert again == out
    api("ops", "POST", "/v1/commands", body={"command_b64": "!!"}, expect=400)
    api(
        "alice", "POST", "/v1/commands", body={"command_b64": b64(encode_command(cmd))}, expect=403
    )  # author is not the caller
    api("app1", "POST", "/v1/commands", body={"command_b64": "AA=="}, expect=403)
    before = api("audit", "GET", "/v1/sys/status")["epoch"]
    adv = api("ops", "POST", "/v1/epoch/advance")
    assert adv["epoch_before"] == before and adv["epoch"] == before + 1
    api("audit", "POST", "/v1/epoch/advance", expect=403)


def test_decrypt_flow_matches_the_document(api: Api, live: Live) -> None:
    ref = live.submit_ref("policy", "set", "pe", "--requesters", "app1", "--operations",
                          "decrypt", "--approvers", "alice,bob,carol", "--k", "2",
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    ref = live.submit_ref("keys", "create", "e1", "--purpose", "encrypt", "--policy", "pe",
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    api("ops", "POST", "/v1/epoch/advance")
    key = api("audit", "GET", "/v1/keys/{key_id}", "/v1/keys/e1")
    assert key["purpose"] == "encrypt" and key["primary"] == 1
    gpk = bytes.fromhex(key["versions"][0]["group_public_key"])
    dek, wrapped = ev.wrap_only(gpk, "local", "e1", 1, "ctx-1", os.urandom)
    decrypt = "/v1/keys/{key_id}/decrypt"
    body = {"request_id": "oa-dec", "version": 1, "context": "ctx-1",
            "ciphertext_b64": b64(wrapped)}  # fmt: skip
    out = api("app1", "POST", decrypt, "/v1/keys/e1/decrypt", body=body, valid_request=True)
    dref = out["request"]
    api("app1", "POST", decrypt, "/v1/keys/e1/decrypt", body={**body, "version": 0},
        expect=400, valid_request=False)  # fmt: skip
    api("app1", "POST", decrypt, "/v1/keys/e1/decrypt",
        body={k: v for k, v in body.items() if k != "version"}, expect=400,
        valid_request=False)  # fmt: skip
    partial = "/v1/requests/{ref}/partial"
    err = api("app1", "POST", partial, f"/v1/requests/{dref}/partial", expect=403)
    assert err["error"] == "not_approved"
    api("app1", "POST", partial, "/v1/requests/app1:nope/partial", expect=404)
    api("app1", "POST", partial, f"/v1/requests/{dref}/partial", body={"x": 1}, expect=400,
        valid_request=False)  # fmt: skip
    _approve_raw(api, dref, "alice", "oa-d1")
    assert _approve_raw(api, dref, "carol", "oa-d2")["code"] == "approved"
    for node in ("node-1", "node-2"):
        p = api("app1", "POST", partial, f"/v1/requests/{dref}/partial", body={"index": 0},
                node=node, valid_request=True)  # fmt: skip
        assert p["member"] == node and p["request"] == dref
    done = api("app1", "GET", "/v1/requests/{ref}", f"/v1/requests/{dref}?wait=10")
    assert done["kind"] == "decrypt"
    ev.zero(dek)


def test_rollback_route_matches_the_document(api: Api, live: Live) -> None:
    """POST /v1/keys/{key_id}/rollback: the operator's signed command, refused here (k1 was
    never rotated: nothing to roll back to) with the documented statuses (the rollback flow
    itself: test_lifecycle.py)."""
    from node.state import RequestRollback

    key = api("audit", "GET", "/v1/keys/{key_id}", "/v1/keys/k1")
    assert key["primary"] == 1 and all(v["replaced"] == 0 for v in key["versions"])
    ops_key = read_private_key(live.root / "pki" / "principals" / "ops" / "approval.key")
    cmd = sign_command(ops_key, RequestRollback("oa-rb", "ops", "k1", 1), "local")
    route = "/v1/keys/{key_id}/rollback"
    body = {"request_id": "oa-rb", "version": 1, "signature": cmd.signature.hex()}
    rej = api("ops", "POST", route, "/v1/keys/k1/rollback", body=body, expect=409,
              valid_request=True)  # fmt: skip
    assert rej["error"] == "rollback_not_allowed" and rej["key_id"] == "k1"
    forged = {**body, "request_id": "oa-rb2"}  # the signature covers the request id
    rej = api("ops", "POST", route, "/v1/keys/k1/rollback", body=forged, expect=401,
              valid_request=True)  # fmt: skip
    assert rej["error"] == "bad_signature"
    api("ops", "POST", route, "/v1/keys/k1/rollback", body={**body, "version": 0},
        expect=400, valid_request=False)  # fmt: skip
    api("ops", "POST", route, "/v1/keys/k1/rollback", body={"request_id": "oa-rb3"},
        expect=400, valid_request=False)  # fmt: skip
    api("alice", "POST", route, "/v1/keys/k1/rollback", body=body, expect=403)
    assert api("audit", "GET", "/v1/keys/{key_id}", "/v1/keys/k1")["primary"] == 1


def test_a_fresh_copy_each_time() -> None:
    doc = document()
    doc["paths"].clear()
    assert document()["paths"] and Path(__file__).name


def test_grant_routes_match_the_document(api: Api) -> None:
    """The grant routes' reads and refusals (the grant flow itself: the grants tests)."""
    listing = api("audit", "GET", "/v1/grants")
    assert listing["grants"] == []
    api("app1", "GET", "/v1/grants?state=bogus", expect=400)
    api("audit", "GET", "/v1/grants/{grant_id}", "/v1/grants/g-x", expect=404)
    bad = {"command_b64": "!!"}
    api("ops", "POST", "/v1/grants", body=bad, expect=400, valid_request=True)
    api("ops", "POST", "/v1/grants/{grant_id}/revoke", "/v1/grants/g-x/revoke", body=bad,
        expect=400)  # fmt: skip
    api("app1", "POST", "/v1/requests/signed", body={"command_b64": "AA==", "x": 1},
        expect=400, valid_request=False)  # fmt: skip


def test_metadata_and_alias_routes_match_the_document(api: Api, live: Live) -> None:
    """A create_key with metadata, an alias through /v1/commands, the alias list, and a
    key view and a sign request reached through the alias (docs/metadata.md)."""
    from node.state.commands import CreateAlias

    ops_key = read_private_key(live.root / "pki" / "principals" / "ops" / "approval.key")
    tags = (("env", "prod"), ("team/owner", "pay"))
    cmd = sign_command(ops_key, CreateKey(
        request_id="oa-create-meta", author="ops", key_id="k-meta", purpose="sign",
        policy_id="p1", owner="team-pay", description="labels only", tags=tags,
    ), "local")  # fmt: skip
    body = {"request_id": "oa-create-meta", "key_id": "k-meta", "purpose": "sign",
            "policy_id": "p1", "owner": "team-pay", "description": "labels only",
            "tags": dict(tags), "signature": cmd.signature.hex()}  # fmt: skip
    assert api("ops", "POST", "/v1/keys", body=body, valid_request=True)["code"] == "pending"
    api("ops", "POST", "/v1/keys", body={**body, "tags": {"env": 1}}, expect=400,
        valid_request=False)  # fmt: skip
    key = api("audit", "GET", "/v1/keys/{key_id}", "/v1/keys/k-meta")
    assert (key["owner"], key["tags"], key["aliases"]) == ("team-pay", dict(tags), [])
    from node.state import encode_command

    alias = sign_command(ops_key, CreateAlias("oa-alias", "ops", "doc-alias", "k1"), "local")
    api("ops", "POST", "/v1/commands", body={"command_b64": b64(encode_command(alias))},
        valid_request=True)  # fmt: skip
    listing = api("app1", "GET", "/v1/aliases")
    assert [a["alias"] for a in listing["aliases"]] == ["doc-alias"]
    assert api("audit", "GET", "/v1/aliases?key=k2")["aliases"] == []
    via = api("alice", "GET", "/v1/keys/{key_id}", "/v1/keys/doc-alias")
    assert via["key_id"] == "k1" and via["aliases"] == ["doc-alias"]
    sign = {"request_id": "oa-alias-sign", "message_b64": b64(b"via alias")}
    out = api("app1", "POST", "/v1/keys/{key_id}/sign", "/v1/keys/doc-alias/sign", body=sign,
              valid_request=True)  # fmt: skip
    assert out["key_id"] == "k1"
    dup = sign_command(ops_key, CreateAlias("oa-alias2", "ops", "k1", "k1"), "local")
    rej = api("ops", "POST", "/v1/commands", body={"command_b64": b64(encode_command(dup))},
              expect=409)  # fmt: skip
    assert rej["error"] == "duplicate_name"


def test_every_documented_operation_was_exercised(api: Api) -> None:
    """The session above reached every client operation (peer routes: test_authz)."""
    client_ops = {(m, p) for m, p in operations() if not p.startswith("/v1/peer/")}
    reached = {(m, p) for m, p, _ in api.seen}
    assert client_ops - reached == set()
