"""The Raft paper (Ongaro & Ousterhout, 2014), section by section, against RaftCore.

Pre-vote is switched off here so elections look exactly like §5.2; the
extensions (pre-vote, check-quorum, ReadIndex, transfer, membership,
snapshots) have their own file, test_core_features.py.
"""

from __future__ import annotations

import pytest

from consensus.core import Config, NotLeader, RaftCore, Role
from consensus.memstore import MemoryStorage
from consensus.messages import Entry, HardState, Message, MsgType
from consensus.sim.harness import Harness


def drain(core, storage):
    while core.has_ready():
        rd = core.ready()
        storage.save(rd.hard_state, rd.entries, rd.snapshot)
        core.advance(rd)


def cluster(n=3, **kw):
    kw.setdefault("pre_vote", False)
    return Harness(range(1, n + 1), **kw)


# --- §5.1 Raft basics: terms ------------------------------------------------------------
def test_5_1_higher_term_turns_anyone_into_a_follower_of_that_term():
    h = cluster()
    h.elect(1)
    h[1].step(Message(MsgType.APPEND, to=1, frm=2, term=9, index=0, log_term=0))
    assert h[1].role is Role.FOLLOWER and h[1].term == 9 and h[1].lead == 2


def test_5_1_stale_term_requests_are_rejected_with_our_term():
    h = cluster()
    h.elect(1)
    term = h[2].term
    h.take()
    h[2].step(Message(MsgType.APPEND, to=2, frm=3, term=term - 1, index=0, log_term=0))
    h.process(2)
    (resp,) = h.take(lambda m: m.frm == 2)
    assert resp.type is MsgType.APPEND_RESP and resp.term == term
    assert h[2].lead == 1  # the stale leader did not displace the real one


