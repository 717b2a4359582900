"""Wire codec: exact round trips and one negative test per schema rule."""

from __future__ import annotations

import struct

import msgpack
import pytest

from consensus.codec import (
    DecodeError,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    decode_frames,
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

APPEND = Message(
    MsgType.APPEND,
    to=2,
    frm=1,
    term=5,
    log_term=4,
    index=10,
    entries=(Entry(5, 11, EntryType.NORMAL, b"a"), Entry(5, 12, EntryType.CONF_CHANGE, b"cc")),
    commit=9,
)
SNAP = Message(
    MsgType.SNAPSHOT,
    to=3,
    frm=1,
    term=7,
    snapshot=Snapshot(SnapshotMeta(100, 6, ConfState(frozenset({1, 2, 3}), frozenset({4}))), b"st"),
)
RESP = Message(MsgType.APPEND_RESP, to=1, frm=2, term=5, index=3, reject=True, reject_hint=2)
HB = Message(MsgType.HEARTBEAT, to=2, frm=1, term=5, commit=9, context=b"ctx")


def raw(**fields) -> bytes:
    base = {"v": 1, "t": 7, "to": 2, "fr": 1}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize("msg", [APPEND, SNAP, RESP, HB, Message(MsgType.VOTE, to=1, frm=2)])
def test_round_trip_is_exact(msg):
    assert decode_message(encode_message(msg)) == msg
    assert decode_frames([encode_frame(msg)]) == [msg]


def test_valid_minimal_map_decodes():
    m = decode_message(raw())
    assert m == Message(MsgType.HEARTBEAT, to=2, frm=1)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (raw(v=...), "version 'v' missing"),
        (raw(v=2), "unknown schema version"),
        (raw(v="1"), "unknown schema version"),
        (raw(t=99), "unknown message type"),
        (raw(t=0), "unknown message type"),
        (raw(to=...), "'to' missing"),
        (raw(to=0), "positive"),
        (raw(fr=-1), "out of range"),
        (raw(tm=-5), "out of range"),
        (raw(tm=1 << 63), "out of range"),
        (raw(c=1.5), "expected an integer"),
        (raw(i=True), "expected an integer"),
        (raw(tm="3"), "expected an integer"),
        (raw(rj=1), "boolean"),
        (raw(cx="text"), "expected bytes"),
        (raw(cx=b"x" * 5000), "exceeds"),
        (raw(zz=1), "unknown field"),
        (raw(t=1, e=[[1, 1, 7, b""]]), "unknown entry type"),
        (raw(t=1, e=[[1, 1, 0]]), "expected \\[term, index, type, data\\]"),
        (raw(t=1, e=[[1, 1, 0, "str"]]), "expected bytes"),
        (raw(t=1, e=[[1, 0, 0, b""]]), "positive"),
        (raw(t=1, e=[[1, 1, 0, b""], [1, 3, 0, b""]]), "not consecutive"),
        (raw(t=1, e={"a": 1}), "expected an array"),
        (raw(t=2, e=[[1, 1, 0, b""]]), "not allowed"),
        (raw(t=9), "snapshot: required"),
        (raw(s={"i": 1, "t": 1}), "snapshot: required"),
        (raw(t=9, s={"i": 1, "x": 1}), "unknown field"),
        (raw(t=9, s={"i": 1, "vo": [1, 1]}), "duplicate"),
        (raw(t=9, s={"i": 1, "vo": [0]}), "positive"),
        (raw(t=9, s={"i": 1, "d": "str"}), "expected bytes"),
        (raw(t=9, s=[1, 2]), "expected a map"),
        (msgpack.packb([1, 2, 3]), "expected a map"),
        (msgpack.packb({1: 2}), "unknown field|malformed"),
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (raw() + b"\x00", "malformed"),  # trailing bytes
        (msgpack.packb(msgpack.ExtType(1, b"x")), "malformed"),
    ],
)
def test_schema_violations_raise_decode_error(body, why):
    with pytest.raises(DecodeError, match=why):
        decode_message(body)


def test_too_many_entries_and_oversized_bodies():
    lim = Limits(max_frame=1024, max_entries=3)
    entries = [[1, i, 0, b""] for i in range(1, 5)]
    with pytest.raises(DecodeError):
        decode_message(raw(t=1, e=entries), lim)
    assert len(decode_message(raw(t=1, e=entries[:3]), lim).entries) == 3
    with pytest.raises(FrameTooLarge):
        decode_message(raw(cx=b"x" * 2000), lim)
    # entry data is bounded only by the frame itself
    m = decode_message(raw(t=1, e=[[1, 1, 0, b"x" * 1100]]), Limits(max_frame=1200))
    assert m.entries[0].data == b"x" * 1100


def test_encode_frame_refuses_what_the_peer_would_refuse():
    big = Message(MsgType.APPEND, 2, 1, entries=(Entry(1, 1, data=b"x" * 2000),))
    with pytest.raises(FrameTooLarge):
        encode_frame(big, max_frame=1000)


def test_frame_decoder_checks_the_length_before_buffering():
    dec = FrameDecoder(max_frame=100)
    assert dec.feed(struct.pack(">I", 50)[:2]) == []
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack(">I", 50)[2:3] + b"\xff")  # 0x000032ff > 100
    assert dec.buffered == 0
    with pytest.raises(DecodeError):
        dec.feed(b"")  # unusable afterwards


def test_frame_decoder_handles_empty_and_split_frames():
    dec = FrameDecoder(max_frame=100)
    frames = struct.pack(">I", 0) + struct.pack(">I", 3) + b"abc"
    got: list[bytes] = []
    for b in frames:
        got += dec.feed(bytes([b]))
    assert got == [b"", b"abc"]
    assert dec.buffered == 0


def test_limits_validate():
    with pytest.raises(ValueError):
        Limits(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=1 << 33)
