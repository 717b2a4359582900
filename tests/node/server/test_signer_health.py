"""The coordinator's memory of unresponsive members (`MemberHealth`) and its use in `_rounds`.

A hung member used to stall every signature: it was always among the first candidates and
each request paid the peer timeout for it anew. The helper is pure (time is passed in);
the `_rounds` tests use a fake runtime whose peers answer or fail at once, so nothing here
depends on real time.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from node.protocols.wire import CommitRequest, CommitResponse, ShareRequest, ShareResponse
from node.server import signer as signer_mod
from node.server.signer import MemberHealth, ShareRefused, Signer

A, B, C = "node-1", "node-2", "node-3"


def health() -> MemberHealth:
    return MemberHealth(base_s=1.0, cap_s=30.0, probe_s=2.0)


# ------------------------------------------------------------ MemberHealth


def test_healthy_members_keep_the_callers_order() -> None:
    h = health()
    assert h.order([A, B, C], now=0.0) == [A, B, C]
    assert h.order([C, A, B], now=0.0) == [C, A, B]


def test_a_failed_member_moves_to_the_end_until_its_cool_down_ends() -> None:
    h = health()
    h.failed(B, now=10.0)
    assert h.order([A, B, C], now=10.5) == [A, C, B]
    assert h.order([A, B, C], now=11.0) == [A, B, C]  # 1 s later it is tried again


def test_the_coordinator_itself_also_moves_back_when_it_fails() -> None:
    h = health()
    h.failed(A, now=0.0)
    assert h.order([A, B, C], now=0.5) == [B, C, A]


def test_cool_down_doubles_per_consecutive_failure_up_to_the_cap() -> None:
    h = health()
    now, lengths = 0.0, []
    for _ in range(8):
        h.failed(B, now=now)
        lengths.append(h.until[B] - now)
        now = h.until[B]  # the next failure comes when it is tried again
    assert lengths == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_many_failures_do_not_overflow() -> None:
    h = health()
    for k in range(5000):
        h.failed(B, now=float(k))
    assert h.until[B] == 4999.0 + 30.0


def test_a_success_resets_the_cool_down() -> None:
    h = health()
    for now in (0.0, 1.0, 3.0):
        h.failed(B, now=now)
    h.succeeded(B)
    assert h.order([A, B, C], now=3.0) == [A, B, C]
    h.failed(B, now=5.0)
    assert h.until[B] == 6.0  # back to the first step


def test_calls_under_way_before_the_last_failure_do_not_lengthen_the_cool_down() -> None:
    h = health()
    # Four requests asked a hung member at about the same time; they all fail together.
    h.failed(B, now=2.0, started=0.0)
    for started in (0.01, 0.02, 0.03):
        h.failed(B, now=2.05, started=started)
    assert h.failures[B] == 1
    assert h.until[B] == 3.0
    h.failed(B, now=5.0, started=3.0)  # a call begun after the failure was known counts
    assert h.failures[B] == 2
    assert h.until[B] == 7.0


def test_cooling_members_stay_candidates_so_t_can_still_be_reached() -> None:
    h = health()
    h.failed(B, now=0.0)  # cooling until 1
    h.failed(C, now=0.0)
    h.failed(C, now=1.0)  # cooling until 3
    order = h.order([A, B, C], now=0.5)
    assert order == [A, B, C]  # all there; the cooling ones soonest-to-recover first
    assert order[:2] == [A, B]  # t = 2 is still reachable
    h.failed(A, now=0.5)  # cooling until 1.5
    assert h.order([A, B, C], now=0.6) == [B, A, C]
    assert sorted(h.order([A, B, C], now=0.6)) == [A, B, C]


def test_one_probe_at_a_time_after_a_cool_down() -> None:
    h = health()
    h.failed(B, now=0.0)
    h.probe(B, now=1.0)  # one request tries it again: held back from the others meanwhile
    assert h.order([A, B, C], now=1.5) == [A, C, B]
    h.failed(B, now=3.0, started=1.0)  # the probe failed: the next step of the cool-down
    assert h.until[B] == 5.0
    h.probe(B, now=5.0)
    h.succeeded(B)  # the probe succeeded
    assert h.order([A, B, C], now=5.1) == [A, B, C]


def test_probing_a_healthy_or_cooling_member_changes_nothing() -> None:
    h = health()
    h.probe(A, now=0.0)
    assert A not in h.until
    h.failed(B, now=0.0)
    h.probe(B, now=0.5)  # still cooling (asked because t needs it): its cool-down stays
    assert h.until[B] == 1.0


# ------------------------------------------------------------ _rounds with a fake runtime


class FakePeers:
    """Members that answer at once, except those listed as hung (they fail at once, as a
    timed-out call would, so the test does not wait)."""

    def __init__(self, hung: set[str]) -> None:
        self.hung = hung
        self.calls: list[tuple[str, str]] = []
        self.next_id = 0

    def commitments(self, count: int) -> CommitResponse:
        rows = []
        for _ in range(count):
            self.next_id += 1
            rows.append((self.next_id, bytes([1]) * 32, bytes([2]) * 32))
        return CommitResponse(tuple(rows))

    async def peer(self, member: str, path: str, body: bytes) -> bytes:
        kind = path.rsplit("/", 1)[-1]
        self.calls.append((member, kind))
        if member in self.hung:
            raise ShareRefused(f"{member} unreachable (TimeoutError)")
        if kind == "commit":
            return self.commitments(CommitRequest.decode(body).count).encode()
        return ShareResponse(int(member.removeprefix("node-")), bytes(32)).encode()


def fake_signer(monkeypatch: pytest.MonkeyPatch, hung: set[str]) -> tuple[Signer, FakePeers]:
    version = SimpleNamespace(verification_shares=[b"", b"", b""], group_public_key=b"",
                              generation=0)
    state = SimpleNamespace(
        keys={"k1": SimpleNamespace(versions={1: version})},
        members={n: SimpleNamespace(index=i, name=n) for i, n in ((1, A), (2, B), (3, C))},
        threshold=2,
    )
    machine = SimpleNamespace(state=state, holds=lambda _m, _k, _v: True)
    rt: Any = SimpleNamespace(index=1, name=A, machine=machine)
    s = Signer(rt)
    peers = FakePeers(hung)

    async def local_commit(req: CommitRequest, caller: str) -> CommitResponse:
        peers.calls.append((A, "commit"))
        return peers.commitments(req.count)

    async def local_share(req: ShareRequest, caller: str) -> ShareResponse:
        peers.calls.append((A, "share"))
        return ShareResponse(1, bytes(32))

    monkeypatch.setattr(s, "_peer", peers.peer)
    monkeypatch.setattr(s, "commit", local_commit)
    monkeypatch.setattr(s, "share", local_share)
    monkeypatch.setattr(signer_mod, "aggregate_or_blame", lambda *a, **k: b"signature")
    return s, peers


def target() -> tuple[str, int, bytes, bytes]:
    return "k1", 1, b"message", bytes(64)


async def test_a_hung_member_is_replaced_at_once_and_not_asked_by_the_next_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s, peers = fake_signer(monkeypatch, hung={B})
    assert await s._rounds("r1", 5, target, {}) == b"signature"
    assert (B, "commit") in peers.calls  # the lowest-numbered peer was tried first ...
    assert (C, "share") in peers.calls  # ... and replaced by node-3 in the same attempt
    peers.calls.clear()
    assert await s._rounds("r2", 5, target, {}) == b"signature"
    assert {m for m, _ in peers.calls} == {A, C}  # node-2 is not asked while cooling


async def test_cooling_members_are_still_asked_when_t_needs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s, peers = fake_signer(monkeypatch, hung=set())
    s.health.failed(B, now=float("inf"))  # cooling for ever, as far as this test goes
    s.health.failed(C, now=float("inf"))
    s.health.failed(A, now=float("inf"))
    assert await s._rounds("r1", 5, target, {}) == b"signature"
    assert {m for m, kind in peers.calls if kind == "share"} == {A, B}
    assert set(s.health.failures) == {C}  # the two that answered are healthy again


async def test_the_coordinator_is_preferred_when_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    s, peers = fake_signer(monkeypatch, hung=set())
    assert await s._rounds("r1", 5, target, {}) == b"signature"
    assert {m for m, _ in peers.calls} == {A, B}
