"""Hostile frames against the wire codec: each must be refused after little
work and few allocations, whatever its size (DESIGN.md §2.8).

msgpack's own limits are per container, so a body that is valid msgpack but
made of millions of small containers (or of nested headers that each
pre-allocate slots) used to cost seconds of CPU and a GiB of memory before
any schema check ran. Each test measures the decoder's allocation peak with
`tracemalloc` and its work as a count of function calls (`sys.setprofile`),
never wall-clock time. Where the old path (plain `msgpack.unpackb` with the
limits it used) would have built much more, the same test measures it on the
same shape as a reference, at 0.5 MiB instead of 16 MiB to keep the test fast:
the gap only grows with size.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import threading
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import msgpack
import pytest

from consensus.codec import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_FRAME,
    DecodeError,
    Limits,
    decode_message,
    decode_message_async,
    encode_message,
    unpack_bounded,
)
from consensus.messages import Entry, EntryType, Message, MsgType

MiB = 1024 * 1024
FULL = DEFAULT_MAX_FRAME - 64  # a body that fits the default frame limit
SMALL = MiB // 2  # the size at which the old path is measured for reference
HEAD = b"\x85\xa1v\x01\xa1t\x01\xa2to\x02\xa2fr\x01\xa1e"  # {v, t: APPEND, to, fr, e: ...}
MAX_CALLS = 200  # function calls an early refusal may take, whatever the body size
MAX_PEAK = 256 * 1024  # bytes an early refusal may allocate (not counting the body)


def arr32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def map32(n: int) -> bytes:
    return b"\xdf" + struct.pack(">I", n)


def chunked(head: bytes, size: int, item: bytes, per: int = 100_000) -> bytes:
    """`head` + an array of arrays of `per` copies of `item`, about `size` bytes:
    every container within msgpack's per-container limit, millions in total."""
    outer = (size - len(head)) // (per * len(item) + 5)
    return head + arr32(outer) + (arr32(per) + item * per) * outer


def nested_empty(size: int) -> bytes:  # the security review's frame
    return chunked(HEAD, size, b"\x90")


def fixints(size: int) -> bytes:
    return chunked(HEAD, size, b"\x00")


def top_level_array(size: int) -> bytes:
    return chunked(b"", size, b"\x90")


