"""DkgSession: in-process runs among n sessions, and every way a member can misbehave."""

from __future__ import annotations

import pickle
import struct
from itertools import combinations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.protocols import sealbox
from node.protocols.dkg_session import (
    MAX_POST_SIZE,
    DkgCulprits,
    DkgError,
    DkgSession,
    DkgStateError,
    OwnPostMismatch,
    dkg_context,
)
from shares import frost
from shares import group as g
from shares.rng import SeededRNG


def members(n: int) -> list[tuple[str, int]]:
    return [(f"node-{i}", i) for i in range(1, n + 1)]


def context(n: int, t: int, key_id: str = "key-a", version: int = 1) -> bytes:
    return dkg_context("cluster-1", "ops:req-1", key_id, version, members(n), t)


def start_all(n: int, t: int, seed: int = 0, ctx: bytes | None = None):
    rng = SeededRNG(seed)
    ctx = context(n, t) if ctx is None else ctx
    sessions, posts = {}, {}
    for i in range(1, n + 1):
        sessions[i], posts[i] = DkgSession.start(ctx, i, n, t, rng)
    return sessions, posts, rng


def run_round1(sessions, posts):
    return {i: s.on_round1(posts) for i, s in sessions.items()}


def deliver_all(sessions, boxes) -> None:
    for i, out in boxes.items():
        for j, message in out.items():
            sessions[j].on_round2(i, message)


def frost_sign(results, signers, message: bytes, rng) -> bytes:
    pk = results[signers[0]].group_public_key
    nonces, rows = {}, []
    for i in signers:
        nonces[i], comm = frost.commit(bytes(results[i].signing_share), rng=rng)
        rows.append((i, comm.hiding, comm.binding))
    shares = [
        frost.sign(i, bytes(results[i].signing_share), pk, nonces[i], message, rows)
        for i in signers
    ]
    vs = {i: v for i, v in enumerate(results[signers[0]].verification_shares, start=1)}
    return frost.aggregate(rows, message, pk, shares, verifying_shares=vs)


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3)])
def test_full_run_gives_one_key_that_signs(n: int, t: int) -> None:
    sessions, posts, rng = start_all(n, t, seed=n)
    boxes = run_round1(sessions, posts)
    assert all(set(out) == set(range(1, n + 1)) - {i} for i, out in boxes.items())
    deliver_all(sessions, boxes)
    assert all(s.complete for s in sessions.values())
    results = {i: s.finish() for i, s in sessions.items()}
    keys = {r.group_public_key for r in results.values()}
    assert len(keys) == 1
    assert len({r.verification_shares for r in results.values()}) == 1
    for i, r in results.items():
        assert len(r.verification_shares) == n
        assert g.base_mult(bytes(r.signing_share)) == r.verification_shares[i - 1]
        assert r.threshold == t and r.identifier == i
    pk = Ed25519PublicKey.from_public_bytes(keys.pop())
    for signers in combinations(range(1, n + 1), t):
        message = f"release {signers}".encode()
        pk.verify(frost_sign(results, list(signers), message, rng), message)
    for s in sessions.values():
        assert s.state == "done"


def test_identical_round2_repeat_is_ignored() -> None:
    sessions, posts, _ = start_all(3, 2)
    boxes = run_round1(sessions, posts)
    sessions[2].on_round2(1, boxes[1][2])
    sessions[2].on_round2(1, boxes[1][2])
    sessions[2].on_round2(3, boxes[3][2])
    assert sessions[2].complete
    sessions[2].finish()


# ---------------------------------------------------------------- round 1 blame


def _rewrite_post(post: bytes, **changes) -> bytes:
    raw = msgpack.unpackb(post, raw=False)
    for path, value in changes.items():
        if path.startswith("round1_"):
            raw["round1"][path.removeprefix("round1_")] = value
        else:
            raw[path] = value
    return msgpack.packb(raw, use_bin_type=True)


def _expect_culprits(session: DkgSession, posts, culprits: list[int]) -> DkgCulprits:
    with pytest.raises(DkgCulprits) as info:
        session.on_round1(posts)
    assert info.value.culprits == culprits
    assert session.state == "failed"
    return info.value


def test_tampered_proof_names_its_sender() -> None:
    sessions, posts, _ = start_all(3, 2)
    raw = msgpack.unpackb(posts[2], raw=False)
    mu = bytearray(raw["round1"]["pok_mu"])
    mu[0] ^= 1
    posts[2] = _rewrite_post(posts[2], round1_pok_mu=bytes(mu))
    _expect_culprits(sessions[1], posts, [2])
    _expect_culprits(sessions[3], posts, [2])


