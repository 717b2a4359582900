"""Key metadata and aliases on a running cluster (issue 11 §5, docs/metadata.md): an
operator labels a key and names it, at once and audited; applications use the alias
on the API's key paths while the log, the requests, the audit and the approver's
tool only ever name the real key id; nobody else may change either; bad input is
refused with its reason and changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from node.pki.store import read_private_key
from node.state import encode_command, sign_command
from node.state.commands import CreateAlias, DeleteAlias, SetKeyMetadata
from node.state.metadata import alias_hash, metadata_hash
from tests.node.cluster.harness import CliFailed, Live, b64, running

pytestmark = pytest.mark.slow

MISLEADING = "test key, safe to sign anything"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("metadata") / "c"
    with running(root, schedule={"epoch_min_interval_s": 0.0}) as c:
        c.key("k2")
        yield c


def _get(live: Live, who: str, path: str) -> tuple[int, Any]:
    return asyncio.run(live.http(who, "GET", "node-1", path))


def _command(live: Live, who: str, cmd: Any, signer: str | None = None) -> tuple[int, Any]:
    key = read_private_key(live.root / "pki" / "principals" / (signer or who) / "approval.key")
    signed = sign_command(key, cmd, live.cluster["cluster_id"])
    body = {"command_b64": b64(encode_command(signed))}
    return asyncio.run(live.http(who, "POST", "node-1", "/v1/commands", json_body=body))


def _state(live: Live) -> Any:
    """What a refused change must not touch: keys (metadata, aliases) and the aliases."""
    s1, keys = _get(live, "audit", "/v1/keys")
    s2, aliases = _get(live, "audit", "/v1/aliases")
    assert s1 == s2 == 200
    return [k for k in keys["keys"] if k["purpose"] != "audit"], aliases


def _events(live: Live, types: str) -> list[dict[str, Any]]:
    status, raw = _get(live, "audit", f"/v1/events?follow=false&types={types}")
    assert status == 200
    text = raw.decode() if isinstance(raw, bytes) else json.dumps(raw)
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def test_create_with_metadata_then_change_it(live: Live) -> None:
    ref = live.submit_ref("keys", "create", "k-meta", "--policy", "p1", "--owner", "team-pay",
                          "--description", "payments signing", "--tag", "env=prod",
                          "--tag", "cost-center=42", who="ops")  # fmt: skip
    # The create request approvers see names the key id and carries no metadata.
    shown = live.cli("requests", "show", ref, who="alice")
    assert "k-meta" in shown and "payments signing" not in shown
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    k = live.key_view("k-meta")
    assert (k["owner"], k["description"], k["tags"]) == (
        "team-pay",
        "payments signing",
        {"cost-center": "42", "env": "prod"},
    )
    out = live.cli("keys", "metadata", "k-meta", "--description", MISLEADING, "--untag",
                   "env", "--tag", "tier=gold", "--json", who="ops")  # fmt: skip
    seq = json.loads(out)["seq"]
    k = live.key_view("k-meta")
    assert (k["owner"], k["description"], k["tags"]) == (
        "team-pay",
        MISLEADING,
        {"cost-center": "42", "tier": "gold"},
    )
    text = live.cli("keys", "show", "k-meta", who="audit")
    assert "owner:       team-pay" in text and "tier=gold" in text
    # Audited: the key id and the hash of the new metadata, not the text.
    rec = next(r for r in live.audit() if r["seq"] == seq)
    want = metadata_hash("team-pay", MISLEADING, {"cost-center": "42", "tier": "gold"})
    assert (rec["kind"], rec["key_id"], rec["outcome"]) == ("set_key_metadata", "k-meta", "ok")
    assert rec["digest"] == want.hex()
    ev = [e for e in _events(live, "key.metadata_changed") if e["seq"] == seq]
    assert len(ev) == 1 and ev[0]["key_id"] == "k-meta"
    assert ev[0]["metadata_sha512"] == want.hex()


def test_an_alias_resolves_on_the_edge_only(live: Live) -> None:
    out = json.loads(live.cli("keys", "alias", "set", "payments-signing", "k1", "--json",
                              who="ops"))  # fmt: skip
    rec = next(r for r in live.audit() if r["seq"] == out["seq"])
    assert (rec["kind"], rec["key_id"]) == ("create_alias", "k1")
    assert rec["digest"] == alias_hash("payments-signing").hex()
    assert live.key_view("payments-signing")["key_id"] == "k1"
    assert live.key_view("k1")["aliases"] == ["payments-signing"]
    listing = json.loads(live.cli("keys", "alias", "list", "--json", who="app1"))
    assert {"alias": "payments-signing", "key_id": "k1"}.items() <= listing["aliases"][0].items()
    # A client signs through the alias: the request, the approver's view and the audit
    # name the real key id.
    status, sub = asyncio.run(live.http("app1", "POST", "node-1",
                                        "/v1/keys/payments-signing/sign",
                                        json_body={"request_id": "via-alias",
                                                   "message_b64": b64(b"hello")}))  # fmt: skip
    assert status == 200 and sub["key_id"] == "k1", sub
    ref = sub["request"]
    shown = live.cli("requests", "show", ref, who="alice")
    assert "key        k1 version 1" in shown and "payments-signing" not in shown
    live.approve(ref, "alice", "bob")
    r = live.wait_request(ref, timeout=30)
    assert r["state"] == "executed" and r["key_id"] == "k1"
    sig = bytes.fromhex(r["signature"])
    live.group_key("k1").verify(sig, b"hello")
    recs = [a for a in live.audit() if a["request_id"] == "via-alias" or a["subject"] == ref]
    assert recs and all(a["key_id"] == "k1" for a in recs)
    # The CLI's --key takes the alias too.
    ref2 = live.sign_request("payments-signing", b"again")
    assert live.request(ref2)["key_id"] == "k1"
    # Events name the key.
    ev = [e for e in _events(live, "key.alias_changed") if e["seq"] == out["seq"]]
    assert len(ev) == 1 and ev[0]["key_id"] == "k1"


def test_an_alias_never_repoints_and_never_shadows_a_key(live: Live) -> None:
    live.cli("keys", "alias", "set", "billing", "k2", who="ops")
    before = _state(live)
    st, out = _command(live, "ops", CreateAlias("re-1", "ops", "billing", "k1"))
    assert (st, out["error"]) == (409, "alias_exists") and _state(live) == before
    st, out = _command(live, "ops", CreateAlias("re-2", "ops", "k1", "k2"))
    assert (st, out["error"]) == (409, "duplicate_name") and _state(live) == before
    # Deleted, the name stays reserved for k2: delete + create cannot redirect it either.
    live.cli("keys", "alias", "delete", "billing", who="ops")
    assert _get(live, "app1", "/v1/keys/billing")[0] == 404
    before = _state(live)
    st, out = _command(live, "ops", CreateAlias("re-3", "ops", "billing", "k1"))
    assert (st, out["error"]) == (409, "alias_exists") and _state(live) == before
    st, out = _command(live, "ops", DeleteAlias("re-4", "ops", "billing"))
    assert (st, out["error"]) == (404, "unknown_alias") and _state(live) == before
    # ... and a key id cannot take it.
    with pytest.raises(CliFailed, match="duplicate_name"):
        live.cli("keys", "create", "billing", "--policy", "p1", who="ops")
    live.cli("keys", "alias", "set", "billing", "k2", who="ops")
    assert live.key_view("billing")["key_id"] == "k2"
    # Operator CLI commands take the alias and sign a command naming the key id.
    ref = live.submit_ref("keys", "rotate", "billing", who="ops")
    assert live.request(ref)["key_id"] == "k2"


@pytest.mark.parametrize("who", ["app1", "alice", "audit"])
def test_only_operators_change_metadata_or_aliases(live: Live, who: str) -> None:
    before = _state(live)
    for cmd in (
        SetKeyMetadata(f"x-{who}-1", who, "k1", "evil", MISLEADING, ()),
        CreateAlias(f"x-{who}-2", who, "evil", "k1"),
        DeleteAlias(f"x-{who}-3", who, "payments-signing"),
    ):
        st, out = _command(live, who, cmd, signer="ops" if who == "audit" else None)
        assert st == 403, out
    assert _state(live) == before


@pytest.mark.parametrize(
    ("cmd", "status", "code"),
    [
        (SetKeyMetadata("bad-1", "ops", "nope", "o", "", ()), 404, "unknown_key"),
        (SetKeyMetadata("bad-2", "ops", "cluster-audit", "o", "", ()), 409, "wrong_purpose"),
        (CreateAlias("bad-3", "ops", "x1", "nope"), 404, "unknown_key"),
        (CreateAlias("bad-4", "ops", "audit-key", "cluster-audit"), 409, "wrong_purpose"),
    ],
)
def test_bad_targets_are_refused_and_change_nothing(live: Live, cmd: Any, status: int,
                                                    code: str) -> None:  # fmt: skip
    before = _state(live)
    st, out = _command(live, "ops", cmd)
    assert (st, out["error"]) == (status, code), out
    assert _state(live) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner", "o" * 129),
        ("description", "line\nbreak"),
        ("tags", [["Bad", "x"]]),
        ("tags", [["b", "1"], ["a", "2"]]),
        ("alias", "Not-An-Alias"),
    ],
)
def test_malformed_input_is_refused_before_the_log(live: Live, field: str, value: Any) -> None:
    """Out-of-schema values never reach the log: 400 naming the field, nothing changed."""
    import msgpack

    ops_key = read_private_key(live.root / "pki" / "principals" / "ops" / "approval.key")
    base = (CreateAlias("bad-a", "ops", "ok-alias", "k1") if field == "alias"
            else SetKeyMetadata("bad-m", "ops", "k1", "o", "d", ()))  # fmt: skip
    raw = msgpack.unpackb(encode_command(sign_command(ops_key, base, "local")), raw=False)
    raw[field] = value
    before = _state(live)
    n = len(live.audit())
    body = {"command_b64": base64.b64encode(msgpack.packb(raw, use_bin_type=True)).decode()}
    st, out = asyncio.run(live.http("ops", "POST", "node-1", "/v1/commands", json_body=body))
    assert (st, out["error"]) == (400, "bad_request") and field in out["message"], out
    assert _state(live) == before and len(live.audit()) == n
    with pytest.raises(CliFailed, match="tag"):
        live.cli("keys", "metadata", "k1", "--tag", "Bad=x", who="ops")
    assert _state(live) == before


def test_encrypting_through_an_alias_names_the_key_id(live: Live, tmp_path: Any) -> None:
    ref = live.submit_ref("policy", "set", "pe", "--requesters", "app1", "--operations",
                          "decrypt", "--approvers", "alice,bob,carol", "--k", "2",
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    ref = live.submit_ref("keys", "create", "e1", "--purpose", "encrypt", "--policy", "pe",
                          who="ops")  # fmt: skip
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    live.cli("epoch", "advance", who="ops")
    live.cli("keys", "alias", "set", "vault", "e1", who="ops")
    src = tmp_path / "secret.txt"
    src.write_bytes(os.urandom(100))
    out = json.loads(live.cli("encrypt", "--key", "vault", "--context", "c1", "--in", str(src),
                              "--json", who="app1"))  # fmt: skip
    assert out["key_id"] == "e1"
