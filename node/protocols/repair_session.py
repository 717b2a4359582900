"""Rebuilding one member's shares from t helpers (shares.repair), as sans-I/O state machines.

A member that lost its token (or the node that replaces it) gets back its share
of every key version without any helper's share, or any key, leaving its owner.
The node drives two roles; each feeds in what the world delivered and sends
what comes back:

    target, post = RepairTarget.start(context, request, items, rng)      # post -> the log
    helper, post = RepairHelper.start(context, me, request, items, shares, rng)  # -> the log
    boxes = helper.on_posts(helper_posts, target_post)   # boxes[j] -> helper j, point to point
    helper.on_deltas(j, message)                          # for each other helper j
    to_target = helper.sigma_message()                    # -> the target, point to point
    target.on_posts(helper_posts)                         # checks every helper's commitments
    target.on_sigma(j, message)                           # for each helper j
    result = target.finish()                              # shares, each checked against Y_r

One run repairs a batch of key versions (`RepairItem`s, at most `MAX_ITEMS`)
with one post per party and one message per pair, so repairing a member that
holds hundreds of versions costs a handful of log entries, not hundreds.

Posts go through the replicated log, so every party sees the same commitments
(the first post per party counts; the caller enforces that). A helper's post
carries its step-1 commitments for every item and a fresh X25519 key; the
target's post carries its own fresh X25519 key. Pieces between helpers and the
sums sent to the target travel sealed with `sealbox` under those keys, with AAD
= context || kind || sender || recipient || chunk, so a box is bound to one run,
one direction and one position.

`repair_context` binds cluster, request, participant, helpers, threshold and
every item's key id, version and public key: a post cannot be replayed into
another repair, and a helper cannot be talked into using another helper set or
a lower threshold (shares.repair refuses a threshold that differs from the one
derived from the key's own verification shares).

Every failure attributable to a party raises `RepairCulprits` naming it and ends
the session (secrets dropped; bytearrays zeroized). A failed run is not patched
up: the node starts a new run without the culprit. Sessions are single-use and
not thread-safe.
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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shares import group as g
from shares import repair
from shares.errors import InvalidShare, SharesError
from shares.rng import RandomSource
from shares.shamir import SecretShare

from . import sealbox
from .batch import (
    MAX_ITEMS,
    Culprits,
    NewShares,
    check_items,
    check_x25519,
    items_digest_input,
    lp,
    new_x25519,
    open_scalars,
    seal_scalars,
    unpack,
    zero,
)
from .batch import KeyVersion as RepairItem
from .wire import MAX_MEMBERS, MAX_REF_CHARS, check_token

CONTEXT_DOMAIN = b"custody-cluster/v1/repair-context"
POST_VERSION = 1
MESSAGE_VERSION = 1
MAX_CLUSTER_ID_CHARS = 128
#: A helper post: a key and up to MAX_ITEMS x MAX_MEMBERS commitments of 34 encoded bytes.
MAX_POST_SIZE = 64 + MAX_ITEMS * (3 + MAX_MEMBERS * 34)

_DELTA = b"delta"
_SIGMA = b"sigma"


class RepairError(ValueError):
    """Base of the repair session's errors."""


class RepairStateError(RepairError):
    """A method was called out of order, twice, or after the session ended."""


class OwnPostMismatch(RepairError):
    """The log holds a post for this party that is not the one it made."""


class RepairCulprits(RepairError, Culprits):
    """Parties whose messages are bad (member indexes); the run fails naming them."""


def repair_context(
    cluster_id: str,
    request_ref: str,
    request: repair.RepairRequest,
    items: Sequence[RepairItem],
) -> bytes:
    """SHA-512 over everything that identifies one repair run: its `context` (64 bytes)."""
    check_token(cluster_id, "cluster_id", MAX_CLUSTER_ID_CHARS, RepairError)
    check_token(request_ref, "request_ref", MAX_REF_CHARS, RepairError)
    if not isinstance(request, repair.RepairRequest):
        raise RepairError("request must be a shares.repair.RepairRequest")
    rows = check_items(items, RepairError)
    body = lp(CONTEXT_DOMAIN) + lp(cluster_id.encode()) + lp(request_ref.encode())
    body += struct.pack(">BBB", request.participant, request.min_participants,
                        len(request.helpers))  # fmt: skip
    body += bytes(request.helpers) + items_digest_input(rows)
    return hashlib.sha512(body).digest()


# ---------------------------------------------------------------- posts


