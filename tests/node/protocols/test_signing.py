"""FROST signing between coordinator and members: nonce stock, member checks, blame."""

from __future__ import annotations

import pickle
import threading
from itertools import combinations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.protocols.signing import (
    BadShares,
    NonceStock,
    NonceStockError,
    NotEnoughSigners,
    SigningError,
    SigningRefused,
    UnknownCommitment,
    aggregate_or_blame,
    choose_signers,
    member_sign_share,
)
from shares import frost
from shares import group as g
from shares.rng import SeededRNG

KEY, VERSION = "key-a", 1
MESSAGE = b"release 1.2.3 digest"


class Cluster:
    """A trusted-dealer key (signing tests need key material, not a DKG run)."""

    def __init__(self, n: int, t: int, seed: int = 0) -> None:
        self.n, self.t = n, t
        self.rng = SeededRNG(seed)
        secret = g.random_scalar(self.rng)
        shares, self.pk, vss = frost.trusted_dealer_keygen(secret, n, t, rng=self.rng)
        self.shares = dict(shares)
        _, vs = frost.derive_group_info(n, t, vss)
        self.verifying = dict(enumerate(vs, start=1))
        self.stocks = {i: NonceStock() for i in range(1, n + 1)}

    def commit(self, signers) -> tuple[list[tuple[int, bytes, bytes]], dict[int, int]]:
        rows, ids = [], {}
        for i in sorted(signers):
            ((cid, hiding, binding),) = self.stocks[i].issue(
                KEY, VERSION, self.shares[i], 1, self.rng
            )
            rows.append((i, hiding, binding))
            ids[i] = cid
        return rows, ids

    def sign_share(self, i: int, rows, cid: int, **over) -> bytes:
        args = dict(
            me=i, signing_share=self.shares[i], group_public_key=self.pk, message=MESSAGE,
            commitment_list=rows, my_commitment_id=cid, stock=self.stocks[i], key_id=KEY,
            version=VERSION, threshold=self.t, members=range(1, self.n + 1),
        )  # fmt: skip
        args.update(over)
        return member_sign_share(**args)


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3)])
def test_end_to_end_signatures_verify(n: int, t: int) -> None:
    c = Cluster(n, t, seed=n)
    pk = Ed25519PublicKey.from_public_bytes(c.pk)
    for signers in combinations(range(1, n + 1), t):
        rows, ids = c.commit(signers)
        shares = {i: c.sign_share(i, rows, ids[i]) for i in signers}
        assert all(len(z) == 32 for z in shares.values())
        signature = aggregate_or_blame(rows, MESSAGE, c.pk, shares, c.verifying)
        pk.verify(signature, MESSAGE)
    assert all(len(s) == 0 for s in c.stocks.values())


def test_a_nonce_is_never_usable_twice() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    c.sign_share(1, rows, ids[1])
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, rows, ids[1])
    assert info.value.reason == "unknown_commitment"
    with pytest.raises(UnknownCommitment):
        c.stocks[1].take(KEY, VERSION, ids[1])


def test_take_is_exactly_once() -> None:
    c = Cluster(3, 2)
    ((cid, _, _),) = c.stocks[1].issue(KEY, VERSION, c.shares[1], 1, c.rng)
    nonces = c.stocks[1].take(KEY, VERSION, cid)
    assert not nonces.used
    with pytest.raises(UnknownCommitment) as info:
        c.stocks[1].take(KEY, VERSION, cid)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownCommitment):
        c.stocks[1].take(KEY, VERSION + 1, cid)  # ids are per key version


def test_a_failed_sign_consumes_the_nonce() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    nonces = c.stocks[1]._by_slot[(KEY, VERSION)][ids[1]]
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, rows[:1], ids[1])  # list too short
    assert info.value.reason == "bad_list"
    assert nonces.used  # zeroized
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, rows, ids[1])  # the right request now finds nothing
    assert info.value.reason == "unknown_commitment"