def test_every_bad_post_is_named_at_once() -> None:
    sessions, posts, _ = start_all(5, 3)
    posts[2] = b"\xc1 not msgpack"
    posts[4] = _rewrite_post(posts[4], round1_identifier=5)  # claims to be member 5
    raw = msgpack.unpackb(posts[5], raw=False)
    commitment = raw["round1"]["commitment"]
    posts[5] = _rewrite_post(posts[5], round1_commitment=[commitment[1], *commitment[1:]])
    _expect_culprits(sessions[1], posts, [2, 4, 5])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p + b"\x00",  # trailing bytes
        lambda p: p[:-1],
        lambda p: _rewrite_post(p, v=2),
        lambda p: _rewrite_post(p, extra=1),
        lambda p: _rewrite_post(p, x25519=b"\x00" * 32),  # small-order key
        lambda p: _rewrite_post(p, x25519=b"\x01" * 31),
        lambda p: _rewrite_post(p, x25519="text"),
        lambda p: _rewrite_post(p, round1_pok_r=b"\x00" * 32),
        lambda p: _rewrite_post(p, round1_identifier=True),
        lambda p: _rewrite_post(p, round1_v=True),
        lambda p: _rewrite_post(p, round1="not a map"),
        lambda p: msgpack.packb([1, 2, 3]),
        lambda p: b"\x00" * (MAX_POST_SIZE + 1),
        lambda p: b"",
    ],
)
def test_malformed_post_names_its_sender(mutate) -> None:
    sessions, posts, _ = start_all(3, 2)
    posts[3] = mutate(posts[3])
    _expect_culprits(sessions[1], posts, [3])


def test_bool_identifier_is_not_one() -> None:
    sessions, posts, _ = start_all(3, 2)
    posts[1] = _rewrite_post(posts[1], round1_identifier=True)
    _expect_culprits(sessions[2], posts, [1])


def test_short_commitment_names_its_sender() -> None:
    sessions, posts, _ = start_all(3, 2)
    raw = msgpack.unpackb(posts[2], raw=False)
    posts[2] = _rewrite_post(posts[2], round1_commitment=raw["round1"]["commitment"][:1])
    _expect_culprits(sessions[1], posts, [2])


def test_post_replayed_from_another_run_is_refused() -> None:
    _other_sessions, other_posts, _ = start_all(3, 2, seed=7, ctx=context(3, 2, version=2))
    sessions, posts, _ = start_all(3, 2, seed=8)
    posts[2] = other_posts[2]
    _expect_culprits(sessions[1], posts, [2])


def test_copied_x25519_key_is_named() -> None:
    sessions, posts, _ = start_all(3, 2)
    mine = msgpack.unpackb(posts[1], raw=False)["x25519"]
    posts[3] = _rewrite_post(posts[3], x25519=mine)
    _expect_culprits(sessions[1], posts, [3])


def test_own_post_must_be_the_one_i_made() -> None:
    sessions, posts, _ = start_all(3, 2)
    _other, other_post = DkgSession.start(context(3, 2), 1, 3, 2, SeededRNG(99))
    with pytest.raises(OwnPostMismatch):
        sessions[1].on_round1({**posts, 1: other_post})
    assert sessions[1].state == "failed"


def test_posts_must_cover_exactly_the_members() -> None:
    sessions, posts, _ = start_all(3, 2)
    with pytest.raises(DkgError, match="exactly"):
        sessions[1].on_round1({1: posts[1], 2: posts[2]})
    with pytest.raises(DkgError, match="exactly"):
        sessions[1].on_round1({**posts, 4: posts[3]})
    sessions[1].on_round1(posts)  # a caller error does not end the session


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=600))
def test_random_post_bytes_always_blame_the_sender(junk: bytes) -> None:
    sessions, posts, _ = start_all(3, 2, seed=1)
    posts[2] = junk
    with pytest.raises(DkgCulprits) as info:
        sessions[1].on_round1(posts)
    assert info.value.culprits == [2]


# ---------------------------------------------------------------- round 2 blame


def _box_round(n: int = 3, t: int = 2, seed: int = 0):
    sessions, posts, rng = start_all(n, t, seed=seed)
    return sessions, posts, run_round1(sessions, posts), rng


