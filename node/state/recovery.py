"""Recovery officers, escrow and the recovery of a lost cluster, in the replicated state
(docs/recovery.md): the rules, not the crypto (`node.protocols.escrow`).

- `set_officers` (governance, always time-locked: k officers can rebuild escrowed
  shares) registers the officers, each with an X25519 key (escrow) and an Ed25519 key
  (approvals, releases), and their quorum k. Escrow made for another set is dropped.
- `escrow_post`: a member escrows its share of each usable version whose key's policy
  says `escrow: true`, one package per version, for the current officer set and share
  generation (a refresh makes a package stale; the member escrows again). The newest
  package per (member, version) is kept; a destroyed version's packages are dropped.
- `recover_members` (governance quorum AND k officers' `officer_approve`, no time lock:
  in a lost cluster no member is left to vote epochs) registers fresh nodes' identity
  keys in the lost members' places, with each one's X25519 recovery key, and starts a
  `Recovery`. Officers' `officer_release` posts carry their pieces of a member's escrow
  re-sealed to that member's fresh node; the node combines k of them in its own process,
  checks each share against the verification share, stores it and confirms with
  `record_recovery`. Members without escrow (or whose escrow was garbage) are then
  repaired from t recovered members (`repair_member`, which needs no new key now).

An officer's approval and release are signed by the officer (Ed25519, domain-separated
below) and submitted by an operator: officers need no API identity, and a release is
useless to anyone but the fresh node it is sealed to.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .approvals import valid_public_key, verify_approval
from .commands import (
    ExportKey,
    OfficerApprove,
    PostEscrow,
    PostExportPiece,
    PostRelease,
    RecordRecovery,
    RecoverMembers,
    SetOfficers,
)
from .digest import lp, u64
from .errors import Reason, Rejected
from .model import (
    Escrow,
    Export,
    Officer,
    Officers,
    Purpose,
    Recovery,
    VersionRef,
    VersionState,
)
from .names import ref

if TYPE_CHECKING:
    from .model import State

OFFICERS_CONTEXT = b"custody-cluster/v1/officers"
OFFICER_APPROVAL_CONTEXT = b"custody-cluster/v1/officer-approval"
RELEASE_CONTEXT = b"custody-cluster/v1/officer-release"
MAX_ESCROWS = 200_000  # packages kept in the state (members x escrowed versions)

_SKIPPED = (VersionState.REVOKED, VersionState.DESTROYED)


def officers_digest(cluster_id: str, officers: tuple[Officer, ...], k: int) -> bytes:
    """Names an officer set and quorum: escrow packages say which set they were made for."""
    body = lp(OFFICERS_CONTEXT) + lp(cluster_id) + u64(k)
    body += b"".join(lp(o.name) + o.x25519 + o.ed25519 for o in officers)
    return hashlib.sha512(body).digest()


def officer_approval(cluster_id: str, request: str, request_digest: bytes) -> bytes:
    """What an officer signs to approve request `request` (`<author>:<id>`)."""
    return hashlib.sha512(
        lp(OFFICER_APPROVAL_CONTEXT) + lp(cluster_id) + lp(request) + lp(request_digest)
    ).digest()


def release_message(cluster_id: str, recovery: str, member: str, officer: str,
                    items: tuple[tuple[str, int, bytes], ...]) -> bytes:  # fmt: skip
    """What an officer signs over its release of `member`'s pieces in recovery `recovery`."""
    body = lp(RELEASE_CONTEXT) + lp(cluster_id) + lp(recovery) + lp(member) + lp(officer)
    body += b"".join(lp(key_id) + u64(version) + lp(blob) for key_id, version, blob in items)
    return hashlib.sha512(body).digest()


def escrow_key(member: str, key_id: str, version: int) -> str:
    return f"{member}/{key_id}/{version}"


def release_key(member: str, officer: str, key_id: str, version: int) -> str:
    return f"{member}/{officer}/{key_id}/{version}"


