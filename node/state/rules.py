"""The rules, as tables: lifecycles, who may issue what, what a version may do.

Everything the machine decides about legality is looked up here, so that the
rules can be read (and reviewed) in one place. Pure data plus tiny lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .errors import Reason, Rejected
from .model import Op, Purpose, RequestKind, RequestState, Role, Version, VersionState

VS = VersionState
RS = RequestState

# Key-version lifecycle: (state, event) -> next state. Only forward moves exist, with one
# exception: a quorum-approved rollback makes the retired version the primary replaced
# active again, within the grace period after the switch (`rollback_allowed`); nothing
# else ever leaves retired for active.
VERSION_TRANSITIONS: dict[tuple[VersionState, str], VersionState] = {
    (VS.PENDING, "activate"): VS.ACTIVE,
    (VS.PENDING, "abort"): VS.DESTROYED,  # DKG failed: erase whatever shares exist
    (VS.PENDING, "revoke"): VS.REVOKED,
    (VS.ACTIVE, "retire"): VS.RETIRED,
    (VS.ACTIVE, "revoke"): VS.REVOKED,
    (VS.RETIRED, "revoke"): VS.REVOKED,
    (VS.RETIRED, "rollback"): VS.ACTIVE,  # only through an approved rollback request
    (VS.RETIRED, "destroy"): VS.DESTROYED,
    (VS.REVOKED, "destroy"): VS.DESTROYED,
}

# Request lifecycle.
REQUEST_TRANSITIONS: dict[tuple[RequestState, str], RequestState] = {
    (RS.PENDING, "quorum"): RS.APPROVED,
    (RS.PENDING, "fail"): RS.FAILED,  # its version was revoked/destroyed before approval
    (RS.APPROVED, "complete"): RS.EXECUTED,  # governance: on approval, or after its time lock
    (RS.APPROVED, "fail"): RS.FAILED,
    (RS.PENDING, "cancel"): RS.FAILED,  # governance: the governance quorum cancelled it
    (RS.APPROVED, "cancel"): RS.FAILED,  # ... during its time lock
}

# Which roles may issue which command kind (the author must also pass the
# per-command checks, e.g. policy membership for sign/decrypt and approve).
COMMAND_ROLES: dict[str, frozenset[Role]] = {
    "bootstrap": frozenset({Role.OPERATOR}),
    # Governance: operators submit, only the governance quorum decides (`approve`).
    "add_principal": frozenset({Role.OPERATOR}),
    "remove_principal": frozenset({Role.OPERATOR}),
    "rekey_principal": frozenset({Role.OPERATOR}),
    "set_policy": frozenset({Role.OPERATOR}),
    "set_governance": frozenset({Role.OPERATOR}),
    "set_threshold": frozenset({Role.OPERATOR}),
    "add_member": frozenset({Role.OPERATOR}),
    "remove_member": frozenset({Role.OPERATOR}),
    "repair_member": frozenset({Role.OPERATOR}),
    "set_officers": frozenset({Role.OPERATOR}),
    "recover_members": frozenset({Role.OPERATOR}),
    "officer_approve": frozenset({Role.OPERATOR}),  # carries the officer's own signature
    "officer_release": frozenset({Role.OPERATOR}),  # carries the officer's own signature
    "escrow_post": frozenset({Role.NODE}),
    "record_recovery": frozenset({Role.NODE}),
    "export_key": frozenset({Role.OPERATOR}),  # break-glass (governance, k officers)
    "export_piece": frozenset({Role.NODE}),
    # Approvers may submit a cancel themselves, so that operators who all push a weakening
    # change cannot also keep the approvers from stopping it during its time lock.
    "cancel": frozenset({Role.OPERATOR, Role.APPROVER}),
    "advance_epoch": frozenset({Role.NODE}),  # a vote; `threshold` members move the epoch
    "create_key": frozenset({Role.OPERATOR}),
    "request_sign": frozenset({Role.CLIENT}),
    "request_decrypt": frozenset({Role.CLIENT}),
    "request_rotate": frozenset({Role.OPERATOR, Role.NODE}),
    "request_revoke": frozenset({Role.OPERATOR}),
    "request_rollback": frozenset({Role.OPERATOR}),
    "request_destroy": frozenset({Role.OPERATOR}),
    "approve": frozenset({Role.APPROVER}),
    "dkg_round1": frozenset({Role.NODE}),  # a member's DKG round-1 package, broadcast
    "record_dkg_result": frozenset({Role.NODE}),
    "record_result": frozenset({Role.NODE}),
    "record_failure": frozenset({Role.NODE}),
    "record_erasure": frozenset({Role.NODE}),
    # Share repair (docs/recovery.md): members' posts, the target's confirmation, reports.
    "repair_post": frozenset({Role.NODE}),
    "record_repair": frozenset({Role.NODE}),
    "repair_failure": frozenset({Role.NODE}),
    # Proactive refresh: an operator or the scheduler (a member) starts one; members run it.
    "start_refresh": frozenset({Role.OPERATOR, Role.NODE}),
    "refresh_post": frozenset({Role.NODE}),
    "record_refresh": frozenset({Role.NODE}),
    "refresh_failure": frozenset({Role.NODE}),  # a member erased its shares of a version
    "checkpoint": frozenset({Role.NODE}),  # a member's signature over a snapshot's state hash
    "audit_checkpoint": frozenset({Role.NODE}),  # the leader posts a threshold-signed head
    # Grants: an operator proposes (the key policy's quorum decides); taking power away
    # needs no quorum: an operator, or any one approver of the grant's quorum, revokes.
    "create_grant": frozenset({Role.OPERATOR}),
    "revoke_grant": frozenset({Role.OPERATOR, Role.APPROVER}),
    # Metadata and aliases (docs/metadata.md): labels with no authority, set at once; an
    # alias never changes its key (a deleted name stays reserved for it).
    "set_key_metadata": frozenset({Role.OPERATOR}),
    "create_alias": frozenset({Role.OPERATOR}),
    "delete_alias": frozenset({Role.OPERATOR}),
}

# What a version in a given state may be used for (before the purpose filter).
VERSION_USES: dict[VersionState, frozenset[Op]] = {
    VS.PENDING: frozenset(),
    VS.ACTIVE: frozenset({Op.SIGN, Op.VERIFY, Op.ENCRYPT, Op.DECRYPT, Op.AUDIT}),
    VS.RETIRED: frozenset({Op.VERIFY, Op.DECRYPT}),
    VS.REVOKED: frozenset(),
    VS.DESTROYED: frozenset(),
}

# What a key of a given purpose may ever be used for (domain separation).
PURPOSE_OPS: dict[Purpose, frozenset[Op]] = {
    Purpose.SIGN: frozenset({Op.SIGN, Op.VERIFY}),
    Purpose.ENCRYPT: frozenset({Op.ENCRYPT, Op.DECRYPT}),
    Purpose.AUDIT: frozenset({Op.AUDIT, Op.VERIFY}),  # audit checkpoints only
}

# How far one advance moves the epoch. One step: every epoch is visited, so no
# activation, grace period or time lock boundary is ever jumped, and reaching the
# schema's MAX_EPOCH would take 2^48 quorum votes.
MAX_EPOCH_STEP = 1

# Operations a client may ask the cluster to perform (the rest are public-key ops).
REQUESTABLE_OPS: frozenset[str] = frozenset({Op.SIGN.value, Op.DECRYPT.value})


# ------------------------------------------------------------------ governance

RK = RequestKind
GOVERNANCE_KINDS: frozenset[RequestKind] = frozenset(
    {
        RK.ADD_PRINCIPAL, RK.REMOVE_PRINCIPAL, RK.REKEY_PRINCIPAL, RK.SET_POLICY,
        RK.SET_GOVERNANCE, RK.SET_THRESHOLD, RK.ADD_MEMBER, RK.REMOVE_MEMBER, RK.REPAIR_MEMBER,
        RK.SET_OFFICERS, RK.RECOVER_MEMBERS, RK.EXPORT_KEY, RK.CANCEL,
    }
)  # fmt: skip


def _lower(old: int, new: int) -> bool:
    return new < old


def _other_set(old: tuple[str, ...], new: tuple[str, ...]) -> bool:
    return set(old) != set(new)  # a new approver, or fewer approvers


def _grows(old: tuple[str, ...], new: tuple[str, ...]) -> bool:
    return not set(new) <= set(old)


def _rarer(old: int, new: int) -> bool:
    return old > 0 and (new == 0 or new > old)  # rotates later, or no longer at all


# Replacing a policy weakens protection when any of these says so (field -> test(old, new)).
# Strengthening or neutral replacements, and new policies (they protect no key yet), take
# effect on approval; weakening ones wait the governance time lock.
POLICY_WEAKER: dict[str, Callable[[Any, Any], bool]] = {
    "approvers": _other_set,
    "k": _lower,
    "requesters": _grows,  # someone new may ask for signatures or decryptions
    "operations": _grows,
    "grace_epochs": _lower,
    "waiting_epochs": _lower,
    "rotation_interval_s": _rarer,
    "max_uses": _rarer,
    "escrow": lambda old, new: new and not old,  # break-glass export becomes possible
    "dual_sign_epochs": lambda old, new: new > old,  # a retired version signs for longer
}
GOVERNANCE_WEAKER: dict[str, Callable[[Any, Any], bool]] = {
    "approvers": _other_set,  # a new governance approver, or one removed
    "k": _lower,
    "time_lock_epochs": _lower,
}
# Governance requests that always wait the time lock, whatever the state: a new or removed
# member changes who holds shares and votes epochs (and removal can exclude an honest one).
ALWAYS_WEAKENING: frozenset[RequestKind] = frozenset(
    {RK.ADD_MEMBER, RK.REMOVE_MEMBER, RK.SET_OFFICERS, RK.EXPORT_KEY}
)
# Principal changes that weaken protection when the principal is (or becomes) an approver:
# a new approver, an approver's new key (a new holder of a vote), fewer approvers.
APPROVER_WEAKENING: frozenset[RequestKind] = frozenset(
    {RK.ADD_PRINCIPAL, RK.REKEY_PRINCIPAL, RK.REMOVE_PRINCIPAL}
)


def weaker_fields(table: dict[str, Callable[[Any, Any], bool]], old: Any, new: Any) -> list[str]:
    """The fields of `table` in which `new` weakens protection compared with `old`."""
    return [f for f, test in table.items() if test(getattr(old, f), getattr(new, f))]


def version_step(state: VersionState, event: str) -> VersionState:
    """Next state of a version, or `Rejected(INVALID_TRANSITION)`."""
    nxt = VERSION_TRANSITIONS.get((state, event))
    if nxt is None:
        raise Rejected(Reason.INVALID_TRANSITION, f"version cannot {event} from {state.value}")
    return nxt


def request_step(state: RequestState, event: str) -> RequestState:
    """Next state of a request, or `Rejected(REQUEST_DECIDED/NOT_APPROVED)`."""
    nxt = REQUEST_TRANSITIONS.get((state, event))
    if nxt is None:
        if state in (RS.EXECUTED, RS.FAILED):
            raise Rejected(Reason.REQUEST_DECIDED, f"request already {state.value}")
        if state is RS.APPROVED:
            raise Rejected(Reason.REQUEST_DECIDED, "request already approved")
        raise Rejected(Reason.NOT_APPROVED, f"request is {state.value}")
    return nxt


def version_state_at(v: Version, epoch: int) -> VersionState:
    """The state version `v` has (or is scheduled to have) at `epoch`.

    Uses only the epochs recorded in the version (all >= 1: the epoch starts at 1
    on bootstrap), so the answer for a past epoch does not change as the state
    moves on; a future epoch gets the scheduled state.
    """
    if v.destroyed_epoch and v.destroyed_epoch <= epoch:
        return VS.DESTROYED
    if v.revoked_epoch and v.revoked_epoch <= epoch:
        return VS.REVOKED
    if v.retired_epoch and v.retired_epoch <= epoch:
        return VS.RETIRED
    if v.activation_epoch and v.activation_epoch <= epoch:
        return VS.ACTIVE
    return VS.PENDING


def may_use(purpose: Purpose, v: Version, op: Op, epoch: int) -> bool:
    """May version `v` of a key with `purpose` be used for `op` at `epoch`?"""
    return op in PURPOSE_OPS[purpose] and op in VERSION_USES[version_state_at(v, epoch)]


def rollback_allowed(
    primary: Version | None, target: Version, grace_epochs: int, epoch: int
) -> str:
    """Why a rollback from `primary` (the key's primary) to `target` is not allowed now,
    or "" if it is. Allowed only when the primary became primary by a rotation's
    activation (not by a rollback) and replaced exactly `target`, `target` is still
    retired, and the epoch is within the policy's grace period after that activation
    (`epoch <= activation + grace_epochs`: a retired version is destroyable only from
    `retired_epoch + grace_epochs`, and it retired at that activation)."""
    if primary is None or primary.state is not VS.ACTIVE:
        return "the key has no active primary"
    if primary.rolled_back_epoch:
        return f"the primary (version {primary.number}) is itself the result of a rollback"
    if primary.replaced != target.number:
        return f"version {target.number} is not the version the primary replaced"
    if target.state is not VS.RETIRED:
        return f"version {target.number} is {target.state.value}"
    last = primary.activation_epoch + grace_epochs
    if epoch > last:
        return f"the grace period ended at epoch {last}"
    return ""


# The one exception to "a retired version may not sign" (VERSION_USES): a sign request on
# the primary inside its policy's dual-sign window is also signed by the retired version
# the primary replaced. These are the states that version may be in for that.
DUAL_SIGN_STATES: frozenset[VersionState] = frozenset({VS.RETIRED})


def dual_sign_version(
    purpose: Purpose, primary: Version, previous: Version | None, dual_sign_epochs: int,
    epoch: int,
) -> int:  # fmt: skip
    """The version that also signs a new sign request on `primary` at `epoch` (0 = none):
    the retired version the primary replaced when the primary activated by rotation (not
    by a rollback), while `epoch < activation + dual_sign_epochs`."""
    if purpose is not Purpose.SIGN or previous is None or dual_sign_epochs <= 0:
        return 0
    if primary.rolled_back_epoch or primary.replaced != previous.number:
        return 0
    if epoch >= primary.activation_epoch + dual_sign_epochs:
        return 0
    return previous.number if may_dual_sign(purpose, previous, epoch) else 0


def may_dual_sign(purpose: Purpose, v: Version, epoch: int) -> bool:
    """May `v` add its signature to a dual-sign request (its state allows it now)?"""
    return purpose is Purpose.SIGN and version_state_at(v, epoch) in DUAL_SIGN_STATES


def never_active(v: Version) -> bool:
    """Was version `v` never active (never usable for anything)?

    A version becomes active only on entering its `activation_epoch`, which is set when
    its DKG completes (so 0 = the DKG never completed: aborted, or revoked while its DKG
    ran). A version whose DKG completed can still be revoked while pending: it is revoked
    at the current epoch, which is then before its activation epoch. A version that was
    active is revoked, if ever, at or after its activation epoch, and only an active
    version retires. (`activated_at` is the voters' wall clock, possibly 0: not used.)
    """
    if v.retired_epoch:
        return False
    if not v.activation_epoch:
        return True
    return 0 < v.revoked_epoch < v.activation_epoch


def may_retry_create(versions: Iterable[Version]) -> bool:
    """May a `create_key` for an existing key start over (its purpose, policy and the
    absence of an open lifecycle request are checked by the caller)? Only if every
    version is destroyed and none was ever active: nothing was ever signed, encrypted
    to or decrypted with this key id, so a new first version changes no one's view."""
    return all(v.state is VS.DESTROYED and never_active(v) for v in versions)
