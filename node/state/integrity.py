"""Referential integrity of a restored state: a snapshot must hang together.

A leader can always send a follower a snapshot instead of log entries. The
schema check in `snapshot.py` proves the types; this proves the references, so
that a snapshot with a dangling name (a key whose policy does not exist, a
request on a missing version) is refused at restore with a clear error instead
of crashing every replica that installed it on the next command; and that each
stored request digest is the one its own fields and payload give, so a swapped
payload or quorum is refused here too (`Machine.executable` recomputes it again).
It does not make a snapshot trustworthy: authenticating it is the runner's job
(`snapshot.state_hash`, signed by members).
"""

from __future__ import annotations

import hmac

from .audit_checkpoint import (
    AUDIT_KEY_ID,
    MAX_AUDIT_CHECKPOINTS,
    checkpoint_message,
    signature_valid,
)
from .commands import (
    DESCRIPTION,
    MAX_CHECKPOINTS,
    MAX_DKG_PACKAGE_BYTES,
    MAX_EPOCH,
    MAX_GRANT_USES,
    MAX_TIME_LOCK_EPOCHS,
    OWNER,
    TAGS,
    U62,
    decode_change,
)
from .digest import digest_of, payload_hash
from .errors import DecodeError
from .grants import grant_payload
from .metadata import MAX_ALIASES, is_alias_name
from .model import (
    Governance,
    Grant,
    GrantState,
    Key,
    Purpose,
    Request,
    RequestKind,
    RequestState,
    Role,
    State,
    VersionState,
)
from .names import is_principal_name, member_index
from .rules import GOVERNANCE_KINDS

RK = RequestKind
KEY_KINDS = frozenset(
    {RK.CREATE_KEY, RK.SIGN, RK.DECRYPT, RK.ROTATE, RK.REVOKE, RK.DESTROY, RK.GRANT,
     RK.ROLLBACK}
)  # fmt: skip
DKG_KINDS = frozenset({RK.CREATE_KEY, RK.ROTATE})
UNVERSIONED_KINDS = DKG_KINDS | {RK.GRANT}  # no version named (create/rotate: not yet)
RS = RequestState
GS = GrantState


def _fail(message: str) -> None:
    raise DecodeError(f"snapshot refused: {message}")


def _check_lingering(state: State) -> None:
    """Lingering requests (late partials) are executed decrypt requests that kept their
    payload, for at most one epoch after the current one; no other decided request
    keeps a payload."""
    if len(state.lingering) > 20_000:
        _fail("too many lingering decrypt requests")
    for ref, until in state.lingering.items():
        req = state.requests.get(ref)
        if req is None or req.kind is not RK.DECRYPT or req.state is not RS.EXECUTED:
            _fail(f"lingering {ref!r} is not an executed decrypt request")
        if not req.payload or type(until) is not int or not state.epoch <= until <= state.epoch + 1:
            _fail(f"lingering {ref!r} has no payload or an impossible end epoch")
    for ref, req in state.requests.items():
        if req.state in (RS.EXECUTED, RS.FAILED) and req.payload and ref not in state.lingering:
            _fail(f"decided request {ref!r} still holds its payload")


def check_integrity(state: State) -> None:
    """Raise `DecodeError` naming the first broken reference; return if all hold."""
    if not state.bootstrapped:
        empty = (
            state.members, state.principals, state.policies, state.keys, state.requests,
            state.removed_members, state.removed_principals, state.checkpoints, state.grants,
            state.audit_checkpoints, state.audit_checkpoint_count, state.aliases,
            state.lingering,
        )  # fmt: skip
        if any(empty) or state.epoch or state.threshold or state.genesis:
            _fail("an un-bootstrapped state must be empty")
        if state.governance != Governance():
            _fail("an un-bootstrapped state has no governance policy")
        return
    _check_cluster(state)
    _check_governance(state)
    for policy in state.policies.values():
        for name in policy.approvers:
            _need_role(state, name, Role.APPROVER, f"policy {policy.policy_id!r}")
        for name in policy.requesters:
            _need_role(state, name, Role.CLIENT, f"policy {policy.policy_id!r}")
        if not 1 <= policy.k <= len(policy.approvers) or policy.waiting_epochs < 1:
            _fail(f"policy {policy.policy_id!r} has an impossible quorum or waiting period")
        if not set(policy.operations) <= {"sign", "decrypt"}:
            _fail(f"policy {policy.policy_id!r} allows unknown operations")
    for key in state.keys.values():
        _check_key(state, key)
        _check_metadata(key)
    _check_aliases(state)
    for rid, req in state.requests.items():
        _check_request(state, rid, req)
    _check_lingering(state)
    _check_grants(state)
    _check_audit_checkpoints(state)
    for member, vote in state.epoch_votes.items():
        if member not in state.members or vote.epoch != state.epoch + 1:
            _fail(f"epoch vote of {member!r} is not a member's vote for the next epoch")
    for member, cps in state.checkpoints.items():
        indexes = [c.index for c in cps]
        if member not in state.members or not 1 <= len(cps) <= MAX_CHECKPOINTS:
            _fail(f"checkpoints of {member!r}: not a present member's, or too many")
        if indexes != sorted(set(indexes)) or not all(1 <= i <= U62 for i in indexes):
            _fail(f"checkpoints of {member!r} are not in strictly increasing index order")
        if any(len(c.state_hash) != 64 or len(c.signature) != 64 for c in cps):
            _fail(f"a checkpoint of {member!r} has a malformed hash or signature")


