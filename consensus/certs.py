"""A small PKI for the consensus transport: one cluster CA, one cert per node.

A node certificate has subject CN `node-<id>` (the transport's identity: a
peer *is* the id its certificate names), SANs for the hosts it listens on
(127.0.0.1 and localhost by default), and both serverAuth and clientAuth
usages, because every node both listens and dials. Keys are ECDSA P-256,
written unencrypted with mode 0600; the CA key should leave the machine that
issues certificates in any real deployment.

Files written by `write_cluster(directory, ids)`::

    ca.pem  ca.key  node-<id>.pem  node-<id>.key
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
MAX_NODE_ID = (1 << 63) - 1


def node_cn(node_id: int) -> str:
    if type(node_id) is not int or not 1 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node id must be an int in [1, 2^63), got {node_id!r}")
    return f"node-{node_id}"


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(common_name: str = "custody consensus CA", days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _san(hosts: tuple[str, ...] | list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def issue_node(
    ca: Issued, node_id: int, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, days: int = 825
) -> Issued:
    """A node certificate (CN node-<id>) signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_cn(node_id))]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(hosts), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create-or-replace with the final mode from the first byte (no chmod race)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_issued(directory: Path, stem: str, issued: Issued) -> tuple[Path, Path]:
    """Write `<stem>.pem` (0644) and `<stem>.key` (0600, PKCS#8 PEM)."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(cert_path, issued.cert.public_bytes(serialization.Encoding.PEM), 0o644)
    key_pem = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(key_path, key_pem, 0o600)
    return cert_path, key_path


def load_ca(directory: Path) -> Issued:
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("ca.key is not an EC private key")
    return Issued(cert, key)


def write_cluster(
    directory: str | os.PathLike[str],
    node_ids: list[int] | tuple[int, ...],
    hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS,
) -> Path:
    """Create (or reuse) `ca.pem`/`ca.key` in `directory` and issue a cert per node."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (d / "ca.pem").exists() and (d / "ca.key").exists():
        ca = load_ca(d)
    else:
        ca = make_ca()
        write_issued(d, "ca", ca)
    for i in node_ids:
        write_issued(d, node_cn(i), issue_node(ca, i, hosts))
    return d
