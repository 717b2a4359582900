"""Commands: immutable values, and their strict msgpack encoding.

A command on the wire is one msgpack map:

    {"v": 1, "kind": <str>, "request_id": <id>, "author": <name>, <fields of the kind>...}

`decode_command` is the only way bytes from the Raft log become a command. It
bounds the total size and every string, byte string and list, rejects unknown or
missing fields, wrong types (a bool is not an int, a float is nothing) and
trailing bytes, and raises `DecodeError` with the offending path. Encoding is
canonical (fixed field order), so the same command always has the same bytes.

Signed commands (`SIGNED_KINDS`) carry `signature`: Ed25519 by the author's
registered key (operator principal key, or member identity key) over
`digest.signing_digest(cluster_id, signing_bytes(cmd))`.

Governance commands (`GOVERNANCE_KINDS`) change nothing by themselves: each opens a
governance request whose payload is its `signing_bytes`, which `decode_change` turns
back into the command when the governance quorum has approved it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack

from .errors import DecodeError
from .metadata import (
    ALIAS_RE,
    MAX_DESCRIPTION_CHARS,
    MAX_OWNER_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    TAG_KEY_RE,
)
from .names import is_author_name, is_member_name, is_principal_name

SCHEMA_VERSION = 1
MAX_COMMAND_BYTES = 80 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TEXT_CHARS = 256
MAX_MEMBERS = 15
MAX_PRINCIPALS = 256
MAX_APPROVERS = 64
MAX_CHECKPOINTS = 4  # newest checkpoints kept per member (checkpoint.py)
MAX_DKG_PACKAGE_BYTES = 16 * 1024  # one member's DKG round-1 package (opaque to the machine)
# A repair post (opaque to the machine); the repair's batch size keeps helper posts within.
MAX_REPAIR_POST_BYTES = 60 * 1024
MAX_REFRESH_BATCH = 256  # versions per refresh run (within the engines' MAX_ITEMS)
U32 = (1 << 32) - 1
U62 = (1 << 62) - 1
# Epochs stay far inside the schema: the largest epoch plus the largest waiting or grace
# period (U32) plus the largest time lock is still < 2^62, so no derived epoch
# (activation = epoch + waiting, destroyable = retired + grace, effective = approved +
# time lock) can leave its field.
MAX_EPOCH = 1 << 48
# The governance time lock: at least one epoch (a weakening change is never immediate) and
# at most 4096 (a quorum cannot make every later weakening change wait forever).
MAX_TIME_LOCK_EPOCHS = 4096
# Grants (docs/grants.md): at most this many uses, and an expiry at most this many epochs
# after the epoch the grant is submitted in.
MAX_GRANT_USES = 1_000_000
MAX_GRANT_EPOCHS = 65_536
# A policy's dual-sign window (epochs after a rotation's activation in which the replaced
# version also signs): at most this many epochs.
MAX_DUAL_SIGN_EPOCHS = 65_536

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
# Text is printable ASCII, spelled out: `str.isprintable()` follows the interpreter's
# Unicode tables, so replicas on two Python versions would disagree on new characters.
_TEXT_RE = re.compile(r"[\x20-\x7e]*")
_RID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


# ---------------------------------------------------------------- field specs


class Spec:
    """A field's type and bounds: `check` returns the value or raises DecodeError."""

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


class Name(Spec):
    def __init__(self, pattern: re.Pattern[str] = _NAME_RE) -> None:
        self.pattern = pattern

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str or not self.pattern.fullmatch(value):
            raise DecodeError(f"{path}: expected an identifier ([A-Za-z0-9._:@-], bounded)")
        return value


class NameRule(Spec):
    """A member or principal name, by the PKI's rule (`names.py`)."""

    def __init__(self, rule: Callable[[str], bool], what: str) -> None:
        self.rule, self.what = rule, what

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str or not self.rule(value):
            raise DecodeError(f"{path}: expected {self.what}")
        return value


class Ref(Spec):
    """A request reference `<author>:<request id>` (request ids are scoped by author)."""

    def check(self, value: Any, path: str) -> str:
        author, sep, rid = value.partition(":") if type(value) is str else ("", "", "")
        if not sep or not is_author_name(author) or not _RID_RE.fullmatch(rid):
            raise DecodeError(f"{path}: expected a request reference <author>:<request id>")
        return value


class Text(Spec):
    def __init__(self, max_chars: int = MAX_TEXT_CHARS) -> None:
        self.max_chars = max_chars

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str:
            raise DecodeError(f"{path}: expected a string")
        if len(value) > self.max_chars or not _TEXT_RE.fullmatch(value):
            raise DecodeError(f"{path}: string too long or not printable ASCII")
        return value


class NonEmpty(Spec):
    """`inner`, but never its empty value (an optional field's default is not encoded)."""

    def __init__(self, inner: Spec) -> None:
        self.inner = inner

    def check(self, value: Any, path: str) -> Any:
        out = self.inner.check(value, path)
        if not out:
            raise DecodeError(f"{path}: must not be empty when present")
        return out

    def dump(self, value: Any) -> Any:
        return self.inner.dump(value)


