"""FROST(Ed25519, SHA-512) properties and every detection path.

Round trip: any signer set of size >= t yields a signature that `cryptography`
verifies as plain Ed25519. Negative paths: bad signature shares name their
signer, bad commitments name their sender, nonces refuse reuse.
"""

from __future__ import annotations

import copy
import os
import pickle

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import frost, vss
from shares import group as g
from shares.errors import (
    IncorrectCommitment,
    InvalidCommitment,
    InvalidElement,
    InvalidParameters,
    InvalidScalar,
    InvalidSignature,
    InvalidSignatureShare,
    NonceReuse,
    SharesError,
)
from shares.rng import SeededRNG

MSG = b"pay 100 to alice, request 7f3a"


def keygen(t: int, n: int, seed: int):
    rng = SeededRNG(seed)
    shares, pk, commitment = frost.trusted_dealer_keygen(g.random_scalar(rng), n, t, rng=rng)
    _, pks = frost.derive_group_info(n, t, commitment)
    return dict(shares), pk, {i: pks[i - 1] for i in range(1, n + 1)}, rng


def round_one(shares: dict, signers: list[int], rng):
    out = {i: frost.commit(shares[i], rng=rng) for i in signers}
    commitment_list = [(i, out[i][1].hiding, out[i][1].binding) for i in sorted(signers)]
    return {i: out[i][0] for i in signers}, commitment_list


def sign_all(shares, pk, nonces, commitment_list, msg=MSG):
    return [
        frost.sign(i, shares[i], pk, nonces[i], msg, commitment_list) for i, _, _ in commitment_list
    ]


@st.composite
def signing_case(draw: st.DrawFn):
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    signers = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    msg = draw(st.binary(max_size=200))
    return t, n, signers, msg, draw(st.integers(0, 2**32))


@settings(max_examples=80, deadline=None)
@given(case=signing_case())
def test_any_signer_set_of_size_t_or_more_produces_ed25519_signature(case) -> None:
    t, n, signers, msg, seed = case
    shares, pk, pks, rng = keygen(t, n, seed)
    nonces, commitment_list = round_one(shares, signers, rng)
    sig_shares = sign_all(shares, pk, nonces, commitment_list, msg)
    for (i, hid, bnd), z in zip(commitment_list, sig_shares, strict=True):
        frost.verify_signature_share(i, pks[i], (hid, bnd), z, commitment_list, pk, msg)
    sig = frost.aggregate(commitment_list, msg, pk, sig_shares, verifying_shares=pks)
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    with pytest.raises(CryptoInvalidSignature):
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg + b"!")


def test_fewer_than_t_signers_cannot_sign() -> None:
    shares, pk, pks, rng = keygen(3, 5, 1)
    nonces, commitment_list = round_one(shares, [1, 4], rng)
    sig_shares = sign_all(shares, pk, nonces, commitment_list)
    # Each share is honest, so there is no culprit, but the signature is invalid.
    with pytest.raises(InvalidSignature) as info:
        frost.aggregate(commitment_list, MSG, pk, sig_shares, verifying_shares=pks)
    assert not isinstance(info.value, InvalidSignatureShare)


def test_sign_enforces_min_participants() -> None:
    shares, pk, _, rng = keygen(3, 5, 2)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    with pytest.raises(InvalidParameters):
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list, min_participants=3)
    assert not nonces[1].used  # rejected before the nonces were consumed


@pytest.mark.parametrize("bad", [[2], [1, 3]])
def test_bad_signature_shares_are_identified(bad: list[int]) -> None:
    shares, pk, pks, rng = keygen(3, 4, 3)
    nonces, commitment_list = round_one(shares, [1, 2, 3], rng)
    sig_shares = sign_all(shares, pk, nonces, commitment_list)
    for i in bad:
        sig_shares[i - 1] = g.scalar_add(sig_shares[i - 1], g.ONE)
    with pytest.raises(InvalidSignatureShare) as info:
        frost.aggregate(commitment_list, MSG, pk, sig_shares, verifying_shares=pks)
    assert list(info.value.culprits) == bad
    with pytest.raises(InvalidSignature):  # without verifying shares: no culprit search
        frost.aggregate(commitment_list, MSG, pk, sig_shares)
    for (i, hid, bnd), z in zip(commitment_list, sig_shares, strict=True):
        if i in bad:
            with pytest.raises(InvalidSignatureShare) as one:
                frost.verify_signature_share(i, pks[i], (hid, bnd), z, commitment_list, pk, MSG)
            assert one.value.culprits == (i,)
        else:
            frost.verify_signature_share(i, pks[i], (hid, bnd), z, commitment_list, pk, MSG)


