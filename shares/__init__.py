"""Threshold cryptography for the custody cluster, pure and deterministic given an `rng`.

group (Ed25519 via libsodium), shamir, vss (Feldman), frost (RFC 9591), dkg
(Pedersen with proofs of knowledge), and repair/refresh/tdec/gf256 on top.
No I/O, no asyncio, no global state. See docs/shares.md.
"""