def _encode_helper_post(x25519: bytes, commitments: Sequence[Sequence[bytes]]) -> bytes:
    return msgpack.packb(
        {"v": POST_VERSION, "x25519": x25519, "commitments": [list(c) for c in commitments]},
        use_bin_type=True,
    )


def _encode_target_post(x25519: bytes) -> bytes:
    return msgpack.packb({"v": POST_VERSION, "x25519": x25519}, use_bin_type=True)


@dataclass(frozen=True)
class _HelperPost:
    x25519: bytes
    packages: tuple[repair.RepairCommitments, ...]  # one per item, in item order


def _decode_helper_post(
    data: object, sender: int, request: repair.RepairRequest, n_items: int
) -> _HelperPost:
    raw = unpack(data, MAX_POST_SIZE, "a helper post", RepairError)
    if type(raw) is not dict or set(raw) != {"v", "x25519", "commitments"}:
        raise RepairError("helper post fields must be exactly v, x25519, commitments")
    if type(raw["v"]) is not int or raw["v"] != POST_VERSION:
        raise RepairError("unsupported helper post version")
    key = check_x25519(raw["x25519"], RepairError)
    rows = raw["commitments"]
    ids = request.helpers
    if type(rows) is not list or len(rows) != n_items:
        raise RepairError(f"a helper post commits to exactly {n_items} items")
    packages = []
    for row in rows:
        if type(row) is not list or len(row) != len(ids):
            raise RepairError(f"each item has exactly {len(ids)} commitments")
        if any(type(c) is not bytes or len(c) != 32 for c in row):
            raise RepairError("a commitment is 32 bytes")
        packages.append(repair.RepairCommitments(
            helper=sender, participant=request.participant, helpers=ids,
            commitments=dict(zip(ids, row, strict=True)),
        ))  # fmt: skip
    if _encode_helper_post(key, rows) != bytes(data):  # type: ignore[arg-type]
        raise RepairError("helper post is not in canonical encoding")
    return _HelperPost(key, tuple(packages))


def _decode_target_post(data: object) -> bytes:
    raw = unpack(data, 128, "the target's post", RepairError)
    if type(raw) is not dict or set(raw) != {"v", "x25519"}:
        raise RepairError("target post fields must be exactly v, x25519")
    if type(raw["v"]) is not int or raw["v"] != POST_VERSION:
        raise RepairError("unsupported target post version")
    key = check_x25519(raw["x25519"], RepairError)
    if _encode_target_post(key) != bytes(data):  # type: ignore[arg-type]
        raise RepairError("target post is not in canonical encoding")
    return key


# ---------------------------------------------------------------- sealed messages


# ---------------------------------------------------------------- sessions


class _State(enum.Enum):
    POSTED = "waiting for the posts"
    EXCHANGE = "exchanging pieces"
    DONE = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


def _check_request(request: object, items: Sequence[RepairItem]) -> repair.RepairRequest:
    if not isinstance(request, repair.RepairRequest):
        raise RepairError("request must be a shares.repair.RepairRequest")
    for it in items:
        try:
            repair.check_request(request, it.verification_shares, it.group_public_key)
        except SharesError as exc:
            raise RepairError(f"{it.key_id} v{it.version}: {exc}") from None
    return request


def _check_context(context: object) -> bytes:
    if not isinstance(context, bytes | bytearray) or len(context) != 64:
        raise RepairError("context must be the 64-byte repair_context")
    return bytes(context)


