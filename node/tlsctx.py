"""TLS 1.3 mutual-authentication contexts from a PKI directory, and peer identity mapping.

Both sides present a certificate from the cluster CA and verify the other's.
Hostname checking on the client proves only that the server holds *a* node
certificate for that host; in a test cluster every node is ``127.0.0.1``, so
callers that dial a specific node must also check ``peer_identity`` against the
node they meant (``require_peer``).
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Protocol

from consensus import tls as _tls
from node.pki.identity import identity_from_der
from node.pki.manifest import Pki
from node.pki.names import NODE_ROLE, Identity, PkiError


class _HasPeerCert(Protocol):
    def getpeercert(self, binary_form: bool = ...) -> object: ...


def server_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Server side: TLS 1.3 only, a client certificate from ``ca`` is required."""
    return _tls.server_context(ca, cert, key)


def client_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Client side: TLS 1.3 only, presents ``cert``, verifies the server and its host name.

    Pass the node's host (one of its SANs) as ``server_hostname`` when connecting.
    """
    return _tls.client_context(ca, cert, key, check_hostname=True)


def node_server_context(pki: Pki, node: str) -> ssl.SSLContext:
    """What node ``node`` listens with (peers and clients both connect to it)."""
    cert, key = pki.node_paths(node)
    return server_context(pki.ca_cert_path, cert, key)


def node_client_context(pki: Pki, node: str) -> ssl.SSLContext:
    """What node ``node`` dials its peers with (its node certificate is also a client cert)."""
    cert, key = pki.node_paths(node)
    return client_context(pki.ca_cert_path, cert, key)


def principal_client_context(pki: Pki, name: str) -> ssl.SSLContext:
    """What principal ``name`` (approver, client, operator, auditor) dials a node with."""
    cert, key = pki.principal_paths(name)
    return client_context(pki.ca_cert_path, cert, key)


def node_hostname(pki: Pki, node: str) -> str:
    """The host to dial ``node`` at and to pass as ``server_hostname`` (its first SAN host)."""
    return pki.manifest.node(node).hosts[0]


def peer_identity_from_der(der: bytes | None) -> Identity:
    """Map a peer's DER certificate to ``Identity(name, role)``; ``PkiError`` if not ours."""
    if der is None:
        raise PkiError("peer presented no certificate")
    return _identity_of(der)


@functools.lru_cache(maxsize=1024)
def _identity_of(der: bytes) -> Identity:
    """Parsing a certificate costs ~140 µs; the API asks on every request of a
    connection, so the answer for the same DER bytes is kept (failures are not)."""
    return identity_from_der(der)


def peer_identity(ssl_object: _HasPeerCert) -> Identity:
    """The identity of the peer of an ``ssl.SSLObject``/``ssl.SSLSocket`` after the handshake.

    For asyncio: ``writer.get_extra_info("ssl_object")``; for aiohttp:
    ``request.transport.get_extra_info("ssl_object")``.
    """
    if ssl_object is None:
        raise PkiError("connection is not TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if der is not None and not isinstance(der, bytes):
        raise PkiError("unexpected peer certificate type")
    return peer_identity_from_der(der)


def require_peer(ssl_object: _HasPeerCert, name: str, role: str = NODE_ROLE) -> Identity:
    """Check that the peer is exactly ``(name, role)``, e.g. the node we dialled."""
    got = peer_identity(ssl_object)
    if got != Identity(name, role):
        raise PkiError(f"peer is {got.role} {got.name!r}, expected {role} {name!r}")
    return got


__all__ = [
    "client_context",
    "node_client_context",
    "node_hostname",
    "node_server_context",
    "peer_identity",
    "peer_identity_from_der",
    "principal_client_context",
    "require_peer",
    "server_context",
]