def test_share_made_with_wrong_key_is_identified() -> None:
    shares, pk, pks, rng = keygen(2, 3, 4)
    nonces, commitment_list = round_one(shares, [2, 3], rng)
    z2 = frost.sign(2, shares[2], pk, nonces[2], MSG, commitment_list)
    z3 = frost.sign(3, shares[1], pk, nonces[3], MSG, commitment_list)  # 3 signs with 1's share
    with pytest.raises(InvalidSignatureShare) as info:
        frost.aggregate(commitment_list, MSG, pk, [z2, z3], verifying_shares=pks)
    assert info.value.culprits == (3,)


def test_non_canonical_signature_share_is_identified() -> None:
    shares, pk, pks, rng = keygen(2, 3, 5)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    sig_shares = sign_all(shares, pk, nonces, commitment_list)
    sig_shares[1] = g.ORDER.to_bytes(32, "little")
    with pytest.raises(InvalidSignatureShare) as info:
        frost.aggregate(commitment_list, MSG, pk, sig_shares)
    assert info.value.culprits == (2,)
    with pytest.raises(InvalidSignatureShare):
        frost.verify_signature_share(
            2, pks[2], commitment_list[1][1:], sig_shares[1], commitment_list, pk, MSG
        )


@pytest.mark.parametrize("position", ["hiding", "binding"])
def test_invalid_commitment_names_its_sender(bad_element: bytes, position: str) -> None:
    shares, pk, pks, rng = keygen(2, 3, 6)
    nonces, commitment_list = round_one(shares, [1, 3], rng)
    i, hid, bnd = commitment_list[1]
    commitment_list[1] = (i, bad_element, bnd) if position == "hiding" else (i, hid, bad_element)
    with pytest.raises(InvalidCommitment) as info:
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    assert info.value.culprits == (3,)
    assert isinstance(info.value, InvalidElement)
    with pytest.raises(InvalidCommitment) as agg:
        frost.aggregate(commitment_list, MSG, pk, [g.ONE, g.ONE], verifying_shares=pks)
    assert agg.value.culprits == (3,)
    with pytest.raises(InvalidCommitment):
        factors = frost.compute_binding_factors(pk, commitment_list, MSG)
        frost.compute_group_commitment(commitment_list, factors)


def test_nonces_are_single_use() -> None:
    shares, pk, _, rng = keygen(2, 3, 7)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    assert nonces[1].used
    with pytest.raises(NonceReuse):
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    with pytest.raises(NonceReuse):
        frost.sign(1, shares[1], pk, nonces[1], b"another message", commitment_list)
    with pytest.raises(NonceReuse):
        nonces[1].take()


def test_nonces_are_redacted_and_not_copyable() -> None:
    nonce, _ = frost.commit(g.scalar_from_int(42), rng=SeededRNG(8))
    text, shown = repr(nonce), str(nonce)
    hiding, binding = nonce.take()
    for secret in (hiding, binding):
        assert secret.hex() not in text + shown and repr(secret) not in text + shown
    assert "redacted" in text
    nonce, _ = frost.commit(g.scalar_from_int(42), rng=SeededRNG(8))
    with pytest.raises(TypeError):
        pickle.dumps(nonce)
    with pytest.raises(TypeError):
        copy.deepcopy(nonce)
    nonce.zeroize()
    with pytest.raises(NonceReuse):
        nonce.take()


