"""Threshold decryption (TDH2): round trips, the decryption-oracle attack, every failure path."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import group as g
from shares import refresh, repair, shamir, tdec, vss
from shares.errors import (
    DecryptionError,
    EncodingError,
    InvalidElement,
    InvalidEnvelope,
    InvalidParameters,
    InvalidProof,
    InvalidScalar,
)
from shares.rng import SeededRNG

LABEL = tdec.Label("payments-kek", 3, b"custody/envelope/payments", b"invoice=2024-17")
ORDER = g.ORDER


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


@settings(max_examples=60)
@given(case=tdec_case(), request_binding=st.binary(max_size=64))
def test_round_trip(case, request_binding: bytes) -> None:
    t, n, subset, data_key, seed = case
    _, shares, commitment, vshares = deal(t, n, seed)
    key = commitment[0]
    rng = SeededRNG(seed + 1)
    envelope = tdec.wrap(key, data_key, LABEL, rng)
    assert len(envelope) == 1 + 4 * 32 + 12 + len(data_key) + 16
    tdec.verify_envelope(envelope, key, LABEL)
    partials = [
        tdec.partial_decrypt(shares[i], envelope, key, LABEL, rng, request_binding) for i in subset
    ]
    for p in partials:
        assert tdec.PartialDecryption.from_bytes(p.to_bytes()) == p
    opened = tdec.unwrap(envelope, partials, vshares, t, key, LABEL, request_binding)
    assert opened == data_key


@pytest.fixture
def wrapped():
    _, shares, commitment, vshares = deal(3, 5, 77)
    key = commitment[0]
    rng = SeededRNG(78)
    data_key = bytes(range(32))
    envelope = tdec.wrap(key, data_key, LABEL, rng)
    partials = [tdec.partial_decrypt(shares[i], envelope, key, LABEL, rng) for i in (1, 3, 5)]
    return shares, key, vshares, data_key, envelope, partials, rng


# --- issue 9, section 6, item 1: the decryption oracle ---------------------------------


class Tripwire(bytes):
    """A share value that fails the test the moment anything reads it."""

    def __len__(self) -> int:
        raise AssertionError("the share was read before the envelope was refused")


def _maul(envelope: bytes, a: bytes) -> bytes:
    """R' = a*R, R_bar' = a*R_bar, the victim's proof copied, junk ciphertext."""
    p = tdec.parse_envelope(envelope)
    return tdec.Envelope(
        g.scalar_mult(a, p.ephemeral),
        g.scalar_mult(a, p.ephemeral_bar),
        p.challenge,
        p.response,
        bytes(12),
        bytes(48),
    ).to_bytes()


def test_decryption_oracle_attack_is_refused_before_any_partial(wrapped) -> None:
    """A requester approved for one decryption must not open a victim's envelope.

    The attack (issue 9 section 6 item 1): take the victim's R, submit
    R' = a * R with junk ciphertext under one's own approved label, combine
    the nodes' proven partials into a * r * Y, multiply by 1/a, open the
    victim's envelope. On the v1 scheme every node computed its partial; now
    each refuses the envelope before it reads its share.
    """
    shares, key, _, victim_key, victim, _, rng = wrapped
    attacker = tdec.Label("payments-kek", 3, b"custody/envelope/payments", b"invoice=attacker")
    a = g.random_scalar(rng)
    mauled = _maul(victim, a)
    tripwired = {i: shamir.SecretShare(i, Tripwire(s.value)) for i, s in shares.items()}
    for label in (attacker, LABEL):  # the attacker's own label, or the victim's
        with pytest.raises(InvalidEnvelope):
            tdec.verify_envelope(mauled, key, label)
        for i in (1, 2, 3):
            with pytest.raises(InvalidEnvelope):
                tdec.partial_decrypt(tripwired[i], mauled, key, label, rng)
    # The victim's envelope itself is refused under any label but the victim's...
    with pytest.raises(InvalidEnvelope):
        tdec.partial_decrypt(tripwired[1], victim, key, attacker, rng)
    # ...and the tripwire does fire once an envelope is accepted (the control).
    with pytest.raises(AssertionError, match="share was read"):
        tdec.partial_decrypt(tripwired[1], victim, key, LABEL, rng)

    # Why it matters: had the nodes computed s_i * R' (as v1 did), this opens the victim's key.
    parsed, ids = tdec.parse_envelope(victim), (1, 2, 3)
    mauled_r = g.scalar_mult(a, parsed.ephemeral)
    combined = g.multi_scalar_mult(
        [(shamir.lagrange_coefficient(i, ids), g.scalar_mult(shares[i].value, mauled_r))
         for i in ids]
    )
    shared = g.scalar_mult(g.scalar_inv(a), combined)
    kek = tdec._derive_key(shared, parsed.ephemeral, key, LABEL.digest())
    aad = tdec._aead_data(parsed.ephemeral, parsed.ephemeral_bar, parsed.nonce, LABEL.digest())
    assert AESGCM(kek).decrypt(parsed.nonce, parsed.ciphertext, aad) == victim_key


