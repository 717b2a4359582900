"""The canonical request digest, rebuilt here byte by byte from the documented encoding."""

from __future__ import annotations

import hashlib
import struct

from node.state import RequestSign, payload_hash, request_digest


def lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def test_digest_matches_documented_encoding():
    payload = b"release-1.2.3.tar.gz"
    ph = hashlib.sha512(lp(b"custody-cluster/v1/request-payload") + payload).digest()
    assert payload_hash(payload) == ph
    expected = hashlib.sha512(
        lp(b"custody-cluster/v1/request-digest")
        + lp(b"cluster-a")
        + lp(b"sign")
        + lp(b"req-1")
        + lp(b"app")
        + lp(b"k1")
        + lp((3).to_bytes(8, "big"))
        + lp("ctx é".encode())
        + lp(ph)
        + lp((0).to_bytes(8, "big"))
    ).digest()
    got = request_digest(
        cluster_id="cluster-a",
        kind="sign",
        request_id="req-1",
        author="app",
        key_id="k1",
        version=3,
        context="ctx é",
        payload_sha512=ph,
    )
    assert got == expected and len(got) == 64


def test_length_prefix_prevents_field_shifting():
    base = dict(cluster_id="c", kind="sign", request_id="r", author="a", version=1)
    one = request_digest(**base, key_id="ab", context="c", payload_sha512=b"")
    two = request_digest(**base, key_id="a", context="bc", payload_sha512=b"")
    assert one != two


def test_machine_uses_the_canonical_digest(ready):
    ready.active_key("k1")
    ready.ok(RequestSign("s1", "app", "k1", 0, "ctx", b"hello"))
    req = ready.m.state.requests["s1"]
    assert req.digest == request_digest(
        cluster_id="cluster-a",
        kind="sign",
        request_id="s1",
        author="app",
        key_id="k1",
        version=1,
        context="ctx",
        payload_sha512=payload_hash(b"hello"),
    )
    assert req.payload_hash == payload_hash(b"hello")


def test_documented_example_bytes():
    """The worked example in docs/state-machine.md, as hex."""
    body = bytes.fromhex(
        "00000021"
        + b"custody-cluster/v1/request-digest".hex()
        + "00000001" + b"c".hex()
        + "00000004" + b"sign".hex()
        + "00000001" + b"r".hex()
        + "00000001" + b"a".hex()
        + "00000001" + b"k".hex()
        + "00000008" + "0000000000000001"
        + "00000000"
        + "00000000"
        + "00000008" + "0000000000000000"
    )  # fmt: skip
    got = request_digest(
        cluster_id="c", kind="sign", request_id="r", author="a", key_id="k",
        version=1, context="", payload_sha512=b"",
    )  # fmt: skip
    assert got == hashlib.sha512(body).digest()


def test_activation_epoch_is_covered():
    base = dict(
        cluster_id="c", kind="rotate", request_id="r", author="ops", key_id="k", version=0,
        context="", payload_sha512=b"",
    )  # fmt: skip
    assert request_digest(**base) != request_digest(**base, activate_epoch=9)
