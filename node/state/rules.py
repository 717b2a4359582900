"""The rules, as tables: lifecycles, who may issue what, what a version may do.

Everything the machine decides about legality is looked up here, so that the
rules can be read (and reviewed) in one place. Pure data plus tiny lookups.
"""

from __future__ import annotations

from .errors import Reason, Rejected
from .model import Op, Purpose, RequestState, Role, Version, VersionState

VS = VersionState
RS = RequestState

# Key-version lifecycle: (state, event) -> next state. Only forward moves exist.
VERSION_TRANSITIONS: dict[tuple[VersionState, str], VersionState] = {
    (VS.PENDING, "activate"): VS.ACTIVE,
    (VS.PENDING, "abort"): VS.DESTROYED,  # DKG failed: erase whatever shares exist
    (VS.PENDING, "revoke"): VS.REVOKED,
    (VS.ACTIVE, "retire"): VS.RETIRED,
    (VS.ACTIVE, "revoke"): VS.REVOKED,
    (VS.RETIRED, "revoke"): VS.REVOKED,
    (VS.RETIRED, "destroy"): VS.DESTROYED,
    (VS.REVOKED, "destroy"): VS.DESTROYED,
}

# Request lifecycle.
REQUEST_TRANSITIONS: dict[tuple[RequestState, str], RequestState] = {
    (RS.PENDING, "quorum"): RS.APPROVED,
    (RS.PENDING, "fail"): RS.FAILED,  # its version was revoked/destroyed before approval
    (RS.APPROVED, "complete"): RS.EXECUTED,
    (RS.APPROVED, "fail"): RS.FAILED,
}

# Which roles may issue which command kind (the author must also pass the
# per-command checks, e.g. policy membership for sign/decrypt and approve).
COMMAND_ROLES: dict[str, frozenset[Role]] = {
    "bootstrap": frozenset({Role.OPERATOR}),
    "add_principal": frozenset({Role.OPERATOR}),
    "set_policy": frozenset({Role.OPERATOR}),
    "advance_epoch": frozenset({Role.NODE}),  # a vote; `threshold` members move the epoch
    "create_key": frozenset({Role.OPERATOR}),
    "request_sign": frozenset({Role.CLIENT}),
    "request_decrypt": frozenset({Role.CLIENT}),
    "request_rotate": frozenset({Role.OPERATOR, Role.NODE}),
    "request_revoke": frozenset({Role.OPERATOR}),
    "request_destroy": frozenset({Role.OPERATOR}),
    "approve": frozenset({Role.APPROVER}),
    "record_dkg_result": frozenset({Role.NODE}),
    "record_result": frozenset({Role.NODE}),
    "record_failure": frozenset({Role.NODE}),
}

# What a version in a given state may be used for (before the purpose filter).
VERSION_USES: dict[VersionState, frozenset[Op]] = {
    VS.PENDING: frozenset(),
    VS.ACTIVE: frozenset({Op.SIGN, Op.VERIFY, Op.ENCRYPT, Op.DECRYPT}),
    VS.RETIRED: frozenset({Op.VERIFY, Op.DECRYPT}),
    VS.REVOKED: frozenset(),
    VS.DESTROYED: frozenset(),
}

# What a key of a given purpose may ever be used for (domain separation).
PURPOSE_OPS: dict[Purpose, frozenset[Op]] = {
    Purpose.SIGN: frozenset({Op.SIGN, Op.VERIFY}),
    Purpose.ENCRYPT: frozenset({Op.ENCRYPT, Op.DECRYPT}),
}

# How far one advance moves the epoch. One step: every epoch is visited, so no
# activation, grace period or time lock boundary is ever jumped, and reaching the
# schema's MAX_EPOCH would take 2^48 quorum votes.
MAX_EPOCH_STEP = 1

# Operations a client may ask the cluster to perform (the rest are public-key ops).
REQUESTABLE_OPS: frozenset[str] = frozenset({Op.SIGN.value, Op.DECRYPT.value})


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
