"""Majority arithmetic: commit index and vote tallies for one voter set.

Kept apart from the core so it can be checked against a dumb reference
implementation (tests/consensus/test_quorum.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from enum import IntEnum


class VoteResult(IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority(n: int) -> int:
    """Smallest number of members that forms a majority of `n`."""
    return n // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Largest index held by a majority of `voters` (missing voters count as 0).

    An empty voter set commits nothing (0): the core never has one while leading.
    """
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(acked)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    missing = sum(1 for v in voters if v not in votes)
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if granted + missing >= q:
        return VoteResult.PENDING
    return VoteResult.LOST


def has_quorum(voters: Collection[int], ids: Iterable[int]) -> bool:
    """True if `ids` contains a majority of `voters`."""
    present = set(ids)
    return sum(1 for v in voters if v in present) >= majority(len(voters)) if voters else False
