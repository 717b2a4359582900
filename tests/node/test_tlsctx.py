"""Generated PKI material really authenticates over TLS 1.3 on loopback (asyncio sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from node import tlsctx
from node.pki import Identity, Pki, PkiError, init_pki, load_pki, make_request, principal_pairs

NOW = dt.datetime.now(dt.UTC)
PRINCIPALS = principal_pairs(["alice"], ["app1"], ["ops"], ["audit"])


def _make(root: Path) -> Pki:
    req = make_request(3, principals=PRINCIPALS)
    init_pki(root, req, now=NOW)
    return load_pki(root)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated PKI with the same names: its certificates must not be accepted."""
    return _make(tmp_path_factory.mktemp("other"))


class Outcome:
    def __init__(self) -> None:
        self.server_saw: Identity | None = None
        self.server_error: Exception | None = None
        self.client_saw: Identity | None = None
        self.reply: bytes = b""
        self.version: str | None = None
        self.handler_ran = False


async def _exchange(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "127.0.0.1"
) -> Outcome:
    out = Outcome()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out.handler_ran = True
        try:
            out.server_saw = tlsctx.peer_identity(writer.get_extra_info("ssl_object"))
            await reader.readline()
            writer.write(f"{out.server_saw.name}:{out.server_saw.role}\n".encode())
            await writer.drain()
        except Exception as exc:  # recorded for the assertions
            out.server_error = exc
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=hostname),
            timeout=20,
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            out.version = ssl_object.version()
            out.client_saw = tlsctx.peer_identity(ssl_object)
            writer.write(b"hello\n")
            await writer.drain()
            out.reply = await asyncio.wait_for(reader.readline(), timeout=20)
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return out


async def _refused(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str) -> None:
    """The handshake fails (on either side) and the server handler never sees a peer."""
    try:
        out = await _exchange(server_ctx, client_ctx, host)
    except (ssl.SSLError, ConnectionError):
        return
    # TLS 1.3: the client may finish before the server rejects its certificate; it then reads
    # an alert or EOF instead of a reply, and the handler never ran.
    assert out.reply == b""
    assert not out.handler_ran


async def test_node_to_node_mutual_tls13(pki: Pki) -> None:
    out = await _exchange(
        tlsctx.node_server_context(pki, "node-2"),
        tlsctx.node_client_context(pki, "node-1"),
        tlsctx.node_hostname(pki, "node-2"),
    )
    assert out.version == "TLSv1.3"
    assert out.server_saw == Identity("node-1", "node")
    assert out.client_saw == Identity("node-2", "node")
    assert out.reply == b"node-1:node\n"


@pytest.mark.parametrize(
    ("name", "role"),
    [("alice", "approver"), ("app1", "client"), ("ops", "operator"), ("audit", "auditor")],
)
async def test_principal_to_node_maps_role(pki: Pki, name: str, role: str) -> None:
    out = await _exchange(
        tlsctx.node_server_context(pki, "node-1"),
        tlsctx.principal_client_context(pki, name),
        "localhost",
    )
    assert out.server_saw == Identity(name, role)
    assert out.client_saw == Identity("node-1", "node")


async def test_require_peer_checks_the_dialled_node(pki: Pki) -> None:
    """Every test node is 127.0.0.1: host name checks alone cannot tell node-2 from node-3."""
    server_ctx = tlsctx.node_server_context(pki, "node-3")
    client_ctx = tlsctx.node_client_context(pki, "node-1")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert tlsctx.require_peer(ssl_object, "node-3") == Identity("node-3", "node")
        with pytest.raises(PkiError, match="expected node 'node-2'"):
            tlsctx.require_peer(ssl_object, "node-2")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_client_cert_from_another_ca_is_refused(pki: Pki, other: Pki) -> None:
    await _refused(
        tlsctx.node_server_context(pki, "node-1"),
        tlsctx.node_client_context(other, "node-2"),
        "127.0.0.1",
    )


async def test_principal_from_another_ca_is_refused(pki: Pki, other: Pki) -> None:
    await _refused(
        tlsctx.node_server_context(pki, "node-1"),
        tlsctx.principal_client_context(other, "alice"),
        "127.0.0.1",
    )


