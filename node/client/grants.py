"""Client side of grants (docs/grants.md): a service's own Ed25519 key, and the
sign/decrypt commands it signs itself to use a grant.

`custody pki init` (and so `cluster init`) gives every client an Ed25519 signing key,
`principals/<client>/approval.key`, named by its profile's `approval_key` and registered
at bootstrap: that is the key used by default. A separate PKCS#8 PEM file
(`custody grants keygen`, registered by a governance `rekey_principal`: `custody grants
client-key`) rotates it, or gives one to a client of an older PKI that has none.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from node.state import RequestDecrypt, RequestSign, encode_command, sign_command

SIGNING_KEY_ENV = "CUSTODY_SIGNING_KEY"


def new_signing_key(path: Path) -> bytes:
    """Write a new Ed25519 key (PKCS#8 PEM, mode 0600, never overwritten); return its
    raw 32-byte public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_bytes(key)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_signing_key(
    path: str | os.PathLike[str] | None, default: str | os.PathLike[str] | None = None
) -> Ed25519PrivateKey:
    """The client's signing key from `path` (`--signing-key`), else `$CUSTODY_SIGNING_KEY`,
    else `default` (the profile's `approval_key`); it must be an Ed25519 PKCS#8 PEM file
    that group and others cannot read."""
    chosen = str(path) if path else os.environ.get(SIGNING_KEY_ENV, "")
    if not chosen and default:
        chosen = str(default)
    if not chosen:
        raise ValueError(
            "no signing key: the profile names no approval_key; pass --signing-key FILE "
            f"or set {SIGNING_KEY_ENV}"
        )
    file = Path(chosen)
    if file.stat().st_mode & 0o077:
        raise ValueError(f"{file}: a private key must not be group/other accessible")
    key = load_pem_private_key(file.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{file}: not an Ed25519 private key")
    return key


def signed_request(
    key: Ed25519PrivateKey, cluster_id: str, *, request_id: str, author: str, grant: str,
    key_id: str, op: str, payload: bytes, context: str = "", version: int = 0,
) -> str:  # fmt: skip
    """A sign (`op="sign"`) or decrypt request under `grant`, signed by the grantee's
    key: base64 of its canonical bytes, for `POST /v1/requests/signed`."""
    common = dict(
        request_id=request_id, author=author, key_id=key_id, version=version,
        context=context, grant=grant, signature=bytes(64),
    )  # fmt: skip
    if op == "sign":
        cmd = RequestSign(message=payload, **common)
    elif op == "decrypt":
        cmd = RequestDecrypt(ciphertext=payload, **common)
    else:
        raise ValueError("op must be sign or decrypt")
    return base64.b64encode(encode_command(sign_command(key, cmd, cluster_id))).decode()
