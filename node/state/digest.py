"""Canonical request digest and the length-prefixed encoding under it.

The digest is what approvers sign and what every node recomputes before it
contributes a share, so its bytes must be identical on every node and in every
client library. Encoding (documented byte by byte in docs/state-machine.md):

    digest = SHA-512( lp(REQUEST_CONTEXT)
                      || lp(cluster_id) || lp(kind) || lp(request_id) || lp(author)
                      || lp(key_id) || lp(u64be(version)) || lp(context)
                      || lp(payload_sha512) || lp(u64be(activate_epoch)) )

    lp(x) = u32be(len(x)) || x         strings are UTF-8
    payload_sha512 = SHA-512(lp(PAYLOAD_CONTEXT) || payload)   (empty payload: b"")
"""

from __future__ import annotations

import hashlib
import struct

REQUEST_CONTEXT = b"custody-cluster/v1/request-digest"
PAYLOAD_CONTEXT = b"custody-cluster/v1/request-payload"
COMMAND_CONTEXT = b"custody-cluster/v1/command"
DKG_POST_CONTEXT = b"custody-cluster/v1/dkg-post"
SIGNED_COMMAND_CONTEXT = b"custody-cluster/v1/signed-command"


def lp(data: bytes | str) -> bytes:
    """Length-prefix `data` (u32 big-endian length, then the bytes)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > 0xFFFFFFFF:
        raise ValueError("field too long to length-prefix")
    return struct.pack(">I", len(raw)) + raw


def u64(n: int) -> bytes:
    if not 0 <= n < 1 << 64:
        raise ValueError("integer out of u64 range")
    return struct.pack(">Q", n)


def payload_hash(payload: bytes) -> bytes:
    """Domain-separated SHA-512 of a request payload (message or ciphertext); b"" if none."""
    if not payload:
        return b""
    return hashlib.sha512(lp(PAYLOAD_CONTEXT) + payload).digest()


def request_digest(
    *,
    cluster_id: str,
    kind: str,
    request_id: str,
    author: str,
    key_id: str,
    version: int,
    context: str,
    payload_sha512: bytes,
    activate_epoch: int = 0,
) -> bytes:
    """The 64-byte canonical digest of a request (see the module docstring)."""
    parts = (
        lp(REQUEST_CONTEXT),
        lp(cluster_id),
        lp(kind),
        lp(request_id),
        lp(author),
        lp(key_id),
        lp(u64(version)),
        lp(context),
        lp(payload_sha512),
        lp(u64(activate_epoch)),
    )
    return hashlib.sha512(b"".join(parts)).digest()


def command_digest(encoded_command: bytes) -> bytes:
    """Digest of a command's canonical encoding (exactly-once check, audit of non-requests)."""
    return hashlib.sha512(lp(COMMAND_CONTEXT) + encoded_command).digest()


def dkg_post_digest(group_public_key: bytes, verification_shares: tuple[bytes, ...]) -> bytes:
    """Digest of one member's DKG result post; all members' posts must be equal."""
    body = lp(DKG_POST_CONTEXT) + lp(group_public_key) + u64(len(verification_shares))
    body += b"".join(lp(s) for s in verification_shares)
    return hashlib.sha512(body).digest()


def signing_digest(cluster_id: str, signing_bytes: bytes) -> bytes:
    """What the author of a signed command signs: its canonical body, bound to the cluster."""
    return hashlib.sha512(lp(SIGNED_COMMAND_CONTEXT) + lp(cluster_id) + signing_bytes).digest()
