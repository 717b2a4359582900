"""Benchmark: a complete FROST(Ed25519, SHA-512) signing vs one libsodium Ed25519 signature.

One "complete signing" is what a cluster does for one request, all in this
process: every signer's `commit` (round one), every signer's `sign` (round two,
each validating the others' commitments as it would after receiving them), the
coordinator's `aggregate` (which validates all commitments, sums the shares and
verifies the resulting signature with libsodium, as RFC 9591 section 5.3
advises). Keys come from a trusted-dealer split outside the timed region.

The reference is `nacl.signing.SigningKey.sign` on the same message. Both are
timed in the same run, interleaved per round, and reported as medians and ratio.

Run: .venv/bin/python benchmarks/frost_sign.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.signing

from shares import frost
from shares import group as g

MESSAGE = b"release artifact sha512 digest: " + bytes(64)


def _keys(t: int, n: int) -> tuple[list[tuple[int, bytes]], bytes]:
    shares, pk, _ = frost.trusted_dealer_keygen(g.random_scalar(os.urandom), n, t, rng=os.urandom)
    return shares, pk


def _frost_once(signers: list[tuple[int, bytes]], pk: bytes) -> bytes:
    round_one = {i: frost.commit(sk, rng=os.urandom) for i, sk in signers}
    commitment_list = [(i, c.hiding, c.binding) for i, (_, c) in sorted(round_one.items())]
    sig_shares = [
        frost.sign(i, sk, pk, round_one[i][0], MESSAGE, commitment_list) for i, sk in signers
    ]
    return frost.aggregate(commitment_list, MESSAGE, pk, sig_shares)


def _phases(signers: list[tuple[int, bytes]], pk: bytes) -> tuple[float, float, float]:
    """(all commits, all signs, aggregate incl. verification) of one signing, in seconds."""
    t0 = time.perf_counter()
    round_one = {i: frost.commit(sk, rng=os.urandom) for i, sk in signers}
    t1 = time.perf_counter()
    commitment_list = [(i, c.hiding, c.binding) for i, (_, c) in sorted(round_one.items())]
    sig_shares = [
        frost.sign(i, sk, pk, round_one[i][0], MESSAGE, commitment_list) for i, sk in signers
    ]
    t2 = time.perf_counter()
    frost.aggregate(commitment_list, MESSAGE, pk, sig_shares)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()

    ref_key = nacl.signing.SigningKey.generate()
    configs = {}
    for t, n in ((2, 3), (3, 5)):
        shares, pk = _keys(t, n)
        signers = sorted(shares)[:t]
        # Sanity: the output is a standard Ed25519 signature.
        sig = _frost_once(signers, pk)
        nacl.signing.VerifyKey(pk).verify(MESSAGE, sig)
        configs[(t, n)] = (signers, pk)

    samples: dict[str, list[float]] = {"ed25519": [], "2-of-3": [], "3-of-5": []}
    for _ in range(args.rounds):
        samples["ed25519"].append(_time(lambda: ref_key.sign(MESSAGE)))
        for (t, n), (signers, pk) in configs.items():
            samples[f"{t}-of-{n}"].append(_time(lambda s=signers, k=pk: _frost_once(s, k)))

    phases = [_phases(*configs[(2, 3)]) for _ in range(args.rounds)]

    ref = statistics.median(samples["ed25519"])
    print(f"rounds per configuration: {args.rounds}")
    print(f"{'what':<34}{'median':>12}{'ratio':>10}")
    print(f"{'Ed25519 sign (libsodium, 1 party)':<34}{ref * 1e6:>9.1f} us{1.0:>9.1f}x")
    for name in ("2-of-3", "3-of-5"):
        med = statistics.median(samples[name])
        label = f"FROST {name} complete signing"
        print(f"{label:<34}{med * 1e6:>9.1f} us{med / ref:>9.1f}x")
    names = ("commit (both signers)", "sign (both signers)", "aggregate + verify")
    for k, name in enumerate(names):
        med = statistics.median(p[k] for p in phases)
        print(f"{'  2-of-3 ' + name:<34}{med * 1e6:>9.1f} us")


if __name__ == "__main__":
    main()