def _expect_round2_culprit(session: DkgSession, sender: int, message: bytes) -> None:
    with pytest.raises(DkgCulprits) as info:
        session.on_round2(sender, message)
    assert info.value.culprits == [sender]
    assert session.state == "failed"
    with pytest.raises(DkgStateError):
        session.finish()


def test_message_for_another_recipient_names_the_sender() -> None:
    sessions, _, boxes, _ = _box_round()
    _expect_round2_culprit(sessions[2], 1, boxes[1][3])


def test_relabelled_recipient_does_not_open() -> None:
    sessions, _, boxes, _ = _box_round()
    raw = msgpack.unpackb(boxes[1][3], raw=False)
    raw["recipient"] = 2
    _expect_round2_culprit(sessions[2], 1, msgpack.packb(raw, use_bin_type=True))


def test_message_relayed_under_another_sender_is_blamed_on_the_relay() -> None:
    sessions, _, boxes, _ = _box_round()
    _expect_round2_culprit(sessions[2], 3, boxes[1][2])


def test_tampered_box_names_the_sender() -> None:
    sessions, _, boxes, _ = _box_round()
    raw = msgpack.unpackb(boxes[1][2], raw=False)
    box = bytearray(raw["box"])
    box[-1] ^= 0x80
    raw["box"] = bytes(box)
    _expect_round2_culprit(sessions[2], 1, msgpack.packb(raw, use_bin_type=True))


def test_box_replayed_from_another_context_names_the_sender() -> None:
    _other, _, other_boxes, _ = _box_round(seed=5)
    sessions, _, _boxes, _ = _box_round(seed=6)
    _expect_round2_culprit(sessions[2], 1, other_boxes[1][2])


