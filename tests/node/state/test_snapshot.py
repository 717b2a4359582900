"""Snapshots: canonical bytes, strict restore, and a restored replica continues identically."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.state import (
    AdvanceEpoch,
    DecodeError,
    Machine,
    RecordResult,
    RequestRotate,
    RequestSign,
    State,
)
from node.state.snapshot import decode_state, encode_state


@pytest.fixture
def busy(ready):
    ready.active_key("k1")
    ready.active_key("kek", "encrypt")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"m1"))
    ready.approve("s1", "alice")
    ready.ok(RequestRotate("rot", "ops", "k1", 0))
    return ready


def tail(world):
    world.approve("s1", "bob")
    world.ok(RecordResult("res", "node-1", "s1", world.result("s1")))
    world.approve("rot", "alice")
    world.approve("rot", "carol")
    world.post_dkg("rot")
    world.advance(at=5)


def test_roundtrip_is_byte_identical(busy):
    snap = busy.snap()
    restored = Machine.from_snapshot(snap)
    assert restored.snapshot() == snap
    assert restored.audit_head() == busy.m.audit_head()
    assert restored.state == busy.m.state


def test_empty_state_roundtrips():
    snap = Machine().snapshot()
    assert Machine.from_snapshot(snap).state == State()


def test_insertion_order_does_not_change_bytes(busy):
    snap = busy.snap()
    st = decode_state(snap)
    for name in ("members", "principals", "policies", "keys", "requests", "outcomes"):
        table = getattr(st, name)
        setattr(st, name, dict(reversed(list(table.items()))))
    assert encode_state(st) == snap


def test_restored_replica_continues_identically(busy):
    restored = type(busy)()
    restored.m = Machine.from_snapshot(busy.snap())
    restored.n = busy.n
    tail(busy)
    tail(restored)
    assert restored.snap() == busy.snap()
    assert restored.m.active_version("k1") == busy.m.active_version("k1") == 2


def raw_snapshot(world) -> dict:
    return msgpack.unpackb(world.snap(), raw=False, strict_map_key=False)


def repack(raw) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def test_tampered_audit_chain_refused(busy):
    raw = raw_snapshot(busy)
    raw["state"]["audit"][2]["outcome"] = "ok-but-forged"
    with pytest.raises(DecodeError, match="audit chain"):
        decode_state(repack(raw))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(v=1), "version"),
        (lambda r: r.update(extra=1), "map"),
        (lambda r: r["state"].update(surprise=1), "fields"),
        (lambda r: r["state"].update(epoch="3"), "int"),
        (lambda r: r["state"].update(epoch=-1), "range"),
        (lambda r: r["state"]["keys"]["k1"].update(purpose="mint"), "Purpose"),
        (lambda r: r["state"]["keys"]["k1"].update(key_id="k2"), "wrong name"),
        (
            lambda r: r["state"]["keys"]["k1"]["versions"].update(
                {7: r["state"]["keys"]["k1"]["versions"][1]}
            ),
            "wrong number",
        ),
        (lambda r: r["state"]["outcomes"]["app:s1"]["outcome"].update(seq=10**6), "outcome"),
        (lambda r: r["state"]["open"].pop("app:s1"), "open requests"),
    ],
)
def test_schema_violations_refused(busy, mutate, message):
    raw = raw_snapshot(busy)
    mutate(raw)
    with pytest.raises(DecodeError, match=message):
        decode_state(repack(raw))


def test_non_canonical_encoding_refused(busy):
    raw = raw_snapshot(busy)
    raw["state"]["keys"] = dict(reversed(list(raw["state"]["keys"].items())))
    with pytest.raises(DecodeError, match="canonical"):
        decode_state(repack(raw))


def test_garbage_refused_and_state_kept(busy):
    before = busy.snap()
    for data in (b"", b"\xc1", repack([1]), before[:-3], before + b"\x00"):
        with pytest.raises(DecodeError):
            busy.m.restore(data)
    assert busy.snap() == before


def test_restore_replaces_state(busy):
    other = Machine()
    other.restore(busy.snap())
    e = busy.m.state.epoch + 1
    for n in ("node-2", "node-3"):
        other.apply_command(busy.signed(AdvanceEpoch(f"e-x{n}", n, e, 0)))
    assert other.state.epoch == e and busy.m.state.epoch != e


# ------------------------------------------- a snapshot cannot smuggle authority (9.4)


@pytest.fixture
def two_pending(ready):
    """Two sign requests: s1 approved by alice and bob, s2 pending with no approvals; and
    governance state: a removed principal, a time-locked change, a pending one."""
    from node.state import AddPrincipal, RemovePrincipal

    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"harmless"))
    ready.ok(RequestSign("s2", "app", "k1", 0, "ctx", b"pay mallory"))
    ready.approve("s1", "alice")
    ready.approve("s1", "bob")
    ready.govern(RemovePrincipal("rm", "ops", "aud"))
    ready.ok(ready.policy_command("lax", k=1))
    ready.approve("lax", "alice")
    ready.approve("lax", "bob")
    ready.ok(AddPrincipal("add", "ops", "dave", "approver", ready.public_key("dave")))
    return ready


def forge(world, mutate) -> bytes:
    """A snapshot a malicious leader built from a real one: the audit chain stays intact
    (it is re-verified), the state is edited and re-encoded canonically."""
    st = decode_state(world.snap())
    mutate(st)
    return encode_state(st)


def approved_like_s1(st):
    s1, s2 = st.requests["app:s1"], st.requests["app:s2"]
    s2.state, s2.decided_epoch = s1.state, s1.decided_epoch
    st.open["app:s2"] = "app"
    return s1, s2


def install_and_check(world, data: bytes):
    """Either restore refuses it, or the restored replica's executable() refuses s2."""
    from node.state import Reason, Rejected

    m = Machine(genesis=world.m.genesis)
    try:
        m.restore(data)
    except DecodeError:
        return "refused"
    with pytest.raises(Rejected) as info:
        m.executable("app:s2")
    assert info.value.reason is Reason.NOT_APPROVED
    return "not executable"


