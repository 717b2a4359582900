"""Property: replicas applying the same random command stream (valid and invalid mixed)
agree on every outcome, on their snapshot bytes and on their audit head; a replica restored
from a snapshot mid-stream continues identically; the chain always verifies."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.state import (
    AddMember,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    CancelRequest,
    CreateKey,
    Machine,
    PostCheckpoint,
    PostDkgRound1,
    RecordDkgResult,
    RecordErasure,
    RecordFailure,
    RecordResult,
    RekeyPrincipal,
    RemoveMember,
    RemovePrincipal,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRollback,
    RequestRotate,
    RequestSign,
    SetGovernance,
    SetPolicy,
    SetThreshold,
    VersionState,
    decode_command,
    decode_outcome,
    encode_command,
    verify_chain,
)
from node.state.approvals import sign_approval
from node.state.checkpoint import sign_checkpoint
from node.state.commands import (
    GOVERNANCE_KINDS,
    CreateAlias,
    DeleteAlias,
    SetKeyMetadata,
    erasure_request_id,
)
from node.state.snapshot import state_hash

NAMES = ("ops", "alice", "bob", "carol", "app", "aud", "node-1", "node-2", "node-3", "eve")
KEYS = ("k1", "k2", "k3")
APPROVERS = ("alice", "bob", "carol")
MEMBERS = ("node-1", "node-2", "node-3")
RESTORE = 13  # replica c restarts from its own snapshot
FLOW = 14  # create (or rotate) a key and drive it to active: approvals, DKG posts, epoch
APPROVE_ALL = 15  # every approver approves a request
# Kinds repeated to make the interesting paths (sign, decrypt, approvals, results) common.
KIND_WEIGHTS = (0, 1, 1, 2, 3, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9, 10, 10, 10, 11, 12, 13)
USE = 16  # a client request on a known key, approved by all, then a result or a failure
GOVERN = 17  # a governance change, approved by all, and sometimes the epochs of its time lock
KIND_WEIGHTS += (FLOW, FLOW, APPROVE_ALL, APPROVE_ALL, APPROVE_ALL, USE, USE, USE)
KIND_WEIGHTS += (GOVERN,) * 4
CHECKPOINT = 18  # a member signs the state hash at some index (sometimes wrongly)
KIND_WEIGHTS += (CHECKPOINT,) * 2
ROUND1 = 19  # a member's DKG round-1 package (mostly to an approved create/rotate request)
KIND_WEIGHTS += (ROUND1,) * 2
ERASE = 20  # a member confirms erasing a version (mostly a destroyed one)
KIND_WEIGHTS += (ERASE,) * 2
LABEL = 30  # key metadata and aliases (docs/metadata.md): set, create, delete
KIND_WEIGHTS += (LABEL,) * 2
ROLLBACK = 31  # an operator asks to roll a rotation back (approved by APPROVE_ALL)
KIND_WEIGHTS += (ROLLBACK,) * 2

action = st.tuples(
    st.sampled_from(KIND_WEIGHTS),  # what to do
    st.sampled_from([0] * 10 + list(range(1, len(NAMES) + 1))),  # 0: usual author, else a name
    st.sampled_from([-1] * 6 + list(range(12))),  # -1: fresh request id, else re-use one
    st.integers(0, 63),  # a small number used by each kind as it likes
    st.sampled_from([False] * 4 + [True]),  # "make it wrong" (bad signature, bad DKG post, ...)
)


def build(world, m: Machine, a: tuple[int, int, int, int, bool], step: int | str) -> list:
    """Turn an action into commands, reading public state the way a client would."""
    kind, who, rid_n, x, wrong = a
    rid = f"s{step}" if rid_n < 0 else f"r{rid_n}"
    if kind == FLOW:
        return flow(world, m, KEYS[x % len(KEYS)], ("sign", "encrypt")[x & 1], step)
    if kind == USE:
        return use(world, m, x, wrong, step)
    if kind == GOVERN:
        return governed(world, m, a, step)
    if kind == CHECKPOINT:
        return checkpoint(world, m, a)
    if kind == APPROVE_ALL:
        return [
            c for i, n in enumerate(APPROVERS)
            for c in build(world, m, (8, 0, -1, 3 * x + i, False), f"{step}.{i}")
        ]  # fmt: skip
    usual = None
    requests = sorted(m.state.requests)
    open_ = [r for r in requests if m.state.requests[r].state.value in ("pending", "approved")]
    pool = requests if x & 32 or not open_ else open_  # mostly open requests
    if kind in (9, 10, 11, ROUND1):  # results go to requests of the right kind, unless "wrong"
        want = ("create_key", "rotate") if kind in (9, ROUND1) else ("sign", "decrypt")
        pool = [r for r in pool if m.state.requests[r].kind.value in want] or pool
        ready = [r for r in pool if m.state.requests[r].state.value == "approved"]
        pool = ready if ready and not wrong else pool
    target = pool[x % len(pool)] if pool else "app:none"
    known = sorted(m.state.keys)
    key = known[x % len(known)] if known and not wrong else KEYS[x % len(KEYS)]
    if kind == 0:
        approvers = tuple(n for i, n in enumerate(APPROVERS) if (x >> i) & 1) or ("alice",)
        k = 1 + (x >> 3) % 3
        usual = "ops"
        make = lambda au: SetPolicy(  # noqa: E731
            rid, au, "p1", ("app",), ("decrypt", "sign"), approvers, k, 100, x % 3, x % 3, 1, False
        )
    elif kind == 1:
        usual = MEMBERS[x % 3]
        make = lambda au: AdvanceEpoch(rid, au, max(1, m.state.epoch + (x % 4) - 1), 60 * x)  # noqa: E731
    elif kind == 2:
        usual = "ops"
        when = (m.state.epoch + x % 4) if x & 16 else 0  # sometimes a named activation epoch
        make = lambda au: CreateKey(rid, au, key, ("sign", "encrypt")[x & 1], "p1", when)  # noqa: E731
    elif kind == 3:
        usual = "app"
        make = lambda au: RequestSign(rid, au, key, x % 3, "ctx", bytes([x]) * (1 + x))  # noqa: E731
    elif kind == 4:
        usual = "app"
        make = lambda au: RequestDecrypt(rid, au, key, 1 + x % 2, "", b"c" * (1 + x))  # noqa: E731
    elif kind == 5:
        usual = "node-1" if wrong else "ops"
        when = (m.state.epoch + x % 4) if x & 16 else 0
        make = lambda au: RequestRotate(rid, au, key, 60 * x, when)  # noqa: E731
    elif kind == 6:
        usual = "ops"
        make = lambda au: RequestRevoke(rid, au, key, 1 + x % 3)  # noqa: E731
    elif kind == 7:
        usual = "ops"
        make = lambda au: RequestDestroy(rid, au, key, 1 + x % 3)  # noqa: E731
    elif kind == 8:
        usual = APPROVERS[x % 3]

        def make(au: str):
            req = m.state.requests.get(target)
            digest = req.digest if req else bytes(64)
            signer = APPROVERS[(x + 1) % 3] if wrong else au
            return Approve(rid, au, target, sign_approval(world.private_key(signer), digest))
    elif kind == 9:
        usual = MEMBERS[x % 3]
        gpk = bytes([1 + wrong]) * 32
        make = lambda au: RecordDkgResult(rid, au, target, gpk, world.VSHARES)  # noqa: E731
    elif kind == 10:
        usual = MEMBERS[x % 3]
        req = m.state.requests.get(target)
        res = hashlib.sha512(bytes([x])).digest()
        if req is not None and req.payload and not wrong:
            res = world.GROUP.sign(req.payload)  # a real signature (a decrypt digest otherwise)
        make = lambda au: RecordResult(rid, au, target, res)  # noqa: E731
    elif kind == 11:
        usual = MEMBERS[x % 3]
        make = lambda au: RecordFailure(rid, au, target, "boom")  # noqa: E731
    elif kind == ERASE:
        usual = MEMBERS[x % 3]
        versions = sorted(
            (k.key_id, n) for k in m.state.keys.values() for n, v in k.versions.items()
            if v.state.value == "destroyed" or wrong
        )  # fmt: skip
        kid, num = versions[x % len(versions)] if versions else (key, 1 + x % 3)
        erid = erasure_request_id(kid, num) if not (wrong and x & 1) else rid
        make = lambda au: RecordErasure(erid, au, kid, num)  # noqa: E731
    elif kind == ROUND1:
        usual = MEMBERS[x % 3]
        package = bytes([x]) * (1 + 37 * x)
        make = lambda au: PostDkgRound1(rid, au, target, package)  # noqa: E731
    elif kind == ROLLBACK:
        usual = "ops"
        k = m.state.keys.get(key)
        primary = k.versions.get(k.primary) if k is not None else None
        number = primary.replaced if primary is not None and primary.replaced else 0
        number = number if number and not wrong else 1 + x % 3  # mostly the allowed one
        make = lambda au: RequestRollback(rid, au, key, number)  # noqa: E731
    elif kind == LABEL:
        usual = "ops"
        alias = ("pay", "vault", "k2")[x % 3]  # "k2": sometimes a key id (duplicate_name)
        tags = (("env", str(x)), ("team/x", "")) if x & 4 else ()
        make = (
            (lambda au: SetKeyMetadata(rid, au, key, f"o{x}", "d" * x, tags))
            if (x >> 3) % 3 == 0
            else (lambda au: CreateAlias(rid, au, alias, key))
            if (x >> 3) % 3 == 1
            else (lambda au: DeleteAlias(rid, au, alias))
        )
    else:
        usual = "ops"
        name = f"extra{x % 5}"
        make = lambda au: AddPrincipal(rid, au, name, "approver", world.public_key(name))  # noqa: E731
    return [make(usual if who == 0 else NAMES[who - 1])]


def checkpoint(world, m: Machine, a: tuple[int, int, int, int, bool]) -> list:
    """A member's checkpoint over this replica's snapshot (or another hash) at an index;
    "wrong": signed by another member, or under another request id."""
    _, who, rid_n, x, wrong = a
    author = NAMES[who - 1] if who else MEMBERS[x % 3]
    index = 10 * (1 + len(m.state.audit) + (x >> 2) % 4)  # mostly forward, sometimes not
    hash_ = state_hash(m.snapshot(), index) if x & 2 else state_hash(bytes([x]), index)
    signer = MEMBERS[(x + 1) % 3] if wrong and x & 1 else author
    sig = sign_checkpoint(world.private_key(signer), m.state.genesis, index, hash_)
    rid = f"r{rid_n}" if wrong and not x & 1 else f"checkpoint-{index}"
    return [PostCheckpoint(rid, author, index, hash_, sig)]


def governed(world, m: Machine, a: tuple[int, int, int, int, bool], step: int | str) -> list:
    """A governance change, approved by every approver (subjects and unknown names are
    refused), then, sometimes, enough epochs for a time-locked change to take effect."""
    _, who, _, x, wrong = a
    rid = f"g{step}"
    author = NAMES[who - 1] if who and wrong else "ops"  # "wrong": maybe not an operator
    ref = f"{author}:{rid}"
    open_gov = [
        r for r in sorted(m.state.open) if m.state.requests[r].kind.value in GOVERNANCE_KINDS
    ]
    target = open_gov[x % len(open_gov)] if open_gov else "ops:none"
    first = change(world, x, target, rid)(author)

    def approvals():
        req = m.state.requests.get(ref)
        digest = req.digest if req else bytes(64)
        return [
            Approve(f"{rid}-a{n}", n, ref, sign_approval(world.private_key(n), digest))
            for n in APPROVERS
        ]

    steps = []
    if x & 32:
        for i in range(world.TIME_LOCK):
            steps.append(
                lambda i=i: [
                    AdvanceEpoch(f"{rid}-e{i}{n}", n, m.state.epoch + 1, 9)
                    for n in sorted(m.state.members)[: m.state.threshold]
                ]
            )
    return [first, approvals, *steps]


def change(world, x: int, target: str, rid: str):
    """A governance change of every kind, chosen by `x`."""
    name = ("carol", "app", "aud", "extra0", "extra1")[(x >> 3) % 5]
    choice = x % 9
    if choice == 6:  # a replaced policy: stronger, weaker or both
        approvers = ("alice", "bob", "carol")[(x >> 3) % 2 :]
        k = 1 + (x >> 4) % 2
        return lambda au: SetPolicy(
            rid, au, "p1", ("app",), ("decrypt", "sign"), approvers, k, 100, x % 3, x % 3,
            1 + x % 2, False,
        )  # fmt: skip
    if choice == 7:
        new = f"extra{(x >> 3) % 2}"
        role = ("approver", "client")[(x >> 4) % 2]
        return lambda au: AddPrincipal(rid, au, new, role, world.public_key(new))
    if choice == 0:
        return lambda au: RemovePrincipal(rid, au, name)
    if choice == 1:  # re-key to a key nobody signs with here: that principal goes quiet
        return lambda au: RekeyPrincipal(rid, au, name, world.public_key(f"{name}-{x}"))
    if choice == 2:
        return lambda au: SetThreshold(rid, au, 1 + x % 3)
    if choice == 3:
        approvers = ("alice", "bob", "carol")[: 2 + (x >> 3) % 2]
        return lambda au: SetGovernance(rid, au, approvers, 2, 1 + (x >> 4) % 3)
    if choice == 4:
        member = f"node-{4 + (x >> 3) % 2}"
        return lambda au: AddMember(rid, au, member, int(member[5:]), world.public_key(member))
    if choice == 5:
        return lambda au: RemoveMember(rid, au, f"node-{1 + (x >> 3) % 4}")
    return lambda au: CancelRequest(rid, au, target)


def flow(world, m: Machine, key_id: str, purpose: str, step: int | str) -> list:
    """The happy path that takes a key to a new active version (commands built lazily)."""
    rid = f"f{step}"
    ref = f"ops:{rid}"
    first = (
        CreateKey(rid, "ops", key_id, purpose, "p1")
        if key_id not in m.state.keys
        else RequestRotate(rid, "ops", key_id, 0)
    )

    def approvals():
        req = m.state.requests.get(ref)
        digest = req.digest if req else bytes(64)
        return [
            Approve(f"{rid}-a{n}", n, ref, sign_approval(world.private_key(n), digest))
            for n in APPROVERS
        ]

    round1 = [PostDkgRound1(f"{rid}-p{n}", n, ref, n.encode() * 20) for n in MEMBERS]
    posts = [RecordDkgResult(f"{rid}-d{n}", n, ref, world.GPK, world.VSHARES) for n in MEMBERS]
    return [
        first,
        approvals,
        *round1,
        *posts,
        lambda: [AdvanceEpoch(f"{rid}-e{n}", n, m.state.epoch + 1, 7) for n in MEMBERS[:2]],
    ]


def use(world, m: Machine, x: int, wrong: bool, step: int | str) -> list:
    """Sign (or decrypt) on a known key, all approvers approve, a node records the outcome."""
    keys = sorted(m.state.keys)
    if not keys:
        return []
    key = m.state.keys[keys[x % len(keys)]]
    rid = f"u{step}"
    ref = f"app:{rid}"
    message = bytes([x]) * 8
    if key.purpose.value == "sign":
        first = RequestSign(rid, "app", key.key_id, 0, "ctx", message)
    else:
        first = RequestDecrypt(rid, "app", key.key_id, 1 + x % 2, "ctx", message)

    def digest() -> bytes:
        return m.state.requests[ref].digest if ref in m.state.requests else bytes(64)

    approve = [
        lambda n=n: [Approve(f"{rid}-a{n}", n, ref, sign_approval(world.private_key(n), digest()))]
        for n in APPROVERS
    ]
    nodes = (MEMBERS[x % 3], MEMBERS[(x + 1) % 3])
    if wrong:
        last = [RecordFailure(f"{rid}-f{n}", n, ref, "quorum of nodes unavailable") for n in nodes]
    elif key.purpose.value == "sign":
        last = [RecordResult(f"{rid}-r", nodes[0], ref, world.GROUP.sign(message))]
    else:
        res = hashlib.sha512(message).digest()
        last = [RecordResult(f"{rid}-r{n}", n, ref, res) for n in nodes]
    return [first, *approve, *last]


def seed(world, m: Machine, apply) -> None:
    """Bootstrap, a policy, and one active key of each purpose (so deep paths are reached)."""
    for cmd in (world.bootstrap_command(), world.policy_command()):
        apply(encode_command(world.signed(cmd)))
    digest = m.state.requests["ops:pol"].digest  # a new policy: in force on its quorum
    for n in APPROVERS[:2]:
        apply(encode_command(Approve(f"pol-{n}", n, "ops:pol", world.private_key(n).sign(digest))))
    for i, purpose in enumerate(("sign", "encrypt")):
        for item in flow(world, m, KEYS[i], purpose, f"init{i}"):
            for cmd in item() if callable(item) else [item]:
                apply(encode_command(world.signed(cmd)))


def run(world, m: Machine, act, step: int | str, apply) -> None:
    """Build the action's commands against `m` and feed each one to `apply`."""
    forge = act[4] and act[3] & 8  # sometimes a signed command is signed by someone else
    for item in build(world, m, act, step):
        for cmd in item() if callable(item) else [item]:
            apply(encode_command(world.signed(cmd, "eve" if forge else None)))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(action, min_size=5, max_size=80), bootstrap=st.booleans())
