"""The drill workload: concurrent clients doing quorum-approved signing through the API.

Each signing flow ("operation") is: app1 submits `POST /v1/keys/{key}/sign` with a
request id; alice and bob, concurrently, each read the request, recompute its
digest the way `custody approve` does and post their approval; app1 then
long-polls `GET /v1/requests/{ref}` until it is executed or failed. Every client
call is recorded as an `Event` (call time, return time or None for an unknown
outcome, output); the flow as an `Op` (invoke, complete, ok / failed / unknown).

A write that times out or meets no leader is retried with the same request id
until the operation's deadline: the cluster applies it at most once, so the last
answer is the outcome of the one logical call; if none came, it is unknown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

# The approver's own digest computation, as `custody approve` does it (client-side
# CLI code; it checks the node's digest instead of trusting it).
from node.cli.requests import recompute_digest
from node.client.http import ApiError, Client, Unreachable
from node.client.profile import Profile

RETRYABLE = frozenset({502, 503, 504})
APPROVERS = ("alice", "bob")
REQUESTER = "app1"


@dataclass(slots=True)
class Event:
    """One client call on one request."""

    worker: int
    ref: str
    kind: str  # submit | approve | read
    who: str
    call: float  # seconds since the drill's start
    ret: float | None  # None: no answer (unknown outcome)
    status: str  # ok | failed | unknown
    output: Any = None  # submit/approve: the outcome code; read: [state, approvals, sig]
    error: str = ""


@dataclass(slots=True)
class Op:
    """One whole signing flow."""

    worker: int
    ref: str
    message_hex: str
    invoke: float
    complete: float
    outcome: str  # ok | failed | unknown
    signature: str = ""
    detail: str = ""


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def to_json(self) -> dict[str, Any]:
        return {"events": [asdict(e) for e in self.events], "ops": [asdict(o) for o in self.ops]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> History:
        h = cls()
        h.events = [Event(**e) for e in doc["events"]]
        h.ops = [Op(**o) for o in doc["ops"]]
        return h


class _Failed(Exception):
    pass


class _Unknown(Exception):
    pass


class Workload:
    def __init__(self, profiles: dict[str, Profile], key_id: str, seed: int, clients: int,
                 op_timeout: float, history: History, progress: Any = None) -> None:  # fmt: skip
        self.profiles = profiles
        self.key_id = key_id
        self.seed = seed
        self.clients = clients
        self.op_timeout = op_timeout
        self.h = history
        self.stop = asyncio.Event()
        self.progress = progress
        self.keys: dict[str, Ed25519PrivateKey] = {}
        for who in APPROVERS:
            path = profiles[who].approval_key
            assert path is not None, f"{who} has no approval key"
            key = load_pem_private_key(path.read_bytes(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
            self.keys[who] = key

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            # One Client per principal and worker: each keeps its own failover preference.
            cs = []
            for _ in range(self.clients):
                cs.append({who: await stack.enter_async_context(
                    Client(self.profiles[who], timeout=4.0, attempts=1))
                    for who in (REQUESTER, *APPROVERS)})  # fmt: skip
            await asyncio.gather(*(self._worker(i, c) for i, c in enumerate(cs)))

    async def _worker(self, i: int, c: dict[str, Client]) -> None:
        rng = random.Random(f"{self.seed}/worker/{i}")
        n = 0
        while not self.stop.is_set():
            n += 1
            rid = f"drill-{self.seed}-{i}-{n:05d}-{rng.getrandbits(32):08x}"
            msg = f"drill seed {self.seed} worker {i} op {n} ".encode() + rng.randbytes(16)
            op = await self._flow(i, c, rid, msg)
            self.h.ops.append(op)
            if self.progress:
                self.progress(op)
            if op.outcome != "ok":
                await asyncio.sleep(0.2)  # do not spin while the cluster is down

    # ------------------------------------------------------------ one flow

    async def _flow(self, i: int, c: dict[str, Client], rid: str, msg: bytes) -> Op:
        ref = f"{REQUESTER}:{rid}"
        invoke = self.h.now()
        deadline = time.monotonic() + self.op_timeout

        def op(outcome: str, sig: str = "", detail: str = "") -> Op:
            return Op(i, ref, msg.hex(), invoke, self.h.now(), outcome, sig, detail)

        try:
            await self._write(i, ref, "submit", REQUESTER, c[REQUESTER],
                              f"/v1/keys/{self.key_id}/sign",
                              lambda: {"request_id": rid,
                                       "message_b64": base64.b64encode(msg).decode()},
                              deadline)  # fmt: skip
            await asyncio.gather(*(self._approve(i, c[w], w, ref, rid, deadline)
                                   for w in APPROVERS))  # fmt: skip
            while True:
                left = deadline - time.monotonic()
                if left <= 0.5:
                    raise _Unknown("not executed before the operation deadline")
                view = await self._read(i, ref, REQUESTER, c[REQUESTER], deadline,
                                        wait=int(min(2, max(1, left - 1.5))))  # fmt: skip
                if view is None:
                    continue
                if view["state"] == "executed":
                    return op("ok", view.get("signature") or "")
                if view["state"] == "failed":
                    return op("failed", detail=f"request failed: {view.get('failure')}")
        except _Failed as exc:
            return op("failed", detail=str(exc))
        except _Unknown as exc:
            return op("unknown", detail=str(exc))

    async def _approve(self, i: int, c: Client, who: str, ref: str, rid: str,
                       deadline: float) -> None:  # fmt: skip
        view = None
        while view is None:
            view = await self._read(i, ref, who, c, deadline)
        digest = recompute_digest(view)
        if digest.hex() != view["digest"]:
            raise _Failed(f"{who}: the node's digest differs from the recomputed one")
        sig = self.keys[who].sign(digest).hex()
        await self._write(i, ref, "approve", who, c, f"/v1/requests/{ref}/approve",
                          lambda: {"request_id": f"ap-{who}-{rid}", "signature": sig},
                          deadline)  # fmt: skip

    async def _write(self, i: int, ref: str, kind: str, who: str, c: Client, path: str,
                     body: Any, deadline: float) -> str:  # fmt: skip
        call = self.h.now()
        last = ""
        while time.monotonic() < deadline:
            try:
                out = await asyncio.wait_for(
                    c.post(path, body()), max(0.5, deadline - time.monotonic())
                )
            except ApiError as exc:
                if exc.status in RETRYABLE:
                    last = f"{exc.status} {exc.code}"
                    await asyncio.sleep(0.2)
                    continue
                self.h.events.append(Event(i, ref, kind, who, call, self.h.now(), "failed",
                                           f"rejected:{exc.code}", str(exc)))  # fmt: skip
                raise _Failed(f"{kind} by {who}: {exc.status} {exc}") from None
            except (Unreachable, OSError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
                continue
            code = str(out.get("code", ""))
            if not out.get("ok", True):
                self.h.events.append(Event(i, ref, kind, who, call, self.h.now(), "failed",
                                           f"rejected:{code}", str(out)[:200]))  # fmt: skip
                raise _Failed(f"{kind} by {who} refused: {code}")
            self.h.events.append(Event(i, ref, kind, who, call, self.h.now(), "ok", code))
            return code
        self.h.events.append(Event(i, ref, kind, who, call, None, "unknown", None, last))
        raise _Unknown(f"{kind} by {who}: no answer before the deadline ({last})")

    async def _read(self, i: int, ref: str, who: str, c: Client, deadline: float,
                    wait: int = 0) -> dict[str, Any] | None:  # fmt: skip
        """One linearizable read of the request (None: no answer this time, retry)."""
        if time.monotonic() >= deadline:
            raise _Unknown(f"read by {who}: deadline passed")
        call = self.h.now()
        params = {"wait": str(wait)} if wait else {}
        try:
            view = await asyncio.wait_for(
                c.call("GET", f"/v1/requests/{ref}", params=params or None),
                max(0.5, deadline - time.monotonic()),  # let the client fail over
            )
        except ApiError as exc:
            if exc.status == 404:
                self.h.events.append(Event(i, ref, "read", who, call, self.h.now(), "ok",
                                           ["absent", [], None]))  # fmt: skip
                await asyncio.sleep(0.1)
                return None
            await asyncio.sleep(0.2)
            return None
        except (Unreachable, OSError, TimeoutError):
            await asyncio.sleep(0.2)
            return None
        self.h.events.append(Event(i, ref, "read", who, call, self.h.now(), "ok",
                                   [view["state"], sorted(view.get("approvals", [])),
                                    view.get("signature")]))  # fmt: skip
        return view
