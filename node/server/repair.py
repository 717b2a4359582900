"""A member's part in share repair (docs/recovery.md): the repair duty.

The replicated state (`node.state.repairs`) says which member is being repaired,
which run is current, which versions it covers and who helps. Each party of the
current run drives one session of `node.protocols.repair_session`:

1. it posts through the log (`repair_post`, signed with its identity key): the
   target its fresh X25519 key, each helper its commitments for every version of
   the batch (dealt from its share, which never leaves this process unmasked);
2. once the log holds every party's post, helpers exchange sealed pieces point to
   point (`POST /v1/peer/repair`), check them against the commitments, and send
   the target sealed sums;
3. the target checks every sum, rebuilds each share, checks it against the
   published verification share, stores it in its slot, and confirms the run
   (`record_repair`).

A culprit named by a session is reported (`repair_failure`), which starts a new run
without it. Session secrets live in memory only: a party that restarts mid-run
reports that it lost them (a new run, same helpers), except a target that had
already stored every share of the batch, which simply confirms. The leader reports
a run that made no progress within `dkg_timeout_s`, naming helpers that never posted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from node.hsm.aad import zero
from node.protocols.batch import matches
from node.protocols.repair_session import (
    RepairCulprits,
    RepairError,
    RepairHelper,
    RepairItem,
    RepairTarget,
    repair_context,
)
from node.protocols.wire import RepairDelivery
from node.server.faults import crash_point
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
from node.state import PostRepair, RecordRepair, ReportRepair, repair_request_id
from node.state.model import Repair, RepairState
from node.state.names import member_index
from shares import repair as srepair
from shares.errors import SharesError

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.repair")


class RepairRefused(ValueError):
    """A delivery this member will not take (HTTP 409)."""


class RepairDuty:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.runs: Sessions[tuple[str, int]] = Sessions()
        self.first_seen: dict[tuple[str, int], float] = {}
        self.reported: set[tuple[str, int]] = set()

    # ------------------------------------------------------------ reconcile

    def _running(self) -> list[Repair]:
        st = self.rt.machine.state
        return [st.repairs[m] for m in sorted(st.repairs)
                if st.repairs[m].state is RepairState.RUNNING]  # fmt: skip

    async def reconcile(self) -> None:
        now = time.monotonic()
        live: set[tuple[str, int]] = set()
        for repair in self._running():
            key = (repair.member, repair.run)
            live.add(key)
            self.first_seen.setdefault(key, now)
            if self.rt.name == repair.member or self.rt.name in repair.helpers:
                await self._step(repair)
            if self.rt.is_leader() and now - self.first_seen[key] > run_timeout(
                self.rt.cfg.dkg_timeout_s, len(repair.batch_items())
            ):
                await self._time_out(repair)
        for key in [k for k in self.runs if k not in live]:
            self._drop(key)
        for key in [k for k in self.first_seen if k not in live]:
            del self.first_seen[key]

    def _items(self, repair: Repair) -> list[RepairItem]:
        return key_versions(self.rt.machine.state, repair.batch_items())

    def _context(self, repair: Repair, items: list[RepairItem]) -> tuple[bytes, Any]:
        request = srepair.RepairRequest(
            participant=member_index(repair.member),
            helpers=tuple(sorted(member_index(h) for h in repair.helpers)),
            min_participants=self.rt.machine.state.threshold,
        )
        run_ref = f"{repair.request}#{repair.run}"
        return repair_context(self.rt.cfg.cluster_id, run_ref, request, items), request

    async def _step(self, repair: Repair) -> None:
        rt, key = self.rt, (repair.member, repair.run)
        run = self.runs.get(key)
        if run is None and not rt.caught_up:
            return  # a lagging replica may not show the post this member made before a restart
        if run is None:
            if rt.name in repair.posts:  # posted in an earlier life: the session is gone
                if rt.name == repair.member and await self._already_stored(repair):
                    await self._confirm(repair)
                elif rt.caught_up:
                    await self._report(repair, [], f"{rt.name} restarted during the run")
                return
            await self._start(repair)
            return
        if run.phase == "posted" and rt.name not in repair.posts:
            if time.monotonic() - run.posted_at > 1.0:  # outcome unknown: same bytes again
                run.posted_at = time.monotonic()
                await rt.propose_quietly(run.post, f"repair post {key} (again)")
            return
        parties = (repair.member, *repair.helpers)
        if run.phase == "posted" and all(p in repair.posts for p in parties):
            await self._exchange(repair, run)

    async def _start(self, repair: Repair) -> None:
        rt, key = self.rt, (repair.member, repair.run)
        items = self._items(repair)
        try:
            context, request = self._context(repair, items)
            if rt.name == repair.member:
                session, post = RepairTarget.start(context, request, items, os.urandom)
                role = "target"
            else:
                shares = await asyncio.to_thread(
                    load_shares, rt, [(it.key_id, it.version) for it in items])
                try:
                    session, post = RepairHelper.start(
                        context, rt.index, request, items, shares, os.urandom
                    )
                finally:
                    for s in shares:
                        zero(s)
                role = "helper"
        except (RepairError, SharesError) as exc:
            # This member cannot take part (e.g. its share of a version is missing or does
            # not match): it names itself, so the next run goes without it.
            log.error("repair %s run %d: cannot start: %s", repair.member, repair.run, exc)
            await self._report(repair, [rt.name], f"{rt.name} cannot help: {exc}"[:200])
            return
        except Exception as exc:  # the slot failed: the same, loudly
            log.error("repair %s run %d: slot failed: %s", repair.member, repair.run,
                      exc.__class__.__name__)  # fmt: skip
            await self._report(repair, [rt.name], f"{rt.name} cannot read its shares")
            return
        cmd = PostRepair(
            request_id=repair_request_id("repair-post", repair.member, repair.run),
            author=rt.name, member=repair.member, run=repair.run, package=post,
        )  # fmt: skip
        signed = await rt.sign_command(cmd)
        self.runs[key] = Run(session, signed, time.monotonic(), role=role)
        out = await rt.propose_quietly(signed, f"repair post {key}")
        if out is not None and not out.ok and out.code != "duplicate_post":
            self._drop(key)
            return
        log.info("repair %s run %d: %s post proposed (%d versions)", repair.member, repair.run,
                 role, len(items))  # fmt: skip
        if out is not None and out.ok:
            crash_point(f"repair.{role}.posted")

    async def _exchange(self, repair: Repair, run: Run) -> None:
        rt, key = self.rt, (repair.member, repair.run)
        helper_posts = {member_index(h): repair.posts[h] for h in repair.helpers}
        target_post = repair.posts[repair.member]
        try:
            if run.role == "helper":
                boxes = run.session.on_posts(helper_posts, target_post)
                run.phase = "exchange"
                crash_point("repair.helper.exchange")  # the log has every post; nothing sent
                for j, box in sorted(boxes.items()):
                    d = RepairDelivery(repair.member, repair.run, "delta", rt.index, j, box)
                    run.tasks.append(asyncio.create_task(self._deliver(key, f"node-{j}", d)))
            else:
                run.session.on_posts(helper_posts, target_post)
                run.phase = "exchange"
        except RepairCulprits as exc:
            await self._blame(repair, exc)
            return
        except RepairError as exc:  # e.g. the log holds another post in our name
            await self._report(repair, [], f"{rt.name} cannot continue: {exc}"[:200])
            self._drop(key)
            return
        for sender, message in sorted(run.buffered.items()):
            await self._take(repair, run, sender, message)
        run.buffered.clear()
        await self._maybe_finish(repair, run)

    # ------------------------------------------------------------ point to point

    async def _deliver(self, key: tuple[str, int], peer: str, delivery: RepairDelivery) -> None:
        await post_until_taken(self.rt, lambda: key in self.runs, peer, "/v1/peer/repair",
                               delivery.encode(), f"repair {key} {delivery.part}")  # fmt: skip

    async def deliver(self, delivery: RepairDelivery, caller: str) -> None:
        """A peer's sealed pieces or sums (`caller`: the peer's certificate name)."""
        if caller != f"node-{delivery.sender}" or delivery.recipient != self.rt.index:
            raise RepairRefused("sender or recipient does not match the connection")
        repair = self.rt.machine.state.repairs.get(delivery.member)
        run = self.runs.get((delivery.member, delivery.run))
        if repair is None or run is None or repair.run != delivery.run:
            raise LookupError("no repair run under way here for that yet")  # sender retries
        want = "delta" if run.role == "helper" else "sigma"
        if delivery.part != want or f"node-{delivery.sender}" not in repair.helpers:
            raise RepairRefused(f"this member takes {want} messages from this run's helpers")
        if run.phase == "posted":
            run.buffered.setdefault(delivery.sender, delivery.message)  # one per helper
            return
        if run.phase == "exchange":
            await self._take(repair, run, delivery.sender, delivery.message)
            await self._maybe_finish(repair, run)

    async def _take(self, repair: Repair, run: Run, sender: int, message: bytes) -> None:
        if not first_time(run.received, sender, message):
            return
        try:
            if run.role == "helper":
                run.session.on_deltas(sender, message)
            else:
                run.session.on_sigma(sender, message)
        except RepairCulprits as exc:
            await self._blame(repair, exc)
        except RepairError as exc:
            log.warning("repair %s run %d: message from node-%d refused: %s",
                        repair.member, repair.run, sender, exc)  # fmt: skip

    async def _maybe_finish(self, repair: Repair, run: Run) -> None:
        if run.phase != "exchange" or not run.session.complete:
            return
        key = (repair.member, repair.run)
        if run.role == "helper":
            try:
                sums = run.session.sigma_message()
            except RepairCulprits as exc:
                await self._blame(repair, exc)
                return
            run.phase = "done"
            d = RepairDelivery(repair.member, repair.run, "sigma", self.rt.index,
                               member_index(repair.member), sums)  # fmt: skip
            run.tasks.append(asyncio.create_task(self._deliver(key, repair.member, d)))
            log.info("repair %s run %d: sums sent to the target", repair.member, repair.run)
            return
        run.phase = "storing"
        run.tasks.append(asyncio.create_task(self._store(repair, run)))

    async def _store(self, repair: Repair, run: Run) -> None:
        rt = self.rt
        number = repair.run  # `repair` is the live state: the run may move on meanwhile
        try:
            result = run.session.finish()
        except RepairCulprits as exc:
            await self._blame(repair, exc)
            return

        ids = [rt.share_id(it.key_id, it.version) for it in result.items]

        def store() -> None:
            for sid, share in zip(ids, result.shares, strict=True):
                rt.slot.store_share(sid, share, replace=True)

        try:
            await asyncio.to_thread(store)
            missing = await not_persisted(rt, ids)
            if missing:
                raise OSError(f"{len(missing)} share object(s) not in the token for a fresh "
                              "process")  # fmt: skip
        except Exception as exc:  # not stored: this run cannot be confirmed
            what = exc.__class__.__name__
            log.error("repair %s run %d: storing failed: %s", repair.member, number, what)
            await self._report(repair, [], f"{rt.name} could not store its shares ({what})",
                               run=number)  # fmt: skip
            return
        finally:
            result.zeroize()
        run.phase = "done"
        log.info("repair %s run %d: %d shares rebuilt, checked and stored", repair.member,
                 repair.run, len(result.items))  # fmt: skip
        crash_point("repair.target.stored")  # stored, not confirmed yet
        if repair.run != number or repair.state is not RepairState.RUNNING:
            log.info("repair %s run %d: over before it was confirmed", repair.member, number)
            return
        await self._confirm(repair)

    async def _already_stored(self, repair: Repair) -> bool:
        """After a restart: does the slot already hold every share of this run's batch,
        each matching its verification share (stored, then crashed before confirming)?"""
        items = self._items(repair)
        me = self.rt.index

        def check() -> bool:
            for it in items:
                try:
                    share = self.rt.slot.load_share(self.rt.share_id(it.key_id, it.version))
                except Exception:
                    return False
                try:
                    if not matches(share, it.verification_shares[me]):
                        return False
                finally:
                    zero(share)
            return True

        return await asyncio.to_thread(check)

    async def _confirm(self, repair: Repair) -> None:
        rt = self.rt
        member, number = repair.member, repair.run
        cmd = RecordRepair(
            request_id=repair_request_id("repair-done", member, number),
            author=rt.name, member=member, run=number,
        )  # fmt: skip
        signed = await rt.sign_command(cmd)
        for _ in range(20):
            out = await rt.propose_quietly(signed, f"repair confirmation {number}")
            if out is not None:
                log.info("repair %s run %d: confirmed (%s) %s", member, number, out.code,
                         out.detail)  # fmt: skip
                return
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------ failures

    async def _blame(self, repair: Repair, exc: RepairCulprits) -> None:
        names = [f"node-{i}" for i in exc.culprits]
        log.warning("repair %s run %d: culprits %s: %s", repair.member, repair.run,
                    ", ".join(names), exc.reason)  # fmt: skip
        await self._report(repair, names, exc.reason[:200])
        self._drop((repair.member, repair.run))

    async def _time_out(self, repair: Repair) -> None:
        silent = [h for h in repair.helpers if h not in repair.posts]
        if repair.member not in repair.posts:
            return  # the target is not there: a new run would not help; wait for it
        timeout = run_timeout(self.rt.cfg.dkg_timeout_s, len(repair.batch_items()))
        why = (f"no post within {timeout:g}s from {', '.join(silent)}" if silent
               else f"run made no progress within {timeout:g}s")  # fmt: skip
        await self._report(repair, silent, why)

    async def _report(
        self, repair: Repair, culprits: list[str], reason: str, run: int | None = None
    ) -> None:
        key = (repair.member, repair.run if run is None else run)
        if key in self.reported:
            return
        rt = self.rt
        text = printable(reason)
        cmd = ReportRepair(
            request_id=repair_request_id("repair-fail", repair.member, key[1]),
            author=rt.name, member=repair.member, run=key[1],
            culprits=tuple(sorted(set(culprits))), reason=text,
        )  # fmt: skip
        out = await rt.propose_quietly(await rt.sign_command(cmd), f"repair failure {key}")
        if out is not None:
            self.reported.add(key)
            log.warning("repair %s run %d: reported: %s (%s)", key[0], key[1], text, out.code)

    def _drop(self, key: tuple[str, int]) -> None:
        self.runs.drop(key)

    def abort_all(self) -> None:
        self.runs.drop_all()
