"""FROST signing between a coordinator and members (shares.frost), sans I/O.

Member side: `NonceStock` holds the nonces behind the commitments this member
handed out (memory only, never persisted: a restored copy would reuse them),
and `member_sign_share` turns one ShareRequest into a signature share after
the caller has checked the request on its own replica. Coordinator side:
`choose_signers` and `aggregate_or_blame`.

The rule that keeps the signing share safe is that a nonce pair is used for at
most one signature share, whatever the coordinator sends: `take` removes the
nonces from the stock before anything else is checked, and a refused request
zeroizes them, so a retry always needs fresh commitments.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence

from shares import frost
from shares import group as g
from shares.errors import (
    IncorrectCommitment,
    InvalidCommitment,
    InvalidSignature,
    InvalidSignatureShare,
    NonceReuse,
    SharesError,
)
from shares.rng import RandomSource, read_random

from .wire import (
    MAX_COMMIT_COUNT,
    MAX_MEMBERS,
    U63,
    check_commitment_rows,
    check_int,
    check_key_id,
    check_version,
)


class SigningError(ValueError):
    """Base of the signing protocol's errors."""


class NonceStockError(SigningError):
    """Bad arguments to the nonce stock (key name, version, count, share, RNG)."""


class UnknownCommitment(SigningError, KeyError):
    """No outstanding nonces under this (key, version, commitment id): never issued,
    already used, evicted or dropped."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown commitment"


class SigningRefused(SigningError):
    """The member will not produce a share for this request; `reason` is a short code.

    `culprits` names members whose commitments are malformed, when that is why.
    """

    def __init__(self, reason: str, detail: str = "", culprits: Sequence[int] = ()) -> None:
        self.reason = reason
        self.culprits: list[int] = sorted(set(culprits))
        text = f"signing refused: {reason}" + (f" ({detail})" if detail else "")
        if self.culprits:
            text += f" (culprits: {', '.join(map(str, self.culprits))})"
        super().__init__(text)


class NotEnoughSigners(SigningError):
    """Fewer than t eligible candidates."""


class BadShares(SigningError):
    """Aggregation failed and these members' shares (or commitments) are at fault."""

    def __init__(self, culprits: Sequence[int], reason: str = "bad signature shares") -> None:
        self.culprits: list[int] = sorted(set(culprits))
        self.reason = reason
        super().__init__(f"{reason} (culprits: {', '.join(map(str, self.culprits))})")


# ---------------------------------------------------------------- member: nonce stock


_Slot = tuple[str, int]


