"""Map a certificate of this PKI to the identity it names, strictly (pure).

The TLS layer has already checked the chain; this checks that the leaf is one
*we* would have issued for exactly one identity: one custody SAN URI, a subject
whose CN and OU agree with it, not a CA, and the key usages that fit the role.
Anything else is rejected rather than guessed at.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.pki.names import NODE_ROLE, URI_PREFIX, Identity, PkiError, parse_identity_uri

MAX_CERT_DER_BYTES = 16 * 1024


def _one_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if len(attrs) != 1 or not isinstance(attrs[0].value, str):
        raise PkiError(f"certificate subject must have exactly one {what}")
    return attrs[0].value


# What the lazily-parsing X.509 accessors may raise on malformed input.
_PARSE_ERRORS = (
    ValueError,
    UnicodeError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def identity_from_certificate(
    cert: x509.Certificate, ca: x509.Certificate | None = None
) -> Identity:
    """The (name, role) a leaf certificate names; raises ``PkiError`` if it is not one of ours.

    With ``ca``, also checks that ``ca`` signed it (defence in depth; TLS checked it already).
    """
    try:
        return _identity(cert, ca)
    except PkiError:
        raise
    except _PARSE_ERRORS as exc:
        raise PkiError(f"malformed certificate: {exc!r}") from None


def _identity(cert: x509.Certificate, ca: x509.Certificate | None) -> Identity:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise PkiError(f"certificate lacks a required extension: {exc}") from None
    if basic.ca:
        raise PkiError("a CA certificate is not a peer identity")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    custody = [u for u in uris if u.lower().startswith("custody:")]
    if len(custody) != 1 or not custody[0].startswith(URI_PREFIX):
        raise PkiError(f"certificate must carry exactly one custody identity URI, got {custody!r}")
    identity = parse_identity_uri(custody[0])
    if _one_attribute(cert, NameOID.COMMON_NAME, "CN") != identity.name:
        raise PkiError("certificate CN does not match its identity URI")
    if _one_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU") != identity.role:
        raise PkiError("certificate OU does not match its identity URI role")
    usages = set(eku)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise PkiError("certificate is not valid for TLS client authentication")
    serves = ExtendedKeyUsageOID.SERVER_AUTH in usages
    if serves and identity.role != NODE_ROLE:
        raise PkiError("only node certificates may be valid for TLS server authentication")
    if not serves and identity.role == NODE_ROLE:
        raise PkiError("a node certificate must be valid for TLS server authentication")
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PkiError(f"certificate was not issued by this CA: {exc!r}") from None
    return identity


def identity_from_der(der: bytes, ca: x509.Certificate | None = None) -> Identity:
    """Like ``identity_from_certificate`` for DER bytes (e.g. from ``getpeercert(True)``)."""
    if not isinstance(der, bytes | bytearray) or not 0 < len(der) <= MAX_CERT_DER_BYTES:
        raise PkiError("peer certificate missing or larger than allowed")
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError as exc:
        raise PkiError(f"peer certificate is not parseable DER: {exc}") from None
    return identity_from_certificate(cert, ca)
