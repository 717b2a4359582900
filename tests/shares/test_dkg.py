"""DKG: round trip into working FROST keys; rogue keys, bad proofs and bad shares name
their culprit; proofs do not replay across identifiers or contexts."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shares import dkg, frost, shamir
from shares import group as g
from shares.errors import (
    EncodingError,
    InvalidCommitment,
    InvalidParameters,
    InvalidProofOfKnowledge,
    InvalidShare,
)
from shares.rng import SeededRNG

CTX = b"cluster=c1|key=k9|version=1"


def run_round1(t: int, n: int, rng, context: bytes = CTX):
    return {i: dkg.part1(i, n, t, context, rng=rng) for i in range(1, n + 1)}


def others(mapping: dict, i: int) -> dict:
    return {j: v for j, v in mapping.items() if j != i}


def run_dkg(t: int, n: int, seed: int):
    rng = SeededRNG(seed)
    r1 = run_round1(t, n, rng)
    packages1 = {i: p for i, (_, p) in r1.items()}
    r2 = {i: dkg.part2(r1[i][0], others(packages1, i)) for i in r1}
    results = {
        i: dkg.part3(r2[i][0], others(packages1, i), {j: r2[j][1][i] for j in r2 if j != i})
        for i in r1
    }
    return results, packages1, rng


@st.composite
def dkg_case(draw: st.DrawFn):
    n = draw(st.integers(2, 7))
    t = draw(st.integers(2, n))
    signers = draw(st.lists(st.integers(1, n), min_size=t, max_size=t, unique=True))
    return t, n, signers, draw(st.integers(0, 2**32))


@settings(max_examples=30, deadline=None)
@given(case=dkg_case())
def test_dkg_round_trip_then_sign(case) -> None:
    t, n, signers, seed = case
    results, packages1, rng = run_dkg(t, n, seed)
    public = results[1][1]
    assert all(pub == public for _, pub in results.values())
    # The group key is the sum of every dealer's C_0, and never a single dealer's.
    expected_pk = packages1[1].commitment[0]
    for i in range(2, n + 1):
        expected_pk = g.element_add(expected_pk, packages1[i].commitment[0])
    assert public.group_public_key == expected_pk
    for i, (key, _) in results.items():
        assert key.identifier == i and key.min_participants == t
        assert g.base_mult(key.signing_share) == public.verifying_shares[i] == key.verifying_share
    # Test-only reconstruction: any t shares give the discrete log of the group key.
    secret = shamir.reconstruct_secret(
        [shamir.SecretShare(i, results[i][0].signing_share) for i in signers], t
    )
    assert g.base_mult(secret) == public.group_public_key
    # And the keys sign without reconstruction.
    round_one = {i: frost.commit(results[i][0].signing_share, rng=rng) for i in signers}
    commitment_list = [
        (i, round_one[i][1].hiding, round_one[i][1].binding) for i in sorted(signers)
    ]
    pk = public.group_public_key
    shares = [
        frost.sign(
            i,
            results[i][0].signing_share,
            pk,
            round_one[i][0],
            CTX,
            commitment_list,
            min_participants=t,
        )
        for i, _, _ in commitment_list
    ]
    sig = frost.aggregate(
        commitment_list, CTX, pk, shares, verifying_shares=public.verifying_shares
    )
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, CTX)


def _round1(t: int = 3, n: int = 4, seed: int = 1):
    rng = SeededRNG(seed)
    r1 = run_round1(t, n, rng)
    return r1, {i: p for i, (_, p) in r1.items()}


def test_bad_proof_of_knowledge_names_the_sender() -> None:
    r1, packages = _round1()
    r, mu = packages[3].proof_of_knowledge
    packages[3] = dataclasses.replace(packages[3], proof_of_knowledge=(r, g.scalar_add(mu, g.ONE)))
    with pytest.raises(InvalidProofOfKnowledge) as info:
        dkg.part2(r1[1][0], others(packages, 1))
    assert info.value.culprits == (3,)
    assert not r1[1][0].used  # nothing dealt, secret intact


def test_rogue_key_is_rejected() -> None:
    """Participant 4 picks C_0 = X - sum(honest C_0) to own the group key; it cannot
    prove knowledge of that C_0's discrete log, whatever proof it reuses."""
    r1, packages = _round1(t=2, n=4)
    x = g.base_mult(g.scalar_from_int(1234567))
    rogue_c0 = x
    for i in (1, 2, 3):
        rogue_c0 = g.element_sub(rogue_c0, packages[i].commitment[0])
    rogue_commitment = (rogue_c0, packages[4].commitment[1])
    for proof in (packages[4].proof_of_knowledge, packages[2].proof_of_knowledge):
        packages[4] = dkg.Round1Package(4, rogue_commitment, proof)
        with pytest.raises(InvalidProofOfKnowledge) as info:
            dkg.part2(r1[1][0], others(packages, 1))
        assert info.value.culprits == (4,)