def test_altered_own_commitment_is_refused() -> None:
    c = Cluster(3, 2)
    rows, _ids = c.commit([1, 2])
    other = g.base_mult(g.scalar_from_int(7))
    for altered in ((1, other, rows[0][2]), (1, rows[0][1], other), (1, rows[0][2], rows[0][1])):
        rows2, ids2 = c.commit([1, 2])
        with pytest.raises(SigningRefused) as info:
            c.sign_share(1, [altered, rows2[1]], ids2[1])
        assert info.value.reason == "incorrect_commitment"
        with pytest.raises(UnknownCommitment):
            c.stocks[1].take(KEY, VERSION, ids2[1])


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda r: r[:2], "bad_list"),  # t = 3 needs 3
        (lambda r: [*r, (5, r[0][1], r[0][2])], "bad_list"),  # 4 entries
        (lambda r: [r[0], r[1], (9, r[2][1], r[2][2])], "not_member"),
        (lambda r: [r[1], r[0], r[2]], "bad_list"),  # unsorted
        (lambda r: [r[0], r[0], r[2]], "bad_list"),  # duplicate
        (lambda r: [r[0], (2, r[1][1][:31], r[1][2]), r[2]], "bad_list"),
        (lambda r: "not a list", "bad_list"),
    ],
)
def test_bad_lists_are_refused(build, reason: str) -> None:
    c = Cluster(4, 3)
    c.n = 4
    rows, ids = c.commit([1, 2, 3])
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, build(rows), ids[1], members=[1, 2, 3, 4])
    assert info.value.reason == reason
    with pytest.raises(UnknownCommitment):
        c.stocks[1].take(KEY, VERSION, ids[1])


def test_list_without_me_is_refused() -> None:
    c = Cluster(3, 2)
    rows, _ids = c.commit([2, 3])
    ((cid, _, _),) = c.stocks[1].issue(KEY, VERSION, c.shares[1], 1, c.rng)
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, rows, cid)
    assert info.value.reason == "missing_me"


def test_non_member_me_and_bad_threshold_are_refused() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    with pytest.raises(SigningRefused, match="not a member"):
        c.sign_share(1, rows, ids[1], members=[2, 3])
    rows, ids = c.commit([1, 2])
    with pytest.raises(SigningRefused, match="threshold"):
        c.sign_share(1, rows, ids[1], threshold=4)


def test_another_members_bad_commitment_is_named() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    bad = [rows[0], (2, bytes(32), rows[1][2])]  # not a point
    with pytest.raises(SigningRefused) as info:
        c.sign_share(1, bad, ids[1])
    assert info.value.reason == "bad_commitment" and info.value.culprits == [2]


def test_unknown_commitment_id_and_bad_inputs() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    for cid in (ids[1] ^ 1, -1, 1 << 63, True):
        with pytest.raises(SigningRefused):
            c.sign_share(1, rows, cid)
    with pytest.raises(SigningRefused, match="bad_input"):
        c.sign_share(1, rows, ids[1], key_id="bad key")
    c.sign_share(1, rows, ids[1])  # none of the above touched the real nonces


# ---------------------------------------------------------------- coordinator


def test_bad_share_is_blamed() -> None:
    c = Cluster(5, 3)
    rows, ids = c.commit([1, 3, 5])
    shares = {i: c.sign_share(i, rows, ids[i]) for i in (1, 3, 5)}
    for culprits in ([3], [1, 5]):
        bad = dict(shares)
        for i in culprits:
            bad[i] = g.scalar_add(bad[i], g.scalar_from_int(1))
        with pytest.raises(BadShares) as info:
            aggregate_or_blame(rows, MESSAGE, c.pk, bad, c.verifying)
        assert info.value.culprits == culprits
    with pytest.raises(BadShares) as info:
        aggregate_or_blame(rows, MESSAGE, c.pk, {**shares, 5: b"\xff" * 32}, c.verifying)
    assert info.value.culprits == [5]
    with pytest.raises(BadShares):  # a share for another message
        aggregate_or_blame(rows, MESSAGE + b"!", c.pk, shares, c.verifying)
    Ed25519PublicKey.from_public_bytes(c.pk).verify(
        aggregate_or_blame(rows, MESSAGE, c.pk, shares, c.verifying), MESSAGE
    )


def test_aggregate_refuses_incomplete_inputs() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    shares = {i: c.sign_share(i, rows, ids[i]) for i in (1, 2)}
    with pytest.raises(SigningError, match="one share"):
        aggregate_or_blame(rows, MESSAGE, c.pk, {1: shares[1]}, c.verifying)
    with pytest.raises(SigningError, match="verification share"):
        aggregate_or_blame(rows, MESSAGE, c.pk, shares, {1: c.verifying[1]})
    with pytest.raises(SigningError):
        aggregate_or_blame([rows[1], rows[0]], MESSAGE, c.pk, shares, c.verifying)


def test_bad_commitment_is_blamed_at_aggregation() -> None:
    c = Cluster(3, 2)
    rows, ids = c.commit([1, 2])
    shares = {i: c.sign_share(i, rows, ids[i]) for i in (1, 2)}
    bad_rows = [rows[0], (2, bytes(32), rows[1][2])]
    with pytest.raises(BadShares) as info:
        aggregate_or_blame(bad_rows, MESSAGE, c.pk, shares, c.verifying)
    assert info.value.culprits == [2]


