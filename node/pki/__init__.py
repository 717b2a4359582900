"""The cluster PKI: a CA, node and principal TLS certificates, approval keys, ``pki.json``.

Conventions other code relies on are in ``docs/pki.md``. Load a PKI with
``load_pki(dir)``; build TLS contexts from it with ``node.tlsctx``.
"""

from node.pki.identity import identity_from_certificate, identity_from_der
from node.pki.manifest import Manifest, NodeEntry, Pki, PrincipalEntry, layout, load_pki
from node.pki.names import (
    NODE_ROLE,
    PRINCIPAL_ROLES,
    SIGNING_ROLES,
    Identity,
    PkiError,
    node_id,
    node_index,
)
from node.pki.store import (
    InitRequest,
    InitResult,
    approval_public_keys,
    init_pki,
    load_approval_key,
    make_request,
    principal_pairs,
    verify_pki,
)

__all__ = [
    "NODE_ROLE",
    "PRINCIPAL_ROLES",
    "SIGNING_ROLES",
    "Identity",
    "InitRequest",
    "InitResult",
    "Manifest",
    "NodeEntry",
    "Pki",
    "PkiError",
    "PrincipalEntry",
    "approval_public_keys",
    "identity_from_certificate",
    "identity_from_der",
    "init_pki",
    "layout",
    "load_approval_key",
    "load_pki",
    "make_request",
    "node_id",
    "node_index",
    "principal_pairs",
    "verify_pki",
]
