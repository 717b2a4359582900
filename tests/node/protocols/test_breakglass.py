"""Break-glass export: members' shares sealed to the requester; the requester's tool opens
t of them, checks each against the verification share and the result against the group
key. A piece for another export, member or recipient does not open."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.protocols import breakglass as bg
from node.protocols import sealbox
from shares import group as g
from shares.rng import system_rng
from shares.shamir import split_secret

T, N = 2, 3


@pytest.fixture
def world():
    rng = system_rng()
    secret = g.random_scalar(rng)
    shares, _ = split_secret(secret, T, N, rng)
    vshares = {s.identifier: g.base_mult(s.value) for s in shares}
    recipient = X25519PrivateKey.generate()
    ctx = bg.export_context("c1", "ops:ex-1", "k1", 1, g.base_mult(secret))
    pieces = {s.identifier: bg.seal_piece(ctx, s.identifier, s.value,
                                          sealbox.public_bytes(recipient), rng)
              for s in shares}  # fmt: skip
    return secret, vshares, recipient, ctx, pieces


def test_t_pieces_give_the_group_secret(world) -> None:
    secret, vshares, recipient, ctx, pieces = world
    assert all(len(p) == bg.PIECE_SIZE for p in pieces.values())
    out, bad = bg.open_pieces(ctx, pieces, recipient, vshares, g.base_mult(secret), T)
    assert bytes(out) == secret and bad == []


def test_a_bad_piece_is_named_and_the_others_suffice(world) -> None:
    secret, vshares, recipient, ctx, pieces = world
    pieces[1] = pieces[1][:-1] + bytes([pieces[1][-1] ^ 1])
    out, bad = bg.open_pieces(ctx, pieces, recipient, vshares, g.base_mult(secret), T)
    assert bytes(out) == secret and bad == [1]
    pieces[2] = pieces[3]  # member 3's piece posted as member 2's: its AAD names 3
    with pytest.raises(bg.ExportError, match="only 1 of the 2"):
        bg.open_pieces(ctx, pieces, recipient, vshares, g.base_mult(secret), T)


def test_another_recipient_or_export_opens_nothing(world) -> None:
    secret, vshares, _, ctx, pieces = world
    with pytest.raises(bg.ExportError):
        bg.open_pieces(ctx, pieces, X25519PrivateKey.generate(), vshares,
                       g.base_mult(secret), T)  # fmt: skip
    other = bg.export_context("c1", "ops:ex-2", "k1", 1, g.base_mult(secret))
    with pytest.raises(bg.ExportError):
        bg.open_pieces(other, pieces, world[2], vshares, g.base_mult(secret), T)


def test_a_share_that_does_not_match_its_verification_share_is_refused(world) -> None:
    secret, vshares, recipient, ctx, pieces = world
    vshares[1], vshares[2] = vshares[2], vshares[1]
    with pytest.raises(bg.ExportError, match=r"only 1 of the 2 .*\[1, 2\]"):
        bg.open_pieces(ctx, pieces, recipient, vshares, g.base_mult(secret), T)