# --- §5.2 Leader election ----------------------------------------------------------------
def test_5_2_follower_times_out_and_campaigns_for_itself():
    h = cluster()
    c = h[1]
    start = c.term
    h.tick(1, 2 * 10)  # at most 2 * election_tick
    assert c.role is Role.CANDIDATE and c.term == start + 1 and c.vote == 1
    votes = h.take(lambda m: m.type is MsgType.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all(m.term == start + 1 for m in votes)
    assert h.storages[1].hard_state().vote == 1  # the vote is persisted before it is sent


def test_5_2_randomized_timeouts_lie_in_one_to_two_election_timeouts():
    timeouts = set()
    for seed in range(30):
        c = RaftCore(Config(id=1, seed=seed, pre_vote=False), MemoryStorage.bootstrap([1, 2, 3]))
        assert 10 <= c.randomized_election_timeout < 20
        timeouts.add(c.randomized_election_timeout)
    assert len(timeouts) > 3


def test_5_2_candidate_with_majority_becomes_leader_and_asserts_itself():
    h = cluster(5)
    h[3].campaign()
    h.deliver()  # votes
    h.deliver()  # responses
    assert h[3].role is Role.LEADER
    appends = h.take(lambda m: m.type is MsgType.APPEND)
    assert sorted(m.to for m in appends) == [1, 2, 4, 5]
    assert all(m.entries[-1].data == b"" for m in appends)  # the no-op of §8


def test_5_2_each_server_votes_at_most_once_per_term():
    h = cluster()
    h[1].campaign()
    h[2].campaign()
    # Both are candidates of the same term; node 3 grants only the first request it sees.
    h.process_all()
    reqs = h.take(lambda m: m.type is MsgType.VOTE and m.to == 3)
    assert {m.frm for m in reqs} == {1, 2} and reqs[0].term == reqs[1].term
    for m in reqs:
        h[3].step(m)
    h.process(3)
    resps = h.take(lambda m: m.frm == 3)
    assert [m.reject for m in resps] == [False, True]


def test_5_2_candidate_steps_down_on_append_from_a_leader_of_its_term():
    h = cluster()
    h[2].campaign()
    h.process_all()
    h.take()
    term = h[2].term
    h[2].step(Message(MsgType.APPEND, to=2, frm=1, term=term, index=0, log_term=0))
    assert h[2].role is Role.FOLLOWER and h[2].lead == 1


def test_5_2_split_vote_leads_to_a_new_election_in_a_later_term():
    h = cluster(4)
    h[1].campaign()
    h[2].campaign()
    h.deliver(lambda m: m.type is MsgType.VOTE and (m.frm, m.to) in {(1, 3), (2, 4)})
    h.stabilize()
    assert h.leader() == 0  # 2 votes each out of 4: nobody wins
    term = h[1].term
    h.tick_all(25)
    assert h.leader() != 0 and h[h.leader()].term > term


# --- §5.3 Log replication ----------------------------------------------------------------
def test_5_3_leader_commits_once_a_majority_stores_the_entry():
    h = cluster()
    h.elect(1)
    h.crash(3)
    h[1].propose(b"x")
    h.stabilize()
    assert h[1].log.committed == h[1].log.last_index()
    # The leader announces the new commit index at once; the crashed node has nothing.
    assert h.data(1) == [b"x"] and h.data(2) == [b"x"] and h.data(3) == []
    h.start(3)
    h.tick_all(3)
    assert h.data(3) == [b"x"]


def test_5_3_no_commit_without_a_majority():
    h = cluster()
    h.elect(1)
    h.crash(2)
    h.crash(3)
    h[1].propose(b"x")
    h.stabilize()
    assert h.data(1) == []


def test_5_3_follower_refuses_append_whose_previous_entry_does_not_match():
    h = cluster()
    h.elect(1)
    t = h[2].term
    h.take()
    h[2].step(Message(MsgType.APPEND, to=2, frm=1, term=t, index=50, log_term=t, commit=0))
    h.process(2)
    (resp,) = h.take()
    assert resp.reject and resp.index == 50 and resp.reject_hint == h[2].log.last_index()


def test_5_3_leader_repairs_a_follower_with_missing_and_extra_entries():
    h = cluster()
    h.elect(1)
    h.propose(b"a")
    # Node 3 misses everything while 1 leads; then node 2 leads while 1 is cut off.
    h.isolate(3)
    for d in (b"b", b"c", b"d"):
        h.propose(d)
    h.heal()
    h.isolate(1)
    h[1].propose(b"lost-1")  # an uncommitted suffix that must be overwritten
    h[1].propose(b"lost-2")
    h.process(1)
    h.tick_all(25)  # 3 lacks b..d, so only 2 can win (§5.4.1)
    assert h.leader() == 2
    h.propose(b"e")
    h.heal()
    h.tick_all(30)
    h.propose(b"f")
    h.tick_all(3)
    for nid in (1, 2, 3):
        assert h.data(nid) == [b"a", b"b", b"c", b"d", b"e", b"f"], nid
    logs = [h.storages[n].entries(1, h.storages[n].last_index() + 1) for n in (1, 2, 3)]
    assert logs[0] == logs[1] == logs[2]


def test_5_3_duplicated_appends_are_idempotent():
    h = cluster()
    h.elect(1)
    h.process_all()
    h[1].propose(b"x")
    h.process(1)
    appends = h.take(lambda m: m.type is MsgType.APPEND and m.to == 2)
    for _ in range(3):
        for m in appends:
            h[2].step(m)
    h.process(2)
    assert h[2].log.last_index() == h[1].log.last_index()
    assert [e.data for e in h[2].log.slice(1, h[2].log.last_index() + 1)][-1] == b"x"


# --- §5.4.1 Election restriction ---------------------------------------------------------
@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [(5, 1, False), (5, 3, True), (3, 2, False), (4, 2, True), (9, 2, True)],
)
def test_5_4_1_vote_only_for_a_log_at_least_as_up_to_date(cand_index, cand_term, granted):
    st = MemoryStorage()
    st.save(HardState(2, 0, 0), [Entry(1, 1), Entry(1, 2), Entry(2, 3), Entry(2, 4)])
    c = RaftCore(Config(id=1, pre_vote=False), st)
    c.step(Message(MsgType.VOTE, to=1, frm=2, term=5, index=cand_index, log_term=cand_term))
    (resp,) = c.ready().messages
    assert resp.type is MsgType.VOTE_RESP and resp.reject is not granted


# --- §5.4.2 Committing entries from previous terms -----------------------------------------
def test_5_4_2_leader_never_commits_an_old_term_entry_by_counting_replicas():
    st = MemoryStorage.bootstrap([1, 2, 3])
    st.save(HardState(2, 0, 3), [Entry(2, 4, data=b"old")])
    c = RaftCore(Config(id=1, pre_vote=False), st)
    drain(c, st)  # apply the bootstrap membership
    c.campaign()
    for voter in (2, 3):
        c.step(Message(MsgType.VOTE_RESP, to=1, frm=voter, term=3))
    assert c.role is Role.LEADER and c.log.last_index() == 5  # no-op of term 3 at 5
    drain(c, st)
    # A majority now stores the term-2 entry at 4 ... but it must not commit yet.
    c.step(Message(MsgType.APPEND_RESP, to=1, frm=2, term=3, index=4))
    assert c.log.committed == 3
    # Once the term-3 entry is on a majority, both commit (Figure 8's fix).
    c.step(Message(MsgType.APPEND_RESP, to=1, frm=2, term=3, index=5))
    assert c.log.committed == 5