def _check_metadata(key: Key) -> None:
    """A key's metadata within the bounds `set_key_metadata` accepts; none on the audit key."""
    where = f"key {key.key_id!r} metadata"
    try:
        OWNER.check(key.owner, f"{where}.owner")
        DESCRIPTION.check(key.description, f"{where}.description")
        TAGS.check([[k, key.tags[k]] for k in sorted(key.tags)], f"{where}.tags")
    except DecodeError as exc:
        _fail(str(exc))
    if key.purpose is Purpose.AUDIT and (key.owner or key.description or key.tags):
        _fail(f"{where}: the audit key has no metadata")


def _check_aliases(state: State) -> None:
    """Aliases: bounded in number, well named, never a key id, naming an existing
    non-audit key, created no later than deleted, neither in the future."""
    if len(state.aliases) > MAX_ALIASES:
        _fail(f"{len(state.aliases)} aliases exceed {MAX_ALIASES}")
    for name, alias in state.aliases.items():
        where = f"alias {name!r}"
        if not is_alias_name(name):
            _fail(f"{where}: not an alias name")
        if name in state.keys:
            _fail(f"{where} is also a key id")
        key = state.keys.get(alias.key_id)
        if key is None or key.purpose is Purpose.AUDIT:
            _fail(f"{where} names missing or reserved key {alias.key_id!r}")
        if not 1 <= alias.created_epoch <= state.epoch or alias.deleted_epoch > state.epoch:
            _fail(f"{where}: creation or deletion epoch outside 1..{state.epoch}")
        if alias.deleted_epoch and alias.deleted_epoch < alias.created_epoch:
            _fail(f"{where}: deleted before it was created")


def _check_cluster(state: State) -> None:
    n = len(state.members)
    if not 1 <= state.threshold <= n or (n >= 2 and state.threshold < 2 and not state.unsafe):
        _fail(f"threshold {state.threshold} of {n} members")
    if not 1 <= state.epoch <= MAX_EPOCH:
        _fail(f"epoch {state.epoch} outside 1..{MAX_EPOCH}")
    for name, member in state.members.items():
        if member_index(name) != member.index or len(member.public_key) != 32:
            _fail(f"member {name!r} does not match its index or has no identity key")
    for name, p in state.principals.items():
        if not is_principal_name(name) or name in state.members:
            _fail(f"principal name {name!r} breaks the naming rule")
        if p.role in (Role.APPROVER, Role.OPERATOR) and len(p.public_key) != 32:
            _fail(f"{p.role.value} {name!r} has no signing key")
        if p.role is Role.NODE:
            _fail(f"principal {name!r} claims the node role")


def _check_governance(state: State) -> None:
    gov = state.governance
    for name in gov.approvers:
        _need_role(state, name, Role.APPROVER, "the governance policy")
    if list(gov.approvers) != sorted(set(gov.approvers)) or not 1 <= gov.k <= len(gov.approvers):
        _fail("the governance policy has an impossible quorum")
    if gov.k < 2 and not state.unsafe:
        _fail("governance k=1 without the unsafe flag")
    if not 1 <= gov.time_lock_epochs <= MAX_TIME_LOCK_EPOCHS:
        _fail(f"governance time lock outside 1..{MAX_TIME_LOCK_EPOCHS}")
    for name, m in state.removed_members.items():
        if member_index(name) != m.index or name in state.members:
            _fail(f"removed member {name!r} does not match its index or is still a member")
    for name in state.removed_principals:
        if not is_principal_name(name) or name in state.principals or name in state.members:
            _fail(f"removed principal {name!r} breaks the naming rule or is still registered")