class NonceStock:
    """Outstanding FROST nonces of this member, by (key_id, version) and commitment id.

    Bounded: at most `max_per_version` per key version and `max_total` overall;
    beyond either bound the oldest are zeroized and dropped (their commitments
    simply stop working). Ids are 63-bit values drawn from the RNG, so a
    coordinator cannot guess the id of nonces issued to another coordinator.
    Thread-safe: one lock guards the maps; nonce generation runs outside it.
    """

    def __init__(self, *, max_per_version: int = 512, max_total: int = 4096) -> None:
        check_int(max_per_version, "max_per_version", 1, 1 << 20, NonceStockError)
        check_int(max_total, "max_total", max_per_version, 1 << 24, NonceStockError)
        self.max_per_version = max_per_version
        self.max_total = max_total
        self._lock = threading.Lock()
        self._by_slot: dict[_Slot, OrderedDict[int, frost.SigningNonces]] = {}
        self._order: OrderedDict[tuple[str, int, int], None] = OrderedDict()  # oldest first

    def issue(
        self, key_id: str, version: int, signing_share: bytes, count: int, rng: RandomSource
    ) -> list[tuple[int, bytes, bytes]]:
        """Make `count` fresh nonce pairs; returns [(commitment_id, hiding, binding)]."""
        slot = self._slot(key_id, version)
        check_int(count, "count", 1, min(MAX_COMMIT_COUNT, self.max_per_version), NonceStockError)
        fresh: list[frost.SigningNonces] = []
        try:
            for _ in range(count):
                nonces, _commitment = frost.commit(signing_share, rng=rng)
                fresh.append(nonces)
            raw_ids = [read_random(rng, 8) for _ in range(count)]
        except SharesError as exc:
            for nonces in fresh:
                nonces.zeroize()
            raise NonceStockError(f"cannot issue nonces: {type(exc).__name__}") from None
        out: list[tuple[int, bytes, bytes]] = []
        evicted: list[frost.SigningNonces] = []
        with self._lock:
            per = self._by_slot.setdefault(slot, OrderedDict())
            for nonces, raw in zip(fresh, raw_ids, strict=True):
                cid = int.from_bytes(raw, "big") & U63
                while cid in per:  # a repeating RNG must not overwrite live nonces
                    cid = (cid + 1) & U63
                per[cid] = nonces
                self._order[(*slot, cid)] = None
                hiding, binding = nonces.commitments
                out.append((cid, bytes(hiding), bytes(binding)))
            while len(per) > self.max_per_version:
                old_cid, old = per.popitem(last=False)
                del self._order[(*slot, old_cid)]
                evicted.append(old)
            while len(self._order) > self.max_total:
                (k, v, c), _ = self._order.popitem(last=False)
                evicted.append(self._by_slot[(k, v)].pop(c))
                if not self._by_slot[(k, v)]:
                    del self._by_slot[(k, v)]
        for nonces in evicted:
            nonces.zeroize()
        return out

    def take(self, key_id: str, version: int, commitment_id: int) -> frost.SigningNonces:
        """Remove and return the nonces behind `commitment_id`: exactly once."""
        slot = self._slot(key_id, version)
        with self._lock:
            per = self._by_slot.get(slot)
            nonces = per.pop(commitment_id, None) if per is not None else None
            if nonces is None:
                raise UnknownCommitment("no outstanding nonces under this commitment id")
            del self._order[(*slot, commitment_id)]
            if not per:
                del self._by_slot[slot]
        return nonces

    def commitment_of(
        self, key_id: str, version: int, commitment_id: int
    ) -> frost.NonceCommitment | None:
        """The public commitment of a stocked nonce pair (None if absent); consumes nothing,
        so a member can refuse a list that misquotes it before spending any nonce."""
        with self._lock:
            nonces = self._by_slot.get(self._slot(key_id, version), {}).get(commitment_id)
            return None if nonces is None else nonces.commitments

    def drop_version(self, key_id: str, version: int) -> int:
        """Zeroize every nonce of one key version (revoked, rotated); returns how many."""
        slot = self._slot(key_id, version)
        with self._lock:
            per = self._by_slot.pop(slot, OrderedDict())
            for cid in per:
                del self._order[(*slot, cid)]
        for nonces in per.values():
            nonces.zeroize()
        return len(per)

    def clear(self) -> None:
        """Zeroize everything (shutdown, or a detected VM restore)."""
        with self._lock:
            slots, self._by_slot, self._order = self._by_slot, {}, OrderedDict()
        for per in slots.values():
            for nonces in per.values():
                nonces.zeroize()

    def outstanding(self, key_id: str | None = None, version: int | None = None) -> int:
        """How many nonce pairs are held (for one key version, or in all)."""
        with self._lock:
            if key_id is None:
                return len(self._order)
            return len(self._by_slot.get(self._slot(key_id, version), ()))

    def __len__(self) -> int:
        return self.outstanding()

    def __repr__(self) -> str:
        return f"NonceStock(outstanding={len(self)}, <nonces redacted>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("NonceStock must never be pickled or persisted")

    @staticmethod
    def _slot(key_id: str, version: int | None) -> _Slot:
        return check_key_id(key_id, NonceStockError), check_version(version, NonceStockError)


# ---------------------------------------------------------------- member: sign


def member_sign_share(
    *,
    me: int,
    signing_share: bytes,
    group_public_key: bytes,
    message: bytes,
    commitment_list: Sequence[tuple[int, bytes, bytes]],
    my_commitment_id: int,
    stock: NonceStock,
    key_id: str,
    version: int,
    threshold: int,
    members: Collection[int],
) -> bytes:
    """This member's signature share z_i (32 bytes), or SigningRefused.

    The caller has checked its own replica: the request is approved, and
    key_id, version and message come from there, not from the coordinator.
    Here: the nonces are taken first (consumed whatever happens next), then the
    list must have exactly `threshold` distinct members sorted by identifier,
    me among them with the commitment I issued under `my_commitment_id`.
    """
    if not isinstance(stock, NonceStock):
        raise SigningRefused("bad_input", "stock must be a NonceStock")
    if type(my_commitment_id) is not int or not 0 <= my_commitment_id <= U63:
        raise SigningRefused("bad_input", "commitment id out of range")
    try:
        nonces = stock.take(key_id, version, my_commitment_id)
    except UnknownCommitment:
        raise SigningRefused("unknown_commitment", "unknown or already used") from None
    except NonceStockError as exc:
        raise SigningRefused("bad_input", str(exc)) from None
    try:
        return _sign_with(
            nonces, me, signing_share, group_public_key, message, commitment_list,
            threshold, members,
        )  # fmt: skip
    finally:
        nonces.zeroize()  # no-op after a successful sign (take() already zeroed them)


