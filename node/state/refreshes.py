"""Proactive refresh in the replicated state (docs/recovery.md): the rules, not the crypto.

`start_refresh` (an operator, or the scheduler: a member) refreshes the shares of every
usable key version among all members (`shares.refresh`; the node drives it,
`node/server/refresh.py`). Group public keys never change; the share generation does.

Per run (a batch of versions), every participant posts its commitments through the
log, exchanges sealed sub-shares point to point, stores its next generation BESIDE
the current one and records the new verification shares it derived. The batch
commits only when every participant recorded the same values: then, in one log
entry, each version's verification shares and generation move forward. Before that
entry every replica names the old generation, after it the new one, so a signer set
always uses one generation (the coordinator names it), never a mix; a run that fails
at any step (a crash, a culprit, different values) leaves the old generation in use
and a new run starts. Members erase the old generation once the commit is applied.

Every member takes part (a member left out would keep a share that no longer
combines): a member that is down stalls the refresh until it is back or the refresh
fails after `MAX_FAILED_RUNS` runs; repair it first. One refresh or repair at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .commands import PostRefresh, RecordRefresh, ReportRefresh, StartRefresh
from .errors import Reason, Rejected
from .model import Refresh, RepairState, VersionRef, VersionState
from .repairs import MAX_FAILED_RUNS, POST_BUDGET

if TYPE_CHECKING:
    from .model import State

RECORD_BUDGET = 56 * 1024
_SKIPPED = (VersionState.REVOKED, VersionState.DESTROYED)


def refresh_batch(threshold: int, members: int) -> int:
    """Versions per run: a post (t commitments per version) and a record (n new
    verification shares per version) must each fit in one command."""
    by_post = POST_BUDGET // (threshold * 34 + 2)
    by_record = RECORD_BUDGET // (members * 34 + 4)
    return max(1, min(256, by_post, by_record))


def refreshable_versions(state: State) -> tuple[VersionRef, ...]:
    return tuple(
        VersionRef(key_id, number)
        for key_id in sorted(state.keys)
        for number, v in sorted(state.keys[key_id].versions.items())
        if v.group_public_key and v.state not in _SKIPPED
    )  # fmt: skip


class RefreshRules:
    """Mixed into `Machine`: the refresh handlers and queries. Uses `self.state`."""

    state: State

    def running_refresh(self) -> Refresh | None:
        for ref in sorted(self.state.refreshes):
            r = self.state.refreshes[ref]
            if r.state is RepairState.RUNNING:
                return r
        return None

    def _start_refresh(self, cmd: StartRefresh) -> tuple[str, str]:
        st = self.state
        if self.running_refresh() is not None:
            raise Rejected(Reason.LIMIT_REACHED, "a refresh is under way")
        if self.repairing_any() is not None:  # type: ignore[attr-defined]
            raise Rejected(Reason.LIMIT_REACHED, "a repair is under way: refresh after it")
        if len(st.members) < 2 or st.threshold < 2:
            raise Rejected(Reason.INVALID_CLUSTER, "a refresh needs at least 2 members, t >= 2")
        members = sorted(st.members.values(), key=lambda m: m.index)
        refresh = Refresh(
            request=f"{cmd.author}:{cmd.request_id}",
            started_epoch=st.epoch,
            participants=tuple(m.name for m in members),
            items=refreshable_versions(st),
            batch=refresh_batch(st.threshold, len(members)),
            run=1 + max((r.run for r in st.refreshes.values()), default=0),
        )
        st.refreshes = {refresh.request: refresh}  # the latest one only
        if not refresh.items:
            self._end_refresh(refresh, RepairState.DONE)
        return refresh.state.value if refresh.state is not RepairState.RUNNING else "ok", \
            self._refresh_detail(refresh)

    def _refresh_detail(self, r: Refresh) -> str:
        return (f"refresh: run {r.run}, {r.done}/{len(r.items)} versions, "
                f"{r.state.value}")  # fmt: skip

    def _end_refresh(self, r: Refresh, state: RepairState, failure: str = "") -> None:
        r.state, r.failure = state, failure
        r.posts, r.proposed, r.recorded = {}, (), ()
        r.finished_epoch = self.state.epoch

    def _next_refresh_run(self, r: Refresh) -> None:
        r.run += 1
        r.posts, r.proposed, r.recorded = {}, (), ()
        keys = self.state.keys
        still = tuple(
            i for i in r.items[r.done :]
            if i.key_id in keys and i.version in keys[i.key_id].versions
            and keys[i.key_id].versions[i.version].state not in _SKIPPED
        )  # fmt: skip
        r.items = r.items[: r.done] + still
        if not still:
            self._end_refresh(r, RepairState.DONE)

    def _refresh_run(self, author: str, run: int) -> Refresh:
        r = self.running_refresh()
        if r is None:
            raise Rejected(Reason.REQUEST_DECIDED, "no refresh is under way")
        if run != r.run:
            raise Rejected(Reason.REQUEST_DECIDED, f"run {run} is over (current run {r.run})")
        if author not in r.participants:
            raise Rejected(Reason.UNAUTHORIZED, f"{author} is not a participant")
        return r

    def _post_refresh(self, cmd: PostRefresh) -> tuple[str, str]:
        r = self._refresh_run(cmd.author, cmd.run)
        if cmd.author in r.posts:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already posted for this run")
        r.posts[cmd.author] = cmd.package
        return "ok", f"{self._refresh_detail(r)}; posts {len(r.posts)}/{len(r.participants)}"

    def _record_refresh(self, cmd: RecordRefresh) -> tuple[str, str]:
        r = self._refresh_run(cmd.author, cmd.run)
        missing = [p for p in r.participants if p not in r.posts]
        if missing:
            raise Rejected(Reason.NOT_APPROVED, f"run {cmd.run} lacks posts of {missing}")
        if cmd.author in r.recorded:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already recorded this run")
        batch = r.batch_items()
        if len(cmd.verification_shares) != len(batch) or any(
            len(row) != len(r.participants) for row in cmd.verification_shares
        ):
            raise Rejected(Reason.INVALID_ARGUMENT,
                           "one new verification share per participant per version")  # fmt: skip
        if not r.recorded:
            r.proposed = cmd.verification_shares
        elif cmd.verification_shares != r.proposed:
            r.failed_runs += 1
            why = f"{cmd.author} derived other verification shares than {r.recorded[0]}"
            if r.failed_runs >= MAX_FAILED_RUNS:
                self._end_refresh(r, RepairState.FAILED, why)
                return "failed", self._refresh_detail(r)
            self._next_refresh_run(r)
            return "ok", f"{why}: new run; {self._refresh_detail(r)}"
        r.recorded = (*r.recorded, cmd.author)
        if set(r.recorded) != set(r.participants):
            return "ok", f"{self._refresh_detail(r)}; recorded {len(r.recorded)}/" \
                f"{len(r.participants)}"
        self._commit_refresh(r, batch)
        code = "executed" if r.state is RepairState.DONE else "ok"
        return code, self._refresh_detail(r)

    def _commit_refresh(self, r: Refresh, batch: tuple[VersionRef, ...]) -> None:
        """The batch's new generation takes effect in this one entry."""
        index_of = {name: self.state.members[name].index for name in r.participants
                    if name in self.state.members}  # fmt: skip
        for ref, row in zip(batch, r.proposed, strict=True):
            key = self.state.keys.get(ref.key_id)
            v = key.versions.get(ref.version) if key is not None else None
            if v is None or v.state in _SKIPPED:
                continue
            shares = list(v.verification_shares)
            for name, y in zip(r.participants, row, strict=True):
                i = index_of.get(name, 0)
                if 1 <= i <= len(shares):
                    shares[i - 1] = y
            v.verification_shares = tuple(shares)
            v.generation += 1
        r.done += len(batch)
        if r.done >= len(r.items):
            self._end_refresh(r, RepairState.DONE)
        else:
            self._next_refresh_run(r)

    def _report_refresh(self, cmd: ReportRefresh) -> tuple[str, str]:
        r = self.running_refresh()
        if r is None or cmd.run != r.run:
            raise Rejected(Reason.REQUEST_DECIDED, "that refresh run is over")
        if cmd.author not in self.state.members:
            raise Rejected(Reason.UNAUTHORIZED, f"{cmd.author} is not a member")
        r.failed_runs += 1
        if r.failed_runs >= MAX_FAILED_RUNS:
            self._end_refresh(r, RepairState.FAILED, f"{r.failed_runs} runs failed: {cmd.reason}")
            return "failed", self._refresh_detail(r)
        self._next_refresh_run(r)
        return "ok", f"run {cmd.run} failed ({', '.join(cmd.culprits) or 'no culprit'}); " \
            f"{self._refresh_detail(r)}"

    def _refresh_membership_changed(self) -> None:
        r = self.running_refresh()
        if r is not None:
            self._end_refresh(r, RepairState.FAILED, "membership changed")
