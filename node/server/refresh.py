"""A member's part in proactive refresh (docs/recovery.md): the refresh duty.

The replicated state (`node.state.refreshes`) names the running refresh, its current
run, the batch of versions and the participants (every member). Each member:

1. posts its commitments to a sharing of zero per version (`refresh_post`);
2. once every participant posted, sends each other participant its sealed sub-shares
   (`POST /v1/peer/refresh`), checks the ones it gets against the commitments;
3. stores its NEXT generation of every share of the batch beside the current one
   (the slot's AAD binds the generation), and records the new verification shares it
   derived (`record_refresh`). The state commits the batch (verification shares and
   generation together) when every member recorded the same values;
4. erases the old generation once the commit is applied, and any next generation a
   failed run left behind once no refresh runs.

Until the commit every signer uses the old generation; after it, the new one (the
coordinator names the generation in each share request). A member that restarts
mid-run reports it lost its session (a new run starts), unless it had already stored
its next generation: then it derives the new verification shares from the log's
posts and records them. The leader reports a run without progress after
`dkg_timeout_s`. The leader also starts a refresh every `refresh_every_epochs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from node.hsm.aad import zero
from node.hsm.slot import ShareId
from node.protocols.batch import KeyVersion, matches
from node.protocols.refresh_session import (
    RefreshCulprits,
    RefreshError,
    RefreshSession,
    refresh_context,
    refreshed_public,
)
from node.protocols.wire import RefreshDelivery
from node.server.faults import crash_point
from node.server.repair import RepairRefused
from node.server.runs import (
    Run,
    Sessions,
    first_time,
    key_versions,
    load_shares,
    not_persisted,
    post_until_taken,
    printable,
    run_timeout,
)
from node.state import PostRefresh, RecordRefresh, ReportRefresh, StartRefresh
from node.state.model import Refresh
from node.state.names import member_index
from shares.errors import SharesError

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.refresh")


class RefreshDuty:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.runs: Sessions[int] = Sessions()
        self.first_seen: dict[int, float] = {}
        self.reported: set[int] = set()
        self._generations: tuple[Any, ...] = ()  # what the last erasure pass saw

    # ------------------------------------------------------------ reconcile

    async def reconcile(self) -> None:
        rt = self.rt
        r = rt.machine.running_refresh()
        if r is not None:
            self.first_seen.setdefault(r.run, time.monotonic())
            if rt.name in r.participants:
                await self._step(r)
            waited = time.monotonic() - self.first_seen[r.run]
            if rt.is_leader() and waited > run_timeout(rt.cfg.dkg_timeout_s,
                                                       len(r.batch_items())):  # fmt: skip
                silent = [p for p in r.participants if p not in r.posts]
                why = (f"no post within {rt.cfg.dkg_timeout_s:g}s from {', '.join(silent)}"
                       if silent else "run made no progress")  # fmt: skip
                await self._report(r, silent, why)
        live = {r.run} if r is not None else set()
        for run in [k for k in self.runs if k not in live]:
            self._drop(run)
        for run in [k for k in self.first_seen if k not in live]:
            del self.first_seen[run]
        await self._erase_old_generations(r)
        await self._schedule()

    def _items(self, r: Refresh) -> list[KeyVersion]:
        return key_versions(self.rt.machine.state, r.batch_items())

    def _context(self, r: Refresh, items: list[KeyVersion]) -> tuple[bytes, list[int], int]:
        ids = sorted(member_index(p) for p in r.participants)
        t = self.rt.machine.state.threshold
        ctx = refresh_context(self.rt.cfg.cluster_id, f"{r.request}#{r.run}", ids, t, items)
        return ctx, ids, t

    def _next_id(self, key_id: str, version: int) -> ShareId:
        """The share object of the generation after the one the state names."""
        current = self.rt.share_id(key_id, version)
        return ShareId(key_id, version, current.index, current.generation + 1)

    async def _step(self, r: Refresh) -> None:
        rt = self.rt
        run = self.runs.get(r.run)
        if run is None and not rt.caught_up:
            return  # a lagging replica may not show the post this member made before a restart
        if run is None:
            if rt.name in r.recorded:
                return  # recorded in an earlier life: the others finish
            if rt.name in r.posts:  # posted in an earlier life: the session is gone
                rows = await self._stored_rows(r)
                if rows is not None:
                    await self._record(r, rows)
                elif rt.caught_up:
                    await self._report(r, [], f"{rt.name} restarted during the run")
                return
            await self._start(r)
            return
        if run.phase == "posted" and rt.name not in r.posts:
            if time.monotonic() - run.posted_at > 1.0:
                run.posted_at = time.monotonic()
                await rt.propose_quietly(run.post, f"refresh post {r.run} (again)")
            return
        if run.phase == "posted" and all(p in r.posts for p in r.participants):
            await self._exchange(r, run)

    async def _start(self, r: Refresh) -> None:
        rt = self.rt
        items = self._items(r)
        try:
            ctx, ids, t = self._context(r, items)
            shares = await asyncio.to_thread(
                load_shares, rt, [(it.key_id, it.version) for it in items])
            try:
                session, post = RefreshSession.start(ctx, rt.index, ids, t, items, shares,
                                                     os.urandom)  # fmt: skip
            finally:
                for s in shares:
                    zero(s)
        except (RefreshError, SharesError) as exc:
            log.error("refresh run %d: cannot start: %s", r.run, exc)
            await self._report(r, [rt.name], printable(f"{rt.name} cannot take part: {exc}"))
            return
        except Exception as exc:  # the slot failed
            log.error("refresh run %d: slot failed: %s", r.run, exc.__class__.__name__)
            await self._report(r, [rt.name], f"{rt.name} cannot read its shares")
            return
        cmd = PostRefresh(request_id=f"refresh-post-{r.run}", author=rt.name, run=r.run,
                          package=post)  # fmt: skip
        signed = await rt.sign_command(cmd)
        self.runs[r.run] = Run(session, signed, time.monotonic())
        out = await rt.propose_quietly(signed, f"refresh post {r.run}")
        if out is not None and not out.ok and out.code != "duplicate_post":
            self._drop(r.run)
            return
        log.info("refresh run %d: post proposed (%d versions)", r.run, len(items))
        if out is not None and out.ok:
            crash_point("refresh.posted")

    async def _exchange(self, r: Refresh, run: Run) -> None:
        rt = self.rt
        posts = {member_index(p): r.posts[p] for p in r.participants}
        try:
            boxes = run.session.on_posts(posts)
        except RefreshCulprits as exc:
            await self._blame(r, exc)
            return
        except RefreshError as exc:
            await self._report(r, [], printable(f"{rt.name} cannot continue: {exc}"))
            self._drop(r.run)
            return
        run.phase = "exchange"
        crash_point("refresh.exchange")  # the log has every post; nothing sent yet
        for j, box in sorted(boxes.items()):
            d = RefreshDelivery(r.run, rt.index, j, box)
            alive = (lambda n=r.run: n in self.runs)  # noqa: E731
            run.tasks.append(asyncio.create_task(post_until_taken(
                rt, alive, f"node-{j}", "/v1/peer/refresh", d.encode(), f"refresh {r.run}")))
        for sender, message in sorted(run.buffered.items()):
            await self._take(r, run, sender, message)
        run.buffered.clear()
        await self._maybe_finish(r, run)

    # ------------------------------------------------------------ point to point

    async def deliver(self, d: RefreshDelivery, caller: str) -> None:
        if caller != f"node-{d.sender}" or d.recipient != self.rt.index:
            raise RepairRefused("sender or recipient does not match the connection")
        r = self.rt.machine.running_refresh()
        run = self.runs.get(d.run)
        if r is None or run is None or r.run != d.run:
            raise LookupError("no refresh run under way here for that yet")  # sender retries
        if f"node-{d.sender}" not in r.participants:
            raise RepairRefused("the sender is not a participant")
        if run.phase == "posted":
            run.buffered.setdefault(d.sender, d.message)
            return
        if run.phase == "exchange":
            await self._take(r, run, d.sender, d.message)
            await self._maybe_finish(r, run)

    async def _take(self, r: Refresh, run: Run, sender: int, message: bytes) -> None:
        if not first_time(run.received, sender, message):
            return
        try:
            run.session.on_subshares(sender, message)
        except RefreshCulprits as exc:
            await self._blame(r, exc)
        except RefreshError as exc:
            log.warning("refresh run %d: message from node-%d refused: %s", r.run, sender, exc)

    async def _maybe_finish(self, r: Refresh, run: Run) -> None:
        if run.phase != "exchange" or not run.session.complete:
            return
        run.phase = "storing"
        run.tasks.append(asyncio.create_task(self._store(r, run)))

    async def _store(self, r: Refresh, run: Run) -> None:
        rt = self.rt
        number = r.run  # `r` is the live state: the run may move on meanwhile
        try:
            result = run.session.finish()
        except RefreshCulprits as exc:
            await self._blame(r, exc)
            return
        ids = sorted(member_index(p) for p in r.participants)
        rows = tuple(tuple(vs[j] for j in ids) for vs in result.verification_shares)

        ids = [self._next_id(it.key_id, it.version) for it in result.items]

        def store() -> None:
            for sid, share in zip(ids, result.shares, strict=True):
                rt.slot.store_share(sid, share, replace=True)

        try:
            await asyncio.to_thread(store)
            missing = await not_persisted(rt, ids)
            if missing:
                raise OSError(f"{len(missing)} share object(s) not in the token for a fresh "
                              "process")  # fmt: skip
        except Exception as exc:
            what = exc.__class__.__name__
            log.error("refresh run %d: storing the next generation failed: %s", r.run, what)
            await self._report(r, [], f"{rt.name} could not store its shares ({what})")
            return
        finally:
            result.zeroize()
        run.phase = "done"
        log.info("refresh run %d: next generation of %d shares stored beside the current",
                 r.run, len(result.items))  # fmt: skip
        crash_point("refresh.stored")  # stored, not recorded yet
        if r.run != number or rt.machine.running_refresh() is not r:
            log.info("refresh run %d: over before it was recorded", number)
            return
        await self._record(r, rows)

    async def _stored_rows(self, r: Refresh) -> tuple[tuple[bytes, ...], ...] | None:
        """After a restart: the new verification shares (derived from the log's posts) if
        this member's slot already holds a matching next generation of the whole batch."""
        items = self._items(r)
        ctx_ids = sorted(member_index(p) for p in r.participants)
        posts = {member_index(p): r.posts[p] for p in r.participants if p in r.posts}
        if len(posts) != len(ctx_ids):
            return None
        try:
            public = refreshed_public(posts, ctx_ids, self.rt.machine.state.threshold, items)
        except (RefreshError, SharesError):
            return None
        me = self.rt.index

        def check() -> bool:
            for it, vs in zip(items, public, strict=True):
                try:
                    share = self.rt.slot.load_share(self._next_id(it.key_id, it.version))
                except Exception:
                    return False
                try:
                    if not matches(share, vs[me]):
                        return False
                finally:
                    zero(share)
            return True

        if not await asyncio.to_thread(check):
            return None
        return tuple(tuple(vs[j] for j in ctx_ids) for vs in public)

    async def _record(self, r: Refresh, rows: tuple[tuple[bytes, ...], ...]) -> None:
        rt = self.rt
        cmd = RecordRefresh(request_id=f"refresh-record-{r.run}", author=rt.name, run=r.run,
                            verification_shares=rows)  # fmt: skip
        signed = await rt.sign_command(cmd)
        run = r.run
        for _ in range(20):
            out = await rt.propose_quietly(signed, f"refresh record {run}")
            if out is not None:
                log.info("refresh run %d: recorded (%s) %s", run, out.code, out.detail)
                crash_point("refresh.recorded")
                return
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------ generations

    async def _erase_old_generations(self, r: Refresh | None) -> None:
        """Erase share objects of a generation the state no longer names: older ones
        once a commit is applied, newer ones (a failed run's) once no refresh runs."""
        keys = self.rt.machine.state.keys
        seen = (r.run if r is not None else 0, r.done if r is not None else -1,
                tuple((k, n, v.generation) for k, key in sorted(keys.items())
                      for n, v in sorted(key.versions.items()) if v.generation))  # fmt: skip
        if seen == self._generations:
            return
        self._generations = seen
        running = r is not None

        def erase() -> int:
            doomed = []
            for sid in self.rt.slot.list_shares():
                key = keys.get(sid.key_id)
                v = key.versions.get(sid.version) if key is not None else None
                if v is None:
                    continue
                stale = sid.generation < v.generation
                orphan = sid.generation > v.generation and not running
                if stale or orphan:
                    doomed.append(sid)
            return self.rt.slot.destroy_shares(doomed) if doomed else 0

        count = await asyncio.to_thread(erase)
        if count:
            log.info("erased %d share objects of generations no longer in use", count)

    # ------------------------------------------------------------ schedule

    async def _schedule(self) -> None:
        """The leader starts a refresh every `refresh_every_epochs` epochs."""
        rt = self.rt
        every = rt.cfg.refresh_every_epochs
        if not every or not rt.is_leader() or rt.machine.running_refresh() is not None:
            return
        st = rt.machine.state
        last = max((x.started_epoch for x in st.refreshes.values()), default=0)
        if st.epoch - last < every or rt.machine.repairing_any() is not None:
            return
        cmd = StartRefresh(request_id=f"refresh-epoch-{st.epoch}", author=rt.name)
        out = await rt.propose_quietly(await rt.sign_command(cmd), "scheduled refresh")
        if out is not None and out.ok:
            log.info("scheduled refresh started at epoch %d", st.epoch)

    # ------------------------------------------------------------ failures

    async def _blame(self, r: Refresh, exc: RefreshCulprits) -> None:
        names = [f"node-{i}" for i in exc.culprits]
        log.warning("refresh run %d: culprits %s: %s", r.run, ", ".join(names), exc.reason)
        await self._report(r, names, printable(exc.reason, 200))
        self._drop(r.run)

    async def _report(self, r: Refresh, culprits: list[str], reason: str) -> None:
        run = r.run
        if run in self.reported:
            return
        rt = self.rt
        cmd = ReportRefresh(
            request_id=f"refresh-fail-{run}", author=rt.name, run=run,
            culprits=tuple(sorted(set(culprits))), reason=printable(reason),
        )  # fmt: skip
        out = await rt.propose_quietly(await rt.sign_command(cmd), f"refresh failure {run}")
        if out is not None:
            self.reported.add(run)
            log.warning("refresh run %d: reported: %s (%s)", run, reason, out.code)

    def _drop(self, run: int) -> None:
        self.runs.drop(run)

    def abort_all(self) -> None:
        self.runs.drop_all()
