"""Proactive refresh of a batch of key versions (shares.refresh), as a sans-I/O state machine.

Every member of the refreshing set P deals, per key version, a random sharing of
zero; each adds what it receives to its share. Group public keys do not change;
shares from before the refresh no longer combine with shares from after it.

    session, post = RefreshSession.start(context, me, participants, t, items, shares, rng)
    boxes = session.on_posts(posts)        # posts of all of P from the log; boxes[j] -> j
    session.on_subshares(j, message)       # for each other participant j
    result = session.finish()              # new shares (-> HSM, next generation) and the
                                           # new verification shares (-> the log)

`refreshed_public(posts, ...)` computes the new verification shares from the posts
alone, so every replica (and any observer) derives the same values a member records.

A post (through the log) is `{v: 1, x25519, commitments: [[C_0..C_{t-1}] per item]}`
with C_0 the identity (a sharing of zero); sub-shares travel point to point as
`batch` sealed messages of kind "refresh". `refresh_context` binds cluster,
request, the set P, t and every item's key id, version and group public key; the
threshold is the one derived from each key's own verification shares
(shares.refresh refuses any other: a refresh never changes t).

A member outside P keeps a stale share and must be repaired afterwards. Every
failure attributable to a member raises `RefreshCulprits` naming it and ends the
session; the node starts a new run without the culprit. Until the new generation
is committed, members keep the old one: a run that fails at any step leaves every
key usable with the previous shares (the node's job; this engine never touches
them).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from shares import refresh, vss
from shares.errors import InvalidShare, SharesError
from shares.rng import RandomSource
from shares.shamir import SecretShare, check_identifiers

from .batch import (
    MAX_ITEMS,
    Culprits,
    KeyVersion,
    NewShares,
    check_items,
    check_x25519,
    items_digest_input,
    lp,
    matches,
    new_x25519,
    open_scalars,
    seal_scalars,
    unpack,
    zero,
)
from .wire import MAX_MEMBERS, MAX_REF_CHARS, check_token

CONTEXT_DOMAIN = b"custody-cluster/v1/refresh-context"
POST_VERSION = 1
MAX_CLUSTER_ID_CHARS = 128
#: A post: a key and up to MAX_ITEMS x MAX_MEMBERS commitments of 34 encoded bytes.
MAX_POST_SIZE = 64 + MAX_ITEMS * (3 + MAX_MEMBERS * 34)
_KIND = b"refresh"


class RefreshError(ValueError):
    """Base of the refresh session's errors."""


class RefreshStateError(RefreshError):
    """A method was called out of order, twice, or after the session ended."""


class OwnPostMismatch(RefreshError):
    """The log holds a post for this member that is not the one it made."""


class RefreshCulprits(RefreshError, Culprits):
    """Members whose messages are bad; the run fails naming them."""


def _check_set(participants: object, t: object) -> tuple[tuple[int, ...], int]:
    if not isinstance(participants, Sequence) or isinstance(participants, str | bytes):
        raise RefreshError("participants must be a sequence of member indexes")
    try:
        ids = tuple(sorted(check_identifiers(participants)))
    except SharesError as exc:
        raise RefreshError(str(exc)) from None
    if not 2 <= len(ids) <= MAX_MEMBERS or any(i > MAX_MEMBERS for i in ids):
        raise RefreshError(f"a refresh has 2..{MAX_MEMBERS} member indexes")
    if type(t) is not int or not 2 <= t <= len(ids):
        raise RefreshError("t must be an integer in 2..|participants|")
    return ids, t


def _check_threshold(ids: tuple[int, ...], t: int, items: Sequence[KeyVersion]) -> None:
    for it in items:
        try:
            refresh.check_threshold_unchanged(t, ids, it.verification_shares,
                                              it.group_public_key)  # fmt: skip
        except SharesError as exc:
            raise RefreshError(f"{it.key_id} v{it.version}: {exc}") from None


def refresh_context(
    cluster_id: str, request_ref: str, participants: Sequence[int], t: int,
    items: Sequence[KeyVersion],
) -> bytes:  # fmt: skip
    """SHA-512 over everything that identifies one refresh run: its `context` (64 bytes)."""
    check_token(cluster_id, "cluster_id", MAX_CLUSTER_ID_CHARS, RefreshError)
    check_token(request_ref, "request_ref", MAX_REF_CHARS, RefreshError)
    ids, t = _check_set(participants, t)
    rows = check_items(items, RefreshError)
    body = lp(CONTEXT_DOMAIN) + lp(cluster_id.encode()) + lp(request_ref.encode())
    body += struct.pack(">BB", t, len(ids)) + bytes(ids) + items_digest_input(rows)
    return hashlib.sha512(body).digest()


