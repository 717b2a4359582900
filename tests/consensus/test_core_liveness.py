"""Two liveness bugs the 20,000-seed sweeps found in the core (2026-12-02), as
unit tests and as the seeds that found them."""

from __future__ import annotations

import pytest

from consensus.core import ProposalDropped, Role
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


def test_nothing_is_appended_after_a_leaders_own_removal():
    """Before, a leader that proposed its own removal still took proposals, so its
    log could end past the removal. When the remaining voter then missed the
    removal's commit (a crash, a lost message, a transfer at the wrong moment), its
    old membership needed the departed leader's vote, which the longer log
    refused, while the departed node, no longer a voter, never campaigned:
    no leader for ever (seeds 207665, 312077, 305295)."""
    h = Harness([1, 2])
    h.elect(1)
    removal = h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    with pytest.raises(ProposalDropped, match="leaving"):
        h[1].propose(b"after the removal")
    assert h[1].log.last_index() == removal
    # Node 2 stores the removal but never hears it committed, and crashes.
    h.process(1)
    h.deliver(lambda m: m.type is MsgType.APPEND and m.to == 2)
    h.deliver(lambda m: m.to == 1)
    h.take()
    h.crash(2)
    for _ in range(30):  # alone, node 1 steps down (check-quorum)
        h.tick(1)
        h.take()
    h.start(2, h.storages[2])
    assert h[2].log.committed < removal  # it does not know it is alone
    for _ in range(300):
        for n in (1, 2):
            h.tick(n)
        h.deliver()
        if h[2].role is Role.LEADER:
            break
    assert h[2].role is Role.LEADER  # node 1's log is no longer than its own: it votes


def test_the_seeds_that_found_them_pass():
    for seed, mode in (
        (216407, "planned"),
        (216407, "conservative"),
        (207665, "planned-torn"),
        (312077, "planned"),
        (305295, "planned-torn"),
    ):
        res = simulation(seed, mode).run()
        assert res.ok, (seed, mode, res.violations)