def test_altered_own_commitment_is_refused_before_nonce_use() -> None:
    shares, pk, _, rng = keygen(2, 3, 9)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    i, hid, bnd = commitment_list[0]
    commitment_list[0] = (i, bnd, hid)  # coordinator swaps signer 1's commitments
    with pytest.raises(IncorrectCommitment):
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    assert not nonces[1].used
    with pytest.raises(IncorrectCommitment):  # signer 1 left out entirely
        frost.sign(1, shares[1], pk, nonces[1], MSG, [commitment_list[1], (3, hid, bnd)])


def test_commitment_list_shape_is_enforced() -> None:
    shares, pk, _, rng = keygen(2, 3, 10)
    nonces, commitment_list = round_one(shares, [1, 2, 3], rng)
    cases = [
        list(reversed(commitment_list)),  # not sorted
        [commitment_list[0], commitment_list[0]],  # duplicate
        commitment_list[:1],  # a single signer
        [(0, *commitment_list[0][1:]), *commitment_list[1:]],  # identifier 0
        [commitment_list[0][:2], *commitment_list[1:]],  # short row
        b"not a list",
    ]
    for case in cases:
        with pytest.raises(InvalidParameters):
            frost.sign(1, shares[1], pk, nonces[1], MSG, case)
    assert not nonces[1].used
    with pytest.raises(InvalidCommitment):  # wrong-length element is its sender's fault
        frost.sign(1, shares[1], pk, nonces[1], MSG, [*commitment_list[:2], (3, b"x", b"y")])


def test_other_inputs_are_validated() -> None:
    shares, pk, pks, rng = keygen(2, 3, 11)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    with pytest.raises(InvalidParameters):
        frost.sign(1, shares[1], pk, nonces[1], bytes(frost.MAX_MESSAGE_SIZE + 1), commitment_list)
    with pytest.raises(InvalidScalar):
        frost.sign(1, b"\xff" * 32, pk, nonces[1], MSG, commitment_list)
    with pytest.raises(InvalidElement):
        frost.sign(1, shares[1], g.IDENTITY, nonces[1], MSG, commitment_list)
    with pytest.raises(InvalidParameters):
        frost.sign(1, shares[1], pk, (b"", b""), MSG, commitment_list)  # type: ignore[arg-type]
    assert not nonces[1].used
    with pytest.raises(InvalidParameters):
        frost.aggregate(commitment_list, MSG, pk, [g.ONE])
    with pytest.raises(InvalidSignature):
        frost.verify_signature(MSG, bytes(63), pk)
    with pytest.raises(InvalidParameters):
        frost.nonce_generate(shares[1])
    with pytest.raises(InvalidParameters):
        frost.nonce_generate(shares[1], random_bytes=bytes(31))
    with pytest.raises(InvalidParameters):
        frost.binding_factor_for_participant([(1, g.ONE)], 2)
    with pytest.raises(InvalidParameters):
        frost.verify_signature_share(
            3, pks[3], commitment_list[0][1:], g.ONE, commitment_list, pk, MSG
        )


def test_hashes_are_domain_separated() -> None:
    m = b"same input"
    outputs = {frost.H1(m), frost.H3(m), frost.H4(m)[:32], frost.H5(m)[:32], frost.H2(m)}
    assert len(outputs) == 5
    assert frost.H2(m) == g.scalar_reduce(__import__("hashlib").sha512(m).digest())


def test_nonce_generation_is_hedged() -> None:
    """Same randomness with a different secret gives a different nonce, and vice versa."""
    r = bytes(range(32))
    a = frost.nonce_generate(g.scalar_from_int(1), random_bytes=r)
    b = frost.nonce_generate(g.scalar_from_int(2), random_bytes=r)
    c = frost.nonce_generate(g.scalar_from_int(1), random_bytes=bytes(32))
    assert len({a, b, c}) == 3