def test_choose_signers() -> None:
    assert choose_signers([3, 1, 2, 5], 2, exclude=[]) == [1, 3]
    assert choose_signers([3, 1, 2, 5], 2, exclude=[3]) == [1, 2]
    assert choose_signers([3, 1, 2, 5], 3, exclude=[1], prefer=5) == [2, 3, 5]
    assert choose_signers([3, 3, 1], 2, exclude=[], prefer=3) == [1, 3]
    assert choose_signers([1, 2], 2, exclude=[], prefer=4) == [1, 2]  # 4 not a candidate
    with pytest.raises(NotEnoughSigners):
        choose_signers([1, 2, 3], 3, exclude=[2])
    for bad in (([1, 0], 2), ([1, 2], 1), ([1, True], 2), ("12", 2)):
        with pytest.raises(SigningError):
            choose_signers(bad[0], bad[1], exclude=[])


# ---------------------------------------------------------------- the stock


def test_stock_bounds_evict_oldest_and_zeroize() -> None:
    c = Cluster(3, 2)
    stock = NonceStock(max_per_version=4, max_total=6)
    first = stock.issue(KEY, 1, c.shares[1], 3, c.rng)
    held = dict(stock._by_slot[(KEY, 1)])
    second = stock.issue(KEY, 1, c.shares[1], 3, c.rng)
    assert stock.outstanding(KEY, 1) == 4
    evicted = [cid for cid, _, _ in first[:2]]
    assert all(held[cid].used for cid in evicted)
    assert not held[first[2][0]].used
    for cid in evicted:
        with pytest.raises(UnknownCommitment):
            stock.take(KEY, 1, cid)
    # Total bound: a second version pushes out the oldest of the first.
    stock.issue(KEY, 2, c.shares[1], 3, c.rng)
    assert len(stock) == 6 and stock.outstanding(KEY, 1) == 3
    with pytest.raises(UnknownCommitment):
        stock.take(KEY, 1, first[2][0])
    stock.take(KEY, 1, second[0][0])
    assert len(stock) == 5


def test_drop_version_and_clear_zeroize() -> None:
    c = Cluster(3, 2)
    stock = NonceStock()
    stock.issue(KEY, 1, c.shares[1], 5, c.rng)
    stock.issue(KEY, 2, c.shares[1], 2, c.rng)
    v1 = list(stock._by_slot[(KEY, 1)].values())
    v2 = list(stock._by_slot[(KEY, 2)].values())
    assert stock.drop_version(KEY, 1) == 5
    assert all(n.used for n in v1) and not any(n.used for n in v2)
    assert len(stock) == 2
    stock.clear()
    assert all(n.used for n in v2) and len(stock) == 0
    assert stock.drop_version(KEY, 1) == 0


def test_stock_refuses_bad_arguments() -> None:
    c = Cluster(3, 2)
    stock = NonceStock(max_per_version=8)
    for args in (
        ("bad key", 1, c.shares[1], 1),
        (KEY, 0, c.shares[1], 1),
        (KEY, 1, c.shares[1], 0),
        (KEY, 1, c.shares[1], 9),  # above max_per_version
        (KEY, 1, c.shares[1], True),
        (KEY, 1, b"\xff" * 32, 1),  # not a scalar
    ):
        with pytest.raises(NonceStockError):
            stock.issue(*args, c.rng)
    with pytest.raises(NonceStockError):
        stock.issue(KEY, 1, c.shares[1], 1, lambda n: b"")
    assert len(stock) == 0
    with pytest.raises(NonceStockError):
        NonceStock(max_per_version=10, max_total=5)


def test_repeating_rng_still_gives_distinct_ids() -> None:
    c = Cluster(3, 2)
    stock = NonceStock()
    constant = lambda n: b"\x07" * n  # noqa: E731
    a = stock.issue(KEY, 1, c.shares[1], 3, constant)
    b = stock.issue(KEY, 1, c.shares[1], 3, constant)
    ids = [r[0] for r in a + b]
    assert len(set(ids)) == 6
    # The nonce hedge keeps the commitments apart too.
    assert len({r[1] for r in a + b}) == 6


def test_concurrent_takes_hand_out_nonces_once() -> None:
    c = Cluster(3, 2)
    stock = NonceStock()
    ids = [cid for cid, _, _ in stock.issue(KEY, 1, c.shares[1], 20, c.rng)]
    won: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for cid in ids:
            try:
                stock.take(KEY, 1, cid)
            except UnknownCommitment:
                continue
            with lock:
                won.append(cid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(won) == sorted(ids)


def test_stock_is_not_printed_or_pickled() -> None:
    c = Cluster(3, 2)
    stock = NonceStock()
    stock.issue(KEY, 1, c.shares[1], 2, c.rng)
    assert "redacted" in repr(stock) and "outstanding=2" in repr(stock)
    with pytest.raises(TypeError):
        pickle.dumps(stock)