def test_copied_approvals_do_not_authorise(two_pending):
    """Regression (issue 9.4): approvals copied from another request were accepted and
    executable() said yes."""

    def mutate(st):
        s1, s2 = approved_like_s1(st)
        s2.approvals = dict(s1.approvals)

    assert install_and_check(two_pending, forge(two_pending, mutate)) == "not executable"


def test_swapped_payload_does_not_authorise(two_pending):
    """Regression (issue 9.4): s1's approvals with s2's payload (hash and digest copied)."""

    def mutate(st):
        s1, s2 = st.requests["app:s1"], st.requests["app:s2"]
        s1.payload = s2.payload

    assert install_and_check(two_pending, forge(two_pending, mutate)) == "refused"

    def mutate_all(st):  # also re-hash, so restore cannot tell: executable must
        s1 = st.requests["app:s1"]
        s1.payload = b"pay mallory"
        from node.state import payload_hash

        s1.payload_hash = payload_hash(s1.payload)
        from node.state.digest import digest_of

        s1.digest = digest_of(s1, st.cluster_id, s1.payload_hash)

    m = Machine(genesis=two_pending.m.genesis)
    m.restore(forge(two_pending, mutate_all))
    from node.state import Reason, Rejected

    with pytest.raises(Rejected) as info:
        m.executable("app:s1")
    assert info.value.reason is Reason.NOT_APPROVED


def test_replaced_quorum_does_not_authorise(two_pending):
    """Regression (issue 9.4): a request whose approvers were replaced by one the attacker
    controls (and k lowered) was executable with that one approval."""
    from node.state.approvals import sign_approval
    from node.state.digest import digest_of

    def mutate(st):
        s1, s2 = approved_like_s1(st)
        s2.approvers, s2.k = ("carol",), 1
        s2.approvals = {"carol": s1.approvals["alice"]}
        s2.digest = digest_of(s2, st.cluster_id, s2.payload_hash)

    assert install_and_check(two_pending, forge(two_pending, mutate)) == "not executable"

    def mutate_k0(st):
        _, s2 = approved_like_s1(st)
        s2.k = 0
        s2.digest = digest_of(s2, st.cluster_id, s2.payload_hash)

    assert install_and_check(two_pending, forge(two_pending, mutate_k0)) == "refused"
    assert sign_approval  # approvers sign digests that bind approvers and k