def test_proof_cannot_be_replayed_under_another_identifier() -> None:
    r1, packages = _round1(t=2, n=3)
    # 3 copies 2's commitment and proof (claiming 2's key as its own contribution).
    packages[3] = dkg.Round1Package(3, packages[2].commitment, packages[2].proof_of_knowledge)
    with pytest.raises(InvalidProofOfKnowledge) as info:
        dkg.part2(r1[1][0], others(packages, 1))
    assert info.value.culprits == (3,)


def test_proof_cannot_be_replayed_into_another_dkg() -> None:
    _, old_packages = _round1(t=2, n=3, seed=5)
    rng = SeededRNG(6)
    r1_new = run_round1(2, 3, rng, context=b"cluster=c1|key=k9|version=2")
    new_packages = {i: p for i, (_, p) in r1_new.items()}
    new_packages[2] = old_packages[2]  # 2 replays its package from version 1
    with pytest.raises(InvalidProofOfKnowledge) as info:
        dkg.part2(r1_new[1][0], others(new_packages, 1))
    assert info.value.culprits == (2,)
    # The same package is fine in its own DKG.
    dkg.verify_proof_of_knowledge(old_packages[2], 2, 3, CTX)
    with pytest.raises(InvalidProofOfKnowledge):  # ...but not with different (t, n)
        dkg.verify_proof_of_knowledge(old_packages[2], 2, 4, CTX)


def test_all_culprits_are_named_at_once() -> None:
    r1, packages = _round1(t=2, n=4)
    for i in (2, 4):
        r, _ = packages[i].proof_of_knowledge
        packages[i] = dataclasses.replace(packages[i], proof_of_knowledge=(r, g.ONE))
    packages[3] = dataclasses.replace(
        packages[3], commitment=(packages[3].commitment[0], g.IDENTITY)
    )
    with pytest.raises(InvalidProofOfKnowledge) as info:
        dkg.part2(r1[1][0], others(packages, 1))
    assert info.value.culprits == (2, 3, 4)


def test_wrong_commitment_length_is_rejected() -> None:
    r1, packages = _round1(t=3, n=4)
    packages[2] = dataclasses.replace(packages[2], commitment=packages[2].commitment[:2])
    with pytest.raises(InvalidProofOfKnowledge) as info:
        dkg.part2(r1[1][0], others(packages, 1))
    assert info.value.culprits == (2,)


def test_invalid_commitment_element_names_the_sender(bad_element: bytes) -> None:
    r1, packages = _round1(t=2, n=3)
    if len(bad_element) != 32:
        with pytest.raises(InvalidCommitment):  # caught by the package constructor
            dkg.Round1Package(
                2, (packages[2].commitment[0], bad_element), packages[2].proof_of_knowledge
            )
        return
    for position in (0, 1):
        commitment = list(packages[2].commitment)
        commitment[position] = bad_element
        bad = dict(packages)
        bad[2] = dataclasses.replace(packages[2], commitment=tuple(commitment))
        with pytest.raises(InvalidCommitment) as one:
            dkg.verify_proof_of_knowledge(bad[2], 2, 3, CTX)
        assert one.value.culprits == (2,)
        with pytest.raises(InvalidProofOfKnowledge) as info:
            dkg.part2(r1[1][0], others(bad, 1))
        assert info.value.culprits == (2,)


def _through_round2(t: int = 3, n: int = 4, seed: int = 2):
    r1, packages = _round1(t, n, seed)
    r2 = {i: dkg.part2(r1[i][0], others(packages, i)) for i in r1}
    return packages, r2


