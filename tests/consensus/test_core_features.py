"""Raft thesis extensions: pre-vote, check-quorum, ReadIndex, leadership transfer,
membership changes with learners, snapshots, and the Ready/advance contract."""

from __future__ import annotations

import pytest

from consensus import core as core_module
from consensus.core import (
    Config,
    InvalidMessage,
    NotLeader,
    ProposalDropped,
    RaftCore,
    ReadState,
    Role,
)
from consensus.memstore import MemoryStorage
from consensus.messages import ConfChange, ConfChangeType, Entry, Message, MsgType
from consensus.progress import ProgressState
from consensus.sim.harness import Harness


def cluster(n=3, **kw):
    return Harness(range(1, n + 1), **kw)


# --- Pre-vote (thesis §9.6) ----------------------------------------------------------------
def test_prevote_partitioned_node_does_not_inflate_its_term():
    h = cluster()
    h.elect(1)
    term = h[3].term
    h.isolate(3)
    h.tick_all(100)
    assert h[3].term == term and h[3].role is Role.PRE_CANDIDATE


def test_prevote_rejoining_node_does_not_disrupt_the_leader():
    h = cluster()
    h.elect(1)
    h.isolate(3)
    h.tick_all(100)
    h.heal()
    h.tick_all(30)
    assert h.leader() == 1 and h[1].term == h[3].term and h[3].lead == 1


def test_without_prevote_a_rejoining_node_forces_a_new_term():
    h = cluster(pre_vote=False, check_quorum=False)
    h.elect(1)
    term = h[1].term
    h.isolate(3)
    h.tick_all(60)
    assert h[3].term > term + 1  # it kept campaigning in ever higher terms
    h.heal()
    h.tick_all(40)
    assert h[h.leader()].term > term


# --- Check-quorum and leases (§6.2) ----------------------------------------------------------
def test_check_quorum_isolated_leader_steps_down():
    h = cluster()
    h.elect(1)
    h.isolate(1)
    h.tick_all(9)
    assert h[1].role is Role.LEADER
    h.tick_all(12)  # within two election timeouts of silence it must notice
    assert h[1].role is Role.FOLLOWER
    with pytest.raises(NotLeader):
        h[1].propose(b"x")


def test_without_check_quorum_isolated_leader_stays_leader():
    h = cluster(check_quorum=False)
    h.elect(1)
    h.isolate(1)
    h.tick_all(30)
    assert h[1].role is Role.LEADER


def test_lease_followers_ignore_vote_requests_while_the_leader_is_alive():
    h = cluster()
    h.elect(1)
    term = h[2].term
    h.take()
    h[2].step(Message(MsgType.VOTE, to=2, frm=3, term=term + 1, index=99, log_term=term))
    h.process(2)
    assert h.take() == [] and h[2].term == term and h[2].lead == 1


# --- ReadIndex (thesis §6.4) -------------------------------------------------------------------
def test_read_index_on_leader_after_a_heartbeat_quorum():
    h = cluster()
    h.elect(1)
    h.propose(b"x")
    h[1].read_index(b"r1")
    h.process(1)
    assert h.read_states[1] == []  # not before a majority confirmed leadership
    hb = [m for m in h.queue if m.type is MsgType.HEARTBEAT]
    assert {m.context for m in hb} == {b"r1"}
    h.stabilize()
    assert h.read_states[1] == [ReadState(b"r1", h[1].log.committed)]


def test_read_index_forwarded_by_a_follower():
    h = cluster()
    h.elect(1)
    h.propose(b"x")
    h[3].read_index(b"from-3")
    h.stabilize()
    assert h.read_states[3] == [ReadState(b"from-3", h[1].log.committed)]


def test_read_index_is_not_served_by_a_deposed_leader():
    h = cluster(check_quorum=False)
    h.elect(1)
    h.isolate(1)
    h.tick_all(30)  # 2 or 3 takes over; 1 still believes it leads
    assert h[1].role is Role.LEADER and h.leader() != 1
    h[1].read_index(b"stale")
    h.tick_all(5)
    assert h.read_states[1] == []


