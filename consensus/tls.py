"""TLS 1.3 mutual-authentication contexts for the consensus transport, and the
mapping from a verified peer certificate to a node id.

Identity is the certificate's CN `node-<id>` under the cluster CA, checked on
both ends (the transport calls `peer_node_id` after every handshake). Host
name checking is off on the client on purpose: it would only prove that the
peer holds *some* node certificate for that address (all test nodes share
127.0.0.1); the CN check against the node we meant to dial is stronger.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

from .certs import MAX_NODE_ID, node_cn

_CN = re.compile(r"node-([1-9][0-9]{0,18})")


class PeerIdentityError(Exception):
    """The peer's verified certificate does not name a node id."""


def _base(purpose: ssl.Purpose | int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)  # type: ignore[arg-type]
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def server_context(ca: str | Path, cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Listen side: TLS 1.3 only; a client certificate from `ca` is required."""
    return _base(ssl.PROTOCOL_TLS_SERVER, Path(ca), Path(cert), Path(key))


def client_context(
    ca: str | Path, cert: str | Path, key: str | Path, *, check_hostname: bool = False
) -> ssl.SSLContext:
    """Dial side: TLS 1.3 only; presents `cert`; the server must chain to `ca`.

    Host names are not checked by default (the transport checks CN -> node id,
    see module doc); callers that dial by host name pass `check_hostname=True`.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, Path(ca), Path(cert), Path(key))
    ctx.check_hostname = check_hostname
    return ctx


def contexts_from_dir(directory: str | Path, node_id: int) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from files written by `certs.write_cluster`."""
    d = Path(directory)
    stem = node_cn(node_id)
    args = (d / "ca.pem", d / f"{stem}.pem", d / f"{stem}.key")
    return server_context(*args), client_context(*args)


def node_id_from_cn(cn: str) -> int:
    m = _CN.fullmatch(cn)
    if not m or int(m.group(1)) > MAX_NODE_ID:
        raise PeerIdentityError(f"certificate CN {cn[:80]!r} is not node-<id>")
    return int(m.group(1))


def peer_node_id(peercert: dict[str, Any] | None) -> int:
    """Node id named by a *verified* peer certificate (`getpeercert()` output)."""
    if not peercert:
        raise PeerIdentityError("peer presented no verified certificate")
    cns = [
        value
        for rdn in peercert.get("subject", ())
        for (attr, value) in rdn
        if attr == "commonName"
    ]
    if len(cns) != 1:
        raise PeerIdentityError(f"certificate has {len(cns)} common names, expected one")
    return node_id_from_cn(cns[0])
