"""Property tests for the wire codec: hostile bytes never crash it, valid
messages round-trip exactly, chunking does not matter, memory stays bounded."""

from __future__ import annotations

import struct

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import (
    U63,
    DecodeError,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    decode_message,
    encode_frame,
    encode_message,
)
from consensus.messages import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)

u63 = st.integers(0, U63)
ids = st.integers(1, U63)


@st.composite
def messages(draw) -> Message:
    mtype = draw(st.sampled_from(list(MsgType)))
    entries: tuple[Entry, ...] = ()
    if mtype is MsgType.APPEND:
        n = draw(st.integers(0, 5))
        start = draw(st.integers(1, U63 - 10))
        entries = tuple(
            Entry(
                draw(u63),
                start + k,
                draw(st.sampled_from(list(EntryType))),
                draw(st.binary(max_size=40)),
            )
            for k in range(n)
        )
    snapshot = None
    if mtype is MsgType.SNAPSHOT:
        conf = ConfState(
            draw(st.frozensets(ids, max_size=5)), draw(st.frozensets(ids, max_size=3))
        )
        snapshot = Snapshot(SnapshotMeta(draw(u63), draw(u63), conf), draw(st.binary(max_size=64)))
    return Message(
        type=mtype,
        to=draw(ids),
        frm=draw(ids),
        term=draw(u63),
        log_term=draw(u63),
        index=draw(u63),
        entries=entries,
        commit=draw(u63),
        reject=draw(st.booleans()),
        reject_hint=draw(u63),
        snapshot=snapshot,
        context=draw(st.binary(max_size=64)),
    )


LIMITS = Limits()


def must_reject_or_be_valid(body: bytes, limits: Limits = LIMITS) -> None:
    """Any input either decodes to a Message that re-encodes to an equal one, or
    raises DecodeError; never anything else."""
    try:
        m = decode_message(body, limits)
    except DecodeError:
        return
    assert isinstance(m, Message)
    assert decode_message(encode_message(m), limits) == m


@settings(max_examples=300, deadline=None)
@given(messages())
def test_random_valid_messages_round_trip_exactly(m):
    assert decode_message(encode_message(m)) == m


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_bytes_are_rejected_or_valid(body):
    must_reject_or_be_valid(body)


@settings(max_examples=200, deadline=None)
@given(messages(), st.data())
def test_truncated_and_bit_flipped_bodies_never_crash(m, data):
    body = encode_message(m)
    cut = data.draw(st.integers(0, len(body)))
    must_reject_or_be_valid(body[:cut])
    pos = data.draw(st.integers(0, len(body) - 1))
    flipped = bytearray(body)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    must_reject_or_be_valid(bytes(flipped))


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # all that msgpack can carry
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    ["v", "t", "to", "fr", "tm", "lt", "i", "e", "c", "rj", "rh", "s", "cx", "x"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, json_like, max_size=8))
def test_wrong_typed_maps_are_rejected_or_valid(d):
    must_reject_or_be_valid(msgpack.packb(d, use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(messages(), st.sampled_from(["tm", "lt", "i", "c", "rh", "to", "fr", "t"]), json_like)
def test_one_wrong_field_in_a_valid_message(m, key, value):
    d = msgpack.unpackb(encode_message(m), raw=False)
    d[key] = value
    must_reject_or_be_valid(msgpack.packb(d, use_bin_type=True))
    # a value that is not a non-negative int below 2^63 must be refused
    if not (type(value) is int and 0 <= value <= U63):
        try:
            decode_message(msgpack.packb(d, use_bin_type=True))
        except DecodeError:
            pass
        else:
            raise AssertionError(f"{key}={value!r} was accepted")


@settings(max_examples=150, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=6), st.data())
def test_stream_decoder_is_independent_of_chunking(msgs, data):
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    dec = FrameDecoder(max_frame=1 << 20)
    got = [decode_message(b) for c in chunks for b in dec.feed(c)]
    assert got == msgs
    assert dec.buffered == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(1001, 2**32 - 1), st.binary(max_size=64))
def test_oversized_length_prefix_is_refused_before_the_body(n, tail):
    dec = FrameDecoder(max_frame=1000)
    try:
        dec.feed(struct.pack(">I", n) + tail)
    except FrameTooLarge:
        pass
    else:
        raise AssertionError("accepted an oversized length prefix")
    assert dec.buffered == 0


def test_memory_stays_bounded_over_a_long_stream():
    """Feeding many frames in odd chunk sizes never buffers more than one frame."""
    limit = 4096
    dec = FrameDecoder(max_frame=limit)
    frame = encode_frame(
        Message(MsgType.APPEND, 2, 1, entries=(Entry(1, 1, data=b"z" * 3000),)), limit
    )
    stream = frame * 300
    peak = 0
    count = 0
    pos = 0
    step = 1
    while pos < len(stream):
        count += len(dec.feed(stream[pos : pos + step]))
        peak = max(peak, dec.buffered)
        pos += step
        step = step * 7 % 997 + 1
    assert count == 300
    assert peak <= limit
    assert dec.buffered == 0