async def test_server_cert_from_another_ca_is_refused(pki: Pki, other: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(
            tlsctx.node_server_context(other, "node-2"),
            tlsctx.node_client_context(pki, "node-1"),
            "127.0.0.1",
        )


async def test_client_without_certificate_is_refused(pki: Pki) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.minimum_version = ssl.TLSVersion.TLSv1_3
    bare.load_verify_locations(cafile=str(pki.ca_cert_path))
    await _refused(tlsctx.node_server_context(pki, "node-1"), bare, "127.0.0.1")


async def test_wrong_host_name_is_refused(pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(
            tlsctx.node_server_context(pki, "node-1"),
            tlsctx.node_client_context(pki, "node-2"),
            "node-1.example",
        )


async def test_principal_certificate_cannot_serve(pki: Pki) -> None:
    """Principal certs lack serverAuth: a client refuses one presented by a server."""
    cert, key = pki.principal_paths("ops")
    fake_server = tlsctx.server_context(pki.ca_cert_path, cert, key)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(fake_server, tlsctx.node_client_context(pki, "node-1"), "127.0.0.1")


async def test_tls12_client_is_refused(pki: Pki) -> None:
    cert, key = pki.node_paths("node-1")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cafile=str(pki.ca_cert_path))
    old.load_cert_chain(str(cert), str(key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _exchange(tlsctx.node_server_context(pki, "node-2"), old, "127.0.0.1")


def test_context_settings(pki: Pki) -> None:
    server = tlsctx.node_server_context(pki, "node-1")
    client = tlsctx.principal_client_context(pki, "app1")
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname


def test_unknown_identity_names_are_errors(pki: Pki) -> None:
    with pytest.raises(PkiError):
        tlsctx.node_server_context(pki, "node-9")
    with pytest.raises(PkiError):
        tlsctx.principal_client_context(pki, "mallory")


# ---------------------------------------------------------------- identity mapping


def _ca_key(pki: Pki) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pki.path("ca/ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _forge(
    pki: Pki,
    *,
    cn: str = "eve",
    ou: str | None = "client",
    uris: tuple[str, ...] = ("custody:role:client:principal:eve",),
    usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    ca: bool = False,
    sign_with: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A certificate signed by the real CA key but deviating from the conventions."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(sign_with or _ca_key(pki), hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def test_forge_baseline_is_accepted(pki: Pki) -> None:
    """The forging helper itself yields a valid identity when it follows the conventions."""
    assert tlsctx.peer_identity_from_der(_forge(pki)) == Identity("eve", "client")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uris": ()}, "extension"),
        ({"uris": ("custody:role:client:principal:eve",) * 2}, "exactly one"),
        ({"uris": ("custody:role:admin:principal:eve",)}, "not a custody identity"),
        ({"uris": ("custody:role:client:principal:Eve",)}, "not a custody identity"),
        ({"uris": ("custody:role:client:principal:eve:x",)}, "not a custody identity"),
        ({"cn": "node-1", "uris": ("custody:role:client:principal:node-1",)}, "reserved"),
        ({"cn": "node-16", "ou": "node", "uris": ("custody:role:node:principal:node-16",)}, "node"),
        ({"cn": "mallory"}, "CN does not match"),
        ({"ou": "approver"}, "OU does not match"),
        ({"ou": None}, "exactly one OU"),
        ({"usages": (ExtendedKeyUsageOID.SERVER_AUTH,)}, "client authentication"),
        (
            {"usages": (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)},
            "only node certificates",
        ),
        ({"ca": True}, "CA certificate"),
    ],
)
def test_identity_mapping_rejects(pki: Pki, kwargs: dict, message: str) -> None:
    with pytest.raises(PkiError, match=message):
        tlsctx.peer_identity_from_der(_forge(pki, **kwargs))


def test_node_certificate_without_server_auth_is_rejected(pki: Pki) -> None:
    der = _forge(pki, cn="node-1", ou="node", uris=("custody:role:node:principal:node-1",))
    with pytest.raises(PkiError, match="node certificate must be valid for TLS server"):
        tlsctx.peer_identity_from_der(der)


def test_identity_mapping_rejects_garbage_and_absence() -> None:
    with pytest.raises(PkiError, match="no certificate"):
        tlsctx.peer_identity_from_der(None)
    with pytest.raises(PkiError, match="DER"):
        tlsctx.peer_identity_from_der(b"\x30\x03\x02\x01\x00")
    with pytest.raises(PkiError, match="larger"):
        tlsctx.peer_identity_from_der(b"\x30" * 20000)
    with pytest.raises(PkiError, match="not TLS"):
        tlsctx.peer_identity(None)  # type: ignore[arg-type]


def test_identity_with_ca_check(pki: Pki, other: Pki) -> None:
    from node.pki import identity_from_der

    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    assert identity_from_der(_forge(pki), ca) == Identity("eve", "client")
    foreign = _forge(pki, sign_with=_ca_key(other))
    with pytest.raises(PkiError, match="not issued by this CA"):
        identity_from_der(foreign, ca)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mangled_der_never_maps_to_another_identity(pki: Pki, data: st.DataObject) -> None:
    """Corrupting a real certificate yields the same identity or PkiError, nothing else."""
    cert_path, _ = pki.principal_paths("alice")
    der = bytearray(
        x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(der) - 1))
        der[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(der)))
    try:
        got = tlsctx.peer_identity_from_der(bytes(der[:cut]))
    except PkiError:
        return
    assert got == Identity("alice", "approver")