class _Session:
    __slots__ = ("_context", "_items", "_private", "_public", "_request", "_rng", "_state")

    _context: bytes
    _items: tuple[RepairItem, ...]
    _private: X25519PrivateKey | None
    _public: bytes
    _request: repair.RepairRequest
    _rng: RandomSource
    _state: _State

    def __init__(self) -> None:
        raise TypeError("use start(...)")

    def _require(self, state: _State, what: str) -> None:
        if self._state is not state:
            raise RepairStateError(f"{what} not allowed: session is {self._state.value}")

    def _fail(self, culprits: Sequence[int], reason: str) -> RepairCulprits:
        self._wipe()
        self._state = _State.FAILED
        return RepairCulprits(culprits, reason)

    def _wipe(self) -> None:
        self._private = None  # OpenSSL frees the key

    def _check_helper_posts(
        self, posts: Mapping[int, bytes], skip: int = 0
    ) -> dict[int, _HelperPost]:
        """Decode every helper's post but `skip`'s and check its commitments for every
        item; one verdict names every bad helper."""
        ids = self._request.helpers
        if not isinstance(posts, Mapping) or set(posts) != set(ids):
            raise RepairError(f"need exactly the posts of helpers {list(ids)}")
        decoded: dict[int, _HelperPost] = {}
        culprits: list[int] = []
        reasons: list[str] = []
        for j in ids:
            if j == skip:
                continue
            try:
                decoded[j] = _decode_helper_post(posts[j], j, self._request, len(self._items))
            except RepairError as exc:
                culprits.append(j)
                reasons.append(f"{j}: {exc}")
                continue
            if hmac.compare_digest(decoded[j].x25519, self._public):
                del decoded[j]
                culprits.append(j)
                reasons.append(f"{j}: x25519 key copied from this party")
        if culprits:
            raise self._fail(culprits, "bad repair posts [" + "; ".join(reasons) + "]")
        return decoded

    def _check_commitments(self, packages: Mapping[int, _HelperPost]) -> None:
        culprits: set[int] = set()
        for k, it in enumerate(self._items):
            try:
                repair.check_commitments(
                    self._request, [p.packages[k] for p in packages.values()],
                    it.verification_shares, it.group_public_key,
                )  # fmt: skip
            except InvalidShare as exc:
                culprits.update(exc.culprits)
        if culprits:
            raise self._fail(sorted(culprits), "repair commitments do not split the helpers' "
                             "shares (sum of pieces != lambda_i * Y_i)")  # fmt: skip

    def abort(self) -> None:
        """Drop every secret and end the session (idempotent)."""
        self._wipe()
        if self._state in (_State.POSTED, _State.EXCHANGE):
            self._state = _State.ABORTED

    @property
    def state(self) -> str:
        return self._state.name.lower()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a repair session holds secrets and must not be pickled")


