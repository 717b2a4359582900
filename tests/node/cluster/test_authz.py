"""The authorisation matrix: every route of the node × every kind of caller → the
expected status, and a refused call changes nothing.

Callers: the registered principals of each role (client app1, approver alice,
operator ops, auditor audit), a member (node-2), a certificate of the cluster CA
for a name that is not registered (mallory, a client), a certificate of the
cluster CA that names no identity (401), certificates of a FOREIGN CA for the same
names (ops, node-2: the TLS handshake is refused, the node trusts only its CA) and
no certificate at all (the handshake is refused too).

For every call that is not a 200 (refused: 401, 403, handshake failure; or a 4xx
from the handler), the audit chain length and the key, request and policy listings
are the same before and after. The matrix is also checked against each operation's
`x-roles` in the OpenAPI document (node/server/openapi.py).

One 3-node cluster (threshold 2) per module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node import tlsctx
from node.pki.issue import build_principal_cert
from node.pki.names import Identity
from node.pki.store import read_private_key
from node.server.openapi import document, operations
from tests.node.cluster.harness import Live, cli, running

pytestmark = pytest.mark.slow

TLS = "tls"  # the handshake is refused: no HTTP status at all
NODE = "node-1"

# caller -> its role (None: no identity, or never past TLS)
CALLERS = {
    "app1": "client", "alice": "approver", "ops": "operator", "audit": "auditor",
    "node-2": "node", "mallory": "client", "anon": None, "foreign-ops": None,
    "foreign-node-2": None, "no-cert": None,
}  # fmt: skip

# Concrete paths for the templated routes (and a bounded event stream).
CONCRETE = {
    "/v1/keys/{key_id}": "/v1/keys/k1",
    "/v1/keys/{key_id}/sign": "/v1/keys/k1/sign",
    "/v1/keys/{key_id}/decrypt": "/v1/keys/k1/decrypt",
    "/v1/keys/{key_id}/rollback": "/v1/keys/k1/rollback",
    "/v1/requests/{ref}": "/v1/requests/app1:x",
    "/v1/requests/{ref}/approve": "/v1/requests/app1:x/approve",
    "/v1/requests/{ref}/partial": "/v1/requests/app1:x/partial",
    "/v1/events": "/v1/events?follow=false",
    "/v1/grants/{grant_id}": "/v1/grants/g-x",
    "/v1/grants/{grant_id}/revoke": "/v1/grants/g-x/revoke",
}


def _row(app1: Any, alice: Any, ops: Any, audit: Any, node2: Any, mallory: Any) -> dict:
    """One endpoint's expected statuses; the last four callers never get further than
    401 (no identity) or the TLS handshake."""
    return {"app1": app1, "alice": alice, "ops": ops, "audit": audit, "node-2": node2,
            "mallory": mallory, "anon": 401, "foreign-ops": TLS, "foreign-node-2": TLS,
            "no-cert": TLS}  # fmt: skip


# (method, route template) -> caller -> status. 403: refused by role or registration
# before anything happens; 400: the empty body ({} or one byte for peer routes) reached
# the handler; 404: `app1:x` does not exist. A set: any of these (racy on purpose).
MATRIX: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/sys/health"): _row(200, 200, 200, 200, 200, 200),
    ("GET", "/v1/sys/status"): _row(200, 200, 200, 200, 200, 200),
    ("GET", "/v1/openapi.json"): _row(200, 200, 200, 200, 200, 200),
    ("GET", "/v1/keys"): _row(200, 200, 200, 200, 403, 403),
    ("POST", "/v1/keys"): _row(403, 403, 400, 403, 403, 403),
    ("GET", "/v1/keys/{key_id}"): _row(200, 200, 200, 200, 403, 403),
    ("GET", "/v1/aliases"): _row(200, 200, 200, 200, 403, 403),
    ("POST", "/v1/keys/{key_id}/sign"): _row(400, 403, 403, 403, 403, 403),
    ("POST", "/v1/keys/{key_id}/decrypt"): _row(400, 403, 403, 403, 403, 403),
    ("POST", "/v1/keys/{key_id}/rollback"): _row(403, 403, 400, 403, 403, 403),
    ("GET", "/v1/policies"): _row(200, 200, 200, 200, 403, 403),
    ("GET", "/v1/requests"): _row(200, 200, 200, 200, 403, 403),
    ("GET", "/v1/requests/{ref}"): _row(404, 404, 404, 404, 403, 403),
    ("POST", "/v1/requests/{ref}/approve"): _row(403, 400, 403, 403, 403, 403),
    ("POST", "/v1/requests/{ref}/partial"): _row(404, 403, 403, 403, 403, 403),
    ("POST", "/v1/commands"): _row(403, 400, 400, 403, 403, 403),
    ("POST", "/v1/epoch/advance"): _row(403, 403, 200, 403, 403, 403),
    ("GET", "/v1/audit"): _row(403, 200, 200, 200, 403, 403),
    ("GET", "/v1/audit/export"): _row(403, 200, 200, 200, 403, 403),
    ("GET", "/v1/events"): _row(200, 200, 200, 200, 200, 403),
    ("GET", "/v1/grants"): _row(200, 200, 200, 200, 403, 403),
    ("POST", "/v1/grants"): _row(403, 403, 400, 403, 403, 403),
    ("GET", "/v1/grants/{grant_id}"): _row(404, 404, 404, 404, 403, 403),
    ("POST", "/v1/grants/{grant_id}/revoke"): _row(403, 400, 400, 403, 403, 403),
    ("POST", "/v1/requests/signed"): _row(400, 403, 403, 403, 403, 403),
    ("GET", "/metrics"): _row(403, 403, 200, 200, 200, 403),
    ("GET", "/v1/repairs"): _row(403, 200, 200, 200, 403, 403),
    ("GET", "/v1/refresh"): _row(403, 200, 200, 200, 403, 403),
    ("GET", "/v1/recovery"): _row(403, 200, 200, 200, 403, 403),
    # A member's propose of one junk byte would go into the log (as a rejected command):
    # not an authorisation question, so node-2's answer is not asserted here.
    ("POST", "/v1/peer/propose"): _row(403, 403, 403, 403, None, 403),
    ("POST", "/v1/peer/dkg/round2"): _row(403, 403, 403, 403, 400, 403),
    ("POST", "/v1/peer/sign/commit"): _row(403, 403, 403, 403, 400, 403),
    ("POST", "/v1/peer/repair"): _row(403, 403, 403, 403, 400, 403),
    ("POST", "/v1/peer/refresh"): _row(403, 403, 403, 403, 400, 403),
    ("POST", "/v1/peer/sign/share"): _row(403, 403, 403, 403, 400, 403),
    ("POST", "/v1/peer/epoch/nudge"): _row(403, 403, 403, 403, {200, 429}, 403),
}


# ---------------------------------------------------------------- certificates


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.mkdir(parents=True)
    (path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    (path / "tls.key").chmod(0o600)


def _extra_certs(live: Live, out: Path) -> None:
    """mallory (an unregistered client) and anon (no identity URI), by the cluster CA."""
    ca_dir = live.root / "pki" / "ca"
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = read_private_key(ca_dir / "ca.key")
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_principal_cert(ca_cert, ca_key, key.public_key(),
                                Identity("mallory", "client"), now, 1)  # fmt: skip
    _write(out / "mallory", cert, key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anon")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "anon", cert, key)


class Callers:
    def __init__(self, live: Live, extra: Path, foreign: Path) -> None:
        self.live, self.extra, self.foreign = live, extra, foreign

    def context(self, who: str) -> ssl.SSLContext:
        ca = self.live.root / "pki" / "ca" / "ca.crt"  # every caller trusts the node
        if who == "no-cert":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_verify_locations(cafile=str(ca))
            return ctx
        if who.startswith("foreign-"):
            name = who.removeprefix("foreign-")
            base = self.foreign / ("nodes" if name.startswith("node-") else "principals") / name
        elif who in ("mallory", "anon"):
            base = self.extra / who
        else:
            return tlsctx.client_context(*self.live.creds(who))
        return tlsctx.client_context(ca, base / "tls.crt", base / "tls.key")

    async def call(self, who: str, method: str, path: str, node: str = NODE) -> Any:
        """The status, or TLS when no HTTP answer came (the handshake was refused)."""
        peer = path.startswith("/v1/peer/")
        kwargs: dict[str, Any] = {}
        if method == "POST":
            kwargs = {"data": b"\x00"} if peer else {"json": {}}
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self.context(who)),
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as s,
                s.request(method, f"https://{self.live.api[node]}{path}", **kwargs) as r,
            ):
                await r.read()
                return r.status
        except (aiohttp.ClientConnectionError, ssl.SSLError):
            return TLS

    async def snapshot(self) -> tuple[Any, ...]:
        """What a refused call must not change: audit length, keys, requests, policies."""
        out = []
        for path in ("/v1/audit?limit=1", "/v1/keys", "/v1/requests?limit=1000",
                     "/v1/policies"):  # fmt: skip
            ctx = self.context("ops")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                    s.get(f"https://{self.live.api[NODE]}{path}") as r:  # fmt: skip
                assert r.status == 200, path
                body = await r.json()
                out.append(body.get("count", body))
        return tuple(out)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("cluster") / "c"
    # No audit checkpoints here: one landing mid-call would change the audit length and
    # the audit key's use count that `snapshot` compares (tests/node/cluster/
    # test_audit_checkpoints.py covers them).
    schedule = {"dkg_timeout_s": 4.0, "epoch_min_interval_s": 0.0,
                "audit_checkpoint_every": 1_000_000}  # fmt: skip
    with running(root, schedule=schedule) as c:
        yield c


@pytest.fixture(scope="module")
def callers(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Callers:
    extra = tmp_path_factory.mktemp("extra")
    _extra_certs(live, extra)
    foreign = tmp_path_factory.mktemp("foreign") / "pki"
    cli("pki", "init", "--dir", str(foreign), "--nodes", "3", "--operators", "ops",
        "--clients", "app1")  # fmt: skip
    return Callers(live, extra, foreign)


# ---------------------------------------------------------------- the matrix


def test_the_matrix_covers_every_route_and_caller() -> None:
    assert set(MATRIX) == operations()
    assert all(set(row) == set(CALLERS) for row in MATRIX.values())


def test_the_matrix_agrees_with_the_documented_roles() -> None:
    """403 exactly when the role is not in `x-roles` (or the name is not registered)."""
    doc = document()["paths"]
    for (method, template), row in MATRIX.items():
        op = doc[template][method.lower()]
        for who, role in CALLERS.items():
            want = row[who]
            if role is None or want is None:
                continue
            refused = role not in op["x-roles"] or (who == "mallory" and op["x-registration"])
            assert (want == 403) == refused, (method, template, who, want)
            assert "403" in op["responses"] or not refused, (method, template)


@pytest.mark.parametrize(("method", "template"), sorted(MATRIX))
def test_every_caller_against_every_route(callers: Callers, method: str, template: str) -> None:
    path = CONCRETE.get(template, template)

    async def run() -> dict[str, Any]:
        got: dict[str, Any] = {}
        before = await callers.snapshot()
        for who, want in MATRIX[(method, template)].items():
            if want is None:
                got[who] = None
                continue
            status = await callers.call(who, method, path)
            got[who] = status if not isinstance(want, set) or status not in want else want
            after = await callers.snapshot()
            if status != 200:
                assert after == before, (method, path, who, status)
            before = after
        return got

    assert asyncio.run(run()) == MATRIX[(method, template)]


def test_refused_handshakes_are_refused_by_the_node(callers: Callers, live: Live) -> None:
    """Without a certificate, or with one from another CA (trusting the node's CA, so
    that the client's own check passes), the node ends the connection during the
    handshake: not one HTTP byte, while the same probe with a cluster certificate gets
    its answer."""

    def probe(who: str) -> str:
        host, port = live.api[NODE].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                callers.context(who).wrap_socket(raw, server_hostname=host) as tls:  # fmt: skip
            try:
                if who == "ops":  # the control: an answer
                    tls.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: x\r\n\r\n")
                # The client's side of a TLS 1.3 handshake ends before the server has
                # checked the client's certificate: the refusal is an alert on the first read.
                return f"answered {tls.recv(100)[:12]!r}"
            except ssl.SSLError as exc:
                return exc.reason or str(exc)
            except ConnectionError as exc:
                return f"closed: {exc!r}"

    got = {w: probe(w) for w in ("no-cert", "foreign-ops", "foreign-node-2", "ops")}
    assert got["ops"].startswith("answered b'HTTP/1.1 200"), got
    for who in ("no-cert", "foreign-ops", "foreign-node-2"):
        # asyncio's server side aborts the connection on a failed handshake, so the client
        # sees the alert, a reset or a bare EOF; never an HTTP byte.
        refused = got[who] == "answered b''" or "ALERT" in got[who] or "closed" in got[who]
        assert refused, got


def test_a_removed_style_caller_is_refused_on_every_node(callers: Callers) -> None:
    """mallory's certificate is valid (the cluster CA issued it) but the name is not
    registered: every node refuses it on every registered route, and writes nothing."""

    async def run() -> list[int]:
        before = await callers.snapshot()
        out = [await callers.call("mallory", "GET", "/v1/keys", node=n)
               for n in ("node-1", "node-2", "node-3")]  # fmt: skip
        out.append(await callers.call("mallory", "POST", "/v1/keys/k1/sign", node="node-2"))
        assert await callers.snapshot() == before
        return out

    assert asyncio.run(run()) == [403, 403, 403, 403]