def _encode_post(x25519: bytes, commitments: Sequence[Sequence[bytes]]) -> bytes:
    return msgpack.packb(
        {"v": POST_VERSION, "x25519": x25519, "commitments": [list(c) for c in commitments]},
        use_bin_type=True,
    )


@dataclass(frozen=True)
class _Post:
    x25519: bytes
    packages: tuple[refresh.RefreshPackage, ...]  # one per item, in item order


def _decode_post(data: object, dealer: int, t: int, n_items: int) -> _Post:
    raw = unpack(data, MAX_POST_SIZE, "a refresh post", RefreshError)
    if type(raw) is not dict or set(raw) != {"v", "x25519", "commitments"}:
        raise RefreshError("post fields must be exactly v, x25519, commitments")
    if type(raw["v"]) is not int or raw["v"] != POST_VERSION:
        raise RefreshError("unsupported post version")
    key = check_x25519(raw["x25519"], RefreshError)
    rows = raw["commitments"]
    if type(rows) is not list or len(rows) != n_items:
        raise RefreshError(f"a post commits to exactly {n_items} items")
    packages = []
    for row in rows:
        if type(row) is not list or len(row) != t:
            raise RefreshError(f"each item has exactly {t} commitments")
        if any(type(c) is not bytes or len(c) != 32 for c in row):
            raise RefreshError("a commitment is 32 bytes")
        packages.append(refresh.RefreshPackage(dealer, tuple(row)))
    if _encode_post(key, rows) != bytes(data):  # type: ignore[arg-type]
        raise RefreshError("post is not in canonical encoding")
    return _Post(key, tuple(packages))


def _decode_posts(
    posts: Mapping[int, bytes], ids: tuple[int, ...], t: int, items: Sequence[KeyVersion],
    skip: int = 0,
) -> tuple[dict[int, _Post], list[int], list[str]]:  # fmt: skip
    """Decode every post but `skip`'s and check each item's packages; (posts, culprits,
    reasons): one verdict names every bad dealer."""
    if not isinstance(posts, Mapping) or set(posts) != set(ids):
        raise RefreshError(f"need exactly the posts of members {list(ids)}")
    decoded: dict[int, _Post] = {}
    culprits: list[int] = []
    reasons: list[str] = []
    for j in ids:
        if j == skip:
            continue
        try:
            decoded[j] = _decode_post(posts[j], j, t, len(items))
        except RefreshError as exc:
            culprits.append(j)
            reasons.append(f"{j}: {exc}")
    return decoded, culprits, reasons


def _check_packages(
    decoded: Mapping[int, _Post], ids: tuple[int, ...], t: int, n_items: int
) -> list[int]:
    """Dealers whose commitments are malformed or do not share zero, for any item."""
    if set(decoded) != set(ids):
        return []
    culprits: set[int] = set()
    for k in range(n_items):
        try:
            refresh.check_packages([p.packages[k] for p in decoded.values()], ids, t)
        except InvalidShare as exc:
            culprits.update(exc.culprits)
    return sorted(culprits)


def refreshed_public(
    posts: Mapping[int, bytes], participants: Sequence[int], t: int,
    items: Sequence[KeyVersion],
) -> tuple[dict[int, bytes], ...]:  # fmt: skip
    """Each item's new verification shares, from the posts alone (what every replica
    derives and what a member's recorded result must equal). RefreshCulprits names
    bad dealers."""
    ids, t = _check_set(participants, t)
    rows = check_items(items, RefreshError)
    decoded, culprits, reasons = _decode_posts(posts, ids, t, rows)
    if culprits:
        raise RefreshCulprits(culprits, "bad refresh posts [" + "; ".join(reasons) + "]")
    bad = _check_packages(decoded, ids, t, len(rows))
    if bad:
        raise RefreshCulprits(bad, "refresh commitments are malformed or do not share zero")
    out = []
    for k, it in enumerate(rows):
        new = refresh.refreshed_verification_shares(
            [p.packages[k] for p in decoded.values()], ids, t, it.verification_shares)
        out.append({j: bytes(y) for j, y in new.items()})
    return tuple(out)


