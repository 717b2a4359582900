"""Bounded terms: one hostile member cannot wedge the cluster with a huge term.

A member holds a valid certificate, so the transport delivers whatever term it
writes. Before the bound, one heartbeat at 2^63 - 1 made every node adopt it and
then campaign at 2^63, which no decoder accepts: the cluster stayed leaderless
forever, restarts included.
"""

from __future__ import annotations

import pytest

from consensus.codec import decode_message, encode_message
from consensus.core import MAX_TERM, MAX_TERM_STEP, Role, TermOutOfRange
from consensus.memstore import MemoryStorage
from consensus.messages import HardState, Message, MsgType
from consensus.sim.harness import Harness

U63 = (1 << 63) - 1


def heartbeat(to: int, frm: int, term: int) -> Message:
    return Message(MsgType.HEARTBEAT, to=to, frm=frm, term=term)


def test_a_heartbeat_at_the_wire_limit_is_refused_and_the_cluster_still_works():
    h = Harness([1, 2, 3])
    h.elect(1)
    before = {i: h[i].term for i in h.ids}
    for victim in (1, 2):
        with pytest.raises(TermOutOfRange):
            h[victim].step(heartbeat(victim, 3, U63))
    assert {i: h[i].term for i in h.ids} == before
    assert h[1].role is Role.LEADER
    # The cluster keeps committing and electing, and every message it sends encodes.
    sent: list[Message] = []
    h.drop = lambda m: sent.append(m) is not None
    h.propose(b"after")
    assert all(h.data(i) == [b"after"] for i in h.ids)
    h[1].transfer_leadership(2)
    h.stabilize()
    assert h[2].role is Role.LEADER
    assert sent and all(decode_message(encode_message(m)) == m for m in sent)


def test_a_term_beyond_max_term_is_refused_even_when_vouched_for():
    h = Harness([1, 2, 3])
    for frm in (2, 3):
        with pytest.raises(TermOutOfRange):
            h[1].step(heartbeat(1, frm, MAX_TERM + 1))
    assert h[1].term == 1


def test_one_member_moves_a_term_by_at_most_the_step():
    h = Harness([1, 2, 3])
    t = h[1].term
    with pytest.raises(TermOutOfRange):
        h[1].step(heartbeat(1, 3, t + MAX_TERM_STEP + 1))
    assert h[1].term == t
    h[1].step(heartbeat(1, 3, t + MAX_TERM_STEP))  # exactly the step: accepted
    assert h[1].term == t + MAX_TERM_STEP and h[1].lead == 3
    # Repeating the far claim alone never gets it accepted.
    for _ in range(5):
        with pytest.raises(TermOutOfRange):
            h[1].step(heartbeat(1, 3, h[1].term + 10 * MAX_TERM_STEP))


def test_a_long_jump_is_taken_once_a_second_voter_vouches_for_it():
    h = Harness([1, 2, 3])
    far = 1 + 3 * MAX_TERM_STEP
    with pytest.raises(TermOutOfRange):
        h[1].step(heartbeat(1, 2, far))
    # A hostile member claims far more; that does not vouch for its own claim.
    with pytest.raises(TermOutOfRange):
        h[1].step(heartbeat(1, 3, far * 1000))
    with pytest.raises(TermOutOfRange):
        h[1].step(heartbeat(1, 3, far * 1000))
    # Two voters claimed at least `far`: the honest leader's heartbeat is taken.
    h[1].step(heartbeat(1, 2, far))
    assert h[1].term == far and h[1].lead == 2


def test_a_node_that_missed_many_elections_rejoins():
    """Nodes 1 and 2 moved MAX_TERM_STEP * 4 terms on while node 3 was away; node 3
    refuses the leader's heartbeats alone, campaigns, hears the term from both
    voters in their rejections, and follows the leader again."""
    far = 1 + 4 * MAX_TERM_STEP
    h = Harness([1, 2, 3])
    for i in (1, 2):
        st = MemoryStorage.bootstrap([1, 2, 3])
        st.save(HardState(term=far, vote=0, commit=st.initial_state()[0].commit), ())
        h.start(i, st)
    h.crash(3)
    h.elect(1)
    h.propose(b"while away")
    h.start(3, h.storages[3])
    refused = 0
    for _ in range(200):
        h.process_all()
        for m in h.take():
            if m.to in h.down:
                continue
            try:
                h[m.to].step(m)
            except TermOutOfRange:
                refused += 1
            h.process(m.to)
        if h.data(3) == [b"while away"]:
            break
        h.tick(3)
        h.tick(1)
    assert refused > 0
    assert h[3].term >= far and h.data(3) == [b"while away"]


def test_a_node_at_max_term_does_not_campaign_past_it():
    st = MemoryStorage.bootstrap([1, 2, 3])
    st.save(HardState(term=MAX_TERM, vote=0, commit=st.initial_state()[0].commit), ())
    h = Harness([1, 2, 3], pre_vote=False)
    h.start(1, st)
    h[1].campaign()
    assert h[1].term == MAX_TERM and h[1].role is Role.FOLLOWER
    assert not [m for m in h.queue if m.frm == 1 and m.type is MsgType.VOTE]
