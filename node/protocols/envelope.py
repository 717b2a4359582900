"""What binds an envelope's wrapped key and a member's partial (docs/envelope.md).

The client (`node.client.envelope`) and every member (`node.server.routes_envelope`)
build the same TDH2 label, partial-request binding and confirmation digest; they
live here once, so the two sides cannot drift apart.

    Label(key_id, version, context = context.encode("ascii"),
          aad = "custody/envelope/v1/label" || u16 len || cluster_id)
"""

from __future__ import annotations

import hashlib
import re

from shares import tdec

MAX_CONTEXT = 255  # a tdec label context is at most 255 bytes
LABEL_AAD = b"custody/envelope/v1/label"
PARTIAL_REQUEST = b"custody/envelope/v1/partial/"
CONFIRMATION = b"custody/envelope/v1/confirmation"
_CONTEXT_RE = re.compile(r"[\x20-\x7e]*")


class EnvelopeError(ValueError):
    """A malformed envelope file, a wrong context, or a decryption that cannot finish."""


def check_context(context: str) -> bytes:
    """The context as label bytes: printable ASCII, at most 255 characters."""
    if not isinstance(context, str) or not _CONTEXT_RE.fullmatch(context):
        raise EnvelopeError("the context must be printable ASCII")
    if len(context) > MAX_CONTEXT:
        raise EnvelopeError(f"the context must be at most {MAX_CONTEXT} characters")
    return context.encode("ascii")


def label_aad(cluster_id: str) -> bytes:
    cid = cluster_id.encode("utf-8")
    return LABEL_AAD + len(cid).to_bytes(2, "big") + cid


def label_for(cluster_id: str, key_id: str, version: int, context: str) -> tdec.Label:
    """The TDH2 label for a decrypt request: the members build it from their replica."""
    return tdec.Label(key_id, version, check_context(context), label_aad(cluster_id))


def context_digest(context: str) -> bytes:
    return hashlib.sha256(check_context(context)).digest()


def partial_request(ref: str) -> bytes:
    """What binds a member's partial decryption (its DLEQ proof) to one request."""
    return PARTIAL_REQUEST + ref.encode("utf-8")


def confirmation_of(partial: bytes) -> bytes:
    """The 32-byte digest a member records (`record_result`) for a partial it gave."""
    return hashlib.sha256(CONFIRMATION + partial).digest()
