"""The checker itself, on hand-written histories (Herlihy & Wing's examples, in kv form)."""

from __future__ import annotations

import itertools
import random

import pytest

from consensus.sim.linearizability import KVModel, Operation, check_history, kv_key


def op(client, inp, out, call, ret):
    return Operation(client, inp, out, call, ret)


def ok(ops):
    return check_history(ops, KVModel(), kv_key).ok


def test_sequential_history_is_linearizable():
    assert ok([
        op(1, ("put", "x", 1), True, 0, 1),
        op(1, ("get", "x"), 1, 2, 3),
        op(1, ("cas", "x", 1, 2), True, 4, 5),
        op(1, ("get", "x"), 2, 6, 7),
    ])


def test_stale_read_after_completed_write_is_not_linearizable():
    assert not ok([
        op(1, ("put", "x", 1), True, 0, 1),
        op(2, ("get", "x"), None, 2, 3),
    ])


def test_concurrent_read_may_see_old_or_new_value():
    for seen in (None, 1):
        assert ok([op(1, ("put", "x", 1), True, 0, 10), op(2, ("get", "x"), seen, 1, 2)])
    assert not ok([op(1, ("put", "x", 1), True, 0, 10), op(2, ("get", "x"), 7, 1, 2)])


def test_reads_cannot_go_back_in_time():
    # Two sequential reads during one long write: new value then old value is impossible.
    assert not ok([
        op(1, ("put", "x", 1), True, 0, 100),
        op(2, ("get", "x"), 1, 1, 2),
        op(2, ("get", "x"), None, 3, 4),
    ])
    assert ok([
        op(1, ("put", "x", 1), True, 0, 100),
        op(2, ("get", "x"), None, 1, 2),
        op(2, ("get", "x"), 1, 3, 4),
    ])


def test_two_successful_cas_from_same_value_is_not_linearizable():
    assert not ok([
        op(1, ("put", "x", 0), True, 0, 1),
        op(2, ("cas", "x", 0, 1), True, 2, 10),
        op(3, ("cas", "x", 0, 2), True, 3, 11),
    ])
    assert ok([
        op(1, ("put", "x", 0), True, 0, 1),
        op(2, ("cas", "x", 0, 1), True, 2, 10),
        op(3, ("cas", "x", 0, 2), False, 3, 11),
    ])


def test_pending_write_may_or_may_not_take_effect():
    base = [op(1, ("put", "x", 1), None, 0, None)]
    assert ok([*base, op(2, ("get", "x"), 1, 5, 6)])
    assert ok([*base, op(2, ("get", "x"), None, 5, 6)])
    # ...but once seen it cannot be unseen.
    assert not ok([*base, op(2, ("get", "x"), 1, 5, 6), op(2, ("get", "x"), None, 7, 8)])


def test_keys_are_independent_but_each_is_checked():
    good_y = [op(1, ("put", "y", 5), True, 0, 1), op(1, ("get", "y"), 5, 2, 3)]
    bad_x = [op(2, ("put", "x", 1), True, 0, 1), op(2, ("get", "x"), 2, 2, 3)]
    res = check_history(good_y + bad_x, KVModel(), kv_key)
    assert not res.ok and res.key == "x"
    assert check_history(good_y, KVModel(), kv_key).ok


def test_return_before_call_is_rejected():
    with pytest.raises(ValueError):
        ok([op(1, ("get", "x"), None, 5, 4)])


def _brute_force(ops):
    """Reference: try every permutation consistent with real time."""
    n = len(ops)
    for perm in itertools.permutations(range(n)):
        pos = {o: i for i, o in enumerate(perm)}
        if any(
            ops[a].ret is not None and ops[a].ret < ops[b].call and pos[a] > pos[b]
            for a in range(n)
            for b in range(n)
        ):
            continue
        state = None
        good = True
        for i in perm:
            legal, state = KVModel().step(state, ops[i])
            if not legal:
                good = False
                break
        if good:
            return True
    return False


@pytest.mark.parametrize("seed", range(150))
def test_agrees_with_brute_force_on_random_small_histories(seed):
    rng = random.Random(seed)
    ops = []
    t = 0
    for client in range(rng.randint(1, 3)):
        t = rng.randint(0, 3)
        for _ in range(rng.randint(1, 2)):
            call = t
            ret = call + rng.randint(0, 6)
            kind = rng.choice(["put", "get", "cas"])
            if kind == "put":
                inp, out = ("put", "k", rng.randint(0, 2)), True
            elif kind == "get":
                inp, out = ("get", "k"), rng.choice([None, 0, 1, 2])
            else:
                inp = ("cas", "k", rng.choice([None, 0, 1]), rng.randint(0, 2))
                out = rng.random() < 0.5
            pending = rng.random() < 0.15
            ops.append(op(client, inp, None if pending else out, call, None if pending else ret))
            t = ret + 1
    assert check_history(ops, KVModel(), kv_key).ok == _brute_force(ops)
