"""Refresh sessions: in-process runs among all members, and every way a member can cheat."""

from __future__ import annotations

import pickle

import msgpack
import pytest

from node.protocols.batch import CHUNK, KeyVersion, seal_scalars
from node.protocols.refresh_session import (
    _KIND,
    OwnPostMismatch,
    RefreshCulprits,
    RefreshError,
    RefreshSession,
    RefreshStateError,
    refresh_context,
    refreshed_public,
)
from shares import frost
from shares import group as g
from shares.errors import SharesError
from shares.rng import SeededRNG


def make_key(n: int, t: int, rng: SeededRNG, key_id: str = "k", version: int = 1):
    secret = g.random_scalar(rng)
    shares, gpk, commitment = frost.trusted_dealer_keygen(secret, n, t, rng=rng)
    _, vshares = frost.derive_group_info(n, t, commitment)
    return KeyVersion(key_id, version, gpk, {i + 1: y for i, y in enumerate(vshares)}), dict(shares)


class Run:
    def __init__(self, n: int = 3, t: int = 2, items: int = 2, seed: int = 0,
                 participants: tuple[int, ...] | None = None) -> None:  # fmt: skip
        self.rng = SeededRNG(seed)
        self.n, self.t = n, t
        keys = [make_key(n, t, self.rng, f"key-{k}", k + 1) for k in range(items)]
        self.items = [it for it, _ in keys]
        self.shares = [s for _, s in keys]
        self.ids = participants or tuple(range(1, n + 1))
        self.context = refresh_context("cluster-1", "ops:refresh-1", self.ids, t, self.items)
        self.sessions: dict[int, RefreshSession] = {}
        self.posts: dict[int, bytes] = {}
        for i in self.ids:
            self.sessions[i], self.posts[i] = RefreshSession.start(
                self.context, i, self.ids, t, self.items, [s[i] for s in self.shares], self.rng)

    def exchange(self) -> dict[int, dict[int, bytes]]:
        return {i: s.on_posts(self.posts) for i, s in self.sessions.items()}

    def finish(self):
        for sender, out in self.exchange().items():
            for recipient, message in out.items():
                self.sessions[recipient].on_subshares(sender, message)
        return {i: s.finish() for i, s in self.sessions.items()}


def _sign(item: KeyVersion, kp: dict[int, bytes], rng: SeededRNG) -> bytes:
    out = {i: frost.commit(kp[i], rng=rng) for i in kp}
    commitments = [(i, out[i][1].hiding, out[i][1].binding) for i in sorted(kp)]
    msg = b"after the refresh"
    sig_shares = [frost.sign(i, kp[i], item.group_public_key, out[i][0], msg, commitments)
                  for i, _, _ in commitments]  # fmt: skip
    vs = {i: item.verification_shares[i] for i in kp}
    sig = frost.aggregate(commitments, msg, item.group_public_key, sig_shares,
                          verifying_shares=vs)  # fmt: skip
    frost.verify_signature(msg, sig, item.group_public_key)
    return sig


@pytest.mark.parametrize(("n", "t", "items"), [(3, 2, 1), (5, 3, 2), (4, 2, CHUNK + 3)])
def test_refresh_keeps_the_key_and_changes_every_share(n, t, items) -> None:
    run = Run(n, t, items, seed=n + items)
    results = run.finish()
    public = refreshed_public(run.posts, run.ids, t, run.items)
    for k, item in enumerate(run.items):
        new_vs = results[1].verification_shares[k]
        assert all(r.verification_shares[k] == new_vs for r in results.values())
        assert public[k] == new_vs  # an observer derives what the members derive
        assert all(new_vs[i] != item.verification_shares[i] for i in run.ids)
        for i, r in results.items():
            assert bytes(r.shares[k]) != run.shares[k][i]
            assert g.element_eq(g.base_mult(bytes(r.shares[k])), new_vs[i])
    # new shares sign under the same group key; old and new shares do not mix
    item = run.items[0]
    fresh = KeyVersion(item.key_id, item.version, item.group_public_key,
                       public[0])  # fmt: skip
    _sign(fresh, {i: bytes(results[i].shares[0]) for i in range(1, t + 1)}, run.rng)
    mixed = {1: run.shares[0][1], **{i: bytes(results[i].shares[0]) for i in range(2, t + 1)}}
    with pytest.raises(SharesError):  # the old share's signature share is blamed
        _sign(fresh, mixed, run.rng)
    for r in results.values():
        r.zeroize()
        assert all(s == bytearray(32) for s in r.shares)
        assert "redacted" in repr(r)


def test_a_subset_refresh_leaves_the_others_stale() -> None:
    run = Run(4, 2, 1, seed=3, participants=(1, 2, 3))
    results = run.finish()
    new_vs = results[1].verification_shares[0]
    assert set(new_vs) == {1, 2, 3}  # member 4 is not refreshed: it needs a repair


def test_a_threshold_other_than_the_keys_is_refused() -> None:
    rng = SeededRNG(4)
    item, shares = make_key(5, 3, rng)
    with pytest.raises(RefreshError, match="threshold"):
        RefreshSession.start(bytes(64), 1, (1, 2, 3, 4, 5), 2, [item], [shares[1]], rng)


