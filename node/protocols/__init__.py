"""Pure protocol engines of a node (sans I/O): DKG sessions, FROST signing, their wire formats.

Nothing here opens sockets, reads clocks or files, or talks to the HSM: the
node's driver feeds in bytes from the log and from peers and sends what comes
back. Randomness is an `rng` argument (`os.urandom` in production). See
docs/protocols.md.
"""

from __future__ import annotations

from .dkg_session import (
    DkgCulprits,
    DkgError,
    DkgResult,
    DkgSession,
    DkgStateError,
    OwnPostMismatch,
    dkg_context,
)
from .sealbox import SealError, open_, seal
from .signing import (
    BadShares,
    NonceStock,
    NonceStockError,
    NotEnoughSigners,
    SigningError,
    SigningRefused,
    UnknownCommitment,
    aggregate_or_blame,
    choose_signers,
    member_sign_share,
)
from .wire import (
    CommitRequest,
    CommitResponse,
    Round2Delivery,
    ShareRequest,
    ShareResponse,
    WireError,
)

__all__ = [
    "BadShares",
    "CommitRequest",
    "CommitResponse",
    "DkgCulprits",
    "DkgError",
    "DkgResult",
    "DkgSession",
    "DkgStateError",
    "NonceStock",
    "NonceStockError",
    "NotEnoughSigners",
    "OwnPostMismatch",
    "Round2Delivery",
    "SealError",
    "ShareRequest",
    "ShareResponse",
    "SigningError",
    "SigningRefused",
    "UnknownCommitment",
    "WireError",
    "aggregate_or_blame",
    "choose_signers",
    "dkg_context",
    "member_sign_share",
    "open_",
    "seal",
]
