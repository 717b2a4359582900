"""One insider acting alone against a running cluster: a peer holding valid node
credentials, an approver, a client. Each attack must be refused by the honest
members on their own replicas.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from node import tlsctx
from node.pki.store import read_private_key
from node.protocols.wire import CommitRequest, CommitResponse, ShareRequest, ShareResponse
from node.state import Approve, encode_command, payload_hash, sign_approval
from shares import frost
from shares.errors import InvalidSignatureShare
from tests.node.cluster.harness import Live, running

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("attacks") / "c"
    with running(
        root, schedule={"epoch_min_interval_s": 0.0}
    ) as c:
        yield c


Row = tuple[int, bytes, bytes]


def _commit(live: Live, attacker: str, target: str, count: int = 2) -> list[Row]:
    req = CommitRequest("k1", 1, count).encode()
    status, body = asyncio.run(live.http(attacker, "POST", target, "/v1/peer/sign/commit",
                                         data=req))  # fmt: skip
    assert status == 200, body
    return list(CommitResponse.decode(body).commitments)


def _share(live: Live, attacker: str, target: str, req: ShareRequest) -> tuple[int, Any]:
    return asyncio.run(live.http(attacker, "POST", target, "/v1/peer/sign/share",
                                 data=req.encode()))  # fmt: skip


def _attack_list(live: Live, target: str, theirs: Row) -> list[Row]:
    """What the attacker (node-1, with its genuine node credentials) sends: the target's
    genuine commitment next to one of its own."""
    own = _commit(live, "node-1", "node-1", 1)[0]
    t = int(target.removeprefix("node-"))
    return sorted([(t, theirs[1], theirs[2]), (1, own[1], own[2])])


def _approved_ref(live: Live, message: bytes) -> str:
    ref = live.sign_request("k1", message)
    live.approve(ref, "alice", "bob")
    return ref


def test_a_share_for_an_unapproved_request_is_refused(live: Live) -> None:
    message = b"nobody approved this"
    ref = live.sign_request("k1", message)
    live.approve(ref, "alice")  # one approval of two: still pending
    theirs = _commit(live, "node-1", "node-2", 1)[0]
    req = ShareRequest(ref, 0, "k1", 1, _attack_list(live, "node-2", theirs), theirs[0],
                       payload_hash(message))  # fmt: skip
    status, body = _share(live, "node-1", "node-2", req)
    assert status == 403 and "not executable" in body["message"], body


@pytest.mark.parametrize("variant", ["another message", "another version", "altered commitment",
                                     "missing commitment", "unknown commitment id"])
def test_an_approved_request_with_other_content_is_refused(live: Live, variant: str) -> None:
    message = f"approved: {variant}".encode()
    ref = _approved_ref(live, message)
    theirs = _commit(live, "node-1", "node-3", 1)[0]
    clist, cid, digest, version = _attack_list(live, "node-3", theirs), theirs[0], message, 1
    if variant == "another message":
        digest = b"what the attacker wants signed"
    elif variant == "another version":
        version = 2
    elif variant == "altered commitment":
        clist = [(i, hashlib.sha256(h).digest() if i == 3 else h, b) for i, h, b in clist]
    elif variant == "missing commitment":
        clist = [row for row in clist if row[0] != 3] + [(2, theirs[1], theirs[2])]
        clist.sort()
    else:
        cid = cid ^ 1
    req = ShareRequest(ref, 0, "k1", version, clist, cid, payload_hash(digest))
    status, body = _share(live, "node-1", "node-3", req)
    assert status == 403, body
    assert "executable" not in body["message"], body  # refused for what it asked, not timing


def test_a_share_is_over_the_approved_message_only(live: Live) -> None:
    """A member signs the message of its own replica. The attacker races the honest
    leader for an approved request (it must ask before the leader has recorded the
    signature); when it wins, the share it gets verifies for the approved message and
    for no other."""
    gpk = bytes.fromhex(live.key_view("k1")["versions"][0]["group_public_key"])
    for attempt in range(12):
        message = f"approved message {attempt}".encode()
        ref = live.sign_request("k1", message)
        live.approve(ref, "alice")
        leader = live.leader()
        attacker = "node-2" if leader != "node-2" else "node-3"
        theirs = _commit(live, attacker, leader, 1)[0]
        own = _commit(live, attacker, attacker, 1)[0]
        li, ai = int(leader[5:]), int(attacker[5:])
        clist = sorted([(li, theirs[1], theirs[2]), (ai, own[1], own[2])])
        req = ShareRequest(ref, 0, "k1", 1, clist, theirs[0], payload_hash(message))
        digest = _digest(live, ref)
        status, body = asyncio.run(_approve_then_ask(live, ref, digest, leader, attacker, req))
        if status == 403 and "executed" in body.get("message", ""):
            continue  # the honest leader finished first: try again
        assert status == 200, body
        share = ShareResponse.decode(body).share
        pk = _verifying_share(live, li)
        comm = (theirs[1], theirs[2])
        frost.verify_signature_share(li, pk, comm, share, clist, gpk, message)
        with pytest.raises(InvalidSignatureShare):
            frost.verify_signature_share(li, pk, comm, share, clist, gpk, b"another message")
        return
    pytest.fail("the attacker never reached the leader before it finished signing")


async def _approve_then_ask(
    live: Live, ref: str, digest: bytes, leader: str, attacker: str, req: ShareRequest
) -> tuple[int, Any]:
    """Bob's approval (the second), then at once the attacker's share request, on
    connections opened beforehand so that nothing but the request itself is in the way."""
    from node.pki.store import read_private_key as rk

    sig = sign_approval(rk(live.root / "pki/principals/bob/approval.key"), digest)
    ctx_bob = tlsctx.client_context(*live.creds("bob"))
    ctx_node = tlsctx.client_context(*live.creds(attacker))
    base = f"https://{live.api[leader]}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx_bob)) as bob, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx_node)) as node:
        for s in (bob, node):
            async with s.get(base + "/v1/sys/health") as r:
                await r.read()
        async with bob.post(f"{base}/v1/requests/{ref}/approve",
                            json={"request_id": "race", "signature": sig.hex()}) as r:
            assert r.status == 200, await r.text()
        async with node.post(f"{base}/v1/peer/sign/share", data=req.encode()) as r:
            raw = await r.read()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw


def _verifying_share(live: Live, index: int) -> bytes:
    return bytes.fromhex(live.key_view("k1")["versions"][0]["verification_shares"][index - 1])


def _digest(live: Live, ref: str) -> bytes:
    status, r = asyncio.run(live.http("alice", "GET", "node-1", f"/v1/requests/{ref}"))
    assert status == 200
    return bytes.fromhex(r["digest"])


def _post_approval(live: Live, who: str, ref: str, sig: bytes, rid: str) -> tuple[int, dict]:
    return asyncio.run(live.http(who, "POST", "node-1", f"/v1/requests/{ref}/approve",
                                 json_body={"request_id": rid, "signature": sig.hex()}))


def _key(live: Live, who: str):
    return read_private_key(live.root / "pki" / "principals" / who / "approval.key")


def test_forged_replayed_and_cross_request_approvals_are_rejected(live: Live) -> None:
    a = live.sign_request("k1", b"request A")
    b = live.sign_request("k1", b"request B")
    alice = _key(live, "alice")
    # cross-request: alice's genuine approval of A posted for B
    sig_a = sign_approval(alice, _digest(live, a))
    status, body = _post_approval(live, "alice", b, sig_a, "x-cross")
    assert status == 401 and body["error"] == "bad_signature", body
    # forged: bob's approval made with alice's key, posted by bob
    status, body = _post_approval(live, "bob", a, sig_a, "x-forged")
    assert status == 401, body
    # genuine, then replayed under a new request id: counted once
    status, body = _post_approval(live, "alice", a, sig_a, "x-genuine")
    assert status == 200 and body["code"] == "pending", body
    status, body = _post_approval(live, "alice", a, sig_a, "x-replay")
    assert status == 409 and body["error"] == "duplicate_approval", body
    # alice cannot approve in bob's name: a command's author is the caller
    cmd = Approve(request_id="x-as-bob", author="bob", request=a, signature=sig_a)
    status, body = asyncio.run(live.http(
        "alice", "POST", "node-1", "/v1/commands",
        json_body={"command_b64": base64.b64encode(encode_command(cmd)).decode()},
    ))  # fmt: skip
    assert status == 403, body
    # an operator is not an approver
    status, body = _post_approval(live, "ops", a, sig_a, "x-ops")
    assert status == 403, body
    assert live.request(a)["state"] == "pending" and live.request(b)["state"] == "pending"


def test_a_node_cannot_use_the_client_api_to_submit_or_approve(live: Live) -> None:
    ref = live.sign_request("k1", b"node tries")
    sig = sign_approval(_key(live, "alice"), _digest(live, ref))
    for path, body in (
        ("/v1/keys/k1/sign", {"request_id": "n1", "message_b64": "aGk="}),
        (f"/v1/requests/{ref}/approve", {"request_id": "n2", "signature": sig.hex()}),
    ):
        status, answer = asyncio.run(live.http("node-2", "POST", "node-1", path, json_body=body))
        assert status == 403, answer
    assert live.request(ref)["state"] == "pending"
