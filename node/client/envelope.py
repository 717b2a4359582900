"""Envelope encryption with a custody `encrypt` key (client side). See docs/envelope.md.

A file is encrypted under a fresh 256-bit data key (DEK) with AES-256-GCM; the
DEK is wrapped with `shares.tdec.wrap` (TDH2) to the group public key of one
version of a custody key, for a `Label` that binds the cluster, the key, the
version and the context. Nobody holds the key's secret whole: opening the DEK
needs an approved `decrypt` request and `t` members' partial decryptions,
each verified here (DLEQ proof) before they are combined.

The label (built identically by the members, from their own replica):

    Label(key_id, version, context = context.encode("ascii"),
          aad = "custody/envelope/v1/label" || u16 len || cluster_id)

Partials are bound to the request they were given for: `partial_request(ref)`
is the `request` argument of `partial_decrypt` / `verify_partial` / `unwrap`.

The file format (all integers big-endian; parsing is strict, every length bounded):

    magic "CENV" (4) | format 0x01 (1) | key id length L (1) | key id (L, UTF-8)
    | key version (4) | SHA-256(context) (32) | wrapped length W (2)
    | wrapped DEK (W: a tdec envelope v2, 173..221) | nonce (12)
    | ciphertext length C (8) | ciphertext || GCM tag (C >= 16)

The payload's associated data binds the format, the cluster, the key id and the
context digest, but neither the key version nor the wrapped DEK: `rewrap`
replaces those two (the DEK stays the same, so the payload stays valid).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node import tlsctx
from node.client.http import Client, new_request_id
from node.client.profile import Profile
from node.protocols.envelope import (
    EnvelopeError,
    context_digest,
    label_for,
    partial_request,
)
from shares import tdec
from shares.errors import SharesError
from shares.rng import RandomSource, read_random

MAGIC = b"CENV"
FORMAT_VERSION = 1
DEK_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
CONTEXT_DIGEST_SIZE = 32
MAX_KEY_ID = 255
MAX_PLAINTEXT = 1 << 30  # 1 GiB: files are handled in memory
MAX_WRAPPED = 64 * 1024  # the state machine's ciphertext bound (a v2 envelope is far smaller)
PAYLOAD_AAD = b"custody/envelope/v1/payload"


# ---------------------------------------------------------------- file format


@dataclass(frozen=True)
class EnvelopeFile:
    key_id: str
    version: int
    context_sha256: bytes
    wrapped: bytes  # the tdec envelope: the DEK wrapped to the key version
    nonce: bytes
    ciphertext: bytes  # payload ciphertext || tag

    def header(self) -> bytes:
        kid = self.key_id.encode("utf-8")
        return (
            MAGIC + bytes([FORMAT_VERSION, len(kid)]) + kid + self.version.to_bytes(4, "big")
            + self.context_sha256 + len(self.wrapped).to_bytes(2, "big") + self.wrapped
            + self.nonce + len(self.ciphertext).to_bytes(8, "big")
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        return self.header() + self.ciphertext

    def payload_aad(self, cluster_id: str) -> bytes:
        return payload_aad(cluster_id, self.key_id, self.context_sha256)

    def check_context(self, context: str) -> None:
        if not hmac.compare_digest(context_digest(context), self.context_sha256):
            raise EnvelopeError(
                "wrong context: this file was encrypted for another context (its SHA-256 of "
                "the context differs); the members would refuse it under this one"
            )


def payload_aad(cluster_id: str, key_id: str, ctx_digest: bytes) -> bytes:
    cid, kid = cluster_id.encode("utf-8"), key_id.encode("utf-8")
    return (
        PAYLOAD_AAD + bytes([FORMAT_VERSION]) + len(cid).to_bytes(2, "big") + cid
        + bytes([len(kid)]) + kid + ctx_digest
    )  # fmt: skip


def parse(raw: bytes) -> EnvelopeFile:
    """Strictly parse an envelope file (no proof is checked here: the members do)."""
    if not isinstance(raw, bytes | bytearray):
        raise EnvelopeError("an envelope file must be bytes")
    raw = bytes(raw)
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(raw):
            raise EnvelopeError(f"envelope file truncated (in {what})")
        out = raw[pos : pos + n]
        pos += n
        return out

    if take(4, "magic") != MAGIC:
        raise EnvelopeError("not a custody envelope file (bad magic)")
    fmt = take(1, "format")[0]
    if fmt != FORMAT_VERSION:
        raise EnvelopeError(f"unknown envelope file format {fmt}")
    klen = take(1, "key id length")[0]
    if not 1 <= klen <= MAX_KEY_ID:
        raise EnvelopeError("key id length out of range")
    try:
        key_id = take(klen, "key id").decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("key id is not UTF-8") from None
    version = int.from_bytes(take(4, "version"), "big")
    if version < 1:
        raise EnvelopeError("key version must be >= 1")
    ctx = take(CONTEXT_DIGEST_SIZE, "context digest")
    wlen = int.from_bytes(take(2, "wrapped length"), "big")
    if not tdec.MIN_ENVELOPE <= wlen <= tdec.MAX_ENVELOPE:
        raise EnvelopeError(f"wrapped DEK must be {tdec.MIN_ENVELOPE}..{tdec.MAX_ENVELOPE} bytes")
    wrapped = take(wlen, "wrapped DEK")
    try:
        tdec.parse_envelope(wrapped)
    except SharesError as exc:
        raise EnvelopeError(f"wrapped DEK is malformed: {exc}") from None
    nonce = take(NONCE_SIZE, "nonce")
    clen = int.from_bytes(take(8, "ciphertext length"), "big")
    if not TAG_SIZE <= clen <= MAX_PLAINTEXT + TAG_SIZE:
        raise EnvelopeError("ciphertext length out of range")
    ciphertext = take(clen, "ciphertext")
    if pos != len(raw):
        raise EnvelopeError("trailing bytes after the ciphertext")
    return EnvelopeFile(key_id, version, ctx, wrapped, nonce, ciphertext)


# ---------------------------------------------------------------- local crypto


def zero(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def wrap_only(
    group_public_key: bytes, cluster_id: str, key_id: str, version: int, context: str,
    rng: RandomSource,
) -> tuple[bytearray, bytes]:  # fmt: skip
    """A fresh DEK (the caller owns and zeroizes it) and the DEK wrapped to the version."""
    label = label_for(cluster_id, key_id, version, context)
    dek = bytearray(read_random(rng, DEK_SIZE))
    try:
        wrapped = tdec.wrap(group_public_key, dek, label, rng)
    except BaseException:
        zero(dek)
        raise
    return dek, wrapped


def encrypt_file(
    group_public_key: bytes, cluster_id: str, key_id: str, version: int, context: str,
    plaintext: bytes, rng: RandomSource,
) -> bytes:  # fmt: skip
    """An envelope file: `plaintext` under a fresh DEK, the DEK wrapped to the version."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise EnvelopeError(f"plaintext over {MAX_PLAINTEXT} bytes")
    dek, wrapped = wrap_only(group_public_key, cluster_id, key_id, version, context, rng)
    try:
        nonce = read_random(rng, NONCE_SIZE)
        ctx = context_digest(context)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, payload_aad(cluster_id, key_id, ctx))
    finally:
        zero(dek)
    return EnvelopeFile(key_id, version, ctx, wrapped, nonce, ciphertext).to_bytes()


