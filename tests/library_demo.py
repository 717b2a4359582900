"""The threshold cryptography of the custody cluster in one process, end to end (a test).

This runs the library among three
participants in one process, on the system CSPRNG:

1. distributed key generation (no dealer: the group secret never exists anywhere),
2. a 2-of-3 FROST signature, verified as a plain Ed25519 signature by an
   independent verifier (`cryptography`),
3. a cheating signer caught and named,
4. envelope encryption to the group key (TDH2: the envelope carries a proof bound
   to its label) and a 2-of-3 threshold decryption with DLEQ proofs; an envelope
   mauled into a decryption oracle and a wrong label are refused.

It prints public values only: no share, nonce or data key is ever printed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shares import dkg, frost, tdec
from shares import group as g
from shares.errors import DecryptionError, InvalidEnvelope, InvalidSignatureShare
from shares.shamir import SecretShare

T = TypeVar("T")

N, T_ = 3, 2
CONTEXT = b"custody-demo/cluster=demo/key=release-signing/version=1"


def _step(title: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    print(f"  {title:<58} {1000 * (time.perf_counter() - start):7.2f} ms")
    return result


def _run_dkg(rng: g.RandomSource) -> tuple[dict[int, dkg.KeyPackage], dkg.PublicKeyPackage]:
    ids = range(1, N + 1)
    round1 = {i: dkg.part1(i, N, T_, CONTEXT, rng=rng) for i in ids}
    round2 = {
        i: dkg.part2(round1[i][0], {j: round1[j][1] for j in ids if j != i}) for i in ids
    }
    keys: dict[int, dkg.KeyPackage] = {}
    publics: list[dkg.PublicKeyPackage] = []
    for i in ids:
        received = {j: round2[j][1][i] for j in ids if j != i}
        keys[i], public = dkg.part3(
            round2[i][0], {j: round1[j][1] for j in ids if j != i}, received
        )
        publics.append(public)
    if any(p != publics[0] for p in publics):
        raise SystemExit("demo: participants disagree on the DKG outcome")
    return keys, publics[0]


def _frost_sign(
    keys: dict[int, dkg.KeyPackage], signers: list[int], message: bytes, rng: g.RandomSource,
    tamper: int | None = None,
) -> bytes:
    group_key = keys[signers[0]].group_public_key
    nonces, commitments = {}, []
    for i in signers:
        nonces[i], comm = frost.commit(keys[i].signing_share, rng=rng)
        commitments.append((i, comm.hiding, comm.binding))
    shares = []
    for i in signers:
        z = frost.sign(
            i, keys[i].signing_share, group_key, nonces[i], message, commitments,
            min_participants=keys[i].min_participants,
        )
        if i == tamper:
            z = g.scalar_add(z, g.ONE)
        shares.append(z)
    verifying = {i: keys[i].verifying_share for i in signers}
    return frost.aggregate(commitments, message, group_key, shares, verifying_shares=verifying)


def main(rng: g.RandomSource = os.urandom) -> int:
    print(f"custody demo: {N} participants, threshold {T_}\n")

    print("1. Distributed key generation (Pedersen DKG with proofs of knowledge)")
    keys, public = _step("3 participants, 2 rounds, shares verified (Feldman)",
                         lambda: _run_dkg(rng))
    group_key = public.group_public_key
    print(f"     group public key  {group_key.hex()}")
    for i, share in sorted(public.verifying_shares.items()):
        print(f"     verifying share {i}  {share.hex()}")

    print("\n2. FROST(Ed25519, SHA-512) signing by participants 1 and 3")
    message = b"release v1.4.2 sha256=9f2c...e1"
    signature = _step("commit, sign, aggregate, verify (RFC 9591)",
                      lambda: _frost_sign(keys, [1, 3], message, rng))
    print(f"     signature  {signature.hex()}")
    _step("independent check: cryptography Ed25519 verify",
          lambda: Ed25519PublicKey.from_public_bytes(group_key).verify(signature, message))
    print("     -> a standard Ed25519 signature; no node ever held the key")

    print("\n3. A cheating signer")
    try:
        _frost_sign(keys, [2, 3], message, rng, tamper=2)
        print("     !! tampered share was accepted")
        return 1
    except InvalidSignatureShare as exc:
        print(f"     caught: {exc}")

    print("\n4. Envelope encryption to the group key, 2-of-3 threshold decryption (TDH2)")
    data_key = rng(32)
    label = tdec.Label("payments-kek", 1, b"custody-demo/envelope/v2", b"context=invoices")
    envelope = _step("wrap a 32-byte data key (ECDH, HKDF, AES-256-GCM, proof)",
                     lambda: tdec.wrap(group_key, data_key, label, rng))
    print(f"     envelope  {len(envelope)} bytes")
    partials = _step(
        "participants 2, 3: check envelope, partials + DLEQ proofs",
        lambda: [tdec.partial_decrypt(SecretShare(i, keys[i].signing_share), envelope,
                                      group_key, label, rng) for i in (2, 3)],
    )
    opened = _step(
        "combiner: verify proofs, combine, unwrap",
        lambda: tdec.unwrap(envelope, partials, public.verifying_shares, T_, group_key, label),
    )
    if opened != data_key:
        print("     !! unwrapped key differs")
        return 1
    print("     -> data key recovered intact (not printed)")
    parsed = tdec.parse_envelope(envelope)
    two = g.scalar_from_int(2)
    mauled = tdec.Envelope(g.scalar_mult(two, parsed.ephemeral),
                           g.scalar_mult(two, parsed.ephemeral_bar), parsed.challenge,
                           parsed.response, parsed.nonce, parsed.ciphertext).to_bytes()
    try:
        tdec.partial_decrypt(SecretShare(2, keys[2].signing_share), mauled, group_key, label, rng)
        print("     !! a mauled envelope (R' = 2R) got a partial decryption")
        return 1
    except InvalidEnvelope:
        print("     mauled envelope (R' = 2R): refused before any partial is computed")
    try:
        tdec.unwrap(envelope, partials, public.verifying_shares, T_, group_key,
                    tdec.Label("payments-kek", 2, label.context, label.aad))
        print("     !! wrong label was accepted")
        return 1
    except DecryptionError:
        print("     wrong label (version=2): refused")

    print("\ndemo complete: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
