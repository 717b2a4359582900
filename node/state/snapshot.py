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
import hashlib
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

import msgpack

from .audit import verify_chain
from .digest import lp, u64
from .errors import ChainError, DecodeError
from .integrity import check_integrity
from .model import RequestState, State

# 2: governance, removed identities, time locks; 3: checkpoints; 4: requests' DKG round-1
# packages (`Request.dkg_round1`); 5: members' erasure confirmations (`Version.erased_by`);
# 6: grants (`State.grants`; `Request.grant`, `grant_use`, `grant_version`,
# `grant_signature`); 7: the audit key (`Purpose.AUDIT`) and audit checkpoints
# (`State.audit_checkpoints`, `audit_checkpoint_count`); 8: key metadata (`Key.owner`,
# `description`, `tags`) and aliases (`State.aliases`); rollback and dual-sign
# (`Version.replaced`, `rolled_back_epoch`, `rollback_uses`; `Policy.dual_sign_epochs`;
# `Request.dual_version`); 9: executed decrypt requests that take late partials
# (`State.lingering`); 10: share repairs and refreshes (`State.repairs`, `refreshes`,
# `Version.generation`); 11: recovery officers, escrow and recoveries (`State.officers`,
# `escrows`, `officer_approvals`, `recoveries`, `exports`). Any other version is refused, except
# that version-9 and 10 snapshots are read as version 11 ones without what they lack
# (`_MIGRATE`), so that a node upgraded in place restarts from the snapshot it wrote.
SNAPSHOT_VERSION = 11
SNAPSHOT_CONTEXT = b"custody-cluster/v1/snapshot"
MAX_SNAPSHOT_BYTES = 1 << 30


_SCALARS = (bool, int, str, bytes)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


def _dump(value: Any) -> Any:
    t = type(value)
    if t in _SCALARS:
        return value
    names = _field_names(t)
    if names is not None:
        return {n: _dump(getattr(value, n)) for n in names}
    if isinstance(value, Enum):
        return value.value
    if t is dict:
        return {_dump(k): _dump(value[k]) for k in sorted(value)}
    if t is list or t is tuple:
        return [_dump(v) for v in value]
    raise TypeError(f"cannot snapshot {t.__name__}")


def state_hash(snapshot_bytes: bytes, index: int) -> bytes:
    """The hash of the snapshot bytes taken at log `index`, which members sign (inside
    `checkpoint.checkpoint_message`, bound to the cluster's genesis).

    A member installs a snapshot only with valid signatures over this hash by at least
    `threshold` members (`checkpoint.open_snapshot`, through the runner's snapshot
    guard), so a lone leader cannot hand it a state that the signed commands did not
    produce. `snapshot_bytes` are whatever the runner snapshots (for the custody node:
    the runner's envelope around `Machine.snapshot()`, session table included).
    """
    return hashlib.sha512(lp(SNAPSHOT_CONTEXT) + u64(index) + lp(snapshot_bytes)).digest()


def encode_state(state: State) -> bytes:
    return msgpack.packb({"v": SNAPSHOT_VERSION, "state": _dump(state)}, use_bin_type=True)


# Older snapshot versions still read: version -> the State fields it lacks (their defaults
# are used, and it must have been written by the encoder of its day: no such field set).
_RECOVERY_FIELDS = ("officers", "escrows", "officer_approvals", "recoveries", "exports")
_MIGRATE: dict[int, tuple[str, ...]] = {
    9: ("addresses", "repairs", "refreshes", *_RECOVERY_FIELDS),
    10: _RECOVERY_FIELDS,
}
_MIGRATE_VERSION_FIELDS: dict[int, tuple[str, ...]] = {9: ("generation",), 10: ()}


def _versions_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    keys = body.get("keys")
    if type(keys) is not dict:
        return []
    out = []
    for key in keys.values():
        versions = key.get("versions") if type(key) is dict else None
        if type(versions) is dict:
            out.extend(v for v in versions.values() if type(v) is dict)
    return out


def _encode_old(state: State, version: int) -> bytes:
    body = _dump(state)
    for name in _MIGRATE[version]:
        del body[name]
    for v in _versions_of(body):
        for name in _MIGRATE_VERSION_FIELDS[version]:
            del v[name]
    return msgpack.packb({"v": version, "state": body}, use_bin_type=True)


Loader = Callable[[Any, str], Any]