class Tags(Spec):
    """Key tags: a list of [key, value] pairs in strictly ascending key order (one
    encoding per set of tags), at most MAX_TAGS; keys by `metadata.TAG_KEY_RE`, values
    printable ASCII of at most MAX_TAG_VALUE_CHARS."""

    VALUE = Text(MAX_TAG_VALUE_CHARS)

    def check(self, value: Any, path: str) -> tuple[tuple[str, str], ...]:
        if type(value) is not list or len(value) > MAX_TAGS:
            raise DecodeError(f"{path}: expected a list of at most {MAX_TAGS} [key, value] pairs")
        out: list[tuple[str, str]] = []
        for i, pair in enumerate(value):
            if type(pair) is not list or len(pair) != 2:
                raise DecodeError(f"{path}[{i}]: expected a [key, value] pair")
            k, v = pair
            if type(k) is not str or not TAG_KEY_RE.fullmatch(k):
                raise DecodeError(f"{path}[{i}]: tag key must match {TAG_KEY_RE.pattern}")
            if out and k <= out[-1][0]:
                raise DecodeError(f"{path}[{i}]: tag keys must be unique and sorted")
            out.append((k, self.VALUE.check(v, f"{path}[{i}].value")))
        return tuple(out)

    def dump(self, value: Any) -> Any:
        return [[k, v] for k, v in value]


class Bytes(Spec):
    def __init__(self, *, lengths: tuple[int, ...] = (), min_len: int = 0, max_len: int = 0):
        self.lengths, self.min_len, self.max_len = lengths, min_len, max_len

    def check(self, value: Any, path: str) -> bytes:
        if type(value) is not bytes:
            raise DecodeError(f"{path}: expected bytes")
        n = len(value)
        if self.lengths and n not in self.lengths:
            raise DecodeError(f"{path}: length {n} not in {self.lengths}")
        if not self.lengths and not self.min_len <= n <= self.max_len:
            raise DecodeError(f"{path}: length {n} outside [{self.min_len}, {self.max_len}]")
        return value


class Int(Spec):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, path: str) -> int:
        if type(value) is not int or not self.lo <= value <= self.hi:
            raise DecodeError(f"{path}: expected an integer in [{self.lo}, {self.hi}]")
        return value


class Bool(Spec):
    def check(self, value: Any, path: str) -> bool:
        if type(value) is not bool:
            raise DecodeError(f"{path}: expected a boolean")
        return value


class OneOf(Spec):
    def __init__(self, *values: str) -> None:
        self.values = frozenset(values)

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str or value not in self.values:
            raise DecodeError(f"{path}: expected one of {sorted(self.values)}")
        return value


class ListOf(Spec):
    def __init__(self, item: Spec, max_items: int, *, unique: bool = False) -> None:
        self.item, self.max_items, self.unique = item, max_items, unique

    def check(self, value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list or len(value) > self.max_items:
            raise DecodeError(f"{path}: expected a list of at most {self.max_items} items")
        out = tuple(self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value))
        if self.unique and len(set(out)) != len(out):
            raise DecodeError(f"{path}: duplicate items")
        return out

    def dump(self, value: Any) -> Any:
        return [self.item.dump(v) for v in value]


class Struct(Spec):
    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise DecodeError(f"{path}: expected a map")
        return self.cls(**_check_fields(value, self.cls.SCHEMA, path))

    def dump(self, value: Any) -> Any:
        return {name: spec.dump(getattr(value, name)) for name, spec in value.SCHEMA}


def _check_fields(
    raw: dict[Any, Any],
    schema: tuple[tuple[str, Spec], ...],
    path: str,
    optional: frozenset[str] = frozenset(),
):
    """Check every field of `schema`. An `optional` field may be absent (it then keeps its
    default); when present it must pass its spec, whose values never include the default,
    so each command still has exactly one encoding."""
    names = {name for name, _ in schema}
    extra = sorted(str(k) for k in raw if k not in names)
    if extra:
        raise DecodeError(f"{path}: unknown field(s) {extra}")
    missing = [name for name, _ in schema if name not in raw and name not in optional]
    if missing:
        raise DecodeError(f"{path}: missing field(s) {missing}")
    return {name: spec.check(raw[name], f"{path}.{name}") for name, spec in schema if name in raw}


# ------------------------------------------------------------ nested values

PRINCIPAL = NameRule(is_principal_name, "a principal name ([a-z][a-z0-9_-]{0,31}, not node-*)")
MEMBER = NameRule(is_member_name, "a member name (node-1 .. node-15)")
AUTHOR = NameRule(is_author_name, "a member or principal name")
REF = Ref()
_ADDRESS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}:([1-9][0-9]{0,4})")
ADDRESS = NameRule(
    lambda v: type(v) is str and (m := _ADDRESS_RE.fullmatch(v)) is not None
    and int(m.group(1)) <= 65535, "an address host:port (or empty)",
)  # fmt: skip

ROLES = ("operator", "approver", "client", "auditor")


@dataclass(frozen=True, slots=True)
class MemberSpec:
    name: str
    index: int
    public_key: bytes
    SCHEMA: ClassVar = (
        ("name", MEMBER),
        ("index", Int(1, MAX_MEMBERS)),
        ("public_key", Bytes(lengths=(32,))),
    )


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    name: str
    role: str
    public_key: bytes  # raw Ed25519 (32 bytes) or empty for roles that never sign
    SCHEMA: ClassVar = (
        ("name", PRINCIPAL),
        ("role", OneOf(*ROLES)),
        ("public_key", Bytes(lengths=(0, 32))),
    )