def test_version_1_envelopes_are_refused_with_a_clear_error(wrapped) -> None:
    shares, key, *_, rng = wrapped
    v1 = b"\x01" + g.BASEPOINT + bytes(12) + bytes(48)  # the old format: 0x01 | R | nonce | ct
    with pytest.raises(EncodingError, match="version 1 is refused"):
        tdec.parse_envelope(v1)
    with pytest.raises(EncodingError, match="version 1 is refused"):
        tdec.partial_decrypt(shares[1], v1, key, LABEL, rng)


@pytest.mark.parametrize(
    "other",
    [
        tdec.Label("payments-kek", 4, LABEL.context, LABEL.aad),
        tdec.Label("payroll-kek", 3, LABEL.context, LABEL.aad),
        tdec.Label("payments-kek", 3, b"custody/envelope/other", LABEL.aad),
        tdec.Label("payments-kek", 3, LABEL.context, LABEL.aad + b"x"),
    ],
    ids=["version", "key", "context", "aad"],
)
def test_wrong_label_is_refused_by_nodes_and_combiner(wrapped, other) -> None:
    shares, key, vshares, _, envelope, partials, rng = wrapped
    with pytest.raises(InvalidEnvelope):
        tdec.partial_decrypt(shares[1], envelope, key, other, rng)
    with pytest.raises(InvalidEnvelope):
        tdec.unwrap(envelope, partials, vshares, 3, key, other)
    assert isinstance(InvalidEnvelope("x"), DecryptionError)


def test_wrong_group_key_is_refused(wrapped) -> None:
    shares, _, vshares, _, envelope, partials, rng = wrapped
    other = g.base_mult(g.scalar_from_int(5))
    with pytest.raises(InvalidEnvelope):
        tdec.partial_decrypt(shares[1], envelope, other, LABEL, rng)
    with pytest.raises(InvalidEnvelope):
        tdec.unwrap(envelope, partials, vshares, 3, other, LABEL)


@pytest.mark.parametrize("where", [1, 40, 70, 100, 130, 135, 150, -1])
def test_tampered_envelope_is_refused_by_every_node(wrapped, where: int) -> None:
    """Any flipped bit: R, R_bar, e, f, nonce, ciphertext or tag. Nobody computes a partial."""
    shares, key, *_, envelope, _, rng = wrapped
    tampered = bytearray(envelope)
    tampered[where] ^= 0x01
    with pytest.raises((InvalidEnvelope, InvalidElement, InvalidScalar)):
        tdec.partial_decrypt(shares[1], bytes(tampered), key, LABEL, rng)


def test_envelope_swapped_after_partials_is_refused(wrapped) -> None:
    # Proofs are bound to the exact envelope: a combiner fed another one rejects them.
    _, key, vshares, data_key, _, partials, rng = wrapped
    other = tdec.wrap(key, data_key, LABEL, rng)
    with pytest.raises(InvalidProof):
        tdec.unwrap(other, partials, vshares, 3, key, LABEL)


def test_bad_partial_names_its_author(wrapped) -> None:
    shares, key, vshares, data_key, envelope, partials, rng = wrapped
    # Node 3 returns a wrong D with a proof for its own (correct) share: proof fails.
    wrong_value = g.element_add(partials[1].value, g.BASEPOINT)
    bad = [dataclasses.replace(p, value=wrong_value) if p.identifier == 3 else p for p in partials]
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, bad, vshares, 3, key, LABEL)
    assert exc.value.culprits == (3,)
    # A node proving with a different secret than its verification share is caught too.
    impostor = shamir.SecretShare(5, g.scalar_add(shares[5].value, g.ONE))
    forged = [tdec.partial_decrypt(impostor, envelope, key, LABEL, rng)
              if p.identifier == 5 else p for p in bad]
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, forged, vshares, 3, key, LABEL)
    assert exc.value.culprits == (3, 5)
    # Dropping the culprits and asking other nodes succeeds.
    good = [partials[0],
            *(tdec.partial_decrypt(shares[i], envelope, key, LABEL, rng) for i in (2, 4))]
    assert tdec.unwrap(envelope, good, vshares, 3, key, LABEL) == data_key


