"""Escrow to recovery officers and release to a fresh node: the whole path, and its abuses."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.protocols import sealbox
from node.protocols.batch import KeyVersion
from node.protocols.escrow import (
    EscrowCulprits,
    EscrowError,
    check_package,
    escrow_context,
    escrow_package,
    officer_release,
    recover_shares,
)
from shares import frost
from shares import group as g
from shares.rng import SeededRNG


def make_key(n: int, t: int, rng: SeededRNG, version: int):
    secret = g.random_scalar(rng)
    shares, gpk, commitment = frost.trusted_dealer_keygen(secret, n, t, rng=rng)
    _, vshares = frost.derive_group_info(n, t, commitment)
    item = KeyVersion("vault", version, gpk, {i + 1: y for i, y in enumerate(vshares)})
    return item, dict(shares)


def x25519(seed: int) -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return key, sealbox.public_bytes(key)


class World:
    """Three members, two key versions, officers alice/bob/carol with k = 2."""

    def __init__(self, seed: int = 0, items: int = 2) -> None:
        self.rng = SeededRNG(seed)
        keys = [make_key(3, 2, self.rng, v + 1) for v in range(items)]
        self.items = [it for it, _ in keys]
        self.shares = [s for _, s in keys]
        names = ("alice", "bob", "carol")
        self.officer_keys = {name: x25519(i + 1) for i, name in enumerate(names)}
        self.officers = [(n, pub) for n, (_, pub) in sorted(self.officer_keys.items())]
        self.k = 2

    def context(self, member: int) -> bytes:
        return escrow_context("cluster-1", member, self.items, self.officers, self.k)

    def package(self, member: int) -> bytes:
        return escrow_package(self.context(member), member, self.items,
                              [s[member] for s in self.shares], self.officers, self.k, self.rng)

    def release(self, member: int, package: bytes, officer: str, node_public: bytes) -> bytes:
        private = self.officer_keys[officer][0]
        return officer_release(self.context(member), package, member, self.items, self.officers,
                               self.k, officer, private, node_public, self.rng)

    def recover(self, member: int, releases: dict[int, bytes], node: X25519PrivateKey):
        return recover_shares(self.context(member), releases, node, member, self.items,
                              self.officers, self.k)


def test_k_officers_rebuild_each_members_shares_on_its_fresh_node() -> None:
    w = World(1)
    for member in (1, 2, 3):
        package = w.package(member)
        check_package(w.context(member), package, member, w.items, w.officers, w.k)
        node, node_pub = x25519(40 + member)
        releases = {1: w.release(member, package, "alice", node_pub),
                    3: w.release(member, package, "carol", node_pub)}
        shares, bad = w.recover(member, releases, node)
        assert bad == []
        assert [bytes(s) for s in shares] == [s[member] for s in w.shares]


def test_the_package_and_releases_hold_no_share_in_clear() -> None:
    w = World(2)
    package = w.package(1)
    _, node_pub = x25519(50)
    release = w.release(1, package, "bob", node_pub)
    for s in w.shares:
        assert s[1] not in package and s[1] not in release


def test_one_officer_alone_recovers_nothing() -> None:
    w = World(3)
    package = w.package(2)
    node, node_pub = x25519(51)
    with pytest.raises(EscrowCulprits, match="only 1 of the 2"):
        w.recover(2, {2: w.release(2, package, "bob", node_pub)}, node)


def test_a_release_only_opens_on_the_node_it_was_sealed_to() -> None:
    w = World(4)
    package = w.package(1)
    _, node_pub = x25519(52)
    other, _ = x25519(53)
    releases = {1: w.release(1, package, "alice", node_pub),
                2: w.release(1, package, "bob", node_pub)}
    with pytest.raises(EscrowCulprits) as e:
        w.recover(1, releases, other)
    assert e.value.culprits == [1, 2]


def test_a_release_cannot_be_moved_to_another_member() -> None:
    w = World(5)
    node, node_pub = x25519(54)
    p1, p2 = w.package(1), w.package(2)
    releases = {1: w.release(1, p1, "alice", node_pub), 2: w.release(2, p2, "bob", node_pub)}
    with pytest.raises(EscrowCulprits) as e:  # bob's release is for member 2
        w.recover(1, releases, node)
    assert e.value.culprits == [2]


def test_a_bad_release_is_named_and_the_rest_still_suffice() -> None:
    w = World(6)
    package = w.package(3)
    node, node_pub = x25519(55)
    releases = {o: w.release(3, package, name, node_pub)
                for o, name in ((1, "alice"), (2, "bob"), (3, "carol"))}
    releases[2] = releases[2][:-1] + bytes([releases[2][-1] ^ 1])
    shares, bad = w.recover(3, releases, node)
    assert bad == [2]
    assert [bytes(s) for s in shares] == [s[3] for s in w.shares]


def test_an_officer_must_use_its_registered_key_and_a_listed_name() -> None:
    w = World(7)
    package = w.package(1)
    _, node_pub = x25519(56)
    with pytest.raises(EscrowError, match="registered key"):
        officer_release(w.context(1), package, 1, w.items, w.officers, w.k, "alice",
                        w.officer_keys["bob"][0], node_pub, w.rng)
    with pytest.raises(EscrowError, match="not one of"):
        officer_release(w.context(1), package, 1, w.items, w.officers, w.k, "mallory",
                        w.officer_keys["bob"][0], node_pub, w.rng)


def test_a_package_for_another_batch_or_officer_set_does_not_open() -> None:
    w = World(8)
    package = w.package(1)
    _, node_pub = x25519(57)
    other_ctx = escrow_context("cluster-1", 1, w.items[:1], w.officers, w.k)
    with pytest.raises(EscrowError):
        officer_release(other_ctx, package, 1, w.items, w.officers, w.k, "alice",
                        w.officer_keys["alice"][0], node_pub, w.rng)


def test_escrowing_a_share_that_is_not_the_members_is_refused() -> None:
    w = World(9)
    with pytest.raises(EscrowError, match="verification share"):
        escrow_package(w.context(1), 1, w.items, [s[2] for s in w.shares], w.officers, w.k,
                       w.rng)


def test_garbage_escrowed_by_a_member_is_caught_at_recovery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member escrows random scalars (its tool skips escrow_package's own check)."""
    w = World(10)
    with monkeypatch.context() as m:
        m.setattr(g, "element_eq", lambda a, b: True)
        package = escrow_package(w.context(1), 1, w.items,
                                 [g.random_scalar(w.rng) for _ in w.items], w.officers, w.k,
                                 w.rng)  # fmt: skip
    node, node_pub = x25519(58)
    releases = {1: w.release(1, package, "alice", node_pub),
                2: w.release(1, package, "bob", node_pub)}
    with pytest.raises(EscrowError, match="escrowed garbage"):
        w.recover(1, releases, node)


