"""The custody state machine: `apply` one command, deterministically.

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
)
from .audit import GENESIS, make_record
from .commands import (
    SIGNED_KINDS,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    Bootstrap,
    Command,
    CreateKey,
    RecordDkgResult,
    RecordFailure,
    RecordResult,
    RequestDecrypt,
    RequestDestroy,
    RequestRevoke,
    RequestRotate,
    RequestSign,
    SetPolicy,
    decode_command,
    encode_command,
)
from .digest import command_digest, dkg_post_digest, payload_hash, request_digest
from .errors import DecodeError, Reason, Rejected
from .model import (
    Dedup,
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
from .snapshot import decode_state, encode_state

MAX_PRINCIPALS = 1024
MAX_POLICIES = 256
MAX_KEYS = 4096
MAX_OPEN_REQUESTS = 10_000  # pending or approved, cluster-wide (payloads live in the state)
MAX_OPEN_PER_AUTHOR = 1_000  # so that one client cannot fill the cluster's share
OUTCOME_VERSION = 1

RS = RequestState
VS = VersionState


@dataclass(frozen=True, slots=True)
class _Effect:
    """What an accepted command did, for its outcome and audit record."""

    code: str
    subject: str = ""
    key_id: str = ""
    version: int = 0
    digest: bytes = b""
    detail: str = ""


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


class Machine:
    """Applies commands to one `State`. Deterministic: same commands, same bytes."""

    def __init__(self, state: State | None = None) -> None:
        self.state = state if state is not None else State()
        self._handlers: dict[type[Command], Callable[[Any], _Effect]] = {
            Bootstrap: self._bootstrap,
            AddPrincipal: self._add_principal,
            SetPolicy: self._set_policy,
            AdvanceEpoch: self._advance_epoch,
            CreateKey: self._create_key,
            RequestSign: self._request_sign,
            RequestDecrypt: self._request_decrypt,
            RequestRotate: self._request_rotate,
            RequestRevoke: self._request_revoke,
            RequestDestroy: self._request_destroy,
            Approve: self._approve,
            RecordDkgResult: self._record_dkg_result,
            RecordResult: self._record_result,
            RecordFailure: self._record_failure,
        }

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
        """Replace the state by a snapshot (checked first; on error the state is unchanged)."""
        self.state = decode_state(data)

    @classmethod
    def from_snapshot(cls, data: bytes) -> Machine:
        return cls(decode_state(data))

    # --------------------------------------------------------------- apply

    def apply_command(self, cmd: Command) -> Outcome:
        """Apply a command value: accepted (state + one audit record) or rejected (audited)."""
        cdig = command_digest(encode_command(cmd))
        prior = self.state.outcomes.get(cmd.request_id)
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
        else:
            rec = self._append_audit(
                cmd,
                subject=effect.subject or cmd.request_id,
                key_id=effect.key_id,
                version=effect.version,
                digest=effect.digest or cdig,
                outcome=effect.code,
            )
            outcome = Outcome(cmd.request_id, True, effect.code, effect.detail, rec.seq)
        self.state.outcomes[cmd.request_id] = Dedup(cdig, outcome)
        return outcome

    def _audit_rejection(self, cmd: Command, rej: Rejected, cdig: bytes) -> Outcome:
        subject = getattr(cmd, "request", cmd.request_id)
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
        if cmd.KIND in SIGNED_KINDS:
            who = self.state.members.get(cmd.author) or self.state.principals[cmd.author]
            verify_command_signature(who.public_key, cmd, self.state.cluster_id)

    # ------------------------------------------------------------- helpers

    def _key(self, key_id: str) -> Key:
        key = self.state.keys.get(key_id)
        if key is None:
            raise Rejected(Reason.UNKNOWN_KEY, f"no key {key_id!r}")
        return key

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
        digest = request_digest(
            cluster_id=self.state.cluster_id,
            kind=kind.value,
            request_id=cmd.request_id,
            author=cmd.author,
            key_id=key.key_id,
            version=version,
            context=context,
            payload_sha512=phash,
            activate_epoch=activate_epoch,
        )
        return Request(
            request_id=cmd.request_id,
            kind=kind,
            author=cmd.author,
            key_id=key.key_id,
            version=version,
            context=context,
            payload_hash=phash,
            digest=digest,
            submitted_epoch=self.state.epoch,
            approvers=policy.approvers,
            k=policy.k,
            activate_epoch=activate_epoch,
            payload=payload,
        )

    def _register(self, req: Request) -> None:
        self.state.requests[req.request_id] = req
        self.state.open[req.request_id] = req.author

    def _still_possible(self, req: Request) -> bool:
        """Can `req` still take effect, given its version's current state?"""
        if req.version == 0:
            return True
        key = self.state.keys[req.key_id]
        version = key.versions[req.version]
        if req.kind in (RequestKind.CREATE_KEY, RequestKind.ROTATE):
            return version.state is VS.PENDING
        if req.kind is RequestKind.SIGN:
            return rules.may_use(key.purpose, version, Op.SIGN, self.state.epoch)
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
            if requests[rid].key_id == key_id and requests[rid].version == number
        )
        for rid in affected:
            req = self.state.requests[rid]
            if not self._still_possible(req):
                state = self.state.keys[key_id].versions[number].state
                self._finish(req, rules.request_step(req.state, "fail"), f"version_{state.value}")

    def _finish(self, req: Request, state: RequestState, failure: str = "") -> None:
        req.state = state
        self.state.open.pop(req.request_id, None)
        req.failure = failure
        req.payload = b""
        req.decided_epoch = req.decided_epoch or self.state.epoch
        key = self.state.keys.get(req.key_id)
        if key is not None and key.lifecycle_request == req.request_id:
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
        if key.primary == version.number and version.state is not VS.ACTIVE:
            key.primary = 0
        self._fail_impossible(key.key_id, version.number)

    def _ensure_new_name(self, name: str) -> None:
        if name in self.state.principals or name in self.state.members:
            raise Rejected(Reason.DUPLICATE_NAME, f"{name!r} is already registered")

    def _key_in_use(self, public_key: bytes) -> bool:
        """One key, one identity: else one approver could cast two votes."""
        return any(p.public_key == public_key for p in self.state.principals.values()) or any(
            m.public_key == public_key for m in self.state.members.values()
        )

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
        members, principals = cmd.members, cmd.principals
        if not members or not 1 <= cmd.threshold <= len(members):
            raise Rejected(Reason.INVALID_CLUSTER, "need 1 <= threshold <= number of members")
        names = [m.name for m in members] + [p.name for p in principals]
        if len(set(names)) != len(names):
            raise Rejected(Reason.DUPLICATE_NAME, "member and principal names must be unique")
        if len({m.index for m in members}) != len(members):
            raise Rejected(Reason.INVALID_CLUSTER, "participant indices must be unique")
        if len({m.public_key for m in members}) != len(members) or not all(
            valid_public_key(m.public_key) for m in members
        ):
            raise Rejected(Reason.INVALID_CLUSTER, "member keys must be distinct Ed25519 keys")
        for p in principals:
            self._check_principal_key(p.role, p.public_key)
        keys = [m.public_key for m in members] + [p.public_key for p in principals if p.public_key]
        if len(set(keys)) != len(keys):
            raise Rejected(Reason.INVALID_PRINCIPAL, "a public key may belong to one identity only")
        author = [p for p in principals if p.name == cmd.author and p.role == Role.OPERATOR]
        if not author:
            raise Rejected(
                Reason.UNAUTHORIZED, "bootstrap must be authored by one of its operators"
            )
        verify_command_signature(author[0].public_key, cmd, cmd.cluster_id)
        st = self.state
        st.cluster_id, st.threshold, st.epoch = cmd.cluster_id, cmd.threshold, 1
        for m in members:
            st.members[m.name] = Member(m.name, m.index, m.public_key)
        for p in principals:
            st.principals[p.name] = Principal(p.name, Role(p.role), p.public_key)
        return _Effect("ok")

    def _add_principal(self, cmd: AddPrincipal) -> _Effect:
        self._ensure_new_name(cmd.name)
        self._check_principal_key(cmd.role, cmd.public_key)
        if cmd.public_key and self._key_in_use(cmd.public_key):
            raise Rejected(Reason.INVALID_PRINCIPAL, "a public key may belong to one identity only")
        if len(self.state.principals) >= MAX_PRINCIPALS:
            raise Rejected(Reason.LIMIT_REACHED, "too many principals")
        self.state.principals[cmd.name] = Principal(cmd.name, Role(cmd.role), cmd.public_key)
        return _Effect("ok")

    def _set_policy(self, cmd: SetPolicy) -> _Effect:
        for name, role in [(n, Role.CLIENT) for n in cmd.requesters] + [
            (n, Role.APPROVER) for n in cmd.approvers
        ]:
            p = self.state.principals.get(name)
            if p is None:
                raise Rejected(Reason.UNKNOWN_PRINCIPAL, f"no principal {name!r}")
            if p.role is not role:
                raise Rejected(Reason.INVALID_POLICY, f"{name!r} is not a {role.value}")
        if not 1 <= cmd.k <= len(cmd.approvers):
            raise Rejected(Reason.INVALID_POLICY, "need 1 <= k <= number of approvers")
        new = cmd.policy_id not in self.state.policies
        if new and len(self.state.policies) >= MAX_POLICIES:
            raise Rejected(Reason.LIMIT_REACHED, "too many policies")
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
        )
        return _Effect("ok")

    def _advance_epoch(self, cmd: AdvanceEpoch) -> _Effect:
        if cmd.epoch <= self.state.epoch:
            raise Rejected(Reason.EPOCH_NOT_FORWARD, f"epoch is {self.state.epoch}")
        self.state.epoch = cmd.epoch
        activated = []
        for key_id in sorted(self.state.keys):
            key = self.state.keys[key_id]
            for number in sorted(key.versions):
                v = key.versions[number]
                if v.state is VS.PENDING and v.activation_epoch and v.activation_epoch <= cmd.epoch:
                    self._activate(key, v, cmd.at)
                    activated.append(f"{key_id}@{number}")
        return _Effect("ok", detail=",".join(activated))

    def _activate(self, key: Key, v: Version, at: int) -> None:
        v.state = rules.version_step(v.state, "activate")
        v.activated_at = at
        old = key.versions.get(key.primary)
        key.primary = v.number
        if old is not None and old.state is VS.ACTIVE:
            old.retired_epoch = v.activation_epoch  # retires when its successor activates
            self._set_version_state(key, old, "retire")

    def _create_key(self, cmd: CreateKey) -> _Effect:
        if cmd.key_id in self.state.keys:
            raise Rejected(Reason.KEY_EXISTS, f"key {cmd.key_id!r} exists")
        policy = self.state.policies.get(cmd.policy_id)
        if policy is None:
            raise Rejected(Reason.UNKNOWN_POLICY, f"no policy {cmd.policy_id!r}")
        if len(self.state.keys) >= MAX_KEYS:
            raise Rejected(Reason.LIMIT_REACHED, "too many keys")
        key = Key(cmd.key_id, Purpose(cmd.purpose), cmd.policy_id)
        req = self._new_request(
            cmd, RequestKind.CREATE_KEY, key, 0, policy=policy, activate_epoch=cmd.activate_epoch
        )
        key.lifecycle_request = req.request_id
        self.state.keys[key.key_id] = key
        self._register(req)
        return _Effect(req.state.value, key_id=key.key_id, digest=req.digest)

    def _request_use(self, cmd: RequestSign | RequestDecrypt, op: Op, payload: bytes) -> _Effect:
        key = self._key(cmd.key_id)
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
        kind = RequestKind.SIGN if op is Op.SIGN else RequestKind.DECRYPT
        req = self._new_request(cmd, kind, key, number, cmd.context, payload)
        self._register(req)
        return _Effect(req.state.value, key_id=key.key_id, version=number, digest=req.digest)

    def _request_sign(self, cmd: RequestSign) -> _Effect:
        return self._request_use(cmd, Op.SIGN, cmd.message)

    def _request_decrypt(self, cmd: RequestDecrypt) -> _Effect:
        return self._request_use(cmd, Op.DECRYPT, cmd.ciphertext)

    def _request_rotate(self, cmd: RequestRotate) -> _Effect:
        key = self._key(cmd.key_id)
        if key.lifecycle_request or any(v.state is VS.PENDING for v in key.versions.values()):
            raise Rejected(Reason.ROTATION_IN_PROGRESS, "a new version is already on its way")
        scheduled = cmd.author in self.state.members
        if scheduled and not self.rotation_due(key.key_id, cmd.at):
            raise Rejected(Reason.ROTATION_NOT_DUE, "policy does not call for rotation yet")
        req = self._new_request(cmd, RequestKind.ROTATE, key, 0, activate_epoch=cmd.activate_epoch)
        self._register(req)
        key.lifecycle_request = req.request_id
        if scheduled:  # the policy itself is the approval of a due, scheduled rotation
            req.state = rules.request_step(req.state, "quorum")
            req.decided_epoch = self.state.epoch
            self._new_version(key, req)
        return _Effect(req.state.value, key_id=key.key_id, version=req.version, digest=req.digest)

    def _request_end(self, cmd: RequestRevoke | RequestDestroy, kind: RequestKind) -> _Effect:
        key = self._key(cmd.key_id)
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

    def _new_version(self, key: Key, req: Request) -> None:
        number = max(key.versions, default=0) + 1
        key.versions[number] = Version(number, VS.PENDING, req.request_id)
        req.version = number

    def _approve(self, cmd: Approve) -> _Effect:
        req = self._request(cmd.request)
        lifecycle = req.kind in (RequestKind.CREATE_KEY, RequestKind.ROTATE)
        if not lifecycle and req.state in (RS.PENDING, RS.FAILED) and not self._still_possible(req):
            raise Rejected(
                Reason.VERSION_NOT_USABLE, "the request's key version is no longer usable"
            )
        if req.state is not RS.PENDING:
            raise Rejected(Reason.REQUEST_DECIDED, f"request already {req.state.value}")
        if cmd.author not in req.approvers:
            raise Rejected(Reason.NOT_AN_APPROVER, f"{cmd.author!r} does not approve this request")
        if cmd.author in req.approvals:
            raise Rejected(Reason.DUPLICATE_APPROVAL, f"{cmd.author!r} already approved")
        verify_approval(self.state.principals[cmd.author].public_key, req.digest, cmd.signature)
        req.approvals[cmd.author] = cmd.signature
        if quorum_met(len(req.approvals), req.k):
            req.state = rules.request_step(req.state, "quorum")
            req.decided_epoch = self.state.epoch
            self._on_approved(req)
        return _Effect(
            req.state.value, subject=req.request_id, key_id=req.key_id, version=req.version,
            digest=req.digest,
        )  # fmt: skip

    def _on_approved(self, req: Request) -> None:
        key = self.state.keys[req.key_id]
        if req.kind in (RequestKind.CREATE_KEY, RequestKind.ROTATE):
            self._new_version(key, req)
        elif req.kind in (RequestKind.REVOKE, RequestKind.DESTROY):
            # Effective at the epoch this approval commits in; the nodes erase on seeing it.
            version = key.versions[req.version]
            self._finish(req, rules.request_step(req.state, "complete"))
            event = "revoke" if req.kind is RequestKind.REVOKE else "destroy"
            self._set_version_state(key, version, event)

    def _executing(self, request_id: str, kinds: tuple[RequestKind, ...]) -> Request:
        req = self._request(request_id)
        if req.kind not in kinds:
            raise Rejected(Reason.WRONG_REQUEST_KIND, f"request is a {req.kind.value} request")
        rules.request_step(req.state, "complete")  # raises NOT_APPROVED / REQUEST_DECIDED
        return req

    def _record_dkg_result(self, cmd: RecordDkgResult) -> _Effect:
        req = self._executing(cmd.request, (RequestKind.CREATE_KEY, RequestKind.ROTATE))
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
                waiting = self.state.policies[key.policy_id].waiting_epochs
                earliest = self.state.epoch + max(1, waiting)
                version.activation_epoch = max(earliest, req.activate_epoch)
                self._finish(req, rules.request_step(req.state, "complete"))
                code = "executed"
            else:
                self._finish(req, rules.request_step(req.state, "fail"), "dkg_mismatch")
                self._set_version_state(key, version, "abort")
                code = "failed"
        return _Effect(
            code, subject=req.request_id, key_id=req.key_id, version=req.version,
            digest=req.digest, detail=f"activation_epoch={version.activation_epoch}",
        )  # fmt: skip

    def _record_result(self, cmd: RecordResult) -> _Effect:
        req = self._executing(cmd.request, (RequestKind.SIGN, RequestKind.DECRYPT))
        self._finish(req, rules.request_step(req.state, "complete"))
        req.result_digest = cmd.result_digest
        self.state.keys[req.key_id].versions[req.version].uses += 1
        return _Effect(
            req.state.value, subject=req.request_id, key_id=req.key_id, version=req.version,
            digest=req.digest,
        )  # fmt: skip

    def _record_failure(self, cmd: RecordFailure) -> _Effect:
        req = self._request(cmd.request)
        rules.request_step(req.state, "complete")  # only an approved request can fail to run
        self._finish(req, rules.request_step(req.state, "fail"), cmd.reason)
        key = self.state.keys[req.key_id]
        if req.kind in (RequestKind.CREATE_KEY, RequestKind.ROTATE):
            version = key.versions[req.version]
            if version.state is VS.PENDING and not version.activation_epoch:
                self._set_version_state(key, version, "abort")
        return _Effect(
            req.state.value, subject=req.request_id, key_id=req.key_id, version=req.version,
            digest=req.digest,
        )  # fmt: skip

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

    def rotation_due(self, key_id: str, now: int) -> bool:
        """Does the key's policy call for a new version at wall-clock `now` (seconds)?"""
        key = self.state.keys.get(key_id)
        if key is None or key.primary == 0:
            return False
        policy = self.state.policies[key.policy_id]
        v = key.versions[key.primary]
        by_time = (
            policy.rotation_interval_s > 0 and now - v.activated_at >= policy.rotation_interval_s
        )
        by_use = policy.max_uses > 0 and v.uses >= policy.max_uses
        return by_time or by_use

    def open_requests(self, kind: RequestKind | str | None = None) -> list[Request]:
        """Requests still pending approval or waiting for execution, in request-id order."""
        want = RequestKind(kind) if kind is not None else None
        found = (self.state.requests[rid] for rid in sorted(self.state.open))
        return [req for req in found if want is None or req.kind is want]

    def executable(self, request_id: str) -> Request:
        """The request, if this replica agrees it may be executed now; else Rejected.

        A node calls this before contributing a signature or decryption share or
        joining a DKG: it re-verifies every stored approval against the approvers'
        registered keys (a rotation scheduled by a node, approved by policy, has none).
        """
        req = self._request(request_id)
        if req.state is not RS.APPROVED:
            raise Rejected(Reason.NOT_APPROVED, f"request is {req.state.value}")
        if not self._still_possible(req):
            raise Rejected(Reason.VERSION_NOT_USABLE, "key version no longer usable")
        scheduled = req.kind is RequestKind.ROTATE and req.author in self.state.members
        if not scheduled:
            valid = 0
            for name in sorted(req.approvals):
                if name in req.approvers and name in self.state.principals:
                    key = self.state.principals[name].public_key
                    verify_approval(key, req.digest, req.approvals[name])
                    valid += 1
            if not quorum_met(valid, req.k):
                raise Rejected(Reason.NOT_APPROVED, "approval quorum not met")
        return req
