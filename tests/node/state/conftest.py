"""A small world for state-machine tests: real Ed25519 keys, a bootstrapped cluster."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.state import (
    AdvanceEpoch,
    Approve,
    Bootstrap,
    CreateKey,
    Machine,
    MemberSpec,
    Outcome,
    PrincipalSpec,
    RecordDkgResult,
    RequestState,
    SetPolicy,
)
from node.state.approvals import genesis_of, sign_approval, sign_command
from node.state.commands import SIGNED_KINDS
from node.state.model import Request

MEMBERS = ("node-1", "node-2", "node-3")
OPERATORS = ("ops",)
APPROVERS = ("alice", "bob", "carol")
CLIENTS = ("app",)
AUDITORS = ("aud",)


def private_key(name: str) -> Ed25519PrivateKey:
    """A deterministic real Ed25519 key per name (tests must replay exactly)."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test-key:" + name.encode()).digest()
    )


def public_key(name: str) -> bytes:
    return private_key(name).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


CLUSTER = "cluster-a"
GOVERNANCE_K = 2
TIME_LOCK = 2  # epochs a weakening governance change waits in these tests


def signed(cmd, signer: str | None = None):
    """Test plumbing: sign a signed-kind command with its author's test key if unsigned.
    (The signature checks themselves are tested explicitly in test_signed_commands.py.)"""
    if cmd.KIND in SIGNED_KINDS and not cmd.signature:
        return sign_command(private_key(signer or cmd.author), cmd, CLUSTER)
    return cmd


def bootstrap_command(request_id: str = "boot", author: str = "ops", threshold: int = 2):
    members = tuple(MemberSpec(m, i + 1, public_key(m)) for i, m in enumerate(MEMBERS))
    principals = (
        *(PrincipalSpec(n, "operator", public_key(n)) for n in OPERATORS),
        *(PrincipalSpec(n, "approver", public_key(n)) for n in APPROVERS),
        *(PrincipalSpec(n, "client", b"") for n in CLIENTS),
        *(PrincipalSpec(n, "auditor", b"") for n in AUDITORS),
    )
    return Bootstrap(
        request_id, author, CLUSTER, threshold, members, principals,
        APPROVERS, GOVERNANCE_K, TIME_LOCK,
    )  # fmt: skip


def policy_command(request_id: str = "pol", policy_id: str = "p1", **kw):
    args = dict(
        requesters=("app",),
        operations=("decrypt", "sign"),
        approvers=APPROVERS,
        k=2,
        rotation_interval_s=0,
        max_uses=0,
        grace_epochs=2,
        waiting_epochs=1,
        escrow=False,
    )
    args.update(kw)
    return SetPolicy(request_id, "ops", policy_id, **args)


GROUP = private_key("group")  # stands in for the FROST group key a DKG would make
GPK = public_key("group")
VSHARES = tuple(bytes([i]) * 32 for i in range(1, len(MEMBERS) + 1))


