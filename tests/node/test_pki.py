"""PKI creation, idempotency, extension, refusal, file modes, manifest and verification."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.pki import (
    Identity,
    PkiError,
    init_pki,
    load_pki,
    make_request,
    principal_pairs,
    verify_pki,
)
from node.pki.manifest import parse_manifest
from node.pki.names import check_host, check_principal_name, identity_uri, parse_identity_uri
from node.pki.store import plan_init

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PAIRS = principal_pairs(["alice", "bob", "carol"], ["app1"], ["ops"], ["audit"])


def _request(**kw: object) -> object:
    kw.setdefault("principals", PAIRS)
    return make_request(kw.pop("nodes", 3), **kw)  # type: ignore[arg-type]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's content and mode, to prove that a refused call changed nothing."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mode)
    return out


@pytest.fixture
def made(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    init_pki(root, _request(), now=NOW)
    return root


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "alice", "app-1", "ops_team", "x" * 32])
def test_good_principal_names(name: str) -> None:
    assert check_principal_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Alice", "1app", "-x", "a b", "a.b", "x" * 33, "node-1", "ä", "a\n", None]
)
def test_bad_principal_names(name: object) -> None:
    with pytest.raises(PkiError):
        check_principal_name(name)


@pytest.mark.parametrize(
    ("host", "canonical"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("n1.example.org", "n1.example.org")],
)
def test_good_hosts(host: str, canonical: str) -> None:
    assert check_host(host) == canonical


@pytest.mark.parametrize("host", ["", "*.example", "N1.example", "a..b", "1.2.3.999", "a_b", "-a"])
def test_bad_hosts(host: str) -> None:
    with pytest.raises(PkiError):
        check_host(host)


def test_identity_uri_round_trip() -> None:
    for ident in (Identity("node-15", "node"), Identity("alice", "approver")):
        assert parse_identity_uri(identity_uri(ident)) == ident
    for bad in ("custody:role:node:principal:node-0", "custody:role:node:principal:alice"):
        with pytest.raises(PkiError):
            parse_identity_uri(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "node count"),
        ({"nodes": 16}, "node count"),
        ({"principals": [("alice", "approver"), ("alice", "client")]}, "given twice"),
        ({"principals": [("alice", "admin")]}, "unknown principal role"),
        ({"node_hosts": [["127.0.0.1"]]}, "1 entries for 3 nodes"),
        ({"node_hosts": [["a"], ["b"], ["b", "b"]]}, "duplicate host"),
        ({"ca_days": 0}, "CA validity"),
        ({"leaf_days": 400, "ca_days": 300}, "cannot exceed"),
    ],
)
def test_make_request_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(PkiError, match=message):
        _request(**kwargs)


# ---------------------------------------------------------------- creation


def test_key_files_are_0600_and_created_so(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask, keys are never group/other readable
    try:
        init_pki(tmp_path / "p", _request(), now=NOW)
    finally:
        os.umask(old)
    keys = sorted((tmp_path / "p").rglob("*.key"))
    # CA + 3 nodes + 6 principal TLS keys + 5 signing keys (3 approvers, 1 client,
    # 1 operator; the auditor has none)
    assert len(keys) == 1 + 3 + 6 + 5
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for crt in (tmp_path / "p").rglob("*.crt"):
        assert stat.S_IMODE(crt.stat().st_mode) & 0o077 == 0o044  # public, not writable


def test_write_secret_never_overwrites(tmp_path: Path) -> None:
    from node.pki.store import write_secret

    target = tmp_path / "k"
    write_secret(target, b"one")
    with pytest.raises(FileExistsError):
        write_secret(target, b"two")
    assert target.read_bytes() == b"one"


def test_certificates_follow_the_conventions(made: Path) -> None:
    pki = load_pki(made)
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc - NOW >= dt.timedelta(days=3650)
    for n in pki.manifest.nodes:
        cert = x509.load_pem_x509_certificate(pki.path(n.cert).read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == n.id
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"custody:role:node:principal:{n.id}"
        ]
        assert cert.not_valid_after_utc - NOW == dt.timedelta(days=365)
        cert.verify_directly_issued_by(ca)
    for p in pki.manifest.principals:
        cert = x509.load_pem_x509_certificate(pki.path(p.cert).read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == p.name
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        assert ou == p.role
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_node_hosts_option(tmp_path: Path) -> None:
    hosts = [["10.0.0.1", "n1.example"], ["10.0.0.2"], ["::1"]]
    init_pki(tmp_path / "p", _request(node_hosts=hosts), now=NOW)
    pki = load_pki(tmp_path / "p")
    assert [list(n.hosts) for n in pki.manifest.nodes] == hosts
    assert verify_pki(pki, now=NOW) == []


def test_manifest_and_approval_keys(made: Path) -> None:
    doc = json.loads((made / "pki.json").read_text())
    assert [n["id"] for n in doc["nodes"]] == ["node-1", "node-2", "node-3"]
    roles = {p["name"]: p["role"] for p in doc["principals"]}
    assert roles == {
        "alice": "approver",
        "bob": "approver",
        "carol": "approver",
        "app1": "client",
        "ops": "operator",
        "audit": "auditor",
    }
    for p in doc["principals"]:
        if p["role"] in ("approver", "operator", "client"):  # clients sign under grants
            key = serialization.load_pem_private_key((made / p["approval_key"]).read_bytes(), None)
            assert isinstance(key, ed25519.Ed25519PrivateKey)
            pub = ed25519.Ed25519PublicKey.from_public_bytes(
                bytes.fromhex(p["approval_public_key_hex"])
            )
            pub.verify(key.sign(b"digest"), b"digest")  # raises if the hex is not this key's
            pub_file = made / "principals" / p["name"] / "approval.pub"
            assert pub_file.read_text() == p["approval_public_key_hex"] + "\n"
        else:
            assert p["approval_key"] is None and p["approval_public_key_hex"] is None
    ca_der = x509.load_pem_x509_certificate((made / "ca/ca.crt").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert doc["ca"]["sha256"] == hashlib.sha256(ca_der).hexdigest()
    assert verify_pki(load_pki(made), now=NOW) == []


# ---------------------------------------------------------------- idempotency / refusal


def test_same_arguments_again_is_a_noop(made: Path) -> None:
    before = _snapshot(made)
    result = init_pki(made, _request(), now=NOW + dt.timedelta(days=1))
    assert result.action == "noop" and result.issued == ()
    assert _snapshot(made) == before


def test_adding_a_principal_issues_only_it(made: Path) -> None:
    before = _snapshot(made)
    pairs = [*PAIRS, ("dave", "approver"), ("app2", "client")]
    result = init_pki(made, _request(principals=pairs), now=NOW)
    assert result.action == "extend" and result.issued == ("dave", "app2")
    after = _snapshot(made)
    for rel, content in before.items():
        if rel != "pki.json":
            assert after[rel] == content, rel
    assert "principals/dave/approval.key" in after
    assert "principals/app2/approval.key" in after  # a client gets a signing key too
    assert "principals/app2/approval.pub" in after
    pki = load_pki(made)
    assert pki.manifest.principal("dave").role == "approver"
    assert verify_pki(pki, now=NOW) == []


def test_adding_nodes_keeps_existing_ones(made: Path) -> None:
    before = _snapshot(made)
    result = init_pki(made, _request(nodes=5), now=NOW)
    assert result.issued == ("node-4", "node-5")
    assert _snapshot(made)["nodes/node-1/tls.key"] == before["nodes/node-1/tls.key"]
    assert verify_pki(load_pki(made), now=NOW) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"principals": [*PAIRS[:-1], ("audit", "client")]}, "already a auditor"),
        ({"principals": PAIRS[1:]}, "not in the arguments"),
        ({"nodes": 2}, "already has 3 nodes"),
        ({"node_hosts": [["10.0.0.1"]] * 3}, "has hosts"),
        ({"leaf_days": 30}, "validity differs"),
    ],
)
def test_conflicting_arguments_are_refused_and_change_nothing(
    made: Path, kwargs: dict, message: str
) -> None:
    before = _snapshot(made)
    with pytest.raises(PkiError, match=message):
        init_pki(made, _request(**kwargs), now=NOW)
    assert _snapshot(made) == before


def test_force_recreates_everything(made: Path) -> None:
    old_fp = load_pki(made).manifest.ca_sha256
    result = init_pki(made, _request(principals=PAIRS[:2], nodes=1), now=NOW, force=True)
    assert result.action == "create"
    pki = load_pki(made)
    assert pki.manifest.ca_sha256 != old_fp
    assert [p.name for p in pki.manifest.principals] == ["alice", "bob"]
    assert not (made / "principals" / "ops").exists()
    assert not (made / "nodes" / "node-2").exists()
    assert verify_pki(pki, now=NOW) == []


def test_interrupted_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "ca").mkdir(parents=True)
    with pytest.raises(PkiError, match="interrupted"):
        init_pki(root, _request(), now=NOW)
    assert list((root / "ca").iterdir()) == []
    init_pki(root, _request(), now=NOW, force=True)
    assert verify_pki(load_pki(root), now=NOW) == []


def test_unrelated_files_in_the_directory_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    init_pki(root, _request(), now=NOW)
    init_pki(root, _request(), now=NOW, force=True)
    assert (root / "notes.txt").read_text() == "mine"


def test_damaged_pki_is_not_extended(made: Path) -> None:
    (made / "nodes/node-2/tls.crt").unlink()
    with pytest.raises(PkiError, match="damaged"):
        init_pki(made, _request(), now=NOW)


# ---------------------------------------------------------------- offline CA key


def test_offline_ca_key(tmp_path: Path) -> None:
    root, ca_key = tmp_path / "p", tmp_path / "usb" / "ca.key"
    init_pki(root, _request(), now=NOW, ca_key_path=ca_key)
    assert not (root / "ca" / "ca.key").exists()
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    pki = load_pki(root)
    assert pki.manifest.ca_key is None
    assert verify_pki(pki, now=NOW, ca_key_path=ca_key) == []
    # same arguments: no-op with or without the key
    assert init_pki(root, _request(), now=NOW, ca_key_path=ca_key).action == "noop"
    assert init_pki(root, _request(), now=NOW).action == "noop"
    more = _request(principals=[*PAIRS, ("erin", "operator")])
    with pytest.raises(PkiError, match="pass --ca-key"):
        init_pki(root, more, now=NOW)
    result = init_pki(root, more, now=NOW, ca_key_path=ca_key)
    assert result.issued == ("erin",)
    assert verify_pki(load_pki(root), now=NOW) == []


def test_offline_ca_key_must_be_outside_and_new(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="outside"):
        init_pki(tmp_path / "p", _request(), now=NOW, ca_key_path=tmp_path / "p" / "x.key")
    assert not (tmp_path / "p").exists()
    existing = tmp_path / "ca.key"
    existing.write_bytes(b"precious")
    with pytest.raises(PkiError, match="already exists"):
        init_pki(tmp_path / "p", _request(), now=NOW, ca_key_path=existing)
    assert existing.read_bytes() == b"precious"
    assert not (tmp_path / "p").exists()


def test_wrong_ca_key_is_refused(tmp_path: Path) -> None:
    init_pki(tmp_path / "a", _request(), now=NOW, ca_key_path=tmp_path / "a.key")
    init_pki(tmp_path / "b", _request(), now=NOW, ca_key_path=tmp_path / "b.key")
    more = _request(principals=[*PAIRS, ("erin", "client")])
    with pytest.raises(PkiError, match="not the key of this PKI's CA"):
        init_pki(tmp_path / "a", more, now=NOW, ca_key_path=tmp_path / "b.key")


def test_loose_ca_key_permissions_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "ca.key"
    init_pki(tmp_path / "p", _request(), now=NOW, ca_key_path=key)
    key.chmod(0o644)
    with pytest.raises(PkiError, match="group or others"):
        init_pki(
            tmp_path / "p", _request(principals=[*PAIRS, ("x", "client")]), now=NOW, ca_key_path=key
        )


# ---------------------------------------------------------------- validity


def test_leaf_never_outlives_the_ca(tmp_path: Path) -> None:
    root = tmp_path / "p"
    init_pki(root, _request(ca_days=400, leaf_days=365), now=NOW)
    later = NOW + dt.timedelta(days=300)
    init_pki(
        root, _request(ca_days=400, leaf_days=365, principals=[*PAIRS, ("z", "client")]), now=later
    )
    pki = load_pki(root)
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.path(pki.manifest.principal("z").cert).read_bytes())
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    assert verify_pki(pki, now=later) == []
    problems = verify_pki(pki, now=NOW + dt.timedelta(days=500))
    assert any("not valid now" in p for p in problems)


# ---------------------------------------------------------------- verify


def test_verify_detects_swapped_certificates(made: Path) -> None:
    one, two = made / "nodes/node-1/tls.crt", made / "nodes/node-2/tls.crt"
    a, b = one.read_bytes(), two.read_bytes()
    one.write_bytes(b)
    two.write_bytes(a)
    problems = verify_pki(load_pki(made), now=NOW)
    assert any("names Identity(name='node-2'" in p for p in problems)
    assert any("does not match its certificate" in p for p in problems)


def test_verify_detects_loose_key_mode(made: Path) -> None:
    (made / "principals/alice/tls.key").chmod(0o640)
    problems = verify_pki(load_pki(made), now=NOW)
    assert problems and "group or others" in problems[0]


def test_verify_detects_tampered_approval_pub(made: Path) -> None:
    (made / "principals/bob/approval.pub").write_text("00" * 32 + "\n")
    assert any("approval.pub" in p for p in verify_pki(load_pki(made), now=NOW))


def test_verify_detects_foreign_ca(made: Path, tmp_path: Path) -> None:
    init_pki(tmp_path / "other", _request(), now=NOW)
    (made / "ca/ca.crt").write_bytes((tmp_path / "other/ca/ca.crt").read_bytes())
    assert "fingerprint" in verify_pki(load_pki(made), now=NOW)[0]


# ---------------------------------------------------------------- manifest parsing


def _doc(made: Path) -> dict:
    return json.loads((made / "pki.json").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "fields"),
        (lambda d: d.update(v=2), "unsupported"),
        (lambda d: d["nodes"][0].update(cert="../../etc/passwd"), "canonical"),
        (lambda d: d["principals"][0].update(key="/etc/shadow"), "canonical"),
        (lambda d: d["principals"][0].update(name="Alice"), "invalid principal name"),
        (lambda d: d["principals"][0].update(approval_public_key_hex="zz"), "hex"),
        (lambda d: d["principals"].append(dict(d["principals"][0])), "duplicate principal"),
        (lambda d: d["nodes"].reverse(), "node-1"),
        (lambda d: d["nodes"][0].update(index=True), "node-1"),
        (lambda d: d["validity_days"].update(ca="10"), "validity_days"),
        (lambda d: d["ca"].update(key="elsewhere/ca.key"), "canonical"),
        (lambda d: d["nodes"][0].update(hosts=["*"]), "invalid host"),
        (lambda d: d["principals"][5].update(approval_public_key_hex="00" * 32), "presence"),
        (
            lambda d: d["principals"][0].update(approval_key=None, approval_public_key_hex=None),
            "presence",
        ),
        (
            lambda d: d["principals"][4].update(approval_key=None, approval_public_key_hex=None),
            "presence",
        ),
        (lambda d: d["principals"][3].update(approval_public_key_hex=None), "canonical"),
    ],
)
def test_manifest_parsing_is_strict(made: Path, mutate: object, message: str) -> None:
    doc = _doc(made)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(PkiError, match=message):
        parse_manifest(json.dumps(doc))


def test_manifest_rejects_duplicate_keys_and_size() -> None:
    with pytest.raises(PkiError, match="duplicate key"):
        parse_manifest('{"v": 1, "v": 1}')
    with pytest.raises(PkiError, match="larger"):
        parse_manifest(b" " * (2 << 20))
    with pytest.raises(PkiError, match="not valid JSON"):
        parse_manifest("{")


def test_manifest_round_trip(made: Path) -> None:
    manifest = load_pki(made).manifest
    assert parse_manifest(manifest.to_json()) == manifest


# ---------------------------------------------------------------- plan (pure)


def test_plan_is_pure_and_decides(made: Path) -> None:
    existing = load_pki(made).manifest
    assert plan_init(_request(), None, force=False).action == "create"
    assert plan_init(_request(), existing, force=False).action == "noop"
    assert plan_init(_request(), existing, force=True).action == "create"
    plan = plan_init(_request(nodes=4), existing, force=False)
    assert (plan.action, plan.new_nodes, plan.new_principals) == ("extend", (4,), ())


def test_approval_key_helpers(made: Path) -> None:
    from node.pki import approval_public_keys, load_approval_key

    pki = load_pki(made)
    keys = approval_public_keys(pki.manifest)
    assert sorted(keys) == ["alice", "app1", "bob", "carol", "ops"]
    role, raw = keys["alice"]
    signature = load_approval_key(pki, "alice").sign(b"request digest")
    assert role == "approver" and len(raw) == 32
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, b"request digest")
    role, raw = keys["app1"]
    signature = load_approval_key(pki, "app1").sign(b"grant request")
    assert role == "client" and len(raw) == 32
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, b"grant request")
    assert len({raw for _role, raw in keys.values()}) == len(keys)  # one key per principal
    with pytest.raises(PkiError, match="has no approval key"):
        load_approval_key(pki, "audit")
    (made / "principals/alice/approval.key").unlink()
    (made / "principals/alice/approval.key").symlink_to(made / "principals/bob/approval.key")
    with pytest.raises(PkiError):
        load_approval_key(pki, "alice")


def test_manifest_from_before_client_keys_still_loads(made: Path) -> None:
    """A manifest written when clients had no signing key: the client loads without one,
    verifies, and a re-run with the same arguments leaves it as it is."""
    from node.pki import approval_public_keys

    doc = _doc(made)
    app1 = next(p for p in doc["principals"] if p["name"] == "app1")
    app1.update(approval_key=None, approval_public_key_hex=None)
    (made / "principals/app1/approval.key").unlink()
    (made / "principals/app1/approval.pub").unlink()
    (made / "pki.json").write_text(json.dumps(doc, indent=2) + "\n")
    pki = load_pki(made)
    entry = pki.manifest.principal("app1")
    assert entry.approval_key is None and entry.approval_public_key_hex is None
    assert "app1" not in approval_public_keys(pki.manifest)
    assert verify_pki(pki, now=NOW) == []
    with pytest.raises(PkiError, match="has no approval key"):
        pki.approval_key_path("app1")
    before = _snapshot(made)
    assert init_pki(made, _request(), now=NOW).action == "noop"
    assert _snapshot(made) == before


def test_verify_detects_tampered_client_key(made: Path) -> None:
    (made / "principals/app1/approval.pub").write_text("00" * 32 + "\n")
    assert any("app1: approval.pub" in p for p in verify_pki(load_pki(made), now=NOW))


def test_corrupt_manifest_is_refused_then_forced(made: Path) -> None:
    (made / "pki.json").write_text("{")
    with pytest.raises(PkiError, match="use --force"):
        init_pki(made, _request(), now=NOW)
    assert init_pki(made, _request(), now=NOW, force=True).action == "create"


def test_node_hosts_must_be_lists_per_node() -> None:
    with pytest.raises(PkiError, match="one list of hosts per node"):
        _request(nodes=1, node_hosts=["10.0.0.1"])


def test_symlinked_files_are_refused(made: Path, tmp_path: Path) -> None:
    cert = made / "nodes/node-1/tls.crt"
    elsewhere = tmp_path / "elsewhere.crt"
    elsewhere.write_bytes(cert.read_bytes())
    cert.unlink()
    cert.symlink_to(elsewhere)
    problems = verify_pki(load_pki(made), now=NOW)
    assert problems and "cannot open" in problems[0]


def test_oversized_key_file_is_refused(made: Path) -> None:
    from node.pki.store import read_private_key

    key = made / "nodes/node-1/tls.key"
    key.write_bytes(b"A" * 20000)
    with pytest.raises(PkiError, match="larger than"):
        read_private_key(key)