# --- §5.5 / §5.6 Crashes, restarts, and safety across them ---------------------------------
def test_5_5_restarted_node_keeps_term_vote_and_log():
    h = cluster()
    h.elect(1)
    h.propose(b"x")
    before = (h[2].term, h[2].vote, h[2].log.last_index())
    h.crash(2)
    c = h.start(2)
    assert (c.term, c.vote, c.log.last_index()) == before
    assert h.data(2) == [b"x"]  # committed entries are re-delivered after a restart


def test_5_5_proposals_on_a_follower_are_refused_with_the_leader_hint():
    h = cluster()
    h.elect(2)
    with pytest.raises(NotLeader) as exc:
        h[1].propose(b"x")
    assert exc.value.leader_id == 2


def test_5_3_rejection_hint_skips_a_whole_divergent_term():
    """§5.3's closing optimisation: back up a term per round trip, not an entry."""
    h = cluster(check_quorum=True)
    h.elect(1)
    h.isolate(1)
    for i in range(20):
        h[1].propose(b"stale-%d" % i)  # never committed: 1 is cut off
    h.process(1)
    h.tick_all(25)
    assert h.leader() in (2, 3)
    for i in range(20):
        h.propose(b"new-%d" % i)
    # A fresh leader (new term) starts probing 1 at the end of its log.
    lead = h.leader()
    other = 5 - lead
    h[lead].transfer_leadership(other)
    h.stabilize()
    assert h.leader() == other
    h.heal()
    rejects = []
    h.drop = lambda m: rejects.append(m) if m.reject and m.frm == 1 else False
    h.tick_all(5)
    assert h.data(1)[-20:] == [b"new-%d" % i for i in range(20)]
    assert 1 <= len(rejects) <= 3


def figure_8(h):
    """Replay the paper's Figure 8 on five nodes; returns each node's applied log."""
    h.elect(1)  # (a) S1 leads term 2 ...
    for peer in (3, 4, 5):
        h.cut |= {(1, peer), (peer, 1)}
    h[1].propose(b"from term 2")  # ... and gets its entry at 7 only onto S2
    h.stabilize()
    assert h[2].log.last_index() == 7 and h[3].log.last_index() == 6
    h.crash(1)
    h.heal()
    h[5].campaign()  # (b) S5 wins term 3 with S3, S4 and its own vote ...
    h.deliver()
    h.deliver()
    h.isolate(5)  # its appends are still queued: they will be dropped
    assert h[5].role is Role.LEADER and h[5].log.last_term() == h[5].term
    h.stabilize()
    h.crash(5)  # ... and crashes before its entry at 7 leaves it
    h.heal()
    h.start(1)
    # S1's own no-op (index 8) must not land anywhere it could be accepted.
    h.drop = lambda m: any(e.index == 8 for e in m.entries) and h[m.to].log.match_term(7, 2)
    h[1].campaign()  # term 3 is taken (all voted for S5) ...
    h.stabilize()
    h.elect(1)  # (c) ... so S1 leads term 4 and spreads the term-2 entry to a majority
    assert h[1].term == 4
    h.stabilize()
    assert sum(h[n].log.match_term(7, 2) for n in (1, 2, 3, 4)) >= 3
    committed_at_c = h[1].log.committed
    h.crash(1)  # (d) S1 crashes; S5 comes back and wins term 5 ...
    h.drop = None
    h.start(5)
    h[5].campaign()  # may need a second try, like S1 above
    h.stabilize()
    if h[5].role is not Role.LEADER:
        h.elect(5)
    h.tick_all(3)  # ... overwriting index 7 everywhere with its own entry
    return committed_at_c


def test_5_4_2_figure_8_an_old_term_entry_on_a_majority_is_not_committed():
    h = cluster(5, check_quorum=False, max_size_per_msg=1)
    committed_at_c = figure_8(h)
    # State machine safety: no two nodes applied different entries at one index.
    seen = {}
    for n in h.cores:
        for e in h.applied[n]:
            assert seen.setdefault(e.index, e) == e, f"index {e.index} differs on node {n}"
    assert committed_at_c < 7  # the rule: never commit term 2's entry by counting in term 4
    at7 = {n: [e for e in h.applied[n] if e.index == 7] for n in (2, 3, 4, 5)}
    assert all(entries and entries[-1].data == b"" for entries in at7.values())
    assert all(b"from term 2" not in h.data(n) for n in h.cores)
