"""Creating, extending and checking a PKI directory (the I/O shell around the pure parts).

``plan_init`` decides, without touching the disk, what ``init_pki`` must do:
create everything, issue only missing identities, or nothing. Every argument
and conflict is checked before the first byte is written. Private keys are
created with ``O_CREAT | O_EXCL`` and mode 0600, so there is no moment at which
they are readable by others; the manifest is written last, atomically, so a
directory without ``pki.json`` is an interrupted run and is refused.

CPython cannot guarantee zeroization: key objects and serialized key bytes are
immutable and freed whenever the garbage collector decides. Keep the CA key
offline (``--ca-key``) to limit what a leaked PKI directory gives away.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from node.pki.identity import identity_from_certificate
from node.pki.issue import (
    build_ca,
    build_node_cert,
    build_principal_cert,
    check_days,
    new_tls_key,
)
from node.pki.manifest import (
    MANIFEST_NAME,
    Manifest,
    NodeEntry,
    Pki,
    PrincipalEntry,
    layout,
    load_pki,
    node_entry,
    principal_entry,
)
from node.pki.names import (
    DEFAULT_NODE_HOSTS,
    MAX_PRINCIPALS,
    NODE_ROLE,
    PRINCIPAL_ROLES,
    SIGNING_ROLES,
    Identity,
    PkiError,
    check_hosts,
    check_node_count,
    check_principal_name,
    check_role,
    node_id,
)

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 365
MAX_KEY_FILE_BYTES = 16 * 1024
MAX_CERT_FILE_BYTES = 64 * 1024
# Top-level names this module owns inside a PKI directory (and may remove with --force).
MANAGED_NAMES = (MANIFEST_NAME, "ca", "nodes", "principals")


# ---------------------------------------------------------------- request and plan (pure)


@dataclass(frozen=True, slots=True)
class InitRequest:
    """What the operator asked for, validated."""

    node_hosts: tuple[tuple[str, ...], ...]  # one tuple of hosts per node, node-1 first
    principals: tuple[Identity, ...]
    ca_days: int = DEFAULT_CA_DAYS
    leaf_days: int = DEFAULT_LEAF_DAYS

    @property
    def nodes(self) -> int:
        return len(self.node_hosts)


def make_request(
    nodes: int,
    *,
    node_hosts: Sequence[Sequence[str]] | None = None,
    principals: Iterable[tuple[str, str]] = (),
    ca_days: int = DEFAULT_CA_DAYS,
    leaf_days: int = DEFAULT_LEAF_DAYS,
) -> InitRequest:
    """Validate the arguments of ``pki init``; ``principals`` are (name, role) pairs."""
    check_node_count(nodes)
    if node_hosts is None:
        hosts = tuple(DEFAULT_NODE_HOSTS for _ in range(nodes))
    else:
        if len(node_hosts) != nodes:
            raise PkiError(f"--node-hosts gives {len(node_hosts)} entries for {nodes} nodes")
        if any(isinstance(h, str) or not isinstance(h, list | tuple) for h in node_hosts):
            raise PkiError("node_hosts must hold one list of hosts per node")
        hosts = tuple(check_hosts(tuple(h)) for h in node_hosts)
    seen: dict[str, str] = {}
    ids = []
    for name, role in principals:
        check_principal_name(name)
        check_role(role)
        if name in seen:
            raise PkiError(f"principal {name!r} given twice (as {seen[name]} and {role})")
        seen[name] = role
        ids.append(Identity(name, role))
    if len(ids) > MAX_PRINCIPALS:
        raise PkiError(f"at most {MAX_PRINCIPALS} principals")
    check_days(ca_days, "CA")
    check_days(leaf_days, "leaf")
    if leaf_days > ca_days:
        raise PkiError("leaf validity cannot exceed the CA validity")
    return InitRequest(hosts, tuple(ids), ca_days, leaf_days)


@dataclass(frozen=True, slots=True)
class Plan:
    """``create`` (everything, new CA), ``extend`` (only ``new_*``) or ``noop``."""

    action: str
    new_nodes: tuple[int, ...] = ()
    new_principals: tuple[Identity, ...] = ()


def plan_init(request: InitRequest, existing: Manifest | None, force: bool) -> Plan:
    """Decide what ``init`` does given the current manifest; raise on any conflict."""
    if existing is None or force:
        return Plan(
            "create",
            tuple(range(1, request.nodes + 1)),
            request.principals,
        )
    conflicts = []
    if (existing.ca_days, existing.leaf_days) != (request.ca_days, request.leaf_days):
        conflicts.append(
            f"validity differs (existing: --ca-days {existing.ca_days} "
            f"--leaf-days {existing.leaf_days})"
        )
    if request.nodes < len(existing.nodes):
        conflicts.append(f"the PKI already has {len(existing.nodes)} nodes")
    for entry, hosts in zip(existing.nodes, request.node_hosts, strict=False):
        if entry.hosts != hosts:
            conflicts.append(f"{entry.id} has hosts {list(entry.hosts)}, not {list(hosts)}")
    wanted = {p.name: p.role for p in request.principals}
    for p in existing.principals:
        if p.name not in wanted:
            conflicts.append(f"existing {p.role} {p.name!r} is not in the arguments")
        elif wanted[p.name] != p.role:
            conflicts.append(f"{p.name!r} is already a {p.role}, not a {wanted[p.name]}")
    if conflicts:
        raise PkiError(
            "the existing PKI does not match the arguments: "
            + "; ".join(conflicts)
            + " (use --force to re-create everything, including a new CA)"
        )
    have = {p.name for p in existing.principals}
    new_nodes = tuple(range(len(existing.nodes) + 1, request.nodes + 1))
    new_principals = tuple(p for p in request.principals if p.name not in have)
    if not new_nodes and not new_principals:
        return Plan("noop")
    return Plan("extend", new_nodes, new_principals)


# ---------------------------------------------------------------- file helpers (I/O)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` from the start, write, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_secret(path: Path, data: bytes) -> None:
    """A private key file: mode 0600 from creation, never overwritten."""
    _write_new(path, data, 0o600)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` through a fresh temporary file (exact ``mode``, fsynced) and a
    rename, then fsync the directory: readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data, mode)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _mkdir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise PkiError(f"{path} is not a directory")


def _read_bounded(path: Path, limit: int) -> bytearray:
    """Read at most ``limit`` bytes into a buffer the caller owns (and may zero)."""
    buf = bytearray(limit + 1)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PkiError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        n = 0
        while n < len(buf) and (got := fh.readinto(memoryview(buf)[n:])):
            n += got
    if n > limit:
        buf[:] = bytes(len(buf))
        raise PkiError(f"{path} is larger than {limit} bytes")
    del buf[n:]
    return buf


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(bytes(_read_bounded(path, MAX_CERT_FILE_BYTES)))
    except FileNotFoundError:
        raise PkiError(f"missing certificate {path}") from None
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate: {exc}") from None


def read_private_key(path: Path) -> PrivateKeyTypes:
    """Load an unencrypted PEM private key, refusing files readable by group or others."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise PkiError(f"missing private key {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise PkiError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise PkiError(f"{path} is accessible by group or others (mode {st.st_mode & 0o777:o})")
    pem = _read_bounded(path, MAX_KEY_FILE_BYTES)
    try:
        return serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    finally:
        pem[:] = bytes(len(pem))  # best effort: CPython may hold other copies


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _same_public_key(a: object, b: object) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hmac.compare_digest(a.public_bytes(*fmt), b.public_bytes(*fmt))  # type: ignore[attr-defined]


def approval_public_hex(key: ed25519.Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


# ---------------------------------------------------------------- init (I/O)


@dataclass(frozen=True, slots=True)
class InitResult:
    action: str  # "create" | "extend" | "noop"
    issued: tuple[str, ...] = field(default=())  # identities issued in this run
    pki: Pki | None = None


def _existing_manifest(root: Path) -> Manifest | None:
    if not (root / MANIFEST_NAME).exists():
        return None
    try:
        return load_pki(root).manifest
    except PkiError as exc:
        raise PkiError(f"{exc} (use --force to re-create the PKI)") from None


def _check_ca_key_location(root: Path, ca_key_path: Path | None) -> None:
    if ca_key_path is None:
        return
    outside = ca_key_path.resolve()
    inside = root.resolve()
    if outside == inside or inside in outside.parents:
        raise PkiError("--ca-key must point outside the PKI directory (that is its purpose)")


def init_pki(
    root: str | Path,
    request: InitRequest,
    *,
    now: dt.datetime,
    ca_key_path: str | Path | None = None,
    force: bool = False,
) -> InitResult:
    """Create or extend the PKI in ``root`` as ``request`` says; see the module docstring."""
    root = Path(root)
    ca_key_path = Path(ca_key_path) if ca_key_path is not None else None
    _check_ca_key_location(root, ca_key_path)
    if root.exists() and not root.is_dir():
        raise PkiError(f"{root} exists and is not a directory")
    existing = None if force else _existing_manifest(root)
    plan = plan_init(request, existing, force)

    if plan.action == "create":
        if not force:
            leftovers = [n for n in MANAGED_NAMES if (root / n).exists() or (root / n).is_symlink()]
            if leftovers:
                raise PkiError(
                    f"{root} holds {leftovers} but no {MANIFEST_NAME} (an interrupted run?); "
                    "use --force to overwrite"
                )
            if ca_key_path is not None and (ca_key_path.exists() or ca_key_path.is_symlink()):
                raise PkiError(f"{ca_key_path} already exists; use --force to overwrite")
        return _create(root, request, plan, now, ca_key_path, force)

    assert existing is not None
    pki = Pki(root, existing)
    problems = verify_pki(pki, now=now, check_validity=False)
    if problems:
        raise PkiError(
            "the existing PKI is damaged: " + "; ".join(problems) + " (use --force to re-create)"
        )
    if plan.action == "noop":
        return InitResult("noop", (), pki)
    return _extend(pki, request, plan, now, ca_key_path)


def _create(
    root: Path,
    request: InitRequest,
    plan: Plan,
    now: dt.datetime,
    ca_key_path: Path | None,
    force: bool,
) -> InitResult:
    if force:
        (root / MANIFEST_NAME).unlink(missing_ok=True)  # first: the directory is now "partial"
        for name in MANAGED_NAMES[1:]:
            path = root / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path)
        if ca_key_path is not None:
            ca_key_path.unlink(missing_ok=True)
    _mkdir(root, 0o755)
    _mkdir(root / "ca", 0o755)  # ca.crt is public; ca.key is 0600 itself
    ca_key = new_tls_key()
    ca_cert = build_ca(ca_key, now, request.ca_days)
    if ca_key_path is None:
        write_secret(root / layout.CA_KEY, _pem_key(ca_key))
    else:
        _mkdir(ca_key_path.parent, 0o700)
        write_secret(ca_key_path, _pem_key(ca_key))
        _fsync_dir(ca_key_path.parent)
    _write_new(root / layout.CA_CERT, _pem_cert(ca_cert), 0o644)
    manifest = Manifest(
        ca_cert=layout.CA_CERT,
        ca_key=layout.CA_KEY if ca_key_path is None else None,
        ca_sha256=cert_sha256(ca_cert),
        ca_days=request.ca_days,
        leaf_days=request.leaf_days,
        nodes=(),
        principals=(),
    )
    return _issue_and_commit(Pki(root, manifest), request, plan, ca_cert, ca_key, now, "create")


def _extend(
    pki: Pki, request: InitRequest, plan: Plan, now: dt.datetime, ca_key_path: Path | None
) -> InitResult:
    manifest = pki.manifest
    if manifest.ca_key is None and ca_key_path is None:
        raise PkiError(
            "new identities must be signed but the CA key is kept outside the directory; "
            "pass --ca-key PATH"
        )
    if manifest.ca_key is not None and ca_key_path is not None:
        raise PkiError("this PKI keeps its CA key inside the directory; omit --ca-key")
    key_path = ca_key_path if ca_key_path is not None else pki.path(layout.CA_KEY)
    ca_key = read_private_key(key_path)
    ca_cert = read_certificate(pki.ca_cert_path)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not _same_public_key(
        ca_key.public_key(), ca_cert.public_key()
    ):
        raise PkiError(f"{key_path} is not the key of this PKI's CA")
    return _issue_and_commit(pki, request, plan, ca_cert, ca_key, now, "extend")


def _issue_and_commit(
    pki: Pki,
    request: InitRequest,
    plan: Plan,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    action: str,
) -> InitResult:
    root = pki.root
    issued: list[str] = []
    nodes: list[NodeEntry] = list(pki.manifest.nodes)
    for index in plan.new_nodes:
        entry = node_entry(index, request.node_hosts[index - 1])
        _mkdir(root / "nodes", 0o755)
        _mkdir((root / entry.cert).parent, 0o700)
        key = new_tls_key()
        cert = build_node_cert(
            ca_cert, ca_key, key.public_key(), entry.id, entry.hosts, now, request.leaf_days
        )
        write_secret(root / entry.key, _pem_key(key))
        _write_new(root / entry.cert, _pem_cert(cert), 0o644)
        nodes.append(entry)
        issued.append(entry.id)
    principals: list[PrincipalEntry] = list(pki.manifest.principals)
    for ident in plan.new_principals:
        d = root / layout.principal_cert(ident.name)
        _mkdir(root / "principals", 0o755)
        _mkdir(d.parent, 0o700)
        pub_hex = None
        if ident.role in SIGNING_ROLES:
            approval = ed25519.Ed25519PrivateKey.generate()
            pub_hex = approval_public_hex(approval)
            write_secret(root / layout.approval_key(ident.name), _pem_key(approval))
            _write_new(root / layout.approval_pub(ident.name), (pub_hex + "\n").encode(), 0o644)
        entry_p = principal_entry(ident.name, ident.role, pub_hex)
        key = new_tls_key()
        cert = build_principal_cert(
            ca_cert, ca_key, key.public_key(), ident, now, request.leaf_days
        )
        write_secret(root / entry_p.key, _pem_key(key))
        _write_new(root / entry_p.cert, _pem_cert(cert), 0o644)
        principals.append(entry_p)
        issued.append(ident.name)
    written = {root, root / "ca", root / "nodes", root / "principals"}
    written |= {(root / n.cert).parent for n in nodes}
    written |= {(root / p.cert).parent for p in principals}
    for d in written:
        if d.is_dir():
            _fsync_dir(d)
    manifest = replace(pki.manifest, nodes=tuple(nodes), principals=tuple(principals))
    write_atomic(root / MANIFEST_NAME, manifest.to_json().encode())
    return InitResult(action, tuple(issued), Pki(root, manifest))


# ---------------------------------------------------------------- verify (I/O)


def verify_pki(
    pki: Pki,
    *,
    now: dt.datetime | None = None,
    check_validity: bool = True,
    ca_key_path: str | Path | None = None,
) -> list[str]:
    """Check every file against the manifest; return a list of problems (empty: all good)."""
    problems: list[str] = []
    m = pki.manifest
    try:
        ca = read_certificate(pki.ca_cert_path)
    except PkiError as exc:
        return [str(exc)]
    if not hmac.compare_digest(cert_sha256(ca), m.ca_sha256):
        return [f"{m.ca_cert} does not match the fingerprint in {MANIFEST_NAME}"]
    try:
        ca.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        problems.append(f"CA certificate is not validly self-signed: {exc!r}")

    def check_time(cert: x509.Certificate, what: str) -> None:
        if (
            check_validity
            and now is not None
            and not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc)
        ):
            problems.append(f"{what} is not valid now ({cert.not_valid_after_utc:%Y-%m-%d})")

    check_time(ca, "CA certificate")
    key_path = pki.path(m.ca_key) if m.ca_key is not None else ca_key_path
    if key_path is not None:
        _check_key(Path(key_path), ca, "CA", problems)

    def check_leaf(cert_rel: str, key_rel: str, expected: Identity) -> x509.Certificate | None:
        try:
            cert = read_certificate(pki.path(cert_rel))
            got = identity_from_certificate(cert, ca)
        except PkiError as exc:
            problems.append(f"{expected.name}: {exc}")
            return None
        if got != expected:
            problems.append(f"{cert_rel} names {got}, expected {expected}")
        check_time(cert, f"{expected.name}'s certificate")
        _check_key(pki.path(key_rel), cert, expected.name, problems)
        return cert

    for n in m.nodes:
        cert = check_leaf(n.cert, n.key, Identity(n.id, NODE_ROLE))
        if cert is not None:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            hosts = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
            hosts |= set(san.get_values_for_type(x509.DNSName))
            if hosts != set(n.hosts):
                problems.append(f"{n.id}: certificate hosts {sorted(hosts)} != {list(n.hosts)}")
    for p in m.principals:
        check_leaf(p.cert, p.key, p.identity)
        if p.approval_key is not None:
            _check_approval(pki, p, problems)
    return problems


