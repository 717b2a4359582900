"""The custody state machine: pure, deterministic, replicated through Raft.

`Machine.apply(bytes) -> bytes` applies one committed log entry; `snapshot()` and
`restore()` move the whole state. No I/O, clock or randomness in here: time
enters only as values carried inside commands. See docs/state-machine.md.
"""

from .approvals import sign_approval, sign_command, signing_message, with_signature
from .audit import GENESIS, decode_records, encode_records, verify_chain, verify_export
from .commands import (
    COMMANDS,
    SIGNED_KINDS,
    AddPrincipal,
    AdvanceEpoch,
    Approve,
    Bootstrap,
    Command,
    CreateKey,
    MemberSpec,
    PrincipalSpec,
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
from .digest import payload_hash, request_digest
from .errors import ChainError, DecodeError, Reason, Rejected, StateError
from .machine import Machine, decode_outcome, encode_outcome
from .model import (
    AuditRecord,
    Op,
    Outcome,
    Purpose,
    RequestKind,
    RequestState,
    Role,
    State,
    VersionState,
)

__all__ = [
    "COMMANDS",
    "GENESIS",
    "SIGNED_KINDS",
    "AddPrincipal",
    "AdvanceEpoch",
    "Approve",
    "AuditRecord",
    "Bootstrap",
    "ChainError",
    "Command",
    "CreateKey",
    "DecodeError",
    "Machine",
    "MemberSpec",
    "Op",
    "Outcome",
    "PrincipalSpec",
    "Purpose",
    "Reason",
    "RecordDkgResult",
    "RecordFailure",
    "RecordResult",
    "Rejected",
    "RequestDecrypt",
    "RequestDestroy",
    "RequestKind",
    "RequestRevoke",
    "RequestRotate",
    "RequestSign",
    "RequestState",
    "Role",
    "SetPolicy",
    "State",
    "StateError",
    "VersionState",
    "decode_command",
    "decode_outcome",
    "decode_records",
    "encode_command",
    "encode_outcome",
    "encode_records",
    "payload_hash",
    "request_digest",
    "sign_approval",
    "sign_command",
    "signing_message",
    "verify_chain",
    "verify_export",
    "with_signature",
]
