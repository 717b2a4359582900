"""Share repair in the replicated state (docs/recovery.md): the rules, not the crypto.

A governance `repair_member` request, once approved (and, when it gives the member a
new identity key, once its time lock is over), starts a `Repair`: the member's share
of every usable key version is rebuilt by t helpers with `shares.repair`
(`node.protocols.repair_session`; the node drives it, `node/server/repair.py`). The
state decides everything every replica must agree on without a message:

- which versions (every version with a group key that is neither revoked nor
  destroyed, in key-id/version order), in batches that keep a helper's post within
  one command;
- which helpers: the first t members by index that are not the target and not named
  as culprits in this repair;
- which run is current: posts, the target's confirmation and failure reports name
  their run, and anything about another run is refused (stale).

A run completes when the target confirms it (`record_repair`): only the target can
say that its slot holds shares that match the published verification shares, and
it gains nothing by lying (it would only lose its own shares). A failure report
names culprits, who help no more; a report naming none (a party lost its session)
starts a new run with the same helpers. Any member may report, so a malicious member
can stall a repair (after `MAX_FAILED_RUNS` it fails and an operator may ask again)
but never learn a share: helpers exchange only masked pieces.

While a repair runs, the member is not asked for signature or decryption shares of
the versions it does not hold yet (`holds`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .approvals import valid_public_key
from .commands import PostRepair, RecordRepair, RepairMember, ReportRepair
from .errors import Reason, Rejected
from .model import Address, Repair, RepairState, VersionRef, VersionState

if TYPE_CHECKING:
    from .model import State

#: Runs that may fail before the repair itself fails (an operator may then ask again).
MAX_FAILED_RUNS = 16
#: Versions per run: at most the engine's MAX_ITEMS, and a helper's post (t commitments
#: of 34 encoded bytes per version, plus framing) must fit in one command.
MAX_BATCH = 256
POST_BUDGET = 56 * 1024

_SKIPPED = (VersionState.REVOKED, VersionState.DESTROYED)


def batch_size(threshold: int) -> int:
    return max(1, min(MAX_BATCH, POST_BUDGET // (threshold * 34 + 2)))


def repairable_versions(state: State, member_index: int) -> tuple[VersionRef, ...]:
    """The versions whose share member `member_index` should hold: a completed DKG (group
    key and verification shares known), not revoked or destroyed."""
    out = []
    for key_id in sorted(state.keys):
        key = state.keys[key_id]
        for number in sorted(key.versions):
            v = key.versions[number]
            usable = v.group_public_key and v.state not in _SKIPPED
            if usable and len(v.verification_shares) >= member_index:
                out.append(VersionRef(key_id, number))
    return tuple(out)


def check_address_pair(raft: str, api: str) -> None:
    if bool(raft) != bool(api):
        raise Rejected(Reason.INVALID_ARGUMENT, "give both addresses (raft and api) or neither")


class RepairRules:
    """Mixed into `Machine`: the repair handlers and queries. Uses `self.state`."""

    state: State

    # ------------------------------------------------------------ governance change

    def _check_repair_member(self, cmd: RepairMember) -> None:
        st = self.state
        member = st.members.get(cmd.name)
        if member is None:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no member {cmd.name!r}")
        running = self.repairing_any()
        if running is not None:
            raise Rejected(Reason.LIMIT_REACHED, f"a repair of {running.member} is under way")
        if self.running_refresh() is not None:  # type: ignore[attr-defined]
            raise Rejected(Reason.LIMIT_REACHED, "a refresh is under way: repair after it")
        if len(st.members) - 1 < st.threshold:
            raise Rejected(
                Reason.INVALID_CLUSTER,
                f"fewer than t={st.threshold} other members to rebuild {cmd.name}'s shares",
            )
        check_address_pair(cmd.raft_address, cmd.api_address)
        new_key = cmd.public_key and cmd.public_key != member.public_key
        if new_key and (
            not valid_public_key(cmd.public_key) or self._key_in_use(cmd.public_key)  # type: ignore[attr-defined]
        ):
            raise Rejected(Reason.INVALID_CLUSTER, "member keys must be distinct Ed25519 keys")

    def _repair_member(self, cmd: RepairMember) -> None:
        st = self.state
        member = st.members[cmd.name]
        if cmd.public_key and cmd.public_key != member.public_key:
            member.public_key = cmd.public_key
            st.epoch_votes.pop(cmd.name, None)  # made with the lost key
            st.checkpoints.pop(cmd.name, None)
        previous = st.repairs.get(cmd.name)
        if cmd.raft_address:  # a replacement machine: every member learns where it is
            st.addresses[cmd.name] = Address(cmd.raft_address, cmd.api_address)
        repair = Repair(
            member=cmd.name,
            request=f"{cmd.author}:{cmd.request_id}",
            started_epoch=st.epoch,
            items=self._rebuildable(cmd.name, repairable_versions(st, member.index)),
            batch=batch_size(st.threshold),
            # Run numbers never repeat for a member: posts' request ids name them.
            run=previous.run + 1 if previous is not None else 1,
        )
        st.repairs[cmd.name] = repair
        if not repair.items:
            self._end_repair(repair, RepairState.DONE)
            return
        self._new_run(repair, first=True)

    def _rebuildable(self, target: str, refs: tuple[VersionRef, ...]) -> tuple[VersionRef, ...]:
        """The versions at least t other members hold (after a lost cluster's recovery, a
        version nobody escrowed is held by nobody: it cannot be rebuilt, it is lost)."""
        st = self.state
        others = [m for m in st.members if m != target]
        return tuple(r for r in refs if sum(self.holds(m, r.key_id, r.version)
                                            for m in others) >= st.threshold)  # fmt: skip

    def _repair_weakening(self, cmd: RepairMember) -> list[str]:
        member = self.state.members.get(cmd.name)
        new_key = member is not None and cmd.public_key and cmd.public_key != member.public_key
        moved = bool(cmd.raft_address)
        return [f"{'identity' if new_key else 'address'} of {cmd.name}"] if new_key or moved \
            else []

    # ------------------------------------------------------------ runs

    def _helpers_for(self, repair: Repair) -> tuple[str, ...]:
        st = self.state
        ms = sorted(st.members.values(), key=lambda m: m.index)
        eligible = [m.name for m in ms if m.name != repair.member and m.name not in repair.excluded
                    and all(self.holds(m.name, r.key_id, r.version)
                            for r in repair.items[repair.done :])]  # fmt: skip
        return tuple(eligible[: st.threshold])

    def _new_run(self, repair: Repair, *, first: bool = False) -> None:
        if not first:
            repair.run += 1
        keys = self.state.keys
        still = tuple(
            r for r in repair.items[repair.done :]
            if r.key_id in keys and r.version in keys[r.key_id].versions
            and keys[r.key_id].versions[r.version].state not in _SKIPPED
        )  # fmt: skip
        repair.items = repair.items[: repair.done] + still  # revoked or destroyed meanwhile
        if not still:
            self._end_repair(repair, RepairState.DONE)
            return
        repair.posts = {}
        repair.helpers = self._helpers_for(repair)
        if len(repair.helpers) < self.state.threshold:
            self._end_repair(repair, RepairState.FAILED, "fewer than t helpers left")

    def _end_repair(self, repair: Repair, state: RepairState, failure: str = "") -> None:
        repair.state = state
        repair.failure = failure
        repair.posts = {}
        repair.helpers = ()
        repair.finished_epoch = self.state.epoch
        if state is RepairState.DONE:
            self._recovery_repair_done(repair.member)  # type: ignore[attr-defined]

    def _current_run(self, member: str, run: int) -> Repair:
        repair = self.state.repairs.get(member)
        if repair is None or repair.state is not RepairState.RUNNING:
            raise Rejected(Reason.REQUEST_DECIDED, f"no repair of {member!r} is under way")
        if run != repair.run:
            raise Rejected(Reason.REQUEST_DECIDED, f"run {run} is over (current run {repair.run})")
        return repair

    def _repair_detail(self, repair: Repair) -> str:
        return (f"repair of {repair.member}: run {repair.run}, "
                f"{repair.done}/{len(repair.items)} versions, {repair.state.value}")  # fmt: skip

    # ------------------------------------------------------------ handlers

    def _post_repair(self, cmd: PostRepair) -> tuple[str, str]:
        repair = self._current_run(cmd.member, cmd.run)
        if cmd.author != repair.member and cmd.author not in repair.helpers:
            raise Rejected(Reason.UNAUTHORIZED, f"{cmd.author} is not a party to this run")
        if cmd.author in repair.posts:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already posted for this run")
        repair.posts[cmd.author] = cmd.package
        posts = f"posts {len(repair.posts)}/{len(repair.helpers) + 1}"
        return "ok", f"{self._repair_detail(repair)}; {posts}"

    def _record_repair(self, cmd: RecordRepair) -> tuple[str, str]:
        repair = self._current_run(cmd.member, cmd.run)
        if cmd.author != repair.member:
            raise Rejected(Reason.UNAUTHORIZED, "only the repaired member confirms its shares")
        missing = [p for p in (repair.member, *repair.helpers) if p not in repair.posts]
        if missing:
            raise Rejected(Reason.NOT_APPROVED, f"run {cmd.run} lacks posts of {missing}")
        repair.done += len(repair.batch_items())
        if repair.done >= len(repair.items):
            self._end_repair(repair, RepairState.DONE)
            return "executed", self._repair_detail(repair)
        self._new_run(repair)
        code = "executed" if repair.state is RepairState.DONE else "ok"
        return code, self._repair_detail(repair)

    def _report_repair(self, cmd: ReportRepair) -> tuple[str, str]:
        repair = self._current_run(cmd.member, cmd.run)
        st = self.state
        unknown = [c for c in cmd.culprits if c not in st.members]
        if unknown:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no member {unknown[0]!r}")
        repair.failed_runs += 1
        if repair.member in cmd.culprits:
            why = f"target named by {cmd.author}: {cmd.reason}"
            self._end_repair(repair, RepairState.FAILED, why)
            return "failed", self._repair_detail(repair)
        named = [c for c in cmd.culprits if c in repair.helpers]
        repair.excluded = tuple(sorted({*repair.excluded, *named}))
        if repair.failed_runs >= MAX_FAILED_RUNS:
            self._end_repair(repair, RepairState.FAILED, f"{repair.failed_runs} runs failed")
            return "failed", self._repair_detail(repair)
        self._new_run(repair)
        return repair.state.value if repair.state is not RepairState.RUNNING else "ok", \
            self._repair_detail(repair)

    def _repair_member_removed(self, name: str) -> None:
        """A removed member can neither be repaired nor help: the repair fails, or its
        run is replaced by one without it."""
        for key in sorted(self.state.repairs):
            repair = self.state.repairs[key]
            if repair.state is not RepairState.RUNNING:
                continue
            if repair.member == name:
                self._end_repair(repair, RepairState.FAILED, "member removed")
            elif name in repair.helpers:
                self._new_run(repair)

    # ------------------------------------------------------------ queries

    def repairing_any(self) -> Repair | None:
        for name in sorted(self.state.repairs):
            if self.state.repairs[name].state is RepairState.RUNNING:
                return self.state.repairs[name]
        return None

    def repairing(self, member: str) -> Repair | None:
        repair = self.state.repairs.get(member)
        return repair if repair is not None and repair.state is RepairState.RUNNING else None

    def holds(self, member: str, key_id: str, version: int) -> bool:
        """Does `member` hold its share of this version (as far as the state knows)? Not
        a member that joined after the version's DKG, nor while a running repair has
        yet to rebuild it."""
        m = self.state.members.get(member)
        key = self.state.keys.get(key_id)
        v = key.versions.get(version) if key is not None else None
        if m is None or v is None or m.index > len(v.verification_shares):
            return False
        recovered = self.recovery_holds(member, VersionRef(key_id, version))  # type: ignore[attr-defined]
        if recovered is not None:
            return recovered
        repair = self.repairing(member)
        if repair is None:
            return True
        return VersionRef(key_id, version) not in repair.items[repair.done :]

    def versions_short_of_holders(self, without: str = "") -> list[str]:
        """Usable versions that would have fewer than t members holding a share if
        `without` left (a member under repair does not count)."""
        st = self.state
        out = []
        for key_id in sorted(st.keys):
            for number, v in sorted(st.keys[key_id].versions.items()):
                if not v.group_public_key or v.state in _SKIPPED:
                    continue
                holders = [m for m in st.members if m != without
                           and self.holds(m, key_id, number)]  # fmt: skip
                if len(holders) < st.threshold:
                    out.append(f"{key_id} v{number}")
        return out