def _need_role(state: State, name: str, role: Role, where: str) -> None:
    p = state.principals.get(name)
    if p is None or p.role is not role:
        _fail(f"{where} names {name!r}, which is not a registered {role.value}")


def _check_key(state: State, key: Key) -> None:
    where = f"key {key.key_id!r}"
    if (key.purpose is Purpose.AUDIT) != (key.key_id == AUDIT_KEY_ID):
        _fail(f"{where}: only {AUDIT_KEY_ID!r} is the audit key, and it is for audit")
    if key.purpose is Purpose.AUDIT:
        if key.policy_id:
            _fail(f"{where}: the audit key has no policy")
    elif key.policy_id not in state.policies:
        _fail(f"{where} names missing policy {key.policy_id!r}")
    active = [n for n, v in key.versions.items() if v.state is VersionState.ACTIVE]
    if active != ([key.primary] if key.primary else []):
        _fail(f"{where}: primary {key.primary} is not its one active version")
    for number, v in key.versions.items():
        origin = state.requests.get(v.request_id)
        if number < 1 or origin is None or origin.kind not in DKG_KINDS:
            _fail(f"{where} version {number} has no create/rotate request")
        elif origin.key_id != key.key_id or origin.version != number:
            _fail(f"{where} version {number}: its request is about another version")
        if len(v.verification_shares) > len(state.members) + len(state.removed_members):
            _fail(f"{where} version {number}: more verification shares than members ever")
        if any(not 0 <= e <= MAX_EPOCH + (1 << 33) for e in _epochs(v)):
            _fail(f"{where} version {number}: epoch outside the schema")
        if v.replaced and (v.replaced >= number or v.replaced not in key.versions):
            _fail(f"{where} version {number}: replaced a version it cannot have replaced")
        if (v.rolled_back_epoch and not v.activation_epoch) or v.rollback_uses > v.uses:
            _fail(f"{where} version {number}: rolled back but never active, or over-used")
        if v.erased_by:
            ever = set(state.members) | set(state.removed_members)
            if v.state is not VersionState.DESTROYED:
                _fail(f"{where} version {number}: erasure confirmations on a live version")
            if list(v.erased_by) != sorted(set(v.erased_by)) or not set(v.erased_by) <= ever:
                _fail(f"{where} version {number}: erasure confirmations not sorted members")
    if key.lifecycle_request:
        req = state.requests.get(key.lifecycle_request)
        lifecycle = DKG_KINDS | {RK.ROLLBACK}
        if req is None or req.key_id != key.key_id or req.kind not in lifecycle:
            _fail(f"{where}: lifecycle request {key.lifecycle_request!r} is not its own")
        elif req.state not in (RequestState.PENDING, RequestState.APPROVED):
            _fail(f"{where}: lifecycle request {key.lifecycle_request!r} is decided")


def _check_audit_checkpoints(state: State) -> None:
    """Audit checkpoints: the audit key exists (every bootstrapped state has it), at most
    `MAX_AUDIT_CHECKPOINTS`, strictly increasing seq, each over a record of this chain
    with exactly its head and epoch, by a version of the audit key whose group key
    verifies the signature (re-checked: a snapshot carries no authority)."""
    key = state.keys.get(AUDIT_KEY_ID)
    if key is None or key.purpose is not Purpose.AUDIT:
        _fail(f"the audit key {AUDIT_KEY_ID!r} is missing")
        return
    cps = state.audit_checkpoints
    if len(cps) > MAX_AUDIT_CHECKPOINTS or state.audit_checkpoint_count < len(cps):
        _fail("too many audit checkpoints, or fewer counted than kept")
    seqs = [c.seq for c in cps]
    if seqs != sorted(set(seqs)):
        _fail("audit checkpoints are not in strictly increasing seq order")
    for c in cps:
        where = f"audit checkpoint at seq {c.seq}"
        if c.seq >= len(state.audit):
            _fail(f"{where}: no such record")
        rec = state.audit[c.seq]
        if not hmac.compare_digest(rec.hash, c.head) or rec.epoch != c.epoch:
            _fail(f"{where}: head or epoch differs from the chain's")
        v = key.versions.get(c.version)
        message = checkpoint_message(state.cluster_id, c.seq, c.head, c.epoch)
        if v is None or not signature_valid(v.group_public_key, message, c.signature):
            _fail(f"{where}: not signed by audit key version {c.version}")


