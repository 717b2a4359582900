"""Canonical request digest and the length-prefixed encoding under it.

The digest is what approvers sign and what every node recomputes before it
contributes a share, so its bytes must be identical on every node and in every
client library. It binds every field an approver decides on, for every kind:
what (kind, key, purpose, version, context, payload, activation epoch), who
asked (author, request id), under which rules (policy id and the hash of the
policy's content at submission) and with which quorum (approvers, k).
Encoding (documented byte by byte in docs/state-machine.md):

    digest = SHA-512( lp(REQUEST_CONTEXT)
                      || lp(cluster_id) || lp(kind) || lp(request_id) || lp(author)
                      || lp(key_id) || lp(purpose) || lp(policy_id) || lp(policy_sha512)
                      || lp(names(approvers)) || lp(u64be(k))
                      || lp(u64be(version)) || lp(context)
                      || lp(payload_sha512) || lp(u64be(activate_epoch))
                      [|| lp(u64be(dual_version))] )   only when dual_version != 0

    lp(x) = u32be(len(x)) || x         strings are UTF-8 (ASCII by schema)
    names(xs) = lp(x1) || lp(x2) || ...  (sorted)
    payload_sha512 = SHA-512(lp(PAYLOAD_CONTEXT) || payload)   (empty payload: b"")

Governance requests use the same layout: no key, purpose, policy id or version; the
governance policy's hash as `policy_sha512`; the change itself (the submitting command's
canonical bytes without signature) as the payload.
"""

from __future__ import annotations

import hashlib
import struct

from .model import Governance, Policy, Request

# Kinds whose version is chosen at submission (create/rotate hash 0: their version
# number is assigned on approval, after the approvers signed).
VERSIONED_KINDS = frozenset({"sign", "decrypt", "revoke", "destroy", "rollback"})
POLICY_FIELDS = (
    "policy_id", "requesters", "operations", "approvers", "k", "rotation_interval_s",
    "max_uses", "grace_epochs", "waiting_epochs", "escrow", "dual_sign_epochs",
)  # fmt: skip

REQUEST_CONTEXT = b"custody-cluster/v2/request-digest"
POLICY_CONTEXT = b"custody-cluster/v1/policy"
PAYLOAD_CONTEXT = b"custody-cluster/v1/request-payload"
COMMAND_CONTEXT = b"custody-cluster/v1/command"
DKG_POST_CONTEXT = b"custody-cluster/v1/dkg-post"
SIGNED_COMMAND_CONTEXT = b"custody-cluster/v1/signed-command"
GENESIS_CONTEXT = b"custody-cluster/v1/genesis"
GOVERNANCE_CONTEXT = b"custody-cluster/v1/governance-policy"
CHECKPOINT_CONTEXT = b"custody-cluster/v1/checkpoint"


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


def names(items: tuple[str, ...] | list[str]) -> bytes:
    """A list of strings, each length-prefixed (callers pass them sorted)."""
    return b"".join(lp(x) for x in items)


def policy_hash(
    *,
    policy_id: str,
    requesters: tuple[str, ...],
    operations: tuple[str, ...],
    approvers: tuple[str, ...],
    k: int,
    rotation_interval_s: int,
    max_uses: int,
    grace_epochs: int,
    waiting_epochs: int,
    escrow: bool,
    dual_sign_epochs: int = 0,
) -> bytes:
    """SHA-512 of a policy's whole content: what a create-key approver agrees to.
    `dual_sign_epochs` is appended (u64) only when non-zero, so a policy without a
    dual-sign window hashes as before (the fields are fixed-width: still unambiguous)."""
    body = b"".join(
        (
            lp(POLICY_CONTEXT), lp(policy_id), lp(names(requesters)), lp(names(operations)),
            lp(names(approvers)), u64(k), u64(rotation_interval_s), u64(max_uses),
            u64(grace_epochs), u64(waiting_epochs), u64(int(escrow)),
            u64(dual_sign_epochs) if dual_sign_epochs else b"",
        )
    )  # fmt: skip
    return hashlib.sha512(body).digest()


