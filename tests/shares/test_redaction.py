"""Secret-equivalent values never print (issue 9, section 6, item 5).

Each object below holds a secret or something equivalent to one (t partial
decryptions and the public envelope give the data key; sigmas and deltas sum to
shares). Neither repr() nor str() may show the secret bytes in any encoding.
"""

from __future__ import annotations

import pytest

from shares import dkg, frost, gf256, refresh, repair, shamir, tdec, vss
from shares import group as g
from shares.rng import SeededRNG


def _cases():
    rng = SeededRNG(81)
    shares, coefficients = shamir.split_secret(g.random_scalar(rng), 2, 3, rng)
    commitment = vss.commit(coefficients)
    key = commitment[0]
    vshares = {s.identifier: vss.evaluate_commitment(s.identifier, commitment) for s in shares}
    label = tdec.Label("k", 1, b"c")
    envelope = tdec.wrap(key, bytes(range(32)), label, rng)
    partial = tdec.partial_decrypt(shares[0], envelope, key, label, rng)
    request = repair.RepairRequest(3, (1, 2), 2)
    _, deltas = repair.repair_step1(shares[0], request, vshares, key, rng)
    delta = deltas[2]
    sigma = repair.RepairSigma(1, 3, delta.value)
    _, subs = refresh.refresh_round1(1, [1, 2, 3], 2, vshares, key, rng)
    secret1, _ = dkg.part1(1, 3, 2, b"ctx", rng=rng)
    nonces, _ = frost.commit(shares[0].value, rng=rng)
    hiding, binding = bytes(nonces._slot[0][0]), bytes(nonces._slot[0][1])
    key_package = dkg.KeyPackage(1, shares[0].value, vshares[1], key, 2)
    byte_share = gf256.split(b"top secret", 2, 3, rng)[0]
    return [
        ("PartialDecryption", partial, [partial.value]),
        ("SecretShare", shares[0], [shares[0].value]),
        ("RepairDelta", delta, [delta.value]),
        ("RepairSigma", sigma, [sigma.value]),
        ("RefreshSubShare", subs[2], [subs[2].value]),
        ("RefreshResult", refresh.RefreshResult(shares[0], vshares, key), [shares[0].value]),
        ("Round1Secret", secret1, [bytes(c) for c in secret1._coefficients]),
        ("Round2Package", dkg.Round2Package(1, 2, shares[1].value), [shares[1].value]),
        ("SigningNonces", nonces, [hiding, binding]),
        ("KeyPackage", key_package, [shares[0].value]),
        ("ByteShare", byte_share, [byte_share.data]),
    ]


@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_secret_values_do_not_print(name: str) -> None:
    _, obj, secrets = next(c for c in _cases() if c[0] == name)
    shown = repr(obj) + str(obj) + f"{obj}"
    assert "redacted" in shown
    for secret in secrets:
        assert secret.hex() not in shown
        assert repr(secret) not in shown
        assert repr(secret)[2:-1][:24] not in shown  # no escaped fragment either