def decrypt_payload(env: EnvelopeFile, dek: bytearray, cluster_id: str) -> bytes:
    try:
        return AESGCM(dek).decrypt(env.nonce, env.ciphertext, env.payload_aad(cluster_id))
    except InvalidTag:
        raise EnvelopeError(
            "the payload does not open with the recovered data key: the file was altered "
            "(payload, nonce, key id or context digest) or belongs to another cluster"
        ) from None


def rewrapped(env: EnvelopeFile, version: int, wrapped: bytes) -> bytes:
    """The same file with only the key version and the wrapped DEK replaced."""
    return dataclasses.replace(env, version=version, wrapped=wrapped).to_bytes()


# ---------------------------------------------------------------- the cluster


def primary_version(key: dict[str, Any]) -> dict[str, Any]:
    """The key's primary version, checked usable for encryption."""
    if key.get("purpose") != "encrypt":
        raise EnvelopeError(f"key {key.get('key_id')} is a {key.get('purpose')} key, not encrypt")
    found = [v for v in key.get("versions", []) if v["version"] == key.get("primary")]
    if not found or found[0]["state"] != "active" or not found[0]["group_public_key"]:
        raise EnvelopeError(f"key {key.get('key_id')} has no active primary version")
    return found[0]


def key_version(key: dict[str, Any], version: int) -> dict[str, Any]:
    found = [v for v in key.get("versions", []) if v["version"] == version]
    if not found or not found[0]["group_public_key"]:
        raise EnvelopeError(f"key {key.get('key_id')} has no version {version} with a key")
    return found[0]


async def submit_decrypt(
    client: Client, env: EnvelopeFile, context: str, request_id: str | None = None
) -> dict[str, Any]:
    """Submit (or retry, same request id) the decrypt request for the file's wrapped DEK."""
    import base64

    env.check_context(context)
    body = {
        "request_id": request_id or new_request_id("dec"), "version": env.version,
        "context": context, "ciphertext_b64": base64.b64encode(env.wrapped).decode(),
    }  # fmt: skip
    return await client.post(f"/v1/keys/{env.key_id}/decrypt", body)  # type: ignore[no-any-return]


