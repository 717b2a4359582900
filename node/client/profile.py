"""A principal's client profile (TOML): who I am, which cluster, which nodes, which files.

Every client-side command (approve, request, status ...) needs the same five
facts, so they live in one file handed to the principal with its keys, found
by ``--profile FILE`` or ``$CUSTODY_PROFILE``. Read as strictly as the node's
config (unknown keys are errors, one-line ``ProfileError``s naming the key);
paths are relative to the profile's directory; private key files must not be
group/other accessible. See docs/config.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from node.server.config import (
    CLUSTER_ID_RE,
    Table,
    check_tables,
    format_address,
    parse_address,
    read_toml,
    toml_string,
)

PROFILE_ENV = "CUSTODY_PROFILE"
ROLES = ("operator", "approver", "client", "auditor")
# Roles whose profile may name an Ed25519 signing key (`approval_key`): operators sign
# commands, approvers approvals, clients their requests under a grant (docs/grants.md).
SIGNING_ROLES = frozenset({"operator", "approver", "client"})
MAX_NODES = 15
PRINCIPAL_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class ProfileError(ValueError):
    """A profile is missing or unusable; the one-line message names file, key and problem."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A loaded, checked profile: absolute paths, normalised node URLs."""

    path: Path
    principal: str
    role: str
    cluster_id: str
    nodes: tuple[str, ...]  # base URLs, "https://HOST:PORT"
    ca: Path
    cert: Path
    key: Path
    approval_key: Path | None  # operators, approvers and clients; never auditors


def find_profile(explicit: str | os.PathLike[str] | None) -> Path:
    """``explicit`` (``--profile``), else ``$CUSTODY_PROFILE``, else a clear error."""
    if explicit is not None and str(explicit):
        return Path(explicit)
    from_env = os.environ.get(PROFILE_ENV, "")
    if from_env:
        return Path(from_env)
    raise ProfileError(f"no client profile: pass --profile FILE or set {PROFILE_ENV}")


def node_url(text: str) -> str:
    """Check a node base URL (``https://HOST:PORT``, nothing else) and normalise it."""
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ValueError("must start with https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user information")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be https://HOST:PORT without a path, query or fragment")
    return "https://" + format_address(parse_address(parts.netloc))


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and check a profile file."""
    file = Path(path).absolute()
    doc = read_toml(file, "profile", ProfileError)
    check_tables(file, doc, ("profile",), ProfileError)
    if "profile" not in doc:
        raise ProfileError(f"{file}: missing table [profile]")
    t = Table(file, "[profile]", doc["profile"], ProfileError)
    principal = t.text(
        "principal", pattern=PRINCIPAL_RE, what="a principal name ([a-z][a-z0-9_-]{0,31})"
    )
    assert principal is not None
    if principal.startswith("node-"):
        raise t.error("principal", "names starting with node- belong to nodes")
    role = t.text("role", choices=ROLES)
    assert role is not None
    cluster_id = t.text("cluster_id", pattern=CLUSTER_ID_RE, what="a cluster id")
    assert cluster_id is not None
    nodes = _nodes(t)
    ca = t.file_path("ca")
    cert = t.file_path("cert")
    key = t.file_path("key", private=True)
    if role in SIGNING_ROLES:
        approval_key = t.file_path("approval_key", required=False, private=True)
    else:
        if t.has("approval_key"):
            raise t.error("approval_key", f"role {role} has no approval key")
        approval_key = None
    t.finish()
    assert ca is not None and cert is not None and key is not None
    return Profile(file, principal, role, cluster_id, nodes, ca, cert, key, approval_key)


def _nodes(t: Table) -> tuple[str, ...]:
    t.seen.add("nodes")
    raw = t.raw.get("nodes")
    if raw is None:
        raise t.error("nodes", "missing (required)")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_NODES:
        raise t.error("nodes", f"expected an array of 1..{MAX_NODES} URLs")
    urls: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or len(item) > 300:
            raise t.error(f"nodes[{i}]", "expected a URL string")
        try:
            url = node_url(item)
        except ValueError as exc:
            raise t.error(f"nodes[{i}]", f"{item[:80]!r} {exc}") from None
        if url in urls:
            raise t.error(f"nodes[{i}]", f"{url} is listed twice")
        urls.append(url)
    return tuple(urls)


def render_profile(
    *,
    principal: str,
    role: str,
    cluster_id: str,
    nodes: Sequence[str],
    ca: str | Path,
    cert: str | Path,
    key: str | Path,
    approval_key: str | Path | None = None,
) -> str:
    """A profile's text; paths are written as given (relative to the profile's directory)."""
    if role not in ROLES:
        raise ProfileError(f"render_profile: unknown role {role!r}")
    if approval_key is not None and role not in SIGNING_ROLES:
        raise ProfileError(f"render_profile: role {role} has no approval key")
    lines = [
        "# custody client profile; every key is described in docs/config.md",
        "",
        "[profile]",
        f"principal = {toml_string(principal)}",
        f"role = {toml_string(role)}",
        f"cluster_id = {toml_string(cluster_id)}",
        "nodes = [" + ", ".join(toml_string(node_url(u)) for u in nodes) + "]",
        f"ca = {toml_string(str(ca))}",
        f"cert = {toml_string(str(cert))}",
        f"key = {toml_string(str(key))}",
    ]
    if approval_key is not None:
        lines.append(f"approval_key = {toml_string(str(approval_key))}")
    return "\n".join(lines) + "\n"


__all__ = [
    "PROFILE_ENV",
    "Profile",
    "ProfileError",
    "find_profile",
    "load_profile",
    "node_url",
    "render_profile",
]