def test_read_index_waits_for_the_new_leaders_first_commit():
    h = cluster(pre_vote=False)
    h[1].campaign()
    h.deliver()  # votes
    h.deliver()  # granted: 1 leads but its no-op is not committed yet
    assert h[1].role is Role.LEADER and h[1].log.committed < h[1].log.last_index()
    h[1].read_index(b"early")
    h.process(1)
    assert h.read_states[1] == []
    h.stabilize()
    assert h.read_states[1] == [ReadState(b"early", h[1].log.last_index())]


def test_single_node_reads_immediately():
    h = cluster(1)
    h.elect(1)
    h[1].read_index(b"solo")
    h.process(1)
    assert h.read_states[1] == [ReadState(b"solo", h[1].log.committed)]


def test_read_index_without_a_known_leader_raises():
    h = cluster()
    with pytest.raises(NotLeader):
        h[2].read_index(b"r")
    with pytest.raises(ValueError):
        h[2].read_index(b"")


# --- Leadership transfer (thesis §3.10) ----------------------------------------------------------
def test_transfer_to_an_up_to_date_follower():
    h = cluster()
    h.elect(1)
    h.propose(b"x")
    h[1].transfer_leadership(3)
    h.stabilize()
    assert h.leader() == 3 and h[1].role is Role.FOLLOWER


def test_transfer_to_a_lagging_follower_catches_it_up_first():
    h = cluster()
    h.elect(1)
    h.isolate(3)
    for i in range(5):
        h.propose(b"%d" % i)
    h.heal()
    h[1].transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        h[1].propose(b"during transfer")
    h.stabilize()
    assert h.leader() == 3
    assert h.data(3)[-5:] == [b"0", b"1", b"2", b"3", b"4"]


def test_transfer_is_abandoned_after_an_election_timeout():
    h = cluster()
    h.elect(1)
    h.isolate(3)
    h[1].transfer_leadership(3)
    h.tick(1, 10)
    assert h[1].lead_transferee == 0
    h.propose(b"ok again")
    assert h.data(1)[-1] == b"ok again"


def test_transfer_to_a_non_voter_is_refused():
    h = cluster()
    h.elect(1)
    with pytest.raises(ValueError):
        h[1].transfer_leadership(9)
    with pytest.raises(NotLeader):
        h[2].transfer_leadership(3)


# --- Membership changes (thesis §4) ---------------------------------------------------------------
def add_node(h, nid):
    h.ids.append(nid)
    h.start(nid, MemoryStorage())


def test_add_learner_then_promote_it():
    h = cluster()
    h.elect(1)
    h.propose(b"before")
    with pytest.raises(ProposalDropped):
        h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))  # not a learner yet
    h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    add_node(h, 4)
    h.stabilize()
    h.tick_all(3)
    assert h[1].conf_state().learners == {4}
    assert h.data(4) == [b"before"]  # caught up by replaying the log from index 1
    assert h[4].role is Role.FOLLOWER and not h[4]._promotable()
    h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, 4))
    h.stabilize()
    assert h[1].conf_state().voters == {1, 2, 3, 4}
    assert h[4].conf_state().voters == {1, 2, 3, 4}


def test_one_change_at_a_time():
    h = cluster()
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))
    h.stabilize()
    h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 5))


def test_learner_does_not_count_toward_commit_or_vote():
    h = cluster()
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    add_node(h, 4)
    h.stabilize()
    h.crash(2)
    h.crash(3)
    h[1].propose(b"x")
    h.stabilize()
    assert b"x" not in h.data(1)  # leader + learner are not a majority of {1,2,3}
    h[4].campaign()
    assert h[4].role is Role.FOLLOWER


def test_remove_follower_shrinks_the_quorum():
    h = cluster()
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    h.stabilize()
    h.crash(3)
    assert h[1].conf_state().voters == {1, 2}
    h.propose(b"two of two")
    assert h.data(2)[-1] == b"two of two"


