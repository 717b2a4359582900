"""``pki.json``: the one file later code loads the cluster's identities from.

The layout inside the PKI directory is fixed (see ``layout``); the manifest
repeats the paths so consumers need not know the layout, and loading checks
that they are exactly the expected ones, so a tampered manifest cannot point a
node at ``/etc/shadow`` or outside the directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.pki.names import (
    MAX_NODES,
    MAX_PRINCIPALS,
    NODE_ROLE,
    OPTIONAL_KEY_ROLES,
    SIGNING_ROLES,
    Identity,
    PkiError,
    check_hosts,
    check_principal_name,
    check_role,
    node_id,
)

MANIFEST_NAME = "pki.json"
MANIFEST_VERSION = 1
MANIFEST_KIND = "custody-pki"
MAX_MANIFEST_BYTES = 1 << 20


class layout:  # a namespace of path rules, read like a table
    """Relative POSIX paths of every file in a PKI directory."""

    CA_CERT = "ca/ca.crt"
    CA_KEY = "ca/ca.key"

    @staticmethod
    def node_cert(name: str) -> str:
        return f"nodes/{name}/tls.crt"

    @staticmethod
    def node_key(name: str) -> str:
        return f"nodes/{name}/tls.key"

    @staticmethod
    def principal_cert(name: str) -> str:
        return f"principals/{name}/tls.crt"

    @staticmethod
    def principal_key(name: str) -> str:
        return f"principals/{name}/tls.key"

    @staticmethod
    def approval_key(name: str) -> str:
        return f"principals/{name}/approval.key"

    @staticmethod
    def approval_pub(name: str) -> str:
        return f"principals/{name}/approval.pub"


@dataclass(frozen=True, slots=True)
class NodeEntry:
    id: str
    index: int
    hosts: tuple[str, ...]
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class PrincipalEntry:
    name: str
    role: str
    cert: str
    key: str
    approval_key: str | None  # the signing key's file; None for auditors (and old clients)
    approval_public_key_hex: str | None

    @property
    def identity(self) -> Identity:
        return Identity(self.name, self.role)


@dataclass(frozen=True, slots=True)
class Manifest:
    ca_cert: str
    ca_key: str | None  # None: the CA key is kept outside the directory (offline)
    ca_sha256: str  # hex SHA-256 of the CA certificate's DER
    ca_days: int
    leaf_days: int
    nodes: tuple[NodeEntry, ...]
    principals: tuple[PrincipalEntry, ...]

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.id == name:
                return entry
        raise PkiError(f"no node {name!r} in the PKI")

    def principal(self, name: str) -> PrincipalEntry:
        for entry in self.principals:
            if entry.name == name:
                return entry
        raise PkiError(f"no principal {name!r} in the PKI")

    def to_json(self) -> str:
        doc = {
            "v": MANIFEST_VERSION,
            "kind": MANIFEST_KIND,
            "ca": {"cert": self.ca_cert, "key": self.ca_key, "sha256": self.ca_sha256},
            "validity_days": {"ca": self.ca_days, "leaf": self.leaf_days},
            "nodes": [
                {"id": n.id, "index": n.index, "hosts": list(n.hosts), "cert": n.cert, "key": n.key}
                for n in self.nodes
            ],
            "principals": [
                {
                    "name": p.name,
                    "role": p.role,
                    "cert": p.cert,
                    "key": p.key,
                    "approval_key": p.approval_key,
                    "approval_public_key_hex": p.approval_public_key_hex,
                }
                for p in self.principals
            ],
        }
        return json.dumps(doc, indent=2) + "\n"


def node_entry(index: int, hosts: tuple[str, ...]) -> NodeEntry:
    name = node_id(index)
    return NodeEntry(name, index, check_hosts(hosts), layout.node_cert(name), layout.node_key(name))


def principal_entry(name: str, role: str, approval_public_key_hex: str | None) -> PrincipalEntry:
    """A principal's manifest entry: approvers, operators and clients have a signing key
    (``approval.key``), auditors none; a client without one (a manifest written before
    clients had keys) is accepted."""
    check_principal_name(name)
    check_role(role)
    signing = approval_public_key_hex is not None
    if signing and role not in SIGNING_ROLES:
        raise PkiError(f"{role} {name!r}: approval key presence does not match the role")
    if not signing and role in SIGNING_ROLES and role not in OPTIONAL_KEY_ROLES:
        raise PkiError(f"{role} {name!r}: approval key presence does not match the role")
    if approval_public_key_hex is not None:
        _check_hex(approval_public_key_hex, 32, f"approval public key of {name!r}")
    return PrincipalEntry(
        name,
        role,
        layout.principal_cert(name),
        layout.principal_key(name),
        layout.approval_key(name) if signing else None,
        approval_public_key_hex,
    )


def _check_hex(value: object, nbytes: int, what: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 2 * nbytes
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise PkiError(f"{what} must be {nbytes} bytes of lower-case hex")
    return value


def _obj(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PkiError(f"{what} must be an object")
    if set(value) != keys:
        raise PkiError(f"{what} has fields {sorted(value)}, expected {sorted(keys)}")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise PkiError(f"duplicate key {k!r} in {MANIFEST_NAME}")
        out[k] = v
    return out


def parse_manifest(text: str | bytes) -> Manifest:
    """Strictly parse a manifest: exact fields, bounded sizes, canonical paths."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise PkiError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, PkiError):
            raise
        raise PkiError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    top = _obj(doc, {"v", "kind", "ca", "validity_days", "nodes", "principals"}, MANIFEST_NAME)
    if top["v"] != MANIFEST_VERSION or top["kind"] != MANIFEST_KIND:
        raise PkiError(f"unsupported {MANIFEST_NAME} version/kind: {top['v']!r}/{top['kind']!r}")
    ca = _obj(top["ca"], {"cert", "key", "sha256"}, "ca")
    if ca["cert"] != layout.CA_CERT or ca["key"] not in (layout.CA_KEY, None):
        raise PkiError("ca paths are not the canonical ones")
    _check_hex(ca["sha256"], 32, "ca.sha256")
    days = _obj(top["validity_days"], {"ca", "leaf"}, "validity_days")
    for k in ("ca", "leaf"):
        if type(days[k]) is not int or not 1 <= days[k] <= 36500:
            raise PkiError(f"validity_days.{k} must be an integer in 1..36500")

    raw_nodes = top["nodes"]
    if not isinstance(raw_nodes, list) or not 1 <= len(raw_nodes) <= MAX_NODES:
        raise PkiError(f"nodes must be a list of 1..{MAX_NODES} entries")
    nodes = []
    for i, raw in enumerate(raw_nodes, start=1):
        n = _obj(raw, {"id", "index", "hosts", "cert", "key"}, f"nodes[{i - 1}]")
        expected = node_entry(i, tuple(n["hosts"]) if isinstance(n["hosts"], list) else ())
        if type(n["index"]) is not int or (n["id"], n["index"], n["cert"], n["key"]) != (
            expected.id,
            expected.index,
            expected.cert,
            expected.key,
        ):
            raise PkiError(f"nodes[{i - 1}] must be node-{i} with the canonical paths")
        nodes.append(expected)

    raw_principals = top["principals"]
    if not isinstance(raw_principals, list) or len(raw_principals) > MAX_PRINCIPALS:
        raise PkiError(f"principals must be a list of at most {MAX_PRINCIPALS} entries")
    principals = []
    seen: set[str] = set()
    fields = {"name", "role", "cert", "key", "approval_key", "approval_public_key_hex"}
    for i, raw in enumerate(raw_principals):
        p = _obj(raw, fields, f"principals[{i}]")
        expected_p = principal_entry(p["name"], p["role"], p["approval_public_key_hex"])
        if (p["cert"], p["key"], p["approval_key"]) != (
            expected_p.cert,
            expected_p.key,
            expected_p.approval_key,
        ):
            raise PkiError(f"principals[{i}] does not use the canonical paths")
        if expected_p.name in seen:
            raise PkiError(f"duplicate principal {expected_p.name!r}")
        seen.add(expected_p.name)
        principals.append(expected_p)
    return Manifest(
        ca_cert=layout.CA_CERT,
        ca_key=ca["key"],
        ca_sha256=ca["sha256"],
        ca_days=days["ca"],
        leaf_days=days["leaf"],
        nodes=tuple(nodes),
        principals=tuple(principals),
    )


