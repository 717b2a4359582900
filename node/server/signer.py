"""Quorum-approved signing: the leader coordinates, every member decides for itself.

Coordinator (the leader): for each sign request its replica shows approved, it
picks `t` members, takes one stocked commitment of each (members pre-generate
nonces in memory, `NonceStock`; the coordinator refills its pool of their
commitments in the background), asks each for its signature share, aggregates
(the aggregate is verified first; shares are checked one by one only if it
fails, and a bad share names its member, who is left out of the next attempt),
and records the signature through the log (`record_result`, verified again on
apply by every replica). A new leader finds the approved, unexecuted requests
in its replica and does the same; the result's request id is derived from the
request, so a second attempt can never be recorded twice.

Unresponsive members (the coordinator's `MemberHealth`): a member whose call failed
(timed out, unreachable, refused, a bad share) ranks after the others for a cool-down
that doubles with each consecutive failure and ends with a success, across requests, so
a hung member (a stopped process still accepts TCP connections) costs one short call
timeout (`SIGN_CALL_TIMEOUT_S`) per cool-down instead of stalling every request. A
member that gives no commitment is replaced by the next candidate in the same attempt.

Member (`share`): waits (bounded) until its own replica has applied the log
index the coordinator names, checks `executable()` on its own replica, takes
key, version and message from its replica (the coordinator sends none of them
that matter), checks its own commitment is in the list unchanged, and signs
once with nonces that are consumed whatever happens.

Dual-sign requests (a sign request on the primary inside its policy's dual-sign window,
`Request.dual_version`): the coordinator runs the rounds twice over the same message,
once with the primary and once with the version it replaced, and records both
signatures (128 bytes, the primary's first). A member gives commitments and a share on
the replaced (retired) version only for an approved request that names it as its dual
version (`Machine.dual_signable`, then the request itself), and nothing else.

Audit checkpoints (`audit_checkpoints.py`, docs/audit.md) use the same rounds with
the cluster's audit key: the coordinator's `sign_audit_checkpoint` runs them over
the checkpoint message, and a member asked for a share on the audit key (the only
thing that key signs) does not look for a request: it recomputes the checkpoint
message from its OWN chain (record `seq`'s hash and epoch) and signs only if it is
exactly the message it was asked for.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import aiohttp

from node.hsm.errors import ShareNotFoundError
from node.hsm.slot import ShareId
from node.protocols.signing import (
    BadShares,
    SigningError,
    SigningRefused,
    aggregate_or_blame,
    member_sign_share,
)
from node.protocols.wire import CommitRequest, CommitResponse, ShareRequest, ShareResponse
from node.state import Op, RecordResult
from node.state.audit_checkpoint import AUDIT_KEY_ID, own_message, seq_of_share_ref, share_ref
from node.state.errors import Rejected
from node.state.model import Request, RequestKind, RequestState, Version

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.sign")

POOL_LOW = 8  # refill a member's commitment pool below this
POOL_BATCH = 32
MAX_SHARES_PER_REQUEST = 8  # shares one member gives for one request (retries included)
MAX_ATTEMPTS = 6
# Per call (commitment refill, share), not the session's 5 s: a healthy member answered
# in at most 0.12 s with 64 signing flows in flight on 2 cores (the share call includes
# the member's wait for its replica to apply the coordinator's index).
SIGN_CALL_TIMEOUT_S = 2.0
COOL_DOWN_MIN_S = 1.0  # a member's first failure ranks it last this long, doubling per
COOL_DOWN_MAX_S = 30.0  # consecutive failure up to this
_CALL_TIMEOUT = aiohttp.ClientTimeout(total=SIGN_CALL_TIMEOUT_S)


class ShareRefused(ValueError):
    """This member will not contribute a share (HTTP 403/409 with the reason)."""


def _zero(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


class MemberHealth:
    """The coordinator's memory, across requests, of members whose calls failed.

    Without it each request rediscovered a hung member (always among the first
    candidates) and paid the call timeout for it. A member that failed ranks after the
    others until its cool-down ends (`base_s`, doubling per consecutive failure up to
    `cap_s`; a success resets it). It is only moved back, never dropped: with fewer
    than t healthy members it is still asked. Pure: callers pass the time.
    """

    def __init__(
        self, base_s: float = COOL_DOWN_MIN_S, cap_s: float = COOL_DOWN_MAX_S,
        probe_s: float = SIGN_CALL_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.base_s, self.cap_s, self.probe_s = base_s, cap_s, probe_s
        self.failures: dict[str, int] = {}  # consecutive failures
        self.last: dict[str, float] = {}  # when the newest counted failure was recorded
        self.until: dict[str, float] = {}  # ranks last before this time

    def rank(self, member: str, now: float) -> tuple[int, float]:
        """Sort key: healthy members first (a stable sort keeps the caller's preference
        among them), then those cooling down, the soonest to recover first."""
        until = self.until.get(member, 0.0)
        return (1, until) if until > now else (0, 0.0)

    def order(self, candidates: Sequence[str], now: float) -> list[str]:
        """All of `candidates`, the ones cooling down moved to the end."""
        return sorted(candidates, key=lambda m: self.rank(m, now))

    def failed(self, member: str, now: float, started: float | None = None) -> None:
        """A call to `member` begun at `started` failed. Calls already under way when the
        last failure was counted (concurrent requests hitting the same hung member) tell
        nothing new and do not lengthen the cool-down."""
        if started is not None and started < self.last.get(member, float("-inf")):
            return
        n = min(self.failures.get(member, 0) + 1, 64)
        self.failures[member] = n
        self.last[member] = now
        self.until[member] = now + min(self.base_s * 2.0 ** (n - 1), self.cap_s)

    def succeeded(self, member: str) -> None:
        """`member` answered: it is healthy again, its cool-down starts over."""
        for table in (self.failures, self.last, self.until):
            table.pop(member, None)

    def probe(self, member: str, now: float) -> None:
        """`member` is about to be asked. If it failed before and its cool-down is over,
        hold it back from other requests for `probe_s` (one call's timeout), so that only
        this request waits on it if it is still hung."""
        if self.failures.get(member) and self.until.get(member, 0.0) <= now:
            self.until[member] = now + self.probe_s


class Signer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.health = MemberHealth()  # coordinator: members that failed recently
        self.inflight: dict[str, asyncio.Task[None]] = {}
        # coordinator's pool of members' commitments: (member, key, version) -> deque
        self.pool: dict[tuple[str, str, int], deque[tuple[int, bytes, bytes]]] = {}
        self.refills: dict[tuple[str, str, int], asyncio.Future[None]] = {}
        self.given: dict[str, int] = {}  # member side: shares given per request
        self.backoff: dict[str, tuple[float, float]] = {}  # ref -> (not before, last delay)
        self.timings: deque[dict[str, float]] = deque(maxlen=4096)  # for benchmarks

    def summary(self) -> dict[str, object]:
        """Median milliseconds per coordinator phase over the recent signatures."""
        import statistics

        rows = list(self.timings)
        if not rows:
            return {"count": 0}
        out: dict[str, object] = {"count": len(rows)}
        for phase in rows[0]:
            out[f"{phase}_ms"] = round(1000 * statistics.median(r[phase] for r in rows), 3)
        return out

    # ------------------------------------------------------------ coordinator

    def kick(self, ref: str) -> None:
        """Start executing `ref` now (its approval was just applied here, the leader)."""
        if ref not in self.inflight:
            task = asyncio.get_running_loop().create_task(self._attempt(ref, self.rt.applied))
            self.inflight[ref] = task
            task.add_done_callback(lambda _t, r=ref: self.inflight.pop(r, None))

    async def reconcile(self) -> None:
        now = time.monotonic()
        for req in self.rt.machine.open_requests(RequestKind.SIGN):
            if req.state is not RequestState.APPROVED or req.ref in self.inflight:
                continue
            if self.backoff.get(req.ref, (0.0, 0.0))[0] > now:
                continue
            task = asyncio.create_task(self._attempt(req.ref, self.rt.applied))
            self.inflight[req.ref] = task
            task.add_done_callback(lambda _t, r=req.ref: self.inflight.pop(r, None))

    async def _attempt(self, ref: str, index: int) -> None:
        """One round of attempts; if it cannot finish (members down, refusing), wait
        before the next round, longer each time (0.25 s doubling up to 5 s)."""
        if await self._execute(ref, index):
            self.backoff.pop(ref, None)
            return
        _, delay = self.backoff.get(ref, (0.0, 0.125))
        delay = min(delay * 2, 5.0)
        self.backoff[ref] = (time.monotonic() + delay, delay)
        if len(self.backoff) > 10_000:
            self.backoff.pop(next(iter(self.backoff)))

    def _forget(self, member: str) -> None:
        """Drop the pooled commitments of a member that failed: it may have restarted
        (its nonces died with the old process) or evicted them."""
        for slot in [s for s in self.pool if s[0] == member]:
            del self.pool[slot]

    async def _execute(self, ref: str, index: int) -> bool:
        def target(dual: bool) -> Callable[[], tuple[str, int, bytes, bytes] | None]:
            def want() -> tuple[str, int, bytes, bytes] | None:
                try:
                    req = self.rt.machine.executable(ref)
                except Rejected:
                    return None  # executed, failed or no longer usable meanwhile
                if dual and not req.dual_version:
                    return None
                version = req.dual_version if dual else req.version
                return req.key_id, version, req.payload, req.payload_hash

            return want

        phases: dict[str, float] = {}
        sig = await self._rounds(ref, index, target(False), phases)
        if sig is None:
            return True
        if sig is False:
            return False
        req = self.rt.machine.state.requests.get(ref)
        if req is not None and req.dual_version:
            # The same message, signed by the version the primary replaced.
            second = await self._rounds(ref, index, target(True), {})
            if second is None:
                return True
            if second is False:
                return False
            sig = sig + second
        t4 = time.perf_counter()
        await self._record(ref, sig)
        phases["record"] = time.perf_counter() - t4
        self.timings.append(phases)
        return True

    async def sign_audit_checkpoint(
        self, seq: int, message: bytes, version: int, index: int
    ) -> bytes | None:
        """Coordinate a FROST signature by the audit key (`version`) over the checkpoint
        `message` for record `seq` (members check it against their own chains). None if
        it cannot be done now (fewer than t members agree or answer)."""

        def target() -> tuple[str, int, bytes, bytes] | None:
            if not self.rt.machine.may_use(AUDIT_KEY_ID, version, Op.AUDIT):
                return None
            return AUDIT_KEY_ID, version, message, message

        sig = await self._rounds(share_ref(seq), index, target, {})
        return sig if isinstance(sig, bytes) else None

    async def _rounds(
        self, ref: str, index: int, target: Callable[[], tuple[str, int, bytes, bytes] | None],
        phases: dict[str, float],
    ) -> bytes | bool | None:  # fmt: skip
        """FROST rounds for `ref`: the signature, None if `target()` (key id, version,
        message, the digest members compare) says it is no longer wanted, or False if it
        could not be done now (retry later). `phases` gets the seconds per phase."""
        rt = self.rt
        excluded: set[int] = set()
        strikes: dict[int, int] = {}
        t0 = time.perf_counter()
        for attempt in range(MAX_ATTEMPTS):
            want = target()
            if want is None:
                return None
            key_id, version_no, message, digest = want
            st = rt.machine.state
            version = st.keys[key_id].versions[version_no]
            generation = version.generation  # every signer of this round uses this one
            members = {m.index: m.name for m in st.members.values()
                       if rt.machine.holds(m.name, key_id, version_no)}  # not mid-repair
            order = [i for i in self._candidates(members) if i not in excluded]
            if len(order) < st.threshold:
                log.warning("sign %s: fewer than t members answer; will retry", ref)
                return False
            t1 = time.perf_counter()
            got = await self._gather_commitments(
                ref, order, st.threshold, members, (key_id, version_no), strikes, excluded
            )
            if len(got) < st.threshold:
                continue
            chosen = sorted(got)
            clist = [(i, got[i][1], got[i][2]) for i in chosen]
            ids = {i: got[i][0] for i in chosen}
            t2 = time.perf_counter()
            asked = time.monotonic()
            replies = await asyncio.gather(
                *(
                    self._ask_share(members[i], ShareRequest(
                        ref, index, key_id, version_no, clist, ids[i], digest, generation))
                    for i in chosen
                ),
                return_exceptions=True,
            )  # fmt: skip
            failed = [i for i, r in zip(chosen, replies, strict=True) if isinstance(r, Exception)]
            if failed:
                self._strike(failed, strikes, excluded, members)
                log.info("sign %s: no share from %s (attempt %d): %s", ref, _names(failed),
                         attempt + 1, _first_error(replies))  # fmt: skip
                continue
            t3 = time.perf_counter()
            vshares = {i + 1: s for i, s in enumerate(version.verification_shares)}
            try:
                sig = aggregate_or_blame(
                    clist, message, version.group_public_key,
                    {i: r for i, r in zip(chosen, replies, strict=True)}, vshares,
                )  # fmt: skip
            except BadShares as exc:
                if version.generation != generation:  # a refresh committed meanwhile: the
                    continue  # blame used the new verification shares; just ask again
                excluded.update(exc.culprits)  # a bad share: never asked again this round
                for i in exc.culprits:
                    self.health.failed(members[i], time.monotonic(), asked)
                log.warning("sign %s: bad signature share from %s", ref, _names(exc.culprits))
                continue
            except SigningError as exc:  # no culprit named: try again later
                log.warning("sign %s: aggregation failed: %s", ref, exc)
                return False
            phases.update(pick=t1 - t0, commit=t2 - t1, shares=t3 - t2,
                          aggregate=time.perf_counter() - t3)  # fmt: skip
            return sig
        return False

    def _candidates(self, members: dict[int, str]) -> list[int]:
        """Every member: the coordinator first, then by index, but those that failed
        recently (`MemberHealth`) at the end, still there in case t needs them."""
        now = time.monotonic()
        prefer = sorted(members, key=lambda i: (i != self.rt.index, i))
        return sorted(prefer, key=lambda i: self.health.rank(members[i], now))

    async def _gather_commitments(
        self, ref: str, order: list[int], t: int, members: dict[int, str],
        key: tuple[str, int], strikes: dict[int, int], excluded: set[int],
    ) -> dict[int, tuple[int, bytes, bytes]]:  # fmt: skip
        """One commitment (id, hiding, binding) from each of the first `t` members of
        `order` that give one: a member that fails is struck and replaced by the next at
        once, so a hung member costs one call timeout, not an attempt. Fewer than `t` if
        the candidates run out."""
        got: dict[int, tuple[int, bytes, bytes]] = {}
        queue = list(order)
        while len(got) < t and queue:
            ask, queue = queue[: t - len(got)], queue[t - len(got) :]
            now = time.monotonic()
            for i in ask:
                self.health.probe(members[i], now)
            results = await asyncio.gather(
                *(self._commitment(members[i], *key) for i in ask), return_exceptions=True
            )
            bad = []
            for i, r in zip(ask, results, strict=True):
                if isinstance(r, BaseException):
                    bad.append(i)
                else:
                    got[i] = r
            if bad:
                self._strike(bad, strikes, excluded, members)
                log.info("sign %s: no commitment from %s: %s", ref, _names(bad),
                         _first_error(results))  # fmt: skip
        return got

    def _strike(
        self, failed: list[int], strikes: dict[int, int], excluded: set[int],
        members: dict[int, str],
    ) -> None:  # fmt: skip
        """A member that fails once is asked again with fresh commitments; twice, it is
        left out of this round."""
        for i in failed:
            self._forget(members[i])
            strikes[i] = strikes.get(i, 0) + 1
            if strikes[i] >= 2:
                excluded.add(i)

    async def _record(self, ref: str, sig: bytes) -> None:
        from node.server.runtime import result_request_id

        rt = self.rt
        cmd = RecordResult(
            request_id=result_request_id("sig", ref), author=rt.name, request=ref, result=sig
        )
        signed = await rt.sign_command(cmd)
        for _ in range(20):
            out = await rt.propose_quietly(signed, f"sign result {ref}")
            if out is not None:
                log.info("sign %s: signature recorded (%s)", ref, out.code)
                return
            await asyncio.sleep(0.2)

    async def _commitment(self, member: str, key_id: str, version: int) -> tuple[int, bytes, bytes]:
        """One of `member`'s stocked commitments. One refill per (member, version) is in
        flight at a time, so concurrent requests never make a member issue more nonces
        than its stock keeps (it would evict the oldest, which this pool still holds)."""
        slot = (member, key_id, version)
        for _ in range(3):
            pool = self.pool.setdefault(slot, deque())
            if pool:
                item = pool.popleft()
                if len(pool) < POOL_LOW:
                    self._start_refill(slot)
                return item
            try:
                await asyncio.shield(self._start_refill(slot))
            except Exception as exc:
                raise ShareRefused(f"{member} gave no commitments: {exc}") from None
        raise ShareRefused(f"{member} gave no commitments")

    def _start_refill(self, slot: tuple[str, str, int]) -> asyncio.Future[None]:
        fut = self.refills.get(slot)
        if fut is None or fut.done():
            fut = asyncio.ensure_future(self._refill(slot))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            self.refills[slot] = fut
        return fut

    async def _refill(self, slot: tuple[str, str, int]) -> None:
        """Refill the pool of `slot`; the one call per refill counts for the member's health
        (commitments taken from the pool say nothing about it now)."""
        member, key_id, version = slot
        req = CommitRequest(key_id, version, POOL_BATCH)
        started = time.monotonic()
        try:
            if member == self.rt.name:
                got = await self.commit(req, member)
            else:
                body = await self._peer(member, "/v1/peer/sign/commit", req.encode())
                got = CommitResponse.decode(body)
        except Exception:
            self.health.failed(member, time.monotonic(), started)
            raise
        self.health.succeeded(member)
        self.pool.setdefault(slot, deque()).extend(got.commitments)

    async def _ask_share(self, member: str, req: ShareRequest) -> bytes:
        started = time.monotonic()
        try:
            share = await self._share_of(member, req)
        except Exception:
            self.health.failed(member, time.monotonic(), started)
            raise
        self.health.succeeded(member)
        return share

    async def _share_of(self, member: str, req: ShareRequest) -> bytes:
        if member == self.rt.name:
            return (await self.share(req, member)).share
        body = await self._peer(member, "/v1/peer/sign/share", req.encode())
        resp = ShareResponse.decode(body)
        if resp.identifier != int(member.removeprefix("node-")):
            raise ShareRefused("share from the wrong member")
        return resp.share

    async def _peer(self, member: str, path: str, body: bytes) -> bytes:
        """POST a signing call to `member`, bounded by `SIGN_CALL_TIMEOUT_S` (a stopped
        process accepts the connection and never answers)."""
        rt = self.rt
        assert rt.http is not None
        url = rt.peer_url(member, path)
        try:
            async with rt.http.post(url, data=body, timeout=_CALL_TIMEOUT) as r:
                data = await r.read()
                if r.status != 200:
                    raise ShareRefused(f"{member} answered {r.status}: {data[:200]!r}")
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ShareRefused(f"{member} unreachable ({exc.__class__.__name__})") from None

    # ------------------------------------------------------------ member side

    async def commit(self, req: CommitRequest, caller: str) -> CommitResponse:
        """Fresh commitments for `caller` (a member) on a version this replica may sign
        with. The nonces stay in this process's memory only."""
        rt = self.rt
        op = Op.AUDIT if req.key_id == AUDIT_KEY_ID else Op.SIGN
        if not rt.machine.may_use(req.key_id, req.version, op) and not (
            op is Op.SIGN and rt.machine.dual_signable(req.key_id, req.version)
        ):
            raise ShareRefused("that key version may not sign now")
        if not rt.machine.holds(rt.name, req.key_id, req.version) or not rt.registered():
            raise ShareRefused(f"{rt.name}'s share of that version is being rebuilt")
        share = await asyncio.to_thread(rt.slot.load_share, rt.share_id(req.key_id, req.version))
        try:
            items = rt.stock.issue(req.key_id, req.version, bytes(share), req.count, os.urandom)
        finally:
            _zero(share)
        return CommitResponse(items)

    async def share(self, req: ShareRequest, caller: str) -> ShareResponse:
        """This member's signature share for an approved request, decided on its own
        replica (see the module docstring). Raises ShareRefused with the reason."""
        rt = self.rt
        if not await rt.wait_applied(req.log_index, rt.cfg.sign_timeout_s):
            raise ShareRefused(f"this replica has not applied index {req.log_index} yet")
        if req.key_id == AUDIT_KEY_ID:  # the audit key signs checkpoints, never requests
            return await self._checkpoint_share(req, caller)
        known = rt.machine.state.requests.get(req.request_ref)
        if known is None or known.kind is not RequestKind.SIGN:
            raise ShareRefused("no such sign request on this replica")
        # The request's version, or (a dual-sign request) the version it names to sign too.
        versions = {known.version, known.dual_version} - {0}
        if known.key_id != req.key_id or req.version not in versions:
            raise ShareRefused("the request is for another key version")
        if not hmac.compare_digest(known.payload_hash, req.message_digest):
            raise ShareRefused("the request's message is not the one asked for")
        self._check_commitment(req)
        try:
            r: Request = rt.machine.executable(req.request_ref)
        except Rejected as exc:
            raise ShareRefused(f"not executable here: {exc.reason.value}") from None
        if req.version not in {r.version, r.dual_version} - {0}:  # re-read after executable()
            raise ShareRefused("the request is for another key version")
        number = req.version
        self._count_share(r.ref if number == r.version else f"{r.ref}#dual")
        st = rt.machine.state
        version = st.keys[r.key_id].versions[number]
        members = [m.index for m in st.members.values()]
        share = await self._load(req, version)
        try:
            z = member_sign_share(
                me=rt.index, signing_share=bytes(share), group_public_key=version.group_public_key,
                message=r.payload, commitment_list=req.commitment_list,
                my_commitment_id=req.my_commitment_id, stock=rt.stock, key_id=r.key_id,
                version=number, threshold=st.threshold, members=members,
            )  # fmt: skip
        except SigningRefused as exc:
            raise ShareRefused(str(exc)) from None
        finally:
            _zero(share)
        log.info("sign %s: share given to %s", r.ref, caller)
        return ShareResponse(rt.index, z)


    async def _load(self, req: ShareRequest, version: Version) -> bytearray:
        try:
            return await asyncio.to_thread(self.rt.slot.load_share, self._share_id(req, version))
        except ShareNotFoundError:  # that generation was erased just now (a refresh committed)
            raise ShareRefused(f"this member no longer holds generation {req.generation}") from None

    def _share_id(self, req: ShareRequest, version: Version) -> ShareId:
        """The share of the generation the coordinator names: the current one, or the one
        a refresh just replaced (until this member erases it), never any other."""
        if req.generation not in (version.generation, version.generation - 1):
            raise ShareRefused(f"generation {req.generation} is not in use "
                               f"(current {version.generation})")  # fmt: skip
        return ShareId(req.key_id, req.version, self.rt.index, req.generation)

    def _check_commitment(self, req: ShareRequest) -> None:
        rt = self.rt
        mine = next((row for row in req.commitment_list if row[0] == rt.index), None)
        stocked = rt.stock.commitment_of(req.key_id, req.version, req.my_commitment_id)
        if mine is None or stocked is None or not (
            hmac.compare_digest(mine[1], bytes(stocked.hiding))
            and hmac.compare_digest(mine[2], bytes(stocked.binding))
        ):
            raise ShareRefused("this member's commitment is missing, unknown or altered")

    def _count_share(self, ref: str) -> None:
        n = self.given.get(ref, 0)
        if n >= MAX_SHARES_PER_REQUEST:
            raise ShareRefused("share limit for this request reached")
        self.given[ref] = n + 1
        if len(self.given) > 10_000:
            self.given.pop(next(iter(self.given)))

    async def _checkpoint_share(self, req: ShareRequest, caller: str) -> ShareResponse:
        """A share of the audit key's signature over an audit checkpoint: only over the
        message this member computes from its own chain at the named seq."""
        rt = self.rt
        seq = seq_of_share_ref(req.request_ref)
        if seq is None:
            raise ShareRefused("the audit key signs only audit checkpoints")
        st = rt.machine.state
        message = own_message(st.cluster_id, st.audit, seq)
        if message is None:
            raise ShareRefused(f"this replica has no audit record {seq}")
        if not hmac.compare_digest(message, req.message_digest):
            raise ShareRefused(f"the checkpoint at seq {seq} is not over this member's chain")
        if not rt.machine.may_use(AUDIT_KEY_ID, req.version, Op.AUDIT):
            raise ShareRefused("that audit key version may not sign now")
        self._check_commitment(req)
        self._count_share(req.request_ref)
        version = st.keys[AUDIT_KEY_ID].versions[req.version]
        members = [m.index for m in st.members.values()]
        share = await self._load(req, version)
        try:
            z = member_sign_share(
                me=rt.index, signing_share=bytes(share), group_public_key=version.group_public_key,
                message=message, commitment_list=req.commitment_list,
                my_commitment_id=req.my_commitment_id, stock=rt.stock, key_id=AUDIT_KEY_ID,
                version=req.version, threshold=st.threshold, members=members,
            )  # fmt: skip
        except SigningRefused as exc:
            raise ShareRefused(str(exc)) from None
        finally:
            _zero(share)
        log.info("audit checkpoint %d: share given to %s", seq, caller)
        return ShareResponse(rt.index, z)


def _first_error(results: list[object]) -> str:
    exc = next((r for r in results if isinstance(r, Exception)), None)
    return f"{exc.__class__.__name__}: {str(exc)[:160]}" if exc else ""


def _names(indexes: object) -> str:
    return ", ".join(f"node-{i}" for i in sorted(indexes))  # type: ignore[call-overload]
