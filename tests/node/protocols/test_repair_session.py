"""Repair sessions: in-process runs (helpers and a target), and every way a party can cheat."""

from __future__ import annotations

import pickle

import msgpack
import pytest

from node.protocols.batch import CHUNK
from node.protocols.repair_session import (
    OwnPostMismatch,
    RepairCulprits,
    RepairError,
    RepairHelper,
    RepairItem,
    RepairStateError,
    RepairTarget,
    repair_context,
)
from shares import frost
from shares import group as g
from shares.repair import RepairRequest
from shares.rng import SeededRNG


def make_key(n: int, t: int, rng: SeededRNG, key_id: str = "k", version: int = 1):
    """(item, {index: share}) for a fresh dealer key."""
    secret = g.random_scalar(rng)
    shares, gpk, commitment = frost.trusted_dealer_keygen(secret, n, t, rng=rng)
    _, vshares = frost.derive_group_info(n, t, commitment)
    item = RepairItem(key_id, version, gpk, {i + 1: y for i, y in enumerate(vshares)})
    return item, dict(shares)


class Run:
    """A whole repair among in-process sessions, step by step."""

    def __init__(self, n: int = 3, t: int = 2, participant: int = 1, helpers=(2, 3),
                 items: int = 2, seed: int = 0) -> None:  # fmt: skip
        self.rng = SeededRNG(seed)
        keys = [make_key(n, t, self.rng, f"key-{k}", k + 1) for k in range(items)]
        self.items = [it for it, _ in keys]
        self.shares = [s for _, s in keys]
        self.request = RepairRequest(participant, tuple(helpers), t)
        self.context = repair_context("cluster-1", "ops:repair-1", self.request, self.items)
        self.target, self.target_post = RepairTarget.start(
            self.context, self.request, self.items, self.rng)  # fmt: skip
        self.helpers: dict[int, RepairHelper] = {}
        self.posts: dict[int, bytes] = {}
        for h in self.request.helpers:
            self.helpers[h], self.posts[h] = RepairHelper.start(
                self.context, h, self.request, self.items, [s[h] for s in self.shares],
                self.rng,
            )  # fmt: skip

    def exchange(self) -> dict[int, dict[int, bytes]]:
        return {h: s.on_posts(self.posts, self.target_post) for h, s in self.helpers.items()}

    def deliver(self, boxes: dict[int, dict[int, bytes]]) -> None:
        for sender, out in boxes.items():
            for recipient, message in out.items():
                self.helpers[recipient].on_deltas(sender, message)

    def finish(self):
        self.deliver(self.exchange())
        self.target.on_posts(self.posts, self.target_post)
        for h, s in self.helpers.items():
            assert s.complete
            self.target.on_sigma(h, s.sigma_message())
        assert self.target.complete
        return self.target.finish()


@pytest.mark.parametrize(("n", "t", "participant", "helpers", "items"), [
    (3, 2, 1, (2, 3), 1), (3, 2, 2, (1, 3), 3), (5, 3, 4, (1, 2, 5), 2),
    (5, 3, 1, (2, 3, 4, 5), 1), (4, 2, 3, (1, 2), CHUNK + 5),
])  # fmt: skip
def test_repaired_shares_are_the_lost_ones(n, t, participant, helpers, items) -> None:
    run = Run(n, t, participant, helpers, items, seed=n * 100 + participant)
    result = run.finish()
    assert [bytes(s) for s in result.shares] == [s[participant] for s in run.shares]
    assert "redacted" in repr(result) and "redacted" in repr(run.target)
    result.zeroize()
    assert all(s == bytearray(32) for s in result.shares)


def test_a_repaired_share_signs_with_the_others() -> None:
    run = Run(3, 2, 1, (2, 3), items=1, seed=7)
    share = bytes(run.finish().shares[0])
    item = run.items[0]
    kp = {1: share, 2: run.shares[0][2]}
    rng = SeededRNG(9)
    out = {i: frost.commit(kp[i], rng=rng) for i in kp}
    commitments = [(i, out[i][1].hiding, out[i][1].binding) for i in sorted(kp)]
    msg = b"signed after a repair"
    sig_shares = [frost.sign(i, kp[i], item.group_public_key, out[i][0], msg, commitments)
                  for i, _, _ in commitments]  # fmt: skip
    sig = frost.aggregate(commitments, msg, item.group_public_key, sig_shares,
                          verifying_shares=item.verification_shares)  # fmt: skip
    frost.verify_signature(msg, sig, item.group_public_key)  # raises if it does not verify


