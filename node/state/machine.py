"""The custody state machine: `apply` one command, deterministically.

Governance (who may approve, what policies require, the threshold, membership) is
itself decided by requests: an operator submits, the governance quorum approves,
and a change that weakens protection waits a time lock counted in epochs, during
which the same quorum can cancel it (DESIGN.md §2 invariant 10).

Every handler first checks everything that can fail (raising `Rejected`) and
only then mutates, so a rejected command changes nothing but the audit chain
(the rejection is recorded) and the exactly-once table. The machine reads no
clock, no randomness and no I/O: wall-clock time only enters as values carried
in commands (`AdvanceEpoch.at`, `RequestRotate.at`).

The object also implements the runner's state-machine protocol:
`apply(bytes) -> bytes`, `snapshot() -> bytes`, `restore(bytes)`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from . import rules
from .approvals import (
    quorum_met,
    valid_public_key,
    verify_approval,
    verify_command_signature,
    verify_result,
)
from .audit import GENESIS, make_record
from .audit_checkpoint import (
    AUDIT_KEY_ID,
    MAX_AUDIT_CHECKPOINTS,
    checkpoint_message,
    signature_valid,
)
from .audit_checkpoint import (
    request_id as audit_checkpoint_request_id,
)
from .checkpoint import verify_checkpoint
from .commands import (
    MAX_CHECKPOINTS,
    MAX_GRANT_EPOCHS,
    MAX_MEMBERS,
    AddMember,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    Bootstrap,
    CancelRequest,
    Command,
    CreateAlias,
    CreateGrant,
    CreateKey,
    DeleteAlias,
    ExportKey,
    OfficerApprove,
    PostAuditCheckpoint,
    PostCheckpoint,
    PostDkgRound1,
    PostEscrow,
    PostExportPiece,
    PostRefresh,
    PostRelease,
    PostRepair,
    RecordDkgResult,
    RecordErasure,
    RecordFailure,
    RecordRecovery,
    RecordRefresh,
    RecordRepair,
    RecordResult,
    RecoverMembers,
    RekeyPrincipal,
    RemoveMember,
    RemovePrincipal,
    RepairMember,
    ReportRefresh,
    ReportRepair,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRollback,
    RequestRotate,
    RequestSign,
    RevokeGrant,
    SetGovernance,
    SetKeyMetadata,
    SetOfficers,
    SetPolicy,
    SetThreshold,
    StartRefresh,
    decode_change,
    decode_command,
    encode_command,
    erasure_request_id,
    is_signed,
    signing_bytes,
)
from .digest import (
    command_digest,
    digest_of,
    dkg_post_digest,
    genesis_digest,
    governance_hash_of,
    payload_hash,
    policy_hash_of,
)
from .errors import DecodeError, Reason, Rejected
from .grants import context_matches, grant_command, grant_payload, grantee_command, op_of
from .metadata import MAX_ALIASES, alias_hash, metadata_hash
from .model import (
    Address,
    Alias,
    AuditCheckpoint,
    Checkpoint,
    Dedup,
    EpochVote,
    Governance,
    Grant,
    GrantState,
    Key,
    Member,
    Op,
    Outcome,
    Policy,
    Principal,
    Purpose,
    Request,
    RequestKind,
    RequestState,
    Role,
    State,
    Version,
    VersionState,
)
from .names import member_index, ref
from .recovery import RecoveryRules
from .refreshes import RefreshRules
from .repairs import RepairRules, check_address_pair
from .snapshot import decode_state, encode_state

MAX_PRINCIPALS = 1024
MAX_POLICIES = 256
MAX_KEYS = 4096
MAX_OPEN_REQUESTS = 10_000  # pending or approved, cluster-wide (payloads live in the state)
MAX_OPEN_PER_AUTHOR = 1_000  # so that one client cannot fill the cluster's share
MAX_LIVE_GRANTS = 1_024  # pending or active and not expired, cluster-wide
# An executed decrypt request still takes late partials (members that have not confirmed
# yet) until the end of the epoch after its execution; at most this many at once.
LATE_PARTIAL_EPOCHS = 1
MAX_LINGERING = 20_000
OUTCOME_VERSION = 1
# Rejections that leave the author unproven (unknown, removed, wrong role, forged
# signature, no cluster yet): audited, but never remembered in the exactly-once table.
UNAUTHENTICATED = frozenset(
    {
        Reason.NOT_BOOTSTRAPPED,
        Reason.UNKNOWN_AUTHOR,
        Reason.UNAUTHORIZED,
        Reason.BAD_SIGNATURE,
    }
)

RS = RequestState
# Governance requests that also need k recovery officers' approvals (`officer_approve`).
OFFICER_KINDS = (RequestKind.RECOVER_MEMBERS, RequestKind.EXPORT_KEY)
VS = VersionState
RK = RequestKind
DKG_KINDS = (RK.CREATE_KEY, RK.ROTATE)
GovernanceCommand = (
    AddPrincipal | RemovePrincipal | RekeyPrincipal | SetPolicy | SetGovernance | SetThreshold
    | AddMember | RemoveMember | RepairMember | SetOfficers | RecoverMembers | ExportKey
    | CancelRequest
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Effect:
    """What an accepted command did, for its outcome and audit record."""

    code: str
    subject: str = ""
    key_id: str = ""
    version: int = 0
    digest: bytes = b""
    detail: str = ""
    flag: str = ""  # a loud marker appended to the audit outcome: "<code>!<flag>"


def encode_outcome(outcome: Outcome) -> bytes:
    return msgpack.packb(
        {
            "v": OUTCOME_VERSION,
            "request_id": outcome.request_id,
            "ok": outcome.ok,
            "code": outcome.code,
            "detail": outcome.detail,
            "seq": outcome.seq,
        },
        use_bin_type=True,
    )


def decode_outcome(data: bytes) -> Outcome:
    try:
        raw = msgpack.unpackb(data, raw=False, max_str_len=4096, max_bin_len=0, max_ext_len=0)
    except Exception as exc:
        raise DecodeError(f"not a valid outcome: {type(exc).__name__}") from None
    keys = {"v", "request_id", "ok", "code", "detail", "seq"}
    if type(raw) is not dict or set(raw) != keys or raw["v"] != OUTCOME_VERSION:
        raise DecodeError("outcome must be a v1 map")
    types = {"request_id": str, "ok": bool, "code": str, "detail": str, "seq": int}
    if any(type(raw[k]) is not t for k, t in types.items()):
        raise DecodeError("outcome field of the wrong type")
    return Outcome(raw["request_id"], raw["ok"], raw["code"], raw["detail"], raw["seq"])


class Machine(RepairRules, RefreshRules, RecoveryRules):
    """Applies commands to one `State`. Deterministic: same commands, same bytes."""

    def __init__(self, state: State | None = None, *, genesis: bytes | None = None) -> None:
        """`genesis`: the digest cluster initialisation wrote (`genesis_digest` of the one
        bootstrap command this cluster accepts). Without it no bootstrap is accepted."""
        self.state = state if state is not None else State()
        self.genesis = genesis
        self._handlers: dict[type[Command], Callable[[Any], _Effect]] = {
            Bootstrap: self._bootstrap,
            AdvanceEpoch: self._advance_epoch,
            CreateKey: self._create_key,
            RequestSign: self._request_sign,
            RequestDecrypt: self._request_decrypt,
            RequestRotate: self._request_rotate,
            RequestRevoke: self._request_revoke,
            RequestRollback: self._request_rollback,
            RequestDestroy: self._request_destroy,
            Approve: self._approve,
            PostDkgRound1: self._dkg_round1,
            RecordDkgResult: self._record_dkg_result,
            RecordResult: self._record_result,
            RecordFailure: self._record_failure,
            RecordErasure: self._record_erasure,
            PostCheckpoint: self._checkpoint,
            CreateGrant: self._create_grant,
            RevokeGrant: self._revoke_grant,
            PostAuditCheckpoint: self._audit_checkpoint,
            SetKeyMetadata: self._set_key_metadata,
            CreateAlias: self._create_alias,
            DeleteAlias: self._delete_alias,
            PostRepair: self._repair_handler(self._post_repair),
            RecordRepair: self._repair_handler(self._record_repair),
            ReportRepair: self._repair_handler(self._report_repair),
            StartRefresh: self._refresh_handler(self._start_refresh),
            PostRefresh: self._refresh_handler(self._post_refresh),
            RecordRefresh: self._refresh_handler(self._record_refresh),
            ReportRefresh: self._refresh_handler(self._report_refresh),
            PostEscrow: self._recovery_handler(self._post_escrow),
            OfficerApprove: self._officer_approve_cmd,
            PostRelease: self._recovery_handler(self._post_release),
            RecordRecovery: self._recovery_handler(self._record_recovery),
            PostExportPiece: self._recovery_handler(self._post_export_piece),
        }
        # Governance changes: (check against the state now, apply). Submitting one only
        # opens a request; `apply` runs when the governance quorum approved it and, for a
        # weakening change, once its time lock is over.
        self._changes: dict[type[Command], tuple[Callable[[Any], None], Callable[[Any], None]]]
        self._changes = {
            AddPrincipal: (self._check_add_principal, self._add_principal),
            RemovePrincipal: (self._check_remove_principal, self._remove_principal),
            RekeyPrincipal: (self._check_rekey_principal, self._rekey_principal),
            SetPolicy: (self._check_set_policy, self._set_policy),
            SetGovernance: (self._check_set_governance, self._set_governance),
            SetThreshold: (self._check_set_threshold, self._set_threshold),
            AddMember: (self._check_add_member, self._add_member),
            RemoveMember: (self._check_remove_member, self._remove_member),
            RepairMember: (self._check_repair_member, self._repair_member),
            SetOfficers: (self._check_set_officers, self._set_officers),
            RecoverMembers: (self._check_recover_members, self._recover_members),
            ExportKey: (self._check_export_key, self._export_key),
            CancelRequest: (self._check_cancel, self._cancel),
        }
        for cls in self._changes:
            self._handlers[cls] = self._submit_change

    def _repair_handler(
        self, handler: Callable[[Any], tuple[str, str]]
    ) -> Callable[[Any], _Effect]:
        """A repair command's effect: its code and progress, about the repair request."""

        def run(cmd: Any) -> _Effect:
            code, detail = handler(cmd)
            return _Effect(code, subject=self.state.repairs[cmd.member].request, detail=detail)

        return run

    def _recovery_handler(
        self, handler: Callable[[Any], tuple[str, str]]
    ) -> Callable[[Any], _Effect]:
        """An escrow or recovery command's effect: its code and progress, about the
        running recovery (if any)."""

        def run(cmd: Any) -> _Effect:
            rec = self.running_recovery()
            subject = rec.request if rec is not None else ""
            code, detail = handler(cmd)
            return _Effect(code, subject=subject, detail=detail)

        return run

    def _officer_approve_cmd(self, cmd: OfficerApprove) -> _Effect:
        """An officer's approval of a recover_members request (submitted by an operator).
        The request executes once the governance quorum AND k officers approved it."""
        req = self._request(cmd.request)
        if req.kind not in OFFICER_KINDS:
            raise Rejected(Reason.WRONG_REQUEST_KIND,
                           "officers approve recover_members and export_key only")  # fmt: skip
        if req.state not in (RS.PENDING, RS.APPROVED) or req.effective_epoch:
            raise Rejected(Reason.REQUEST_DECIDED, f"request already {req.state.value}")
        count = self._officer_approve(cmd, self._fresh_digest(req))
        if req.state is RS.APPROVED and count >= self.state.officers.k:
            return self._after_quorum(req, self._change_of(req))
        return self._request_effect(
            req, detail=f"{count} of {self.state.officers.k} officer approval(s)"
        )

    def _refresh_handler(
        self, handler: Callable[[Any], tuple[str, str]]
    ) -> Callable[[Any], _Effect]:
        """A refresh command's effect: its code and progress, about the refresh."""

        def run(cmd: Any) -> _Effect:
            code, detail = handler(cmd)
            latest = next(iter(self.state.refreshes), "")
            return _Effect(code, subject=latest, detail=detail)

        return run

    # ------------------------------------------------------------ protocol

    def apply(self, data: bytes) -> bytes:
        """Apply one committed log entry; malformed bytes change nothing."""
        try:
            cmd = decode_command(data)
        except DecodeError as exc:
            return encode_outcome(Outcome("", False, Reason.MALFORMED.value, str(exc)))
        return encode_outcome(self.apply_command(cmd))

    def snapshot(self) -> bytes:
        return encode_state(self.state)

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot (checked first; on error the state is unchanged).

        A machine configured with a genesis digest refuses a snapshot of another cluster.
        """
        state = decode_state(data)
        foreign = state.bootstrapped and not hmac.compare_digest(state.genesis, self.genesis or b"")
        if self.genesis is not None and foreign:
            raise DecodeError("snapshot belongs to another cluster (genesis differs)")
        self.state = state

    @classmethod
    def from_snapshot(cls, data: bytes, *, genesis: bytes | None = None) -> Machine:
        machine = cls(genesis=genesis)
        machine.restore(data)
        return machine

    # --------------------------------------------------------------- apply

    def apply_command(self, cmd: Command) -> Outcome:
        """Apply a command value: accepted (state + one audit record) or rejected (audited)."""
        cdig = command_digest(encode_command(cmd))
        scoped = ref(cmd.author, cmd.request_id)  # request ids are scoped by their author
        prior = self.state.outcomes.get(scoped)
        if prior is not None:
            if hmac.compare_digest(prior.command_digest, cdig):
                return prior.outcome  # exactly-once: a retry gets the first outcome
            rej = Rejected(Reason.REQUEST_ID_CONFLICT, "request id already used by another command")
            return self._audit_rejection(cmd, rej, cdig)
        try:
            self._authorize(cmd)
            effect = self._handlers[type(cmd)](cmd)
        except Rejected as rej:
            outcome = self._audit_rejection(cmd, rej, cdig)
            if rej.reason in UNAUTHENTICATED or isinstance(
                cmd, Bootstrap | PostCheckpoint | PostAuditCheckpoint
            ):
                # Nobody proved they sent it: remembering it would let anyone fill the
                # table, or take a real author's request id with a forgery. (A checkpoint's
                # signature does not cover its request id, so a replayed genuine one under
                # another id proves nothing about who sent it either. A refused audit
                # checkpoint is not remembered so that the leader may post a good one
                # under the same id.)
                return outcome
        else:
            rec = self._append_audit(
                cmd,
                subject=effect.subject or scoped,
                key_id=effect.key_id,
                version=effect.version,
                digest=effect.digest or cdig,
                outcome=f"{effect.code}!{effect.flag}" if effect.flag else effect.code,
            )
            outcome = Outcome(cmd.request_id, True, effect.code, effect.detail, rec.seq)
        self.state.outcomes[scoped] = Dedup(cdig, outcome)
        return outcome

    def _audit_rejection(self, cmd: Command, rej: Rejected, cdig: bytes) -> Outcome:
        subject = getattr(cmd, "request", ref(cmd.author, cmd.request_id))
        req = self.state.requests.get(subject)
        key_id = getattr(cmd, "key_id", "") or (req.key_id if req else "")
        version = getattr(cmd, "version", 0) or (req.version if req else 0)
        rec = self._append_audit(
            cmd,
            subject=subject,
            key_id=key_id,
            version=version,
            digest=req.digest if req else cdig,
            outcome=f"rejected:{rej.reason.value}",
        )
        return Outcome(cmd.request_id, False, rej.reason.value, rej.detail, rec.seq)

    def _append_audit(self, cmd: Command, **fields: Any):
        prev = self.state.audit[-1] if self.state.audit else None
        rec = make_record(
            prev,
            epoch=self.state.epoch,
            author=cmd.author,
            kind=cmd.KIND,
            request_id=cmd.request_id,
            **fields,
        )
        self.state.audit.append(rec)
        return rec

    def _role_of(self, name: str) -> Role:
        if name in self.state.members:
            return Role.NODE
        principal = self.state.principals.get(name)
        if principal is None:
            raise Rejected(Reason.UNKNOWN_AUTHOR, f"{name!r} is not a registered principal")
        return principal.role

    def _authorize(self, cmd: Command) -> None:
        if isinstance(cmd, Bootstrap):
            return  # checked by the handler against the principals it registers
        if not self.state.bootstrapped:
            raise Rejected(Reason.NOT_BOOTSTRAPPED, "the cluster has not been bootstrapped")
        role = self._role_of(cmd.author)
        if role not in rules.COMMAND_ROLES[cmd.KIND]:
            raise Rejected(Reason.UNAUTHORIZED, f"role {role.value} may not {cmd.KIND}")
        if is_signed(cmd):  # signed kinds, and sign/decrypt requests under a grant
            who = self.state.members.get(cmd.author) or self.state.principals[cmd.author]
            verify_command_signature(who.public_key, cmd, self.state.cluster_id)

    # ------------------------------------------------------------- helpers

    def _key(self, key_id: str) -> Key:
        key = self.state.keys.get(key_id)
        if key is None:
            raise Rejected(Reason.UNKNOWN_KEY, f"no key {key_id!r}")
        return key

    def _client_key(self, key_id: str) -> Key:
        """A key an operator or client may act on: the audit key is the cluster's own
        (created by the bootstrap, used for audit checkpoints only)."""
        key = self._key(key_id)
        if key.purpose is Purpose.AUDIT:
            raise Rejected(
                Reason.WRONG_PURPOSE, f"key {key_id!r} is the cluster's audit key (reserved)"
            )
        return key

    def _waiting_epochs(self, key: Key) -> int:
        policy = self.state.policies.get(key.policy_id)
        return policy.waiting_epochs if policy is not None else 1  # the audit key: none

    def _version(self, key: Key, number: int) -> Version:
        version = key.versions.get(number)
        if version is None:
            raise Rejected(Reason.UNKNOWN_VERSION, f"key {key.key_id!r} has no version {number}")
        return version

    def _request(self, request_id: str) -> Request:
        req = self.state.requests.get(request_id)
        if req is None:
            raise Rejected(Reason.UNKNOWN_REQUEST, f"no request {request_id!r}")
        return req

    def _new_request(
        self,
        cmd: Command,
        kind: RequestKind,
        key: Key,
        version: int,
        context: str = "",
        payload: bytes = b"",
        policy: Policy | None = None,
        activate_epoch: int = 0,
    ) -> Request:
        policy = policy or self.state.policies[key.policy_id]
        return self._open_request(
            cmd, kind, key_id=key.key_id, purpose=key.purpose.value, policy_id=policy.policy_id,
            policy_hash=policy_hash_of(policy), approvers=policy.approvers, k=policy.k,
            version=version, context=context, payload=payload, activate_epoch=activate_epoch,
        )  # fmt: skip

    def _open_request(
        self,
        cmd: Command,
        kind: RequestKind,
        *,
        key_id: str,
        purpose: str,
        policy_id: str,
        policy_hash: bytes,
        approvers: tuple[str, ...],
        k: int,
        version: int = 0,
        context: str = "",
        payload: bytes = b"",
        activate_epoch: int = 0,
    ) -> Request:
        if len(self.state.open) >= MAX_OPEN_REQUESTS:
            raise Rejected(Reason.LIMIT_REACHED, "too many open requests")
        mine = sum(1 for author in self.state.open.values() if author == cmd.author)
        if mine >= MAX_OPEN_PER_AUTHOR:
            raise Rejected(Reason.LIMIT_REACHED, f"{cmd.author!r} has too many open requests")
        if activate_epoch and activate_epoch <= self.state.epoch:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"activation epoch must be > {self.state.epoch}"
            )
        phash = payload_hash(payload)
        req = Request(
            request_id=cmd.request_id,
            kind=kind,
            author=cmd.author,
            key_id=key_id,
            purpose=purpose,
            policy_id=policy_id,
            policy_hash=policy_hash,
            version=version,
            context=context,
            payload_hash=phash,
            digest=b"",
            submitted_epoch=self.state.epoch,
            approvers=approvers,
            k=k,
            activate_epoch=activate_epoch,
            payload=payload,
        )
        req.digest = digest_of(req, self.state.cluster_id, phash)
        return req

    def _register(self, req: Request) -> None:
        self.state.requests[req.ref] = req
        self.state.open[req.ref] = req.author

    def _still_possible(self, req: Request) -> bool:
        """Can `req` still take effect, given its version's current state?"""
        if req.version == 0:
            return True
        key = self.state.keys[req.key_id]
        version = key.versions[req.version]
        if req.kind in DKG_KINDS:
            return version.state is VS.PENDING
        if req.kind is RequestKind.SIGN:
            dual = key.versions.get(req.dual_version) if req.dual_version else None
            if req.dual_version and (
                dual is None or not rules.may_dual_sign(key.purpose, dual, self.state.epoch)
            ):
                return False  # the replaced version may no longer add its signature
            return rules.may_use(key.purpose, version, Op.SIGN, self.state.epoch)
        if req.kind is RequestKind.ROLLBACK:
            return version.state is VS.RETIRED  # the rest is re-checked on approval
        if req.kind is RequestKind.DECRYPT:
            return rules.may_use(key.purpose, version, Op.DECRYPT, self.state.epoch)
        event = "revoke" if req.kind is RequestKind.REVOKE else "destroy"
        return (version.state, event) in rules.VERSION_TRANSITIONS

    def _fail_impossible(self, key_id: str, number: int) -> None:
        """After a version changed state, fail the open requests it made impossible."""
        requests = self.state.requests
        affected = sorted(
            rid
            for rid in self.state.open
            if requests[rid].key_id == key_id
            and number in (requests[rid].version, requests[rid].dual_version)
        )
        for rid in affected:
            req = self.state.requests[rid]
            if not self._still_possible(req):
                state = self.state.keys[key_id].versions[number].state
                self._finish(req, rules.request_step(req.state, "fail"), f"version_{state.value}")

    def _finish(self, req: Request, state: RequestState, failure: str = "") -> None:
        req.state = state
        self.state.open.pop(req.ref, None)
        req.failure = failure
        req.payload = b""
        req.dkg_round1 = {}  # round-1 packages serve only the DKG under way
        self.state.officer_approvals.pop(req.ref, None)  # serve only an open request
        req.decided_epoch = req.decided_epoch or self.state.epoch
        key = self.state.keys.get(req.key_id)
        if key is not None and key.lifecycle_request == req.ref:
            key.lifecycle_request = ""

    def _set_version_state(self, key: Key, version: Version, event: str) -> None:
        version.state = rules.version_step(version.state, event)
        epoch = self.state.epoch
        if event == "retire":
            version.retired_epoch = version.retired_epoch or epoch
        elif event == "revoke":
            version.revoked_epoch = epoch
        elif event in ("destroy", "abort"):
            version.destroyed_epoch = epoch
            self._drop_escrows(key.key_id, version.number)
        if key.primary == version.number and version.state is not VS.ACTIVE:
            key.primary = 0
        self._fail_impossible(key.key_id, version.number)

    def _ensure_new_name(self, name: str) -> None:
        """Names are never reused, not even a removed identity's: the audit chain and the
        requests it wrote or approved keep naming it."""
        st = self.state
        tables = (st.principals, st.members, st.removed_principals, st.removed_members)
        if any(name in table for table in tables):
            raise Rejected(Reason.DUPLICATE_NAME, f"{name!r} is or was registered")

    def _key_in_use(self, public_key: bytes) -> bool:
        """One key, one identity (else one approver could cast two votes), for ever."""
        st = self.state
        identities = (st.principals, st.members, st.removed_principals, st.removed_members)
        return any(who.public_key == public_key for t in identities for who in t.values())

    @staticmethod
    def _check_principal_key(role: str, public_key: bytes) -> None:
        if role in (Role.APPROVER.value, Role.OPERATOR.value) and not public_key:
            raise Rejected(Reason.INVALID_PRINCIPAL, f"an {role} needs an Ed25519 public key")
        if public_key and not valid_public_key(public_key):
            raise Rejected(Reason.INVALID_PRINCIPAL, "public key is not a valid Ed25519 key")

    # ------------------------------------------------------------ handlers

    def _bootstrap(self, cmd: Bootstrap) -> _Effect:
        if self.state.bootstrapped:
            raise Rejected(Reason.ALREADY_BOOTSTRAPPED, "bootstrap happens once")
        genesis = genesis_digest(signing_bytes(cmd))
        if self.genesis is None or not hmac.compare_digest(genesis, self.genesis):
            raise Rejected(
                Reason.INVALID_CLUSTER, "bootstrap does not match this cluster's genesis"
            )
        members, principals = cmd.members, cmd.principals
        if not members or not 1 <= cmd.threshold <= len(members):
            raise Rejected(Reason.INVALID_CLUSTER, "need 1 <= threshold <= number of members")
        if len(members) >= 2 and cmd.threshold < 2 and not cmd.unsafe:
            raise Rejected(
                Reason.INVALID_CLUSTER, "threshold 1 lets one member act alone (needs unsafe)"
            )
        if any(member_index(m.name) != m.index for m in members):
            raise Rejected(Reason.INVALID_CLUSTER, "member node-<i> must have index i")
        names = [m.name for m in members] + [p.name for p in principals]
        if len(set(names)) != len(names):
            raise Rejected(Reason.DUPLICATE_NAME, "member and principal names must be unique")
        if len({m.public_key for m in members}) != len(members) or not all(
            valid_public_key(m.public_key) for m in members
        ):
            raise Rejected(Reason.INVALID_CLUSTER, "member keys must be distinct Ed25519 keys")
        for p in principals:
            self._check_principal_key(p.role, p.public_key)
        keys = [m.public_key for m in members] + [p.public_key for p in principals if p.public_key]
        if len(set(keys)) != len(keys):
            raise Rejected(Reason.INVALID_PRINCIPAL, "a public key may belong to one identity only")
        self._check_bootstrap_governance(cmd)
        author = [p for p in principals if p.name == cmd.author and p.role == Role.OPERATOR]
        if not author:
            raise Rejected(
                Reason.UNAUTHORIZED, "bootstrap must be authored by one of its operators"
            )
        verify_command_signature(author[0].public_key, cmd, cmd.cluster_id)
        st = self.state
        st.cluster_id, st.threshold, st.epoch = cmd.cluster_id, cmd.threshold, 1
        st.genesis, st.unsafe = genesis, cmd.unsafe
        for m in members:
            st.members[m.name] = Member(m.name, m.index, m.public_key)
        for p in principals:
            st.principals[p.name] = Principal(p.name, Role(p.role), p.public_key)
        st.governance = Governance(
            tuple(sorted(cmd.governance_approvers)), cmd.governance_k, cmd.time_lock_epochs
        )
        self._create_audit_key(cmd)
        if cmd.unsafe:
            return _Effect("ok", detail="UNSAFE: single-party rules allowed", flag="unsafe")
        return _Effect("ok")

    def _create_audit_key(self, cmd: Bootstrap) -> None:
        """The cluster's audit key: reserved id, purpose `audit`, no policy. Its version 1
        comes from a `create_key` request under the bootstrap's own id (so no later command
        can take that id), approved at once: the bootstrap is the authority, as a policy
        is for a scheduled rotation. The members' DKG duty then runs its DKG, and the
        version activates at an epoch step like any other."""
        gov = self.state.governance
        key = Key(AUDIT_KEY_ID, Purpose.AUDIT, "")
        req = self._open_request(
            cmd, RequestKind.CREATE_KEY, key_id=AUDIT_KEY_ID, purpose=Purpose.AUDIT.value,
            policy_id="", policy_hash=governance_hash_of(gov), approvers=gov.approvers, k=gov.k,
        )  # fmt: skip
        req.state = rules.request_step(req.state, "quorum")
        req.decided_epoch = self.state.epoch
        self.state.keys[AUDIT_KEY_ID] = key
        self._register(req)
        key.lifecycle_request = req.ref
        self._new_version(key, req)

    def _advance_epoch(self, cmd: AdvanceEpoch) -> _Effect:
        """A member's vote for the next epoch; `threshold` votes move it by one step.

        One member alone can neither jump the epoch (ending every grace period and
        time lock at once, or pushing activations out of the schema) nor march it
        forward one command at a time: every step needs `threshold` members.
        """
        st = self.state
        if cmd.epoch <= st.epoch:
            raise Rejected(Reason.EPOCH_NOT_FORWARD, f"epoch is {st.epoch}")
        if cmd.epoch > st.epoch + rules.MAX_EPOCH_STEP:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"the epoch moves {rules.MAX_EPOCH_STEP} step at a time"
            )
        prior = st.epoch_votes.get(cmd.author)
        if prior is not None and prior.epoch == cmd.epoch:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already voted for {cmd.epoch}")
        st.epoch_votes[cmd.author] = EpochVote(cmd.epoch, cmd.at)
        votes = sorted(v.at for v in st.epoch_votes.values() if v.epoch == cmd.epoch)
        if len(votes) < st.threshold:
            return _Effect("pending", detail=f"votes {len(votes)}/{st.threshold}")
        # The lower median of the voters' clocks: no single voter sets the time.
        return self._enter_epoch(cmd.epoch, votes[(len(votes) - 1) // 2])

    def _enter_epoch(self, epoch: int, at: int) -> _Effect:
        """Move to `epoch`: activate the versions whose epoch has come, then apply the
        time-locked governance changes whose lock is over (loud in the audit)."""
        self.state.epoch = epoch
        self.state.epoch_votes.clear()
        activated = []
        for key_id in sorted(self.state.keys):
            key = self.state.keys[key_id]
            for number in sorted(key.versions):
                v = key.versions[number]
                if v.state is VS.PENDING and v.activation_epoch and v.activation_epoch <= epoch:
                    self._activate(key, v, at)
                    activated.append(f"{key_id}@{number}")
        self._expire_grants(epoch)
        self._expire_rollbacks()
        for done in [r for r, until in self.state.lingering.items() if until < epoch]:
            self._unlinger(done)
        changed = self._apply_time_locked(epoch)
        detail = ",".join(activated)
        if changed:
            detail += f"{'; ' if detail else ''}WEAKENING took effect: {', '.join(changed)}"
        return _Effect("ok", detail=detail, flag="weakening" if changed else "")

    def _activate(self, key: Key, v: Version, at: int) -> None:
        v.state = rules.version_step(v.state, "activate")
        v.activated_at = at
        old = key.versions.get(key.primary)
        key.primary = v.number
        if old is not None and old.state is VS.ACTIVE:
            v.replaced = old.number  # what a rollback may restore, and what dual-signs
            old.retired_epoch = v.activation_epoch  # retires when its successor activates
            self._set_version_state(key, old, "retire")

    def _create_key(self, cmd: CreateKey) -> _Effect:
        """Reserve a new key, or retry the creation of one whose DKG never produced a
        usable version (`_may_retry`): the request then works like a first create_key
        (on approval, a new pending version numbered highest + 1)."""
        existing = self.state.keys.get(cmd.key_id)
        if existing is not None and not self._may_retry(existing, cmd):
            raise Rejected(Reason.KEY_EXISTS, f"key {cmd.key_id!r} exists")
        if cmd.key_id in self.state.aliases:
            raise Rejected(Reason.DUPLICATE_NAME, f"{cmd.key_id!r} is an alias name")
        policy = self.state.policies.get(cmd.policy_id)
        if policy is None:
            raise Rejected(Reason.UNKNOWN_POLICY, f"no policy {cmd.policy_id!r}")
        if existing is None and len(self.state.keys) >= MAX_KEYS:
            raise Rejected(Reason.LIMIT_REACHED, "too many keys")
        key = existing
        if key is None:
            key = Key(cmd.key_id, Purpose(cmd.purpose), cmd.policy_id)
        req = self._new_request(
            cmd, RequestKind.CREATE_KEY, key, 0, policy=policy, activate_epoch=cmd.activate_epoch
        )
        key.lifecycle_request = req.ref
        # Metadata as the command names it (a retry too); not in the request's digest.
        key.owner, key.description, key.tags = cmd.owner, cmd.description, dict(cmd.tags)
        self.state.keys[key.key_id] = key
        self._register(req)
        detail = "retry" if existing is not None else ""
        return _Effect(req.state.value, key_id=key.key_id, digest=req.digest, detail=detail)

    @staticmethod
    def _may_retry(key: Key, cmd: CreateKey) -> bool:
        """A create_key for an existing key is a retry only with the same purpose and
        policy, no open create/rotate request, and no version that was ever active (all
        destroyed: aborted or revoked before activation, `rules.may_retry_create`)."""
        same = key.purpose.value == cmd.purpose and key.policy_id == cmd.policy_id
        return same and not key.lifecycle_request and rules.may_retry_create(key.versions.values())

    def _request_use(self, cmd: RequestSign | RequestDecrypt, op: Op, payload: bytes) -> _Effect:
        key = self._client_key(cmd.key_id)
        needed = Purpose.SIGN if op is Op.SIGN else Purpose.ENCRYPT
        if key.purpose is not needed:
            raise Rejected(Reason.WRONG_PURPOSE, f"key {key.key_id!r} is for {key.purpose.value}")
        policy = self.state.policies[key.policy_id]
        if cmd.author not in policy.requesters or op.value not in policy.operations:
            raise Rejected(Reason.OPERATION_NOT_ALLOWED, f"policy forbids {op.value} here")
        number = cmd.version or key.primary
        if number == 0:
            raise Rejected(Reason.VERSION_NOT_USABLE, "key has no active version")
        version = self._version(key, number)
        if not rules.may_use(key.purpose, version, op, self.state.epoch):
            raise Rejected(Reason.VERSION_NOT_USABLE, f"version {number} is {version.state.value}")
        grant = self._usable_grant(cmd, op) if cmd.grant else None
        kind = RequestKind.SIGN if op is Op.SIGN else RequestKind.DECRYPT
        req = self._new_request(cmd, kind, key, number, cmd.context, payload)
        detail = ""
        if op is Op.SIGN and cmd.version == 0:
            # Inside the policy's dual-sign window the version the primary replaced signs
            # too: recorded in the request and bound by its digest (approvers see it).
            req.dual_version = rules.dual_sign_version(
                key.purpose, version, key.versions.get(version.replaced),
                policy.dual_sign_epochs, self.state.epoch,
            )  # fmt: skip
            if req.dual_version:
                req.digest = digest_of(req, self.state.cluster_id, req.payload_hash)
                detail = f"dual-sign with version {req.dual_version}"
        if grant is not None:
            # The grant is the approval (its quorum approved it in advance; the grantee's
            # signature was verified in `_authorize`). Stored so that `executable()` can
            # re-check both on every replica.
            grant.uses += 1
            req.grant, req.grant_use = grant.grant_id, grant.uses
            req.grant_version, req.grant_signature = cmd.version, cmd.signature
            req.state = rules.request_step(req.state, "quorum")
            req.decided_epoch = self.state.epoch
            detail = f"grant {grant.grant_id}: use {grant.uses}/{grant.max_uses}" + (
                f"; {detail}" if detail else ""
            )
        self._register(req)
        return _Effect(
            req.state.value, key_id=key.key_id, version=number, digest=req.digest, detail=detail
        )

    def _usable_grant(self, cmd: RequestSign | RequestDecrypt, op: Op) -> Grant:
        """The grant `cmd` names, if its author may use it for this request now."""
        grant = self.state.grants.get(cmd.grant)
        if grant is None:
            raise Rejected(Reason.UNKNOWN_GRANT, f"no grant {cmd.grant!r}")
        if grant.grantee != cmd.author:
            raise Rejected(
                Reason.OUTSIDE_GRANT, f"grant {grant.grant_id!r} is not {cmd.author!r}'s"
            )
        if grant.state is not GrantState.ACTIVE:
            raise Rejected(
                Reason.GRANT_NOT_ACTIVE, f"grant {grant.grant_id!r} is {grant.state.value}"
            )
        if self.state.epoch >= grant.expires_epoch:
            raise Rejected(Reason.GRANT_EXPIRED, f"grant expired at epoch {grant.expires_epoch}")
        if grant.uses >= grant.max_uses:
            raise Rejected(Reason.GRANT_EXHAUSTED, f"all {grant.max_uses} uses taken")
        if grant.key_id != cmd.key_id or op.value not in grant.operations:
            raise Rejected(Reason.OUTSIDE_GRANT, "the grant is for another key or operation")
        if not context_matches(grant, cmd.context):
            raise Rejected(Reason.OUTSIDE_GRANT, "the context is outside the grant's")
        return grant

    # ------------------------------------------------------------------ grants

    def _check_grant_terms(self, cmd: CreateGrant, key: Key) -> None:
        """What a grant may allow: no more than its grantee could request (a registered
        client with an Ed25519 key, a requester of the key's policy, operations within
        the key's purpose and the policy's operations), an explicit context, an expiry
        in the future. Checked at submission and again when the quorum approves."""
        grantee = self.state.principals.get(cmd.grantee)
        if grantee is None:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no principal {cmd.grantee!r}")
        if grantee.role is not Role.CLIENT:
            raise Rejected(Reason.INVALID_PRINCIPAL, f"{cmd.grantee!r} is not a client")
        if not valid_public_key(grantee.public_key):
            raise Rejected(
                Reason.INVALID_PRINCIPAL, f"{cmd.grantee!r} has no registered Ed25519 key"
            )
        if not cmd.operations:
            raise Rejected(Reason.INVALID_ARGUMENT, "a grant allows at least one operation")
        allowed = {Purpose.SIGN: "sign", Purpose.ENCRYPT: "decrypt"}[key.purpose]
        if any(op != allowed for op in cmd.operations):
            raise Rejected(Reason.WRONG_PURPOSE, f"key {key.key_id!r} allows only {allowed}")
        policy = self.state.policies[key.policy_id]
        if cmd.grantee not in policy.requesters or allowed not in policy.operations:
            raise Rejected(Reason.OPERATION_NOT_ALLOWED, f"policy {policy.policy_id!r} forbids it")
        if cmd.context_match == "prefix" and not cmd.context:
            raise Rejected(Reason.INVALID_ARGUMENT, "a prefix grant needs a non-empty prefix")
        if cmd.expires_epoch <= self.state.epoch:
            raise Rejected(Reason.GRANT_EXPIRED, f"expiry must be > epoch {self.state.epoch}")

    def _live_grants(self, grantee: str | None = None) -> list[Grant]:
        st = self.state
        return [
            g for g in st.grants.values()
            if g.state in (GrantState.PENDING, GrantState.ACTIVE) and st.epoch < g.expires_epoch
            and (grantee is None or g.grantee == grantee)
        ]  # fmt: skip

    def _create_grant(self, cmd: CreateGrant) -> _Effect:
        """Open a `grant` request decided by the key policy's quorum (k approvals, like
        any key request); its payload is the grant's canonical encoding."""
        st = self.state
        if cmd.grant_id in st.grants:
            raise Rejected(Reason.DUPLICATE_NAME, f"grant id {cmd.grant_id!r} is taken")
        key = self._client_key(cmd.key_id)
        self._check_grant_terms(cmd, key)
        if cmd.expires_epoch > st.epoch + MAX_GRANT_EPOCHS:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"expiry at most {MAX_GRANT_EPOCHS} epochs ahead"
            )
        if len(self._live_grants()) >= MAX_LIVE_GRANTS:
            raise Rejected(Reason.LIMIT_REACHED, "too many live grants")
        grant = Grant(
            grant_id=cmd.grant_id, grantee=cmd.grantee, key_id=key.key_id,
            operations=tuple(cmd.operations), context=cmd.context,
            context_match=cmd.context_match, max_uses=cmd.max_uses,
            expires_epoch=cmd.expires_epoch, request=ref(cmd.author, cmd.request_id),
        )  # fmt: skip
        req = self._new_request(cmd, RequestKind.GRANT, key, 0, payload=grant_payload(grant))
        req.grant = grant.grant_id
        self._register(req)
        st.grants[grant.grant_id] = grant
        return self._request_effect(req, detail=f"grant {grant.grant_id}")

    def _grant_approved(self, req: Request) -> None:
        """The quorum approved a grant: it becomes active, unless it no longer could."""
        grant = self.state.grants[req.grant]
        key = self.state.keys[grant.key_id]
        try:
            self._check_grant_terms(grant_command(grant), key)
        except Rejected as rej:
            grant.state = GrantState.FAILED
            self._fail_request(req, rej.reason.value)
            return
        grant.state = GrantState.ACTIVE
        grant.activated_epoch = self.state.epoch
        self._finish(req, rules.request_step(req.state, "complete"))

    def _revoke_grant(self, cmd: RevokeGrant) -> _Effect:
        """At once, by an operator or any one approver of the grant's quorum. Its pending
        request fails; so do the requests made under it that are not executed yet."""
        st = self.state
        grant = st.grants.get(cmd.grant_id)
        if grant is None:
            raise Rejected(Reason.UNKNOWN_GRANT, f"no grant {cmd.grant_id!r}")
        greq = st.requests[grant.request]
        if self._role_of(cmd.author) is Role.APPROVER and cmd.author not in greq.approvers:
            raise Rejected(Reason.NOT_AN_APPROVER, f"{cmd.author!r} is not in the grant's quorum")
        if grant.state not in (GrantState.PENDING, GrantState.ACTIVE):
            raise Rejected(Reason.GRANT_NOT_ACTIVE, f"grant is {grant.state.value}")
        grant.state = GrantState.REVOKED
        grant.revoked_epoch, grant.revoked_by = st.epoch, cmd.author
        if greq.state is RS.PENDING:
            self._fail_request(greq, "revoked")
        failed = self._fail_grant_requests(lambda g: g.grant_id == cmd.grant_id, "grant_revoked")
        return _Effect(
            "ok", subject=greq.ref, key_id=grant.key_id, digest=greq.digest,
            detail=f"grant {grant.grant_id} revoked; {failed} open request(s) failed",
        )  # fmt: skip

    # ------------------------------------------------- metadata and aliases

    def _set_key_metadata(self, cmd: SetKeyMetadata) -> _Effect:
        """Replace a key's metadata at once (docs/metadata.md: it grants nothing). The
        audit record names the key and carries the hash of the new metadata."""
        key = self._client_key(cmd.key_id)
        tags = dict(cmd.tags)
        key.owner, key.description, key.tags = cmd.owner, cmd.description, tags
        digest = metadata_hash(cmd.owner, cmd.description, tags)
        return _Effect("ok", key_id=key.key_id, digest=digest)

    def _create_alias(self, cmd: CreateAlias) -> _Effect:
        """Bind `alias` to a key, at once. A name is bound to one key for ever: a live
        alias is never repointed, and a deleted one may only be re-created for the key it
        named (so no alias ever silently starts naming another key)."""
        st = self.state
        key = self._client_key(cmd.key_id)
        if cmd.alias in st.keys:
            raise Rejected(Reason.DUPLICATE_NAME, f"{cmd.alias!r} is a key id")
        old = st.aliases.get(cmd.alias)
        if old is not None and not old.deleted_epoch:
            raise Rejected(Reason.ALIAS_EXISTS, f"alias {cmd.alias!r} names {old.key_id!r}")
        if old is not None and old.key_id != key.key_id:
            raise Rejected(
                Reason.ALIAS_EXISTS,
                f"alias {cmd.alias!r} was bound to {old.key_id!r}: an alias never names "
                "another key (choose a new name)",
            )
        if old is None and len(st.aliases) >= MAX_ALIASES:
            raise Rejected(Reason.LIMIT_REACHED, f"{MAX_ALIASES} alias names already bound")
        st.aliases[cmd.alias] = Alias(cmd.alias, key.key_id, st.epoch)
        return _Effect(
            "ok", key_id=key.key_id, digest=alias_hash(cmd.alias),
            detail=f"alias {cmd.alias} -> {key.key_id}",
        )  # fmt: skip

    def _delete_alias(self, cmd: DeleteAlias) -> _Effect:
        """Delete a live alias at once; its name stays reserved for the key it named."""
        alias = self.state.aliases.get(cmd.alias)
        if alias is None or alias.deleted_epoch:
            raise Rejected(Reason.UNKNOWN_ALIAS, f"no alias {cmd.alias!r}")
        alias.deleted_epoch = self.state.epoch
        return _Effect(
            "ok", key_id=alias.key_id, digest=alias_hash(cmd.alias),
            detail=f"alias {cmd.alias} deleted",
        )  # fmt: skip

    def resolve(self, name: str) -> str | None:
        """The key id `name` denotes: a key id, or a live alias's key (None: neither).
        For the API and CLI edge only: commands, requests and audit name real key ids."""
        if name in self.state.keys:
            return name
        alias = self.state.aliases.get(name)
        return alias.key_id if alias is not None and not alias.deleted_epoch else None

    def _fail_grant_requests(self, which: Callable[[Grant], bool], failure: str) -> int:
        """Fail the open sign/decrypt requests made under grants `which` selects."""
        st = self.state
        n = 0
        for r in sorted(st.open):
            req = st.requests[r]
            if req.grant and req.kind is not RequestKind.GRANT and which(st.grants[req.grant]):
                self._fail_request(req, failure)
                n += 1
        return n

    def _expire_grants(self, epoch: int) -> None:
        """On entering `epoch`: grants whose expiry came fail if still pending, and the
        open requests made under them fail (expiry stops use, like revocation)."""
        st = self.state
        for r in sorted(st.open):
            req = st.requests[r]
            if req.kind is RequestKind.GRANT and st.grants[req.grant].expires_epoch <= epoch:
                st.grants[req.grant].state = GrantState.FAILED
                self._fail_request(req, "grant_expired")
        self._fail_grant_requests(lambda g: g.expires_epoch <= epoch, "grant_expired")

    def _request_sign(self, cmd: RequestSign) -> _Effect:
        return self._request_use(cmd, Op.SIGN, cmd.message)

    def _request_decrypt(self, cmd: RequestDecrypt) -> _Effect:
        return self._request_use(cmd, Op.DECRYPT, cmd.ciphertext)

    def _request_rotate(self, cmd: RequestRotate) -> _Effect:
        key = self._client_key(cmd.key_id)
        if key.lifecycle_request or any(v.state is VS.PENDING for v in key.versions.values()):
            raise Rejected(Reason.ROTATION_IN_PROGRESS, "a new version is already on its way")
        scheduled = cmd.author in self.state.members
        if scheduled and not self.rotation_due(key.key_id, cmd.at):
            raise Rejected(Reason.ROTATION_NOT_DUE, "policy does not call for rotation yet")
        req = self._new_request(cmd, RequestKind.ROTATE, key, 0, activate_epoch=cmd.activate_epoch)
        self._register(req)
        key.lifecycle_request = req.ref
        if scheduled:  # the policy itself is the approval of a due, scheduled rotation
            req.state = rules.request_step(req.state, "quorum")
            req.decided_epoch = self.state.epoch
            self._new_version(key, req)
        return _Effect(req.state.value, key_id=key.key_id, version=req.version, digest=req.digest)

    def _request_end(self, cmd: RequestRevoke | RequestDestroy, kind: RequestKind) -> _Effect:
        key = self._client_key(cmd.key_id)
        version = self._version(key, cmd.version)
        event = "revoke" if kind is RequestKind.REVOKE else "destroy"
        rules.version_step(version.state, event)  # raises INVALID_TRANSITION
        if version.state is VS.RETIRED and kind is RequestKind.DESTROY:
            grace = self.state.policies[key.policy_id].grace_epochs
            if version.retired_epoch + grace > self.state.epoch:
                raise Rejected(
                    Reason.GRACE_PERIOD, f"destroyable from epoch {version.retired_epoch + grace}"
                )
        req = self._new_request(cmd, kind, key, cmd.version)
        self._register(req)
        return _Effect(req.state.value, key_id=key.key_id, version=cmd.version, digest=req.digest)

    def _request_revoke(self, cmd: RequestRevoke) -> _Effect:
        return self._request_end(cmd, RequestKind.REVOKE)

    def _request_destroy(self, cmd: RequestDestroy) -> _Effect:
        return self._request_end(cmd, RequestKind.DESTROY)

    def _request_rollback(self, cmd: RequestRollback) -> _Effect:
        """Ask the key policy's quorum to make `cmd.version` the primary again (see
        `rules.rollback_allowed`). While open it is the key's lifecycle request, so no
        rotation can start under it; it is checked again when its quorum is met."""
        key = self._client_key(cmd.key_id)
        target = self._version(key, cmd.version)
        if key.lifecycle_request:
            raise Rejected(
                Reason.ROTATION_IN_PROGRESS,
                f"lifecycle request {key.lifecycle_request} is open on this key",
            )
        why = self._rollback_refusal(key, target)
        if why:
            raise Rejected(Reason.ROLLBACK_NOT_ALLOWED, why)
        req = self._new_request(cmd, RequestKind.ROLLBACK, key, cmd.version)
        self._register(req)
        key.lifecycle_request = req.ref
        return _Effect(req.state.value, key_id=key.key_id, version=cmd.version, digest=req.digest)

    def _rollback_refusal(self, key: Key, target: Version) -> str:
        """Why rolling `key` back to `target` is not allowed now ("" = allowed)."""
        if any(v.state is VS.PENDING for v in key.versions.values()):
            return "a version is pending (revoke it first, or wait for it to activate)"
        grace = self.state.policies[key.policy_id].grace_epochs
        primary = key.versions.get(key.primary)
        return rules.rollback_allowed(primary, target, grace, self.state.epoch)

    def _rollback(self, key: Key, req: Request) -> str:
        """Execute an approved rollback, or fail it if it is no longer allowed. The target
        becomes active and the primary; the primary retires now (its sign requests fail,
        `version_retired`, as at a rotation). The target's schedule restarts: usage
        counts from now (`rollback_uses`) and its rotation interval from the wall-clock
        time of the switch it undoes (the primary's `activated_at`: the machine has no
        clock of its own)."""
        target = key.versions[req.version]
        why = self._rollback_refusal(key, target)
        if why:
            self._finish(req, rules.request_step(req.state, "fail"), "rollback_not_allowed")
            return f"rollback not allowed: {why}"
        self._finish(req, rules.request_step(req.state, "complete"))
        primary = key.versions[key.primary]
        target.state = rules.version_step(target.state, "rollback")
        target.retired_epoch = 0
        target.rolled_back_epoch = self.state.epoch
        target.rollback_uses = target.uses
        target.activated_at = primary.activated_at
        key.primary = target.number
        self._set_version_state(key, primary, "retire")
        return f"version {target.number} is the primary again; version {primary.number} retired"

    def _expire_rollbacks(self) -> None:
        """On entering an epoch: open rollback requests that are no longer allowed (their
        grace period ended) fail, releasing the key for rotations."""
        for key_id in sorted(self.state.keys):
            key = self.state.keys[key_id]
            req = self.state.requests.get(key.lifecycle_request)
            if req is None or req.kind is not RequestKind.ROLLBACK:
                continue
            if self._rollback_refusal(key, key.versions[req.version]):
                self._fail_request(req, "rollback_not_allowed")

    def _new_version(self, key: Key, req: Request) -> None:
        number = max(key.versions, default=0) + 1
        key.versions[number] = Version(number, VS.PENDING, req.ref)
        req.version = number

    def _approve(self, cmd: Approve) -> _Effect:
        req = self._request(cmd.request)
        lifecycle = req.kind in DKG_KINDS
        if not lifecycle and req.state in (RS.PENDING, RS.FAILED) and not self._still_possible(req):
            raise Rejected(
                Reason.VERSION_NOT_USABLE, "the request's key version is no longer usable"
            )
        if req.state is not RS.PENDING:
            raise Rejected(Reason.REQUEST_DECIDED, f"request already {req.state.value}")
        if cmd.author not in req.approvers:
            raise Rejected(Reason.NOT_AN_APPROVER, f"{cmd.author!r} does not approve this request")
        if cmd.author in self._subjects(req):
            raise Rejected(
                Reason.SELF_APPROVAL, f"{cmd.author!r} may not approve a change to its own key/role"
            )
        if cmd.author in req.approvals:
            raise Rejected(Reason.DUPLICATE_APPROVAL, f"{cmd.author!r} already approved")
        digest = self._fresh_digest(req)
        verify_approval(self.state.principals[cmd.author].public_key, digest, cmd.signature)
        req.approvals[cmd.author] = cmd.signature
        if req.k >= 1 and quorum_met(len(self._valid_approvers(req)), req.k):
            req.state = rules.request_step(req.state, "quorum")
            req.decided_epoch = self.state.epoch
            if req.kind in rules.GOVERNANCE_KINDS:
                return self._on_governance_approved(req)
            return self._request_effect(req, detail=self._on_approved(req))
        return self._request_effect(req)

    def _on_approved(self, req: Request) -> str:
        key = self.state.keys[req.key_id]
        if req.kind is RequestKind.ROLLBACK:
            return self._rollback(key, req)
        if req.kind is RequestKind.GRANT:
            self._grant_approved(req)
        elif req.kind in DKG_KINDS:
            self._new_version(key, req)
        elif req.kind in (RequestKind.REVOKE, RequestKind.DESTROY):
            # Effective at the epoch this approval commits in; the nodes erase on seeing it.
            version = key.versions[req.version]
            self._finish(req, rules.request_step(req.state, "complete"))
            event = "revoke" if req.kind is RequestKind.REVOKE else "destroy"
            self._set_version_state(key, version, event)
        return ""

    def _executing(self, request_id: str, kinds: tuple[RequestKind, ...]) -> Request:
        req = self._request(request_id)
        if req.kind not in kinds:
            raise Rejected(Reason.WRONG_REQUEST_KIND, f"request is a {req.kind.value} request")
        rules.request_step(req.state, "complete")  # raises NOT_APPROVED / REQUEST_DECIDED
        return req

    def _dkg_round1(self, cmd: PostDkgRound1) -> _Effect:
        """A member's DKG round-1 package for an approved create/rotate request whose
        pending version exists: stored (one per member per request) so that every member
        reads the same packages from its replica (`dkg_round1()`). Opaque bytes; never in
        the audit chain. Dropped when the request is decided or the member removed."""
        req = self._executing(cmd.request, DKG_KINDS)  # unknown / wrong kind / not approved
        key = self.state.keys[req.key_id]
        version = key.versions.get(req.version)
        if version is None or version.state is not VS.PENDING:
            raise Rejected(Reason.VERSION_NOT_USABLE, "the request has no pending version")
        if cmd.author in req.dkg_round1:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already posted round 1")
        req.dkg_round1[cmd.author] = cmd.package
        detail = f"round1 {len(req.dkg_round1)}/{len(self.state.members)}"
        return self._request_effect(req, code="ok", detail=detail)

    def _record_dkg_result(self, cmd: RecordDkgResult) -> _Effect:
        req = self._executing(cmd.request, DKG_KINDS)
        key = self.state.keys[req.key_id]
        version = key.versions[req.version]
        if cmd.author in version.dkg_posts:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already posted")
        if len(cmd.verification_shares) != len(self.state.members):
            raise Rejected(Reason.INVALID_ARGUMENT, "one verification share per member needed")
        post = dkg_post_digest(cmd.group_public_key, cmd.verification_shares)
        if not version.dkg_posts:
            version.group_public_key = cmd.group_public_key
            version.verification_shares = cmd.verification_shares
        version.dkg_posts[cmd.author] = post
        code = "ok"
        if len(version.dkg_posts) == len(self.state.members):
            first = dkg_post_digest(version.group_public_key, version.verification_shares)
            if all(hmac.compare_digest(p, first) for p in version.dkg_posts.values()):
                waiting = self._waiting_epochs(key)
                earliest = self.state.epoch + max(1, waiting)
                version.activation_epoch = max(earliest, req.activate_epoch)
                self._finish(req, rules.request_step(req.state, "complete"))
                code = "executed"
            else:
                self._finish(req, rules.request_step(req.state, "fail"), "dkg_mismatch")
                self._set_version_state(key, version, "abort")
                code = "failed"
        return _Effect(
            code, subject=req.ref, key_id=req.key_id, version=req.version,
            digest=req.digest, detail=f"activation_epoch={version.activation_epoch}",
        )  # fmt: skip

    def _record_result(self, cmd: RecordResult) -> _Effect:
        """Sign: one report carrying a signature that verifies completes the request.
        Decrypt: each member confirms its own partial; `threshold` confirmations complete
        it. Either way no single member can end a request the others can still run.
        An executed decrypt request lingers (`State.lingering`): members that have not
        confirmed may still confirm and give a partial, until the epoch after."""
        late = self.state.requests.get(cmd.request)
        if late is not None and late.ref in self.state.lingering:
            return self._late_confirmation(late, cmd)
        req = self._executing(cmd.request, (RequestKind.SIGN, RequestKind.DECRYPT))
        key = self.state.keys[req.key_id]
        version = key.versions[req.version]
        dual = key.versions[req.dual_version] if req.dual_version else None
        if req.kind is RequestKind.SIGN and dual is not None:
            # A dual-sign request: the primary's signature, then the replaced version's.
            if len(cmd.result) != 128:
                raise Rejected(Reason.BAD_RESULT, "a dual-sign result is two signatures")
            verify_result(version.group_public_key, req.payload, cmd.result[:64])
            verify_result(dual.group_public_key, req.payload, cmd.result[64:])
            dual.uses += 1
        elif req.kind is RequestKind.SIGN:
            verify_result(version.group_public_key, req.payload, cmd.result)
        else:
            if len(cmd.result) > 64:  # (the schema allows 128 for dual-sign results)
                raise Rejected(Reason.BAD_RESULT, "a decrypt confirmation is 32..64 bytes")
            self._one_report_per_member(req, cmd.author)
            req.confirmations[cmd.author] = cmd.result
            if len(req.confirmations) < self.state.threshold:
                return self._request_effect(
                    req, detail=f"confirmations {len(req.confirmations)}/{self.state.threshold}"
                )
        payload = req.payload
        self._finish(req, rules.request_step(req.state, "complete"))
        req.result = cmd.result
        version.uses += 1
        if req.kind is RequestKind.DECRYPT and len(req.confirmations) < len(self.state.members):
            req.payload = payload  # kept while late partials may still be given
            self._linger(req)
        return self._request_effect(req)

    def _late_confirmation(self, req: Request, cmd: RecordResult) -> _Effect:
        """A member confirms a partial of an executed decrypt request that still
        lingers: one per member; the request stays executed."""
        if len(cmd.result) > 64:
            raise Rejected(Reason.BAD_RESULT, "a decrypt confirmation is 32..64 bytes")
        self._one_report_per_member(req, cmd.author)
        req.confirmations[cmd.author] = cmd.result
        done = sum(1 for m in req.confirmations if m in self.state.members)
        if done >= len(self.state.members):
            self._unlinger(req.ref)
        return self._request_effect(
            req, code="ok", detail=f"late confirmation {done}/{len(self.state.members)}")

    def _linger(self, req: Request) -> None:
        lingering = self.state.lingering
        if len(lingering) >= MAX_LINGERING:  # evict the one that ends first (not dict order:
            self._unlinger(min(lingering, key=lambda r: (lingering[r], r)))  # replicas agree)
        lingering[req.ref] = self.state.epoch + LATE_PARTIAL_EPOCHS

    def _unlinger(self, ref: str) -> None:
        self.state.lingering.pop(ref, None)
        req = self.state.requests.get(ref)
        if req is not None:
            req.payload = b""

    def late_partial(self, ref: str, member: str) -> Request | None:
        """The executed decrypt request `ref` if `member` may still give (and confirm) a
        partial for it now: it lingers, `member` has not confirmed or reported, and the
        version may still decrypt. None otherwise."""
        req = self.state.requests.get(ref)
        if req is None or ref not in self.state.lingering or req.kind is not RequestKind.DECRYPT:
            return None
        if member in req.confirmations or member in req.reports:
            return None
        if not self.may_use(req.key_id, req.version, Op.DECRYPT):
            return None
        return req

    def _one_report_per_member(self, req: Request, member: str) -> None:
        if member in req.confirmations or member in req.reports:
            raise Rejected(Reason.DUPLICATE_POST, f"{member!r} already reported on this request")

    def _record_failure(self, cmd: RecordFailure) -> _Effect:
        """A member reports it cannot take part. The request fails only once so many
        members reported that the others cannot reach the participants it needs (all n
        for a DKG, `threshold` for sign/decrypt): one member cannot cancel it for all."""
        kinds = (RequestKind.SIGN, RequestKind.DECRYPT, *DKG_KINDS)
        req = self._executing(cmd.request, kinds)
        self._one_report_per_member(req, cmd.author)
        req.reports[cmd.author] = cmd.reason
        n = len(self.state.members)
        needed = n if req.kind in DKG_KINDS else self.state.threshold
        if n - len(req.reports) >= needed:
            return self._request_effect(req, detail=f"failure reports {len(req.reports)}")
        self._fail_request(req, cmd.reason)
        return self._request_effect(req)

    def _record_erasure(self, cmd: RecordErasure) -> _Effect:
        """A member confirms it crypto-erased its share objects of a destroyed version.
        Only for a destroyed version, once per member (its id is fixed by key and version,
        so a retry is the same command); kept, sorted, in `Version.erased_by`."""
        if cmd.request_id != erasure_request_id(cmd.key_id, cmd.version):
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                f"an erasure's id is {erasure_request_id(cmd.key_id, cmd.version)}",
            )
        key = self._key(cmd.key_id)
        version = self._version(key, cmd.version)
        if version.state is not VS.DESTROYED:
            raise Rejected(Reason.NOT_DESTROYED, f"version {cmd.version} is {version.state.value}")
        if cmd.author in version.erased_by:
            raise Rejected(Reason.DUPLICATE_POST, f"{cmd.author!r} already confirmed")
        version.erased_by = tuple(sorted((*version.erased_by, cmd.author)))
        members = self.state.members
        done = sum(1 for m in version.erased_by if m in members)
        return _Effect(
            "ok", key_id=key.key_id, version=version.number,
            detail=f"erased by {done}/{len(members)} members",
        )  # fmt: skip

    def _checkpoint(self, cmd: PostCheckpoint) -> _Effect:
        """A member's signature over the state hash of the snapshot at `cmd.index`
        (`checkpoint.py`). Verified first (the signature is the authentication; it does
        not cover the request id, which must therefore be `checkpoint-<index>`). One per
        member per index, each member's indexes only move forward, and only its newest
        `MAX_CHECKPOINTS` are kept: a member posting far-future indexes only pushes out
        its own. Another member's different hash at the same index is kept apart and
        flagged loudly (`ok!fork`): replicas that computed different states there."""
        st = self.state
        verify_checkpoint(
            st.members[cmd.author].public_key, st.genesis, cmd.index, cmd.state_hash,
            cmd.signature,
        )  # fmt: skip
        if cmd.request_id != f"checkpoint-{cmd.index}":
            raise Rejected(Reason.INVALID_ARGUMENT, "a checkpoint's id is checkpoint-<index>")
        mine = st.checkpoints.get(cmd.author, ())
        for c in mine:
            if c.index == cmd.index:
                same = hmac.compare_digest(c.state_hash, cmd.state_hash)
                detail = "" if same else " with another state hash (equivocation)"
                raise Rejected(
                    Reason.DUPLICATE_POST, f"{cmd.author!r} already signed {cmd.index}{detail}"
                )
        if mine and cmd.index < mine[-1].index:
            raise Rejected(
                Reason.INVALID_ARGUMENT,
                f"checkpoints move forward: {cmd.author!r} signed {mine[-1].index} already",
            )
        st.checkpoints[cmd.author] = (*mine, Checkpoint(cmd.index, cmd.state_hash, cmd.signature))[
            -MAX_CHECKPOINTS:
        ]
        agree, other = [], []
        for name in sorted(st.checkpoints):
            for c in st.checkpoints[name]:
                if c.index == cmd.index:
                    same = hmac.compare_digest(c.state_hash, cmd.state_hash)
                    (agree if same else other).append(name)
        detail = f"index {cmd.index}: {len(agree)}/{st.threshold} signatures agree"
        if other:
            detail = f"FORK at index {cmd.index}: state hash differs from {', '.join(other)}; "
            detail += f"{len(agree)} agree"
            return _Effect("ok", detail=detail, flag="fork")
        return _Effect("ok", detail=detail)

    def _audit_checkpoint(self, cmd: PostAuditCheckpoint) -> _Effect:
        """A threshold signature by the audit key over this replica's own chain at
        `cmd.seq`: record `seq` must exist here with exactly `head` and `epoch`, the
        version must be the audit key's and usable for audit checkpoints now, the seq
        beyond the last checkpoint, and the signature must verify over the message
        computed from those fields. Kept (newest `MAX_AUDIT_CHECKPOINTS`); the audit
        record carries the signature in its `digest` field, so exports hold it."""
        st = self.state
        if cmd.request_id != audit_checkpoint_request_id(cmd.seq):
            raise Rejected(Reason.INVALID_ARGUMENT, "an audit checkpoint's id is "
                           f"{audit_checkpoint_request_id(cmd.seq)}")  # fmt: skip
        key = self._key(AUDIT_KEY_ID)
        version = self._version(key, cmd.version)
        if not rules.may_use(key.purpose, version, Op.AUDIT, st.epoch):
            raise Rejected(
                Reason.VERSION_NOT_USABLE, f"audit key version {cmd.version} may not sign now"
            )
        last = st.audit_checkpoints[-1].seq if st.audit_checkpoints else -1
        if cmd.seq <= last:
            raise Rejected(Reason.DUPLICATE_POST, f"the chain is checkpointed up to seq {last}")
        if cmd.seq >= len(st.audit):
            raise Rejected(Reason.INVALID_ARGUMENT, f"no audit record {cmd.seq} yet")
        rec = st.audit[cmd.seq]
        if not hmac.compare_digest(rec.hash, cmd.head) or rec.epoch != cmd.epoch:
            raise Rejected(
                Reason.INVALID_ARGUMENT, f"head or epoch differs from this chain's at {cmd.seq}"
            )
        message = checkpoint_message(st.cluster_id, cmd.seq, cmd.head, cmd.epoch)
        if not signature_valid(version.group_public_key, message, cmd.frost_signature):
            raise Rejected(Reason.BAD_RESULT, "not the audit key's signature over that head")
        cp = AuditCheckpoint(cmd.seq, cmd.head, cmd.epoch, cmd.version, cmd.frost_signature)
        st.audit_checkpoints = (*st.audit_checkpoints, cp)[-MAX_AUDIT_CHECKPOINTS:]
        st.audit_checkpoint_count += 1
        return _Effect(
            "ok", key_id=AUDIT_KEY_ID, version=cmd.version, digest=cmd.frost_signature,
            detail=f"audit chain checkpointed at seq {cmd.seq}",
        )  # fmt: skip

    def _fail_request(self, req: Request, failure: str) -> None:
        """Fail an open request; a create/rotate request's unfinished version is aborted."""
        self._finish(req, rules.request_step(req.state, "fail"), failure)
        if req.kind in DKG_KINDS and req.version:
            key = self.state.keys[req.key_id]
            version = key.versions[req.version]
            if version.state is VS.PENDING and not version.activation_epoch:
                self._set_version_state(key, version, "abort")

    @staticmethod
    def _request_effect(req: Request, code: str = "", detail: str = "", flag: str = "") -> _Effect:
        return _Effect(
            code or req.state.value, subject=req.ref, key_id=req.key_id, version=req.version,
            digest=req.digest, detail=detail, flag=flag,
        )  # fmt: skip

    # ---------------------------------------------------------- governance

    def _check_bootstrap_governance(self, cmd: Bootstrap) -> None:
        roles = {p.name: p.role for p in cmd.principals}
        if any(roles.get(n) != Role.APPROVER.value for n in cmd.governance_approvers):
            raise Rejected(
                Reason.INVALID_CLUSTER, "governance approvers must be approvers it registers"
            )
        if not 1 <= cmd.governance_k <= len(cmd.governance_approvers):
            raise Rejected(Reason.INVALID_CLUSTER, "need 1 <= governance k <= its approvers")
        if cmd.governance_k < 2 and not cmd.unsafe:
            raise Rejected(
                Reason.INVALID_CLUSTER, "governance k=1 lets one approver govern (needs unsafe)"
            )

    def _submit_change(self, cmd: GovernanceCommand) -> _Effect:
        """Open a governance request: checked against the state now (a change that cannot
        apply is refused at once), decided only by the governance quorum (`approve`)."""
        self._changes[type(cmd)][0](cmd)
        gov = self.state.governance
        req = self._open_request(
            cmd, RequestKind(cmd.KIND), key_id="", purpose="", policy_id="",
            policy_hash=governance_hash_of(gov), approvers=gov.approvers, k=gov.k,
            payload=signing_bytes(cmd),
        )  # fmt: skip
        self._register(req)
        why = self._weakening(cmd)
        if not why:
            return self._request_effect(req)
        detail = f"WEAKENING ({', '.join(why)}): waits {gov.time_lock_epochs} epochs once approved"
        return self._request_effect(req, detail=detail, flag="weakening")

    def _change_of(self, req: Request) -> GovernanceCommand:
        return decode_change(req.payload)  # restore checked that it decodes

    def _subjects(self, req: Request) -> frozenset[str]:
        """Whose own key or role a governance request adds or changes: they may not approve it."""
        if req.kind not in rules.GOVERNANCE_KINDS or not req.payload:
            return frozenset()
        change = self._change_of(req)
        if isinstance(change, AddPrincipal | RemovePrincipal | RekeyPrincipal):
            return frozenset({change.name})
        if isinstance(change, SetGovernance):
            return frozenset(change.approvers) - frozenset(req.approvers)
        return frozenset()

    def _weakening(self, change: GovernanceCommand) -> list[str]:
        """How `change` would weaken protection now (empty: it may take effect on approval)."""
        st = self.state
        kind = RequestKind(change.KIND)
        if kind in rules.ALWAYS_WEAKENING:
            return [{RK.SET_OFFICERS: "officers", RK.EXPORT_KEY: "break-glass export"}.get(
                kind, "membership")]
        if kind is RK.REKEY_PRINCIPAL and self._live_grants(change.name):
            return [f"grantee {change.name}"]  # a new holder of the grants' capability
        if kind in rules.APPROVER_WEAKENING:
            who = st.principals.get(change.name)
            role = change.role if isinstance(change, AddPrincipal) else who.role if who else ""
            return [f"approver {change.name}"] if role == Role.APPROVER.value else []
        if isinstance(change, SetPolicy):
            old = st.policies.get(change.policy_id)
            return [] if old is None else rules.weaker_fields(rules.POLICY_WEAKER, old, change)
        if isinstance(change, SetGovernance):
            return rules.weaker_fields(rules.GOVERNANCE_WEAKER, st.governance, change)
        if isinstance(change, SetThreshold):
            return ["threshold"] if change.threshold < st.threshold else []
        if isinstance(change, RepairMember):
            return self._repair_weakening(change)
        return []

    def _on_governance_approved(self, req: Request) -> _Effect:
        """The quorum is met: apply now, or start the time lock of a weakening change.
        A change the state no longer allows (e.g. the name was taken since) fails."""
        change = self._change_of(req)
        check = self._changes[type(change)][0]
        try:
            check(change)
        except Rejected as rej:
            self._fail_request(req, rej.reason.value)
            return self._request_effect(req, detail=rej.detail)
        if req.kind in OFFICER_KINDS:
            have, k = self.officers_approved(req.ref), self.state.officers.k
            if have < k:
                return self._request_effect(
                    req, detail=f"waits for officers: {have} of {k} approved", flag="recovery"
                )
        return self._after_quorum(req, change)

    def _after_quorum(self, req: Request, change: GovernanceCommand) -> _Effect:
        """Every approval it needs is in: start its time lock if it weakens, else apply."""
        why = self._weakening(change)
        if why:
            req.effective_epoch = self.state.epoch + self.state.governance.time_lock_epochs
            detail = (
                f"WEAKENING ({', '.join(why)}): takes effect at epoch {req.effective_epoch}"
                " unless the governance quorum cancels it"
            )
            return self._request_effect(req, detail=detail, flag="weakening")
        return self._execute_change(req, change)

    def _execute_change(self, req: Request, change: GovernanceCommand) -> _Effect:
        check, apply = self._changes[type(change)]
        try:
            check(change)
        except Rejected as rej:
            self._fail_request(req, rej.reason.value)
            return self._request_effect(req, detail=rej.detail)
        self._finish(req, rules.request_step(req.state, "complete"))
        apply(change)
        if isinstance(change, RecoverMembers):
            return self._request_effect(req, detail="RECOVERY: fresh nodes take the members' "
                                        "places", flag="recovery")  # fmt: skip
        return self._request_effect(req)

    def _apply_time_locked(self, epoch: int) -> list[str]:
        """Apply the approved weakening changes whose time lock ends by `epoch`, in
        (effective epoch, reference) order. Each is re-checked: its approvals must still
        verify (removed or re-keyed approvers no longer count) and the state must still
        allow it; otherwise it fails."""
        st = self.state
        due = sorted(
            (st.requests[r].effective_epoch, r)
            for r in st.open
            if st.requests[r].effective_epoch and st.requests[r].effective_epoch <= epoch
        )
        changed = []
        for _, ref_ in due:
            req = st.requests[ref_]
            if req.state is not RS.APPROVED:  # an earlier change in this loop ended it
                continue
            change = self._change_of(req)
            check, apply = self._changes[type(change)]
            if not quorum_met(len(self._valid_approvers(req)), req.k):
                self._fail_request(req, "quorum_lost")
                continue
            if req.kind in OFFICER_KINDS and self.officers_approved(ref_) < st.officers.k:
                self._fail_request(req, "officers_changed")  # approvals of a replaced set
                continue
            try:
                check(change)
            except Rejected as rej:
                self._fail_request(req, rej.reason.value)
                continue
            self._finish(req, rules.request_step(req.state, "complete"))
            apply(change)
            changed.append(ref_)
        return changed

    # The checks below only raise; the effects only mutate (after their check passed).

    def _check_add_principal(self, cmd: AddPrincipal) -> None:
        self._ensure_new_name(cmd.name)
        self._check_principal_key(cmd.role, cmd.public_key)
        if cmd.public_key and self._key_in_use(cmd.public_key):
            raise Rejected(Reason.INVALID_PRINCIPAL, "a public key may belong to one identity only")
        if len(self.state.principals) >= MAX_PRINCIPALS:
            raise Rejected(Reason.LIMIT_REACHED, "too many principals")

    def _add_principal(self, cmd: AddPrincipal) -> None:
        self.state.principals[cmd.name] = Principal(cmd.name, Role(cmd.role), cmd.public_key)

    def _principal(self, name: str) -> Principal:
        who = self.state.principals.get(name)
        if who is None:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no principal {name!r}")
        return who

    def _check_remove_principal(self, cmd: RemovePrincipal) -> None:
        """Removal drops the name from every policy and the governance policy; refused
        if that would leave any of them with fewer approvers than its k."""
        self._principal(cmd.name)
        quorums = [(f"policy {p.policy_id!r}", p.approvers, p.k) for p in self._policies()]
        gov = self.state.governance
        quorums.append(("the governance policy", gov.approvers, gov.k))
        for where, approvers, k in quorums:
            if cmd.name in approvers and len(approvers) - 1 < k:
                raise Rejected(
                    Reason.INVALID_POLICY, f"removing {cmd.name!r} leaves {where} below k={k}"
                )

    def _policies(self) -> list[Policy]:
        return [self.state.policies[p] for p in sorted(self.state.policies)]

    def _remove_principal(self, cmd: RemovePrincipal) -> None:
        st = self.state
        st.removed_principals[cmd.name] = st.principals.pop(cmd.name)
        for policy in self._policies():
            policy.approvers = tuple(n for n in policy.approvers if n != cmd.name)
            policy.requesters = tuple(n for n in policy.requesters if n != cmd.name)
        st.governance.approvers = tuple(n for n in st.governance.approvers if n != cmd.name)

    def _check_rekey_principal(self, cmd: RekeyPrincipal) -> None:
        """A new key is checked strictly, like a registration, and is never a used one."""
        who = self._principal(cmd.name)
        self._check_principal_key(who.role.value, cmd.public_key)
        if self._key_in_use(cmd.public_key):
            raise Rejected(Reason.INVALID_PRINCIPAL, "a public key may belong to one identity only")

    def _rekey_principal(self, cmd: RekeyPrincipal) -> None:
        self.state.principals[cmd.name].public_key = cmd.public_key

    def _check_set_policy(self, cmd: SetPolicy) -> None:
        for name, role in [(n, Role.CLIENT) for n in cmd.requesters] + [
            (n, Role.APPROVER) for n in cmd.approvers
        ]:
            if self._principal(name).role is not role:
                raise Rejected(Reason.INVALID_POLICY, f"{name!r} is not a {role.value}")
        if not 1 <= cmd.k <= len(cmd.approvers):
            raise Rejected(Reason.INVALID_POLICY, "need 1 <= k <= number of approvers")
        if cmd.dual_sign_epochs > cmd.grace_epochs:
            raise Rejected(
                Reason.INVALID_POLICY,
                "dual_sign_epochs must be <= grace_epochs (a destroyable version cannot sign)",
            )
        new = cmd.policy_id not in self.state.policies
        if new and len(self.state.policies) >= MAX_POLICIES:
            raise Rejected(Reason.LIMIT_REACHED, "too many policies")

    def _set_policy(self, cmd: SetPolicy) -> None:
        self.state.policies[cmd.policy_id] = Policy(
            policy_id=cmd.policy_id,
            requesters=tuple(sorted(cmd.requesters)),
            operations=tuple(sorted(cmd.operations)),
            approvers=tuple(sorted(cmd.approvers)),
            k=cmd.k,
            rotation_interval_s=cmd.rotation_interval_s,
            max_uses=cmd.max_uses,
            grace_epochs=cmd.grace_epochs,
            waiting_epochs=cmd.waiting_epochs,
            escrow=cmd.escrow,
            dual_sign_epochs=cmd.dual_sign_epochs,
        )

    def _check_set_governance(self, cmd: SetGovernance) -> None:
        for name in cmd.approvers:
            if self._principal(name).role is not Role.APPROVER:
                raise Rejected(Reason.INVALID_POLICY, f"{name!r} is not an approver")
        if not 1 <= cmd.k <= len(cmd.approvers):
            raise Rejected(Reason.INVALID_POLICY, "need 1 <= k <= number of approvers")
        if cmd.k < 2 and not self.state.unsafe:
            raise Rejected(Reason.INVALID_POLICY, "governance k=1 needs an unsafe cluster")

    def _set_governance(self, cmd: SetGovernance) -> None:
        """Pending governance requests fail: they were to be decided by the old quorum.
        (Approved, time-locked ones stand; the new quorum can cancel them.)"""
        st = self.state
        st.governance = Governance(tuple(sorted(cmd.approvers)), cmd.k, cmd.time_lock_epochs)
        for r in sorted(st.open):
            req = st.requests[r]
            if req.kind in rules.GOVERNANCE_KINDS and req.state is RS.PENDING:
                self._fail_request(req, "governance_changed")

    def _check_threshold(self, threshold: int, n: int) -> None:
        if not 1 <= threshold <= n:
            raise Rejected(Reason.INVALID_CLUSTER, f"threshold {threshold} of {n} members")
        if n >= 2 and threshold < 2 and not self.state.unsafe:
            raise Rejected(Reason.INVALID_CLUSTER, "threshold 1 lets one member act alone")

    def _check_set_threshold(self, cmd: SetThreshold) -> None:
        self._check_threshold(cmd.threshold, len(self.state.members))

    def _set_threshold(self, cmd: SetThreshold) -> None:
        self.state.threshold = cmd.threshold

    def _check_add_member(self, cmd: AddMember) -> None:
        if member_index(cmd.name) != cmd.index:
            raise Rejected(Reason.INVALID_CLUSTER, "member node-<i> must have index i")
        self._ensure_new_name(cmd.name)  # an index is never reused, not even a removed one's
        if not valid_public_key(cmd.public_key) or self._key_in_use(cmd.public_key):
            raise Rejected(Reason.INVALID_CLUSTER, "member keys must be distinct Ed25519 keys")
        if len(self.state.members) >= MAX_MEMBERS:
            raise Rejected(Reason.LIMIT_REACHED, "too many members")
        check_address_pair(cmd.raft_address, cmd.api_address)

    def _add_member(self, cmd: AddMember) -> None:
        self.state.members[cmd.name] = Member(cmd.name, cmd.index, cmd.public_key)
        if cmd.raft_address:
            self.state.addresses[cmd.name] = Address(cmd.raft_address, cmd.api_address)
        self._membership_changed()

    def _check_remove_member(self, cmd: RemoveMember) -> None:
        if cmd.name not in self.state.members:
            raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no member {cmd.name!r}")
        self._check_threshold(self.state.threshold, len(self.state.members) - 1)
        short = self.versions_short_of_holders(without=cmd.name)
        if short:
            raise Rejected(
                Reason.INVALID_CLUSTER,
                f"removing {cmd.name} leaves fewer than t={self.state.threshold} holders of "
                f"{', '.join(short[:3])}{' ...' if len(short) > 3 else ''} (rotate or repair "
                "first)",
            )

    def _remove_member(self, cmd: RemoveMember) -> None:
        """Its epoch vote and its reports on open requests stop counting."""
        st = self.state
        st.removed_members[cmd.name] = st.members.pop(cmd.name)
        st.addresses.pop(cmd.name, None)
        st.epoch_votes.pop(cmd.name, None)
        st.checkpoints.pop(cmd.name, None)  # a removed member certifies nothing any more
        for r in sorted(st.open):
            st.requests[r].confirmations.pop(cmd.name, None)
            st.requests[r].reports.pop(cmd.name, None)
            st.requests[r].dkg_round1.pop(cmd.name, None)
        self._repair_member_removed(cmd.name)
        self._membership_changed()

    def _membership_changed(self) -> None:
        """A DKG under way was run for the old member set: it fails (its version aborted);
        so does a refresh (it needs every member)."""
        self._refresh_membership_changed()
        st = self.state
        for r in sorted(st.open):
            req = st.requests[r]
            if req.kind in DKG_KINDS and req.state is RS.APPROVED:
                self._fail_request(req, "membership_changed")

    def _check_cancel(self, cmd: CancelRequest) -> None:
        target = self._request(cmd.request)
        if target.kind not in rules.GOVERNANCE_KINDS or target.kind is RK.CANCEL:
            raise Rejected(Reason.WRONG_REQUEST_KIND, "only governance changes can be cancelled")
        if target.state not in (RS.PENDING, RS.APPROVED):
            raise Rejected(Reason.REQUEST_DECIDED, f"request already {target.state.value}")

    def _cancel(self, cmd: CancelRequest) -> None:
        target = self.state.requests[cmd.request]
        self._finish(target, rules.request_step(target.state, "cancel"), "cancelled")

    # ------------------------------------------------------------- queries

    def audit_head(self) -> bytes:
        return self.state.audit[-1].hash if self.state.audit else GENESIS

    def active_version(self, key_id: str, epoch: int | None = None) -> int | None:
        """Which version of `key_id` is active at `epoch` (default: now)? None if none."""
        key = self.state.keys.get(key_id)
        if key is None:
            return None
        at = self.state.epoch if epoch is None else epoch
        active = [n for n, v in key.versions.items() if rules.version_state_at(v, at) is VS.ACTIVE]
        return max(active, default=None)

    def may_use(self, key_id: str, version: int, op: Op | str, epoch: int | None = None) -> bool:
        """May `version` of `key_id` be used for `op` at `epoch` (default: now)?"""
        key = self.state.keys.get(key_id)
        v = key.versions.get(version) if key else None
        if key is None or v is None:
            return False
        at = self.state.epoch if epoch is None else epoch
        return rules.may_use(key.purpose, v, Op(op), at)

    def dual_signable(self, key_id: str, version: int) -> bool:
        """May `version` of `key_id` sign now as the second signer of a dual-sign request?
        Only while an approved sign request names it as its `dual_version` and it may
        still dual-sign (a retired version signs nothing else: `rules.DUAL_SIGN_STATES`)."""
        key = self.state.keys.get(key_id)
        v = key.versions.get(version) if key else None
        if key is None or v is None or not rules.may_dual_sign(key.purpose, v, self.state.epoch):
            return False
        requests = self.state.requests
        return any(
            requests[r].key_id == key_id and requests[r].dual_version == version
            and requests[r].state is RS.APPROVED
            for r in self.state.open
        )  # fmt: skip

    def rotation_due(self, key_id: str, now: int) -> bool:
        """Does the key's policy call for a new version at wall-clock `now` (seconds)?"""
        key = self.state.keys.get(key_id)
        if key is None or key.primary == 0 or key.policy_id not in self.state.policies:
            return False  # (the audit key has no policy: it never rotates by schedule)
        policy = self.state.policies[key.policy_id]
        v = key.versions[key.primary]
        by_time = (
            policy.rotation_interval_s > 0 and now - v.activated_at >= policy.rotation_interval_s
        )
        # Uses since it became the primary (again: a rollback restarts the count).
        by_use = policy.max_uses > 0 and v.uses - v.rollback_uses >= policy.max_uses
        return by_time or by_use

    def dkg_round1(self, ref: str) -> dict[str, bytes]:
        """The DKG round-1 packages posted for request `ref` (member -> package, in
        member-name order; a copy). Empty if the request is unknown or decided."""
        req = self.state.requests.get(ref)
        return {m: req.dkg_round1[m] for m in sorted(req.dkg_round1)} if req else {}

    def open_requests(self, kind: RequestKind | str | None = None) -> list[Request]:
        """Requests still pending approval or waiting for execution, in request-id order."""
        want = RequestKind(kind) if kind is not None else None
        found = (self.state.requests[rid] for rid in sorted(self.state.open))
        return [req for req in found if want is None or req.kind is want]

    def executable(self, request_id: str) -> Request:
        """The request, if this replica agrees it may be executed now; else Rejected.

        A node calls this before contributing a signature or decryption share or
        joining a DKG. It trusts nothing stored for authorisation (a leader may have
        sent this replica a snapshot instead of log entries): the digest is recomputed
        from the request's own fields and payload, and every approval is re-verified
        against its approver's registered key (a rotation scheduled by a node, approved
        by policy, has none).
        """
        req = self._request(request_id)
        if req.kind in rules.GOVERNANCE_KINDS or req.kind is RequestKind.GRANT:
            raise Rejected(
                Reason.WRONG_REQUEST_KIND, f"a {req.kind.value} request is not for members"
            )
        if req.state is not RS.APPROVED:
            raise Rejected(Reason.NOT_APPROVED, f"request is {req.state.value}")
        key = self.state.keys.get(req.key_id)
        if key is None or (req.version and req.version not in key.versions):
            raise Rejected(Reason.UNKNOWN_KEY, "request names no existing key version")
        if not self._still_possible(req):
            raise Rejected(Reason.VERSION_NOT_USABLE, "key version no longer usable")
        if req.kind in (RequestKind.SIGN, RequestKind.DECRYPT) and not req.payload:
            raise Rejected(Reason.NOT_APPROVED, "request has no payload to execute")
        scheduled = req.kind is RequestKind.ROTATE and req.author in self.state.members
        # The audit key's creation is approved by the bootstrap itself (no approvals): a
        # forged state could at most make a new audit key version, which exposes nothing.
        scheduled = scheduled or (req.kind in DKG_KINDS and key.purpose is Purpose.AUDIT)
        if req.grant:
            self._require_grant(req)
        elif not scheduled:
            self._require_quorum(req)
        return req

    def _require_grant(self, req: Request) -> None:
        """A request made under a grant, re-checked from scratch on this replica: the grant
        is active, not expired (now, and at submission), covers this grantee, key,
        operation and context, this use is within its uses; its own quorum's approvals
        verify over the digest rebuilt from the grant's fields; and the grantee's
        signature verifies over the command rebuilt from the request."""
        st = self.state
        grant = st.grants.get(req.grant)
        if grant is None:
            raise Rejected(Reason.UNKNOWN_GRANT, f"no grant {req.grant!r}")
        if grant.state is not GrantState.ACTIVE:
            raise Rejected(Reason.GRANT_NOT_ACTIVE, f"grant is {grant.state.value}")
        if max(st.epoch, req.submitted_epoch) >= grant.expires_epoch:
            raise Rejected(Reason.GRANT_EXPIRED, f"grant expired at epoch {grant.expires_epoch}")
        within = (
            grant.grantee == req.author and grant.key_id == req.key_id
            and op_of(req.kind) in grant.operations and context_matches(grant, req.context)
            and 1 <= req.grant_use <= grant.max_uses
        )  # fmt: skip
        if not within:
            raise Rejected(Reason.OUTSIDE_GRANT, "the request is outside its grant")
        greq = st.requests.get(grant.request)
        own = greq is not None and greq.kind is RequestKind.GRANT and greq.grant == grant.grant_id
        if not own or greq.state is not RS.EXECUTED or greq.key_id != grant.key_id:
            raise Rejected(Reason.NOT_APPROVED, "the grant's own request is not approved")
        try:
            digest = digest_of(greq, st.cluster_id, payload_hash(grant_payload(grant)))
        except (DecodeError, ValueError, TypeError):
            raise Rejected(Reason.NOT_APPROVED, "the grant does not encode") from None
        valid = self._valid_approvers(greq, digest)
        if greq.k < 1 or not quorum_met(len(valid), greq.k):
            raise Rejected(
                Reason.NOT_APPROVED, f"grant: {len(valid)} valid approvals, {greq.k} required"
            )
        grantee = st.principals.get(req.author)
        if grantee is None or grantee.role is not Role.CLIENT:
            raise Rejected(Reason.UNKNOWN_AUTHOR, "the grantee is not a registered client")
        try:
            verify_command_signature(grantee.public_key, grantee_command(req), st.cluster_id)
        except (DecodeError, ValueError, TypeError):
            raise Rejected(Reason.BAD_SIGNATURE, "the grantee's command does not encode") from None

    def _fresh_digest(self, req: Request) -> bytes:
        """The request's digest from its own fields and payload, never from `req.digest`."""
        phash = payload_hash(req.payload) if req.payload else req.payload_hash
        return digest_of(req, self.state.cluster_id, phash)

    def _valid_approvers(self, req: Request, digest: bytes | None = None) -> list[str]:
        """Approvers whose stored approval verifies now: named in the request's quorum,
        registered (not removed) as approvers, not the subject of the change, over the
        recomputed digest with their current key (an approval made with a replaced key
        no longer counts). `digest`: one recomputed by the caller (a grant's, from its
        fields)."""
        digest = digest if digest is not None else self._fresh_digest(req)
        subjects = self._subjects(req)
        valid = []
        for name in sorted(req.approvals):
            who = self.state.principals.get(name)  # a removed principal is no longer here
            if name not in req.approvers or who is None or who.role is not Role.APPROVER:
                continue
            if name in subjects:  # nobody approves a change of their own key or role
                continue
            try:
                verify_approval(who.public_key, digest, req.approvals[name])
            except Rejected:
                continue
            valid.append(name)
        return valid

    def _require_quorum(self, req: Request) -> None:
        valid = self._valid_approvers(req)
        if req.k < 1 or not quorum_met(len(valid), req.k):
            raise Rejected(Reason.NOT_APPROVED, f"{len(valid)} valid approvals, {req.k} required")