def _check_key(path: Path, cert: x509.Certificate, who: str, problems: list[str]) -> None:
    try:
        key = read_private_key(path)
    except PkiError as exc:
        problems.append(f"{who}: {exc}")
        return
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_public_key(
        key.public_key(), cert.public_key()
    ):
        problems.append(f"{who}: {path.name} does not match its certificate")


def _check_approval(pki: Pki, p: PrincipalEntry, problems: list[str]) -> None:
    assert p.approval_key is not None and p.approval_public_key_hex is not None
    try:
        key = read_private_key(pki.path(p.approval_key))
    except PkiError as exc:
        problems.append(f"{p.name}: {exc}")
        return
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        problems.append(f"{p.name}: approval key is not Ed25519")
        return
    if approval_public_hex(key) != p.approval_public_key_hex:
        problems.append(f"{p.name}: approval key does not match {MANIFEST_NAME}")
    try:
        pub = _read_bounded(pki.path(layout.approval_pub(p.name)), 256).decode().strip()
    except (OSError, UnicodeDecodeError, PkiError) as exc:
        problems.append(f"{p.name}: cannot read approval.pub: {exc}")
        return
    if pub != p.approval_public_key_hex:
        problems.append(f"{p.name}: approval.pub does not match {MANIFEST_NAME}")


