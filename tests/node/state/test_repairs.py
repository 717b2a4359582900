"""Share repair in the replicated state: the governance request, runs, posts, the
target's confirmation, failure reports, and what a malicious member can (not) do."""

from __future__ import annotations

import msgpack
import pytest

from node.state import (
    PostRepair,
    Reason,
    RecordRepair,
    RemoveMember,
    RepairMember,
    ReportRepair,
    repair_request_id,
)
from node.state.errors import DecodeError
from node.state.model import RepairState, RequestState, VersionRef
from node.state.repairs import batch_size, repairable_versions
from node.state.snapshot import _encode_old, decode_state, encode_state

from .conftest import World


def post(member: str, author: str, run: int, package: bytes = b"\x01" * 40) -> PostRepair:
    return PostRepair(repair_request_id("rp", member, run), author, member, run, package)


def confirm(member: str, run: int, author: str | None = None) -> RecordRepair:
    return RecordRepair(repair_request_id("rr", member, run), author or member, member, run)


def report(member: str, run: int, author: str, culprits=(), reason="x") -> ReportRepair:
    return ReportRepair(repair_request_id("rf", member, run), author, member, run,
                        tuple(culprits), reason)  # fmt: skip


@pytest.fixture
def keyed(ready: World) -> World:
    ready.active_key("k1")
    ready.active_key("k2", purpose="encrypt")
    return ready


def four_members(world: World) -> World:
    """Bootstrapped with a fourth member and one active key (k1) shared among the four."""
    from node.state import AddMember, CreateKey, RecordDkgResult

    world.setup()
    world.govern(AddMember(world.rid("am"), "ops", "node-4", 4, world.public_key("node-4")))
    rid = world.rid("ck")
    world.ok(CreateKey(rid, "ops", "k1", "sign", "p1"))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    vshares = tuple(bytes([i]) * 32 for i in range(1, 5))
    for m in ("node-1", "node-2", "node-3", "node-4"):
        world.ok(RecordDkgResult(world.rid("d"), m, rid, world.GPK, vshares))
    world.advance()
    assert world.m.active_version("k1") == 1
    return world


def start(world: World, member: str = "node-2", new_key: str | None = None):
    pk = world.public_key(new_key) if new_key else b""
    world.govern(RepairMember(world.rid("rm"), "ops", member, pk))
    return world.m.state.repairs[member]


def test_repair_without_new_key_starts_at_once_with_the_first_t_helpers(keyed: World):
    repair = start(keyed, "node-1")
    assert repair.state is RepairState.RUNNING
    assert repair.items == (VersionRef("k1", 1), VersionRef("k2", 1))
    assert repair.helpers == ("node-2", "node-3")  # first t members by index but the target
    assert not keyed.m.holds("node-1", "k1", 1)
    assert keyed.m.holds("node-2", "k1", 1)


def test_a_new_identity_key_waits_the_time_lock_then_replaces_the_old_key(keyed: World):
    out = keyed.ok(RepairMember("rm-1", "ops", "node-2", keyed.public_key("node-2b")))
    assert "WEAKENING" in out.detail
    req = keyed.req("rm-1")
    keyed.approve(req.ref, "alice")
    keyed.approve(req.ref, "bob")
    assert req.state is RequestState.APPROVED and "node-2" not in keyed.m.state.repairs
    keyed.advance(by=req.effective_epoch - keyed.m.state.epoch)
    assert req.state is RequestState.EXECUTED
    assert keyed.m.state.members["node-2"].public_key == keyed.public_key("node-2b")
    # the old key is dead: a post signed with it is refused; the new key's is accepted
    stale = keyed.signed(post("node-2", "node-2", 1), signer="node-2")
    assert keyed.m.apply_command(stale).code == Reason.BAD_SIGNATURE.value
    fresh = keyed.signed(post("node-2", "node-2", 1), signer="node-2b")
    assert keyed.m.apply_command(fresh).ok


def test_a_full_run_rebuilds_every_version_and_ends_the_repair(keyed: World):
    repair = start(keyed)
    for who in ("node-2", "node-1", "node-3"):
        keyed.ok(post("node-2", who, 1))
    out = keyed.ok(confirm("node-2", 1))
    assert out.code == "executed"
    assert repair.state is RepairState.DONE and repair.done == 2 and not repair.posts
    assert keyed.m.holds("node-2", "k1", 1) and keyed.m.repairing("node-2") is None


def test_posts_are_refused_from_outsiders_twice_and_for_another_run(keyed: World):
    start(keyed, "node-3")  # helpers node-1, node-2
    keyed.ok(post("node-3", "node-1", 1))
    keyed.rejects(post("node-3", "node-1", 1, b"\x02" * 40), Reason.REQUEST_ID_CONFLICT)
    dup = PostRepair("other-id", "node-1", "node-3", 1, b"\x03" * 40)
    keyed.rejects(dup, Reason.DUPLICATE_POST)
    keyed.rejects(post("node-3", "node-2", 2), Reason.REQUEST_DECIDED)  # not the current run
    keyed.rejects(post("node-3", "ops", 1), Reason.UNAUTHORIZED)  # not a node


def test_only_the_target_confirms_and_only_with_every_post(keyed: World):
    start(keyed)
    keyed.ok(post("node-2", "node-2", 1))
    keyed.ok(post("node-2", "node-1", 1))
    early = RecordRepair("early", "node-2", "node-2", 1)
    keyed.rejects(early, Reason.NOT_APPROVED)  # node-3's post is missing
    keyed.ok(post("node-2", "node-3", 1))
    keyed.rejects(confirm("node-2", 1, author="node-1"), Reason.UNAUTHORIZED)
    assert keyed.ok(confirm("node-2", 1)).code == "executed"


