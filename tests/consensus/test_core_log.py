"""RaftLog (storage + unstable tail) against a plain list, under random operations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.log import RaftInvariantError, RaftLog
from consensus.memstore import MemoryStorage
from consensus.messages import ConfState, Entry, HardState
from consensus.storage import Compacted, Unavailable

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 4), st.integers(0, 2)),
        st.tuples(st.just("persist")),
        st.tuples(st.just("commit"), st.integers(0, 30)),
        st.tuples(st.just("compact"), st.integers(0, 30)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_log_matches_a_list_model(script):
    storage = MemoryStorage()
    log = RaftLog(storage)
    ref: list[Entry] = []  # ref[i] is the entry at index i+1
    term = 1
    for op in script:
        if op[0] == "append":
            _, back, n, bump = op
            after = max(log.committed + 1, len(ref) + 1 - back)
            term += bump
            new = [Entry(term, after + k, data=b"%d" % (after + k)) for k in range(n)]
            log.append(new)
            ref = ref[: after - 1] + new
        elif op[0] == "persist":
            if log.unstable:
                last = log.unstable[-1]
                storage.save(HardState(term, 0, log.committed), list(log.unstable))
                log.stable_to(last.index, last.term)
        elif op[0] == "commit":
            target = min(op[1], storage.last_index(), len(ref))
            log.commit_to(max(target, log.committed))
            storage.save(HardState(term, 0, log.committed), [])
        else:
            # Like a runner: only applied (so committed and persisted) entries.
            index = min(op[1], log.committed, log.offset - 1)
            if index > storage.snapshot().meta.index:
                storage.create_snapshot(index, ConfState(), b"")
                storage.compact(index)
        # --- the log agrees with the model everywhere it still holds entries ------
        assert log.last_index() == len(ref)
        first = log.first_index()
        assert log.term(first - 1) == (ref[first - 2].term if first >= 2 else 0)
        assert log.slice(first, len(ref) + 1) == ref[first - 1 :]
        for i in range(first, len(ref) + 1):
            assert log.term(i) == ref[i - 1].term
        with pytest.raises(Unavailable):
            log.term(len(ref) + 1)
        if first > 2:
            with pytest.raises(Compacted):
                log.term(first - 2)


def test_committed_entries_cannot_be_overwritten():
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1), Entry(1, 2)])
    log.commit_to(2)
    with pytest.raises(RaftInvariantError):
        log.append([Entry(2, 2)])
    with pytest.raises(RaftInvariantError):
        log.commit_to(3)


def test_stable_to_ignores_a_replaced_entry():
    storage = MemoryStorage()
    log = RaftLog(storage)
    log.append([Entry(1, 1), Entry(1, 2)])
    handed_out = list(log.unstable)
    log.append([Entry(2, 2)])  # truncated while the runner was persisting
    storage.save(None, handed_out)
    log.stable_to(2, 1)  # stale: the entry at 2 now has term 2
    assert log.unstable == [Entry(1, 1), Entry(2, 2)]  # still to be persisted
    assert log.term(2) == 2


def test_find_conflict_by_term():
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1), Entry(1, 2), Entry(3, 3), Entry(3, 4), Entry(5, 5)])
    assert log.find_conflict_by_term(5, 4) == (4, 3)
    assert log.find_conflict_by_term(5, 2) == (2, 1)
    assert log.find_conflict_by_term(9, 5) == (5, 5)
    assert log.find_conflict_by_term(3, 0) == (0, 0)
