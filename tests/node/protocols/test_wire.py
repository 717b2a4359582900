"""Wire codecs: round trips, and every malformed input refused with WireError only."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.protocols.wire import (
    MAX_COMMIT_COUNT,
    MAX_MEMBERS,
    MAX_REF_CHARS,
    MAX_ROUND2_MESSAGE,
    CommitRequest,
    CommitResponse,
    Round2Delivery,
    ShareRequest,
    ShareResponse,
    WireError,
)

H, B = b"\x11" * 32, b"\x22" * 32
ROWS = ((1, H, B), (3, B, H))

SAMPLES = [
    CommitRequest("key-a", 1, 16),
    CommitResponse(((5, H, B), ((1 << 63) - 1, B, H))),
    ShareRequest("ops:req-1", 42, "key-a", 2, ROWS, 77, b"\x33" * 64),
    ShareResponse(3, b"\x05" * 32),
    Round2Delivery("ops:req-1", 1, 2, b"\x90" * 90),
]
TYPES = [type(m) for m in SAMPLES]
LARGEST = [
    CommitRequest("k" * 64, (1 << 32) - 1, MAX_COMMIT_COUNT),
    CommitResponse(tuple(((1 << 63) - 1 - i, H, B) for i in range(MAX_COMMIT_COUNT))),
    ShareRequest(
        "x" * MAX_REF_CHARS,
        (1 << 63) - 1,
        "k" * 64,
        (1 << 32) - 1,
        tuple((i, H, B) for i in range(1, MAX_MEMBERS + 1)),
        (1 << 63) - 1,
        b"\xff" * 64,
    ),
    ShareResponse(MAX_MEMBERS, b"\xff" * 32),
    Round2Delivery("x" * MAX_REF_CHARS, MAX_MEMBERS, 1, b"\x01" * MAX_ROUND2_MESSAGE),
]


def raw_of(msg) -> dict:
    return msgpack.unpackb(msg.encode(), raw=False)


def wrong_types(value: object) -> list[object]:
    """Values of another type than `value` (bool is never an int here)."""
    candidates: list[object] = [None, True, 1.5, [], {}, "x", b"x", 7]
    return [w for w in candidates if type(w) is not type(value)]


def pack(raw: dict) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("msg", SAMPLES + LARGEST, ids=lambda m: type(m).__name__)
def test_round_trip(msg) -> None:
    data = msg.encode()
    assert type(msg).decode(data) == msg
    assert len(data) <= type(msg).MAX_SIZE


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_extra_missing_and_wrong_fields(msg) -> None:
    cls = type(msg)
    raw = raw_of(msg)
    with pytest.raises(WireError, match="fields"):
        cls.decode(pack({**raw, "extra": 1}))
    for name in raw:
        with pytest.raises(WireError):
            cls.decode(pack({k: v for k, v in raw.items() if k != name}))
    with pytest.raises(WireError, match="version"):
        cls.decode(pack({**raw, "v": 2}))
    with pytest.raises(WireError, match="version"):
        cls.decode(pack({**raw, "v": True}))
    for field in set(raw) - {"v", "kind"}:
        for wrong in wrong_types(raw[field]):
            with pytest.raises(WireError):
                cls.decode(pack({**raw, field: wrong}))


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_trailing_truncated_oversize_and_other_kinds(msg) -> None:
    cls = type(msg)
    data = msg.encode()
    for bad in (data + b"\x00", data + data, data[:-1], b"", b"\xc1"):
        with pytest.raises(WireError):
            cls.decode(bad)
    with pytest.raises(WireError, match="exceeds"):
        cls.decode(data + b"\x00" * cls.MAX_SIZE)
    for other in SAMPLES:
        if type(other) is not cls:
            with pytest.raises(WireError):
                cls.decode(other.encode())
    with pytest.raises(WireError):
        cls.decode(data.decode("latin-1"))  # type: ignore[arg-type]


def test_non_canonical_encodings_are_refused() -> None:
    msg = CommitRequest("key-a", 1, 16)
    # The same map with the count as a uint64 instead of a fixint.
    data = msg.encode()
    wide = data[:-1] + b"\xcf" + (16).to_bytes(8, "big")
    assert msgpack.unpackb(wide, raw=False) == msgpack.unpackb(data, raw=False)
    with pytest.raises(WireError, match="canonical"):
        CommitRequest.decode(wide)
    # Same fields in another order.
    raw = raw_of(msg)
    reordered = pack(dict(reversed(list(raw.items()))))
    with pytest.raises(WireError, match="canonical"):
        CommitRequest.decode(reordered)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_id": "bad key"},
        {"key_id": ""},
        {"key_id": "k" * 65},
        {"version": 0},
        {"version": 1 << 32},
        {"count": 0},
        {"count": MAX_COMMIT_COUNT + 1},
    ],
)
def test_commit_request_bounds(kwargs) -> None:
    raw = {**raw_of(CommitRequest("key-a", 1, 16)), **kwargs}
    with pytest.raises(WireError):
        CommitRequest.decode(pack(raw))


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [(1, H, B)],  # one signer
        [(3, H, B), (1, B, H)],  # unsorted
        [(1, H, B), (1, B, H)],  # duplicate
        [(0, H, B), (1, B, H)],
        [(1, H, B), (MAX_MEMBERS + 1, B, H)],
        [(1, H[:31], B), (2, B, H)],
        [(1, H, B), (2, B, H, b"")],
        [(1, H, B), (2, B)],
        [(i, H, B) for i in range(1, MAX_MEMBERS + 2)],
    ],
)
def test_share_request_commitment_list_bounds(rows) -> None:
    raw = raw_of(SAMPLES[2])
    raw["commitment_list"] = [list(r) for r in rows]
    with pytest.raises(WireError):
        ShareRequest.decode(pack(raw))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("request_ref", ""),
        ("request_ref", "x" * (MAX_REF_CHARS + 1)),
        ("request_ref", "has space"),
        ("request_ref", "caf\u00e9"),
        ("log_index", -1),
        ("my_commitment_id", 1 << 63),
    ],
)
def test_share_request_scalar_bounds(field: str, value) -> None:
    raw = {**raw_of(SAMPLES[2]), field: value}
    with pytest.raises(WireError):
        ShareRequest.decode(pack(raw))


def test_other_bounds() -> None:
    with pytest.raises(WireError):
        ShareResponse.decode(pack({**raw_of(SAMPLES[3]), "share": b"\x05" * 33}))
    with pytest.raises(WireError):
        ShareResponse.decode(pack({**raw_of(SAMPLES[3]), "identifier": 0}))
    delivery = raw_of(SAMPLES[4])
    for change in ({"recipient": 1}, {"message": b""}, {"message": b"\x01" * 4097}):
        with pytest.raises(WireError):
            Round2Delivery.decode(pack({**delivery, **change}))
    rows = [[i, H, B] for i in range(MAX_COMMIT_COUNT + 1)]
    with pytest.raises(WireError):
        CommitResponse.decode(pack({**raw_of(SAMPLES[1]), "commitments": rows}))
    with pytest.raises(WireError):
        CommitResponse.decode(pack({**raw_of(SAMPLES[1]), "commitments": [[1, H, B], [1, B, H]]}))


def test_constructors_validate_too() -> None:
    with pytest.raises(WireError):
        ShareResponse(1, b"short")
    with pytest.raises(WireError):
        CommitRequest("key-a", 1, 100)


# ---------------------------------------------------------------- property-style

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cls=st.sampled_from(TYPES))
def test_random_bytes_only_raise_wire_error(data: bytes, cls) -> None:
    try:
        msg = cls.decode(data)
    except WireError:
        return
    assert msg.encode() == data


@settings(max_examples=300, deadline=None)
@given(value=msgpack_values, cls=st.sampled_from(TYPES))
def test_random_msgpack_values_only_raise_wire_error(value, cls) -> None:
    with pytest.raises(WireError):
        cls.decode(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(SAMPLES) - 1),
    field=st.integers(min_value=0, max_value=10),
    value=msgpack_values,
)
def test_random_field_values_only_raise_wire_error(index: int, field: int, value) -> None:
    msg = SAMPLES[index]
    raw = raw_of(msg)
    names = sorted(raw)
    raw[names[field % len(names)]] = value
    try:
        decoded = type(msg).decode(pack(raw))
    except WireError:
        return
    assert decoded.encode() == pack(raw)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=len(SAMPLES) - 1),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
)
def test_bit_flips_only_raise_wire_error(index: int, flips) -> None:
    msg = SAMPLES[index]
    data = bytearray(msg.encode())
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    try:
        decoded = type(msg).decode(bytes(data))
    except WireError:
        return
    assert decoded.encode() == bytes(data)