def test_bytes_like_partials_are_combined(wrapped) -> None:
    _, key, vshares, data_key, envelope, partials, _ = wrapped
    loose = [tdec.PartialDecryption(p.identifier, bytearray(p.value), bytearray(p.challenge),
                                    bytearray(p.response)) for p in partials]
    assert tdec.unwrap(envelope, loose, vshares, 3, key, LABEL) == data_key


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
        tdec.unwrap(envelope, partials[:2], vshares, 3, key, LABEL)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, [*partials[:2], partials[0]], vshares, 3, key, LABEL)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, partials, {1: vshares[1]}, 3, key, LABEL)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, partials, vshares, True, key, LABEL)


P = 2**255 - 19
BAD_POINTS = [
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
]


@pytest.mark.parametrize("offset", [1, 33], ids=["R", "R_bar"])
@pytest.mark.parametrize("bad_point", BAD_POINTS)
def test_non_canonical_or_invalid_points_are_refused(wrapped, bad_point: bytes, offset) -> None:
    shares, key, *_, envelope, _, rng = wrapped
    forged = envelope[:offset] + bad_point + envelope[offset + 32:]
    with pytest.raises(InvalidElement):
        tdec.parse_envelope(forged)
    with pytest.raises(InvalidElement):
        tdec.partial_decrypt(shares[1], forged, key, LABEL, rng)


@pytest.mark.parametrize("offset", [65, 97], ids=["e", "f"])
def test_non_canonical_proof_scalars_are_refused(wrapped, offset) -> None:
    *_, envelope, _, _ = wrapped
    with pytest.raises(InvalidScalar):
        tdec.parse_envelope(envelope[:offset] + b"\xff" * 32 + envelope[offset + 32:])


def test_truncated_and_malformed_envelopes(wrapped) -> None:
    *_, envelope, _, _ = wrapped
    tdec.parse_envelope(envelope)
    for bad in (
        envelope[: tdec.MIN_ENVELOPE - 1],
        b"",
        envelope + bytes(tdec.MAX_ENVELOPE),
        b"\x03" + envelope[1:],
        b"\x00" + envelope[1:],
    ):
        with pytest.raises(EncodingError):
            tdec.parse_envelope(bad)
    with pytest.raises(EncodingError):
        tdec.parse_envelope("not bytes")  # type: ignore[arg-type]


def test_truncated_envelope_within_bounds_is_refused(wrapped) -> None:
    shares, key, *_, envelope, _, rng = wrapped
    cut = envelope[:-1]  # still >= MIN_ENVELOPE for a 32-byte data key: parses, proof fails
    tdec.parse_envelope(cut)
    with pytest.raises(InvalidEnvelope):
        tdec.partial_decrypt(shares[1], cut, key, LABEL, rng)


def test_partial_encoding_is_strict(wrapped) -> None:
    *_, partials, _ = wrapped
    raw = partials[0].to_bytes()
    assert len(raw) == tdec.PARTIAL_SIZE and raw[0] == tdec.PARTIAL_VERSION == 2
    for bad in (
        raw[:-1],
        raw + b"\x00",
        b"\x01" + raw[1:],
        raw[:1] + b"\x00" + raw[2:],
        raw[:2] + bytes(32) + raw[34:],  # D of small order
        raw[:34] + b"\xff" * 32 + raw[66:],  # challenge >= L
        raw[:66] + b"\xff" * 32,  # response >= L
    ):
        with pytest.raises(EncodingError):
            tdec.PartialDecryption.from_bytes(bad)


@pytest.mark.parametrize("data_key", [b"k" * 15, b"k" * 65, "k" * 32])
def test_wrap_validates_inputs(wrapped, data_key) -> None:
    _, key, *_ = wrapped
    with pytest.raises(InvalidParameters):
        tdec.wrap(key, data_key, LABEL, SeededRNG(0))
    with pytest.raises(InvalidParameters):
        tdec.wrap(key, b"k" * 32, ("payments-kek", 3, b"", b""), SeededRNG(0))  # type: ignore