class RepairHelper(_Session):
    """Helper `me`: deal pieces of lambda_me * s_me, check the pieces it gets, sum them."""

    __slots__ = ("_deltas", "_in", "_my_post", "_posts", "_target_key", "me")

    @classmethod
    def start(
        cls, context: bytes, me: int, request: repair.RepairRequest,
        items: Sequence[RepairItem], shares: Sequence[bytes | bytearray], rng: RandomSource,
    ) -> tuple[RepairHelper, bytes]:  # fmt: skip
        """Begin as helper `me` with its share of each item (same order); returns (session,
        post). Refuses a request that does not fit an item's key, and a share that does not
        match the helper's verification share (shares.repair.repair_step1)."""
        rows = check_items(items, RepairError)
        req = _check_request(request, rows)
        if type(me) is not int or me not in req.helpers:
            raise RepairError("me must be one of the request's helpers")
        if not isinstance(shares, Sequence) or len(shares) != len(rows):
            raise RepairError("one share per item, in item order")
        self = object.__new__(cls)
        self._context, self._items, self._request, self._rng = (
            _check_context(context), rows, req, rng)  # fmt: skip
        self.me = me
        self._private, self._public = new_x25519(rng, RepairError)
        self._deltas: list[dict[int, bytes]] = []  # per item: recipient -> piece (secret)
        commitments: list[list[bytes]] = []
        try:
            for it, share in zip(rows, shares, strict=True):
                public, deltas = repair.repair_step1(
                    SecretShare(me, bytes(share)), req, it.verification_shares,
                    it.group_public_key, rng,
                )  # fmt: skip
                self._deltas.append({j: d.value for j, d in deltas.items()})
                commitments.append([public.commitments[j] for j in req.helpers])
        except SharesError as exc:
            self._wipe()
            raise RepairError(f"cannot deal: {exc}") from None
        self._my_post = _encode_helper_post(self._public, commitments)
        self._posts: dict[int, _HelperPost] = {}
        self._in: dict[int, list[bytearray]] = {}
        self._target_key = b""
        self._state = _State.POSTED
        return self, self._my_post

    def _wipe(self) -> None:
        super()._wipe()
        self._deltas = []
        for values in getattr(self, "_in", {}).values():
            for v in values:
                zero(v)
        self._in = {}

    def on_posts(self, posts: Mapping[int, bytes], target_post: bytes) -> dict[int, bytes]:
        """Every helper's post (mine included) and the target's, from the log -> the
        sealed pieces for each other helper."""
        self._require(_State.POSTED, "on_posts")
        mine = posts.get(self.me) if isinstance(posts, Mapping) else None
        if not isinstance(mine, bytes | bytearray) or not hmac.compare_digest(
            bytes(mine), self._my_post
        ):
            self._wipe()
            self._state = _State.FAILED
            raise OwnPostMismatch(f"the log's post for helper {self.me} is not mine")
        try:
            target_key = _decode_target_post(target_post)
        except RepairError as exc:
            raise self._fail([self._request.participant], f"bad target post: {exc}") from None
        others = self._check_helper_posts(posts, skip=self.me)
        everyone = dict(others)
        everyone[self.me] = _decode_helper_post(mine, self.me, self._request, len(self._items))
        self._check_commitments(everyone)
        self._posts, self._target_key = everyone, target_key
        assert self._private is not None
        out = {}
        for j in others:
            try:
                out[j] = seal_scalars(
                    self._private, self._public, others[j].x25519,
                    [d[j] for d in self._deltas], self._context, _DELTA, self.me, j, self._rng,
                )  # fmt: skip
            except sealbox.SealError as exc:
                self._wipe()
                self._state = _State.FAILED
                raise RepairError(f"cannot seal pieces: {exc}") from None
        self._in[self.me] = [bytearray(d[self.me]) for d in self._deltas]
        self._state = _State.EXCHANGE
        return out

    def on_deltas(self, sender: int, message: bytes) -> None:
        """The pieces helper `sender` (the transport-authenticated peer) dealt to me."""
        self._require(_State.EXCHANGE, "on_deltas")
        if sender == self.me or sender not in self._request.helpers:
            raise RepairError("sender must be another helper of this run")
        if sender in self._in:
            raise self._fail([sender], "a second message with pieces")
        assert self._private is not None
        try:
            values = open_scalars(
                self._private, self._public, self._posts[sender].x25519, message,
                self._context, _DELTA, sender, self.me, len(self._items), RepairError,
            )  # fmt: skip
        except RepairError as exc:
            raise self._fail([sender], f"bad pieces: {exc}") from None
        for k, v in enumerate(values):  # blame the dealer now rather than at the sum
            try:
                ok = g.element_eq(g.base_mult(g.decode_scalar(bytes(v))),
                                  self._posts[sender].packages[k].commitments[self.me])
            except SharesError:
                ok = False
            if not ok:
                for w in values:
                    zero(w)
                raise self._fail([sender], "a piece does not match its commitment")
        self._in[sender] = values

    @property
    def complete(self) -> bool:
        """Every helper's pieces are in: `sigma_message()` may be called."""
        return self._state is _State.EXCHANGE and len(self._in) == len(self._request.helpers)

    def sigma_message(self) -> bytes:
        """The sums for the target, sealed to its key; the session ends either way."""
        self._require(_State.EXCHANGE, "sigma_message")
        if not self.complete:
            raise RepairStateError("sigma_message needs every helper's pieces")
        assert self._private is not None
        sigmas: list[bytes] = []
        try:
            for k, it in enumerate(self._items):
                deltas = [repair.RepairDelta(i, self.me, self._request.participant,
                                             bytes(self._in[i][k]))
                          for i in self._request.helpers]  # fmt: skip
                sigma = repair.repair_step2(
                    self.me, self._request, deltas, [p.packages[k] for p in self._posts.values()],
                    it.verification_shares, it.group_public_key,
                )  # fmt: skip
                sigmas.append(sigma.value)
            message = seal_scalars(
                self._private, self._public, self._target_key, sigmas, self._context, _SIGMA,
                self.me, self._request.participant, self._rng,
            )  # fmt: skip
        except InvalidShare as exc:
            raise self._fail(exc.culprits, "pieces do not verify") from None
        except (SharesError, sealbox.SealError) as exc:
            self._wipe()
            self._state = _State.FAILED
            raise RepairError(f"cannot finish: {type(exc).__name__}") from None
        self._wipe()
        self._state = _State.DONE
        return message

    def __repr__(self) -> str:
        return (f"RepairHelper(me={self.me}, participant={self._request.participant}, "
                f"items={len(self._items)}, state={self.state}, <secrets redacted>)")  # fmt: skip

    __str__ = __repr__