class _State(enum.Enum):
    POSTED = "waiting for the posts"
    EXCHANGE = "exchanging sub-shares"
    DONE = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


class RefreshSession:
    """One member's refresh run: start -> on_posts -> on_subshares (|P|-1 times) -> finish."""

    __slots__ = ("_context", "_ids", "_in", "_items", "_my_post", "_posts", "_private",
                 "_public", "_rng", "_shares", "_state", "_sub", "_t", "me")  # fmt: skip

    def __init__(self) -> None:
        raise TypeError("use RefreshSession.start(...)")

    @classmethod
    def start(
        cls, context: bytes, me: int, participants: Sequence[int], t: int,
        items: Sequence[KeyVersion], shares: Sequence[bytes | bytearray], rng: RandomSource,
    ) -> tuple[RefreshSession, bytes]:  # fmt: skip
        """Begin as member `me` with its current share of each item; returns (session,
        post). Refuses a t that is not every item's own, and a share that does not match
        this member's verification share (it would come out wrong)."""
        ids, t = _check_set(participants, t)
        rows = check_items(items, RefreshError)
        _check_threshold(ids, t, rows)
        if not isinstance(context, bytes | bytearray) or len(context) != 64:
            raise RefreshError("context must be the 64-byte refresh_context")
        if type(me) is not int or me not in ids:
            raise RefreshError("me must be one of the participants")
        if not isinstance(shares, Sequence) or len(shares) != len(rows):
            raise RefreshError("one share per item, in item order")
        for it, share in zip(rows, shares, strict=True):
            if me not in it.verification_shares or not matches(share, it.verification_shares[me]):
                raise RefreshError(f"{it.key_id} v{it.version}: this member's share does not "
                                   "match its verification share (stale?)")  # fmt: skip
        self = object.__new__(cls)
        self.me, self._ids, self._t, self._items = me, ids, t, rows
        self._context, self._rng = bytes(context), rng
        self._private, self._public = new_x25519(rng, RefreshError)
        self._shares = [bytearray(s) for s in shares]
        self._sub: list[dict[int, bytes]] = []  # per item: recipient -> z_me(recipient)
        commitments = []
        try:
            for it in rows:
                package, subs = refresh.refresh_round1(me, ids, t, it.verification_shares,
                                                       it.group_public_key, rng)  # fmt: skip
                self._sub.append({j: s.value for j, s in subs.items()})
                commitments.append(list(package.commitments))
        except SharesError as exc:
            self._wipe()
            raise RefreshError(f"cannot deal: {exc}") from None
        self._my_post = _encode_post(self._public, commitments)
        self._posts: dict[int, _Post] = {}
        self._in: dict[int, list[bytearray]] = {}
        self._state = _State.POSTED
        return self, self._my_post

    def _require(self, state: _State, what: str) -> None:
        if self._state is not state:
            raise RefreshStateError(f"{what} not allowed: session is {self._state.value}")

    def _fail(self, culprits: Sequence[int], reason: str) -> RefreshCulprits:
        self._wipe()
        self._state = _State.FAILED
        return RefreshCulprits(culprits, reason)

    def _wipe(self) -> None:
        self._private = None  # OpenSSL frees the key
        self._sub = []
        for values in getattr(self, "_in", {}).values():
            for v in values:
                zero(v)
        self._in = {}
        for s in getattr(self, "_shares", []):
            zero(s)
        self._shares = []

    @property
    def state(self) -> str:
        return self._state.name.lower()

    @property
    def complete(self) -> bool:
        return self._state is _State.EXCHANGE and len(self._in) == len(self._ids)

    def on_posts(self, posts: Mapping[int, bytes]) -> dict[int, bytes]:
        """Every participant's post (mine included) from the log -> sealed sub-shares for
        each other participant."""
        self._require(_State.POSTED, "on_posts")
        mine = posts.get(self.me) if isinstance(posts, Mapping) else None
        if not isinstance(mine, bytes | bytearray) or not hmac.compare_digest(
            bytes(mine), self._my_post
        ):
            self._wipe()
            self._state = _State.FAILED
            raise OwnPostMismatch(f"the log's post for member {self.me} is not mine")
        others, culprits, reasons = _decode_posts(posts, self._ids, self._t, self._items,
                                                  skip=self.me)  # fmt: skip
        for j, p in list(others.items()):
            if hmac.compare_digest(p.x25519, self._public):
                del others[j]
                culprits.append(j)
                reasons.append(f"{j}: x25519 key copied from this member")
        if culprits:
            raise self._fail(culprits, "bad refresh posts [" + "; ".join(reasons) + "]")
        everyone = dict(others)
        everyone[self.me] = _decode_post(mine, self.me, self._t, len(self._items))
        bad = _check_packages(everyone, self._ids, self._t, len(self._items))
        if bad:
            raise self._fail(bad, "refresh commitments are malformed or do not share zero")
        self._posts = everyone
        assert self._private is not None
        out = {}
        for j in others:
            out[j] = seal_scalars(self._private, self._public, others[j].x25519,
                                  [s[j] for s in self._sub], self._context, _KIND, self.me, j,
                                  self._rng)  # fmt: skip
        self._in[self.me] = [bytearray(s[self.me]) for s in self._sub]
        self._sub = []
        self._state = _State.EXCHANGE
        return out

    def on_subshares(self, sender: int, message: bytes) -> None:
        """The sub-shares `sender` (the transport-authenticated peer) dealt to me."""
        self._require(_State.EXCHANGE, "on_subshares")
        if sender == self.me or sender not in self._ids:
            raise RefreshError("sender must be another participant of this run")
        if sender in self._in:
            raise self._fail([sender], "a second message with sub-shares")
        assert self._private is not None
        try:
            values = open_scalars(self._private, self._public, self._posts[sender].x25519,
                                  message, self._context, _KIND, sender, self.me,
                                  len(self._items), RefreshError)  # fmt: skip
        except RefreshError as exc:
            raise self._fail([sender], f"bad sub-shares: {exc}") from None
        for k, v in enumerate(values):  # blame the dealer now
            try:
                vss.verify_share(self.me, bytes(v), self._posts[sender].packages[k].commitments,
                                 sender)  # fmt: skip
            except SharesError:
                for w in values:
                    zero(w)
                raise self._fail([sender], "a sub-share does not match its commitments") from None
        self._in[sender] = values

    def finish(self) -> NewShares:
        """The next generation of shares; the session ends either way."""
        self._require(_State.EXCHANGE, "finish")
        if not self.complete:
            raise RefreshStateError("finish needs every participant's sub-shares")
        shares: list[bytearray] = []
        public: list[dict[int, bytes]] = []
        try:
            for k, it in enumerate(self._items):
                subs = [refresh.RefreshSubShare(d, self.me, bytes(self._in[d][k]))
                        for d in self._ids]  # fmt: skip
                res = refresh.refresh_round2(
                    SecretShare(self.me, bytes(self._shares[k])), self._ids,
                    [p.packages[k] for p in self._posts.values()], subs, self._t,
                    it.verification_shares, it.group_public_key,
                )  # fmt: skip
                shares.append(bytearray(res.share.value))
                public.append({j: bytes(y) for j, y in res.verification_shares.items()})
        except InvalidShare as exc:
            for s in shares:
                zero(s)
            raise self._fail(exc.culprits or [], f"refresh does not verify: {exc}") from None
        except SharesError as exc:
            for s in shares:
                zero(s)
            self._wipe()
            self._state = _State.FAILED
            raise RefreshError(f"cannot finish: {type(exc).__name__}") from None
        self._wipe()
        self._state = _State.DONE
        return NewShares(self.me, self._items, tuple(shares), tuple(public))

    def abort(self) -> None:
        """Drop every secret and end the session (idempotent)."""
        self._wipe()
        if self._state in (_State.POSTED, _State.EXCHANGE):
            self._state = _State.ABORTED

    def __repr__(self) -> str:
        return (f"RefreshSession(me={self.me}, participants={list(self._ids)}, t={self._t}, "
                f"items={len(self._items)}, state={self.state}, <secrets redacted>)")  # fmt: skip

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("RefreshSession holds secrets and must not be pickled")


__all__ = [
    "CONTEXT_DOMAIN",
    "OwnPostMismatch",
    "RefreshCulprits",
    "RefreshError",
    "RefreshSession",
    "RefreshStateError",
    "refresh_context",
    "refreshed_public",
]