@dataclass(frozen=True, slots=True)
class Pki:
    """A loaded PKI directory: the manifest plus absolute paths to its files."""

    root: Path
    manifest: Manifest

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def ca_cert_path(self) -> Path:
        return self.root / self.manifest.ca_cert

    def node_paths(self, name: str) -> tuple[Path, Path]:
        """(certificate, private key) of node ``name``."""
        entry = self.manifest.node(name)
        return self.root / entry.cert, self.root / entry.key

    def principal_paths(self, name: str) -> tuple[Path, Path]:
        """(certificate, private key) of principal ``name``'s TLS client identity."""
        entry = self.manifest.principal(name)
        return self.root / entry.cert, self.root / entry.key

    def approval_key_path(self, name: str) -> Path:
        entry = self.manifest.principal(name)
        if entry.approval_key is None:
            raise PkiError(f"principal {name!r} ({entry.role}) has no approval key")
        return self.root / entry.approval_key


def load_pki(root: str | Path) -> Pki:
    """Load and strictly validate ``<root>/pki.json`` (files are checked by ``verify``)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise PkiError(f"no {MANIFEST_NAME} in {root}; run `custody pki init`") from None
    return Pki(root=root, manifest=parse_manifest(data))


__all__ = [
    "MANIFEST_NAME",
    "NODE_ROLE",
    "Manifest",
    "NodeEntry",
    "Pki",
    "PrincipalEntry",
    "layout",
    "load_pki",
    "node_entry",
    "parse_manifest",
    "principal_entry",
]