class RepairTarget(_Session):
    """The member being repaired: publish a key, collect t sums, check, keep the shares."""

    __slots__ = ("_my_post", "_posts", "_sigmas")

    @classmethod
    def start(
        cls, context: bytes, request: repair.RepairRequest, items: Sequence[RepairItem],
        rng: RandomSource,
    ) -> tuple[RepairTarget, bytes]:  # fmt: skip
        rows = check_items(items, RepairError)
        req = _check_request(request, rows)
        self = object.__new__(cls)
        self._context, self._items, self._request, self._rng = (
            _check_context(context), rows, req, rng)  # fmt: skip
        self._private, self._public = new_x25519(rng, RepairError)
        self._my_post = _encode_target_post(self._public)
        self._posts: dict[int, _HelperPost] = {}
        self._sigmas: dict[int, list[bytearray]] = {}
        self._state = _State.POSTED
        return self, self._my_post

    @property
    def post(self) -> bytes:
        return self._my_post

    def _wipe(self) -> None:
        super()._wipe()
        for values in getattr(self, "_sigmas", {}).values():
            for v in values:
                zero(v)
        self._sigmas = {}

    def on_posts(self, posts: Mapping[int, bytes], target_post: bytes | None = None) -> None:
        """Every helper's post from the log (and, if given, the log's target post, which
        must be mine); checks every helper's commitments at once."""
        self._require(_State.POSTED, "on_posts")
        if target_post is not None and not (
            isinstance(target_post, bytes | bytearray)
            and hmac.compare_digest(bytes(target_post), self._my_post)
        ):
            self._wipe()
            self._state = _State.FAILED
            raise OwnPostMismatch("the log's target post is not mine")
        decoded = self._check_helper_posts(posts)
        self._check_commitments(decoded)
        self._posts = decoded
        self._state = _State.EXCHANGE

    def on_sigma(self, sender: int, message: bytes) -> None:
        """Helper `sender`'s sums (the transport-authenticated peer)."""
        self._require(_State.EXCHANGE, "on_sigma")
        if sender not in self._request.helpers:
            raise RepairError("sender must be a helper of this run")
        if sender in self._sigmas:
            raise self._fail([sender], "a second message with sums")
        assert self._private is not None
        try:
            values = open_scalars(
                self._private, self._public, self._posts[sender].x25519, message,
                self._context, _SIGMA, sender, self._request.participant, len(self._items),
                RepairError,
            )  # fmt: skip
        except RepairError as exc:
            raise self._fail([sender], f"bad sums: {exc}") from None
        for k, v in enumerate(values):
            expected = g.IDENTITY
            for p in self._posts.values():
                expected = g.element_add(expected, p.packages[k].commitments[sender])
            try:
                ok = g.element_eq(g.base_mult(g.decode_scalar(bytes(v))), expected)
            except SharesError:
                ok = False
            if not ok:
                for w in values:
                    zero(w)
                raise self._fail([sender], "a sum does not match the helpers' commitments")
        self._sigmas[sender] = values

    @property
    def complete(self) -> bool:
        return self._state is _State.EXCHANGE and len(self._sigmas) == len(self._request.helpers)

    def finish(self) -> NewShares:
        """Sum the sigmas of each item and check the share against Y_participant."""
        self._require(_State.EXCHANGE, "finish")
        if not self.complete:
            raise RepairStateError("finish needs every helper's sums")
        out: list[bytearray] = []
        try:
            for k, it in enumerate(self._items):
                sigmas = [repair.RepairSigma(j, self._request.participant,
                                             bytes(self._sigmas[j][k]))
                          for j in self._request.helpers]  # fmt: skip
                share = repair.repair_step3(
                    self._request, sigmas, [p.packages[k] for p in self._posts.values()],
                    it.verification_shares, it.group_public_key,
                )  # fmt: skip
                out.append(bytearray(share.value))
        except InvalidShare as exc:
            for s in out:
                zero(s)
            raise self._fail(exc.culprits or [], f"repaired share does not verify: {exc}") from None
        except SharesError as exc:
            for s in out:
                zero(s)
            self._wipe()
            self._state = _State.FAILED
            raise RepairError(f"cannot finish: {type(exc).__name__}") from None
        self._wipe()
        self._state = _State.DONE
        return NewShares(self._request.participant, self._items, tuple(out))

    def __repr__(self) -> str:
        return (f"RepairTarget(participant={self._request.participant}, "
                f"items={len(self._items)}, state={self.state}, <secrets redacted>)")  # fmt: skip

    __str__ = __repr__


__all__ = [
    "CONTEXT_DOMAIN",
    "MAX_ITEMS",
    "OwnPostMismatch",
    "RepairCulprits",
    "RepairError",
    "RepairHelper",
    "RepairItem",
    "RepairStateError",
    "RepairTarget",
    "repair_context",
]