def test_replicas_agree(world, actions, bootstrap):
    replicas = [Machine(genesis=world.m.genesis) for _ in range(3)]

    def apply_all(data: bytes) -> None:
        outs = [r.apply(data) for r in replicas]
        assert outs[0] == outs[1] == outs[2]
        decode_outcome(outs[0])

    if bootstrap:  # else everything is rejected as not bootstrapped (also worth checking)
        seed(world, replicas[0], apply_all)
    for step, act in enumerate(actions):
        if act[0] == RESTORE:  # replica c restarts from its own snapshot
            replicas[2] = Machine.from_snapshot(replicas[2].snapshot(), genesis=world.m.genesis)
            continue
        run(world, replicas[0], act, step, apply_all)
    a = replicas[0]
    snaps = [r.snapshot() for r in replicas]
    assert snaps[0] == snaps[1] == snaps[2]
    heads = [r.audit_head() for r in replicas]
    assert heads[0] == heads[1] == heads[2]
    assert verify_chain(a.state.audit, expected_head=heads[0]) == heads[0]
    assert Machine.from_snapshot(snaps[0]).snapshot() == snaps[0]
    for key in a.state.keys.values():  # structural invariants
        actives = [v for v in key.versions.values() if v.state.value == "active"]
        assert len(actives) <= 1
        assert key.primary == (actives[0].number if actives else 0)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=st.lists(action, min_size=2, max_size=50), cut=st.integers(0, 49))
