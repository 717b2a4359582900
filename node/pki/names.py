"""Names, roles and host strings of the cluster PKI, validated strictly (pure).

Every identity that ends up in a certificate or in ``pki.json`` passes through
these checks first, so a bad command line is rejected before anything is
written and a tampered manifest or certificate is rejected before it is used.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# Roles of human or service principals. Nodes have the separate role "node".
PRINCIPAL_ROLES: tuple[str, ...] = ("approver", "client", "operator", "auditor")
NODE_ROLE = "node"
ALL_ROLES: tuple[str, ...] = (NODE_ROLE, *PRINCIPAL_ROLES)
# Roles that also get an Ed25519 signing key (files ``approval.key``/``.pub``): approvers
# sign approvals, operators their commands, clients their requests under a grant.
SIGNING_ROLES: frozenset[str] = frozenset({"approver", "client", "operator"})
# Of those, roles whose key may be absent from a manifest: ``pki init`` gave clients no key
# before, and such a manifest still loads (the client registers one through governance).
OPTIONAL_KEY_ROLES: frozenset[str] = frozenset({"client"})

MIN_NODES = 1
MAX_NODES = 15
MAX_PRINCIPALS = 256
MAX_HOSTS_PER_NODE = 16
MAX_NAME_LEN = 32

# Lower-case ASCII letter first, then letters, digits, '-' or '_'; 1..32 chars.
_PRINCIPAL_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_NODE_ID_RE = re.compile(r"node-([1-9][0-9]?)")
# RFC 1123 host name labels; total length bounded.
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# The one SAN URI grammar carried by every leaf certificate of this PKI.
URI_PREFIX = "custody:role:"
_URI_RE = re.compile(
    r"custody:role:(node|approver|client|operator|auditor):principal:([a-z][a-z0-9_-]{0,31})"
)

DEFAULT_NODE_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")


class PkiError(ValueError):
    """Bad PKI input (argument, manifest, file or certificate); the message says what."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is: ``("node-2", "node")`` or ``("alice", "approver")``."""

    name: str
    role: str


def node_id(index: int) -> str:
    """The canonical name of node ``index`` (1-based)."""
    if not isinstance(index, int) or isinstance(index, bool) or not MIN_NODES <= index <= MAX_NODES:
        raise PkiError(f"node index must be an integer in {MIN_NODES}..{MAX_NODES}, got {index!r}")
    return f"node-{index}"


def node_index(name: str) -> int:
    """Parse ``node-<i>`` strictly (no leading zeros, i in 1..15)."""
    m = _NODE_ID_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None or not MIN_NODES <= int(m.group(1)) <= MAX_NODES:
        raise PkiError(f"not a node id (node-1..node-{MAX_NODES}): {name!r}")
    return int(m.group(1))


def check_node_count(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_NODES <= n <= MAX_NODES:
        raise PkiError(f"node count must be an integer in {MIN_NODES}..{MAX_NODES}, got {n!r}")
    return n


def check_principal_name(name: object) -> str:
    """A principal name: ``[a-z][a-z0-9_-]{0,31}``, and never ``node-…`` (reserved for nodes)."""
    if not isinstance(name, str) or _PRINCIPAL_RE.fullmatch(name) is None:
        raise PkiError(
            f"invalid principal name {name!r}: use 1-{MAX_NAME_LEN} characters from a-z, 0-9, "
            "'-' and '_', starting with a letter"
        )
    if name.startswith("node-"):
        raise PkiError(f"invalid principal name {name!r}: names starting with 'node-' are reserved")
    return name


def check_role(role: object) -> str:
    if role not in PRINCIPAL_ROLES:
        raise PkiError(f"unknown principal role {role!r}; expected one of {PRINCIPAL_ROLES}")
    assert isinstance(role, str)
    return role


def check_host(host: object) -> str:
    """An IP address (v4/v6, canonical form) or a lower-case DNS name without wildcards."""
    if not isinstance(host, str) or not 1 <= len(host) <= 253:
        raise PkiError(f"invalid host {host!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if host != host.lower() or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise PkiError(f"invalid host {host!r}: expected an IP address or a lower-case DNS name")
    if labels[-1].isdigit():
        raise PkiError(f"invalid host {host!r}: looks like a malformed IP address")
    return host


def check_hosts(hosts: object) -> tuple[str, ...]:
    if not isinstance(hosts, list | tuple) or not 1 <= len(hosts) <= MAX_HOSTS_PER_NODE:
        raise PkiError(f"a node needs 1..{MAX_HOSTS_PER_NODE} hosts, got {hosts!r}")
    checked = tuple(check_host(h) for h in hosts)
    if len(set(checked)) != len(checked):
        raise PkiError(f"duplicate host in {list(hosts)!r}")
    return checked


def identity_uri(identity: Identity) -> str:
    """The SAN URI naming ``identity``: ``custody:role:<role>:principal:<name>``."""
    parse_identity_uri(f"{URI_PREFIX}{identity.role}:principal:{identity.name}")
    return f"{URI_PREFIX}{identity.role}:principal:{identity.name}"


def parse_identity_uri(uri: str) -> Identity:
    """Parse the SAN URI strictly; nodes must be ``node-<i>``, principals must not."""
    m = _URI_RE.fullmatch(uri) if isinstance(uri, str) else None
    if m is None:
        raise PkiError(f"not a custody identity URI: {uri!r}")
    role, name = m.group(1), m.group(2)
    if role == NODE_ROLE:
        node_index(name)
    else:
        check_principal_name(name)
    return Identity(name=name, role=role)