def test_a_stale_share_is_refused_before_dealing() -> None:
    run = Run(seed=5)
    with pytest.raises(RefreshError, match="does not match"):
        RefreshSession.start(run.context, 1, run.ids, 2, run.items,
                             [g.random_scalar(run.rng) for _ in run.items], run.rng)  # fmt: skip


def _forge(post: bytes, edit) -> bytes:
    raw = msgpack.unpackb(post, raw=False)
    edit(raw)
    return msgpack.packb(raw, use_bin_type=True)


def test_a_sharing_of_something_other_than_zero_names_its_dealer() -> None:
    run = Run(5, 3, 2, seed=6)
    not_zero = g.base_mult(g.random_scalar(run.rng))
    run.posts[4] = _forge(run.posts[4], lambda raw: raw["commitments"][1].__setitem__(0, not_zero))
    with pytest.raises(RefreshCulprits) as e:
        run.sessions[1].on_posts(run.posts)
    assert e.value.culprits == [4]
    with pytest.raises(RefreshCulprits) as e:
        refreshed_public(run.posts, run.ids, 3, run.items)
    assert e.value.culprits == [4]


@pytest.mark.parametrize("edit", [
    lambda raw: raw.update(v=9),
    lambda raw: raw.pop("x25519"),
    lambda raw: raw["commitments"].pop(),
    lambda raw: raw["commitments"][0].pop(),
    lambda raw: raw["commitments"][0].__setitem__(1, b"\x01" * 33),
])  # fmt: skip
def test_malformed_posts_name_their_dealer(edit) -> None:
    run = Run(seed=7)
    run.posts[3] = _forge(run.posts[3], edit)
    with pytest.raises(RefreshCulprits) as e:
        run.sessions[1].on_posts(run.posts)
    assert e.value.culprits == [3]


def test_my_post_replaced_in_the_log_fails_the_run() -> None:
    run = Run(seed=8)
    forged = dict(run.posts)
    forged[1] = run.posts[2]
    with pytest.raises(OwnPostMismatch):
        run.sessions[1].on_posts(forged)
    assert run.sessions[1].state == "failed"


def test_a_sub_share_off_its_commitments_names_its_dealer() -> None:
    run = Run(3, 2, 2, seed=9)
    boxes = run.exchange()
    s3 = run.sessions[3]
    forged = seal_scalars(s3._private, s3._public, s3._posts[1].x25519,
                          [g.random_scalar(run.rng) for _ in run.items], run.context, _KIND, 3, 1,
                          run.rng)  # fmt: skip
    with pytest.raises(RefreshCulprits, match="commitments") as e:
        run.sessions[1].on_subshares(3, forged)
    assert e.value.culprits == [3]
    run.sessions[2].on_subshares(3, boxes[3][2])  # the honest box still opens for its recipient


def test_boxes_are_bound_to_their_recipient_and_run() -> None:
    run = Run(3, 2, 1, seed=10)
    boxes = run.exchange()
    with pytest.raises(RefreshCulprits):
        run.sessions[1].on_subshares(3, boxes[3][2])
    other = Run(3, 2, 1, seed=11)
    with pytest.raises(RefreshCulprits):
        run.sessions[2].on_subshares(1, other.exchange()[1][2])


def test_order_repeats_and_strangers() -> None:
    run = Run(seed=12)
    with pytest.raises(RefreshStateError):
        run.sessions[1].on_subshares(2, b"x")
    with pytest.raises(RefreshStateError):
        run.sessions[1].finish()
    boxes = run.exchange()
    with pytest.raises(RefreshStateError, match="every participant"):
        run.sessions[1].finish()
    with pytest.raises(RefreshError, match="another participant"):
        run.sessions[1].on_subshares(1, boxes[2][1])
    run.sessions[1].on_subshares(2, boxes[2][1])
    with pytest.raises(RefreshCulprits, match="second"):
        run.sessions[1].on_subshares(2, boxes[2][1])
    run.sessions[2].abort()
    assert run.sessions[2].state == "aborted"
    with pytest.raises(TypeError):
        pickle.dumps(run.sessions[3])


def test_the_context_binds_set_threshold_and_items() -> None:
    rng = SeededRNG(13)
    a, _ = make_key(5, 3, rng)
    b, _ = make_key(5, 3, rng, "k", 2)
    base = refresh_context("c", "ops:r", (1, 2, 3, 4, 5), 3, [a])
    assert base != refresh_context("c", "ops:r", (1, 2, 3, 4), 3, [a])
    assert base != refresh_context("c", "ops:r", (1, 2, 3, 4, 5), 2, [a])
    assert base != refresh_context("c", "ops:r", (1, 2, 3, 4, 5), 3, [b])
    assert base != refresh_context("c", "ops:x", (1, 2, 3, 4, 5), 3, [a])
    with pytest.raises(RefreshError):
        refresh_context("c", "ops:r", (1,), 2, [a])
    with pytest.raises(RefreshError):
        refresh_context("c", "ops:r", (1, 2), 3, [a])