class World:
    """Applies commands to one machine with unique request ids; knows the test keys."""

    def __init__(self) -> None:
        self.m = Machine(genesis=genesis_of(bootstrap_command()))
        self.n = 0

    def rid(self, prefix: str = "r") -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def do(self, cmd) -> Outcome:
        """Apply `cmd` (signed by its author if it is a signed kind). Tests name requests
        by their bare id; a `request` field without ':' is resolved to `<author>:<id>`."""
        target = getattr(cmd, "request", None)
        if target is not None and ":" not in target:
            cmd = dataclasses.replace(cmd, request=self.ref(target))
        return self.m.apply_command(signed(cmd))

    def ref(self, request_id: str) -> str:
        found = [r.ref for r in self.m.state.requests.values() if r.request_id == request_id]
        return found[0] if len(found) == 1 else f"app:{request_id}"

    def boot_with(self, cmd) -> Outcome:
        """Configure this world's genesis for `cmd`, then apply it (to test bootstrap rules)."""
        self.m.genesis = genesis_of(signed(cmd))
        return self.do(cmd)

    def result(self, request: str) -> bytes:
        """A valid result for a request: the group signature over its message (sign), or
        a digest of a partial (decrypt)."""
        req = self.req(request)
        if req.kind.value == "sign":
            return GROUP.sign(req.payload)
        return hashlib.sha512(b"partial:" + req.payload).digest()

    def ok(self, cmd) -> Outcome:
        out = self.do(cmd)
        assert out.ok, out
        return out

    def approve(self, request: str, approver: str, *, signer: str | None = None, rid=None):
        digest = self.req(request).digest
        sig = sign_approval(private_key(signer or approver), digest)
        return self.do(Approve(rid or self.rid("a"), approver, request, sig))

    def setup(self, **policy) -> World:
        self.ok(bootstrap_command())
        self.govern(policy_command(**policy))
        return self

    def govern(self, cmd, approvers=("alice", "bob")) -> Request:
        """Submit a governance change, have `approvers` approve it and, if it is
        time-locked, advance the epoch until it takes effect; it must then be executed."""
        out = self.ok(cmd)
        assert out.code == "pending", out
        req = self.m.state.requests[f"{cmd.author}:{cmd.request_id}"]
        for name in approvers:
            if req.state is RequestState.PENDING:
                assert self.approve(req.ref, name).ok
        if req.state is RequestState.APPROVED and req.effective_epoch:
            self.advance(by=req.effective_epoch - self.m.state.epoch)
        assert req.state is RequestState.EXECUTED, req
        return req

    def post_dkg(self, request: str, members=MEMBERS, gpk: bytes = GPK) -> list[Outcome]:
        return [self.do(RecordDkgResult(self.rid("d"), m, request, gpk, VSHARES)) for m in members]

    def advance(self, by: int = 1, at: int = 0, voters=None) -> Outcome:
        """Move the epoch `by` steps, each voted by `threshold` members (default)."""
        voters = voters or MEMBERS[: self.m.state.threshold]
        out = None
        for _ in range(by):
            target = self.m.state.epoch + 1
            for member in voters:
                out = self.ok(AdvanceEpoch(self.rid("e"), member, target, at))
        assert out is not None and out.code == "ok", out
        return out

    def active_key(self, key_id: str = "k1", purpose: str = "sign", at: int = 0) -> str:
        """Create a key through the full flow; return the create request id."""
        rid = self.rid("ck")
        self.ok(CreateKey(rid, "ops", key_id, purpose, "p1"))
        self.approve(rid, "alice")
        self.approve(rid, "bob")
        self.post_dkg(rid)
        self.advance(at=at)
        assert self.m.active_version(key_id) == 1
        return rid

    def req(self, request_id: str):
        """The request this world submitted under `request_id` (any author), or by ref."""
        if ":" in request_id:
            return self.m.state.requests[request_id]
        found = [r for r in self.m.state.requests.values() if r.request_id == request_id]
        assert len(found) == 1, (request_id, found)
        return found[0]

    def snap(self) -> bytes:
        return self.m.snapshot()

    def rejects(self, cmd, reason) -> Outcome:
        return rejects(self, cmd, reason)

    bootstrap_command = staticmethod(bootstrap_command)
    signed = staticmethod(signed)
    policy_command = staticmethod(policy_command)
    public_key = staticmethod(public_key)
    private_key = staticmethod(private_key)
    core_bytes = staticmethod(lambda m: core_bytes(m))
    GPK = GPK
    GROUP = GROUP
    TIME_LOCK = TIME_LOCK
    VSHARES = VSHARES
    MEMBERS = MEMBERS


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def ready(world: World) -> World:
    return world.setup()


def core_bytes(machine: Machine) -> bytes:
    """Canonical bytes of the state without the audit chain and the exactly-once table."""
    import dataclasses

    import msgpack

    from node.state.snapshot import _dump

    st = dataclasses.replace(machine.state, audit=[], outcomes={})
    return msgpack.packb(_dump(st), use_bin_type=True)


def rejects(world: World, cmd, reason) -> Outcome:
    """Apply `cmd`: it must be rejected with `reason`, audited, and change nothing else."""
    before = core_bytes(world.m)
    n_audit = len(world.m.state.audit)
    out = world.do(cmd) if not callable(cmd) else cmd()
    assert not out.ok, out
    assert out.code == reason.value, out
    assert core_bytes(world.m) == before
    assert len(world.m.state.audit) == n_audit + 1
    assert world.m.state.audit[-1].outcome == f"rejected:{reason.value}"
    return out
