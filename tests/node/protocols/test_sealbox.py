"""sealbox: X25519 + HKDF-SHA256 + AES-256-GCM boxes for DKG round-2 shares."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.protocols import sealbox
from node.protocols.sealbox import SealError, open_, public_bytes, seal
from shares.rng import SeededRNG

P = 2**255 - 19
# u-coordinates of the X25519 points of small order (0, 1, the two of order 8, p-1).
LOW_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
]


def keypair(seed: int) -> tuple[X25519PrivateKey, bytes]:
    priv = X25519PrivateKey.from_private_bytes(SeededRNG(seed)(32))
    return priv, public_bytes(priv)


@pytest.fixture
def parties() -> tuple[tuple[X25519PrivateKey, bytes], tuple[X25519PrivateKey, bytes]]:
    return keypair(1), keypair(2)


def test_round_trip(parties) -> None:
    (s, sp), (r, rp) = parties
    box = seal(s, sp, rp, b"secret share", b"aad", SeededRNG(3))
    assert box[0] == sealbox.VERSION
    assert len(box) == 1 + 12 + len(b"secret share") + 16
    assert open_(r, rp, sp, box, b"aad") == b"secret share"


def test_nonces_are_fresh(parties) -> None:
    (s, sp), (_r, rp) = parties
    rng = SeededRNG(4)
    a = seal(s, sp, rp, b"x", b"", rng)
    b = seal(s, sp, rp, b"x", b"", rng)
    assert a[1:13] != b[1:13] and a != b


def test_wrong_aad_key_or_direction_does_not_open(parties) -> None:
    (s, sp), (r, rp) = parties
    _o, op = keypair(5)
    box = seal(s, sp, rp, b"payload", b"ctx|1|2", SeededRNG(6))
    with pytest.raises(SealError):
        open_(r, rp, sp, box, b"ctx|1|3")
    with pytest.raises(SealError):
        open_(r, rp, op, box, b"ctx|1|2")  # claimed sender is someone else
    # Reflection: the same box offered back to its sender as if the recipient sent it.
    with pytest.raises(SealError):
        open_(s, sp, rp, box, b"ctx|1|2")


def test_every_byte_is_authenticated(parties) -> None:
    (s, sp), (r, rp) = parties
    box = seal(s, sp, rp, b"payload", b"aad", SeededRNG(7))
    for k in range(len(box)):
        bad = bytearray(box)
        bad[k] ^= 0x01
        with pytest.raises(SealError):
            open_(r, rp, sp, bytes(bad), b"aad")
    for cut in (0, 1, 13, 28, len(box) - 1):
        with pytest.raises(SealError):
            open_(r, rp, sp, box[:cut], b"aad")
    with pytest.raises(SealError):
        open_(r, rp, sp, box + b"\x00", b"aad")


@pytest.mark.parametrize("u", LOW_ORDER)
def test_small_order_keys_are_refused(parties, u: int) -> None:
    (s, sp), (r, rp) = parties
    bad = u.to_bytes(32, "little")
    with pytest.raises(SealError, match="small order"):
        sealbox.check_public_key(bad)
    with pytest.raises(SealError):
        seal(s, sp, bad, b"x", b"", SeededRNG(8))
    box = seal(s, sp, rp, b"x", b"", SeededRNG(8))
    with pytest.raises(SealError):
        open_(r, rp, bad, box, b"")


@pytest.mark.parametrize("u", [P, P + 1, 2**255, 2**256 - 1])
def test_non_canonical_keys_are_refused(u: int) -> None:
    with pytest.raises(SealError, match="canonical"):
        sealbox.check_public_key(u.to_bytes(32, "little"))


def test_argument_checks(parties) -> None:
    (s, sp), (r, rp) = parties
    rng = SeededRNG(9)
    with pytest.raises(SealError, match="does not match"):
        seal(s, rp, sp, b"x", b"", rng)  # sender public is not the sender's
    with pytest.raises(SealError, match="differ"):
        seal(s, sp, sp, b"x", b"", rng)
    with pytest.raises(SealError):
        seal(s, sp, rp[:31], b"x", b"", rng)
    with pytest.raises(SealError):
        seal(s, sp, rp, b"x" * (sealbox.MAX_PLAINTEXT + 1), b"", rng)
    with pytest.raises(SealError):
        seal(s, sp, rp, b"x", b"a" * 5000, rng)
    with pytest.raises(SealError):
        seal("not a key", sp, rp, b"x", b"", rng)  # type: ignore[arg-type]
    with pytest.raises(SealError, match="random"):
        seal(s, sp, rp, b"x", b"", lambda n: b"\x00" * (n - 1))
    with pytest.raises(SealError, match="does not match"):
        open_(r, sp, rp, b"\x01" + bytes(40), b"")


def test_bad_version_is_refused(parties) -> None:
    (s, sp), (r, rp) = parties
    box = seal(s, sp, rp, b"x", b"", SeededRNG(10))
    with pytest.raises(SealError, match="version"):
        open_(r, rp, sp, b"\x02" + box[1:], b"")


def test_errors_do_not_carry_plaintext(parties) -> None:
    (s, sp), (r, rp) = parties
    secret = b"TOPSECRETSHARE"
    box = seal(s, sp, rp, secret, b"aad", SeededRNG(11))
    with pytest.raises(SealError) as info:
        open_(r, rp, sp, box, b"other")
    assert secret.decode() not in str(info.value)
    assert secret.hex() not in str(info.value)
