"""Approvals: real Ed25519 signatures over the canonical digest, and every rejection case."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.state import (
    AddPrincipal,
    Approve,
    CreateKey,
    Reason,
    RecordResult,
    Rejected,
    RequestRevoke,
    RequestSign,
    RequestState,
)
from node.state.approvals import sign_approval, verify_approval

RESULT = bytes(64)


@pytest.fixture
def signing(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "release", b"artifact bytes"))
    return ready


def test_quorum_of_real_signatures_approves(signing):
    req = signing.req("s1")
    assert signing.approve("s1", "bob").code == "pending"
    assert req.state is RequestState.PENDING and list(req.approvals) == ["bob"]
    assert signing.approve("s1", "carol").code == "approved"
    assert req.state is RequestState.APPROVED
    # each stored approval verifies with the approver's registered key
    for name, sig in req.approvals.items():
        pub = signing.private_key(name).public_key()
        pub.verify(sig, req.digest)


def test_signature_by_wrong_key_rejected(signing):
    out = signing.rejects(
        lambda: signing.approve("s1", "alice", signer="bob"), Reason.BAD_SIGNATURE
    )
    assert "verify" in out.detail


def test_signature_over_wrong_digest_rejected(signing):
    other = signing.m.state.requests[signing.m.state.keys["k1"].versions[1].request_id].digest
    sig = sign_approval(signing.private_key("alice"), other)
    signing.rejects(Approve("a1", "alice", "s1", sig), Reason.BAD_SIGNATURE)


def test_garbage_signature_rejected(signing):
    signing.rejects(Approve("a1", "alice", "s1", b"\x00" * 64), Reason.BAD_SIGNATURE)


def test_approver_not_in_policy_rejected(signing):
    signing.govern(AddPrincipal("ap", "ops", "dave", "approver", signing.public_key("dave")))
    signing.rejects(lambda: signing.approve("s1", "dave"), Reason.NOT_AN_APPROVER)


def test_non_approver_role_rejected(signing):
    sig = sign_approval(signing.private_key("ops"), signing.req("s1").digest)
    signing.rejects(Approve("a1", "ops", "s1", sig), Reason.UNAUTHORIZED)
    signing.rejects(Approve("a2", "app", "s1", sig), Reason.UNAUTHORIZED)


def test_unknown_approver_rejected(signing):
    signing.rejects(Approve("a1", "eve", "s1", bytes(64)), Reason.UNKNOWN_AUTHOR)


def test_duplicate_approver_rejected(signing):
    signing.approve("s1", "alice")
    signing.rejects(lambda: signing.approve("s1", "alice"), Reason.DUPLICATE_APPROVAL)
    assert signing.req("s1").state is RequestState.PENDING


def test_approval_after_decision_rejected(signing):
    signing.approve("s1", "alice")
    signing.approve("s1", "bob")
    signing.rejects(lambda: signing.approve("s1", "carol"), Reason.REQUEST_DECIDED)
    signing.ok(RecordResult("res", "node-1", "s1", signing.result("s1")))
    signing.rejects(lambda: signing.approve("s1", "carol"), Reason.REQUEST_DECIDED)


def test_approval_of_unknown_request_rejected(signing):
    signing.rejects(Approve("a1", "alice", "nope", bytes(64)), Reason.UNKNOWN_REQUEST)


def test_approval_on_revoked_version_rejected(signing):
    signing.approve("s1", "alice")
    signing.ok(RequestRevoke("rv", "ops", "k1", 1))
    signing.approve("rv", "alice")
    signing.approve("rv", "carol")
    signing.rejects(lambda: signing.approve("s1", "bob"), Reason.VERSION_NOT_USABLE)
    assert signing.req("s1").state is RequestState.FAILED
    with pytest.raises(Rejected) as info:
        signing.m.executable("app:s1")
    assert info.value.reason is Reason.NOT_APPROVED


def test_policy_change_does_not_change_open_quorum(signing):
    signing.govern(signing.policy_command("pol2", k=1))  # weakening: after its time lock
    assert signing.m.state.policies["p1"].k == 1
    assert signing.approve("s1", "alice").code == "pending"  # k=2 was fixed at submission
    assert signing.approve("s1", "bob").code == "approved"


def test_executable_reverifies_approvals(signing):
    with pytest.raises(Rejected) as info:
        signing.m.executable("app:s1")
    assert info.value.reason is Reason.NOT_APPROVED
    signing.approve("s1", "alice")
    signing.approve("s1", "bob")
    assert signing.m.executable("app:s1").request_id == "s1"
    # A replica whose stored approval was corrupted refuses to contribute.
    signing.req("s1").approvals["bob"] = bytes(64)
    with pytest.raises(Rejected) as info:
        signing.m.executable("app:s1")
    assert info.value.reason is Reason.NOT_APPROVED


def test_verify_approval_direct():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    digest = bytes(range(64))
    sig = sign_approval(key, digest)
    verify_approval(pub, digest, sig)
    for bad in (
        (pub, digest[:-1] + b"\x00", sig),
        (pub, digest, sig[:-1] + bytes([sig[-1] ^ 1])),
        (pub, digest, sig[:63]),
    ):
        with pytest.raises(Rejected) as info:
            verify_approval(*bad)
        assert info.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(Rejected):
        verify_approval(b"", digest, sig)


def test_executable_for_lifecycle_requests(ready):
    ready.ok(CreateKey("ck", "ops", "k1", "sign", "p1"))
    ready.approve("ck", "alice")
    ready.approve("ck", "bob")
    assert ready.m.executable("ops:ck").version == 1  # nodes may start the DKG
    ready.req("ck").approvals.pop("bob")
    with pytest.raises(Rejected) as info:
        ready.m.executable("ops:ck")
    assert info.value.reason is Reason.NOT_APPROVED


# ------------------------------------------------- strict Ed25519 keys (issue 9.2)

IDENTITY = bytes([1]) + bytes(31)  # the neutral point: every (S·B, S) "verifies" under it
SMALL_ORDER = [
    IDENTITY,
    bytes.fromhex("ec" + "ff" * 30 + "7f"),  # order 2
    bytes(32),  # order 4
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # 8
]
NON_CANONICAL = [
    bytes.fromhex("ee" + "ff" * 30 + "7f"),  # y = p + 1 (the identity, spelled differently)
    bytes([1]) + bytes(30) + b"\x80",  # x = 0 with the sign bit set
]


def mixed_order(pub: bytes) -> bytes:
    """`pub` plus the point of order 2: still verifies some signatures, not prime order."""
    from nacl.bindings import crypto_core_ed25519_add

    return crypto_core_ed25519_add(pub, SMALL_ORDER[1])


def forged_approval() -> bytes:
    """R = identity, S = 0: valid for any message under the identity "key"."""
    return IDENTITY + bytes(32)


def test_small_order_and_non_canonical_keys_refused_at_registration(ready):
    """Regression (issue 9.2): an approver registered with the identity point let anyone
    forge its approvals (the forged signature below verified under OpenSSL)."""
    bad = [*SMALL_ORDER, *NON_CANONICAL, mixed_order(ready.public_key("dave"))]
    for i, key in enumerate(bad):
        ready.rejects(AddPrincipal(f"ap{i}", "ops", f"dave{i}", "approver", key),
                      Reason.INVALID_PRINCIPAL)  # fmt: skip
    fresh = type(ready)()
    boot = fresh.bootstrap_command()
    members = (boot.members[0].__class__("node-1", 1, IDENTITY), *boot.members[1:])
    fresh.rejects(dataclasses.replace(boot, members=members), Reason.INVALID_CLUSTER)


def test_approvals_verified_strictly():
    digest = bytes(range(64))
    with pytest.raises(Rejected) as info:
        verify_approval(IDENTITY, digest, forged_approval())
    assert info.value.reason is Reason.BAD_SIGNATURE
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = key.sign(digest)
    verify_approval(pub, digest, sig)
    from node.state.ed25519 import L

    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")  # same S mod L, not reduced
    small_r = SMALL_ORDER[1] + sig[32:]
    for bad in (malleated, small_r):
        with pytest.raises(Rejected):
            verify_approval(pub, digest, bad)