def test_dangling_policy_refused_at_restore(two_pending):
    """Regression (issue 9.4): a key whose policy does not exist was restored, and every
    replica that installed it crashed (KeyError) on the next command about that key."""
    data = forge(two_pending, lambda st: st.policies.clear())
    with pytest.raises(DecodeError, match="missing policy"):
        Machine(genesis=two_pending.m.genesis).restore(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda st: st.keys.pop("k1"), "missing key"),
        (lambda st: st.keys["k1"].versions.pop(1), "missing version|primary"),
        (lambda st: st.principals.pop("alice"), "alice"),
        (lambda st: st.requests["app:s1"].approvals.update(zed=bytes(64)), "outside its quorum"),
        (lambda st: st.requests.pop(st.keys["k1"].versions[1].request_id), "create/rotate"),
        (lambda st: setattr(st, "threshold", 1), "threshold"),
        (lambda st: st.members.pop("node-3"), "verification share|threshold"),
    ],
)
def test_broken_references_refused(two_pending, mutate, message):
    with pytest.raises(DecodeError, match=message):
        Machine(genesis=two_pending.m.genesis).restore(forge(two_pending, mutate))


def test_snapshot_of_another_cluster_refused(busy):
    with pytest.raises(DecodeError, match="genesis"):
        Machine(genesis=b"\x01" * 64).restore(busy.snap())


def test_state_hash_is_domain_separated():
    from node.state.snapshot import state_hash

    a = state_hash(b"snap", 7)
    assert len(a) == 64 and a != state_hash(b"snap", 8) and a != state_hash(b"snap!", 7)


NAMES = [
    "", "k1", "k2", "p1", "p9", "alice", "zed", "node-1", "app:s1", "app:s2", "ops:ck",
    "ops:lax", "ops:add", "aud",
]  # fmt: skip


EDIT = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 2**40))


def _objects(st):
    out = [st, st.governance]
    tables = (
        st.members, st.principals, st.policies, st.keys, st.requests, st.removed_members,
        st.removed_principals,
    )  # fmt: skip
    for table in tables:
        out += list(table.values())
    for key in st.keys.values():
        out += list(key.versions.values())
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(EDIT, min_size=1, max_size=3))
def test_no_snapshot_crashes_the_machine_later(two_pending, edits):
    """Any edit of a real snapshot (dropped entries, names pointing elsewhere, odd numbers)
    is refused at restore, or the restored machine survives every command and query."""
    import dataclasses as dc

    from node.state import Approve, CancelRequest, RemovePrincipal, RequestRevoke
    from node.state.approvals import sign_approval

    state = decode_state(two_pending.snap())
    for which, field_n, value in edits:
        objs = _objects(state)
        obj = objs[which % len(objs)]
        fields = [f for f in dc.fields(obj) if f.name not in ("audit", "outcomes")]
        f = fields[field_n % len(fields)]
        current = getattr(obj, f.name)
        if isinstance(current, dict) and current:
            current.pop(sorted(current)[value % len(current)])
        elif type(current) is str:
            setattr(obj, f.name, NAMES[value % len(NAMES)])
        elif type(current) is int:
            setattr(obj, f.name, value % 7 if value & 1 else value)
    try:
        data = encode_state(state)
        m = Machine(genesis=two_pending.m.genesis)
        m.restore(data)
    except (DecodeError, TypeError, ValueError):
        return
    w = two_pending
    e = m.state.epoch + 1

    def digest(ref: str) -> bytes:
        req = m.state.requests.get(ref)
        return req.digest if req and len(req.digest) == 64 else bytes(64)

    cmds = [
        RequestSign("z1", "app", "k1", 0, "", b"m"),
        RequestRevoke("z2", "ops", "k1", 1),
        RequestRotate("z3", "ops", "k1", 0),
        *(AdvanceEpoch(f"z4{n}", n, e, 0) for n in ("node-1", "node-2", "node-3")),
        Approve("z5", "carol", "app:s2", sign_approval(w.private_key("carol"), bytes(64))),
        RecordResult("z6", "node-1", "app:s1", w.result("s1")),
        w.policy_command("z7", k=1),
        *(
            Approve(f"z8{ref[4:]}{n}", n, ref, sign_approval(w.private_key(n), digest(ref)))
            for ref in ("ops:add", "ops:z7")
            for n in ("alice", "carol")
        ),
        CancelRequest("z9", "carol", "ops:lax"),
        RemovePrincipal("z10", "ops", "carol"),
        *(AdvanceEpoch(f"z11{n}", n, e + 1, 0) for n in ("node-1", "node-2", "node-3")),
    ]
    for cmd in cmds:
        m.apply_command(w.signed(cmd))  # an Outcome, accepted or refused; never an exception
    for ref in sorted(m.state.requests):
        try:
            m.executable(ref)
        except Exception as exc:  # only a clear refusal is allowed
            from node.state import Rejected

            assert isinstance(exc, Rejected), exc
    m.open_requests()
    m.active_version("k1")
    m.rotation_due("k1", 10**9)
    Machine.from_snapshot(m.snapshot())
