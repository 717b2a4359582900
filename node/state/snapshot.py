"""Versioned, canonical msgpack snapshots of the whole state.

Canonical means: the same state always encodes to the same bytes, whatever order
its dicts were filled in. Dataclasses become maps in declared field order, dicts
become maps with sorted keys, enums become their string values, tuples and
lists become arrays. Replicas that applied the same commands therefore produce
byte-identical snapshots, which is checked by the property tests.

Restore is strict: every field's type is checked against the model's type hints,
unknown or missing fields are rejected, sizes are bounded, and the audit chain
and a few cross-references are re-verified before the state is accepted.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from enum import Enum
from typing import Any

import msgpack

from .audit import verify_chain
from .errors import ChainError, DecodeError
from .model import State

SNAPSHOT_VERSION = 1
MAX_SNAPSHOT_BYTES = 1 << 30


def _dump(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {_dump(k): _dump(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    if isinstance(value, bool | int | str | bytes):
        return value
    raise TypeError(f"cannot snapshot {type(value).__name__}")


def encode_state(state: State) -> bytes:
    return msgpack.packb({"v": SNAPSHOT_VERSION, "state": _dump(state)}, use_bin_type=True)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _load(tp: Any, raw: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is None:
        if dataclasses.is_dataclass(tp):
            return _load_dataclass(tp, raw, path)
        if isinstance(tp, type) and issubclass(tp, Enum):
            try:
                return tp(raw)
            except ValueError:
                raise DecodeError(f"{path}: bad {tp.__name__} value") from None
        if tp in (bool, int, str, bytes):
            if type(raw) is not tp:
                raise DecodeError(f"{path}: expected {tp.__name__}")
            if tp is int and not 0 <= raw < 1 << 64:
                raise DecodeError(f"{path}: integer out of range")
            return raw
        raise DecodeError(f"{path}: unsupported type {tp!r}")
    args = typing.get_args(tp)
    if origin is dict:
        if type(raw) is not dict:
            raise DecodeError(f"{path}: expected a map")
        out = {}
        for k in sorted(raw, key=lambda k: (type(k).__name__, k)):
            key = _load(args[0], k, f"{path}.<key>")
            out[key] = _load(args[1], raw[k], f"{path}[{k!r}]")
        return out
    if origin in (tuple, list):
        if type(raw) is not list:
            raise DecodeError(f"{path}: expected an array")
        items = [_load(args[0], v, f"{path}[{i}]") for i, v in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is types.UnionType or origin is typing.Union:
        raise DecodeError(f"{path}: unions are not snapshot types")
    raise DecodeError(f"{path}: unsupported type {tp!r}")


def _load_dataclass(cls: type, raw: Any, path: str) -> Any:
    if type(raw) is not dict:
        raise DecodeError(f"{path}: expected a map")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if set(raw) != set(names):
        raise DecodeError(f"{path}: fields differ from {cls.__name__}")
    return cls(**{n: _load(hints[n], raw[n], f"{path}.{n}") for n in names})


def decode_state(data: bytes) -> State:
    """Strictly decode and check a snapshot; raises `DecodeError`."""
    if type(data) is not bytes or len(data) > MAX_SNAPSHOT_BYTES:
        raise DecodeError("snapshot must be bytes of bounded size")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False, max_ext_len=0)
    except Exception as exc:
        raise DecodeError(f"not a valid snapshot: {type(exc).__name__}") from None
    if type(raw) is not dict or set(raw) != {"v", "state"}:
        raise DecodeError("snapshot must be a map {v, state}")
    if raw["v"] != SNAPSHOT_VERSION or type(raw["v"]) is not int:
        raise DecodeError(f"unsupported snapshot version (expected {SNAPSHOT_VERSION})")
    state = _load_dataclass(State, raw["state"], "state")
    _check_consistency(state)
    if encode_state(state) != data:
        raise DecodeError("snapshot is not in canonical form")
    return state


def _check_consistency(state: State) -> None:
    try:
        verify_chain(state.audit)
    except ChainError as exc:
        raise DecodeError(f"snapshot audit chain invalid: {exc}") from None
    named = (
        (state.members, "name"),
        (state.principals, "name"),
        (state.policies, "policy_id"),
        (state.keys, "key_id"),
        (state.requests, "request_id"),
    )
    for table, attr in named:
        for key, item in table.items():
            if getattr(item, attr) != key:
                raise DecodeError(f"snapshot entry {key!r} is filed under the wrong name")
    for key in state.keys.values():
        for number, version in key.versions.items():
            if version.number != number:
                raise DecodeError(f"key {key.key_id!r}: version filed under wrong number")
    for rid, dedup in state.outcomes.items():
        if dedup.outcome.request_id != rid or dedup.outcome.seq >= len(state.audit):
            raise DecodeError(f"outcome of {rid!r} inconsistent with the audit chain")
