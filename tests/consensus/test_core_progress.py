"""Follower progress: probe / replicate / snapshot states and the inflight window."""

from __future__ import annotations

import pytest

from consensus.progress import Inflights, Progress, ProgressState


def prog(match=0, next_=1, cap=3):
    return Progress(match=match, next=next_, inflights=Inflights(cap))


def test_inflights_window():
    w = Inflights(3)
    for i in (5, 7, 9):
        w.add(i)
    assert w.full()
    with pytest.raises(OverflowError):
        w.add(11)
    w.free_le(7)
    assert len(w) == 1 and not w.full()
    w.free_first_one()
    assert len(w) == 0
    with pytest.raises(ValueError):
        Inflights(0)


def test_probe_sends_one_at_a_time():
    p = prog(match=3, next_=4)
    assert not p.is_paused()
    p.sent_entries(6)
    assert p.is_paused() and p.next == 4  # probing does not move next optimistically
    assert p.maybe_update(6) and not p.is_paused()
    assert (p.match, p.next) == (6, 7)


def test_replicate_is_optimistic_and_bounded():
    p = prog(match=3, next_=4, cap=2)
    p.become_replicate()
    p.sent_entries(5)
    p.sent_entries(8)
    assert p.next == 9 and p.is_paused()
    p.maybe_update(5)
    p.inflights.free_le(5)
    assert not p.is_paused()


def test_rejection_in_replicate_falls_back_to_match():
    p = prog(match=3, next_=10)
    p.become_replicate()
    p.next = 10
    assert not p.maybe_decr_to(2, 2)  # stale: below match
    assert p.maybe_decr_to(9, 5) and p.next == 4


def test_rejection_in_probe_uses_the_hint():
    p = prog(match=0, next_=10)
    assert not p.maybe_decr_to(7, 3)  # not the probe we sent (next-1 == 9)
    assert p.maybe_decr_to(9, 3) and p.next == 4
    assert p.maybe_decr_to(3, 8) and p.next == 3  # hint beyond rejected: step back one


def test_rejection_at_match_does_not_ping_pong():
    p = prog(match=5, next_=6)
    assert not p.maybe_decr_to(5, 2) and p.next == 6


def test_snapshot_state_pauses_until_acknowledged():
    p = prog(match=2, next_=3)
    p.become_snapshot(50)
    assert p.state is ProgressState.SNAPSHOT and p.is_paused()
    p.become_probe()
    assert p.state is ProgressState.PROBE and p.next == 51