def test_trusted_dealer_outputs_are_consistent() -> None:
    rng = SeededRNG(12)
    secret = g.random_scalar(rng)
    shares, pk, commitment = frost.trusted_dealer_keygen(secret, 5, 3, rng=rng)
    assert pk == g.base_mult(secret) and len(commitment) == 3
    for share in shares:
        assert frost.vss_verify(share, commitment)
    assert not frost.vss_verify((1, shares[1][1]), commitment)
    assert vss.evaluate_commitment(4, commitment) == g.base_mult(shares[3][1])
    with pytest.raises(InvalidScalar):
        frost.trusted_dealer_keygen(g.ZERO, 3, 2, rng=rng)
    with pytest.raises(InvalidParameters):
        frost.trusted_dealer_keygen(secret, 3, 4, rng=rng)
    with pytest.raises(InvalidParameters):
        frost.derive_group_info(5, 2, commitment)


junk = st.recursive(
    st.none() | st.integers(-3, 300) | st.binary(max_size=40) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner, inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(commitment_list=junk, sig_shares=junk)
def test_garbage_inputs_raise_only_shares_errors(commitment_list, sig_shares) -> None:
    """Parsing is an attack surface: malformed input gets a SharesError, never a crash."""
    shares, pk, pks, rng = keygen(2, 3, 13)
    nonces, _ = round_one(shares, [1, 2], rng)
    with pytest.raises(SharesError):
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    with pytest.raises(SharesError):
        frost.aggregate(commitment_list, MSG, pk, sig_shares, verifying_shares=pks)
    with pytest.raises(SharesError):
        frost.verify_signature_share(1, pks[1], sig_shares, g.ONE, commitment_list, pk, MSG)
    try:  # binding factors need only the list's shape (RFC 9591 4.4), so junk may pass
        factors = frost.compute_binding_factors(pk, commitment_list, MSG)
    except SharesError:
        return
    assert [i for i, _ in factors] == [row[0] for row in commitment_list]


def test_msgpack_shaped_commitment_list_is_accepted() -> None:
    """Lists instead of tuples (as msgpack decodes them) work end to end."""
    shares, pk, pks, rng = keygen(2, 3, 14)
    nonces, commitment_list = round_one(shares, [1, 3], rng)
    wire = msgpack.unpackb(msgpack.packb([list(row) for row in commitment_list]))
    sig_shares = [frost.sign(i, shares[i], pk, nonces[i], MSG, wire) for i, _, _ in wire]
    sig = frost.aggregate(wire, MSG, pk, sig_shares, verifying_shares=pks)
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, MSG)


def test_rfc_helpers_validate_their_inputs() -> None:
    shares, pk, _, rng = keygen(2, 3, 16)
    _, commitment_list = round_one(shares, [1, 2], rng)
    with pytest.raises(InvalidParameters):
        frost.compute_group_commitment(commitment_list, [(1, g.ONE, g.ONE)])
    with pytest.raises(InvalidScalar):
        frost.compute_group_commitment(commitment_list, [(1, b"\xff" * 32), (2, g.ONE)])
    with pytest.raises(InvalidParameters):  # a participant without a binding factor
        frost.compute_group_commitment(commitment_list, [(1, g.ONE)])
    with pytest.raises(InvalidElement):
        frost.compute_challenge(b"short", pk, MSG)
    with pytest.raises(InvalidScalar):
        frost.SigningNonces(g.ZERO, g.ONE)
    assert frost.encode_group_commitment_list(commitment_list) == b"".join(
        i.to_bytes(32, "little") + hid + bnd for i, hid, bnd in commitment_list
    )


def test_nonce_buffers_are_zeroed_after_use() -> None:
    nonce, _ = frost.commit(g.scalar_from_int(7), rng=SeededRNG(17))
    hiding_buf, binding_buf = nonce._slot[0]
    hiding, binding = nonce.take()
    assert hiding != g.ZERO and binding != g.ZERO
    assert not any(hiding_buf) and not any(binding_buf)
    abandoned, _ = frost.commit(g.scalar_from_int(7), rng=SeededRNG(18))
    bufs = abandoned._slot[0]
    abandoned.zeroize()
    assert abandoned.used and not any(bufs[0]) and not any(bufs[1])


