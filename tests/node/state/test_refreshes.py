"""Proactive refresh in the replicated state: runs, posts, records, the commit that moves
verification shares and generation together, failures, and who may do what."""

from __future__ import annotations

import pytest

from node.state import (
    PostRefresh,
    Reason,
    RecordRefresh,
    ReportRefresh,
    StartRefresh,
)
from node.state.model import RepairState
from node.state.refreshes import refresh_batch
from node.state.snapshot import decode_state

from .conftest import MEMBERS, World

NEW = tuple(bytes([0x40 + i]) * 32 for i in range(1, 4))  # stands in for new Y_1..Y_3


def start(w: World, author: str = "ops"):
    out = w.ok(StartRefresh(w.rid("rf"), author))
    return w.m.running_refresh() or w.m.state.refreshes[next(iter(w.m.state.refreshes))], out


def post(w: World, who: str, run: int):
    return PostRefresh(f"refresh-post-{run}", who, run, b"\x01" * 40)


def record(w: World, who: str, run: int, rows):
    return RecordRefresh(f"refresh-rec-{run}", who, run, rows)


@pytest.fixture
def keyed(ready: World) -> World:
    ready.active_key("k1")
    return ready


def run_through(w: World, r, rows=None) -> None:
    batch = r.batch_items()
    rows = rows or tuple(NEW for _ in batch)
    run = r.run
    for m in MEMBERS:
        w.ok(post(w, m, run))
    for m in MEMBERS:
        w.ok(record(w, m, run, rows))


def test_a_refresh_commits_new_verification_shares_and_generation_at_once(keyed: World):
    r, out = start(keyed)
    assert out.code == "ok" and r.participants == MEMBERS
    v = keyed.m.state.keys["k1"].versions[1]
    old = v.verification_shares
    run = r.run
    for m in MEMBERS:
        keyed.ok(post(keyed, m, run))
    rows = tuple(NEW for _ in r.batch_items())
    keyed.ok(record(keyed, "node-1", run, rows))
    keyed.ok(record(keyed, "node-2", run, rows))
    assert v.verification_shares == old and v.generation == 0  # nothing until all recorded
    out = keyed.ok(record(keyed, "node-3", run, rows))
    assert out.code == "executed" and r.state is RepairState.DONE
    assert v.verification_shares == NEW and v.generation == 1
    assert v.group_public_key == keyed.GPK  # a refresh never changes a group key


def test_different_values_fail_the_run_and_change_nothing(keyed: World):
    r, _ = start(keyed)
    run = r.run
    for m in MEMBERS:
        keyed.ok(post(keyed, m, run))
    rows = tuple(NEW for _ in r.batch_items())
    keyed.ok(record(keyed, "node-1", run, rows))
    other = tuple((bytes(32),) * 3 for _ in r.batch_items())
    out = keyed.ok(record(keyed, "node-2", run, other))
    assert "other verification shares" in out.detail and r.run == run + 1
    assert keyed.m.state.keys["k1"].versions[1].generation == 0


def test_records_need_every_post_and_participants_only(keyed: World):
    r, _ = start(keyed)
    keyed.ok(post(keyed, "node-1", r.run))
    rows = tuple(NEW for _ in r.batch_items())
    keyed.rejects(RecordRefresh("early", "node-1", r.run, rows), Reason.NOT_APPROVED)
    keyed.rejects(PostRefresh("x", "node-1", r.run, b"\x02"), Reason.DUPLICATE_POST)
    keyed.rejects(PostRefresh("y", "node-2", r.run + 1, b"\x02"), Reason.REQUEST_DECIDED)
    keyed.rejects(PostRefresh("z", "ops", r.run, b"\x02"), Reason.UNAUTHORIZED)


def test_a_report_starts_a_new_run_and_too_many_fail_the_refresh(keyed: World):
    from node.state.repairs import MAX_FAILED_RUNS

    r, _ = start(keyed)
    for _ in range(MAX_FAILED_RUNS):
        run = r.run
        keyed.ok(ReportRefresh(f"rfail-{run}", "node-2", run, (), "restarted"))
    assert r.state is RepairState.FAILED
    assert keyed.m.state.keys["k1"].versions[1].generation == 0


def test_one_refresh_at_a_time_and_not_during_a_repair(keyed: World):
    from node.state import RepairMember

    start(keyed)
    keyed.rejects(StartRefresh("again", "ops"), Reason.LIMIT_REACHED)
    keyed.rejects(RepairMember("rm", "ops", "node-2"), Reason.LIMIT_REACHED)


def test_a_client_or_approver_cannot_start_one_but_a_member_can(keyed: World):
    keyed.rejects(StartRefresh("c", "app"), Reason.UNAUTHORIZED)
    keyed.rejects(StartRefresh("a", "alice"), Reason.UNAUTHORIZED)
    start(keyed, "node-1")


def test_a_second_refresh_continues_the_run_numbers(keyed: World):
    r, _ = start(keyed)
    run_through(keyed, r)
    r2, _ = start(keyed)
    assert r2.run == r.run + 1 and len(keyed.m.state.refreshes) == 1
    run_through(keyed, r2, rows=tuple((bytes([9]) * 32,) * 3 for _ in r2.batch_items()))
    assert keyed.m.state.keys["k1"].versions[1].generation == 2


def test_snapshot_roundtrip_mid_refresh(keyed: World):
    r, _ = start(keyed)
    keyed.ok(post(keyed, "node-1", r.run))
    assert decode_state(keyed.snap()) == keyed.m.state


def test_batches_fit_in_one_command():
    from node.state.commands import MAX_REPAIR_POST_BYTES

    for n in range(2, 16):
        for t in range(2, n + 1):
            b = refresh_batch(t, n)
            assert 64 + b * (t * 34 + 3) <= MAX_REPAIR_POST_BYTES
            assert b * (n * 34 + 3) <= 60 * 1024