def test_removed_leader_hands_over_once_the_others_know():
    h = cluster()
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    h.stabilize()
    h.tick_all(3)
    assert h[1].role is Role.FOLLOWER and not h[1]._promotable()
    new = h.leader()
    assert new in (2, 3) and h[new].conf_state().voters == {2, 3}
    h.crash(1)
    h.propose(b"after")
    assert h.data(2)[-1] == b"after" and h.data(3)[-1] == b"after"


def test_last_voter_cannot_be_removed():
    h = cluster(1)
    h.elect(1)
    with pytest.raises(ProposalDropped):
        h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))


def test_new_leader_waits_for_its_noop_before_a_conf_change():
    h = cluster(pre_vote=False)
    h[1].campaign()
    h.deliver()
    h.deliver()
    assert h[1].role is Role.LEADER
    with pytest.raises(ProposalDropped):
        h[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))


def test_membership_survives_restart():
    h = cluster()
    h.elect(1)
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    h.stabilize()
    h.tick_all(2)
    h.crash(2)
    c = h.start(2)
    assert c.conf_state().voters == {1, 2}


# --- Snapshots (§7) -----------------------------------------------------------------------------
def test_follower_behind_the_compacted_log_gets_a_snapshot():
    h = cluster()
    h.elect(1)
    h.isolate(3)
    for i in range(10):
        h.propose(b"%d" % i)
    st = h.storages[1]
    applied = h[1].log.applied
    st.create_snapshot(applied, h[1].conf_state(), b"state@%d" % applied)
    st.compact(applied)
    h.heal()
    h.tick_all(3)
    assert h.storages[3].snapshot().data == b"state@%d" % applied
    assert h[3].log.committed >= applied
    h.propose(b"after")
    assert h.data(3) == [b"after"]  # everything before came in the snapshot
    assert h[1].status().progress[3].state is ProgressState.REPLICATE


def test_lost_snapshot_is_retried():
    h = cluster()
    h.elect(1)
    h.isolate(3)
    for i in range(5):
        h.propose(b"%d" % i)
    st = h.storages[1]
    st.create_snapshot(h[1].log.applied, h[1].conf_state(), b"s")
    st.compact(h[1].log.applied)
    h.heal()
    h.drop = lambda m: m.type is MsgType.SNAPSHOT
    h.tick_all(3)
    assert h[1].status().progress[3].state is ProgressState.SNAPSHOT
    h.drop = None
    h.tick_all(12)
    assert h.storages[3].snapshot().data == b"s"


# --- The Ready contract ---------------------------------------------------------------------------
def test_only_one_ready_outstanding():
    st = MemoryStorage.bootstrap([1])
    c = RaftCore(Config(id=1), st)
    rd = c.ready()
    assert not c.has_ready()
    with pytest.raises(RuntimeError):
        c.ready()
    st.save(rd.hard_state, rd.entries, rd.snapshot)
    c.advance(rd)
    c.campaign()
    assert c.has_ready()
    with pytest.raises(RuntimeError):
        c.advance(rd)  # a stale Ready


def test_ready_reports_hard_state_only_when_it_changed():
    h = cluster()
    h.elect(1)
    h.tick_all(3)
    c = h[2]
    c.step(Message(MsgType.HEARTBEAT, to=2, frm=1, term=c.term, commit=c.log.committed))
    rd = c.ready()
    assert rd.hard_state is None and len(rd.messages) == 1
    c.advance(rd)



def _record_readies(h):
    """Make the harness keep every Ready it processes, per node."""
    seen: dict[int, list] = {nid: [] for nid in h.cores}
    original = h.process

    def process(nid):
        core = h.cores[nid]
        real_ready = core.ready

        def ready():
            rd = real_ready()
            seen.setdefault(nid, []).append(rd)
            return rd

        core.ready = ready
        try:
            original(nid)
        finally:
            del core.ready

    h.process = process
    return seen


