"""RFC 9591 Appendix E.1 test vector for FROST(Ed25519, SHA-512), every value checked.

The JSON is the published vector file; nonces are replayed from its randomness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shares import frost, vss
from shares import group as g

VECTOR = Path("/work/shared/vectors/frost/frost-ed25519-sha512.json")


@pytest.fixture(scope="module")
def vec() -> dict:
    return json.loads(VECTOR.read_text())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_config_is_ed25519(vec: dict) -> None:
    assert vec["config"]["name"] == "FROST(Ed25519, SHA-512)"


def test_keygen_values(vec: dict) -> None:
    inp = vec["inputs"]
    cfg = vec["config"]
    t, n = int(cfg["MIN_PARTICIPANTS"]), int(cfg["MAX_PARTICIPANTS"])
    secret = h(inp["group_secret_key"])
    coeffs = [h(c) for c in inp["share_polynomial_coefficients"]]
    assert g.base_mult(secret) == h(inp["group_public_key"])
    shares = frost.secret_share_shard(secret, coeffs, n)
    expected = [(p["identifier"], h(p["participant_share"])) for p in inp["participant_shares"]]
    assert shares == expected
    dealt, group_pk, commitment = frost.trusted_dealer_keygen(secret, n, t, coefficients=coeffs)
    assert dealt == expected and group_pk == h(inp["group_public_key"])
    assert commitment == vss.commit([secret, *coeffs])
    pk, pks = frost.derive_group_info(n, t, commitment)
    assert pk == h(inp["group_public_key"])
    for (i, sk_i), pk_i in zip(shares, pks, strict=True):
        assert frost.vss_verify((i, sk_i), commitment)
        assert g.base_mult(sk_i) == pk_i


def _run_round_one(vec: dict) -> tuple[dict, list]:
    shares = {
        p["identifier"]: h(p["participant_share"]) for p in vec["inputs"]["participant_shares"]
    }
    nonces = {}
    commitment_list = []
    for out in vec["round_one_outputs"]["outputs"]:
        i = out["identifier"]
        hiding = frost.nonce_generate(shares[i], random_bytes=h(out["hiding_nonce_randomness"]))
        binding = frost.nonce_generate(shares[i], random_bytes=h(out["binding_nonce_randomness"]))
        assert hiding == h(out["hiding_nonce"])
        assert binding == h(out["binding_nonce"])
        nonce, comm = frost.commit(
            shares[i],
            hiding_randomness=h(out["hiding_nonce_randomness"]),
            binding_randomness=h(out["binding_nonce_randomness"]),
        )
        assert comm.hiding == h(out["hiding_nonce_commitment"])
        assert comm.binding == h(out["binding_nonce_commitment"])
        nonces[i] = nonce
        commitment_list.append((i, comm.hiding, comm.binding))
    return nonces, commitment_list


def test_round_one(vec: dict) -> None:
    inp = vec["inputs"]
    _, commitment_list = _run_round_one(vec)
    assert frost.participants_from_commitment_list(commitment_list) == inp["participant_list"]
    pk, msg = h(inp["group_public_key"]), h(inp["message"])
    inputs = dict(frost.compute_binding_factor_inputs(pk, commitment_list, msg))
    factors = dict(frost.compute_binding_factors(pk, commitment_list, msg))
    for out in vec["round_one_outputs"]["outputs"]:
        assert inputs[out["identifier"]] == h(out["binding_factor_input"])
        assert factors[out["identifier"]] == h(out["binding_factor"])
        assert frost.H1(h(out["binding_factor_input"])) == h(out["binding_factor"])


def test_round_two_and_aggregate(vec: dict) -> None:
    inp = vec["inputs"]
    pk, msg = h(inp["group_public_key"]), h(inp["message"])
    shares = {p["identifier"]: h(p["participant_share"]) for p in inp["participant_shares"]}
    nonces, commitment_list = _run_round_one(vec)
    sig_shares = []
    for out in vec["round_two_outputs"]["outputs"]:
        i = out["identifier"]
        z = frost.sign(i, shares[i], pk, nonces[i], msg, commitment_list)
        assert z == h(out["sig_share"])
        sig_shares.append(z)
    _, pks = frost.derive_group_info(
        3,
        2,
        vss.commit([h(inp["group_secret_key"]), *map(h, inp["share_polynomial_coefficients"])]),
    )
    for (i, hid, bnd), z in zip(commitment_list, sig_shares, strict=True):
        frost.verify_signature_share(i, pks[i - 1], (hid, bnd), z, commitment_list, pk, msg)
    sig = frost.aggregate(commitment_list, msg, pk, sig_shares)
    assert sig == h(vec["final_output"]["sig"])
    Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
    frost.verify_signature(msg, sig, pk)


def test_group_commitment_and_challenge_match_signature(vec: dict) -> None:
    inp = vec["inputs"]
    pk, msg = h(inp["group_public_key"]), h(inp["message"])
    _, commitment_list = _run_round_one(vec)
    factors = frost.compute_binding_factors(pk, commitment_list, msg)
    r = frost.compute_group_commitment(commitment_list, factors)
    sig = h(vec["final_output"]["sig"])
    assert r == sig[:32]
    # Schnorr equation: z*B == R + c*PK with c the RFC 8032 challenge.
    c = frost.compute_challenge(r, pk, msg)
    assert g.base_mult(sig[32:]) == g.element_add(r, g.scalar_mult(c, pk))