# ---------------------------------------------------------------- commands

RID = Name(_RID_RE)
VERSION = Int(1, U32)
PAYLOAD = Bytes(min_len=1, max_len=MAX_PAYLOAD_BYTES)
SIGNATURE = Bytes(lengths=(64,))
OWNER = Text(MAX_OWNER_CHARS)
DESCRIPTION = Text(MAX_DESCRIPTION_CHARS)
TAGS = Tags()
ALIAS = NameRule(lambda v: type(v) is str and ALIAS_RE.fullmatch(v) is not None,
                 f"an alias name ({ALIAS_RE.pattern})")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Command:
    """Base: every command has an idempotency key and an (authenticated) author."""

    request_id: str
    author: str
    KIND: ClassVar[str] = ""
    SCHEMA: ClassVar[tuple[tuple[str, Spec], ...]] = ()
    # Fields that are left out of the encoding when they hold their default (empty) value.
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()


TIME_LOCK = Int(1, MAX_TIME_LOCK_EPOCHS)
APPROVER_LIST = ListOf(PRINCIPAL, MAX_APPROVERS, unique=True)


@dataclass(frozen=True, slots=True)
class Bootstrap(Command):
    cluster_id: str
    threshold: int
    members: tuple[MemberSpec, ...]
    principals: tuple[PrincipalSpec, ...]
    governance_approvers: tuple[str, ...]  # approvers (in `principals`) who decide governance
    governance_k: int  # how many of them (>= 2 unless `unsafe`)
    time_lock_epochs: int  # how long a weakening governance change waits (1..4096 epochs)
    unsafe: bool = False  # explicit, audited waiver of the two-party minimums (t, k >= 2)
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "bootstrap"
    SCHEMA: ClassVar = (
        ("cluster_id", Name()),
        ("threshold", Int(1, MAX_MEMBERS)),
        ("members", ListOf(Struct(MemberSpec), MAX_MEMBERS)),
        ("principals", ListOf(Struct(PrincipalSpec), MAX_PRINCIPALS)),
        ("governance_approvers", APPROVER_LIST),
        ("governance_k", Int(1, MAX_APPROVERS)),
        ("time_lock_epochs", TIME_LOCK),
        ("unsafe", Bool()),
        ("signature", SIGNATURE),
    )


# Governance commands: each opens a governance request that only the governance quorum
# can approve; weakening ones then wait the time lock (see machine.py, rules.py).