class RecoveryRules:
    """Mixed into `Machine`: officer, escrow and recovery handlers and queries."""

    state: State

    # ------------------------------------------------------------ officers

    def _check_set_officers(self, cmd: SetOfficers) -> None:
        names = [o.name for o in cmd.officers]
        if not cmd.officers and cmd.k == 0:
            if self.running_recovery() is not None:
                raise Rejected(Reason.LIMIT_REACHED, "a recovery is under way")
            return
        if names != sorted(set(names)):
            raise Rejected(Reason.INVALID_ARGUMENT, "officers are sorted by name, each once")
        if not 2 <= cmd.k <= len(cmd.officers):
            raise Rejected(Reason.INVALID_ARGUMENT, "k must be in 2..m (m officers, m >= 2)")
        keys = [o.x25519 for o in cmd.officers] + [o.ed25519 for o in cmd.officers]
        if len(set(keys)) != len(keys):
            raise Rejected(Reason.INVALID_ARGUMENT, "every officer key must be distinct")
        if not all(valid_public_key(o.ed25519) for o in cmd.officers):
            raise Rejected(Reason.INVALID_ARGUMENT, "an officer's Ed25519 key is not valid")
        if any(self._key_in_use(o.ed25519) for o in cmd.officers):  # type: ignore[attr-defined]
            raise Rejected(Reason.INVALID_ARGUMENT, "an officer's key belongs to an identity")
        if self.running_recovery() is not None:
            raise Rejected(Reason.LIMIT_REACHED, "a recovery is under way")

    def _set_officers(self, cmd: SetOfficers) -> None:
        st = self.state
        officers = tuple(Officer(o.name, o.x25519, o.ed25519) for o in cmd.officers)
        digest = officers_digest(st.cluster_id, officers, cmd.k) if officers else b""
        st.officers = Officers(officers, cmd.k, digest)
        st.escrows.clear()  # made for the old set: useless to the new officers

    # ------------------------------------------------------------ escrow

    def escrowable(self, key_id: str, version: int) -> bool:
        """Is this version one whose shares members escrow (its policy says so, or it is the
        cluster's audit key; it has a group key, it is not revoked or destroyed), with
        officers registered?"""
        st = self.state
        key = st.keys.get(key_id)
        v = key.versions.get(version) if key is not None else None
        policy = st.policies.get(key.policy_id) if key is not None else None
        # The cluster's own audit key always: a recovered cluster must sign checkpoints.
        wanted = key is not None and (key.purpose is Purpose.AUDIT
                                      or (policy is not None and policy.escrow))  # fmt: skip
        return (st.officers.k > 0 and v is not None and wanted
                and bool(v.group_public_key) and v.state not in _SKIPPED)  # fmt: skip

    def escrow_due(self, member: str) -> list[VersionRef]:
        """The versions `member` should escrow now: escrowable, held by it, and without a
        package for the current officer set and share generation."""
        st = self.state
        out: list[VersionRef] = []
        if st.officers.k == 0:
            return out
        for key_id in sorted(st.keys):
            for number, v in sorted(st.keys[key_id].versions.items()):
                if not self.escrowable(key_id, number) or not self.holds(member, key_id, number):  # type: ignore[attr-defined]
                    continue
                e = st.escrows.get(escrow_key(member, key_id, number))
                if e is None or e.generation != v.generation or e.officers != st.officers.digest:
                    out.append(VersionRef(key_id, number))
        return out

    def _post_escrow(self, cmd: PostEscrow) -> tuple[str, str]:
        st = self.state
        if cmd.author not in st.members:
            raise Rejected(Reason.UNAUTHORIZED, "only a member escrows its shares")
        if st.officers.k == 0 or cmd.officers != st.officers.digest:
            raise Rejected(Reason.REQUEST_DECIDED, "made for another officer set")
        if not cmd.items:
            raise Rejected(Reason.INVALID_ARGUMENT, "no items")
        seen = set()
        for it in cmd.items:
            if (it.key_id, it.version) in seen:
                raise Rejected(Reason.INVALID_ARGUMENT, f"{it.key_id} v{it.version} twice")
            seen.add((it.key_id, it.version))
            if not self.escrowable(it.key_id, it.version):
                raise Rejected(Reason.VERSION_NOT_USABLE,
                               f"{it.key_id} v{it.version} is not escrowed")  # fmt: skip
            if not self.holds(cmd.author, it.key_id, it.version):  # type: ignore[attr-defined]
                why = f"{cmd.author} holds no share of {it.key_id} v{it.version}"
                raise Rejected(Reason.UNAUTHORIZED, why)
            if it.generation != st.keys[it.key_id].versions[it.version].generation:
                raise Rejected(Reason.REQUEST_DECIDED,
                               f"{it.key_id} v{it.version}: another share generation")  # fmt: skip
        fresh = sum(escrow_key(cmd.author, i.key_id, i.version) not in st.escrows
                    for i in cmd.items)  # fmt: skip
        if len(st.escrows) + fresh > MAX_ESCROWS:
            raise Rejected(Reason.LIMIT_REACHED, "too many escrow packages")
        for it in cmd.items:
            st.escrows[escrow_key(cmd.author, it.key_id, it.version)] = Escrow(
                cmd.author, it.key_id, it.version, it.generation, cmd.officers, it.package,
                st.epoch,
            )  # fmt: skip
        return "ok", f"{cmd.author} escrowed {len(cmd.items)} version(s)"

    def _drop_escrows(self, key_id: str, version: int) -> None:
        """A destroyed version's escrow goes with it (the officers could rebuild it)."""
        st = self.state
        for name in list(st.members) + list(st.removed_members):
            st.escrows.pop(escrow_key(name, key_id, version), None)
        self._drop_exports(key_id, version)

    # ------------------------------------------------------------ recover_members

    def _check_recover_members(self, cmd: RecoverMembers) -> None:
        st = self.state
        if st.officers.k == 0:
            raise Rejected(Reason.INVALID_CLUSTER, "no recovery officers are registered")
        if self.running_recovery() is not None:
            raise Rejected(Reason.LIMIT_REACHED, "a recovery is under way")
        if self.repairing_any() is not None or self.running_refresh() is not None:  # type: ignore[attr-defined]
            raise Rejected(Reason.LIMIT_REACHED, "a repair or refresh is under way")
        names = [m.name for m in cmd.members]
        if not names or len(set(names)) != len(names):
            raise Rejected(Reason.INVALID_ARGUMENT, "name each member once")
        unknown = [n for n in names if n not in st.members]
        if unknown:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no member {unknown[0]!r}")
        keys = [m.public_key for m in cmd.members]
        if len(set(keys)) != len(keys) or len({m.recovery_key for m in cmd.members}) != len(keys):
            raise Rejected(Reason.INVALID_CLUSTER, "every fresh node has its own keys")
        if not all(valid_public_key(k) for k in keys) or any(
            self._key_in_use(k) for k in keys  # type: ignore[attr-defined]
        ):
            raise Rejected(Reason.INVALID_CLUSTER, "member keys must be new, valid Ed25519 keys")

    def _recover_members(self, cmd: RecoverMembers) -> None:
        st = self.state
        rec = Recovery(request=ref(cmd.author, cmd.request_id), started_epoch=st.epoch,
                       officers=st.officers)  # fmt: skip
        for spec in cmd.members:
            member = st.members[spec.name]
            member.public_key = spec.public_key
            st.epoch_votes.pop(spec.name, None)  # made with the lost key
            st.checkpoints.pop(spec.name, None)
            st.repairs.pop(spec.name, None)  # its shares are gone, whatever was repaired
            rec.keys[spec.name] = spec.recovery_key
            rec.items[spec.name] = tuple(
                VersionRef(e.key_id, e.version)
                for _, e in sorted(st.escrows.items())
                if e.member == spec.name and e.officers == st.officers.digest
                and self.escrowable(e.key_id, e.version)
                and e.generation == st.keys[e.key_id].versions[e.version].generation
            )  # fmt: skip
        # Every version usable now: a named member holds of these only what it recovers or
        # is repaired (`recovery_holds`); later versions it takes part in as usual.
        rec.usable = tuple(
            VersionRef(k, n) for k in sorted(st.keys)
            for n, v in sorted(st.keys[k].versions.items())
            if v.group_public_key and v.state not in _SKIPPED
        )  # fmt: skip
        st.recoveries.clear()
        st.recoveries[rec.request] = rec
        self._maybe_end_recovery(rec)

    # ------------------------------------------------------------ officer posts

    def _officer(self, name: str, officers: Officers) -> Officer:
        found = next((o for o in officers.officers if o.name == name), None)
        if found is None:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"{name!r} is not a recovery officer")
        return found

    def _officer_approve(self, cmd: OfficerApprove, digest: bytes) -> int:
        """Record the officer's approval of request `cmd.request` (whose digest is
        `digest`); returns how many officers approved it. A rejection changes nothing."""
        st = self.state
        officer = self._officer(cmd.officer, st.officers)
        if cmd.officer in st.officer_approvals.get(cmd.request, {}):
            raise Rejected(Reason.DUPLICATE_APPROVAL, f"{cmd.officer!r} already approved")
        verify_approval(officer.ed25519, officer_approval(st.cluster_id, cmd.request, digest),
                        cmd.officer_signature)  # fmt: skip
        given = st.officer_approvals.setdefault(cmd.request, {})
        given[cmd.officer] = cmd.officer_signature
        return len(given)

    def officers_approved(self, request: str) -> int:
        st = self.state
        names = {o.name for o in st.officers.officers}
        return sum(n in names for n in st.officer_approvals.get(request, {}))

    def _post_release(self, cmd: PostRelease) -> tuple[str, str]:
        st = self.state
        rec = self.running_recovery()
        if rec is None:
            raise Rejected(Reason.REQUEST_DECIDED, "no recovery is under way")
        if cmd.member not in rec.keys:
            raise Rejected(Reason.INVALID_ARGUMENT, f"{cmd.member} is not being recovered")
        if cmd.member in rec.recovered or cmd.member in rec.repaired:
            raise Rejected(Reason.REQUEST_DECIDED, f"{cmd.member} holds its shares already")
        officer = self._officer(cmd.officer, rec.officers)
        wanted = set(rec.items.get(cmd.member, ()))
        refs = [VersionRef(i.key_id, i.version) for i in cmd.items]
        if not refs or len(set(refs)) != len(refs) or not set(refs) <= wanted:
            raise Rejected(Reason.INVALID_ARGUMENT,
                           f"items must be distinct versions escrowed by {cmd.member}")  # fmt: skip
        msg = release_message(st.cluster_id, rec.request, cmd.member, cmd.officer,
                              tuple((i.key_id, i.version, i.blob) for i in cmd.items))  # fmt: skip
        verify_approval(officer.ed25519, msg, cmd.officer_signature)
        for i in cmd.items:
            key = release_key(cmd.member, cmd.officer, i.key_id, i.version)
            if key in rec.releases:
                why = f"{cmd.officer} released {i.key_id} v{i.version} already"
                raise Rejected(Reason.DUPLICATE_POST, why)
        for i in cmd.items:
            rec.releases[release_key(cmd.member, cmd.officer, i.key_id, i.version)] = i.blob
        return "ok", f"{cmd.officer} released {len(cmd.items)} piece(s) for {cmd.member}"

    def _record_recovery(self, cmd: RecordRecovery) -> tuple[str, str]:
        rec = self.running_recovery()
        if rec is None or cmd.member not in rec.keys:
            raise Rejected(Reason.REQUEST_DECIDED, f"no recovery of {cmd.member} is under way")
        if cmd.author != cmd.member:
            raise Rejected(Reason.UNAUTHORIZED, "only the recovered member confirms its shares")
        if cmd.member in rec.recovered or cmd.member in rec.repaired:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.member} holds its shares already")
        short = [r for r in rec.items.get(cmd.member, ()) if len(self.releases_for(
            rec, cmd.member, r.key_id, r.version)) < rec.officers.k]  # fmt: skip
        if short:
            raise Rejected(Reason.NOT_APPROVED, f"{len(short)} version(s) lack k releases")
        rec.recovered = tuple(sorted({*rec.recovered, cmd.member}))
        self._maybe_end_recovery(rec)
        return ("executed" if rec.finished_epoch else "ok"), self.recovery_detail(rec)

    def _maybe_end_recovery(self, rec: Recovery) -> None:
        """Done once every named member with escrow confirmed or was repaired instead
        (members without escrow are repaired afterwards, outside the recovery)."""
        waiting = [m for m in rec.keys if m not in rec.recovered and m not in rec.repaired
                   and rec.items.get(m)]  # fmt: skip
        if not waiting:
            rec.finished_epoch = self.state.epoch or 1

    def _recovery_repair_done(self, member: str) -> None:
        """A repair of a member the recovery names finished: it holds its shares again."""
        rec = self.running_recovery()
        if rec is None or member not in rec.keys or member in rec.recovered:
            return
        rec.repaired = tuple(sorted({*rec.repaired, member}))
        self._maybe_end_recovery(rec)

    # ------------------------------------------------------------ break-glass export

    def _check_export_key(self, cmd: ExportKey) -> None:
        st = self.state
        key = st.keys.get(cmd.key_id)
        if key is None:
            raise Rejected(Reason.UNKNOWN_KEY, f"no key {cmd.key_id!r}")
        if key.purpose is Purpose.AUDIT:
            raise Rejected(Reason.OPERATION_NOT_ALLOWED, "the cluster-audit key is never exported")
        policy = st.policies.get(key.policy_id)
        if policy is None or not policy.escrow:
            why = f"policy {key.policy_id!r} does not allow export (escrow: false)"
            raise Rejected(Reason.OPERATION_NOT_ALLOWED, why)
        v = key.versions.get(cmd.version)
        if v is None or not v.group_public_key or v.state is VersionState.DESTROYED:
            raise Rejected(Reason.VERSION_NOT_USABLE,
                           f"{cmd.key_id} v{cmd.version} has no key to export")  # fmt: skip
        if st.officers.k == 0:
            raise Rejected(Reason.INVALID_CLUSTER, "no recovery officers are registered")
        if len(cmd.recipient) != 32 or cmd.recipient == bytes(32):
            raise Rejected(Reason.INVALID_ARGUMENT, "the recipient must be an X25519 key")

    def _export_key(self, cmd: ExportKey) -> None:
        st = self.state
        req = ref(cmd.author, cmd.request_id)
        st.exports[req] = Export(req, cmd.key_id, cmd.version, cmd.recipient, st.epoch)

    def _post_export_piece(self, cmd: PostExportPiece) -> tuple[str, str]:
        st = self.state
        export = st.exports.get(cmd.request)
        if export is None:
            raise Rejected(Reason.UNKNOWN_REQUEST, "no such export")
        key = st.keys.get(export.key_id)
        v = key.versions.get(export.version) if key is not None else None
        if v is None or v.state is VersionState.DESTROYED:
            raise Rejected(Reason.VERSION_NOT_USABLE, "the version was destroyed")
        if not self.holds(cmd.author, export.key_id, export.version):  # type: ignore[attr-defined]
            raise Rejected(Reason.UNAUTHORIZED, f"{cmd.author} holds no share of it")
        if cmd.author in export.pieces:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author} posted its piece already")
        export.pieces[cmd.author] = cmd.piece
        return "ok", (f"BREAK-GLASS export {export.request}: {len(export.pieces)} piece(s) of "
                      f"{export.key_id} v{export.version} (t = {st.threshold})")  # fmt: skip

    def _drop_exports(self, key_id: str, version: int) -> None:
        """A destroyed version's export pieces go with it."""
        for e in self.state.exports.values():
            if (e.key_id, e.version) == (key_id, version):
                e.pieces.clear()

    # ------------------------------------------------------------ queries

    def running_recovery(self) -> Recovery | None:
        for rec in self.state.recoveries.values():
            if not rec.finished_epoch:
                return rec
        return None

    def releases_for(self, rec: Recovery, member: str, key_id: str, version: int
                     ) -> dict[str, bytes]:  # fmt: skip
        """Officer name -> its release of `member`'s piece of this version."""
        out = {}
        for o in rec.officers.officers:
            blob = rec.releases.get(release_key(member, o.name, key_id, version))
            if blob is not None:
                out[o.name] = blob
        return out

    def recovery_holds(self, member: str, vref: VersionRef) -> bool | None:
        """For a member taken over by a fresh node in the latest recovery and a version
        usable then: does it hold that share (recovered, or repaired since)? None when the
        recovery says nothing about it (another member, or a later version)."""
        for rec in self.state.recoveries.values():
            if member not in rec.keys or vref not in rec.usable:
                return None
            if member in rec.recovered and vref in rec.items.get(member, ()):
                return True
            repair = self.state.repairs.get(member)  # emptied when the recovery started
            return repair is not None and vref in repair.items[: repair.done]
        return None

    def recovery_detail(self, rec: Recovery) -> str:
        named = sorted(rec.keys)
        return (f"recovery {rec.request}: {len(rec.recovered)}/{len(named)} member(s) "
                f"recovered ({', '.join(rec.recovered) or 'none'}), repaired "
                f"{', '.join(rec.repaired) or 'none'}"
                f"{', finished' if rec.finished_epoch else ''}")  # fmt: skip