def entries_of_arrays(size: int) -> bytes:
    """As many entries as fit, each made of four 4-arrays of empty arrays."""
    item = b"\x94" + b"\x94\x90\x90\x90\x90" * 4
    n = min((size - len(HEAD) - 5) // len(item), 100_000)
    return HEAD + arr32(n) + item * n


def deep_headers(_size: int) -> bytes:
    """1,100 nested array headers announcing 100,000 items each (5.5 KiB):
    msgpack pre-allocates slots for each before any item arrives."""
    return HEAD + arr32(100_000) * 1_100


def today_unpack(body: bytes) -> None:
    """The first step of the old `decode_message`: msgpack with per-container limits."""
    msgpack.unpackb(
        body,
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_bin_len=DEFAULT_MAX_FRAME,
        max_str_len=64,
        max_array_len=100_000,
        max_map_len=32,
        max_ext_len=0,
    )


def peak(fn: Callable[..., Any], *args: Any) -> int:
    """tracemalloc peak (bytes) of `fn(*args)`; exceptions are swallowed."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(Exception):  # only the allocations matter here
            fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused(body: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[DecodeError, int, int]:
    """Decode `body`, which must be refused: (the error, function calls made, peak bytes)."""
    calls = 0

    def count(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    err: DecodeError | None = None
    sys.setprofile(count)
    try:
        decode_message(body, limits)
    except DecodeError as exc:
        err = exc
    finally:
        sys.setprofile(None)
    assert err is not None, "a hostile body was accepted"
    return err, calls, peak(decode_message, body, limits)


# --- frames the old path paid dearly for ------------------------------------------


@pytest.mark.parametrize(
    ("make", "why", "old_peak_per_byte"),
    [
        (nested_empty, "entries\\[0\\]: 100000 items exceed the 4 limit", 32),
        (fixints, "entries\\[0\\]: 100000 items exceed the 4 limit", 4),
        (top_level_array, "message: expected a map, got list", 32),
        (entries_of_arrays, "entries\\[0\\].term: expected an integer, got list", 32),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_many_small_containers_cost_little(make, why, old_peak_per_byte):
    body = make(FULL)
    err, calls, new_peak = refused(body)
    assert err.args[0].startswith(why.replace("\\", "")), err
    assert calls <= MAX_CALLS
    assert new_peak <= MAX_PEAK
    # reference: the old path on the same shape at 1/16 of the size
    small = make(SMALL)
    old_peak = peak(today_unpack, small)
    assert old_peak >= old_peak_per_byte * len(small)  # measured: 64x for empty arrays
    assert old_peak >= 16 * new_peak  # and the new decoder saw 16x the bytes


def test_nested_headers_preallocate_nothing():
    body = deep_headers(0)  # 5.5 KiB
    _, calls, new_peak = refused(body)
    assert calls <= MAX_CALLS
    assert new_peak <= MAX_PEAK
    old_peak = peak(today_unpack, body)
    assert old_peak >= 64 * MiB  # ~78 KiB of slots per header, before any item
    assert old_peak >= 1000 * len(body)


# --- frames msgpack's own limits already stopped (they must stay cheap) ------------


def deep_nesting() -> bytes:
    return HEAD + b"\x91" * (FULL - len(HEAD)) + b"\x00"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (deep_nesting(), "entries[0]: expected [term, index, type, data]"),
        (b"\x91" * FULL + b"\x00", "message: expected a map, got list"),
        (HEAD + arr32(1_000_000) + b"\x94\x01\x01\x00\xc4\x00" * 1_000_000, "entries: 1000000"),
        (map32(1_000_000) + b"\xa1a\x00" * 1_000_000, "message: 1000000 items exceed the 13"),
        (b"\xde\x00\x0e" + b"\xa1v\x01" * 14, "message: 14 items exceed the 13"),
        (b"\x81\xdb" + struct.pack(">I", FULL) + b"a" * FULL + b"\x00", "message: unknown field"),
        (b"\x81\xa1v" + b"\xdb" + struct.pack(">I", FULL) + b"a" * FULL, "message: unknown schema"),
        (b"\x81\xa2cx\xc6" + struct.pack(">I", FULL) + b"x" * FULL, "context: 16777152 bytes"),
        (b"\x81\xa2cx\xc6\xff\xff\xff\xff", "context: 4294967295 bytes exceeds"),
        (b"\x81\xa1e\xc6\xff\xff\xff\xff", "entries: expected an array, got bytes"),
        (HEAD + b"\x91\x94\x01\x01\x00\xc6\xff\xff\xff\xf0", "entries[0].data: 4294967280 bytes"),
        (HEAD + b"\xdd\x00\x01\x86\xa0", "malformed msgpack body: truncated"),
        (b"\x81\xa1s" + map32(1_000_000), "snapshot: 1000000 items exceed the 5"),
        (b"\x81\xa1s\x81\xa2vo" + arr32(1_000_000), "snapshot.voters: 1000000 items exceed"),
        (b"\x81\xa1s\x82\xa1i\x01\xa1i\x01", "snapshot: duplicate field 'i'"),
        (b"\x82\xa2tm\x01\xa2tm\x02", "message: duplicate field 'tm'"),
        (b"\xc7\xff\xff" + b"\x00" * 255, "malformed msgpack body"),
        (b"\xc1" * 1000, "malformed msgpack body"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_other_hostile_shapes_are_refused_early(body, why):
    err, calls, new_peak = refused(body)
    assert err.args[0].startswith(why), err
    assert calls <= MAX_CALLS
    assert new_peak <= MAX_PEAK


def test_the_most_a_frame_can_build_is_bounded_by_limits():
    """A body valid up to `max_entries` entries and bad at the very end: the
    worst a peer can make the decoder build. Bounded by Limits, not by the body."""
    n = Limits().max_entries
    body = (
        HEAD
        + arr32(n)
        + b"".join(
            b"\x94\x01\xce" + struct.pack(">I", i) + b"\x00\xc4\x00" for i in range(1, n + 1)
        )
    )
    body = body + b"\xc0"  # one trailing byte
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="trailing bytes"):
            decode_message(body)
        assert tracemalloc.get_traced_memory()[1] < 64 * MiB
    finally:
        tracemalloc.stop()
    # work is linear in the entries: count calls with a smaller limit
    lim = Limits(max_entries=1000)
    small = HEAD + arr32(1000) + b"\x94\x01\x01\x00\xc4\x00" * 1000 + b"\xc0"
    _, calls, _ = refused(small, lim)
    assert calls <= 10 * 1000


def test_hostile_counts_within_limits_allocate_nothing_per_announced_item():
    """A header announcing many items in a body too short to hold them is
    refused before any item is built."""
    for body in (HEAD + arr32(100_000), b"\x81\xa1s\x81\xa2vo" + b"\xdc\x04\x00"):
        err, calls, new_peak = refused(body)
        assert "truncated" in str(err)
        assert calls <= MAX_CALLS
        assert new_peak <= MAX_PEAK


# --- unpack_bounded: the same budget for array-shaped schemas -------------------

STREAM_LIMITS = {  # what a snapshot-stream frame decoder passes (arrays, no maps)
    "raw": False,
    "strict_map_key": True,
    "max_bin_len": DEFAULT_MAX_FRAME,
    "max_str_len": 0,
    "max_array_len": 1024,
    "max_map_len": 0,
    "max_ext_len": 0,
}


def stream_shaped(size: int) -> bytes:
    """A fixarray of 15 arrays of 1,024 arrays of n empty arrays (~size bytes)."""
    n = min(1024, max(1, size // (15 * 1024) - 3))
    item = b"\xdc\x04\x00" + (b"\xdc" + struct.pack(">H", n) + b"\x90" * n) * 1024
    return b"\x9f" + item * 15


def test_unpack_bounded_refuses_many_small_arrays_early():
    body = stream_shaped(FULL)
    calls = 0

    def count(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    err: DecodeError | None = None
    sys.setprofile(count)
    try:
        unpack_bounded(body, max_lists=3, **STREAM_LIMITS)
    except DecodeError as exc:
        err = exc
    finally:
        sys.setprofile(None)
    assert err is not None
    assert "more than 3 arrays" in str(err)
    assert calls <= MAX_CALLS
    new_peak = peak(lambda b: unpack_bounded(b, max_lists=3, **STREAM_LIMITS), body)
    assert new_peak <= MAX_PEAK
    small = stream_shaped(SMALL)
    old_peak = peak(lambda b: msgpack.unpackb(b, **STREAM_LIMITS), small)
    assert old_peak >= 32 * len(small)
    assert old_peak >= 16 * new_peak


def test_unpack_bounded_nested_headers_cost_at_most_the_preallocation():
    body = b"\xdc\x04\x00" * 1100  # 1,024 levels of 1,024 pre-allocated slots, then StackError
    with pytest.raises(DecodeError, match="malformed"):
        unpack_bounded(body, max_lists=3, **STREAM_LIMITS)
    assert peak(lambda b: unpack_bounded(b, max_lists=3, **STREAM_LIMITS), body) <= 16 * MiB


def test_unpack_bounded_passes_what_fits_the_budget():
    body = msgpack.packb([1, 2, 7, [1, 2, 3], [4], b"data"], use_bin_type=True)
    assert unpack_bounded(body, max_lists=3, **STREAM_LIMITS) == [1, 2, 7, [1, 2, 3], [4], b"data"]
    with pytest.raises(DecodeError, match="more than 2 arrays"):
        unpack_bounded(body, max_lists=2, **STREAM_LIMITS)
    with pytest.raises(DecodeError, match="more than 0 maps"):
        unpack_bounded(msgpack.packb([{}]), max_lists=3, raw=False)
    assert unpack_bounded(msgpack.packb({"a": [1]}), max_lists=1, max_maps=1) == {"a": [1]}
    with pytest.raises(DecodeError, match="malformed"):
        unpack_bounded(b"\xc1", max_lists=1)


# --- valid encodings are unaffected -----------------------------------------------


def test_non_minimal_but_valid_msgpack_still_decodes():
    """Other encoders may pick wider encodings than msgpack-python; the reader
    accepts every msgpack encoding of a valid value, as `unpackb` did."""
    want = Message(
        MsgType.APPEND,
        to=2,
        frm=1,
        term=5,
        entries=(Entry(5, 7, EntryType.CONF_CHANGE, b"ab"),),
    )
    body = b"".join(
        [
            b"\xde\x00\x06",  # map16 of 6 fields
            b"\xd9\x01v\xcf" + struct.pack(">Q", 1),  # str8 key, uint64 value
            b"\xda\x00\x01t\xd0\x01",  # str16 key, int8 value
            b"\xa2to\xcd\x00\x02",  # uint16
            b"\xa2fr\xd3" + struct.pack(">q", 1),  # int64
            b"\xa2tm\xce\x00\x00\x00\x05",  # uint32
            b"\xa1e\xdc\x00\x01",  # array16 of one entry
            b"\xdd\x00\x00\x00\x04\x05\xcc\x07\x01\xc5\x00\x02ab",  # array32, uint8, bin16
        ]
    )
    assert decode_message(body) == want
    assert decode_message(encode_message(want)) == want


@pytest.mark.parametrize("n", [0, 1, 64, 1000])
def test_appends_of_every_size_round_trip(n):
    m = Message(
        MsgType.APPEND,
        to=2,
        frm=1,
        term=3,
        index=99,
        log_term=2,
        commit=98,
        entries=tuple(Entry(3, 100 + k, data=bytes([k % 256]) * (k % 300)) for k in range(n)),
    )
    assert decode_message(encode_message(m)) == m


# --- off-loop decoding ----------------------------------------------------------


class RecordingExecutor(Executor):
    """Runs submissions in a real thread and records that they happened."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.threads: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def run() -> Any:
            self.threads.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return self.pool.submit(run)

    def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
        self.pool.shutdown(wait)


async def test_large_frames_decode_in_a_worker_and_small_ones_inline():
    ex = RecordingExecutor()
    try:
        hb = Message(MsgType.HEARTBEAT, to=2, frm=1, term=1)
        assert await decode_message_async(encode_message(hb), executor=ex) == hb
        assert ex.threads == []
        big = Message(MsgType.APPEND, to=2, frm=1, entries=(Entry(1, 1, data=b"x" * 300_000),))
        assert await decode_message_async(encode_message(big), executor=ex) == big
        assert len(ex.threads) == 1
        assert ex.threads[0] != threading.current_thread().name
        with pytest.raises(DecodeError):
            await decode_message_async(nested_empty(FULL), executor=ex)
        assert len(ex.threads) == 2
    finally:
        ex.shutdown()


async def test_default_worker_pool_is_used_and_errors_propagate():
    big = Message(MsgType.APPEND, to=2, frm=1, entries=(Entry(1, 1, data=b"y" * 300_000),))
    got = await asyncio.wait_for(decode_message_async(encode_message(big)), 30)
    assert got == big
    with pytest.raises(DecodeError, match="expected a map"):
        await asyncio.wait_for(decode_message_async(top_level_array(FULL)), 30)