def test_bad_share_names_the_dealer() -> None:
    packages, r2 = _through_round2()
    received = {j: r2[j][1][1] for j in r2 if j != 1}
    good = received[3]
    received[3] = dkg.Round2Package(3, 1, g.scalar_add(good.signing_share, g.ONE))
    with pytest.raises(InvalidShare) as info:
        dkg.part3(r2[1][0], others(packages, 1), received)
    assert info.value.culprits == (3,)
    assert not r2[1][0].used  # can be retried with correct packages (e.g. after a complaint)
    received[3] = good
    key, _ = dkg.part3(r2[1][0], others(packages, 1), received)
    assert key.identifier == 1


def test_share_meant_for_someone_else_names_the_dealer() -> None:
    packages, r2 = _through_round2()
    received = {j: r2[j][1][1] for j in r2 if j != 1}
    received[2] = r2[2][1][3]  # dealer 2's share for participant 3, relabelled
    received[4] = dkg.Round2Package(4, 1, r2[4][1][3].signing_share)
    with pytest.raises(InvalidShare) as info:
        dkg.part3(r2[1][0], others(packages, 1), received)
    assert info.value.culprits == (2, 4)


def test_commitments_cannot_change_between_rounds() -> None:
    packages, r2 = _through_round2()
    received = {j: r2[j][1][1] for j in r2 if j != 1}
    swapped = others(packages, 1)
    swapped[2] = packages[3]
    with pytest.raises(InvalidParameters):
        dkg.part3(r2[1][0], swapped, received)
    fresh, _ = _round1(3, 4, seed=99)
    with pytest.raises(InvalidParameters):
        dkg.part3(r2[1][0], {j: fresh[j][1] for j in (2, 3, 4)}, received)


def test_package_sets_are_checked() -> None:
    r1, packages = _round1(t=2, n=3)
    with pytest.raises(InvalidParameters):
        dkg.part2(r1[1][0], {2: packages[2]})  # missing 3
    with pytest.raises(InvalidParameters):
        dkg.part2(r1[1][0], {1: packages[1], 2: packages[2]})  # own package instead of 3's
    with pytest.raises(InvalidParameters):
        dkg.part2(r1[1][0], {2: packages[2], 3: packages[2]})  # key does not match sender
    dkg.part2(r1[1][0], others(packages, 1))
    with pytest.raises(InvalidParameters):  # round-1 secret is single use
        dkg.part2(r1[1][0], others(packages, 1))


def test_parameters_are_validated() -> None:
    rng = SeededRNG(3)
    with pytest.raises(InvalidParameters):
        dkg.part1(1, 3, 4, CTX, rng=rng)
    with pytest.raises(InvalidParameters):
        dkg.part1(0, 3, 2, CTX, rng=rng)
    with pytest.raises(InvalidParameters):
        dkg.part1(1, 3, 2, b"", rng=rng)
    with pytest.raises(InvalidParameters):
        dkg.part1(1, 3, 2, bytes(dkg.MAX_CONTEXT_SIZE + 1), rng=rng)
    with pytest.raises(InvalidParameters):
        dkg.Round2Package(1, 1, g.ONE)


def test_secrets_are_redacted_and_zeroed() -> None:
    results, _, _ = run_dkg(2, 3, 4)
    key, _ = results[1]
    assert "redacted" in repr(key) and key.signing_share.hex() not in repr(key)
    secret, _ = dkg.part1(1, 3, 2, CTX, rng=SeededRNG(5))
    assert "redacted" in repr(secret)
    coefficient_buffers = list(secret._coefficients)
    secret.zeroize()
    assert all(not any(buf) for buf in coefficient_buffers) and secret.used
    r2 = dkg.Round2Package(1, 2, g.scalar_from_int(77))
    assert "redacted" in repr(r2) and g.scalar_from_int(77).hex() not in repr(r2)
    with pytest.raises(InvalidShare):  # a KeyPackage must be internally consistent
        dataclasses.replace(key, signing_share=g.scalar_add(key.signing_share, g.ONE))


