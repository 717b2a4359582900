"""Why a command was refused.

Every refusal carries a `Reason` (a stable string that is written into the audit
record and returned to the caller) and a human-readable detail. Reasons are part
of the replicated state and of the audit chain, so their values never change;
add new ones, never rename.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Named rejection reasons (stable wire values)."""

    MALFORMED = "malformed"
    NOT_BOOTSTRAPPED = "not_bootstrapped"
    ALREADY_BOOTSTRAPPED = "already_bootstrapped"
    INVALID_CLUSTER = "invalid_cluster"
    UNKNOWN_AUTHOR = "unknown_author"
    UNAUTHORIZED = "unauthorized"
    REQUEST_ID_CONFLICT = "request_id_conflict"
    DUPLICATE_NAME = "duplicate_name"
    UNKNOWN_PRINCIPAL = "unknown_principal"
    INVALID_PRINCIPAL = "invalid_principal"
    UNKNOWN_POLICY = "unknown_policy"
    INVALID_POLICY = "invalid_policy"
    KEY_EXISTS = "key_exists"
    UNKNOWN_KEY = "unknown_key"
    WRONG_PURPOSE = "wrong_purpose"
    OPERATION_NOT_ALLOWED = "operation_not_allowed"
    UNKNOWN_VERSION = "unknown_version"
    VERSION_NOT_USABLE = "version_not_usable"
    INVALID_TRANSITION = "invalid_transition"
    GRACE_PERIOD = "grace_period"
    ROTATION_IN_PROGRESS = "rotation_in_progress"
    ROTATION_NOT_DUE = "rotation_not_due"
    EPOCH_NOT_FORWARD = "epoch_not_forward"
    UNKNOWN_REQUEST = "unknown_request"
    WRONG_REQUEST_KIND = "wrong_request_kind"
    REQUEST_DECIDED = "request_decided"
    NOT_APPROVED = "not_approved"
    NOT_AN_APPROVER = "not_an_approver"
    BAD_SIGNATURE = "bad_signature"
    DUPLICATE_APPROVAL = "duplicate_approval"
    DUPLICATE_POST = "duplicate_post"
    INVALID_ARGUMENT = "invalid_argument"
    LIMIT_REACHED = "limit_reached"
    BAD_RESULT = "bad_result"
    SELF_APPROVAL = "self_approval"
    NOT_DESTROYED = "not_destroyed"  # an erasure confirmation for a version not destroyed
    # A rollback that is not (or no longer) allowed: not the version the primary replaced,
    # not retired, outside the grace period, a version pending (docs/lifecycle.md)
    ROLLBACK_NOT_ALLOWED = "rollback_not_allowed"
    # Grants (capabilities a key's quorum approved in advance; docs/grants.md)
    UNKNOWN_GRANT = "unknown_grant"
    GRANT_NOT_ACTIVE = "grant_not_active"  # pending (not approved yet), revoked or failed
    GRANT_EXPIRED = "grant_expired"  # the epoch reached the grant's expiry epoch
    GRANT_EXHAUSTED = "grant_exhausted"  # every use of the grant was taken
    OUTSIDE_GRANT = "outside_grant"  # another grantee, key, operation or context
    # Aliases (docs/metadata.md)
    UNKNOWN_ALIAS = "unknown_alias"  # no live alias of that name
    ALIAS_EXISTS = "alias_exists"  # the name is bound (live, or deleted: reserved for its key)


class StateError(Exception):
    """Base class of every error raised by `node.state`."""


class Rejected(StateError):
    """A well-formed command that the rules refuse; nothing but the audit chain changes."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class DecodeError(StateError):
    """Bytes that are not a valid command or snapshot: oversized, wrong type, unknown field."""


class ChainError(StateError):
    """An audit chain that does not verify (altered, removed, inserted or reordered record)."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message if seq is None else f"record {seq}: {message}")