def test_no_helper_sees_another_helpers_share_or_the_repaired_one() -> None:
    """What a helper holds after the run: its own pieces and sums, none equal to a share."""
    run = Run(5, 3, 1, (2, 3, 4), items=1, seed=3)
    boxes = run.exchange()
    secrets = {bytes(run.shares[0][i]) for i in range(1, 6)}
    for out in boxes.values():
        for message in out.values():
            assert not any(s in message for s in secrets)
    run.deliver(boxes)
    for h in run.helpers.values():
        sig = h.sigma_message()
        assert not any(s in sig for s in secrets)


# ---------------------------------------------------------------- cheating helpers


def test_a_helper_with_a_wrong_share_is_refused_before_it_deals() -> None:
    run = Run(seed=1)
    with pytest.raises(RepairError, match="does not match its verification share"):
        RepairHelper.start(run.context, 2, run.request, run.items,
                           [g.random_scalar(run.rng) for _ in run.items], run.rng)  # fmt: skip


def test_a_lower_threshold_is_refused() -> None:
    rng = SeededRNG(2)
    item, shares = make_key(5, 3, rng)
    low = RepairRequest(1, (2, 3), 2)
    with pytest.raises(RepairError, match="threshold"):
        RepairTarget.start(bytes(64), low, [item], rng)
    with pytest.raises(RepairError, match="threshold"):
        RepairHelper.start(bytes(64), 2, low, [item], [shares[2]], rng)


def _forge_post(post: bytes, edit) -> bytes:
    raw = msgpack.unpackb(post, raw=False)
    edit(raw)
    return msgpack.packb(raw, use_bin_type=True)


def test_commitments_that_do_not_split_the_share_name_their_helper() -> None:
    run = Run(5, 3, 1, (2, 3, 4), items=2, seed=4)
    other = g.base_mult(g.random_scalar(run.rng))

    def bad(raw):
        raw["commitments"][1][0] = other

    run.posts[3] = _forge_post(run.posts[3], bad)
    with pytest.raises(RepairCulprits) as e:
        run.helpers[2].on_posts(run.posts, run.target_post)
    assert e.value.culprits == [3]
    with pytest.raises(RepairCulprits) as e:
        run.target.on_posts(run.posts, run.target_post)
    assert e.value.culprits == [3]
    assert run.helpers[2].state == "failed"
    with pytest.raises(RepairStateError):
        run.helpers[2].on_deltas(3, b"x")


@pytest.mark.parametrize("edit", [
    lambda raw: raw.update(v=2),
    lambda raw: raw.update(extra=1),
    lambda raw: raw["commitments"].pop(),
    lambda raw: raw["commitments"][0].pop(),
    lambda raw: raw["commitments"][0].__setitem__(0, b"\x00" * 31),
    lambda raw: raw.update(x25519=b"\x00" * 32),
])  # fmt: skip
def test_malformed_posts_name_their_helper(edit) -> None:
    run = Run(seed=5)
    run.posts[3] = _forge_post(run.posts[3], edit)
    with pytest.raises(RepairCulprits) as e:
        run.helpers[2].on_posts(run.posts, run.target_post)
    assert e.value.culprits == [3]


def test_a_copied_x25519_key_is_refused() -> None:
    run = Run(seed=6)
    mine = msgpack.unpackb(run.posts[2], raw=False)["x25519"]
    run.posts[3] = _forge_post(run.posts[3], lambda raw: raw.update(x25519=mine))
    with pytest.raises(RepairCulprits, match="copied") as e:
        run.helpers[2].on_posts(run.posts, run.target_post)
    assert e.value.culprits == [3]


def test_my_post_replaced_in_the_log_fails_the_run() -> None:
    run = Run(seed=8)
    forged = dict(run.posts)
    forged[2] = run.posts[3]
    with pytest.raises(OwnPostMismatch):
        run.helpers[2].on_posts(forged, run.target_post)
    with pytest.raises(OwnPostMismatch):
        run.target.on_posts(run.posts, run.posts[2])


def test_a_bad_target_post_names_the_participant() -> None:
    run = Run(seed=9)
    with pytest.raises(RepairCulprits) as e:
        run.helpers[2].on_posts(run.posts, b"\x81\xa1v\x01")
    assert e.value.culprits == [1]


def test_a_piece_that_does_not_match_its_commitment_names_its_dealer() -> None:
    """Helper 3 commits honestly but seals a different piece to helper 2."""
    run = Run(5, 3, 1, (2, 3, 4), items=1, seed=10)
    boxes = run.exchange()
    h3 = run.helpers[3]
    priv, pub = h3._private, h3._public  # the dealer's own keys: it can seal anything
    peer = h3._posts[2].x25519
    from node.protocols.batch import seal_scalars as _seal_scalars
    from node.protocols.repair_session import _DELTA

    forged = _seal_scalars(priv, pub, peer, [g.random_scalar(run.rng)], run.context, _DELTA,
                           3, 2, run.rng)  # fmt: skip
    with pytest.raises(RepairCulprits, match="commitment") as e:
        run.helpers[2].on_deltas(3, forged)
    assert e.value.culprits == [3]
    # the others' honest boxes still open for their recipients
    run.helpers[4].on_deltas(3, boxes[3][4])


