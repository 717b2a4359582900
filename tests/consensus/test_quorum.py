"""quorum.py against a dumb reference: enumerate every subset of voters."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from consensus.quorum import VoteResult, committed_index, has_quorum, majority, vote_result


def ref_committed(voters, match):
    # The largest index i such that some majority all have match >= i.
    best = 0
    for size in range(majority(len(voters)), len(voters) + 1):
        for group in itertools.combinations(sorted(voters), size):
            best = max(best, min(match.get(v, 0) for v in group))
    return best


def ref_vote(voters, votes):
    q = majority(len(voters))
    yes = [v for v in voters if votes.get(v) is True]
    undecided = [v for v in voters if v not in votes]
    if len(yes) >= q:
        return VoteResult.WON
    if len(yes) + len(undecided) >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


voter_sets = st.sets(st.integers(1, 9), min_size=1, max_size=7)


@given(voter_sets, st.dictionaries(st.integers(1, 12), st.integers(0, 20)))
def test_committed_index_matches_reference(voters, match):
    assert committed_index(voters, match) == ref_committed(voters, match)


@given(voter_sets, st.dictionaries(st.integers(1, 12), st.booleans()))
def test_vote_result_matches_reference(voters, votes):
    assert vote_result(voters, votes) == ref_vote(voters, votes)


@given(voter_sets, st.sets(st.integers(1, 12)))
def test_has_quorum_matches_counting(voters, ids):
    assert has_quorum(voters, ids) == (len(voters & ids) >= majority(len(voters)))


def test_examples():
    assert majority(1) == 1 and majority(2) == 2 and majority(3) == 2 and majority(4) == 3
    assert committed_index({1, 2, 3}, {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index({1, 2, 3, 4}, {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index({1, 2, 3}, {1: 5}) == 0  # non-voters' acks do not count
    assert committed_index({1, 2, 3}, {1: 5, 7: 9, 8: 9}) == 0
    assert vote_result({1, 2, 3}, {1: True}) is VoteResult.PENDING
    assert vote_result({1, 2, 3}, {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert vote_result({1, 2, 3}, {1: True, 3: True}) is VoteResult.WON
    assert not has_quorum(set(), {1})