def test_snapshot_mid_sequence_continues_identically(world, actions, cut):
    live = Machine(genesis=world.m.genesis)
    seed(world, live, live.apply)
    cut %= len(actions)
    for step, act in enumerate(actions[:cut]):
        run(world, live, act, step, live.apply)
    clone = Machine.from_snapshot(live.snapshot())

    def apply_both(data: bytes) -> None:
        assert live.apply(data) == clone.apply(data)

    for step, act in enumerate(actions[cut:], start=cut):
        run(world, live, act, step, apply_both)
    assert live.snapshot() == clone.snapshot()


RANK = {s: i for i, s in enumerate(VersionState)}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=st.lists(action, min_size=5, max_size=60))
def test_every_step_keeps_the_invariants(world, actions):
    """Per command: rejected => only one audit record added; retried => nothing changes;
    epochs and version states only move forward; at most one active version per key."""
    m = Machine(genesis=world.m.genesis)
    seed(world, m, m.apply)
    ranks: dict[tuple[str, int], int] = {}

    def apply_checked(data: bytes) -> None:
        core, n, epoch = world.core_bytes(m), len(m.state.audit), m.state.epoch
        cmd = decode_command(data)
        prior = m.state.outcomes.get(f"{cmd.author}:{cmd.request_id}")
        out = decode_outcome(m.apply(data))
        if prior is not None and out == prior.outcome:  # a retry
            assert len(m.state.audit) == n and world.core_bytes(m) == core
        elif not out.ok:
            assert world.core_bytes(m) == core
            assert len(m.state.audit) == n + 1
            assert m.state.audit[-1].outcome == f"rejected:{out.code}"
        else:
            assert len(m.state.audit) == n + 1
            assert m.state.audit[-1].outcome.partition("!")[0] == out.code
        assert m.state.epoch >= epoch
        for key in m.state.keys.values():
            for v in key.versions.values():
                rank = RANK[v.state]
                back = v.state is VersionState.ACTIVE and v.rolled_back_epoch == m.state.epoch
                if back and ranks.get((key.key_id, v.number)) == RANK[VersionState.RETIRED]:
                    ranks[(key.key_id, v.number)] = rank  # the one way back: a rollback
                assert rank >= ranks.get((key.key_id, v.number), 0)
                ranks[(key.key_id, v.number)] = rank
            actives = [v.number for v in key.versions.values() if v.state is VersionState.ACTIVE]
            assert actives == ([key.primary] if key.primary else [])
        open_now = {
            rid for rid, r in m.state.requests.items() if r.state.value in ("pending", "approved")
        }
        assert set(m.state.open) == open_now
        for r in m.state.requests.values():  # round-1 packages only while a DKG runs
            if r.dkg_round1:
                assert r.state.value == "approved" and r.kind.value in ("create_key", "rotate")
                assert set(r.dkg_round1) <= set(m.state.members)

    for step, act in enumerate(actions):
        run(world, m, act, step, apply_checked)
    verify_chain(m.state.audit, expected_head=m.audit_head())
