"""One member's side of a Pedersen DKG run (shares.dkg), as a sans-I/O state machine.

The node feeds it what the outside world delivered and sends what it returns:

    session, post = DkgSession.start(context, me, n, t, rng)   # post -> the Raft log
    boxes = session.on_round1(posts_from_log)                  # boxes[j] -> member j
    session.on_round2(j, message_from_j)                       # for each other member j
    result = session.finish()                                  # share -> HSM; public -> log

Round-1 posts go through the replicated log, so every member sees the same
posts in the same order (the first post per member counts; the caller
enforces that). Each post carries the member's Round1Package and a fresh
X25519 public key; round-2 shares travel point to point sealed with
`sealbox` under those keys, with AAD = context || sender || recipient.

Every failure attributable to a member raises `DkgCulprits` naming it, and
ends the session (its secrets are zeroized): a failed run is never retried
with substitute packages (that would let a member choose among candidate
group keys, see docs/shares.md "Key bias"); the node starts a new version.
A session is single-use and not thread-safe: the caller serializes calls.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shares import dkg, vss
from shares.errors import InvalidProofOfKnowledge, InvalidShare, SharesError
from shares.rng import RandomSource, read_random

from . import sealbox
from .wire import MAX_MEMBERS, MAX_REF_CHARS, U32, check_key_id, check_token

CONTEXT_DOMAIN = b"custody-cluster/v1/dkg-context"
POST_VERSION = 1
ROUND2_VERSION = 1
#: A round-1 post holds t <= 15 commitments, a proof and a key: well under 2 KiB.
MAX_POST_SIZE = 4096
#: A round-2 message holds a 61-byte box and three small fields.
MAX_ROUND2_SIZE = 256
MAX_NAME_CHARS = 64
MAX_CLUSTER_ID_CHARS = 128


class DkgError(ValueError):
    """Base of the DKG session's errors."""


class DkgStateError(DkgError):
    """A method was called out of order, twice, or after the session ended."""


class OwnPostMismatch(DkgError):
    """The log holds a round-1 post for this member that is not the one it made."""


class DkgCulprits(DkgError):
    """Members whose messages are bad; the run fails and they are named for the audit."""

    def __init__(self, culprits: Sequence[int], reason: str) -> None:
        self.culprits: list[int] = sorted(set(culprits))
        self.reason = reason
        super().__init__(f"{reason} (culprits: {', '.join(map(str, self.culprits))})")


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def dkg_context(
    cluster_id: str,
    request_ref: str,
    key_id: str,
    version: int,
    members: Sequence[tuple[str, int]],
    threshold: int,
) -> bytes:
    """SHA-512 over everything that identifies one DKG run: its `context` (64 bytes).

    Used as shares.dkg's proof-of-knowledge context (so a round-1 package cannot
    be replayed into another cluster, key, version, member set or threshold)
    and in the sealbox AAD (so a round-2 box cannot be either).
    """
    check_token(cluster_id, "cluster_id", MAX_CLUSTER_ID_CHARS, DkgError)
    check_token(request_ref, "request_ref", MAX_REF_CHARS, DkgError)
    check_key_id(key_id, DkgError)
    if type(version) is not int or not 1 <= version <= U32:
        raise DkgError(f"version must be an integer in 1..{U32}")
    rows = _check_members(members)
    if type(threshold) is not int or not 2 <= threshold <= len(rows):
        raise DkgError("threshold must be an integer in 2..n")
    body = _lp(CONTEXT_DOMAIN) + _lp(cluster_id.encode()) + _lp(request_ref.encode())
    body += _lp(key_id.encode()) + struct.pack(">IBB", version, len(rows), threshold)
    body += b"".join(_lp(name.encode()) + bytes([index]) for name, index in rows)
    return hashlib.sha512(body).digest()