@pytest.mark.parametrize(
    "fields",
    [
        ("", 1, b"", b""),
        ("k" * 256, 1, b"", b""),
        (b"key", 1, b"", b""),
        ("k", 0, b"", b""),
        ("k", 2**32, b"", b""),
        ("k", True, b"", b""),
        ("k", 1, b"c" * (tdec.MAX_CONTEXT + 1), b""),
        ("k", 1, "context", b""),
        ("k", 1, b"", b"a" * (tdec.MAX_AAD + 1)),
        ("k", 1, b"", "aad"),
    ],
)
def test_label_validates_its_fields(fields) -> None:
    with pytest.raises(InvalidParameters):
        tdec.Label(*fields)


def test_label_encoding_is_unambiguous() -> None:
    # Moving bytes between fields changes the encoding (every field is length-framed).
    a = tdec.Label("ab", 1, b"c", b"")
    b = tdec.Label("a", 1, b"bc", b"")
    c = tdec.Label("ab", 1, b"", b"c")
    assert len({a.encode(), b.encode(), c.encode()}) == 3
    assert tdec.Label("k", 1, bytearray(b"c"), bytearray(b"a")).context == b"c"


def test_wrap_refuses_an_invalid_public_key() -> None:
    with pytest.raises(InvalidElement):
        tdec.wrap(g.IDENTITY, b"k" * 32, LABEL, SeededRNG(0))


def test_envelopes_are_randomised_and_hedged(wrapped) -> None:
    _, key, _, data_key, envelope, _, rng = wrapped
    again = tdec.wrap(key, data_key, LABEL, rng)
    assert again != envelope
    assert data_key not in envelope and data_key not in again
    # A stuck RNG still gives different ephemeral keys for different data keys.
    stuck = lambda n: b"\x11" * n  # noqa: E731
    one = tdec.parse_envelope(tdec.wrap(key, b"1" * 32, LABEL, stuck))
    two = tdec.parse_envelope(tdec.wrap(key, b"2" * 32, LABEL, stuck))
    assert one.ephemeral != two.ephemeral


def test_second_generator_is_pinned_and_independent() -> None:
    assert tdec.B_BAR.hex() == "e0b9f7ead28293d66680e64db703b20eb1e819b8bc62a0a2151ca2350a4abe8e"
    assert g.hash_to_element(b"custody/shares/tdec/v2/second-generator") == tdec.B_BAR
    assert g.decode_element(bytes(tdec.B_BAR)) == tdec.B_BAR
    assert eddsa.import_public_key(tdec.B_BAR).pointQ * ORDER == ECC.EccPoint(
        0, 1, curve="ed25519"
    )


def test_envelope_survives_refresh_and_repair() -> None:
    """Wrap, refresh all shares, lose node 2 and repair it, then unwrap with new shares."""
    _, shares, commitment, vshares = deal(3, 4, 91)
    rng = SeededRNG(92)
    key = commitment[0]
    data_key = b"D" * 32
    envelope = tdec.wrap(key, data_key, LABEL, rng)
    ids = [1, 2, 3, 4]
    packages, subs = [], []
    for d in ids:
        package, sent = refresh.refresh_round1(d, ids, 3, vshares, key, rng)
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
        pub, sent = repair.repair_step1(new[i], request, new_vshares, key, rng)
        pubs.append(pub)
        deltas.extend(sent.values())
    sigmas = [
        repair.repair_step2(j, request, [d for d in deltas if d.recipient == j], pubs,
                            new_vshares, key)
        for j in request.helpers
    ]
    repaired = repair.repair_step3(request, sigmas, pubs, new_vshares, key)
    assert repaired == new[2]
    partials = [tdec.partial_decrypt(s, envelope, key, LABEL, rng)
                for s in (repaired, new[3], new[4])]
    assert tdec.unwrap(envelope, partials, new_vshares, 3, key, LABEL) == data_key
    # A partial made with a pre-refresh share is refused against the new verification shares.
    stale = tdec.partial_decrypt(shares[1], envelope, key, LABEL, rng)
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, [stale, *partials[1:]], new_vshares, 3, key, LABEL)
    assert exc.value.culprits == (1,)


def test_unwrap_refuses_foreign_objects(wrapped) -> None:
    _, key, vshares, _, envelope, partials, _ = wrapped
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, [*partials[:2], partials[2].to_bytes()], vshares, 3, key, LABEL)
    with pytest.raises(InvalidParameters):
        tdec.unwrap(envelope, b"partials", vshares, 3, key, LABEL)
    with pytest.raises(InvalidParameters):
        tdec.partial_decrypt(("not", "a share"), envelope, key, LABEL, SeededRNG(0))


def _pyc_point(encoded: bytes):
    return eddsa.import_public_key(encoded).pointQ