def test_different_second_message_names_the_sender() -> None:
    sessions, _posts, boxes, _rng = _box_round()
    sessions[2].on_round2(1, boxes[1][2])
    raw = msgpack.unpackb(boxes[1][2], raw=False)
    raw["box"] = raw["box"][:-1] + bytes([raw["box"][-1] ^ 1])
    _expect_round2_culprit(sessions[2], 1, msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize(
    "message",
    [b"", b"\x80", msgpack.packb({"v": 1}), b"\x00" * 300, msgpack.packb([1, 2])],
)
def test_malformed_round2_names_the_sender(message: bytes) -> None:
    sessions, _, _, _ = _box_round()
    _expect_round2_culprit(sessions[2], 1, message)


def test_dealer_of_a_wrong_share_is_named() -> None:
    """Member 1 deals member 2 a value off its committed polynomial, sealed correctly."""
    sessions, posts, boxes, rng = _box_round()
    dealer = sessions[1]
    pub2 = msgpack.unpackb(posts[2], raw=False)["x25519"]
    wrong = g.scalar_from_int(12345)
    aad = dealer._context + struct.pack(">HH", 1, 2)
    box = sealbox.seal(dealer._x25519, dealer._x25519_public, pub2, wrong, aad, rng)
    message = msgpack.packb({"v": 1, "sender": 1, "recipient": 2, "box": box}, use_bin_type=True)
    _expect_round2_culprit(sessions[2], 1, message)
    sessions[3].on_round2(1, boxes[1][3])  # the same dealer's share to 3 is fine


# ---------------------------------------------------------------- order and secrecy


def test_calls_out_of_order_are_refused() -> None:
    sessions, posts, _ = start_all(3, 2)
    s = sessions[1]
    with pytest.raises(DkgStateError):
        s.on_round2(2, b"x")
    with pytest.raises(DkgStateError):
        s.finish()
    boxes = run_round1(sessions, posts)
    with pytest.raises(DkgStateError):
        s.on_round1(posts)
    with pytest.raises(DkgStateError, match="round-2 shares"):
        s.finish()
    with pytest.raises(DkgError):
        s.on_round2(1, boxes[2][1])  # from myself
    with pytest.raises(DkgError):
        s.on_round2(4, boxes[2][1])  # not a member
    deliver_all(sessions, boxes)
    s.finish()
    for call in (lambda: s.finish(), lambda: s.on_round2(2, boxes[2][1])):
        with pytest.raises(DkgStateError):
            call()


def test_abort_zeroizes_and_ends_the_session() -> None:
    sessions, posts, _ = start_all(3, 2)
    boxes = run_round1(sessions, posts)
    s = sessions[1]
    s.on_round2(2, boxes[2][1])
    held = list(s._shares.values())
    assert any(any(b) for b in held)
    s.abort()
    assert all(not any(b) for b in held)
    assert s._round2_secret is None and s._x25519 is None
    with pytest.raises(DkgStateError):
        s.on_round2(3, boxes[3][1])
    s.abort()  # idempotent
    assert s.state == "aborted"


def test_nothing_secret_is_printed_or_pickled() -> None:
    sessions, posts, _ = start_all(3, 2)
    deliver_all(sessions, run_round1(sessions, posts))
    s = sessions[1]
    shares_hex = [bytes(b).hex() for b in s._shares.values()]
    result = s.finish()
    secret_hex = bytes(result.signing_share).hex()
    for text in (repr(s), str(s), repr(result), str(result), f"{result}"):
        assert secret_hex not in text
        assert all(h not in text for h in shares_hex)
        assert "redacted" in text
    for obj in (s, result):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    result.zeroize()
    assert not any(result.signing_share)


def test_culprit_errors_carry_no_secrets() -> None:
    sessions, _posts, boxes, _rng = _box_round()
    expected = sessions[2]._round2_secret
    assert expected is not None
    raw = msgpack.unpackb(boxes[1][2], raw=False)
    raw["box"] = raw["box"][:20] + bytes(len(raw["box"]) - 20)
    with pytest.raises(DkgCulprits) as info:
        sessions[2].on_round2(1, msgpack.packb(raw, use_bin_type=True))
    assert len(str(info.value)) < 200 and "box" in str(info.value)


# ---------------------------------------------------------------- context and start


def test_context_binds_every_field() -> None:
    base = dict(
        cluster_id="c1", request_ref="ops:r1", key_id="k", version=1, members=members(3),
        threshold=2,
    )  # fmt: skip
    ref = dkg_context(**base)
    assert len(ref) == 64
    assert dkg_context(**{**base, "members": list(reversed(members(3)))}) == ref
    variants = [
        {"cluster_id": "c2"},
        {"request_ref": "ops:r2"},
        {"key_id": "k2"},
        {"version": 2},
        {"threshold": 3},
        {"members": [("node-1", 1), ("node-2", 2), ("node-9", 3)]},
        {"members": members(4)},
    ]
    digests = {dkg_context(**{**base, **v}) for v in variants}
    assert ref not in digests and len(digests) == len(variants)


@pytest.mark.parametrize(
    "change",
    [
        {"members": [("node-1", 1), ("node-2", 3)]},
        {"members": [("node-1", 1), ("node-1", 2)]},
        {"members": [("node-1", 1)]},
        {"members": [("node-1", True), ("node-2", 2)]},
        {"threshold": 1},
        {"threshold": 4},
        {"version": 0},
        {"key_id": "bad key"},
        {"cluster_id": ""},
        {"request_ref": "x" * 201},
    ],
)
def test_context_refuses_bad_parameters(change) -> None:
    base = dict(
        cluster_id="c1", request_ref="ops:r1", key_id="k", version=1, members=members(3),
        threshold=2,
    )  # fmt: skip
    with pytest.raises(DkgError):
        dkg_context(**{**base, **change})


@pytest.mark.parametrize(
    ("ctx", "me", "n", "t"),
    [(b"", 1, 3, 2), (b"c", 0, 3, 2), (b"c", 4, 3, 2), (b"c", 1, 3, 4), (b"c", 1, 16, 2),
     (b"c" * 1025, 1, 3, 2), (b"c", 1, 3, 1), (b"c", True, 3, 2)],
)  # fmt: skip
def test_start_refuses_bad_parameters(ctx: bytes, me: int, n: int, t: int) -> None:
    with pytest.raises(DkgError):
        DkgSession.start(ctx, me, n, t, SeededRNG(0))


def test_start_refuses_a_short_rng() -> None:
    with pytest.raises(DkgError, match="random"):
        DkgSession.start(b"ctx", 1, 3, 2, lambda n: b"\x00" * (n - 1))


def test_session_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError):
        DkgSession()


def test_rng_failure_while_sealing_blames_nobody() -> None:
    rng = SeededRNG(3)
    broken = {"now": False}

    def flaky(n: int) -> bytes:
        return b"" if broken["now"] else rng(n)

    ctx = context(3, 2)
    s1, p1 = DkgSession.start(ctx, 1, 3, 2, flaky)
    broken["now"] = True
    others = {i: DkgSession.start(ctx, i, 3, 2, rng)[1] for i in (2, 3)}
    with pytest.raises(DkgError) as info:
        s1.on_round1({1: p1, **others})
    assert not isinstance(info.value, DkgCulprits)
    assert s1.state == "failed"