def _check_members(members: object) -> list[tuple[str, int]]:
    if not isinstance(members, Sequence) or isinstance(members, str | bytes):
        raise DkgError("members must be a sequence of (name, index)")
    if not 2 <= len(members) <= MAX_MEMBERS:
        raise DkgError(f"a DKG needs 2..{MAX_MEMBERS} members")
    rows: list[tuple[str, int]] = []
    for row in members:
        if not isinstance(row, tuple | list) or len(row) != 2:
            raise DkgError("members entries are (name, index)")
        name = check_token(row[0], "member name", MAX_NAME_CHARS, DkgError)
        if type(row[1]) is not int:
            raise DkgError("member index must be an integer")
        rows.append((name, row[1]))
    rows.sort(key=lambda r: r[1])
    if [i for _, i in rows] != list(range(1, len(rows) + 1)):
        raise DkgError("member indexes must be exactly 1..n")
    if len({name for name, _ in rows}) != len(rows):
        raise DkgError("member names must be distinct")
    return rows


def _zero(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


@dataclass(repr=False, eq=False)
class DkgResult:
    """What a successful run leaves: the secret share (to the HSM) and the public outcome.

    `verification_shares` is ordered by index 1..n, exactly what the state
    machine's record_dkg_result takes. The caller zeroizes `signing_share`
    (or calls `zeroize()`) once it is stored.
    """

    identifier: int
    threshold: int
    signing_share: bytearray
    group_public_key: bytes
    verification_shares: tuple[bytes, ...]
    _zeroized: bool = field(default=False, init=False)

    def zeroize(self) -> None:
        _zero(self.signing_share)
        self._zeroized = True

    def __repr__(self) -> str:
        return (
            f"DkgResult(identifier={self.identifier}, threshold={self.threshold}, "
            f"signing_share=<redacted>, group_public_key={self.group_public_key.hex()})"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("DkgResult holds a secret share and must not be pickled")


class _State(enum.Enum):
    ROUND1 = "waiting for round-1 posts"
    ROUND2 = "collecting round-2 messages"
    DONE = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class _Post:
    package: dkg.Round1Package
    x25519: bytes


def _decode_post(data: object, sender: int, t: int) -> _Post:
    """Strict decode of a member's round-1 post; DkgError (the caller names `sender`)."""
    if not isinstance(data, bytes | bytearray) or not 1 <= len(data) <= MAX_POST_SIZE:
        raise DkgError(f"post must be 1..{MAX_POST_SIZE} bytes")
    try:
        raw = msgpack.unpackb(
            bytes(data), raw=False, use_list=True, strict_map_key=True,
            max_str_len=64, max_bin_len=64, max_array_len=MAX_MEMBERS,
            max_map_len=8, max_ext_len=0,
        )  # fmt: skip
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise DkgError(f"post is not one msgpack value ({type(exc).__name__})") from None
    if type(raw) is not dict or set(raw) != {"v", "round1", "x25519"}:
        raise DkgError("post fields must be exactly v, round1, x25519")
    if type(raw["v"]) is not int or raw["v"] != POST_VERSION:
        raise DkgError("unsupported post version")
    inner = raw["round1"]
    if type(inner) is not dict or type(inner.get("v")) is not int:
        raise DkgError("round1 must be a map with an integer version")
    if type(inner.get("identifier")) is not int:  # bool is not an identifier
        raise DkgError("round1 identifier must be an integer")
    try:
        package = dkg.Round1Package.from_dict(inner)
    except SharesError as exc:
        raise DkgError(f"bad round-1 package: {exc}") from None
    if package.identifier != sender:
        raise DkgError(f"round-1 package names participant {package.identifier}")
    if len(package.commitment) != t:
        raise DkgError(f"commitment has {len(package.commitment)} elements, expected {t}")
    try:
        key = sealbox.check_public_key(raw["x25519"], "x25519 key")
    except sealbox.SealError as exc:
        raise DkgError(str(exc)) from None
    if _encode_post(package, key) != bytes(data):
        raise DkgError("post is not in canonical encoding")
    return _Post(package, key)


def _encode_post(package: dkg.Round1Package, x25519: bytes) -> bytes:
    return msgpack.packb(
        {"v": POST_VERSION, "round1": package.to_dict(), "x25519": x25519}, use_bin_type=True
    )


def _round2_aad(context: bytes, sender: int, recipient: int) -> bytes:
    return context + struct.pack(">HH", sender, recipient)


def _encode_round2(sender: int, recipient: int, box: bytes) -> bytes:
    return msgpack.packb(
        {"v": ROUND2_VERSION, "sender": sender, "recipient": recipient, "box": box},
        use_bin_type=True,
    )


def _decode_round2(data: object) -> tuple[int, int, bytes]:
    if not isinstance(data, bytes | bytearray) or not 1 <= len(data) <= MAX_ROUND2_SIZE:
        raise DkgError(f"round-2 message must be 1..{MAX_ROUND2_SIZE} bytes")
    try:
        raw = msgpack.unpackb(
            bytes(data), raw=False, use_list=True, strict_map_key=True,
            max_str_len=16, max_bin_len=MAX_ROUND2_SIZE, max_array_len=0,
            max_map_len=8, max_ext_len=0,
        )  # fmt: skip
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise DkgError(f"round-2 message is not one msgpack value ({type(exc).__name__})") from None
    if type(raw) is not dict or set(raw) != {"v", "sender", "recipient", "box"}:
        raise DkgError("round-2 fields must be exactly v, sender, recipient, box")
    if type(raw["v"]) is not int or raw["v"] != ROUND2_VERSION:
        raise DkgError("unsupported round-2 version")
    sender, recipient, box = raw["sender"], raw["recipient"], raw["box"]
    if type(sender) is not int or type(recipient) is not int or type(box) is not bytes:
        raise DkgError("round-2 field types are int, int, bytes")
    if not 1 <= sender <= MAX_MEMBERS or not 1 <= recipient <= MAX_MEMBERS:
        raise DkgError("round-2 sender or recipient out of range")
    if _encode_round2(sender, recipient, box) != bytes(data):
        raise DkgError("round-2 message is not in canonical encoding")
    return sender, recipient, box


class DkgSession:
    """One member's DKG run: start -> on_round1 -> on_round2 (n-1 times) -> finish."""

    __slots__ = (
        "_boxes_seen",
        "_context",
        "_my_post",
        "_n",
        "_posts",
        "_rng",
        "_round1_secret",
        "_round2_secret",
        "_shares",
        "_state",
        "_t",
        "_x25519",
        "_x25519_public",
        "me",
    )

    def __init__(self) -> None:
        raise TypeError("use DkgSession.start(...)")

    @classmethod
    def start(
        cls, context: bytes, me: int, n: int, t: int, rng: RandomSource
    ) -> tuple[DkgSession, bytes]:
        """Begin a run as member `me` of 1..n with threshold t; returns (session, my post)."""
        if not isinstance(context, bytes | bytearray) or not (
            1 <= len(context) <= dkg.MAX_CONTEXT_SIZE
        ):
            raise DkgError(f"context must be 1..{dkg.MAX_CONTEXT_SIZE} bytes")
        if type(n) is not int or not 2 <= n <= MAX_MEMBERS:
            raise DkgError(f"n must be an integer in 2..{MAX_MEMBERS}")
        if type(t) is not int or not 2 <= t <= n:
            raise DkgError("t must be an integer in 2..n")
        if type(me) is not int or not 1 <= me <= n:
            raise DkgError("me must be an integer in 1..n")
        self = object.__new__(cls)
        self.me, self._n, self._t, self._context = me, n, t, bytes(context)
        self._rng = rng
        try:
            seed = bytearray(read_random(rng, 32))
            self._x25519 = X25519PrivateKey.from_private_bytes(bytes(seed))
            _zero(seed)
            self._round1_secret, package = dkg.part1(me, n, t, self._context, rng=rng)
        except SharesError as exc:
            raise DkgError(f"cannot start the DKG: {exc}") from None
        self._x25519_public = sealbox.public_bytes(self._x25519)
        self._my_post = _encode_post(package, self._x25519_public)
        self._round2_secret: dkg.Round2Secret | None = None
        self._posts: dict[int, _Post] = {}
        self._shares: dict[int, bytearray] = {}
        self._boxes_seen: dict[int, bytes] = {}
        self._state = _State.ROUND1
        return self, self._my_post

    # ------------------------------------------------------------ state

    def _require(self, state: _State, what: str) -> None:
        if self._state is not state:
            raise DkgStateError(f"{what} not allowed: session is {self._state.value}")

    def _fail(self, culprits: Sequence[int], reason: str) -> DkgCulprits:
        self._wipe()
        self._state = _State.FAILED
        return DkgCulprits(culprits, reason)

    @property
    def complete(self) -> bool:
        """All n-1 round-2 shares are in (finish() may be called)."""
        return self._state is _State.ROUND2 and len(self._shares) == self._n - 1

    @property
    def state(self) -> str:
        return self._state.name.lower()

    # ------------------------------------------------------------ round 1

    def on_round1(self, posts: Mapping[int, bytes]) -> dict[int, bytes]:
        """All n posts from the log (mine included) -> sealed round-2 message per other member."""
        self._require(_State.ROUND1, "on_round1")
        if not isinstance(posts, Mapping) or set(posts) != set(range(1, self._n + 1)):
            raise DkgError(f"need exactly the posts of members 1..{self._n}")
        mine = posts[self.me]
        if not isinstance(mine, bytes | bytearray) or not hmac.compare_digest(
            bytes(mine), self._my_post
        ):
            self._wipe()  # the others deal against the log's post: this run cannot succeed
            self._state = _State.FAILED
            raise OwnPostMismatch(f"the log's round-1 post for member {self.me} is not mine")
        culprits: list[int] = []
        reasons: list[str] = []
        decoded: dict[int, _Post] = {}
        for j in range(1, self._n + 1):
            if j == self.me:
                continue
            try:
                decoded[j] = _decode_post(posts[j], j, self._t)
            except DkgError as exc:
                culprits.append(j)
                reasons.append(f"{j}: {exc}")
            else:
                if hmac.compare_digest(decoded[j].x25519, self._x25519_public):
                    # Copying my key gains nothing (the box key also needs my private
                    # half) but a box to it could not be sealed: refuse it up front.
                    del decoded[j]
                    culprits.append(j)
                    reasons.append(f"{j}: x25519 key copied from this member")
        if culprits:
            # Check the proofs of the rest too, so one verdict names every bad sender.
            for j, p in decoded.items():
                try:
                    dkg.verify_proof_of_knowledge(p.package, self._t, self._n, self._context)
                except SharesError as exc:
                    culprits.append(j)
                    reasons.append(f"{j}: {exc}")
            raise self._fail(culprits, "bad round-1 posts [" + "; ".join(reasons) + "]")
        assert self._round1_secret is not None
        try:
            self._round2_secret, packages = dkg.part2(
                self._round1_secret, {j: p.package for j, p in decoded.items()}
            )
        except InvalidProofOfKnowledge as exc:
            raise self._fail(exc.culprits, "round-1 proofs of knowledge do not verify") from None
        except SharesError as exc:  # parameters checked above: not a member's fault
            self._wipe()
            self._state = _State.FAILED
            raise DkgError(f"round 2 could not start: {type(exc).__name__}") from None
        self._round1_secret = None  # zeroed by part2
        self._posts = decoded
        out: dict[int, bytes] = {}
        for j, package in packages.items():
            plaintext = bytearray(package.signing_share)
            try:
                box = sealbox.seal(
                    self._x25519, self._x25519_public, decoded[j].x25519, bytes(plaintext),
                    _round2_aad(self._context, self.me, j), self._rng,
                )  # fmt: skip
            except sealbox.SealError as exc:  # keys were checked at decode: the RNG failed
                self._wipe()
                self._state = _State.FAILED
                raise DkgError(f"cannot seal round-2 shares: {exc}") from None
            finally:
                _zero(plaintext)
            out[j] = _encode_round2(self.me, j, box)
        self._state = _State.ROUND2
        return out

    # ------------------------------------------------------------ round 2

    def on_round2(self, sender: int, message: bytes) -> None:
        """One sealed share from `sender` (the transport-authenticated peer)."""
        self._require(_State.ROUND2, "on_round2")
        if type(sender) is not int or not 1 <= sender <= self._n or sender == self.me:
            raise DkgError(f"sender must be another member in 1..{self._n}")
        previous = self._boxes_seen.get(sender)
        if previous is not None:
            if isinstance(message, bytes | bytearray) and hmac.compare_digest(
                previous, bytes(message)
            ):
                return  # an identical repeat (a retransmission) changes nothing
            raise self._fail([sender], "a second, different round-2 message")
        try:
            claimed_sender, recipient, box = _decode_round2(message)
        except DkgError as exc:
            raise self._fail([sender], f"malformed round-2 message: {exc}") from None
        if claimed_sender != sender or recipient != self.me:
            raise self._fail([sender], "round-2 message is not from this sender to this member")
        try:
            aad = _round2_aad(self._context, sender, self.me)
            peer = self._posts[sender].x25519
            plaintext = bytearray(sealbox.open_(self._x25519, self._x25519_public, peer, box, aad))
        except sealbox.SealError:
            raise self._fail([sender], "round-2 box does not open") from None
        if len(plaintext) != 32:
            _zero(plaintext)
            raise self._fail([sender], "round-2 plaintext is not a 32-byte scalar")
        try:  # check now: blame the dealer at once rather than at finish()
            vss.verify_share(
                self.me, bytes(plaintext), self._posts[sender].package.commitment, dealer=sender
            )
        except InvalidShare:
            _zero(plaintext)
            raise self._fail(
                [sender], "round-2 share does not match its dealer's commitment"
            ) from None
        self._boxes_seen[sender] = bytes(message)
        self._shares[sender] = plaintext

    # ------------------------------------------------------------ finish

    def finish(self) -> DkgResult:
        """Run part3 on the collected shares; the session ends either way."""
        self._require(_State.ROUND2, "finish")
        if not self.complete:
            raise DkgStateError(
                f"finish needs {self._n - 1} round-2 shares, have {len(self._shares)}"
            )
        assert self._round2_secret is not None
        try:
            round2 = {
                j: dkg.Round2Package(j, self.me, bytes(share)) for j, share in self._shares.items()
            }
            key_package, public = dkg.part3(
                self._round2_secret, {j: p.package for j, p in self._posts.items()}, round2
            )
        except InvalidShare as exc:
            raise self._fail(exc.culprits, "round-2 shares do not verify") from None
        except SharesError as exc:
            self._wipe()
            self._state = _State.FAILED
            raise DkgError(f"DKG could not finish: {type(exc).__name__}") from None
        result = DkgResult(
            identifier=self.me,
            threshold=self._t,
            signing_share=bytearray(key_package.signing_share),
            group_public_key=bytes(public.group_public_key),
            verification_shares=tuple(
                bytes(public.verifying_shares[i]) for i in range(1, self._n + 1)
            ),
        )
        self._wipe()
        self._state = _State.DONE
        return result

    # ------------------------------------------------------------ teardown

    def _wipe(self) -> None:
        if self._round1_secret is not None:
            self._round1_secret.zeroize()
            self._round1_secret = None
        if self._round2_secret is not None:
            self._round2_secret.zeroize()
            self._round2_secret = None
        for share in self._shares.values():
            _zero(share)
        self._shares = {}
        self._x25519 = None  # type: ignore[assignment]  # OpenSSL frees the key

    def abort(self) -> None:
        """Zeroize everything and end the session (idempotent)."""
        self._wipe()
        if self._state in (_State.ROUND1, _State.ROUND2):
            self._state = _State.ABORTED

    def __repr__(self) -> str:
        return (
            f"DkgSession(me={self.me}, n={self._n}, t={self._t}, state={self.state}, "
            f"round2={len(self._boxes_seen)}/{self._n - 1}, <secrets redacted>)"
        )

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("DkgSession holds secrets and must not be pickled")


__all__ = [
    "CONTEXT_DOMAIN",
    "DkgCulprits",
    "DkgError",
    "DkgResult",
    "DkgSession",
    "DkgStateError",
    "OwnPostMismatch",
    "dkg_context",
]