async def wait_approved(
    client: Client, ref: str, timeout: float, say: Callable[[str], None] = lambda _s: None
) -> dict[str, Any]:
    """Long-poll until the request is approved (or decided, or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        left = max(0.0, min(20.0, deadline - time.monotonic()))
        r: dict[str, Any] = await client.get(
            f"/v1/requests/{ref}", wait=f"{left:.3f}", until="approved"
        )
        if r["state"] != last:
            say(f"  {ref}: {r['state']} ({len(r['approvals'])}/{r['k']} approvals)")
            last = r["state"]
        if r["state"] != "pending" or time.monotonic() >= deadline:
            return r


async def collect_partials(
    profile: Profile, ref: str, wrapped: bytes, key: dict[str, Any], version: int,
    say: Callable[[str], None] = lambda _s: None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[list[tdec.PartialDecryption], dict[int, bytes], int]:  # fmt: skip
    """Ask the profile's nodes for partials until `t` verify: `t` nodes at once, then
    more, wave after wave, if some refuse, are down or send a partial that fails.

    Returns (partials, verification shares by index, t). Each partial's DLEQ
    proof is checked against the member's verification share from the key view
    before it counts; a bad one is dropped and its node named. `session` (mTLS
    with the profile's certificate) is reused across calls when given.
    """
    from shares import vss

    v = key_version(key, version)
    vshares = {i + 1: bytes.fromhex(s) for i, s in enumerate(v["verification_shares"])}
    gpk = bytes.fromhex(v["group_public_key"])
    try:
        t = vss.derive_threshold(vshares, gpk)
    except SharesError as exc:
        raise EnvelopeError(f"the key's verification shares are inconsistent: {exc}") from None
    request = partial_request(ref)
    got: dict[int, tdec.PartialDecryption] = {}
    refusals: list[str] = []
    own = session is None
    if session is None:
        ctx = tlsctx.client_context(profile.ca, profile.cert, profile.key)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx),
            timeout=aiohttp.ClientTimeout(total=15),
        )
    try:
        pending = list(profile.nodes)
        while pending and len(got) < t:
            wave, pending = pending[: t - len(got)], pending[t - len(got) :]
            answers = await asyncio.gather(
                *(_ask_partial(session, url, ref) for url in wave), return_exceptions=True
            )
            for url, out in zip(wave, answers, strict=True):
                if isinstance(out, BaseException):
                    refusals.append(f"{url}: {out}")
                    say(f"  {url} gave no partial: {out}")
                    continue
                try:
                    partial = tdec.PartialDecryption.from_bytes(
                        base64.b64decode(out["partial_b64"])
                    )
                    index = out["index"]
                    if partial.identifier != index or index not in vshares or index in got:
                        raise EnvelopeError("partial from an unexpected member index")
                    tdec.verify_partial(partial, wrapped, vshares[index], request)
                except (SharesError, EnvelopeError, KeyError, TypeError, ValueError) as exc:
                    refusals.append(f"{url}: bad partial ({exc.__class__.__name__})")
                    say(f"  {url}: its partial does not verify: dropped")
                    continue
                got[index] = partial
                say(f"  partial from {out.get('member', url)} (index {index}) verified")
    finally:
        if own:
            await session.close()
    if len(got) < t:
        detail = "; ".join(refusals) or "no node answered"
        raise EnvelopeError(f"only {len(got)} of the {t} partial decryptions needed: {detail}")
    return list(got.values())[:t], vshares, t


async def _ask_partial(session: aiohttp.ClientSession, url: str, ref: str) -> dict[str, Any]:
    async with session.post(f"{url}/v1/requests/{ref}/partial", json={}) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            code = body.get("error", resp.status) if isinstance(body, dict) else resp.status
            msg = body.get("message", "") if isinstance(body, dict) else ""
            raise EnvelopeError(f"{resp.status} {code}: {msg}")
        if not isinstance(body, dict):
            raise EnvelopeError("not a JSON object")
        return body


async def recover_dek(
    client: Client, profile: Profile, env: EnvelopeFile, context: str, ref: str,
    timeout: float, say: Callable[[str], None] = lambda _s: None,
) -> bytearray:  # fmt: skip
    """Wait for the request's approval, gather t verified partials, open the DEK."""
    env.check_context(context)
    # The key view (verification shares, public and fixed once the version exists) is
    # read while the approval is awaited.
    r, key = await asyncio.gather(
        wait_approved(client, ref, timeout, say), client.get(f"/v1/keys/{env.key_id}")
    )
    if r["state"] != "approved":
        why = r.get("failure") or ""
        if r["state"] == "executed":
            why = "its partials were already given (submit a new decrypt request)"
        raise EnvelopeError(f"request {ref} is {r['state']}" + (f": {why}" if why else ""))
    if (r["key_id"], r["version"], r["context"]) != (env.key_id, env.version, context):
        raise EnvelopeError(f"request {ref} is not for this file's key, version and context")
    partials, vshares, t = await collect_partials(
        profile, ref, env.wrapped, key, env.version, say, session=client.session
    )
    gpk = bytes.fromhex(key_version(key, env.version)["group_public_key"])
    label = label_for(profile.cluster_id, env.key_id, env.version, context)
    try:
        dek = tdec.unwrap(env.wrapped, partials, vshares, t, gpk, label, partial_request(ref))
    except tdec.InvalidEnvelope:
        raise EnvelopeError(
            "the wrapped data key does not verify for this key version, context and cluster"
        ) from None
    except SharesError as exc:
        raise EnvelopeError(f"the data key could not be opened: {exc}") from None
    out = bytearray(dek)  # `dek` itself is immutable bytes: CPython cannot zeroize it
    del dek
    if len(out) != DEK_SIZE:
        zero(out)
        raise EnvelopeError("the wrapped data key has an unexpected length")
    return out