def _epochs(v) -> tuple[int, ...]:
    return (
        v.activation_epoch, v.retired_epoch, v.revoked_epoch, v.destroyed_epoch,
        v.rolled_back_epoch,
    )  # fmt: skip


def _check_request(state: State, rid: str, req: Request) -> None:
    where = f"request {rid!r}"
    identities = (state.principals, state.members, state.removed_principals, state.removed_members)
    if not any(req.author in table for table in identities):
        _fail(f"{where}: author {req.author!r} is unknown")
    if req.kind in KEY_KINDS:
        key = state.keys.get(req.key_id)
        if key is None:
            _fail(f"{where} names missing key {req.key_id!r}")
            return
        if req.version and req.version not in key.versions:
            _fail(f"{where} names missing version {req.version}")
        if req.kind not in UNVERSIONED_KINDS and not req.version:
            _fail(f"{where} names no version")
        if req.purpose != key.purpose.value:
            _fail(f"{where}: purpose differs from its key's")
        if req.dual_version:
            own = key.versions.get(req.version)
            if req.kind is not RK.SIGN or own is None or own.replaced != req.dual_version:
                _fail(f"{where}: dual version {req.dual_version} is not what its version replaced")
    elif req.dual_version:
        _fail(f"{where}: a dual version on a request about no key")
    if not 1 <= req.k <= len(req.approvers) or len(set(req.approvers)) != len(req.approvers):
        _fail(f"{where}: impossible quorum")
    for name in req.approvers:
        if name not in state.principals and name not in state.removed_principals:
            _fail(f"{where}: approver {name!r} is not a principal")
    if not set(req.approvals) <= set(req.approvers):
        _fail(f"{where}: approval by someone outside its quorum")
    if not set(req.reports) | set(req.confirmations) <= set(state.members) | set(
        state.removed_members
    ):
        _fail(f"{where}: a report by a non-member")
    if req.dkg_round1:
        if req.kind not in DKG_KINDS or req.state is not RequestState.APPROVED:
            _fail(f"{where}: DKG round-1 packages on a request that runs no DKG")
        if not set(req.dkg_round1) <= set(state.members):
            _fail(f"{where}: a DKG round-1 package by someone who is not a member")
        if any(not 1 <= len(p) <= MAX_DKG_PACKAGE_BYTES for p in req.dkg_round1.values()):
            _fail(f"{where}: a DKG round-1 package of impossible size")
    if req.kind in GOVERNANCE_KINDS:
        _check_governance_request(state, where, req)
    elif req.effective_epoch:
        _fail(f"{where}: only a governance change has a time lock")
    if req.payload and not hmac.compare_digest(payload_hash(req.payload), req.payload_hash):
        _fail(f"{where}: payload does not match its hash")
    if not hmac.compare_digest(digest_of(req, state.cluster_id, req.payload_hash), req.digest):
        _fail(f"{where}: digest differs from the one its fields give")


def _check_governance_request(state: State, where: str, req: Request) -> None:
    """About no key; while open it carries the change it will apply, which must decode
    (so that applying it later cannot crash a replica), and an approved open one waits
    for its time lock (changes that need none take effect on approval)."""
    if req.key_id or req.purpose or req.policy_id or req.version or req.activate_epoch:
        _fail(f"{where}: a governance request names a key, policy or version")
    is_open = req.state in (RequestState.PENDING, RequestState.APPROVED)
    if is_open:
        try:
            change = decode_change(req.payload)
        except DecodeError as exc:
            _fail(f"{where}: its change does not decode ({exc})")
            return
        if (change.KIND, change.request_id, change.author) != (
            req.kind.value, req.request_id, req.author,
        ):  # fmt: skip
            _fail(f"{where}: its change is another request's")
    if is_open and (req.state is RequestState.APPROVED) != bool(req.effective_epoch):
        _fail(f"{where}: time lock inconsistent with its state")
    if req.effective_epoch > MAX_EPOCH + MAX_TIME_LOCK_EPOCHS:
        _fail(f"{where}: time lock outside the schema")