def _pyc_encode(point) -> bytes:
    return ECC.construct(curve="Ed25519", point_x=point.x, point_y=point.y).export_key(
        format="raw"
    )


def _h(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little") % ORDER


def test_format_matches_the_documentation_independently() -> None:
    """Check the envelope proof, open the envelope and check a partial's proof from the
    documented format alone, with pycryptodome."""
    secret, shares, commitment, vshares = deal(2, 3, 123)
    rng = SeededRNG(124)
    data_key = bytes(range(48))
    envelope = tdec.wrap(commitment[0], data_key, LABEL, rng)
    version, r_enc, rb_enc = envelope[0], envelope[1:33], envelope[33:65]
    e_enc, f_enc, nonce, body = envelope[65:97], envelope[97:129], envelope[129:141], envelope[141:]
    assert version == 2
    y = bytes(commitment[0])
    key_id = LABEL.key_id.encode()
    label = (
        b"custody/shares/tdec/v2/label" + len(key_id).to_bytes(2, "big") + key_id
        + LABEL.version.to_bytes(4, "big") + len(LABEL.context).to_bytes(2, "big")
        + LABEL.context + len(LABEL.aad).to_bytes(4, "big") + LABEL.aad
    )
    label_digest = hashlib.sha512(label).digest()
    # Envelope proof: W = f*B - e*R, W_bar = f*B_bar - e*R_bar, e = H(...).
    base, base_bar = _pyc_point(g.BASEPOINT), _pyc_point(tdec.B_BAR)
    e, f = int.from_bytes(e_enc, "little"), int.from_bytes(f_enc, "little")
    w = base * f + (-(_pyc_point(r_enc) * e))
    w_bar = base_bar * f + (-(_pyc_point(rb_enc) * e))
    assert e == _h(
        b"custody/shares/tdec/v2/envelope-challenge", b"\x02", y, label_digest, r_enc, rb_enc,
        _pyc_encode(w), _pyc_encode(w_bar), nonce, len(body).to_bytes(4, "big"), body,
    )
    # Key derivation and AEAD.
    shared = _pyc_encode(_pyc_point(r_enc) * int.from_bytes(secret, "little"))
    info = b"custody/shares/tdec/v2/kek" + r_enc + y + label_digest
    kek = HKDF(shared, 32, b"", SHA256, context=info)
    cipher = AES.new(kek, AES.MODE_GCM, nonce=nonce)
    cipher.update(b"\x02" + r_enc + rb_enc + nonce + label_digest)
    assert cipher.decrypt_and_verify(body[:-16], body[-16:]) == data_key

    partial = tdec.partial_decrypt(shares[2], envelope, commitment[0], LABEL, rng, b"req")
    raw = partial.to_bytes()
    assert raw[:2] == b"\x02\x02"
    d_enc, c_enc, z_enc = raw[2:34], raw[34:66], raw[66:98]
    c, z = int.from_bytes(c_enc, "little"), int.from_bytes(z_enc, "little")
    yi = _pyc_point(vshares[2])
    k_b = base * z + (-(yi * c))
    k_r = _pyc_point(r_enc) * z + (-(_pyc_point(d_enc) * c))
    digest = hashlib.sha512(b"custody/shares/tdec/v2/envelope" + envelope).digest()
    assert c == _h(
        b"custody/shares/tdec/v2/dleq-challenge", (2).to_bytes(2, "big"), bytes(vshares[2]),
        r_enc, d_enc, _pyc_encode(k_b), _pyc_encode(k_r), digest, (3).to_bytes(4, "big"), b"req",
    )


@settings(max_examples=30)
@given(case=tdec_case(), data=st.data())
def test_every_bad_partial_is_named(case, data) -> None:
    t, n, subset, data_key, seed = case
    _, shares, commitment, vshares = deal(t, n, seed)
    key = commitment[0]
    rng = SeededRNG(seed + 2)
    envelope = tdec.wrap(key, data_key, LABEL, rng)
    bad = set(data.draw(st.lists(st.sampled_from(subset), min_size=1, unique=True)))
    partials = []
    for i in subset:
        p = tdec.partial_decrypt(shares[i], envelope, key, LABEL, rng)
        if i in bad:
            p = dataclasses.replace(p, response=g.scalar_add(p.response, g.ONE))
        partials.append(p)
    with pytest.raises(InvalidProof) as exc:
        tdec.unwrap(envelope, partials, vshares, t, key, LABEL)
    assert exc.value.culprits == tuple(sorted(bad))
