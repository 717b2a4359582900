"""Two liveness bugs the 20,000-seed sweeps found in the core (2026-12-02), as
unit tests and as the seeds that found them."""

from __future__ import annotations

from consensus.core import Role
from consensus.messages import ConfChange, ConfChangeType, Message, MsgType
from consensus.sim.harness import Harness
from consensus.sim.modes import simulation


def test_a_stale_vote_request_is_answered_with_our_term():
    """Raft's Figure 2. Before, a VOTE below our term was dropped silently: a
    candidate behind in term whose only possible voter had an older membership
    (so never sent to it) campaigned for ever (seed 216407)."""
    h = Harness([1, 2, 3], pre_vote=False)
    h.elect(1)
    h[2].step(Message(MsgType.VOTE, to=2, frm=3, term=0, index=99, log_term=99))
    h.process(2)
    (resp,) = h.take(lambda m: m.frm == 2 and m.to == 3)
    assert resp.type is MsgType.VOTE_RESP and resp.reject and resp.term == h[2].term


def test_a_leaving_leader_hands_over_only_to_a_caught_up_heir():
    """Before, a leader that removed itself sent TIMEOUT_NOW to a voter that knew
    the removal committed but lacked entries appended after it; the leader's own
    vote then refused the heir, and the heir's old membership needed that vote
    (seed 207665)."""
    h = Harness([1, 2])
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    h[1].propose(b"after the removal")  # accepted: the removal is not applied yet
    # Node 2 acknowledges only up to the removal, so it learns the commit but
    # not the entry after it.
    removal = h[1].log.last_index() - 1
    early: list[Message] = []

    def drop(m: Message) -> bool:
        if m.type is MsgType.TIMEOUT_NOW and h[2].log.last_index() < h[1].log.last_index():
            early.append(m)  # a handover to an heir that lacks part of our log
        return m.to == 2 and m.type is MsgType.APPEND and any(
            e.index > removal for e in m.entries
        )

    h.drop = drop
    for _ in range(30):
        h.tick_all(1, settle=False)
        h.deliver()
    assert h[2].log.committed >= removal and h[2].log.last_index() == removal
    assert not early
    h.drop = None
    h.stabilize()
    h.tick_all(30)
    assert h[2].role is Role.LEADER and h.data(2)[-1] == b"after the removal"


def test_the_seeds_that_found_them_pass():
    for seed, mode in ((216407, "planned"), (216407, "conservative"), (207665, "planned-torn")):
        res = simulation(seed, mode).run()
        assert res.ok, (seed, mode, res.violations)
