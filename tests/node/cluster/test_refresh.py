"""Proactive refresh on a running cluster (real processes, SoftHSM2 tokens, mTLS):
under a concurrent signing workload no signature fails or is wrong, group keys stay,
verification shares and generations move on, old generations are erased, and a crash
of a member at each step of a run either completes or leaves the old generation in
use, never a mix."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.node.cluster.harness import (
    QUIET_SCHEDULE,
    Live,
    running,
    token_shares,
    wait_dead,
    wait_for,
)

pytestmark = pytest.mark.slow

MEMBERS = ("node-1", "node-2", "node-3")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with running(tmp_path_factory.mktemp("refresh") / "c", schedule=QUIET_SCHEDULE,
                 more_keys=('k2',)) as c:  # fmt: skip
        yield c


def refresh_state(live: Live) -> dict[str, Any]:
    return json.loads(live.cli("refresh", "status", "--json", who="audit"))


def versions(live: Live) -> dict[str, tuple[str, tuple[str, ...]]]:
    out = {}
    for k in ("k1", "k2"):
        v = next(x for x in live.key_view(k)["versions"] if x["version"] == 1)
        out[k] = (v["group_public_key"], tuple(v["verification_shares"]))
    return out


class Workload:
    """Approved signing requests in a background thread, over raw HTTPS: every request's
    outcome and signature are kept for the test to check."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.results: list[tuple[bytes, dict[str, Any]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from node.client.profile import load_profile
        from node.pki.store import read_private_key
        from node.state import sign_approval

        keys = {a: read_private_key(load_profile(self.live.profile(a)).approval_key)
                for a in ("alice", "bob")}  # fmt: skip
        n = 0
        while not self.stop.is_set():
            n += 1
            msg = f"during refresh {n} {time.time_ns()}".encode()
            node = MEMBERS[n % 3]
            try:
                status, out = await self.live.http("app1", "POST", node, "/v1/keys/k1/sign",
                    json_body={"request_id": f"w-{n}-{time.time_ns()}",
                               "message_b64": base64.b64encode(msg).decode()})  # fmt: skip
                if status != 200:
                    self.errors.append(f"submit {status} {out}")
                    continue
                ref = out["request"]
                _, req = await self.live.http("audit", "GET", node, f"/v1/requests/{ref}")
                for a, key in keys.items():
                    sig = sign_approval(key, bytes.fromhex(req["digest"]))
                    await self.live.http(a, "POST", node, f"/v1/requests/{ref}/approve",
                                         json_body={"request_id": f"ap-{a}-{n}-{time.time_ns()}",
                                                    "signature": sig.hex()})  # fmt: skip
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    _, req = await self.live.http("audit", "GET", node, f"/v1/requests/{ref}")
                    if req["state"] in ("executed", "failed"):
                        break
                    await asyncio.sleep(0.05)
                self.results.append((msg, req))
            except Exception as exc:  # a node restarting: counted, the test decides
                self.errors.append(f"{exc.__class__.__name__}: {exc}")

    def __enter__(self) -> Workload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def check_signatures(live: Live, results: list[tuple[bytes, dict[str, Any]]]) -> None:
    key = live.group_key("k1")
    assert results, "the workload made no request"
    for msg, req in results:
        assert req["state"] == "executed", req
        key.verify(bytes.fromhex(req["signature"]), msg)


def test_refresh_under_signing_changes_shares_not_keys(live: Live) -> None:
    before = versions(live)
    with Workload(live) as w:
        time.sleep(1.0)
        out = json.loads(live.cli("refresh", "start", "--wait", "--json", who="ops"))
        time.sleep(1.0)
    assert out["refresh"]["state"] == "done", out
    assert out["refresh"]["done"] == out["refresh"]["total"] >= 3
    assert all(g == 1 for g in out["generations"].values()), out
    after = versions(live)
    for k in before:
        assert after[k][0] == before[k][0]  # same group key
        assert set(after[k][1]).isdisjoint(before[k][1])  # every verification share moved
    check_signatures(live, w.results)
    assert not w.errors, w.errors[:3]
    # and the new generation signs with every pair of members
    for down in MEMBERS:
        live.kill(down)
        try:
            sig = live.sign("k2", f"without {down}".encode(), timeout=60)
            live.group_key("k2").verify(sig, f"without {down}".encode())
        finally:
            live.up()


def shares_in(live: Live, node: str) -> list[tuple[str, int, int]]:
    return token_shares(live.root, node)


def test_old_generations_are_erased(live: Live) -> None:
    gens = refresh_state(live)["generations"]
    for node in MEMBERS:
        held = wait_for(f"{node} to erase old generations",
                        lambda n=node: (h := shares_in(live, n)) and all(
                            g == gens[f"{k}/{v}"] for k, v, g in h) and h)  # fmt: skip
        assert len(held) == len(gens)


@pytest.mark.parametrize(
    ("point", "node"),
    [
        ("refresh.posted", "node-1"),
        ("refresh.exchange", "node-2"),
        ("refresh.stored", "node-3"),
        ("refresh.recorded", "node-1"),
    ],
)
def test_a_crash_at_each_step_of_a_refresh(live: Live, point: str, node: str) -> None:
    from node.server.faults import ENV

    gens_before = refresh_state(live)["generations"]
    before = versions(live)
    live.kill(node)
    os.environ[ENV] = point
    try:
        live.up()
    finally:
        del os.environ[ENV]
    pid = live.pid(node)
    assert pid is not None
    live.cli("refresh", "start", who="ops")
    wait_dead(pid)
    assert f"fault point {point} reached" in (live.root / node / "node.log").read_text()
    # While the crashed member is down the refresh cannot commit (it needs every
    # member): the old generation is the one in use, and it still signs.
    state = refresh_state(live)
    if state["refresh"]["state"] == "running" and point != "refresh.recorded":
        assert state["generations"] == gens_before
        sig = live.sign("k1", f"during {point}".encode(), timeout=60)
        live.group_key("k1").verify(sig, f"during {point}".encode())
    live.up()
    done = wait_for("the refresh to finish after the restart",
                    lambda: (s := refresh_state(live))["refresh"]["state"] != "running" and s)
    assert done["refresh"]["state"] == "done", done
    assert all(g == gens_before[k] + 1 for k, g in done["generations"].items()), done
    after = versions(live)
    assert all(after[k][0] == before[k][0] for k in before)
    for down in MEMBERS:  # every pair signs: nobody kept a share of another generation
        if down == node:
            continue
        live.kill(down)
        try:
            sig = live.sign("k2", f"{point} without {down}".encode(), timeout=60)
            live.group_key("k2").verify(sig, f"{point} without {down}".encode())
        finally:
            live.up()
