"""The canonical request digest, rebuilt here byte by byte from the documented encoding,
and checked to bind every field an approver decides on, for every request kind."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest

from node.state import (
    CreateKey,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRotate,
    RequestSign,
    payload_hash,
    request_digest,
)
from node.state.digest import digest_of


def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


BASE = dict(
    cluster_id="c", kind="sign", request_id="r", author="a", key_id="k", purpose="sign",
    policy_id="p", policy_sha512=b"", approvers=("x", "y"), k=1, version=1, context="",
    payload_sha512=b"", activate_epoch=0,
)  # fmt: skip


def test_digest_matches_documented_encoding():
    payload = b"release-1.2.3.tar.gz"
    ph = hashlib.sha512(lp(b"custody-cluster/v1/request-payload") + payload).digest()
    pol = hashlib.sha512(b"some policy").digest()
    assert payload_hash(payload) == ph
    expected = hashlib.sha512(
        lp(b"custody-cluster/v2/request-digest")
        + lp(b"cluster-a")
        + lp(b"sign")
        + lp(b"req-1")
        + lp(b"app")
        + lp(b"k1")
        + lp(b"sign")
        + lp(b"p1")
        + lp(pol)
        + lp(lp(b"alice") + lp(b"bob"))
        + lp((2).to_bytes(8, "big"))
        + lp((3).to_bytes(8, "big"))
        + lp(b"ctx")
        + lp(ph)
        + lp((0).to_bytes(8, "big"))
    ).digest()
    got = request_digest(
        cluster_id="cluster-a", kind="sign", request_id="req-1", author="app", key_id="k1",
        purpose="sign", policy_id="p1", policy_sha512=pol, approvers=("alice", "bob"), k=2,
        version=3, context="ctx", payload_sha512=ph, activate_epoch=0,
    )  # fmt: skip
    assert got == expected and len(got) == 64


def test_length_prefix_prevents_field_shifting():
    one = request_digest(**{**BASE, "key_id": "ab", "context": "c"})
    two = request_digest(**{**BASE, "key_id": "a", "context": "bc"})
    assert one != two
    assert request_digest(**{**BASE, "approvers": ("ab",)}) != request_digest(
        **{**BASE, "approvers": ("a", "b")}
    )


def test_machine_uses_the_canonical_digest(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"hello"))
    req = ready.req("s1")
    policy = ready.m.state.policies["p1"]
    from node.state.digest import policy_hash_of

    assert req.digest == request_digest(
        cluster_id="cluster-a", kind="sign", request_id="s1", author="app", key_id="k1",
        purpose="sign", policy_id="p1", policy_sha512=policy_hash_of(policy),
        approvers=("alice", "bob", "carol"), k=2, version=1, context="ctx",
        payload_sha512=payload_hash(b"hello"), activate_epoch=0,
    )  # fmt: skip
    assert req.payload_hash == payload_hash(b"hello")


def test_documented_example_bytes():
    """The worked example in docs/state-machine.md, as hex."""
    body = bytes.fromhex(
        "00000021"
        + b"custody-cluster/v2/request-digest".hex()
        + "00000001" + b"c".hex()
        + "00000004" + b"sign".hex()
        + "00000001" + b"r".hex()
        + "00000001" + b"a".hex()
        + "00000001" + b"k".hex()
        + "00000004" + b"sign".hex()
        + "00000001" + b"p".hex()
        + "00000000"
        + "0000000a" + "00000001" + b"x".hex() + "00000001" + b"y".hex()
        + "00000008" + "0000000000000001"
        + "00000008" + "0000000000000001"
        + "00000000"
        + "00000000"
        + "00000008" + "0000000000000000"
    )  # fmt: skip
    assert request_digest(**BASE) == hashlib.sha512(body).digest()


def test_create_key_digest_binds_purpose_and_policy(world):
    """Regression (issue 9.2): "k9, sign, policy p1" and "k9, encrypt, policy lax" had one
    digest, so an approval of the first approved the second."""
    digests = set()
    for purpose, policy in (("sign", "p1"), ("encrypt", "p1"), ("sign", "lax")):
        w = type(world)().setup()
        w.govern(w.policy_command("pol-lax", "lax", k=1, grace_epochs=0))
        w.ok(CreateKey("ck", "ops", "k9", purpose, policy))
        digests.add(w.req("ck").digest)
    assert len(digests) == 3


# Per request kind, the fields of the stored request an approver decides on, each with a
# different value. Every one of them must change the digest.
COMMON = {
    "request_id": "other", "author": "zed", "policy_id": "p2", "policy_hash": b"\x07" * 64,
    "approvers": ("alice", "bob"), "k": 3,
}  # fmt: skip
DECISIONS = {
    "create_key": {**COMMON, "key_id": "k8", "purpose": "encrypt", "activate_epoch": 9},
    "rotate": {**COMMON, "key_id": "k8", "purpose": "encrypt", "activate_epoch": 9},
    "sign": {**COMMON, "key_id": "k8", "version": 2, "context": "x", "payload": b"other"},
    "decrypt": {**COMMON, "key_id": "k8", "version": 2, "context": "x", "payload": b"other"},
    "revoke": {**COMMON, "key_id": "k8", "version": 2},
    "destroy": {**COMMON, "key_id": "k8", "version": 2},
}


def requests_of_every_kind(w):
    w.active_key("k1")
    w.active_key("kek", "encrypt")
    w.ok(CreateKey("ck", "ops", "k2", "sign", "p1", 7))
    w.ok(RequestRotate("rot", "ops", "k1", 0, 5))
    w.ok(RequestSign("s", "app", "k1", 1, "ctx", b"msg"))
    w.ok(RequestDecrypt("d", "app", "kek", 1, "ctx", b"ct"))
    w.ok(RequestRevoke("rv", "ops", "k1", 1))
    w.ok(RequestRevoke("rv2", "ops", "kek", 1))
    w.approve("rv2", "alice")
    w.approve("rv2", "bob")
    w.ok(RequestDestroy("ds", "ops", "kek", 1))
    return {r.kind.value: r for r in (w.req(n) for n in ("ck", "rot", "s", "d", "rv", "ds"))}


@pytest.mark.parametrize("kind", sorted(DECISIONS))
def test_every_decision_field_changes_the_digest(ready, kind):
    req = requests_of_every_kind(ready)[kind]
    cid = ready.m.state.cluster_id
    base = digest_of(req, cid, req.payload_hash)
    assert base == req.digest
    for name, value in DECISIONS[kind].items():
        if name == "payload":
            assert digest_of(req, cid, payload_hash(value)) != base, name
            continue
        assert getattr(req, name) != value, name
        changed = dataclasses.replace(req, **{name: value})
        assert digest_of(changed, cid, req.payload_hash) != base, (kind, name)
    assert digest_of(req, "cluster-b", req.payload_hash) != base
