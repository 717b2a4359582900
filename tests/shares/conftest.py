"""Shared fixtures for the shares tests: bad encodings and a pycryptodome reference.

Only fixtures live here (no hooks or settings), so the other shares test files
in this folder are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from shares import group as g

P = 2**255 - 19

#: The eight points of small order (the torsion subgroup), RFC 8032 encodings.
#: Each is checked below to really have order dividing 8, via pycryptodome.
SMALL_ORDER = [
    bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
]


def ref_decode(data: bytes) -> ECC.EccPoint:
    """Decode with pycryptodome's independent Ed25519 (no subgroup check)."""
    return eddsa.import_public_key(data).pointQ


def ref_encode(point: ECC.EccPoint) -> bytes:
    """RFC 8032 section 5.1.2 encoding, written out independently of libsodium."""
    x, y = int(point.x), int(point.y)
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _off_curve() -> bytes:
    """The smallest y whose encoding does not decode to a curve point."""
    for y in range(2, 1000):
        enc = y.to_bytes(32, "little")
        try:
            ref_decode(enc)
        except ValueError:
            return enc
    raise AssertionError("no off-curve y found")


@pytest.fixture(scope="session")
def ref_base() -> ECC.EccPoint:
    return ECC.EccPoint(
        15112221349535400772501151409588531511454012693041857206046113283949847762202,
        46316835694926478169428394003475163141307993866256225615783033603165251855960,
        curve="ed25519",
    )


@pytest.fixture(scope="session")
def small_order_points() -> list[bytes]:
    return list(SMALL_ORDER)


@pytest.fixture(scope="session")
def off_curve_point() -> bytes:
    return _off_curve()


@pytest.fixture(scope="session")
def mixed_order_point() -> Callable[[bytes], bytes]:
    """P + T for a prime-order P and the order-2 point T: on the curve, not in the subgroup."""

    def make(p: bytes) -> bytes:
        return ref_encode(ref_decode(p) + ref_decode(SMALL_ORDER[1]))

    return make


@pytest.fixture(scope="session")
def non_canonical_identity() -> bytes:
    """y = p + 1 (reduces to y = 1, the identity): a non-canonical encoding."""
    return (P + 1).to_bytes(32, "little")


BAD_ELEMENT_NAMES = [
    *(f"small-order-{k}" for k in range(8)),
    "off-curve",
    "non-canonical",
    "mixed-order",
    "short",
]


def _bad_element(name: str) -> bytes:
    if name.startswith("small-order-"):
        return SMALL_ORDER[int(name.rsplit("-", 1)[1])]
    return {
        "off-curve": _off_curve,
        "non-canonical": lambda: (P + 1).to_bytes(32, "little"),
        "mixed-order": lambda: ref_encode(ref_decode(g.BASEPOINT) + ref_decode(SMALL_ORDER[1])),
        "short": lambda: g.BASEPOINT[:31],
    }[name]()


@pytest.fixture(params=BAD_ELEMENT_NAMES)
def bad_element(request: pytest.FixtureRequest) -> bytes:
    """Each class of invalid element encoding in turn (parametrised)."""
    return _bad_element(request.param)