def load_approval_key(pki: Pki, name: str) -> ed25519.Ed25519PrivateKey:
    """Principal ``name``'s Ed25519 signing key, ``approval.key`` (approvers, operators and
    clients; not auditors, nor clients of a PKI made before clients had keys)."""
    key = read_private_key(pki.approval_key_path(name))
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"approval key of {name!r} is not Ed25519")
    if approval_public_hex(key) != pki.manifest.principal(name).approval_public_key_hex:
        raise PkiError(f"approval key of {name!r} does not match {MANIFEST_NAME}")
    return key


def approval_public_keys(manifest: Manifest) -> dict[str, tuple[str, bytes]]:
    """``name -> (role, raw 32-byte Ed25519 public key)`` for every principal with a signing
    key: approvers, operators and clients."""
    return {
        p.name: (p.role, bytes.fromhex(p.approval_public_key_hex))
        for p in manifest.principals
        if p.approval_public_key_hex is not None
    }


def principal_pairs(
    approvers: Iterable[str] = (),
    clients: Iterable[str] = (),
    operators: Iterable[str] = (),
    auditors: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """(name, role) pairs in the canonical role order used by the CLI."""
    by_role = dict(zip(PRINCIPAL_ROLES, (approvers, clients, operators, auditors), strict=True))
    return [(name, role) for role, names in by_role.items() for name in names]


__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_LEAF_DAYS",
    "InitRequest",
    "InitResult",
    "Plan",
    "approval_public_keys",
    "init_pki",
    "load_approval_key",
    "make_request",
    "node_id",
    "plan_init",
    "principal_pairs",
    "read_certificate",
    "read_private_key",
    "verify_pki",
    "write_secret",
]
