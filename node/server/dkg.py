"""A member's part in key creation and rotation: the DKG duty.

For every create/rotate request that its own replica shows approved with a
pending version, the member runs one `DkgSession` (`node.protocols.dkg_session`):

1. round 1 goes through the Raft log (`dkg_round1`, signed with the identity
   key), so every member sees the same commitments and proofs;
2. once the log holds all n round-1 posts, round-2 shares go point to point,
   each sealed to its recipient's ephemeral X25519 key (`/v1/peer/dkg/round2`);
3. with every share checked against its dealer's commitments, the member stores
   its final share in its HSM slot and posts `record_dkg_result`.

A bad dealer is named in a `record_failure` (audited). Round-1 secrets live in
memory only: a member that restarts mid-DKG reports that it lost them, which
fails the DKG (it needs all n); the leader fails a DKG that has not finished
within `dkg_timeout_s`, naming the members it still waits for. Either way the
version is aborted and an operator may simply submit `create_key` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from node.protocols.dkg_session import DkgCulprits, DkgError, DkgSession, dkg_context
from node.protocols.wire import Round2Delivery
from node.state import PostDkgRound1, RecordDkgResult, RecordFailure
from node.state.errors import Rejected
from node.state.model import Request, RequestKind, RequestState, VersionState

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.dkg")

DKG_KINDS = (RequestKind.CREATE_KEY, RequestKind.ROTATE)
MAX_BUFFERED = 16  # round-2 messages held per DKG before this member reaches round 2


class DkgRefused(ValueError):
    """A round-2 delivery this member will not take (HTTP 409)."""


@dataclass
class _Run:
    session: DkgSession
    started: float
    phase: str = "round1"  # round1 -> round2 -> storing -> done
    buffered: dict[int, bytes] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    post: Any = None  # the signed dkg_round1 command, re-proposed until the log has it
    posted_at: float = 0.0


class DkgDuty:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.runs: dict[str, _Run] = {}
        self.first_seen: dict[str, float] = {}
        self.reported: set[str] = set()

    # ------------------------------------------------------------ reconcile

    def _open_dkgs(self) -> list[Request]:
        return [
            r for r in self.rt.machine.open_requests()
            if r.kind in DKG_KINDS and r.state is RequestState.APPROVED and r.version
        ]  # fmt: skip

    def _members(self) -> list[tuple[str, int]]:
        ms = self.rt.machine.state.members.values()
        return sorted(((m.name, m.index) for m in ms), key=lambda p: p[1])

    async def reconcile(self) -> None:
        now = time.monotonic()
        live = set()
        for req in self._open_dkgs():
            ref = req.ref
            live.add(ref)
            self.first_seen.setdefault(ref, now)
            await self._step(req)
            if self.rt.is_leader() and now - self.first_seen[ref] > self.rt.cfg.dkg_timeout_s:
                await self._time_out(req)
        for ref in list(self.runs):
            if ref not in live:  # decided (executed, failed) meanwhile
                self._drop(ref)
        for ref in list(self.first_seen):
            if ref not in live:
                del self.first_seen[ref]

    async def _step(self, req: Request) -> None:
        rt, ref = self.rt, req.ref
        posts = rt.machine.dkg_round1(ref)
        run = self.runs.get(ref)
        if run is None:
            if rt.name in self._version(req).dkg_posts:
                return  # done here: stored and posted in an earlier life; others finish
            if rt.name in posts:
                # This member posted round 1 in an earlier life: its secret is gone. Only
                # said once the replica is current (a stale one may not know the outcome).
                if rt.caught_up:
                    await self._report(ref, f"{rt.name} restarted during the DKG "
                                       "(round-1 secret lost)")  # fmt: skip
                return
            if rt.name not in rt.machine.state.members:
                return
            try:
                rt.machine.executable(ref)
            except Rejected:
                return
            if len(self._members()) < 2:  # DkgSession needs 2..15: say so once, in the log
                await self._report(ref, "a DKG needs at least 2 members; a one-member "
                                   "cluster cannot generate keys")  # fmt: skip
                return
            await self._start(req)
            return
        members = self._members()
        if run.phase == "round1" and rt.name not in posts and run.post is not None:
            if time.monotonic() - run.posted_at > 1.0:  # outcome unknown: same bytes again
                run.posted_at = time.monotonic()
                await rt.propose_quietly(run.post, f"dkg round 1 {req.ref} (again)")
            return
        if run.phase == "round1" and len(posts) == len(members):
            await self._round2(req, run, {idx: posts[name] for name, idx in members})

    def _version(self, req: Request):
        return self.rt.machine.state.keys[req.key_id].versions[req.version]

    async def _start(self, req: Request) -> None:
        rt = self.rt
        members = self._members()
        ctx = dkg_context(
            rt.cfg.cluster_id, req.ref, req.key_id, req.version, members,
            rt.machine.state.threshold,
        )  # fmt: skip
        session, post = DkgSession.start(
            ctx, rt.index, len(members), rt.machine.state.threshold, os.urandom
        )
        run = self.runs[req.ref] = _Run(session, time.monotonic())
        cmd = PostDkgRound1(
            request_id=_rid("dkg1", req.ref), author=rt.name, request=req.ref, package=post
        )
        run.post, run.posted_at = await rt.sign_command(cmd), time.monotonic()
        # If the outcome is unknown (no leader, timeout) the session is kept and the
        # same signed bytes are proposed again (`_step`): one id, so one post at most.
        out = await rt.propose_quietly(run.post, f"dkg round 1 {req.ref}")
        if out is not None and not out.ok:
            self._drop(req.ref)  # refused (e.g. no longer approved): nothing to continue
            return
        log.info("dkg %s (%s v%d): round 1 proposed", req.ref, req.key_id, req.version)

    async def _round2(self, req: Request, run: _Run, posts: dict[int, bytes]) -> None:
        rt = self.rt
        try:
            outgoing = run.session.on_round1(posts)
        except DkgCulprits as exc:
            await self._blame(req.ref, exc)
            return
        except DkgError as exc:  # e.g. the log holds another round-1 post in our name
            await self._report(req.ref, f"{rt.name} cannot continue: {exc}")
            self._drop(req.ref)
            return
        run.phase = "round2"
        for idx, message in sorted(outgoing.items()):
            peer = f"node-{idx}"
            delivery = Round2Delivery(req.ref, rt.index, idx, message)
            run.tasks.append(asyncio.create_task(self._deliver(req.ref, peer, delivery)))
        for sender, message in sorted(run.buffered.items()):
            await self._take_round2(req.ref, run, sender, message)
        run.buffered.clear()

    async def _deliver(self, ref: str, peer: str, delivery: Round2Delivery) -> None:
        """Send one sealed share until the peer takes it or the DKG is over."""
        rt = self.rt
        url = rt.peer_url(peer, "/v1/peer/dkg/round2")
        assert rt.http is not None
        delay = 0.05
        while ref in self.runs:
            try:
                async with rt.http.post(url, data=delivery.encode()) as resp:
                    if resp.status == 200:
                        return
                    if resp.status == 409:  # refused for good: it will report itself
                        log.warning("dkg %s: %s refused our round-2 share", ref, peer)
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------ round 2 in

    async def deliver(self, delivery: Round2Delivery, caller: str) -> None:
        """A peer's sealed round-2 share (`caller` is the peer's certificate name)."""
        if caller != f"node-{delivery.sender}" or delivery.recipient != self.rt.index:
            raise DkgRefused("sender or recipient does not match the connection")
        run = self.runs.get(delivery.request_ref)
        if run is None:
            # Not started yet here (our replica lags): the sender retries.
            raise LookupError("no DKG under way here for that request yet")
        if run.phase == "round1":
            if len(run.buffered) >= MAX_BUFFERED and delivery.sender not in run.buffered:
                raise DkgRefused("too many early round-2 messages")
            run.buffered.setdefault(delivery.sender, delivery.message)
            return
        if run.phase == "round2":
            await self._take_round2(delivery.request_ref, run, delivery.sender, delivery.message)

    async def _take_round2(self, ref: str, run: _Run, sender: int, message: bytes) -> None:
        try:
            run.session.on_round2(sender, message)
        except DkgCulprits as exc:
            await self._blame(ref, exc)
            return
        if run.session.complete and run.phase == "round2":
            run.phase = "storing"
            run.tasks.append(asyncio.create_task(self._finish(ref, run)))

    async def _finish(self, ref: str, run: _Run) -> None:
        rt = self.rt
        req = rt.machine.state.requests.get(ref)
        if req is None:
            return
        try:
            result = run.session.finish()
        except DkgCulprits as exc:
            await self._blame(ref, exc)
            return
        sid = rt.share_id(req.key_id, req.version)
        try:
            await asyncio.to_thread(rt.slot.store_share, sid, result.signing_share, replace=True)
        except Exception as exc:  # the share must be in the token, or the DKG is void
            what = exc.__class__.__name__
            log.error("dkg %s: storing the share failed: %s", ref, what)
            await self._report(ref, f"{rt.name} could not store its share ({what})")
            self._drop(ref)
            return
        finally:
            result.zeroize()
        cmd = RecordDkgResult(
            request_id=_rid("dkg", ref), author=rt.name, request=ref,
            group_public_key=result.group_public_key,
            verification_shares=result.verification_shares,
        )  # fmt: skip
        run.phase = "done"
        for _ in range(20):
            out = await rt.propose_quietly(await rt.sign_command(cmd), f"dkg result {ref}")
            if out is not None:
                log.info("dkg %s: share stored in slot, result posted (%s)", ref, out.code)
                return
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------ failures

    async def _blame(self, ref: str, exc: DkgCulprits) -> None:
        names = ", ".join(f"node-{i}" for i in sorted(exc.culprits))
        log.warning("dkg %s: bad dealer(s) %s: %s", ref, names, exc.reason)
        await self._report(ref, f"bad dealer {names}: {exc.reason}")
        self._drop(ref)

    async def _time_out(self, req: Request) -> None:
        posts = self.rt.machine.dkg_round1(req.ref)
        done = self._version(req).dkg_posts
        members = [name for name, _ in self._members()]
        missing = [m for m in members if m not in posts] or [m for m in members if m not in done]
        timeout = self.rt.cfg.dkg_timeout_s
        reason = f"dkg timed out after {timeout:g}s waiting for {', '.join(missing)}"
        await self._report(req.ref, reason)

    async def _report(self, ref: str, reason: str) -> None:
        if ref in self.reported:
            return
        rt = self.rt
        text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in reason)[:256]
        cmd = RecordFailure(request_id=_rid("fail", ref), author=rt.name, request=ref, reason=text)
        out = await rt.propose_quietly(await rt.sign_command(cmd), f"dkg failure {ref}")
        if out is not None:
            self.reported.add(ref)
            log.warning("dkg %s: reported failure: %s (%s)", ref, text, out.code)

    def _drop(self, ref: str) -> None:
        run = self.runs.pop(ref, None)
        if run is None:
            return
        for t in run.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        with contextlib.suppress(Exception):
            run.session.abort()

    def abort_all(self) -> None:
        for ref in list(self.runs):
            self._drop(ref)

    def version_state(self, req: Request) -> VersionState:
        return self._version(req).state


def _rid(kind: str, ref: str) -> str:
    from node.server.runtime import result_request_id

    return result_request_id(kind, ref)