def test_boxes_are_bound_to_their_direction_and_run() -> None:
    run = Run(5, 3, 1, (2, 3, 4), items=1, seed=11)
    boxes = run.exchange()
    with pytest.raises(RepairCulprits):  # a box for helper 4 replayed to helper 2
        run.helpers[2].on_deltas(3, boxes[3][4])
    other = Run(5, 3, 1, (2, 3, 4), items=1, seed=12)
    other_boxes = other.exchange()
    with pytest.raises(RepairCulprits):  # a box of another run
        run.helpers[3].on_deltas(2, other_boxes[2][3])


def test_a_repeated_or_unknown_sender_is_refused() -> None:
    run = Run(5, 3, 1, (2, 3, 4), items=1, seed=13)
    boxes = run.exchange()
    run.helpers[2].on_deltas(3, boxes[3][2])
    with pytest.raises(RepairCulprits, match="second"):
        run.helpers[2].on_deltas(3, boxes[3][2])
    with pytest.raises(RepairError, match="another helper"):
        run.helpers[4].on_deltas(5, boxes[3][4])
    with pytest.raises(RepairError, match="another helper"):
        run.helpers[4].on_deltas(4, boxes[3][4])


def test_a_wrong_sum_names_its_helper_and_no_share_is_returned() -> None:
    run = Run(5, 3, 1, (2, 3, 4), items=2, seed=14)
    run.deliver(run.exchange())
    run.target.on_posts(run.posts, run.target_post)
    for h in (2, 3):
        run.target.on_sigma(h, run.helpers[h].sigma_message())
    h4 = run.helpers[4]
    from node.protocols.batch import seal_scalars as _seal_scalars
    from node.protocols.repair_session import _SIGMA

    forged = _seal_scalars(h4._private, h4._public, h4._target_key,
                           [g.random_scalar(run.rng) for _ in run.items], run.context, _SIGMA,
                           4, 1, run.rng)  # fmt: skip
    with pytest.raises(RepairCulprits, match="sum") as e:
        run.target.on_sigma(4, forged)
    assert e.value.culprits == [4]
    with pytest.raises(RepairStateError):
        run.target.finish()


def test_out_of_order_calls_are_refused() -> None:
    run = Run(seed=15)
    with pytest.raises(RepairStateError):
        run.helpers[2].on_deltas(3, b"x")
    with pytest.raises(RepairStateError):
        run.helpers[2].sigma_message()
    with pytest.raises(RepairStateError):
        run.target.finish()
    run.exchange()
    with pytest.raises(RepairStateError, match="every helper"):
        run.helpers[2].sigma_message()
    run.helpers[3].abort()
    assert run.helpers[3].state == "aborted"
    with pytest.raises(RepairStateError):
        run.helpers[3].on_deltas(2, b"x")


def test_sessions_and_results_do_not_pickle() -> None:
    run = Run(seed=16)
    for obj in (run.target, run.helpers[2]):
        with pytest.raises(TypeError):
            pickle.dumps(obj)


@pytest.mark.parametrize("bad", [
    [], "items", [object()],
])  # fmt: skip
def test_bad_items_are_refused(bad) -> None:
    with pytest.raises(RepairError):
        repair_context("c", "ops:r", RepairRequest(1, (2, 3), 2), bad)


def test_duplicate_items_are_refused() -> None:
    rng = SeededRNG(17)
    item, _ = make_key(3, 2, rng)
    with pytest.raises(RepairError, match="twice"):
        repair_context("c", "ops:r", RepairRequest(1, (2, 3), 2), [item, item])


def test_the_context_binds_the_helper_set_and_items() -> None:
    rng = SeededRNG(18)
    a, _ = make_key(5, 3, rng)
    b, _ = make_key(5, 3, rng, "k", 2)
    base = repair_context("c", "ops:r", RepairRequest(1, (2, 3, 4), 3), [a])
    assert base != repair_context("c", "ops:r", RepairRequest(1, (2, 3, 5), 3), [a])
    assert base != repair_context("c", "ops:r", RepairRequest(1, (2, 3, 4), 3), [b])
    assert base != repair_context("c", "ops:r2", RepairRequest(1, (2, 3, 4), 3), [a])
    assert base != repair_context("d", "ops:r", RepairRequest(1, (2, 3, 4), 3), [a])
    assert len(base) == 64