def test_a_named_culprit_helps_no_more_and_a_new_run_starts(world: World):
    four_members(world)
    repair = start(world, "node-1")
    assert repair.helpers == ("node-2", "node-3")
    world.ok(report("node-1", 1, "node-3", ["node-2"], "bad pieces"))
    assert repair.run == 2 and repair.helpers == ("node-3", "node-4")
    assert repair.excluded == ("node-2",) and not repair.posts
    world.ok(report("node-1", 2, "node-3", [], "restarted"))  # no culprit: same helpers
    assert repair.run == 3 and repair.helpers == ("node-3", "node-4")
    world.ok(report("node-1", 3, "node-4", ["node-3"], "bad"))
    assert repair.state is RepairState.FAILED and "fewer than t" in repair.failure


def test_naming_the_target_fails_the_repair(keyed: World):
    repair = start(keyed)
    keyed.ok(report("node-2", 1, "node-1", ["node-2"], "bad target post"))
    assert repair.state is RepairState.FAILED and keyed.m.repairing("node-2") is None


def test_endless_failures_end_the_repair(keyed: World):
    repair = start(keyed)
    from node.state.repairs import MAX_FAILED_RUNS

    for run in range(1, MAX_FAILED_RUNS + 1):
        keyed.ok(report("node-2", run, "node-1", [], "restarted"))
    assert repair.state is RepairState.FAILED and "runs failed" in repair.failure


def test_one_repair_at_a_time_and_never_below_t_other_members(keyed: World):
    start(keyed)
    keyed.rejects(RepairMember("rm-x", "ops", "node-3"), Reason.LIMIT_REACHED)
    keyed.rejects(RepairMember("rm-y", "ops", "node-9"), Reason.UNKNOWN_PRINCIPAL)


def test_a_new_key_must_be_unused(keyed: World):
    keyed.rejects(
        RepairMember("rm-z", "ops", "node-2", keyed.public_key("node-1")), Reason.INVALID_CLUSTER
    )
    keyed.rejects(
        RepairMember("rm-w", "ops", "node-2", keyed.public_key("alice")), Reason.INVALID_CLUSTER
    )


def test_removing_a_helper_starts_a_run_without_it_and_removing_the_target_ends_it(world: World):
    four_members(world)
    repair = start(world, "node-4")
    assert repair.helpers == ("node-1", "node-2")
    world.govern(RemoveMember(world.rid("rmv"), "ops", "node-1"))
    assert repair.run == 2 and repair.helpers == ("node-2", "node-3")
    rid = world.rid("rmv")
    world.ok(RemoveMember(rid, "ops", "node-4"))
    world.approve(rid, "alice")
    world.approve(rid, "bob")
    world.advance(by=world.TIME_LOCK, voters=("node-2", "node-3"))
    assert repair.state is RepairState.FAILED and repair.failure == "member removed"


def test_a_cluster_without_keys_has_nothing_to_repair(ready: World):
    repair = start(ready)
    assert repair.state is RepairState.DONE and repair.items == ()


def test_batches_keep_a_helpers_post_within_one_command():
    from node.state.commands import MAX_REPAIR_POST_BYTES

    for t in range(2, 16):
        n = batch_size(t)
        assert 1 <= n <= 256
        # t commitments of 32 bytes (bin8 header: 34) per item, a list header, framing
        assert 64 + n * (t * 34 + 3) <= MAX_REPAIR_POST_BYTES


def test_runs_walk_through_batches(keyed: World):
    repair = start(keyed)
    repair.batch = 1  # as if each batch held one version
    for run, item in ((1, VersionRef("k1", 1)), (2, VersionRef("k2", 1))):
        assert repair.batch_items() == (item,)
        for who in ("node-2", "node-1", "node-3"):
            keyed.ok(post("node-2", who, run))
        keyed.ok(confirm("node-2", run))
        assert not keyed.m.holds("node-2", "k2", 1) or run == 2
    assert repair.state is RepairState.DONE


def test_repairable_versions_skip_revoked_and_unfinished(keyed: World):
    from node.state import RequestRevoke

    rid = keyed.rid("rv")
    keyed.ok(RequestRevoke(rid, "ops", "k2", 1))
    keyed.approve(rid, "alice")
    keyed.approve(rid, "bob")
    assert repairable_versions(keyed.m.state, 2) == (VersionRef("k1", 1),)


def test_state_with_a_repair_snapshots_and_restores(keyed: World):
    start(keyed)
    keyed.ok(post("node-2", "node-1", 1))
    data = keyed.snap()
    assert decode_state(data) == keyed.m.state


def test_a_version_9_snapshot_is_read_as_one_without_repairs(keyed: World):
    old = _encode_old(keyed.m.state, 9)
    state = decode_state(old)
    assert state.repairs == {} and encode_state(state) == keyed.snap()
    raw = msgpack.unpackb(old, raw=False, strict_map_key=False)
    raw["state"]["repairs"] = {}  # a v9 snapshot cannot carry v10 fields
    with pytest.raises(DecodeError):
        decode_state(msgpack.packb(raw, use_bin_type=True))
    raw["v"] = 8
    del raw["state"]["repairs"]
    with pytest.raises(DecodeError):
        decode_state(msgpack.packb(raw, use_bin_type=True))



def test_a_second_repair_of_a_member_never_reuses_a_run_number(keyed: World):
    first = start(keyed)
    for who in ("node-2", "node-1", "node-3"):
        keyed.ok(post("node-2", who, 1))
    keyed.ok(confirm("node-2", 1))
    second = start(keyed)
    assert second is not first and second.run == 2
    keyed.ok(post("node-2", "node-1", 2))  # a new request id: not the first repair's outcome
    assert "node-1" in second.posts