# Grant state <-> the state of the `grant` request that decides it.
_GRANT_REQUEST_STATES: dict[GrantState, frozenset[RequestState]] = {
    GS.PENDING: frozenset({RS.PENDING}),
    GS.ACTIVE: frozenset({RS.EXECUTED}),
    GS.REVOKED: frozenset({RS.EXECUTED, RS.FAILED}),  # revoked after or before approval
    GS.FAILED: frozenset({RS.FAILED}),
}


def _check_grants(state: State) -> None:
    """Grants and the requests tied to them: each grant's fields are the ones its quorum
    approved (its request's payload hash is the hash of the grant's own encoding), its
    state agrees with its request's, and its use count is the number of requests made
    under it, each with its own use number. (Authorisation is re-checked anyway by
    `Machine.executable`; this keeps a broken snapshot from being installed.)"""
    used: dict[str, set[int]] = {g: set() for g in state.grants}
    for rid, req in state.requests.items():
        where = f"request {rid!r}"
        if not req.grant:
            if req.grant_use or req.grant_version or req.grant_signature:
                _fail(f"{where}: grant details without a grant")
            continue
        grant = state.grants.get(req.grant)
        if grant is None:
            _fail(f"{where} names missing grant {req.grant!r}")
            return
        if req.kind is RK.GRANT:
            if grant.request != rid or req.grant_use or req.grant_version or req.grant_signature:
                _fail(f"{where}: not the request of grant {req.grant!r}")
            continue
        if req.kind not in (RK.SIGN, RK.DECRYPT):
            _fail(f"{where}: a {req.kind.value} request is never made under a grant")
        if req.author != grant.grantee or req.key_id != grant.key_id:
            _fail(f"{where}: not its grant's grantee or key")
        if len(req.grant_signature) != 64 or req.state is RS.PENDING:
            _fail(f"{where}: made under a grant without a signature, or still pending")
        if req.grant_version and req.grant_version != req.version:
            _fail(f"{where}: the version named differs from the one resolved")
        if not 1 <= req.grant_use <= grant.uses or req.grant_use in used[req.grant]:
            _fail(f"{where}: use {req.grant_use} of grant {req.grant!r} impossible or repeated")
        used[req.grant].add(req.grant_use)
    for gid, grant in state.grants.items():
        _check_grant(state, gid, grant, len(used[gid]))


def _check_grant(state: State, gid: str, g: Grant, uses: int) -> None:
    where = f"grant {gid!r}"
    if g.grantee not in state.principals and g.grantee not in state.removed_principals:
        _fail(f"{where}: grantee {g.grantee!r} is not a principal")
    key = state.keys.get(g.key_id)
    if key is None:
        _fail(f"{where} names missing key {g.key_id!r}")
        return
    allowed = "sign" if key.purpose.value == "sign" else "decrypt"
    if not g.operations or any(op != allowed for op in g.operations):
        _fail(f"{where}: operations outside its key's purpose")
    if g.context_match not in ("exact", "prefix") or len(g.operations) != len(set(g.operations)):
        _fail(f"{where}: bad context match or repeated operations")
    if not 1 <= g.max_uses <= MAX_GRANT_USES or g.uses != uses or g.uses > g.max_uses:
        _fail(f"{where}: uses {g.uses} (requests under it: {uses}) of {g.max_uses}")
    if not 1 <= g.expires_epoch <= MAX_EPOCH:
        _fail(f"{where}: expiry outside the schema")
    req = state.requests.get(g.request)
    if req is None or req.kind is not RK.GRANT or req.grant != gid or req.key_id != g.key_id:
        _fail(f"{where}: its request {g.request!r} is not its own")
        return
    try:
        encoded = grant_payload(g)
    except (DecodeError, ValueError, TypeError) as exc:
        _fail(f"{where} does not encode ({exc})")
        return
    if not hmac.compare_digest(payload_hash(encoded), req.payload_hash):
        _fail(f"{where}: its fields are not the ones its request's approvers saw")
    if req.state not in _GRANT_REQUEST_STATES[g.state]:
        _fail(f"{where} is {g.state.value} but its request is {req.state.value}")
    if (g.state is GS.REVOKED) != bool(g.revoked_epoch) or (g.state is GS.REVOKED) != bool(
        g.revoked_by
    ):
        _fail(f"{where}: revocation details inconsistent with its state")
    if bool(g.activated_epoch) != (req.state is RS.EXECUTED):
        _fail(f"{where}: activation epoch inconsistent with its request")
    if g.uses and not g.activated_epoch:
        _fail(f"{where}: used but never active")