def test_packages_serialize_strictly() -> None:
    results, packages, _ = run_dkg(2, 3, 6)
    r1 = packages[2]
    assert dkg.Round1Package.from_dict(r1.to_dict()) == r1
    public = results[1][1]
    assert dkg.PublicKeyPackage.from_dict(public.to_dict()) == public
    r2 = dkg.Round2Package(1, 2, g.scalar_from_int(5))
    assert dkg.Round2Package.from_dict(r2.to_dict()).signing_share == r2.signing_share
    for data in (
        {**r1.to_dict(), "extra": 1},
        {**r1.to_dict(), "v": 2},
        {**r1.to_dict(), "suite": "FROST-RISTRETTO255-SHA512-v1"},
        {**r1.to_dict(), "kind": "dkg-round2"},
        {**r1.to_dict(), "pok_mu": b"short"},
        {**r1.to_dict(), "identifier": "2"},
    ):
        with pytest.raises(EncodingError):
            dkg.Round1Package.from_dict(data)
    with pytest.raises(EncodingError):
        dkg.PublicKeyPackage.from_dict({**public.to_dict(), "group_public_key": g.IDENTITY})
    with pytest.raises(EncodingError):
        dkg.Round2Package.from_dict({**r2.to_dict(), "recipient": 1})
    with pytest.raises(EncodingError):
        dkg.Round2Package.from_dict([1, 2, 3])  # type: ignore[arg-type]


def test_packages_survive_msgpack() -> None:
    results, packages, _ = run_dkg(3, 4, 7)
    public = results[2][1]
    wire = msgpack.unpackb(msgpack.packb(public.to_dict()))
    assert dkg.PublicKeyPackage.from_dict(wire) == public
    wire1 = msgpack.unpackb(msgpack.packb(packages[3].to_dict()))
    assert dkg.Round1Package.from_dict(wire1) == packages[3]
    dup = public.to_dict()
    dup["verifying_shares"] = [dup["verifying_shares"][0]] * 2 + dup["verifying_shares"][2:]
    with pytest.raises(EncodingError):
        dkg.PublicKeyPackage.from_dict(dup)


@settings(max_examples=150, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "v",
                "suite",
                "kind",
                "identifier",
                "commitment",
                "pok_r",
                "pok_mu",
                "sender",
                "recipient",
                "signing_share",
                "verifying_shares",
                "group_public_key",
            ]
        ),
        st.none()
        | st.integers(-2, 300)
        | st.binary(max_size=40)
        | st.text(max_size=30)
        | st.lists(st.binary(max_size=33) | st.integers(0, 3), max_size=4),
    )
)
def test_garbage_packages_raise_encoding_errors(data: dict) -> None:
    for kind, cls in (
        ("dkg-round1", dkg.Round1Package),
        ("dkg-round2", dkg.Round2Package),
        ("public-key-package", dkg.PublicKeyPackage),
    ):
        try:  # junk may by chance be well formed; then it must round-trip exactly
            package = cls.from_dict({**data, "v": 1, "suite": dkg.SUITE, "kind": kind})
        except EncodingError:
            pass
        else:
            assert cls.from_dict(package.to_dict()) == package
        with pytest.raises(EncodingError):  # no version/suite/kind: always refused
            cls.from_dict({k: v for k, v in data.items() if k not in ("v", "suite", "kind")})


def test_non_contiguous_identifiers() -> None:
    ids, t = [2, 5, 9], 2
    rng = SeededRNG(15)
    r1 = {i: dkg.part1(i, len(ids), t, CTX, rng=rng) for i in ids}
    packages = {i: p for i, (_, p) in r1.items()}
    r2 = {i: dkg.part2(r1[i][0], others(packages, i)) for i in ids}
    results = {
        i: dkg.part3(r2[i][0], others(packages, i), {j: r2[j][1][i] for j in ids if j != i})
        for i in ids
    }
    public = results[5][1]
    assert sorted(public.verifying_shares) == ids
    signers = [2, 9]
    round_one = {i: frost.commit(results[i][0].signing_share, rng=rng) for i in signers}
    commitment_list = [(i, round_one[i][1].hiding, round_one[i][1].binding) for i in signers]
    pk = public.group_public_key
    sig = frost.aggregate(
        commitment_list,
        b"m",
        pk,
        [
            frost.sign(i, results[i][0].signing_share, pk, round_one[i][0], b"m", commitment_list)
            for i in signers
        ],
    )
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, b"m")