@functools.cache
def _loader(tp: Any) -> Loader:
    """Build (once per type) a strict loader for values of type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict:
        load_k, load_v = _loader(args[0]), _loader(args[1])

        def load_dict(raw: Any, path: str) -> Any:
            if type(raw) is not dict:
                raise DecodeError(f"{path}: expected a map")
            return {load_k(k, f"{path}.<key>"): load_v(v, f"{path}[{k!r}]") for k, v in raw.items()}

        return load_dict
    if origin in (tuple, list):
        load_item, make = _loader(args[0]), origin

        def load_seq(raw: Any, path: str) -> Any:
            if type(raw) is not list:
                raise DecodeError(f"{path}: expected an array")
            return make(load_item(v, f"{path}[{i}]") for i, v in enumerate(raw))

        return load_seq
    if origin is not None:
        raise TypeError(f"unsupported snapshot type {tp!r}")
    if dataclasses.is_dataclass(tp):
        return functools.partial(_load_dataclass, tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        enum_type = tp

        def load_enum(raw: Any, path: str) -> Any:
            try:
                return enum_type(raw)
            except ValueError:
                raise DecodeError(f"{path}: bad {enum_type.__name__} value") from None

        return load_enum
    if tp in _SCALARS:
        scalar = tp

        def load_scalar(raw: Any, path: str) -> Any:
            if type(raw) is not scalar:
                raise DecodeError(f"{path}: expected {scalar.__name__}")
            if scalar is int and not 0 <= raw < 1 << 64:
                raise DecodeError(f"{path}: integer out of range")
            return raw

        return load_scalar
    raise TypeError(f"unsupported snapshot type {tp!r}")


@functools.cache
def _dataclass_loaders(cls: type) -> tuple[frozenset[str], tuple[tuple[str, Loader], ...]]:
    hints = typing.get_type_hints(cls)
    names = _field_names(cls) or ()
    return frozenset(names), tuple((n, _loader(hints[n])) for n in names)


def _load_dataclass(cls: type, raw: Any, path: str) -> Any:
    if type(raw) is not dict:
        raise DecodeError(f"{path}: expected a map")
    names, loaders = _dataclass_loaders(cls)
    if raw.keys() != names:
        raise DecodeError(f"{path}: fields differ from {cls.__name__}")
    return cls(**{n: load(raw[n], f"{path}.{n}") for n, load in loaders})


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
    version = raw["v"]
    if type(version) is not int or (version != SNAPSHOT_VERSION and version not in _MIGRATE):
        raise DecodeError(f"unsupported snapshot version (expected {SNAPSHOT_VERSION})")
    body = raw["state"]
    if version != SNAPSHOT_VERSION:
        if type(body) is not dict or any(name in body for name in _MIGRATE[version]):
            raise DecodeError(f"not a version-{version} snapshot")
        defaults = {f.name: f for f in dataclasses.fields(State)}
        for name in _MIGRATE[version]:
            body[name] = _dump(defaults[name].default_factory())  # type: ignore[misc]
        for v in _versions_of(body):
            for name in _MIGRATE_VERSION_FIELDS[version]:
                if name in v:
                    raise DecodeError(f"not a version-{version} snapshot")
                v[name] = 0
    state = _load_dataclass(State, body, "state")
    _check_consistency(state)
    again = encode_state(state) if version == SNAPSHOT_VERSION else _encode_old(state, version)
    if again != data:
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
        (state.removed_members, "name"),
        (state.removed_principals, "name"),
        (state.policies, "policy_id"),
        (state.keys, "key_id"),
        (state.grants, "grant_id"),
        (state.aliases, "name"),
        (state.requests, "ref"),
        (state.repairs, "member"),
        (state.recoveries, "request"),
    )
    for table, attr in named:
        for key, item in table.items():
            if getattr(item, attr) != key:
                raise DecodeError(f"snapshot entry {key!r} is filed under the wrong name")
    for name, e in state.escrows.items():
        if name != f"{e.member}/{e.key_id}/{e.version}":
            raise DecodeError(f"escrow {name!r} is filed under the wrong name")
    for key in state.keys.values():
        for number, version in key.versions.items():
            if version.number != number:
                raise DecodeError(f"key {key.key_id!r}: version filed under wrong number")
    open_now = {
        rid: req.author
        for rid, req in state.requests.items()
        if req.state in (RequestState.PENDING, RequestState.APPROVED)
    }
    if state.open != open_now:
        raise DecodeError("snapshot index of open requests is inconsistent")
    check_integrity(state)
    for rid, dedup in state.outcomes.items():
        if dedup.outcome.request_id != rid.partition(":")[2] or dedup.outcome.seq >= len(
            state.audit
        ):
            raise DecodeError(f"outcome of {rid!r} inconsistent with the audit chain")
