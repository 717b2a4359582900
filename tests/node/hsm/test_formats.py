"""Pure formats: labels, share-object values, AAD and backup blobs."""

from __future__ import annotations

import contextlib
import random
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.hsm import aad
from node.hsm.errors import (
    BackupAuthenticationError,
    BackupFormatError,
    InvalidInputError,
    ShareIntegrityError,
)
from node.hsm.memory import MemorySlot
from node.hsm.slot import MAX_SHARE_LEN, ShareId

ids = st.builds(
    ShareId,
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    st.integers(1, 2**32 - 1),
    st.integers(1, 2**16 - 1),
    st.integers(0, 2**32 - 1),
)


@given(ids)
def test_label_round_trip(sid: ShareId) -> None:
    assert aad.parse_share_label(aad.share_label(sid)) == sid


@pytest.mark.parametrize(
    "label",
    [
        "custody/share/v1/k/01/1/0",
        "custody/share/v1/k/1/1",
        "custody/share/v1/k/1/1/0/9",
        "custody/share/v1/k/0/1/0",
        "custody/share/v1/k/-1/1/0",
        "custody/share/v1/k/1/1/٣",
        "custody/tmp/abcd",
        "other",
    ],
)
def test_non_canonical_labels_rejected(label: str) -> None:
    assert aad.parse_share_label(label) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_id": "a/b"},
        {"key_id": ""},
        {"key_id": "x" * 65},
        {"version": 0},
        {"index": 0},
        {"index": 2**16},
        {"generation": -1},
        {"version": True},
    ],
)
def test_share_id_validation(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"key_id": "k", "version": 1, "index": 1, "generation": 0}
    fields.update(kwargs)
    with pytest.raises(InvalidInputError):
        ShareId(**fields)  # type: ignore[arg-type]


def test_aad_distinguishes_every_field() -> None:
    base = ShareId("k", 1, 2, 3)
    variants = {
        aad.share_aad("c", base),
        aad.share_aad("d", base),
        aad.share_aad("c", ShareId("k2", 1, 2, 3)),
        aad.share_aad("c", ShareId("k", 9, 2, 3)),
        aad.share_aad("c", ShareId("k", 1, 9, 3)),
        aad.share_aad("c", ShareId("k", 1, 2, 9)),
    }
    assert len(variants) == 6
    assert aad.share_aad("c", base).startswith(b"\x00\x23" + aad.SHARE_AAD_CONTEXT)


def test_share_value_bounds() -> None:
    with pytest.raises(ShareIntegrityError):
        aad.unpack_share_value(b"\x01" + b"\x00" * 12)
    with pytest.raises(ShareIntegrityError):
        aad.unpack_share_value(b"\x01" * (aad.MAX_SHARE_VALUE_LEN + 1))
    nonce, ct = aad.unpack_share_value(aad.pack_share_value(b"n" * 12, b"c" * 48))
    assert (nonce, ct) == (b"n" * 12, b"c" * 48)


@given(ids, st.binary(min_size=1, max_size=MAX_SHARE_LEN))
@settings(max_examples=50)
def test_backup_round_trip(sid: ShareId, share: bytes) -> None:
    key = secrets.token_bytes(32)
    blob = aad.seal_backup("cl", sid, share, key, secrets.token_bytes(12))
    header, opened = aad.open_backup(blob, key)
    assert header.share_id == sid and header.cluster_id == "cl"
    assert opened == share


@given(st.binary(max_size=600))
def test_backup_parser_only_raises_format_errors(data: bytes) -> None:
    with contextlib.suppress(BackupFormatError):
        aad.parse_backup_header(data)


def test_backup_bit_flips_never_open() -> None:
    key = secrets.token_bytes(32)
    blob = aad.seal_backup("cl", ShareId("k", 1, 1, 0), b"s" * 32, key, b"\x00" * 12)
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x80
        with pytest.raises((BackupFormatError, BackupAuthenticationError)):
            aad.open_backup(bytes(bad), key)


def test_backup_rejects_unknown_version_and_suite() -> None:
    key = secrets.token_bytes(32)
    blob = aad.seal_backup("cl", ShareId("k", 1, 1, 0), b"s" * 32, key, b"\x00" * 12)
    with pytest.raises(BackupFormatError, match="format version"):
        aad.parse_backup_header(blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(BackupFormatError, match="suite"):
        aad.parse_backup_header(blob[:5] + b"\x07" + blob[6:])
    with pytest.raises(BackupFormatError, match=r"invalid size"):
        aad.parse_backup_header(blob + b"\x00")


def test_zero() -> None:
    buf = bytearray(b"secret")
    aad.zero(buf)
    assert buf == bytearray(6)


def test_memory_slot_is_deterministic_given_its_rng() -> None:
    def run(seed: int) -> tuple[bytes, bytes, bytes]:
        rnd = random.Random(seed)
        slot = MemorySlot("c", rng=rnd.randbytes)
        sid = ShareId("k", 1, 1, 0)
        slot.store_share(sid, b"s" * 32)
        return (
            slot.identity_public_key(),
            slot._raw_objects()[aad.share_label(sid)],
            slot.sign(b"m"),
        )

    assert run(1) == run(1)
    assert run(1) != run(2)