def test_ready_asks_to_sync_a_commit_that_passes_a_membership_change():
    h = cluster()
    h.elect(1)
    h.stabilize()
    seen = _record_readies(h)
    h.propose(b"plain")
    h.stabilize()
    h.tick_all(3)
    moved = [rd for rds in seen.values() for rd in rds if rd.hard_state is not None]
    assert moved and not any(rd.must_sync_commit for rds in seen.values() for rd in rds)

    seen.clear()
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 3))
    index = h[1].log.last_index()
    h.stabilize()
    h.tick_all(3)
    for nid in (1, 2, 3):
        commits = [rd for rd in seen[nid] if rd.hard_state is not None]
        first = next(rd for rd in commits if rd.hard_state.commit >= index)
        assert first.must_sync_commit, f"node {nid}"
        assert not any(rd.must_sync_commit for rd in commits if rd is not first)

def test_messages_wait_for_the_ready_and_entries_come_before_them():
    h = cluster()
    h.elect(1)
    c = h[1]
    c.propose(b"x")
    rd = c.ready()
    assert rd.entries and rd.entries[-1].data == b"x"
    assert any(m.type is MsgType.APPEND for m in rd.messages)
    c.advance(rd)


def test_malformed_messages_are_rejected():
    h = cluster()
    c = h[1]
    with pytest.raises(InvalidMessage):
        c.step(Message(MsgType.APPEND, to=2, frm=3, term=1))  # not for us
    with pytest.raises(InvalidMessage):
        c.step(Message(MsgType.APPEND, to=1, frm=1, term=1))  # from ourselves
    with pytest.raises(InvalidMessage):
        bad = (Entry(1, 5), Entry(1, 7))
        c.step(Message(MsgType.APPEND, to=1, frm=2, term=1, index=4, log_term=1, entries=bad))
    with pytest.raises(InvalidMessage):
        c.step(Message(MsgType.SNAPSHOT, to=1, frm=2, term=1))


def test_oversized_proposal_is_refused():
    h = Harness([1], max_entry_bytes=8)
    h.elect(1)
    with pytest.raises(ValueError):
        h[1].propose(b"123456789")


def test_pipelining_respects_the_inflight_window():
    h = cluster(max_inflight_msgs=2, max_size_per_msg=1)
    h.elect(1)
    h.tick_all(2)
    h.take()
    for i in range(6):
        h[1].propose(b"%d" % i)
    h.process(1)
    to2 = [m for m in h.queue if m.type is MsgType.APPEND and m.to == 2]
    assert len(to2) == 2 and all(len(m.entries) == 1 for m in to2)
    h.stabilize()
    assert h.data(2)[-6:] == [b"%d" % i for i in range(6)]


def test_config_validation():
    with pytest.raises(ValueError):
        Config(id=0)
    with pytest.raises(ValueError):
        Config(id=1, election_tick=1, heartbeat_tick=1)


def test_unknown_message_type_is_rejected():
    h = cluster()
    with pytest.raises(InvalidMessage):
        h[1].step(Message(99, to=1, frm=2, term=1))  # type: ignore[arg-type]


def test_pending_reads_are_bounded(monkeypatch):
    monkeypatch.setattr(core_module, "MAX_PENDING_READS", 3)
    h = cluster(check_quorum=False)
    h.elect(1)
    h.isolate(1)  # no heartbeat quorum: reads pile up unconfirmed
    for i in range(3):
        h[1].read_index(b"r%d" % i)
    with pytest.raises(ProposalDropped):
        h[1].read_index(b"one too many")
    h.heal()
    h.tick_all(2)
    assert [rs.ctx for rs in h.read_states[1]] == [b"r0", b"r1", b"r2"]


def test_removed_leader_hands_over_even_with_a_remaining_voter_down():
    h = cluster(5)
    h.elect(1)
    h.crash(5)
    h[1].propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, 1))
    h.stabilize()
    h.tick_all(3)
    assert h[1].role is Role.FOLLOWER
    h.crash(1)
    h.tick_all(30)
    new = h.leader()
    assert new in (2, 3, 4) and h[new].conf_state().voters == {2, 3, 4, 5}
    h.propose(b"still available")
    assert h.data(new)[-1] == b"still available"
