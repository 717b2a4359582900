"""Threshold decryption: round trips over random (t, n) and subsets; every failure path."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import refresh, repair, shamir, tdec, vss
from shares.errors import (
    DecryptionError,
    EncodingError,
    InvalidElement,
    InvalidParameters,
    InvalidProof,
)
from shares.rng import SeededRNG

AAD = b"key=payments-kek;version=3"
CONTEXT = b"custody/envelope/payments"


def deal(t: int, n: int, seed: int):
    """Trusted-dealer keys: (secret, shares by id, group commitment, verification shares)."""
    rng = SeededRNG(seed)
    secret = g.random_scalar(rng)
    shares, coefficients = shamir.split_secret(secret, t, n, rng)
    commitment = vss.commit(coefficients)
    vshares = {s.identifier: vss.evaluate_commitment(s.identifier, commitment) for s in shares}
    return secret, {s.identifier: s for s in shares}, commitment, vshares


@st.composite
def tdec_case(draw: st.DrawFn):
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    subset = draw(st.lists(st.integers(1, n), min_size=t, max_size=n, unique=True))
    data_key = draw(st.binary(min_size=tdec.MIN_DATA_KEY, max_size=tdec.MAX_DATA_KEY))
    return t, n, subset, data_key, draw(st.integers(0, 2**32))


@settings(max_examples=80)
@given(case=tdec_case(), request_binding=st.binary(max_size=64))
def test_round_trip(case, request_binding: bytes) -> None:
    t, n, subset, data_key, seed = case
    _, shares, commitment, vshares = deal(t, n, seed)
    rng = SeededRNG(seed + 1)
    envelope = tdec.wrap(commitment[0], data_key, AAD, CONTEXT, rng)
    assert len(envelope) == 1 + 32 + 12 + len(data_key) + 16
    partials = [tdec.partial_decrypt(shares[i], envelope, rng, request_binding) for i in subset]
    for p in partials:
        assert tdec.PartialDecryption.from_bytes(p.to_bytes()) == p
    opened = tdec.unwrap(envelope, partials, vshares, t, commitment[0], AAD, CONTEXT,
                         request_binding)
    assert opened == data_key


@pytest.fixture
def wrapped():
    _, shares, commitment, vshares = deal(3, 5, 77)
    rng = SeededRNG(78)
    data_key = bytes(range(32))
    envelope = tdec.wrap(commitment[0], data_key, AAD, CONTEXT, rng)
    partials = [tdec.partial_decrypt(shares[i], envelope, rng) for i in (1, 3, 5)]
    return shares, commitment[0], vshares, data_key, envelope, partials, rng


def test_wrong_aad_fails(wrapped) -> None:
    _, key, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(DecryptionError):
        tdec.unwrap(envelope, partials, vshares, 3, key, AAD + b"x", CONTEXT)


def test_wrong_context_fails(wrapped) -> None:
    _, key, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(DecryptionError):
        tdec.unwrap(envelope, partials, vshares, 3, key, AAD, b"custody/envelope/other")


def test_wrong_group_key_fails(wrapped) -> None:
    _, _, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(DecryptionError):
        tdec.unwrap(envelope, partials, vshares, 3, g.BASEPOINT, AAD, CONTEXT)


@pytest.mark.parametrize("where", [1, 20, 33, 40, 50, -1])
def test_tampered_envelope_fails(wrapped, where: int) -> None:
    # Nodes decrypt the tampered envelope (valid proofs), but it never opens.
    shares, key, vshares, _, envelope, _, rng = wrapped
    tampered = bytearray(envelope)
    tampered[where] ^= 0x01
    tampered = bytes(tampered)
    try:
        partials = [tdec.partial_decrypt(shares[i], tampered, rng) for i in (1, 2, 4)]
    except InvalidElement:
        assert 1 <= where < 33  # the flip made R invalid: refused at parse
        return
    with pytest.raises(DecryptionError):
        tdec.unwrap(tampered, partials, vshares, 3, key, AAD, CONTEXT)


def test_envelope_swapped_after_partials_is_refused(wrapped) -> None:
    # Proofs are bound to the exact envelope: a combiner fed another one rejects them.
    _, key, vshares, data_key, _, partials, rng = wrapped
    other = tdec.wrap(key, data_key, AAD, CONTEXT, rng)
    with pytest.raises(InvalidProof):
        tdec.unwrap(other, partials, vshares, 3, key, AAD, CONTEXT)


def test_bad_partial_names_its_author(wrapped) -> None:
    shares, key, vshares, data_key, envelope, partials, rng = wrapped
    # Node 3 returns a wrong D with a proof for its own (correct) share: proof fails.
    wrong_value = g.element_add(partials[1].value, g.BASEPOINT)
    bad = [dataclasses.replace(p, value=wrong_value) if p.identifier == 3 else p for p in partials]
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, bad, vshares, 3, key, AAD, CONTEXT)
    assert exc.value.culprits == (3,)
    # A node proving with a different secret than its verification share is caught too.
    impostor = shamir.SecretShare(5, g.scalar_add(shares[5].value, g.ONE))
    forged = [tdec.partial_decrypt(impostor, envelope, rng) if p.identifier == 5 else p
              for p in bad]
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, forged, vshares, 3, key, AAD, CONTEXT)
    assert exc.value.culprits == (3, 5)
    # Dropping the culprits and asking other nodes succeeds.
    good = [partials[0], *(tdec.partial_decrypt(shares[i], envelope, rng) for i in (2, 4))]
    assert tdec.unwrap(envelope, good, vshares, 3, key, AAD, CONTEXT) == data_key


def test_proof_bound_to_identifier_and_request(wrapped) -> None:
    _, _key, vshares, _, envelope, partials, _ = wrapped
    relabelled = dataclasses.replace(partials[0], identifier=2)
    with pytest.raises(InvalidProof) as exc:
        tdec.verify_partial(relabelled, envelope, vshares[2])
    assert exc.value.culprits == (2,)
    with pytest.raises(InvalidProof):
        tdec.verify_partial(partials[0], envelope, vshares[1], request=b"another request")
    tdec.verify_partial(partials[0], envelope, vshares[1])


def test_too_few_or_duplicate_partials(wrapped) -> None:
    _, key, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, partials[:2], vshares, 3, key, AAD, CONTEXT)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, [*partials[:2], partials[0]], vshares, 3, key, AAD, CONTEXT)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, partials, {1: vshares[1]}, 3, key, AAD, CONTEXT)


P = 2**255 - 19


@pytest.mark.parametrize(
    "bad_r",
    [
        P.to_bytes(32, "little"),  # y = p: non-canonical encoding of y = 0
        (P + 1).to_bytes(32, "little"),  # non-canonical encoding of the identity
        g.IDENTITY,
        bytes(32),  # small order
        bytes.fromhex(  # a point of order 8 (torsion)
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"
        ),
        g.element_add(g.BASEPOINT, bytes.fromhex(  # B + torsion: on the curve, wrong subgroup
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"
        )),
        b"\x02" + bytes(31),  # y = 2: not on the curve
    ],
)
def test_non_canonical_or_invalid_r_is_refused(wrapped, bad_r: bytes) -> None:
    shares, *_, envelope, _, rng = wrapped
    forged = envelope[:1] + bad_r + envelope[33:]
    with pytest.raises(InvalidElement):
        tdec.parse_envelope(forged)
    with pytest.raises(InvalidElement):
        tdec.partial_decrypt(shares[1], forged, rng)


def test_truncated_and_malformed_envelopes(wrapped) -> None:
    *_, envelope, _, _ = wrapped
    tdec.parse_envelope(envelope)
    for bad in (
        envelope[:-1][: tdec.MIN_ENVELOPE - 1],
        envelope[: tdec.MIN_ENVELOPE - 1],
        b"",
        envelope + bytes(tdec.MAX_ENVELOPE),
        b"\x02" + envelope[1:],
        b"\x00" + envelope[1:],
    ):
        with pytest.raises(EncodingError):
            tdec.parse_envelope(bad)
    with pytest.raises(EncodingError):
        tdec.parse_envelope("not bytes")  # type: ignore[arg-type]


def test_truncated_envelope_within_bounds_does_not_open(wrapped) -> None:
    shares, key, vshares, _, envelope, _, rng = wrapped
    cut = envelope[:-1]  # still >= MIN_ENVELOPE for a 32-byte data key: parses, fails GCM
    partials = [tdec.partial_decrypt(shares[i], cut, rng) for i in (1, 2, 3)]
    with pytest.raises(DecryptionError):
        tdec.unwrap(cut, partials, vshares, 3, key, AAD, CONTEXT)


def test_partial_encoding_is_strict(wrapped) -> None:
    *_, partials, _ = wrapped
    raw = partials[0].to_bytes()
    assert len(raw) == tdec.PARTIAL_SIZE
    for bad in (
        raw[:-1],
        raw + b"\x00",
        b"\x02" + raw[1:],
        raw[:1] + b"\x00" + raw[2:],
        raw[:2] + bytes(32) + raw[34:],  # D of small order
        raw[:34] + b"\xff" * 32 + raw[66:],  # challenge >= L
        raw[:66] + b"\xff" * 32,  # response >= L
    ):
        with pytest.raises(EncodingError):
            tdec.PartialDecryption.from_bytes(bad)


@pytest.mark.parametrize(
    ("data_key", "aad", "context"),
    [
        (b"k" * 15, AAD, CONTEXT),
        (b"k" * 65, AAD, CONTEXT),
        ("k" * 32, AAD, CONTEXT),
        (b"k" * 32, b"a" * (tdec.MAX_AAD + 1), CONTEXT),
        (b"k" * 32, AAD, b"c" * (tdec.MAX_CONTEXT + 1)),
        (b"k" * 32, "aad", CONTEXT),
    ],
)
def test_wrap_validates_inputs(wrapped, data_key, aad, context) -> None:
    _, key, *_ = wrapped
    with pytest.raises(InvalidParameters):
        tdec.wrap(key, data_key, aad, context, SeededRNG(0))


def test_wrap_refuses_an_invalid_public_key() -> None:
    with pytest.raises(InvalidElement):
        tdec.wrap(g.IDENTITY, b"k" * 32, AAD, CONTEXT, SeededRNG(0))


def test_envelopes_are_randomised(wrapped) -> None:
    _, key, _, data_key, envelope, _, rng = wrapped
    again = tdec.wrap(key, data_key, AAD, CONTEXT, rng)
    assert again != envelope
    assert data_key not in envelope and data_key not in again


def test_envelope_survives_refresh_and_repair() -> None:
    """Wrap, refresh all shares, lose node 2 and repair it, then unwrap with new shares."""
    _, shares, commitment, vshares = deal(3, 4, 91)
    rng = SeededRNG(92)
    key = commitment[0]
    data_key = b"D" * 32
    envelope = tdec.wrap(key, data_key, AAD, CONTEXT, rng)
    ids = [1, 2, 3, 4]
    packages, subs = [], []
    for d in ids:
        package, sent = refresh.refresh_round1(d, ids, 3, rng)
        packages.append(package)
        subs.extend(sent.values())
    results = {
        j: refresh.refresh_round2(
            shares[j], ids, packages, [s for s in subs if s.recipient == j], 3, vshares, key
        )
        for j in ids
    }
    new_vshares = results[1].verification_shares
    new = {j: r.share for j, r in results.items()}
    # Node 2 loses its refreshed share; helpers 1, 3, 4 repair it.
    request = repair.RepairRequest(participant=2, helpers=(1, 3, 4), min_participants=3)
    pubs, deltas = [], []
    for i in request.helpers:
        pub, sent = repair.repair_step1(new[i], request, rng)
        pubs.append(pub)
        deltas.extend(sent.values())
    sigmas = [
        repair.repair_step2(j, request, [d for d in deltas if d.recipient == j], pubs, new_vshares)
        for j in request.helpers
    ]
    repaired = repair.repair_step3(request, sigmas, pubs, new_vshares)
    assert repaired == new[2]
    partials = [tdec.partial_decrypt(s, envelope, rng) for s in (repaired, new[3], new[4])]
    assert tdec.unwrap(envelope, partials, new_vshares, 3, key, AAD, CONTEXT) == data_key
    # A partial made with a pre-refresh share is refused against the new verification shares.
    stale = tdec.partial_decrypt(shares[1], envelope, rng)
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, [stale, *partials[1:]], new_vshares, 3, key, AAD, CONTEXT)
    assert exc.value.culprits == (1,)


def test_unwrap_refuses_foreign_objects(wrapped) -> None:
    _, key, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, [*partials[:2], partials[2].to_bytes()], vshares, 3, key, AAD,
                    CONTEXT)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, b"partials", vshares, 3, key, AAD, CONTEXT)


def _pyc_point(encoded: bytes):
    return eddsa.import_public_key(encoded).pointQ


def _pyc_encode(point) -> bytes:
    return ECC.construct(curve="Ed25519", point_x=point.x, point_y=point.y).export_key(
        format="raw"
    )


def test_format_matches_the_documentation_independently() -> None:
    """Open an envelope and check a proof from the documented format alone, with pycryptodome."""
    secret, shares, commitment, vshares = deal(2, 3, 123)
    rng = SeededRNG(124)
    data_key = bytes(range(48))
    envelope = tdec.wrap(commitment[0], data_key, AAD, CONTEXT, rng)
    version, r_enc, nonce, body = envelope[0], envelope[1:33], envelope[33:45], envelope[45:]
    assert version == 1
    s = int.from_bytes(secret, "little")
    shared = _pyc_encode(_pyc_point(r_enc) * s)
    y = bytes(commitment[0])
    info = b"custody/shares/tdec/v1/kek" + len(CONTEXT).to_bytes(4, "big") + CONTEXT + r_enc + y
    key = HKDF(shared, 32, b"", SHA256, context=info)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(envelope[:45] + len(AAD).to_bytes(4, "big") + AAD)
    assert cipher.decrypt_and_verify(body[:-16], body[-16:]) == data_key

    partial = tdec.partial_decrypt(shares[2], envelope, rng, b"req")
    raw = partial.to_bytes()
    assert raw[:2] == b"\x01\x02"
    d_enc, c_enc, z_enc = raw[2:34], raw[34:66], raw[66:98]
    order = 2**252 + 27742317777372353535851937790883648493
    c, z = int.from_bytes(c_enc, "little"), int.from_bytes(z_enc, "little")
    base = _pyc_point(g.BASEPOINT)
    yi = _pyc_point(vshares[2])
    k_b = base * z + (-(yi * c))
    k_r = _pyc_point(r_enc) * z + (-(_pyc_point(d_enc) * c))
    digest = hashlib.sha512(b"custody/shares/tdec/v1/envelope" + envelope).digest()
    transcript = (
        b"custody/shares/tdec/v1/dleq-challenge" + (2).to_bytes(2, "big") + bytes(vshares[2])
        + r_enc + d_enc + _pyc_encode(k_b) + _pyc_encode(k_r) + digest
        + (3).to_bytes(4, "big") + b"req"
    )
    assert int.from_bytes(hashlib.sha512(transcript).digest(), "little") % order == c


@settings(max_examples=40)
@given(case=tdec_case(), data=st.data())
def test_every_bad_partial_is_named(case, data) -> None:
    t, n, subset, data_key, seed = case
    _, shares, commitment, vshares = deal(t, n, seed)
    rng = SeededRNG(seed + 2)
    envelope = tdec.wrap(commitment[0], data_key, AAD, CONTEXT, rng)
    bad = set(data.draw(st.lists(st.sampled_from(subset), min_size=1, unique=True)))
    partials = []
    for i in subset:
        p = tdec.partial_decrypt(shares[i], envelope, rng)
        if i in bad:
            p = dataclasses.replace(p, response=g.scalar_add(p.response, g.ONE))
        partials.append(p)
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, partials, vshares, t, commitment[0], AAD, CONTEXT)
    assert exc.value.culprits == tuple(sorted(bad))
