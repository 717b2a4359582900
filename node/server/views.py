"""JSON views of the replicated state for the HTTP API (public values only).

Never in a view: shares, nonces, approval signatures' secrets (there are
none), plaintexts. Sign requests show their message only to who may need it
(the requester and approvers reviewing it); everyone else sees its SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.state.model import Alias, AuditRecord, Key, Policy, Request, State, Version


def pem_of(group_public_key: bytes) -> str:
    pub = Ed25519PublicKey.from_public_bytes(group_public_key)
    return pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def version_view(v: Version) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": v.number,
        "state": v.state.value,
        "request": v.request_id,
        "activation_epoch": v.activation_epoch,
        "retired_epoch": v.retired_epoch,
        "revoked_epoch": v.revoked_epoch,
        "destroyed_epoch": v.destroyed_epoch,
        "uses": v.uses,
        "replaced": v.replaced,
        "rolled_back_epoch": v.rolled_back_epoch,
        "erased_by": list(v.erased_by),
        "dkg_posts": sorted(v.dkg_posts),
        "group_public_key": v.group_public_key.hex() or None,
        "group_public_key_pem": pem_of(v.group_public_key) if v.group_public_key else None,
        "verification_shares": [s.hex() for s in v.verification_shares],
    }
    return out


def aliases_of(st: State) -> dict[str, list[str]]:
    """key id -> its live aliases, sorted."""
    out: dict[str, list[str]] = {}
    for name in sorted(st.aliases):
        alias = st.aliases[name]
        if not alias.deleted_epoch:
            out.setdefault(alias.key_id, []).append(name)
    return out


def key_view(
    k: Key, *, versions: bool = True, aliases: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """A key; its metadata (labels with no authority, docs/metadata.md) and `aliases`,
    the live aliases naming it (`aliases_of`)."""
    out: dict[str, Any] = {
        "key_id": k.key_id,
        "purpose": k.purpose.value,
        "policy_id": k.policy_id,
        "primary": k.primary,
        "lifecycle_request": k.lifecycle_request or None,
        "owner": k.owner,
        "description": k.description,
        "tags": {t: k.tags[t] for t in sorted(k.tags)},
        "aliases": list(aliases),
    }
    if versions:
        out["versions"] = [version_view(k.versions[n]) for n in sorted(k.versions)]
    return out


def alias_view(a: Alias) -> dict[str, Any]:
    return {"alias": a.name, "key_id": a.key_id, "created_epoch": a.created_epoch}


def policy_view(p: Policy) -> dict[str, Any]:
    return {
        "policy_id": p.policy_id,
        "requesters": list(p.requesters),
        "operations": list(p.operations),
        "approvers": list(p.approvers),
        "k": p.k,
        "rotation_interval_s": p.rotation_interval_s,
        "max_uses": p.max_uses,
        "grace_epochs": p.grace_epochs,
        "waiting_epochs": p.waiting_epochs,
        "escrow": p.escrow,
        "dual_sign_epochs": p.dual_sign_epochs,
    }


def request_view(st: State, r: Request, *, show_payload: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ref": r.ref,
        "request_id": r.request_id,
        "kind": r.kind.value,
        "author": r.author,
        "state": r.state.value,
        "key_id": r.key_id or None,
        "purpose": r.purpose or None,
        "version": r.version,
        "context": r.context,
        "policy_id": r.policy_id or None,
        "policy_hash": r.policy_hash.hex(),
        "approvers": list(r.approvers),
        "k": r.k,
        "approvals": sorted(r.approvals),
        "activate_epoch": r.activate_epoch,
        "dual_version": r.dual_version,
        "effective_epoch": r.effective_epoch,
        "submitted_epoch": r.submitted_epoch,
        "decided_epoch": r.decided_epoch,
        "payload_hash": r.payload_hash.hex() if r.payload_hash else "",
        "payload_sha256": hashlib.sha256(r.payload).hexdigest() if r.payload else None,
        "digest": r.digest.hex(),
        "failure": r.failure or None,
        "reports": dict(sorted(r.reports.items())),
        "cluster_id": st.cluster_id,
    }
    if show_payload and r.payload:
        out["payload_b64"] = base64.b64encode(r.payload).decode()
    if r.kind.value == "sign" and r.result:
        out["signature"] = r.result[:64].hex()  # signatures are public
        if r.dual_version and len(r.result) == 128:  # and the replaced version's
            out["previous_version"] = r.dual_version
            out["previous_signature"] = r.result[64:].hex()
    policy = st.policies.get(r.policy_id) if r.policy_id else None
    if policy is not None:
        out["policy"] = policy_view(policy)
    elif r.policy_id == "" and r.kind.value not in ("sign", "decrypt"):
        gov = st.governance
        out["governance"] = {
            "approvers": list(gov.approvers), "k": gov.k,
            "time_lock_epochs": gov.time_lock_epochs,
        }  # fmt: skip
    return out


def audit_view(a: AuditRecord) -> dict[str, Any]:
    return {
        "seq": a.seq,
        "epoch": a.epoch,
        "author": a.author,
        "kind": a.kind,
        "request_id": a.request_id,
        "subject": a.subject,
        "key_id": a.key_id,
        "version": a.version,
        "digest": a.digest.hex(),
        "outcome": a.outcome,
        "hash": a.hash.hex(),
    }
