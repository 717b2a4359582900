"""`GET /v1/events` and `custody events` on a running cluster (docs/events.md).

One 3-node cluster for the module (policy p1 with requester app1, key k1 active);
the tests run in file order and build on each other: k1 is rotated (v2) and its
v1 revoked while a follower listens, a key k2 under a policy of app2 is made for
the client filter, then the stream limit, and last the CLI's failover with a node
killed. Epochs move only when asked.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node import tlsctx
from node.server.routes_events import EVENT_TYPES, MAX_STREAMS
from tests.node.cluster.harness import Live, running

pytestmark = pytest.mark.slow

Event = tuple[int, str, dict[str, Any]]  # (id, event type, data)
SECRET_FIELDS = {"message", "message_b64", "payload", "payload_b64", "signature", "signatures",
                 "ciphertext", "approvals", "package", "share", "result"}  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("events") / "c"
    schedule = {"epoch_min_interval_s": 0.0, "epoch_interval_s": 0.0}
    with running(root, schedule=schedule) as c:
        yield c


def session(live: Live, who: str, **kw: Any) -> aiohttp.ClientSession:
    ctx = tlsctx.client_context(*live.creds(who))
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30), **kw,
    )  # fmt: skip


async def read_events(
    live: Live, who: str, node: str = "node-1", query: str = "follow=false",
    headers: dict[str, str] | None = None, until: Callable[[list[Event]], bool] | None = None,
    timeout: float = 30.0, raw: list[bytes] | None = None,
) -> list[Event]:  # fmt: skip
    """Events of one stream: to its end (`follow=false`) or until `until(events)`."""
    events: list[Event] = []
    async with session(live, who) as s:
        url = f"https://{live.api[node]}/v1/events?{query}"
        async with s.get(url, headers=headers or {}) as r:
            assert r.status == 200, (r.status, await r.text())
            assert r.headers["Content-Type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async with asyncio.timeout(timeout):
                async for line_b in r.content:
                    if raw is not None:
                        raw.append(line_b)
                    line = line_b.decode().rstrip("\n")
                    if line == ": end":
                        break
                    if line:
                        if not line.startswith(":"):
                            name, _, value = line.partition(": ")
                            fields[name] = value
                        continue
                    if "id" in fields:
                        data = json.loads(fields["data"])
                        events.append((int(fields["id"]), fields["event"], data))
                        if until is not None and until(events):
                            break
                    fields = {}
    return events


def replay(live: Live, who: str = "audit", **kw: Any) -> list[Event]:
    return asyncio.run(read_events(live, who, **kw))


def of_key(events: list[Event], key_id: str) -> list[tuple[str, int | None]]:
    return [(t, d["version"]) for _, t, d in events if d.get("key_id") == key_id]


def check_well_formed(events: list[Event]) -> None:
    ids = [i for i, _, _ in events]
    assert ids == sorted(set(ids)), "ids strictly increase"
    for i, t, d in events:
        assert d["seq"] == i and d["type"] == t and t in EVENT_TYPES
        assert not SECRET_FIELDS & set(d), d


def advance_until(live: Live, key_id: str, primary: int) -> None:
    deadline = time.monotonic() + 20
    while live.key_view(key_id)["primary"] != primary:
        assert time.monotonic() < deadline, "the version did not activate"
        live.cli("epoch", "advance", who="ops")


# ---------------------------------------------------------------- replay


def test_replay_from_zero_shows_the_key_creation(live: Live) -> None:
    events = replay(live, query="follow=false&after=-1")
    check_well_formed(events)
    assert of_key(events, "k1") == [
        ("key.requested", None), ("version.pending", 1), ("version.published", 1),
    ], of_key(events, "k1")  # fmt: skip
    published = next(d for _, t, d in events
                     if t == "version.published" and d["key_id"] == "k1")
    v1 = live.key_view("k1")["versions"][0]
    assert published["group_public_key"] == v1["group_public_key"]
    assert published["activation_epoch"] == v1["activation_epoch"]
    requested = next(d for _, t, d in events
                     if t == "key.requested" and d["key_id"] == "k1")
    assert (requested["policy_id"], requested["purpose"]) == ("p1", "sign")
    assert requested["author"] == "ops"
    epochs = [d for _, t, d in events if t == "epoch.advanced"]
    assert {"key_id": "k1", "version": 1} in epochs[-1]["activated"]
    assert any(t == "policy.changed" for _, t, _ in events)  # the harness's policy p1
    # Same from every node (replicas hold the same chain).
    assert replay(live, node="node-3", query="follow=false") == events


# ---------------------------------------------------------------- live


def test_live_follower_sees_rotation_then_revocation(live: Live) -> None:
    head = replay(live)[-1][0]
    got: list[Event] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            got.extend(asyncio.run(read_events(
                live, "audit", node="node-2", query=f"after={head}", timeout=60,
                until=lambda evs: any(t == "version.revoked" for _, t, _ in evs),
            )))  # fmt: skip
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)  # the follower is connected and waiting
    ref = live.submit_ref("keys", "rotate", "k1", who="ops")
    live.approve(ref, "alice", "bob")
    assert live.wait_request(ref, timeout=30)["state"] == "executed"
    advance_until(live, "k1", 2)
    revoke = live.submit_ref("keys", "revoke", "k1", "--version", "1", who="ops")
    live.approve(revoke, "alice", "bob")
    follower.join(30)
    assert not follower.is_alive() and not errors, errors
    check_well_formed(got)
    assert got[0][0] > head
    assert of_key(got, "k1") == [
        ("rotation.requested", None), ("version.pending", 2), ("version.published", 2),
        ("revocation.requested", 1), ("version.revoked", 1),
    ], of_key(got, "k1")  # fmt: skip
    pending = next(d for _, t, d in got if t == "version.pending")
    assert (pending["request"], pending["trigger"], pending["request_kind"]) == (
        ref, "approved", "rotate")  # fmt: skip
    activation = [d for _, t, d in got if t == "epoch.advanced" and d["activated"]]
    assert len(activation) == 1
    assert activation[0]["activated"] == [{"key_id": "k1", "version": 2}]
    assert activation[0]["retired"] == [{"key_id": "k1", "version": 1}]
    order = [t for _, t, d in got if t in ("version.published", "epoch.advanced",
                                           "version.revoked")]  # fmt: skip
    assert order.index("version.published") < order.index("version.revoked")
    revoked = next(d for _, t, d in got if t == "version.revoked")
    assert revoked["request"] == revoke and revoked["epoch"] == activation[0]["epoch"]


def test_resume_gives_exactly_the_events_after(live: Live) -> None:
    everything = replay(live)
    assert len(everything) > 8
    for cut in (everything[3][0], everything[-4][0], everything[-4][0] + 1):
        want = [e for e in everything if e[0] > cut]
        by_header = replay(live, node="node-2", query="follow=false",
                           headers={"Last-Event-ID": str(cut)})  # fmt: skip
        by_query = replay(live, node="node-3", query=f"follow=false&after={cut}")
        assert by_header == want and by_query == want
    # The header wins over the query (an EventSource reconnects with its old URL).
    cut = everything[-2][0]
    resumed = replay(live, query="follow=false&after=0", headers={"Last-Event-ID": str(cut)})
    assert resumed == everything[-1:]
    # Resuming a follower: disconnect after some events, reconnect with the last id.
    first = replay(live, query="after=-1", until=lambda evs: len(evs) == 5)
    rest = replay(live, node="node-3", headers={"Last-Event-ID": str(first[-1][0])})
    assert first + rest == everything
    # Filters.
    only = replay(live, query="follow=false&types=version.revoked,version.pending&key=k1")
    assert [(t, d["version"]) for _, t, d in only] == [
        ("version.pending", 1), ("version.pending", 2), ("version.revoked", 1)]  # fmt: skip
    status, body = asyncio.run(live.http("audit", "GET", "node-1", "/v1/events?types=nope"))
    assert status == 400 and body["error"] == "bad_request"
    status, body = asyncio.run(live.http("audit", "GET", "node-1", "/v1/events?after=x"))
    assert status == 400


def test_no_event_carries_a_message_or_signature(live: Live) -> None:
    message = b"events must not show this message \x01\x02"
    sig = live.sign("k1", message)  # on v2, the primary
    raw: list[bytes] = []
    events = replay(live, raw=raw)
    check_well_formed(events)
    text = b"".join(raw)
    import base64

    for secret in (message, sig):
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in text
    assert not any(d.get("kind") in ("request_sign", "record_result") for _, _, d in events)


# ---------------------------------------------------------------- clients


def test_a_client_sees_only_its_keys(live: Live) -> None:
    live.policy("p2", requesters="app2")
    live.key("k2", "p2")
    full = replay(live)
    assert of_key(full, "k2")[:3] == [
        ("key.requested", None), ("version.pending", 1), ("version.published", 1)]  # fmt: skip
    app1 = replay(live, who="app1")
    app2 = replay(live, who="app2", node="node-2")
    check_well_formed(app1)
    check_well_formed(app2)
    assert of_key(app1, "k1") == of_key(full, "k1") and not of_key(app1, "k2")
    assert of_key(app2, "k2") == of_key(full, "k2") and not of_key(app2, "k1")
    for events in (app1, app2):
        assert not [t for _, t, _ in events if t.startswith("governance.")]
        assert all("governance_changes" not in d for _, t, d in events if t == "epoch.advanced")
    k2_activation = next(d for _, t, d in full if t == "epoch.advanced"
                         and {"key_id": "k2", "version": 1} in d["activated"])  # fmt: skip
    seen_by_app1 = next(d for i, t, d in app1 if i == k2_activation["seq"])
    assert seen_by_app1["activated"] == []  # the epoch, without app2's key
    # The same filter on a live stream: app2 follows, app1's key changes, then app2's.
    head = full[-1][0]
    got: list[Event] = []
    follower = threading.Thread(target=lambda: got.extend(asyncio.run(read_events(
        live, "app2", node="node-3", query=f"after={head}", timeout=30,
        until=lambda evs: any(t == "revocation.requested" for _, t, _ in evs),
    ))), daemon=True)  # fmt: skip
    follower.start()
    time.sleep(0.5)
    live.submit_ref("keys", "rotate", "k1", who="ops")  # app1's key: not shown to app2
    live.submit_ref("keys", "revoke", "k2", "--version", "1", who="ops")
    follower.join(30)
    assert [(t, d["key_id"]) for _, t, d in got] == [("revocation.requested", "k2")]


# ---------------------------------------------------------------- limits


def test_the_stream_limit_answers_503(live: Live) -> None:
    async def main() -> None:
        url = f"https://{live.api['node-3']}/v1/events?after=-1"
        async with session(live, "audit") as s:
            # Streams the earlier tests dropped free their slots within about a second.
            opened: list[aiohttp.ClientResponse] = []
            deadline = time.monotonic() + 10
            while len(opened) < MAX_STREAMS:
                more = MAX_STREAMS - len(opened)
                for r in await asyncio.gather(*(s.get(url) for _ in range(more))):
                    if r.status == 200:
                        opened.append(r)
                    else:
                        assert r.status == 503, r.status
                        r.close()
                assert time.monotonic() < deadline, f"only {len(opened)} streams"
                await asyncio.sleep(0.3 if len(opened) < MAX_STREAMS else 0)
            try:
                async with s.get(url) as extra:
                    assert extra.status == 503
                    body = await extra.json()
                    assert body["error"] == "too_many_streams"
                    assert extra.headers["Retry-After"]
                # Another node has its own budget.
                other = f"https://{live.api['node-2']}/v1/events?follow=false"
                async with s.get(other) as r:
                    assert r.status == 200
                    await r.read()
            finally:
                for r in opened:
                    r.close()
        # Closed streams free their slots within about a second.
        deadline = time.monotonic() + 10
        while True:
            async with session(live, "audit") as s, s.get(url + "&follow=false") as r:
                if r.status == 200:
                    await r.read()
                    return
            assert time.monotonic() < deadline, "slots were not freed"
            await asyncio.sleep(0.3)

    asyncio.run(main())


# ---------------------------------------------------------------- CLI


def test_cli_prints_events_and_resumes(live: Live) -> None:
    full = replay(live)
    cut = full[-6][0]
    lines = live.cli("events", "--after", str(cut), "--json", who="audit").splitlines()
    assert [json.loads(x) for x in lines] == [d for i, _, d in full if i > cut]
    human = live.cli("events", "--key", "k1", who="app1")
    assert "version.revoked  k1 v1" in human and "k2" not in human
    limited = live.cli("events", "--follow", "--limit", "2", "--after", str(cut), "--json",
                       who="audit").splitlines()  # fmt: skip
    assert [json.loads(x)["seq"] for x in limited] == [i for i, _, _ in full if i > cut][:2]
    # The profile's first node stops: its open streams end at once (no shutdown wait),
    # and the CLI goes on with the next nodes.
    first = next(iter(sorted(live.api)))
    ended: list[Event] = []
    follower = threading.Thread(target=lambda: ended.extend(asyncio.run(read_events(
        live, "audit", node=first, query=f"after={cut}", timeout=30,
    ))), daemon=True)  # fmt: skip
    follower.start()
    time.sleep(0.5)
    started = time.monotonic()
    live.kill(first, signal.SIGTERM)
    follower.join(10)
    assert not follower.is_alive() and time.monotonic() - started < 5
    assert [i for i, _, _ in ended] == [i for i, _, _ in full if i > cut]
    lines = live.cli("events", "--after", str(cut), "--json", who="audit").splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [i for i, _, _ in full if i > cut]
