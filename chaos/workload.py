"""The drill workload: concurrent clients doing quorum-approved signing (and, as the
scenario's `workload.mix` asks, envelope decryption) through the API, and an operator
rotating / revoking key versions now and then (`workload.rotate_every`).

Each signing flow ("operation") is: app1 submits `POST /v1/keys/{key}/sign` with a
request id; alice and bob, concurrently, each read the request, recompute its
digest the way `custody approve` does and post their approval; app1 then
long-polls `GET /v1/requests/{ref}` until it is executed or failed. Every client
call is recorded as an `Event` (call time, return time or None for an unknown
outcome, output); the flow as an `Op` (invoke, complete, ok / failed / unknown).

An envelope flow ("decrypt"): app1 reads the encrypt key k2, encrypts a fresh
plaintext locally to its primary version's group public key (`custody envelope
encrypt`'s library call), submits `POST /v1/keys/k2/decrypt` for the wrapped data key,
alice and bob approve as above, then app1 gathers t verified partial decryptions
(`recover_dek`) and opens the payload; the op records the plaintext it encrypted and
the bytes it got back.

A lifecycle flow ("rotate" / "revoke"): ops runs `custody keys rotate KEY` (or
`custody keys revoke KEY --version N` for the version a rotation replaced) with a fixed
`--request-id`, retried while no leader answers (the CLI signs the command with ops'
key and posts it to `POST /v1/commands`); alice and bob approve, ops waits for it to
be executed and (rotation) advances the epoch until the new version is the primary.

A write that times out or meets no leader is retried with the same request id
until the operation's deadline: the cluster applies it at most once, so the last
answer is the outcome of the one logical call; if none came, it is unknown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import node.client.envelope as ev

# The approver's own digest computation, as `custody approve` does it (client-side
# CLI code; it checks the node's digest instead of trusting it).
from node.cli.requests import recompute_digest
from node.client.http import ApiError, Client, Unreachable
from node.client.profile import Profile

RETRYABLE = frozenset({502, 503, 504})
APPROVERS = ("alice", "bob")
REQUESTER = "app1"
OPERATOR = "ops"
ENVELOPE_CONTEXT = "chaos/drill"
OP_KINDS = ("sign", "decrypt")  # what `workload.mix` weighs


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
    kind: str = "sign"  # sign | decrypt | rotate | revoke
    key_id: str = ""
    # decrypt: the version the file was encrypted to; rotate: the new version; revoke:
    # the version revoked
    version: int = 0
    result_hex: str = ""  # decrypt: what the payload opened to ("" if it did not open)


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
                 op_timeout: float, history: History, progress: Any = None, *,
                 mix: dict[str, int] | None = None, enc_key: str = "",
                 rotate_every: float | None = None, rotate_key: str = "",
                 revoke: bool = False) -> None:  # fmt: skip
        self.profiles = profiles
        self.key_id = key_id
        self.seed = seed
        self.clients = clients
        self.op_timeout = op_timeout
        self.h = history
        self.stop = asyncio.Event()
        self.progress = progress
        self.mix = {k: w for k, w in (mix or {"sign": 1}).items() if w > 0}
        self.enc_key = enc_key
        self.rotate_every = rotate_every
        self.rotate_key = rotate_key or key_id
        self.revoke = revoke
        if "decrypt" in self.mix and not enc_key:
            raise ValueError("a decrypt mix needs an encrypt key")
        # `hold()` clears `go`: no new flow starts until `release()`; `busy` counts the
        # flows in flight (the lose-cluster action holds the clients around its backups).
        self.go = asyncio.Event()
        self.go.set()
        self.busy = 0
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
            tasks = [self._worker(i, c) for i, c in enumerate(cs)]
            if self.rotate_every:
                lc = {who: await stack.enter_async_context(
                    Client(self.profiles[who], timeout=4.0, attempts=1))
                    for who in (OPERATOR, *APPROVERS)}  # fmt: skip
                tasks.append(self._lifecycle(self.clients, lc))
            await asyncio.gather(*tasks)

    async def hold(self, timeout: float) -> bool:
        """Let no new flow start and wait until none is in flight (True), or `timeout`
        seconds (False: some still are)."""
        self.go.clear()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.busy == 0

    def release(self) -> None:
        self.go.set()

    async def _held(self) -> bool:
        """While held: wait for `release()` (or the stop); True if it was held."""
        if self.go.is_set():
            return False
        while not self.go.is_set() and not self.stop.is_set():
            await asyncio.sleep(0.02)
        return True

    def _record(self, op: Op) -> None:
        self.h.ops.append(op)
        if self.progress:
            self.progress(op)

    async def _worker(self, i: int, c: dict[str, Client]) -> None:
        rng = random.Random(f"{self.seed}/worker/{i}")
        kinds, weights = list(self.mix), list(self.mix.values())
        n = 0
        while not self.stop.is_set():
            if await self._held():
                continue
            n += 1
            kind = kinds[0] if len(kinds) == 1 else rng.choices(kinds, weights)[0]
            tag = "drill" if kind == "sign" else "dec"
            rid = f"{tag}-{self.seed}-{i}-{n:05d}-{rng.getrandbits(32):08x}"
            msg = f"drill seed {self.seed} worker {i} op {n} ".encode() + rng.randbytes(16)
            self.busy += 1
            try:
                if kind == "sign":
                    op = await self._flow(i, c, rid, msg)
                else:
                    op = await self._decrypt_flow(i, c, rid, msg)
            except Exception as exc:  # a drill-side bug must not end the whole workload
                op = Op(i, f"{REQUESTER}:{rid}", msg.hex(), self.h.now(), self.h.now(),
                        "unknown", detail=f"workload error: {type(exc).__name__}: {exc}",
                        kind=kind)  # fmt: skip
            finally:
                self.busy -= 1
            self._record(op)
            if op.outcome != "ok":
                await asyncio.sleep(0.2)  # do not spin while the cluster is down

    # ------------------------------------------------------------ one flow

    async def _flow(self, i: int, c: dict[str, Client], rid: str, msg: bytes) -> Op:
        ref = f"{REQUESTER}:{rid}"
        invoke = self.h.now()
        deadline = time.monotonic() + self.op_timeout

        def op(outcome: str, sig: str = "", detail: str = "") -> Op:
            return Op(i, ref, msg.hex(), invoke, self.h.now(), outcome, sig, detail,
                      "sign", self.key_id)  # fmt: skip

        try:
            await self._write(i, ref, "submit", REQUESTER, c[REQUESTER],
                              f"/v1/keys/{self.key_id}/sign",
                              lambda: {"request_id": rid,
                                       "message_b64": base64.b64encode(msg).decode()},
                              deadline)  # fmt: skip
            await asyncio.gather(*(self._approve(i, c[w], w, ref, rid, deadline)
                                   for w in APPROVERS))  # fmt: skip
            view = await self._until_done(i, ref, REQUESTER, c[REQUESTER], deadline)
            if view["state"] == "executed":
                return op("ok", view.get("signature") or "")
            return op("failed", detail=f"request failed: {view.get('failure')}")
        except _Failed as exc:
            return op("failed", detail=str(exc))
        except _Unknown as exc:
            return op("unknown", detail=str(exc))

    async def _until_done(self, i: int, ref: str, who: str, c: Client,
                          deadline: float) -> dict[str, Any]:  # fmt: skip
        """Long-poll the request until it is executed or failed (its view)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0.5:
                raise _Unknown("not executed before the operation deadline")
            view = await self._read(i, ref, who, c, deadline,
                                    wait=int(min(2, max(1, left - 1.5))))  # fmt: skip
            if view is not None and view["state"] in ("executed", "failed"):
                return view

    async def _get_key(self, c: Client, key_id: str, deadline: float) -> dict[str, Any]:
        """A linearizable read of a key that rides out elections (_Failed at the deadline:
        nothing was written yet)."""
        last = ""
        while time.monotonic() < deadline:
            try:
                return dict(await asyncio.wait_for(c.get(f"/v1/keys/{key_id}"),
                                                   max(0.5, deadline - time.monotonic())))
            except (ApiError, Unreachable, OSError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
        raise _Failed(f"key {key_id} not readable before the deadline ({last})")

    async def _decrypt_flow(self, i: int, c: dict[str, Client], rid: str,
                            plaintext: bytes) -> Op:  # fmt: skip
        """Encrypt `plaintext` locally to k2's primary version, then an approved decrypt
        request and t verified partials; the op keeps what the payload opened to."""
        ref = f"{REQUESTER}:{rid}"
        invoke = self.h.now()
        deadline = time.monotonic() + self.op_timeout
        version = 0
        prof = self.profiles[REQUESTER]

        def op(outcome: str, result: str = "", detail: str = "") -> Op:
            return Op(i, ref, plaintext.hex(), invoke, self.h.now(), outcome, "", detail,
                      "decrypt", self.enc_key, version, result)  # fmt: skip

        try:
            key = await self._get_key(c[REQUESTER], self.enc_key, deadline)
            try:
                v = ev.primary_version(key)
            except ev.EnvelopeError as exc:
                raise _Failed(str(exc)) from None
            version = int(v["version"])
            env = ev.parse(ev.encrypt_file(bytes.fromhex(v["group_public_key"]), prof.cluster_id,
                                           self.enc_key, version, ENVELOPE_CONTEXT, plaintext,
                                           os.urandom))  # fmt: skip
            wrapped = base64.b64encode(env.wrapped).decode()
            await self._write(i, ref, "submit", REQUESTER, c[REQUESTER],
                              f"/v1/keys/{self.enc_key}/decrypt",
                              lambda: {"request_id": rid, "version": version,
                                       "context": ENVELOPE_CONTEXT, "ciphertext_b64": wrapped},
                              deadline)  # fmt: skip
            await asyncio.gather(*(self._approve(i, c[w], w, ref, rid, deadline)
                                   for w in APPROVERS))  # fmt: skip
            last = ""
            while True:
                left = deadline - time.monotonic()
                if left <= 0.5:
                    raise _Unknown(f"no plaintext before the operation deadline ({last})")
                try:
                    dek = await asyncio.wait_for(
                        ev.recover_dek(c[REQUESTER], prof, env, ENVELOPE_CONTEXT, ref,
                                       min(2.0, left - 0.5)), left)  # fmt: skip
                except ev.EnvelopeError as exc:
                    if " is failed" in str(exc):
                        return op("failed", detail=str(exc)[:300])
                    last = str(exc)[:300]
                    await asyncio.sleep(0.2)
                    continue
                except (ApiError, Unreachable, OSError, TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {str(exc)[:200]}"
                    await asyncio.sleep(0.2)
                    continue
                try:
                    opened = ev.decrypt_payload(env, dek, prof.cluster_id)
                except ev.EnvelopeError as exc:  # the invariant reports it
                    return op("ok", "", f"the recovered data key does not open it: {exc}")
                finally:
                    ev.zero(dek)
                return op("ok", opened.hex())
        except _Failed as exc:
            return op("failed", detail=str(exc))
        except _Unknown as exc:
            return op("unknown", detail=str(exc))

    # ------------------------------------------------------------ lifecycle

    async def _lifecycle(self, i: int, c: dict[str, Client]) -> None:
        """ops rotates `rotate_key` every `rotate_every` seconds (and, with `revoke`,
        then revokes the version the rotation replaced)."""
        n = 0
        every = self.rotate_every or 0
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), every)
            if self.stop.is_set():
                return
            n += 1
            op, old = await self._rotate(i, c, n)
            self._record(op)
            if op.outcome == "ok" and self.revoke and old and not self.stop.is_set():
                self._record(await self._revoke(i, c, n, old))

    async def _lifecycle_request(self, i: int, c: dict[str, Client], rid: str,
                                 args: tuple[str, ...],
                                 deadline: float) -> dict[str, Any]:  # fmt: skip
        """`custody ARGS --request-id RID` as ops (retried with the same request id until
        it answers), the approvals, then the request's final view."""
        from chaos.cluster import custody_json

        ref = f"{OPERATOR}:{rid}"
        prof = str(self.profiles[OPERATOR].path)
        call = self.h.now()
        last = ""
        while True:
            if time.monotonic() >= deadline:
                self.h.events.append(Event(i, ref, "submit", OPERATOR, call, None, "unknown",
                                           None, last))  # fmt: skip
                raise _Unknown(f"{args[1]} by {OPERATOR}: no answer before the deadline ({last})")
            try:
                out = await asyncio.to_thread(custody_json, *args, "--request-id", rid,
                                              "--profile", prof, timeout=30)  # fmt: skip
            except Exception as exc:  # no leader, a timeout: the same request id again
                last = " ".join(str(exc).split())[-300:]
                if "rejected" in last or "refused" in last:
                    self.h.events.append(Event(i, ref, "submit", OPERATOR, call, self.h.now(),
                                               "failed", "rejected:cli", last))  # fmt: skip
                    raise _Failed(f"{args[1]} by {OPERATOR}: {last}") from None
                await asyncio.sleep(0.5)
                continue
            code = str(out.get("code", ""))
            if not out.get("ok", True) or out.get("request", ref) != ref:
                self.h.events.append(Event(i, ref, "submit", OPERATOR, call, self.h.now(),
                                           "failed", f"rejected:{code}",
                                           str(out)[:200]))  # fmt: skip
                raise _Failed(f"{args[1]} by {OPERATOR} refused: {code} {out.get('detail')}")
            self.h.events.append(Event(i, ref, "submit", OPERATOR, call, self.h.now(), "ok", code))
            break
        await asyncio.gather(*(self._approve(i, c[w], w, ref, rid, deadline)
                               for w in APPROVERS))  # fmt: skip
        return await self._until_done(i, ref, OPERATOR, c[OPERATOR], deadline)

    async def _rotate(self, i: int, c: dict[str, Client], n: int,
                      timeout: float | None = None) -> tuple[Op, int]:  # fmt: skip
        rid = f"rot-{self.seed}-{n:03d}"
        ref = f"{OPERATOR}:{rid}"
        invoke = self.h.now()
        deadline = time.monotonic() + (timeout or max(self.op_timeout, 60))
        new = old = 0

        def op(outcome: str, detail: str = "") -> Op:
            return Op(i, ref, "", invoke, self.h.now(), outcome, "", detail, "rotate",
                      self.rotate_key, new)  # fmt: skip

        try:
            key = await self._get_key(c[OPERATOR], self.rotate_key, deadline)
            old = int(key["primary"])
            view = await self._lifecycle_request(i, c, rid, ("keys", "rotate", self.rotate_key),
                                                 deadline)  # fmt: skip
            if view["state"] != "executed":
                return op("failed", f"rotation failed: {view.get('failure')}"), old
            new = int(view.get("version") or 0)
            # activate it: advance the epoch until the new version is the primary
            while True:
                key = await self._get_key(c[OPERATOR], self.rotate_key, deadline)
                if int(key["primary"]) != old:
                    new = int(key["primary"])
                    return op("ok", f"v{old} -> v{new}"), old
                if time.monotonic() >= deadline:
                    raise _Unknown(f"rotation executed but v{old} is still the primary")
                with contextlib.suppress(ApiError, Unreachable, OSError, TimeoutError):
                    await asyncio.wait_for(c[OPERATOR].post("/v1/epoch/advance", {}), 5)
                await asyncio.sleep(0.5)
        except _Failed as exc:
            return op("failed", str(exc)), old
        except _Unknown as exc:
            return op("unknown", str(exc)), old

    async def _revoke(self, i: int, c: dict[str, Client], n: int, version: int) -> Op:
        rid = f"rev-{self.seed}-{n:03d}"
        ref = f"{OPERATOR}:{rid}"
        invoke = self.h.now()
        deadline = time.monotonic() + max(self.op_timeout, 60)

        def op(outcome: str, detail: str = "") -> Op:
            return Op(i, ref, "", invoke, self.h.now(), outcome, "", detail, "revoke",
                      self.rotate_key, version)  # fmt: skip

        try:
            view = await self._lifecycle_request(
                i, c, rid, ("keys", "revoke", self.rotate_key, "--version", str(version)),
                deadline)  # fmt: skip
            if view["state"] != "executed":
                return op("failed", f"revocation failed: {view.get('failure')}")
            return op("ok", f"v{version} revoked")
        except _Failed as exc:
            return op("failed", str(exc))
        except _Unknown as exc:
            return op("unknown", str(exc))

    async def _approve(self, i: int, c: Client, who: str, ref: str, rid: str,
                       deadline: float) -> None:  # fmt: skip
        view = None
        while view is None:
            view = await self._read(i, ref, who, c, deadline)
        if view["state"] != "pending":  # decided without this approval (e.g. failed: a
            return  # version revoked or rotated under it): the final read tells the outcome
        try:
            digest = recompute_digest(view)
        except ValueError as exc:  # the approver's tool cannot review it: it does not approve
            raise _Failed(f"{who}: cannot review the request: {exc}") from None
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
