"""Building the cluster's certificates (no file I/O; the clock comes in as ``now``).

TLS keys are ECDSA P-256: every TLS 1.3 stack (OpenSSL 1.1.1/3.x behind Python's
``ssl``, Go, rustls, browsers, hardware HSMs) accepts it for both server and
client certificates, while Ed25519 certificates are still refused by some peers
and HSMs. Approval keys are raw Ed25519 (see ``store``); they never go in a
certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.pki.names import NODE_ROLE, Identity, PkiError, check_hosts, identity_uri

CA_COMMON_NAME = "custody cluster CA"
ORGANIZATION = "custody"
MAX_DAYS = 36500
# Backdate notBefore a little so a peer whose clock is slightly behind accepts a fresh cert.
_BACKDATE = dt.timedelta(minutes=5)


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key from the OS RNG (via OpenSSL)."""
    return ec.generate_private_key(ec.SECP256R1())


def check_days(days: object, what: str) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise PkiError(f"{what} validity must be an integer number of days in 1..{MAX_DAYS}")
    return days


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise PkiError("now must be timezone-aware")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def build_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int) -> x509.Certificate:
    """A self-signed CA that may sign leaves only (pathLen 0)."""
    check_days(days, "CA")
    start = _utc(now)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + dt.timedelta(days=days))
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    identity: Identity,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    check_days(days, "leaf")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise PkiError("leaf TLS keys must be ECDSA P-256")
    start = _utc(now)
    # Never outlive the issuer: a leaf issued late in the CA's life is clamped.
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if end <= start:
        raise PkiError("the CA certificate has expired; re-create the PKI")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )
    sans = [*sans, x509.UniformResourceIdentifier(identity_uri(identity))]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start - _BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(end)
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
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def build_node_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    node_name: str,
    hosts: tuple[str, ...],
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A node certificate: CN ``node-<i>``, SAN = its hosts + identity URI, server+client auth."""
    hosts = check_hosts(hosts)
    return _leaf(
        ca_cert,
        ca_key,
        public_key,
        Identity(node_name, NODE_ROLE),
        [_host_name(h) for h in hosts],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
        days,
    )


def build_principal_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    identity: Identity,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A principal's client certificate: CN = name, OU = role, SAN URI, client auth only."""
    if identity.role == NODE_ROLE:
        raise PkiError("use build_node_cert for nodes")
    return _leaf(
        ca_cert,
        ca_key,
        public_key,
        identity,
        [],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
        days,
    )