@pytest.mark.parametrize("edit", [
    lambda raw: raw.update(v=2),
    lambda raw: raw.update(member=2),
    lambda raw: raw.update(k=3),
    lambda raw: raw["pieces"].pop(),
    lambda raw: raw.update(extra=1),
])  # fmt: skip
def test_malformed_packages_are_refused(edit) -> None:
    w = World(11)
    raw = msgpack.unpackb(w.package(1), raw=False)
    edit(raw)
    with pytest.raises(EscrowError):
        check_package(w.context(1), msgpack.packb(raw, use_bin_type=True), 1, w.items,
                      w.officers, w.k)


@pytest.mark.parametrize(("officers", "k", "match"), [
    ([("bob", b"\x09" * 32), ("alice", b"\x08" * 32)], 2, "sorted"),
    ([("alice", b"\x09" * 32), ("bob", b"\x09" * 32)], 2, "share a key"),
    ([("alice", b"\x09" * 32), ("bob", b"\x08" * 32)], 3, "k must"),
    ([("alice", b"\x09" * 32)], 2, "2.."),
])  # fmt: skip
def test_bad_officer_lists_are_refused(officers, k, match) -> None:
    w = World(12)
    with pytest.raises(EscrowError, match=match):
        escrow_context("c", 1, w.items, officers, k)