def test_every_bad_commitment_is_named(small_order_points: list[bytes]) -> None:
    shares, pk, _, rng = keygen(2, 4, 19)
    nonces, commitment_list = round_one(shares, [1, 2, 3, 4], rng)
    commitment_list[1] = (2, small_order_points[4], commitment_list[1][2])
    commitment_list[3] = (4, commitment_list[3][1], g.IDENTITY)
    with pytest.raises(InvalidCommitment) as info:
        frost.sign(1, shares[1], pk, nonces[1], MSG, commitment_list)
    assert info.value.culprits == (2, 4)


def test_trusted_dealer_needs_randomness_or_coefficients() -> None:
    with pytest.raises(InvalidParameters):
        frost.trusted_dealer_keygen(g.ONE, 3, 2)
    with pytest.raises(InvalidParameters):
        frost.trusted_dealer_keygen(g.ONE, 3, 3, coefficients=[g.ONE])
    with pytest.raises(InvalidScalar):
        frost.trusted_dealer_keygen(g.ONE, 3, 2, coefficients=[b"\xff" * 32])


# --- issue 9, section 6, item 6: bytes-like shares take the culprit path ------------------


def test_bad_bytearray_share_is_named_not_a_type_error() -> None:
    shares, pk, pks, rng = keygen(2, 3, 71)
    nonces, commitment_list = round_one(shares, [1, 2], rng)
    z = sign_all(shares, pk, nonces, commitment_list)
    good = frost.aggregate(commitment_list, MSG, pk, [bytearray(x) for x in z],
                           verifying_shares={i: bytearray(v) for i, v in pks.items()})
    Ed25519PublicKey.from_public_bytes(pk).verify(good, MSG)
    z[1] = g.scalar_add(z[1], g.ONE)
    with pytest.raises(InvalidSignatureShare) as exc:
        frost.aggregate(commitment_list, MSG, pk, [bytearray(x) for x in z], verifying_shares=pks)
    assert exc.value.culprits == (2,)


# --- item 7: hedged nonce randomness -------------------------------------------------------


def _stuck(n: int) -> bytes:
    """An RNG that returns the same bytes every time (a restored snapshot, a broken source)."""
    return b"\x42" * n


def test_repeating_rng_still_gives_fresh_nonces() -> None:
    """Two signings of different messages with an RNG that repeats: different nonces.

    Before the hedge both nonces were H3(same bytes || sk): identical commitments
    (even hiding == binding), and two signature shares on different messages
    with the same nonces reveal the signing share.
    """
    shares, pk, pks, _ = keygen(2, 3, 72)
    sessions = []
    for msg in (b"pay 100 to alice", b"pay 100 to mallory"):
        nonces, commitment_list = round_one(shares, [1, 2], _stuck)
        z = sign_all(shares, pk, nonces, commitment_list, msg)
        sig = frost.aggregate(commitment_list, msg, pk, z, verifying_shares=pks)
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        sessions.append(commitment_list)
    points = [c for session in sessions for _, hid, bnd in session for c in (hid, bnd)]
    assert len(set(points)) == len(points)  # no nonce repeats, across or within signings


def test_nonce_generate_is_the_rfc_with_explicit_randomness() -> None:
    sk = g.scalar_from_int(7)
    rand = bytes(range(32))
    expected = frost.H3(rand + sk)
    assert frost.nonce_generate(sk, random_bytes=rand) == expected
    assert frost.nonce_generate(sk, rng=lambda n: rand[:n]) != expected  # hedged
    with pytest.raises(SharesError):  # a short read is refused, not hashed
        frost.nonce_generate(sk, rng=lambda n: rand[: n - 1])


def test_forked_process_gets_its_own_hedge() -> None:
    """A cloned process with the same RNG state must not produce the same nonces."""
    sk = g.scalar_from_int(9)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same memory, same stuck RNG
        try:
            os.close(read_fd)
            os.write(write_fd, frost.nonce_generate(sk, rng=_stuck))
        finally:
            os._exit(0)
    os.close(write_fd)
    mine = frost.nonce_generate(sk, rng=_stuck)
    with os.fdopen(read_fd, "rb") as pipe:
        theirs = pipe.read()
    os.waitpid(pid, 0)
    assert len(theirs) == 32 and theirs != mine