@dataclass(frozen=True, slots=True)
class AddPrincipal(Command):
    name: str
    role: str
    public_key: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "add_principal"
    SCHEMA: ClassVar = (*PrincipalSpec.SCHEMA, ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RemovePrincipal(Command):
    name: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "remove_principal"
    SCHEMA: ClassVar = (("name", PRINCIPAL), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RekeyPrincipal(Command):
    name: str
    public_key: bytes  # the new raw Ed25519 key, checked like a registration
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "rekey_principal"
    SCHEMA: ClassVar = (
        ("name", PRINCIPAL),
        ("public_key", Bytes(lengths=(32,))),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class SetGovernance(Command):
    approvers: tuple[str, ...]
    k: int
    time_lock_epochs: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "set_governance"
    SCHEMA: ClassVar = (
        ("approvers", APPROVER_LIST),
        ("k", Int(1, MAX_APPROVERS)),
        ("time_lock_epochs", TIME_LOCK),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class SetThreshold(Command):
    threshold: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "set_threshold"
    SCHEMA: ClassVar = (("threshold", Int(1, MAX_MEMBERS)), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class AddMember(Command):
    """A new member; with its addresses, every member learns them from the log and the
    leader adds it to Raft as a learner, then a voter once it caught up."""

    name: str
    index: int
    public_key: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    raft_address: str = ""  # "host:port"
    api_address: str = ""
    KIND: ClassVar[str] = "add_member"
    SCHEMA: ClassVar = (
        *MemberSpec.SCHEMA, ("signature", SIGNATURE),
        ("raft_address", ADDRESS), ("api_address", ADDRESS),
    )  # fmt: skip
    OPTIONAL: ClassVar = frozenset({"raft_address", "api_address"})


@dataclass(frozen=True, slots=True)
class RemoveMember(Command):
    name: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "remove_member"
    SCHEMA: ClassVar = (("name", MEMBER), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RepairMember(Command):
    """Rebuild member `name`'s shares of every key version from t helpers
    (docs/recovery.md). `public_key`: its new identity key when its token was lost (the
    old key is dead; a change of identity waits the time lock), empty to keep it."""

    name: str
    public_key: bytes = b""
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    # A replacement machine: its addresses ("host:port"), moved in the address book.
    raft_address: str = ""
    api_address: str = ""
    KIND: ClassVar[str] = "repair_member"
    SCHEMA: ClassVar = (
        ("name", MEMBER),
        ("public_key", Bytes(lengths=(0, 32))),
        ("signature", SIGNATURE),
        ("raft_address", ADDRESS),
        ("api_address", ADDRESS),
    )
    OPTIONAL: ClassVar = frozenset({"public_key", "raft_address", "api_address"})


@dataclass(frozen=True, slots=True)
class CancelRequest(Command):
    request: str  # an open governance request (`<author>:<id>`), typically time-locked
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "cancel"
    SCHEMA: ClassVar = (("request", REF), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class SetPolicy(Command):
    policy_id: str
    requesters: tuple[str, ...]
    operations: tuple[str, ...]
    approvers: tuple[str, ...]
    k: int
    rotation_interval_s: int
    max_uses: int
    grace_epochs: int
    waiting_epochs: int
    escrow: bool
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    dual_sign_epochs: int = 0  # optional: not encoded when 0
    KIND: ClassVar[str] = "set_policy"
    SCHEMA: ClassVar = (
        ("policy_id", Name()),
        ("requesters", ListOf(PRINCIPAL, MAX_PRINCIPALS, unique=True)),
        ("operations", ListOf(OneOf("sign", "decrypt"), 2, unique=True)),
        ("approvers", APPROVER_LIST),
        ("k", Int(1, MAX_APPROVERS)),
        ("rotation_interval_s", Int(0, U62)),
        ("max_uses", Int(0, U62)),
        ("grace_epochs", Int(0, U32)),
        ("waiting_epochs", Int(1, U32)),
        ("escrow", Bool()),
        ("dual_sign_epochs", Int(1, MAX_DUAL_SIGN_EPOCHS)),
        ("signature", SIGNATURE),
    )
    OPTIONAL: ClassVar = frozenset({"dual_sign_epochs"})


@dataclass(frozen=True, slots=True)
class AdvanceEpoch(Command):
    epoch: int
    at: int  # wall-clock seconds proposed by the leader: a policy input, never a condition
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "advance_epoch"
    SCHEMA: ClassVar = (
        ("epoch", Int(1, MAX_EPOCH)),
        ("at", Int(0, U62)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class CreateKey(Command):
    key_id: str
    purpose: str
    policy_id: str
    activate_epoch: int = 0  # earliest epoch for version 1 (0 = as soon as the DKG allows)
    # Optional metadata (docs/metadata.md); not part of the create request's digest.
    owner: str = ""
    description: str = ""
    tags: tuple[tuple[str, str], ...] = ()  # (key, value), keys strictly ascending
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "create_key"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("purpose", OneOf("sign", "encrypt")),
        ("policy_id", Name()),
        ("activate_epoch", Int(0, MAX_EPOCH)),
        ("owner", NonEmpty(OWNER)),
        ("description", NonEmpty(DESCRIPTION)),
        ("tags", NonEmpty(TAGS)),
        ("signature", SIGNATURE),
    )
    OPTIONAL: ClassVar = frozenset({"owner", "description", "tags"})


@dataclass(frozen=True, slots=True)
class SetKeyMetadata(Command):
    """Replace a key's metadata (all three fields; empty clears). Takes effect at once:
    metadata grants nothing (docs/metadata.md); the audit record carries its hash."""

    key_id: str
    owner: str
    description: str
    tags: tuple[tuple[str, str], ...]
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "set_key_metadata"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("owner", OWNER),
        ("description", DESCRIPTION),
        ("tags", TAGS),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class CreateAlias(Command):
    """Bind a new alias name to a key (or re-create a deleted alias for the same key)."""

    alias: str
    key_id: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "create_alias"
    SCHEMA: ClassVar = (("alias", ALIAS), ("key_id", Name()), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class DeleteAlias(Command):
    """Delete a live alias: its name stays reserved for the key it named."""

    alias: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "delete_alias"
    SCHEMA: ClassVar = (("alias", ALIAS), ("signature", SIGNATURE))


# A sign/decrypt request may be made under a grant (docs/grants.md): it then names the
# grant and carries the grantee's own Ed25519 signature over `signing_digest` of its
# `signing_bytes` (the command without `signature`, `grant` included). Both fields are
# optional and go together: absent (and not encoded) for an ordinary request.
GRANT_FIELDS = (("grant", Name()), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RequestSign(Command):
    key_id: str
    version: int  # 0 = the primary version at submission
    context: str
    message: bytes
    grant: str = ""  # a grant id: approved at once if the grant allows it (signed then)
    signature: bytes = b""  # under a grant: Ed25519 by the grantee (the author)
    KIND: ClassVar[str] = "request_sign"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", Int(0, U32)),
        ("context", Text()),
        ("message", PAYLOAD),
        *GRANT_FIELDS,
    )
    OPTIONAL: ClassVar = frozenset({"grant", "signature"})


@dataclass(frozen=True, slots=True)
class RequestDecrypt(Command):
    key_id: str
    version: int
    context: str
    ciphertext: bytes
    grant: str = ""  # a grant id: approved at once if the grant allows it (signed then)
    signature: bytes = b""  # under a grant: Ed25519 by the grantee (the author)
    KIND: ClassVar[str] = "request_decrypt"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("context", Text()),
        ("ciphertext", PAYLOAD),
        *GRANT_FIELDS,
    )
    OPTIONAL: ClassVar = frozenset({"grant", "signature"})


@dataclass(frozen=True, slots=True)
class CreateGrant(Command):
    """Propose a grant: decided by the key policy's quorum (a `grant` request whose
    payload is this command's `signing_bytes`, so an approval covers every field)."""

    grant_id: str
    grantee: str  # a client with a registered Ed25519 key, a requester of the key's policy
    key_id: str
    operations: tuple[str, ...]  # within the key's purpose and its policy's operations
    context: str
    context_match: str  # "exact": the request's context equals `context`; "prefix"
    max_uses: int
    expires_epoch: int  # usable while the epoch is below it
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "create_grant"
    SCHEMA: ClassVar = (
        ("grant_id", Name()),
        ("grantee", PRINCIPAL),
        ("key_id", Name()),
        ("operations", ListOf(OneOf("sign", "decrypt"), 2, unique=True)),
        ("context", Text()),
        ("context_match", OneOf("exact", "prefix")),
        ("max_uses", Int(1, MAX_GRANT_USES)),
        ("expires_epoch", Int(1, MAX_EPOCH)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RevokeGrant(Command):
    """Revoke a grant at once (no quorum: taking power away needs none)."""

    grant_id: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "revoke_grant"
    SCHEMA: ClassVar = (("grant_id", Name()), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RequestRotate(Command):
    key_id: str
    at: int  # wall-clock seconds; a node's scheduled rotation is accepted only if due
    activate_epoch: int = 0  # earliest epoch for the new version (0 = as soon as possible)
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "request_rotate"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("at", Int(0, U62)),
        ("activate_epoch", Int(0, MAX_EPOCH)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RequestRevoke(Command):
    key_id: str
    version: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "request_revoke"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RequestRollback(Command):
    """Make `version` (the retired version the primary replaced) the primary again, once
    the key policy's quorum approves; the primary retires (docs/lifecycle.md)."""

    key_id: str
    version: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "request_rollback"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RequestDestroy(Command):
    key_id: str
    version: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "request_destroy"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class Approve(Command):
    request: str
    signature: bytes  # Ed25519 over the 64-byte canonical request digest
    KIND: ClassVar[str] = "approve"
    SCHEMA: ClassVar = (("request", REF), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RecordDkgResult(Command):
    request: str
    group_public_key: bytes
    verification_shares: tuple[bytes, ...]
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_dkg_result"
    SCHEMA: ClassVar = (
        ("request", REF),
        ("group_public_key", Bytes(lengths=(32,))),
        ("verification_shares", ListOf(Bytes(lengths=(32,)), MAX_MEMBERS)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class PostDkgRound1(Command):
    """A member broadcasts its DKG round-1 package (commitments, proofs of knowledge, an
    ephemeral X25519 key) for an approved create/rotate request, through the log, so
    that every member sees the same packages. Opaque bytes to the machine."""

    request: str
    package: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "dkg_round1"
    SCHEMA: ClassVar = (
        ("request", REF),
        ("package", Bytes(min_len=1, max_len=MAX_DKG_PACKAGE_BYTES)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecordResult(Command):
    request: str
    # sign: the 64-byte Ed25519 signature (verified on apply with the group key over the
    # stored message), or for a dual-sign request 128 bytes: the primary's signature then
    # the replaced version's; decrypt: a 32..64-byte digest of this member's partial and
    # proof. Never plaintext.
    result: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_result"
    SCHEMA: ClassVar = (
        ("request", REF),
        ("result", Bytes(min_len=32, max_len=128)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecordFailure(Command):
    request: str
    reason: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_failure"
    SCHEMA: ClassVar = (("request", REF), ("reason", Text()), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class RecordErasure(Command):
    """A member confirms that it crypto-erased its share objects of a destroyed version.

    The request id must be `erasure_request_id(key_id, version)`: one confirmation per
    member and version (ids are scoped by author), and a retry is the same command."""

    key_id: str
    version: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_erasure"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("signature", SIGNATURE),
    )


# Share repair (docs/recovery.md): posts, the target's confirmation, and failures, each
# about run `run` of the repair of member `member`; a post about another run is refused.


@dataclass(frozen=True, slots=True)
class PostRepair(Command):
    """A party's post for a repair run (opaque to the machine): the target's X25519 key,
    or a helper's commitments for every version of the batch and its X25519 key."""

    member: str
    run: int
    package: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "repair_post"
    SCHEMA: ClassVar = (
        ("member", MEMBER),
        ("run", Int(1, U32)),
        ("package", Bytes(min_len=1, max_len=MAX_REPAIR_POST_BYTES)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecordRepair(Command):
    """The target confirms that its slot holds its rebuilt share of every version of run
    `run`'s batch, each checked against the published verification share."""

    member: str
    run: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_repair"
    SCHEMA: ClassVar = (("member", MEMBER), ("run", Int(1, U32)), ("signature", SIGNATURE))


@dataclass(frozen=True, slots=True)
class ReportRepair(Command):
    """A member says run `run` cannot finish: `culprits` (members) sent bad messages or
    never posted; none named when a party merely lost its session (it restarted)."""

    member: str
    run: int
    culprits: tuple[str, ...]
    reason: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "repair_failure"
    SCHEMA: ClassVar = (
        ("member", MEMBER),
        ("run", Int(1, U32)),
        ("culprits", ListOf(MEMBER, MAX_MEMBERS, unique=True)),
        ("reason", Text()),
        ("signature", SIGNATURE),
    )


# Proactive refresh (docs/recovery.md): an operator (or the scheduler, a member) starts
# one; members post, record the new verification shares, or report a run that failed.


@dataclass(frozen=True, slots=True)
class StartRefresh(Command):
    """Refresh every usable key version's shares among all members (group keys unchanged;
    shares from before no longer combine with shares from after). Needs no quorum: it
    takes no power from anyone and gives none."""

    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "start_refresh"
    SCHEMA: ClassVar = (("signature", SIGNATURE),)


@dataclass(frozen=True, slots=True)
class PostRefresh(Command):
    """A member's post for refresh run `run`: its commitments to a sharing of zero per
    version of the batch and its X25519 key (opaque to the machine)."""

    run: int
    package: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "refresh_post"
    SCHEMA: ClassVar = (
        ("run", Int(1, U32)),
        ("package", Bytes(min_len=1, max_len=MAX_REPAIR_POST_BYTES)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecordRefresh(Command):
    """A member stored its next generation of every share of run `run`'s batch (each
    checked) and derived these new verification shares (per version, by member index)."""

    run: int
    verification_shares: tuple[tuple[bytes, ...], ...]
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_refresh"
    SCHEMA: ClassVar = (
        ("run", Int(1, U32)),
        ("verification_shares",
         ListOf(ListOf(Bytes(lengths=(32,)), MAX_MEMBERS), MAX_REFRESH_BATCH)),
        ("signature", SIGNATURE),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReportRefresh(Command):
    """A member says refresh run `run` cannot finish (`culprits`: members who sent bad
    messages or never posted; none if a party lost its session)."""

    run: int
    culprits: tuple[str, ...]
    reason: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "refresh_failure"
    SCHEMA: ClassVar = (
        ("run", Int(1, U32)),
        ("culprits", ListOf(MEMBER, MAX_MEMBERS, unique=True)),
        ("reason", Text()),
        ("signature", SIGNATURE),
    )


def repair_request_id(kind: str, member: str, run: int) -> str:
    """The request id of a member's repair post, confirmation or report for one run: a
    retry is the same command, so it is never recorded twice."""
    return f"{kind}-{member}-{run}"


def erasure_request_id(key_id: str, version: int) -> str:
    """The request id of a member's `record_erasure` for `key_id` version `version`.

    Key ids use the request-id charset and are at most 64 characters, so the id always
    matches the request-id rule (at most 6 + 64 + 1 + 10 characters)."""
    return f"erase-{key_id}-{version}"


@dataclass(frozen=True, slots=True)
class PostCheckpoint(Command):
    """A member (the author) vouches for the runner snapshot at log `index`.

    `signature` is Ed25519 by the author's identity key over
    `digest.checkpoint_digest(genesis, index, state_hash)`, not over the command: like an
    approval, it is the attestation itself (see `checkpoint.py`).
    """

    index: int
    state_hash: bytes  # snapshot.state_hash(snapshot bytes, index)
    signature: bytes
    KIND: ClassVar[str] = "checkpoint"
    SCHEMA: ClassVar = (
        ("index", Int(1, U62)),
        ("state_hash", Bytes(lengths=(64,))),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class PostAuditCheckpoint(Command):
    """The leader posts a threshold (FROST) signature by the audit key over the audit
    chain at `seq` (`audit_checkpoint.checkpoint_message`). Signed by the author's
    identity key like other node commands; the request id is `audit-checkpoint-<seq>`."""

    seq: int
    head: bytes  # hash of audit record `seq`
    epoch: int  # that record's epoch
    version: int  # the audit key version that signed
    frost_signature: bytes  # 64-byte Ed25519 signature by that version's group key
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "audit_checkpoint"
    SCHEMA: ClassVar = (
        ("seq", Int(0, U62)),
        ("head", Bytes(lengths=(64,))),
        ("epoch", Int(1, MAX_EPOCH)),
        ("version", VERSION),
        ("frost_signature", SIGNATURE),
        ("signature", SIGNATURE),
    )


# ------------------------------------------------------------ recovery officers, escrow

MAX_OFFICERS = 32  # node.protocols.escrow.MAX_OFFICERS
MAX_ESCROW_ITEMS = 16  # versions per escrow post
MAX_RELEASE_ITEMS = 64  # versions per officer release post
MAX_ESCROW_PACKAGE_BYTES = 4096  # one version's package: m sealed pieces (m <= 32)
MAX_RELEASE_BYTES = 512  # one re-sealed piece of one version


@dataclass(frozen=True, slots=True)
class OfficerSpec:
    name: str
    x25519: bytes  # receives escrow pieces
    ed25519: bytes  # signs the officer's approvals and releases
    SCHEMA: ClassVar = (
        ("name", PRINCIPAL),
        ("x25519", Bytes(lengths=(32,))),
        ("ed25519", Bytes(lengths=(32,))),
    )


@dataclass(frozen=True, slots=True)
class SetOfficers(Command):
    """Set the recovery officers and their quorum `k` (2 <= k <= m), or none (empty, k 0).
    Whoever holds k officers' keys can rebuild escrowed shares: always time-locked."""

    officers: tuple[OfficerSpec, ...]
    k: int
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "set_officers"
    SCHEMA: ClassVar = (
        ("officers", ListOf(Struct(OfficerSpec), MAX_OFFICERS)),
        ("k", Int(0, MAX_OFFICERS)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class EscrowItem:
    key_id: str
    version: int
    generation: int
    package: bytes
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("generation", Int(0, U32)),
        ("package", Bytes(min_len=1, max_len=MAX_ESCROW_PACKAGE_BYTES)),
    )


@dataclass(frozen=True, slots=True)
class PostEscrow(Command):
    """A member escrows its shares of `items` (one package per version) to the officer
    set whose digest is `officers` (`node.protocols.escrow`; opaque to the machine)."""

    officers: bytes
    items: tuple[EscrowItem, ...]
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "escrow_post"
    SCHEMA: ClassVar = (
        ("officers", Bytes(lengths=(64,))),
        ("items", ListOf(Struct(EscrowItem), MAX_ESCROW_ITEMS)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecoverSpec:
    name: str  # the member whose place a fresh node takes
    public_key: bytes  # the fresh node's identity key (in its token)
    recovery_key: bytes  # its X25519 key for the officers' releases
    SCHEMA: ClassVar = (
        ("name", MEMBER),
        ("public_key", Bytes(lengths=(32,))),
        ("recovery_key", Bytes(lengths=(32,))),
    )


@dataclass(frozen=True, slots=True)
class RecoverMembers(Command):
    """A lost cluster's members are taken over by fresh nodes (restored from the last
    state): decided by the governance quorum AND k officers (`officer_approve`), with no
    time lock (no member is left to vote epochs). Starts a `Recovery`."""

    members: tuple[RecoverSpec, ...]
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "recover_members"
    SCHEMA: ClassVar = (
        ("members", ListOf(Struct(RecoverSpec), MAX_MEMBERS)),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class OfficerApprove(Command):
    """An operator submits officer `officer`'s approval of the open request `request`
    (`officer_signature`: Ed25519 by the officer's key over `recovery.officer_approval`)."""

    request: str
    officer: str
    officer_signature: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "officer_approve"
    SCHEMA: ClassVar = (
        ("request", REF),
        ("officer", PRINCIPAL),
        ("officer_signature", SIGNATURE),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class ReleaseItem:
    key_id: str
    version: int
    blob: bytes
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("blob", Bytes(min_len=1, max_len=MAX_RELEASE_BYTES)),
    )


@dataclass(frozen=True, slots=True)
class PostRelease(Command):
    """An operator submits officer `officer`'s pieces of member `member`'s escrowed shares,
    re-sealed to the member's fresh node (`officer_signature` over
    `recovery.release_message`)."""

    member: str
    officer: str
    items: tuple[ReleaseItem, ...]
    officer_signature: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "officer_release"
    SCHEMA: ClassVar = (
        ("member", MEMBER),
        ("officer", PRINCIPAL),
        ("items", ListOf(Struct(ReleaseItem), MAX_RELEASE_ITEMS)),
        ("officer_signature", SIGNATURE),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class RecordRecovery(Command):
    """The fresh node of member `member` stored every recovered share, each checked
    against the published verification share."""

    member: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "record_recovery"
    SCHEMA: ClassVar = (("member", MEMBER), ("signature", SIGNATURE))


MAX_EXPORT_PIECE_BYTES = 128  # sender key, sealed scalar (node.protocols.breakglass)


@dataclass(frozen=True, slots=True)
class ExportKey(Command):
    """Break-glass: export key version `version` of `key_id` whole, sealed to `recipient`
    (X25519). Only under a policy with `escrow: true`; needs the governance quorum AND k
    officers, then waits the time lock. `reason` is kept in the audit chain."""

    key_id: str
    version: int
    recipient: bytes
    reason: str
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "export_key"
    SCHEMA: ClassVar = (
        ("key_id", Name()),
        ("version", VERSION),
        ("recipient", Bytes(lengths=(32,))),
        ("reason", NonEmpty(Text(MAX_TEXT_CHARS))),
        ("signature", SIGNATURE),
    )


@dataclass(frozen=True, slots=True)
class PostExportPiece(Command):
    """A member's share of an export's version, sealed to the export's recipient."""

    request: str
    piece: bytes
    signature: bytes = b""  # Ed25519 by the author over `signing_digest` (see module doc)
    KIND: ClassVar[str] = "export_piece"
    SCHEMA: ClassVar = (
        ("request", REF),
        ("piece", Bytes(min_len=1, max_len=MAX_EXPORT_PIECE_BYTES)),
        ("signature", SIGNATURE),
    )


COMMANDS: dict[str, type[Command]] = {
    cls.KIND: cls
    for cls in (
        Bootstrap,
        AddPrincipal,
        RemovePrincipal,
        RekeyPrincipal,
        SetPolicy,
        SetGovernance,
        SetThreshold,
        AddMember,
        RemoveMember,
        RepairMember,
        CancelRequest,
        AdvanceEpoch,
        CreateKey,
        RequestSign,
        RequestDecrypt,
        RequestRotate,
        RequestRevoke,
        RequestRollback,
        RequestDestroy,
        Approve,
        PostDkgRound1,
        RecordDkgResult,
        RecordResult,
        RecordFailure,
        RecordErasure,
        PostCheckpoint,
        CreateGrant,
        RevokeGrant,
        PostAuditCheckpoint,
        SetKeyMetadata,
        CreateAlias,
        DeleteAlias,
        PostRepair,
        RecordRepair,
        ReportRepair,
        StartRefresh,
        PostRefresh,
        RecordRefresh,
        ReportRefresh,
        SetOfficers,
        PostEscrow,
        RecoverMembers,
        OfficerApprove,
        PostRelease,
        RecordRecovery,
        ExportKey,
        PostExportPiece,
    )
}

_HEADER: tuple[tuple[str, Spec], ...] = (("request_id", RID), ("author", AUTHOR))

# Commands that open a governance request (its payload is the command's `signing_bytes`).
GOVERNANCE_KINDS: frozenset[str] = frozenset(
    {
        "add_principal", "remove_principal", "rekey_principal", "set_policy",
        "set_governance", "set_threshold", "add_member", "remove_member", "repair_member",
        "set_officers", "recover_members", "export_key", "cancel",
    }
)  # fmt: skip


def encode_command(cmd: Command) -> bytes:
    """Canonical msgpack encoding (fixed field order); validates the values as decode would."""
    cls = type(cmd)
    if COMMANDS.get(cls.KIND) is not cls:
        raise TypeError(f"not a command type: {cls.__name__}")
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": cls.KIND}
    for name, spec in (*_HEADER, *cls.SCHEMA):
        value = getattr(cmd, name)
        if name in cls.OPTIONAL and not value:
            continue  # an optional field at its default is not encoded (one encoding only)
        body[name] = spec.dump(value)
    data = msgpack.packb(body, use_bin_type=True)
    decode_command(data)  # the encoder never produces what the decoder refuses
    return data


# Every command an operator or a node issues carries the author's Ed25519 signature,
# so that a malicious leader or node cannot forge it in someone else's name
# (approvals are signed over the request digest for the same reason; client
# submissions are not signed: they do nothing without the approvers' signatures; one made
# under a grant is signed by the grantee, see `GRANTABLE_KINDS`).
SIGNED_KINDS: frozenset[str] = frozenset(COMMANDS) - {
    "request_sign",
    "request_decrypt",
    "approve",  # its `signature` is the approval itself, over the request digest
    "checkpoint",  # its `signature` is the attestation itself, over the checkpoint digest
}


# Client requests that may be made under a grant; then they are signed by the grantee.
GRANTABLE_KINDS: frozenset[str] = frozenset({"request_sign", "request_decrypt"})


def is_signed(cmd: Command) -> bool:
    """Does `cmd` carry its author's signature over `signing_bytes`? (Signed kinds always;
    a sign/decrypt request when it is made under a grant.)"""
    return cmd.KIND in SIGNED_KINDS or (cmd.KIND in GRANTABLE_KINDS and bool(cmd.grant))


def signing_bytes(cmd: Command) -> bytes:
    """The canonical encoding of a signed command without its `signature` field."""
    cls = type(cmd)
    if not is_signed(cmd):
        raise TypeError(f"{cls.KIND} is not a signed command")
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": cls.KIND}
    for name, spec in (*_HEADER, *cls.SCHEMA):
        value = getattr(cmd, name)
        if name != "signature" and not (name in cls.OPTIONAL and not value):
            body[name] = spec.dump(value)
    return msgpack.packb(body, use_bin_type=True)


def decode_command(data: bytes) -> Command:
    """Strictly decode one command; raises `DecodeError` and nothing else."""
    cls, rest = _unpack(data)
    values = _check_fields(rest, (*_HEADER, *cls.SCHEMA), cls.KIND, cls.OPTIONAL)
    if cls.KIND in GRANTABLE_KINDS and ("grant" in values) != ("signature" in values):
        raise DecodeError(f"{cls.KIND}: a grant and the grantee's signature go together")
    return cls(**values)


def decode_change(data: bytes) -> Command:
    """A governance request's payload (the `signing_bytes` of the command that opened it)
    back to that command, with an empty signature: the quorum approved these bytes, not
    the submitter's signature. Strict and canonical; raises `DecodeError`."""
    cls, rest = _unpack(data)
    if cls.KIND not in GOVERNANCE_KINDS:
        raise DecodeError(f"{cls.KIND} is not a governance command")
    schema = tuple((name, spec) for name, spec in cls.SCHEMA if name != "signature")
    cmd = cls(**_check_fields(rest, (*_HEADER, *schema), cls.KIND, cls.OPTIONAL))
    if signing_bytes(cmd) != data:
        raise DecodeError("governance change is not in canonical form")
    return cmd


def _unpack(data: bytes) -> tuple[type[Command], dict[str, Any]]:
    """Bounded msgpack parse of a command map: its class and its fields (no v, kind)."""
    if type(data) is not bytes:
        raise DecodeError("command must be bytes")
    if len(data) > MAX_COMMAND_BYTES:
        raise DecodeError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=4 * MAX_TEXT_CHARS,
            max_bin_len=MAX_PAYLOAD_BYTES,
            max_array_len=MAX_PRINCIPALS,
            max_map_len=32,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "not a command"
        raise DecodeError(f"not a valid msgpack command: {type(exc).__name__}") from None
    if type(raw) is not dict:
        raise DecodeError("command must be a map")
    if raw.get("v") != SCHEMA_VERSION or type(raw.get("v")) is not int:
        raise DecodeError(f"unsupported schema version (expected v={SCHEMA_VERSION})")
    kind = raw.get("kind")
    cls = COMMANDS.get(kind) if type(kind) is str else None
    if cls is None:
        raise DecodeError("unknown command kind")
    return cls, {k: v for k, v in raw.items() if k not in ("v", "kind")}


def command_fields(cmd: Command) -> dict[str, Any]:
    """The kind-specific fields of a command (for display and tests)."""
    return {f.name: getattr(cmd, f.name) for f in fields(cmd)}