def request_digest(
    *,
    cluster_id: str,
    kind: str,
    request_id: str,
    author: str,
    key_id: str,
    purpose: str,
    policy_id: str,
    policy_sha512: bytes,
    approvers: tuple[str, ...],
    k: int,
    version: int,
    context: str,
    payload_sha512: bytes,
    activate_epoch: int,
    dual_version: int = 0,
) -> bytes:
    """The 64-byte canonical digest of a request (see the module docstring). A dual-sign
    request's `dual_version` is one more field at the end (absent when 0, so every other
    request's digest is unchanged; the fields are length-prefixed: still unambiguous)."""
    parts = (
        lp(REQUEST_CONTEXT),
        lp(cluster_id),
        lp(kind),
        lp(request_id),
        lp(author),
        lp(key_id),
        lp(purpose),
        lp(policy_id),
        lp(policy_sha512),
        lp(names(approvers)),
        lp(u64(k)),
        lp(u64(version)),
        lp(context),
        lp(payload_sha512),
        lp(u64(activate_epoch)),
    )
    if dual_version:
        parts = (*parts, lp(u64(dual_version)))
    return hashlib.sha512(b"".join(parts)).digest()


def command_digest(encoded_command: bytes) -> bytes:
    """Digest of a command's canonical encoding (exactly-once check, audit of non-requests)."""
    return hashlib.sha512(lp(COMMAND_CONTEXT) + encoded_command).digest()


def dkg_post_digest(group_public_key: bytes, verification_shares: tuple[bytes, ...]) -> bytes:
    """Digest of one member's DKG result post; all members' posts must be equal."""
    body = lp(DKG_POST_CONTEXT) + lp(group_public_key) + u64(len(verification_shares))
    body += b"".join(lp(s) for s in verification_shares)
    return hashlib.sha512(body).digest()


def genesis_digest(bootstrap_signing_bytes: bytes) -> bytes:
    """The cluster's genesis: the digest of its one bootstrap command (without signature).

    Cluster initialisation writes it into every member's configuration; a machine
    accepts only the bootstrap with this digest, so a bootstrap raced in first by
    anyone else is refused.
    """
    return hashlib.sha512(lp(GENESIS_CONTEXT) + bootstrap_signing_bytes).digest()


def signing_digest(cluster_id: str, signing_bytes: bytes) -> bytes:
    """What the author of a signed command signs: its canonical body, bound to the cluster."""
    return hashlib.sha512(lp(SIGNED_COMMAND_CONTEXT) + lp(cluster_id) + signing_bytes).digest()


def digest_of(req: Request, cluster_id: str, payload_sha512: bytes) -> bytes:
    """Recompute a stored request's digest from its own fields (never from `req.digest`)."""
    return request_digest(
        cluster_id=cluster_id,
        kind=req.kind.value,
        request_id=req.request_id,
        author=req.author,
        key_id=req.key_id,
        purpose=req.purpose,
        policy_id=req.policy_id,
        policy_sha512=req.policy_hash,
        approvers=req.approvers,
        k=req.k,
        version=req.version if req.kind.value in VERSIONED_KINDS else 0,
        context=req.context,
        payload_sha512=payload_sha512,
        activate_epoch=req.activate_epoch,
        dual_version=req.dual_version,
    )


def policy_hash_of(policy: Policy) -> bytes:
    return policy_hash(**{f: getattr(policy, f) for f in POLICY_FIELDS})


def governance_hash(approvers: tuple[str, ...], k: int, time_lock_epochs: int) -> bytes:
    """SHA-512 of the governance policy: the `policy_sha512` of every governance request,
    so a governance approval also agrees to the quorum and time lock it was asked under."""
    body = lp(GOVERNANCE_CONTEXT) + lp(names(sorted(approvers))) + u64(k) + u64(time_lock_epochs)
    return hashlib.sha512(body).digest()


def governance_hash_of(gov: Governance) -> bytes:
    return governance_hash(gov.approvers, gov.k, gov.time_lock_epochs)


def checkpoint_digest(genesis: bytes, index: int, state_hash: bytes) -> bytes:
    """What a member signs to vouch for the snapshot at log `index`: the cluster's genesis,
    the index and the snapshot's `state_hash`, domain-separated (64 bytes)."""
    return hashlib.sha512(
        lp(CHECKPOINT_CONTEXT) + lp(genesis) + u64(index) + lp(state_hash)
    ).digest()
