"""Per-operation latency of the HSM slot on SoftHSM2, beside in-process references.

Measured in one run, on a fresh token in a temporary SoftHSM2 environment:
  store_empty_nosync  the same without syncfs of the token directory (SlotConfig.sync_dir)
  store_empty  Pkcs11Slot.store_share into a token holding no other share
  store    Pkcs11Slot.store_share while the token fills from 0 to N shares
           (in-token AES-GCM + existence search + temp object + read-back + relabel;
           SoftHSM2's object search is linear in the objects on the token)
  load     Pkcs11Slot.load_share (find + read + in-token AES-GCM open)
  sign     Pkcs11Slot.sign, Ed25519 (CKM_EDDSA) with the token's identity key
  destroy  Pkcs11Slot.destroy_share
References, same inputs, in-process with `cryptography`:
  AES-256-GCM seal / open of a 32-byte share with the same AAD, Ed25519 sign.

Usage: python benchmarks/hsm_ops.py [--iterations N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.hsm import aad, softhsm
from node.hsm.pkcs11_slot import Pkcs11Slot
from node.hsm.slot import ShareId

CLUSTER = "bench"


def _time_each(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_us": statistics.median(ordered), "p99_us": p99, "n": len(ordered)}


def run(iterations: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as tmp:
        env = softhsm.create_env(tmp)
        pin = secrets.token_hex(8)
        pin_file = softhsm.write_pin_file(Path(tmp) / "user.pin", pin)
        softhsm.provision_token(
            env, "bench-node", CLUSTER, user_pin=pin, so_pin=secrets.token_hex(8)
        )
        ids = [ShareId("bench-key", 1, (i % 65535) + 1, i // 65535) for i in range(iterations)]
        shares = [secrets.token_bytes(32) for _ in range(iterations)]
        spare = ShareId("bench-spare", 1, 1, 0)
        msg = secrets.token_bytes(64)
        results: dict[str, list[float]] = {}

        def store_then_drop(slot: Pkcs11Slot, i: int) -> float:
            t0 = time.perf_counter_ns()
            slot.store_share(spare, shares[i])
            elapsed = (time.perf_counter_ns() - t0) / 1000.0
            slot.destroy_share(spare)
            return elapsed

        base = env.slot_config("bench-node", CLUSTER, pin_file=pin_file)
        with Pkcs11Slot.open(dataclasses.replace(base, sync_dir=None)) as slot:
            slot.sign(b"warm-up")
            results["store_empty_nosync"] = [store_then_drop(slot, i) for i in range(iterations)]
        with Pkcs11Slot.open(base) as slot:
            results["store_empty"] = [store_then_drop(slot, i) for i in range(iterations)]
            results["store"] = _time_each(lambda i: slot.store_share(ids[i], shares[i]), iterations)
            results["load"] = _time_each(lambda i: slot.load_share(ids[i]), iterations)
            results["sign"] = _time_each(lambda i: slot.sign(msg), iterations)
            results["destroy"] = _time_each(lambda i: slot.destroy_share(ids[i]), iterations)
        module = env.module_path
    kek = AESGCM(secrets.token_bytes(32))
    nonce = secrets.token_bytes(12)
    aads = [aad.share_aad(CLUSTER, sid) for sid in ids]
    sealed = [kek.encrypt(nonce, shares[i], aads[i]) for i in range(iterations)]
    ed = Ed25519PrivateKey.generate()
    seal = ("aesgcm_seal_inprocess", lambda i: kek.encrypt(nonce, shares[i], aads[i]))
    refs = {
        "store_empty_nosync": seal,
        "store_empty": ("aesgcm_seal_inprocess", lambda i: kek.encrypt(nonce, shares[i], aads[i])),
        "store": ("aesgcm_seal_inprocess", lambda i: kek.encrypt(nonce, shares[i], aads[i])),
        "load": ("aesgcm_open_inprocess", lambda i: kek.decrypt(nonce, sealed[i], aads[i])),
        "sign": ("ed25519_sign_inprocess", lambda i: ed.sign(msg)),
    }
    report: dict[str, object] = {
        "module": module,
        "iterations": iterations,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "ops": {},
    }
    ops: dict[str, object] = {}
    for op, samples in results.items():
        entry: dict[str, object] = {"hsm": _stats(samples)}
        if op in refs:
            name, fn = refs[op]
            ref = _stats(_time_each(fn, iterations))
            entry["reference"] = {"name": name, **ref}
            entry["ratio_median"] = entry["hsm"]["median_us"] / ref["median_us"]  # type: ignore[index]
            entry["ratio_p99"] = entry["hsm"]["p99_us"] / ref["p99_us"]  # type: ignore[index]
        ops[op] = entry
    report["ops"] = ops
    return report


def _print(report: dict[str, object]) -> None:
    print(f"HSM slot latency: {report['module']}, {report['iterations']} ops each")
    print(
        f"{'op':18} {'hsm median':>11} {'hsm p99':>10}  {'reference':24} {'median':>9} "
        f"{'p99':>9} {'x median':>9} {'x p99':>8}"
    )
    for op, e in report["ops"].items():  # type: ignore[union-attr]
        h = e["hsm"]
        line = f"{op:18} {h['median_us']:9.1f}us {h['p99_us']:8.1f}us"
        if "reference" in e:
            r = e["reference"]
            line += (
                f"  {r['name']:24} {r['median_us']:7.2f}us {r['p99_us']:7.2f}us "
                f"{e['ratio_median']:8.0f}x {e['ratio_p99']:7.0f}x"
            )
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if not 10 <= args.iterations <= 100_000:
        parser.error("--iterations must be in [10, 100000]")
    report = run(args.iterations)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