def _sign_with(
    nonces: frost.SigningNonces,
    me: int,
    signing_share: bytes,
    group_public_key: bytes,
    message: bytes,
    commitment_list: Sequence[tuple[int, bytes, bytes]],
    threshold: int,
    members: Collection[int],
) -> bytes:
    if not isinstance(members, Collection) or isinstance(members, str | bytes):
        raise SigningRefused("bad_input", "members must be a collection of indexes")
    member_set = set(members)
    if not all(type(m) is int and 1 <= m <= MAX_MEMBERS for m in member_set):
        raise SigningRefused("bad_input", f"member indexes must be in 1..{MAX_MEMBERS}")
    if type(me) is not int or me not in member_set:
        raise SigningRefused("bad_input", "me is not a member")
    if type(threshold) is not int or not 2 <= threshold <= len(member_set):
        raise SigningRefused("bad_input", "threshold must be in 2..len(members)")
    try:
        rows = check_commitment_rows(
            commitment_list, "commitment_list", min_len=threshold, max_len=threshold,
            id_range=(1, MAX_MEMBERS), sorted_ids=True, exc=SigningRefused,
        )  # fmt: skip
    except SigningRefused as exc:
        raise SigningRefused("bad_list", str(exc.args[0])) from None
    ids = [r[0] for r in rows]
    outsiders = sorted(set(ids) - member_set)
    if outsiders:
        raise SigningRefused("not_member", f"identifiers {outsiders} are not members")
    mine = next((r for r in rows if r[0] == me), None)
    if mine is None:
        raise SigningRefused("missing_me", "this member is not in the commitment list")
    if not (
        g.element_eq(mine[1], nonces.commitments.hiding)
        and g.element_eq(mine[2], nonces.commitments.binding)
    ):
        raise SigningRefused("incorrect_commitment", "my commitment is altered")
    try:
        share = frost.sign(
            me, signing_share, group_public_key, nonces, message, rows,
            min_participants=threshold,
        )  # fmt: skip
    except InvalidCommitment as exc:
        raise SigningRefused("bad_commitment", "malformed nonce commitment", exc.culprits) from None
    except IncorrectCommitment:
        raise SigningRefused("incorrect_commitment", "my commitment is altered") from None
    except NonceReuse:
        raise SigningRefused("unknown_commitment", "nonces already used") from None
    except SharesError as exc:
        raise SigningRefused("bad_input", type(exc).__name__) from None
    return bytes(share)


# ---------------------------------------------------------------- coordinator


def choose_signers(
    candidates: Sequence[int], t: int, exclude: Collection[int], prefer: int | None = None
) -> list[int]:
    """The first t eligible candidates (`prefer` first if eligible), sorted by identifier.

    `candidates` is in the caller's order of preference (e.g. most recently
    heard from); `exclude` holds members blamed or unreachable in this request.
    """
    if isinstance(candidates, str | bytes) or not isinstance(candidates, Sequence):
        raise SigningError("candidates must be a sequence of member indexes")
    if type(t) is not int or not 2 <= t <= MAX_MEMBERS:
        raise SigningError(f"t must be in 2..{MAX_MEMBERS}")
    for c in [*candidates, *exclude, *([] if prefer is None else [prefer])]:
        check_int(c, "member index", 1, MAX_MEMBERS, SigningError)
    excluded = set(exclude)
    order = ([prefer] if prefer is not None else []) + list(candidates)
    chosen: list[int] = []
    for c in order:
        if c not in excluded and c not in chosen and (c != prefer or c in candidates):
            chosen.append(c)
        if len(chosen) == t:
            return sorted(chosen)
    raise NotEnoughSigners(f"{len(chosen)} eligible signers, {t} needed")


def aggregate_or_blame(
    commitment_list: Sequence[tuple[int, bytes, bytes]],
    message: bytes,
    group_public_key: bytes,
    shares: Mapping[int, bytes],
    verifying_shares: Mapping[int, bytes],
) -> bytes:
    """The 64-byte Ed25519 signature, or BadShares naming the members at fault.

    The aggregate is verified first; only if it fails is every share checked
    against its signer's verification share (RFC 9591 section 5.4).
    """
    rows = check_commitment_rows(
        commitment_list, "commitment_list", min_len=2, max_len=MAX_MEMBERS,
        id_range=(1, MAX_MEMBERS), sorted_ids=True, exc=SigningError,
    )  # fmt: skip
    ids = [r[0] for r in rows]
    if not isinstance(shares, Mapping) or set(shares) != set(ids):
        raise SigningError("need exactly one share per commitment_list entry")
    if not isinstance(verifying_shares, Mapping) or not set(ids) <= set(verifying_shares):
        raise SigningError("need the verification share of every signer")
    try:
        return frost.aggregate(
            rows, message, group_public_key, [shares[i] for i in ids],
            verifying_shares={i: verifying_shares[i] for i in ids},
        )  # fmt: skip
    except InvalidSignatureShare as exc:
        raise BadShares(exc.culprits, "signature shares do not verify") from None
    except InvalidCommitment as exc:
        raise BadShares(exc.culprits, "malformed nonce commitments") from None
    except InvalidSignature:
        raise SigningError("signature does not verify and no share is at fault") from None
    except SharesError as exc:
        raise SigningError(f"cannot aggregate: {type(exc).__name__}") from None


__all__ = [
    "BadShares",
    "NonceStock",
    "NonceStockError",
    "NotEnoughSigners",
    "SigningError",
    "SigningRefused",
    "UnknownCommitment",
    "aggregate_or_blame",
    "choose_signers",
    "member_sign_share",
]
