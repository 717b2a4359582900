"""Benchmark: envelope encryption and approved threshold decryption on a real custody cluster.

One run, in a temporary directory, on a fresh 3-node cluster (threshold 2); with
`--nodes 5` (same as `--also-5`) a fresh 5-node cluster (threshold 3) is measured
afterwards, in the same run, and reported beside it.

1. setup (untimed, the in-process CLI `node.cli.main` as an operator types it):
   `custody cluster init` (approvers alice,bob,carol, client app1, operator ops,
   auditor audit), `cluster up`, a policy pe (requesters app1, operations decrypt,
   approvers alice,bob,carol, k 2) approved by alice and bob, two `encrypt` keys
   (`bench-enc` for decryption, `bench-rot` for rotation) created by DKG and
   approved by alice and bob, `custody epoch advance` so both have an active v1.
2. two ways to decrypt, both measured:
   - **approved by people**: a decrypt request decided by two approvals (alice,
     bob). The approvals' Ed25519 signatures are computed client-side before
     the timed loop (`recompute_digest` from a template request view, checked
     against the node's digest on a warm-up request, then `sign_approval`), as
     in benchmarks/cluster_sign.py.
   - **under a grant** (docs/grants.md), no approvals: a grant `bench-grant`
     (grantee app1, key bench-enc, operation decrypt, context exactly CTX,
     100 000 uses, expiring 1 000 epochs ahead) proposed by ops (a signed
     `create_grant`, POST /v1/grants) and approved by alice and bob (untimed,
     before the timed loops); then app1 signs each `request_decrypt` naming the
     grant with its own Ed25519 key (the profile's `approval_key`, issued by
     `cluster init`) and posts it to POST /v1/requests/signed: the request is
     approved when it is applied, and `recover_dek` gathers the partials.
3. sequential decryptions, `--requests` (default 100, +5 warm-up), one at a time,
   each driven with `node.client.http.Client` (one per principal, mTLS with that
   principal's certificate; the leader first in every profile, found via
   GET /v1/sys/status; the others stay for failover and for the partials):
     submit    POST /v1/keys/bench-enc/decrypt        (app1; the wrapped DEK of a
               4 KiB file made by `encrypt_file` before the loop)
     approve1  POST /v1/requests/{ref}/approve        (alice)
     approve2  POST /v1/requests/{ref}/approve        (bob: the request is approved)
     recover   `node.client.envelope.recover_dek` (the library's own flow: GET the
               request, GET the key, POST /v1/requests/{ref}/partial to the
               profile's nodes one by one, each over a new mTLS client, until t
               partials' DLEQ proofs verify, then `tdec.unwrap`)
   Figures: (a) approval -> DEK: from approve2's POST returning to the DEK in
   the client's hands; (b) the whole request: submit + approve1 + approve2 + (a).
   Every DEK is checked afterwards (untimed) by opening its file's payload.
4. decomposition (`--detail` requests, default 30): the same flow with the steps
   of `recover_dek` timed one by one (same calls, same fresh client per partial);
   then a client-side what-if, **not the library's flow**: the t partials asked
   concurrently over already-open connections, to show what the client's
   sequential, reconnecting collection costs.
5. throughput: `--inflight` tasks (default 32), each doing the whole flow of 3
   back to back, `--total` requests in all (default 320); decrypts/s = total /
   wall time; CPU seconds of every node process and of this process over the
   phase (from /proc), per decryption.
5g. under the grant (after 5, same cluster): `--requests` sequential decrypts
   (+5 warm-up), each timed from building the signed command to the DEK in the
   client's hands: sign (client CPU, Ed25519) + POST /v1/requests/signed (one
   Raft commit; the request is approved on apply) + `recover_dek`; then the
   throughput phase again with the same `--inflight` and `--total`, every
   request under the grant (decrypts/s, latency under load, CPU per decryption).
   Each 4 KiB file is made before its timed request, as in 3 and 5.
6. rotation (`--rotations`, default 3, on bench-rot): `custody keys rotate`'s
   command (signed by ops, POST /v1/commands), approve1, approve2; figure: from
   approve2's POST returning to the rotation request executed (all n members
   posted the same DKG result) and the new version's group public key read back
   from GET /v1/keys/bench-rot. Between rotations an epoch advance activates
   the new version (a pending version blocks the next rotation).
7. references, same run: library-only threshold decryption (`shares.tdec`: wrap,
   t `partial_decrypt` with proofs, t `verify_partial`, `unwrap`, one process,
   trusted-dealer t-of-n shares, median of 300); local encryption throughput
   (`encrypt_file` of a 4 KiB payload: fresh DEK, TDH2 wrap, AES-256-GCM;
   single process, `--encrypts` files, cluster idle); the Raft commit latency
   through the API (`--requests` sequential decrypt-request submission POSTs,
   one commit + apply each; finished afterwards, untimed).
8. a table: figure, measured, target (approval -> DEK p50 <= 10 ms; >= 300
   decrypts/s with 32 in flight, on 2 cores; the decrypts/s target is checked
   for both ways), met/MISSED, the reference beside it, and the machine. Exit
   status 0 even when a target is missed; 1 if a request failed or the cluster
   could not be set up.

The cluster is always stopped (`cluster down`, in `finally`); `--keep-dir` keeps
its directory (node logs in node-*/).

Run: make bench, or
    .venv/bin/python benchmarks/envelope.py [--requests 100] [--inflight 32]
        [--total 320] [--rotations 3] [--nodes 5 | --also-5] [--keep-dir]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cluster_sign import SetupFailed, cli, cpu_seconds, find_leader, ms, pct  # noqa: E402

from node.cli.keys import signed_command  # noqa: E402
from node.cli.requests import recompute_digest  # noqa: E402
from node.client import envelope as ev  # noqa: E402
from node.client import grants as gr  # noqa: E402
from node.client.http import ApiError, Client, Unreachable, new_request_id  # noqa: E402
from node.client.profile import Profile, load_profile  # noqa: E402
from node.pki.store import read_private_key  # noqa: E402
from node.state import CreateGrant, RequestRotate, sign_approval  # noqa: E402
from shares import group as g  # noqa: E402
from shares import shamir, tdec, vss  # noqa: E402

ENC_KEY = "bench-enc"
ROT_KEY = "bench-rot"
POLICY_ID = "pe"
GRANT_ID = "bench-grant"
GRANT_USES = 100_000
CTX = "bench/envelope/4k"
PAYLOAD = 4096
WAIT_S = "5"
RECOVER_TIMEOUT_S = 20.0


# ---------------------------------------------------------------- grants


async def create_grant(c: dict[str, Client], profiles: dict[str, Profile]) -> str:
    """The grant every approval-free decryption uses: a signed `create_grant` by ops
    (POST /v1/grants), approved by alice and bob with their profiles' keys; returns a
    one-line description. Raises SetupFailed unless the grant ends up active and usable."""
    epoch = int((await c["ops"].get("/v1/sys/status"))["epoch"])
    cmd = CreateGrant(request_id=new_request_id("grant"), author="ops", grant_id=GRANT_ID,
                      grantee="app1", key_id=ENC_KEY, operations=("decrypt",), context=CTX,
                      context_match="exact", max_uses=GRANT_USES,
                      expires_epoch=epoch + 1000)  # fmt: skip
    out = await c["ops"].post(
        "/v1/grants", {"command_b64": await signed_command(profiles["ops"], cmd)}
    )
    ref = out.get("request", "")
    if not out.get("ok"):
        raise SetupFailed(f"create_grant refused: {out}")
    view = await c["alice"].get(f"/v1/requests/{ref}")
    digest = recompute_digest(view)
    if digest.hex() != view["digest"]:
        raise SetupFailed("grant request digest differs from the node's")
    for n, who in enumerate(("alice", "bob"), 1):
        key = read_private_key(profiles[who].approval_key)  # type: ignore[arg-type]
        out = await c[who].post(f"/v1/requests/{ref}/approve", {
            "request_id": f"a{n}-{cmd.request_id}",
            "signature": sign_approval(key, digest).hex(),
        })  # fmt: skip
        _check(out, f"grant approval {n}", ref)
    deadline = time.monotonic() + 15
    while True:
        g = await c["app1"].get(f"/v1/grants/{GRANT_ID}")
        if g["state"] == "active" and g["usable"]:
            break
        if g["state"] == "failed" or time.monotonic() > deadline:
            raise SetupFailed(f"grant {GRANT_ID} is not usable: {g}")
        await asyncio.sleep(0.05)
    return (f"grant {GRANT_ID}: POST /v1/grants (ops) -> request {ref}, approved by alice "
            f"and bob; active, grantee app1, {ENC_KEY}, decrypt, context {CTX!r} (exact), "
            f"{GRANT_USES} uses, expires at epoch {epoch + 1000}")  # fmt: skip


# ---------------------------------------------------------------- cluster setup


class Cluster:
    def __init__(self, root: Path, nodes: int, threshold: int) -> None:
        self.root, self.nodes, self.threshold = root, nodes, threshold

    def profile(self, who: str) -> str:
        return str(self.root / "profiles" / f"{who}.toml")

    def as_(self, who: str, *args: str) -> str:
        return cli(*args, "--profile", self.profile(who))

    def init(self) -> None:
        cli("cluster", "init", "--dir", str(self.root), "--nodes", str(self.nodes),
            "--threshold", str(self.threshold), "--approvers", "alice,bob,carol",
            "--clients", "app1", "--operators", "ops", "--auditors", "audit")  # fmt: skip

    def up(self) -> None:
        cli("cluster", "up", "--dir", str(self.root))

    def down(self) -> None:
        cli("cluster", "down", "--dir", str(self.root))

    def alive(self) -> list[str]:
        """Node processes still running after `down` (should be none)."""
        left = []
        for pidfile in sorted(self.root.glob("node-*/node.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text())
                os.kill(pid, 0)
                left.append(f"{pidfile.parent.name} (pid {pid})")
        return left

    def approve(self, ref: str, *who: str) -> None:
        for name in who:
            self.as_(name, "approve", ref, "--yes", "--json")

    def wait_request(self, ref: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = json.loads(self.as_("audit", "requests", "show", ref, "--json"))
            if r["state"] in ("executed", "failed") or time.monotonic() > deadline:
                return r
            time.sleep(0.1)

    def setup(self) -> None:
        out = json.loads(self.as_("ops", "policy", "set", POLICY_ID, "--requesters", "app1",
                                  "--operations", "decrypt", "--approvers", "alice,bob,carol",
                                  "--k", "2", "--json"))  # fmt: skip
        self.approve(out["request"], "alice", "bob")
        refs = []
        for key_id in (ENC_KEY, ROT_KEY):
            out = json.loads(self.as_("ops", "keys", "create", key_id, "--purpose", "encrypt",
                                      "--policy", POLICY_ID, "--json"))  # fmt: skip
            self.approve(out["request"], "alice", "bob")
            refs.append(out["request"])
        for ref in refs:
            r = self.wait_request(ref, timeout=90)
            if r["state"] != "executed":
                raise SetupFailed(f"key creation (DKG) did not complete: {r}")
        self.as_("ops", "epoch", "advance", "--json")
        for key_id in (ENC_KEY, ROT_KEY):
            key = json.loads(self.as_("audit", "keys", "show", key_id, "--json"))
            if key["primary"] != 1:
                raise SetupFailed(f"key {key_id} has no active version after epoch advance")


# ---------------------------------------------------------------- measurement


@dataclasses.dataclass
class Sample:
    submit: float
    approve1: float
    approve2: float
    a: float  # approve2 returned -> DEK in the client's hands

    @property
    def whole(self) -> float:
        return self.submit + self.approve1 + self.approve2 + self.a


@dataclasses.dataclass
class GrantSample:
    sign: float  # client CPU: the signed request_decrypt built and signed
    submit: float  # POST /v1/requests/signed (approved on apply)
    dek: float  # POST returned -> DEK in the client's hands (recover_dek)

    @property
    def whole(self) -> float:
        return self.sign + self.submit + self.dek


@dataclasses.dataclass
class Job:
    request_id: str
    env: ev.EnvelopeFile
    sig_alice: str
    sig_bob: str

    @property
    def ref(self) -> str:
        return f"app1:{self.request_id}"


class Bench:
    def __init__(self, root: Path, leader_url: str) -> None:
        self.root = root
        self.leader_url = leader_url
        self.profiles: dict[str, Profile] = {}
        for who in ("app1", "alice", "bob", "ops"):
            p = load_profile(root / "profiles" / f"{who}.toml")
            # the leader first: Client prefers nodes[0]; recover_dek asks for partials
            # in this order, so the leader and then the next nodes give them
            nodes = (leader_url, *(u for u in p.nodes if u != leader_url))
            self.profiles[who] = dataclasses.replace(p, nodes=nodes)
        self.cluster_id = self.profiles["app1"].cluster_id
        self.approval_keys = {
            who: read_private_key(self.profiles[who].approval_key)  # type: ignore[arg-type]
            for who in ("alice", "bob")
        }
        self.plaintext = os.urandom(PAYLOAD)
        self.template: dict[str, Any] | None = None
        self.gpk = b""
        self.version = 0
        self.counter = 0
        self.opened = 0
        self.failures: list[str] = []
        self.vshares: dict[int, bytes] = {}
        self.t = 0
        # app1's own Ed25519 key (`pki init` gives clients one), for requests under a grant
        self.grant_key = gr.load_signing_key(self.profiles["app1"].approval_key)

    # -- files and requests with precomputed approvals

    def _file(self) -> ev.EnvelopeFile:
        raw = ev.encrypt_file(self.gpk, self.cluster_id, ENC_KEY, self.version, CTX,
                              self.plaintext, os.urandom)  # fmt: skip
        return ev.parse(raw)

    def _rid(self) -> str:
        self.counter += 1
        return f"bench-{self.counter:06d}-{os.urandom(4).hex()}"

    def job(self, rid: str = "", env: ev.EnvelopeFile | None = None) -> Job:
        assert self.template is not None
        rid, env = rid or self._rid(), env or self._file()
        view = dict(self.template)
        view.update(request_id=rid, ref=f"app1:{rid}",
                    payload_b64=base64.b64encode(env.wrapped).decode(),
                    payload_sha256=hashlib.sha256(env.wrapped).hexdigest())  # fmt: skip
        digest = recompute_digest(view)
        return Job(
            rid, env,
            sign_approval(self.approval_keys["alice"], digest).hex(),
            sign_approval(self.approval_keys["bob"], digest).hex(),
        )  # fmt: skip

    async def learn(self, c: dict[str, Client]) -> None:
        """The key's public data, and one request done the CLI's way (read the request,
        recompute and compare the digest): the template for every later digest."""
        key = await c["app1"].get(f"/v1/keys/{ENC_KEY}")
        v = ev.primary_version(key)
        self.gpk, self.version = bytes.fromhex(v["group_public_key"]), v["version"]
        rid, env = self._rid(), self._file()
        ref = f"app1:{rid}"
        out = await ev.submit_decrypt(c["app1"], env, CTX, rid)
        _check(out, "submit", ref)
        view = await c["alice"].get(f"/v1/requests/{ref}")
        digest = recompute_digest(view)
        if digest.hex() != view["digest"]:
            raise SetupFailed("client-side digest differs from the node's")
        self.template = {k: v for k, v in view.items() if k != "approvals"}
        j = self.job(rid, env)  # the precomputed path must give the node's digest too
        if j.sig_bob != sign_approval(self.approval_keys["bob"], digest).hex():
            raise SetupFailed("template digest mismatch")
        await self.approvals(c, j)
        await self.recover(c, j)

    async def approvals(self, c: dict[str, Client], j: Job) -> None:
        out = await c["alice"].post(
            f"/v1/requests/{j.ref}/approve",
            {"request_id": f"a1-{j.request_id}", "signature": j.sig_alice},
        )
        _check(out, "approve1", j.ref)
        out = await c["bob"].post(
            f"/v1/requests/{j.ref}/approve",
            {"request_id": f"a2-{j.request_id}", "signature": j.sig_bob},
        )
        _check(out, "approve2", j.ref)

    async def recover(self, c: dict[str, Client], j: Job) -> None:
        dek = await ev.recover_dek(c["app1"], self.profiles["app1"], j.env, CTX, j.ref,
                                   RECOVER_TIMEOUT_S)  # fmt: skip
        self._open(j, dek)

    def _open(self, j: Job, dek: bytearray) -> None:
        try:
            if ev.decrypt_payload(j.env, dek, self.cluster_id) != self.plaintext:
                raise RuntimeError(f"{j.ref}: the payload opened to other bytes")
        finally:
            ev.zero(dek)
        self.opened += 1

    async def one(self, c: dict[str, Client], j: Job) -> Sample:
        """The whole flow: submit, approve1, approve2, recover_dek (timed), open (untimed)."""
        pc = time.perf_counter
        t0 = pc()
        out = await ev.submit_decrypt(c["app1"], j.env, CTX, j.request_id)
        t1 = pc()
        _check(out, "submit", j.ref)
        out = await c["alice"].post(
            f"/v1/requests/{j.ref}/approve",
            {"request_id": f"a1-{j.request_id}", "signature": j.sig_alice},
        )
        t2 = pc()
        _check(out, "approve1", j.ref)
        out = await c["bob"].post(
            f"/v1/requests/{j.ref}/approve",
            {"request_id": f"a2-{j.request_id}", "signature": j.sig_bob},
        )
        t3 = pc()
        _check(out, "approve2", j.ref)
        dek = await ev.recover_dek(c["app1"], self.profiles["app1"], j.env, CTX, j.ref,
                                   RECOVER_TIMEOUT_S)  # fmt: skip
        t4 = pc()
        self._open(j, dek)
        return Sample(t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    # -- decomposition of recover_dek, and a client-side what-if

    async def detailed(self, c: dict[str, Client], j: Job) -> dict[str, float]:
        """recover_dek's steps timed one by one (same calls, a fresh client per partial)."""
        pc = time.perf_counter
        await ev.submit_decrypt(c["app1"], j.env, CTX, j.request_id)
        await self.approvals(c, j)
        out: dict[str, float] = {}
        t = pc()
        r = await c["app1"].get(f"/v1/requests/{j.ref}")
        out["GET request (ReadIndex)"] = pc() - t
        if r["state"] != "approved":
            raise RuntimeError(f"{j.ref} is {r['state']} after approve2")
        t = pc()
        key = await c["app1"].get(f"/v1/keys/{ENC_KEY}")
        out["GET key (ReadIndex)"] = pc() - t
        t = pc()
        v = ev.key_version(key, j.env.version)
        vshares = {i + 1: bytes.fromhex(s) for i, s in enumerate(v["verification_shares"])}
        gpk = bytes.fromhex(v["group_public_key"])
        thr = vss.derive_threshold(vshares, gpk)
        out["derive_threshold (client CPU)"] = pc() - t
        request = ev.partial_request(j.ref)
        partials = []
        for n, url in enumerate(self.profiles["app1"].nodes[:thr], 1):
            one = dataclasses.replace(self.profiles["app1"], nodes=(url,))
            t = pc()
            async with Client(one, attempts=3) as pcl:
                got = await pcl.post(f"/v1/requests/{j.ref}/partial", {})
            out[f"partial {n} POST, new mTLS client"] = pc() - t
            t = pc()
            p = tdec.PartialDecryption.from_bytes(base64.b64decode(got["partial_b64"]))
            tdec.verify_partial(p, j.env.wrapped, vshares[got["index"]], request)
            out[f"partial {n} verify (client CPU)"] = pc() - t
            partials.append(p)
        t = pc()
        label = ev.label_for(self.cluster_id, ENC_KEY, j.env.version, CTX)
        dek = tdec.unwrap(j.env.wrapped, partials, vshares, thr, gpk, label, request)
        out["unwrap: re-verify + combine (client CPU)"] = pc() - t
        self._open(j, bytearray(dek))
        return out

    async def what_if(self, c: dict[str, Client], per_node: list[Client], j: Job) -> float:
        """NOT the library's flow: the t partials asked concurrently over open connections
        (key view fetched once, before). Returns approve2 returned -> DEK."""
        await ev.submit_decrypt(c["app1"], j.env, CTX, j.request_id)
        await self.approvals(c, j)
        t = time.perf_counter()
        outs = await asyncio.gather(
            *(pc.post(f"/v1/requests/{j.ref}/partial", {}) for pc in per_node[: self.t])
        )
        request = ev.partial_request(j.ref)
        partials = [tdec.PartialDecryption.from_bytes(base64.b64decode(o["partial_b64"]))
                    for o in outs]  # fmt: skip
        label = ev.label_for(self.cluster_id, ENC_KEY, j.env.version, CTX)
        dek = tdec.unwrap(j.env.wrapped, partials, self.vshares, self.t, self.gpk, label, request)
        took = time.perf_counter() - t
        self._open(j, bytearray(dek))
        return took

    # -- references and load

    async def raft_reference(self, c: dict[str, Client], n: int) -> list[float]:
        jobs = [self.job() for _ in range(n)]
        submit = []
        for j in jobs:
            t0 = time.perf_counter()
            out = await ev.submit_decrypt(c["app1"], j.env, CTX, j.request_id)
            submit.append(time.perf_counter() - t0)
            _check(out, "submit", j.ref)
        sem = asyncio.Semaphore(16)

        async def finish(j: Job) -> None:  # nothing stays open
            async with sem:
                await self.approvals(c, j)
                await self.recover(c, j)

        await asyncio.gather(*(finish(j) for j in jobs))
        return submit

    async def throughput(
        self, c: dict[str, Client], inflight: int, total: int
    ) -> tuple[float, list[Sample]]:
        queue = list(reversed([self.job() for _ in range(total)]))
        samples: list[Sample] = []

        async def worker() -> None:
            while queue:
                j = queue.pop()
                try:
                    samples.append(await self.one(c, j))
                except (ApiError, Unreachable, ev.EnvelopeError, RuntimeError) as exc:
                    self.failures.append(f"{j.ref}: {exc.__class__.__name__}: {exc}")

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return len(samples) / (time.perf_counter() - t), samples

    # -- approval-free decryption under a grant

    def grant_job(self) -> Job:
        """A file to decrypt under the grant (no approvals: the signatures stay empty)."""
        return Job(self._rid(), self._file(), "", "")

    async def grant_one(self, c: dict[str, Client], j: Job) -> GrantSample:
        """Submit -> DEK in hand: sign the request (app1's key), POST it to
        /v1/requests/signed, recover_dek (timed); open the payload (untimed)."""
        pc = time.perf_counter
        t0 = pc()
        b64 = gr.signed_request(self.grant_key, self.cluster_id, request_id=j.request_id,
                                author="app1", grant=GRANT_ID, key_id=ENC_KEY, op="decrypt",
                                payload=j.env.wrapped, context=CTX,
                                version=j.env.version)  # fmt: skip
        t1 = pc()
        out = await c["app1"].post("/v1/requests/signed", {"command_b64": b64})
        t2 = pc()
        _check(out, "grant submit", j.ref)
        if out.get("request", j.ref) != j.ref:
            raise RuntimeError(f"{j.ref}: the node answered for {out.get('request')}")
        dek = await ev.recover_dek(c["app1"], self.profiles["app1"], j.env, CTX, j.ref,
                                   RECOVER_TIMEOUT_S)  # fmt: skip
        t3 = pc()
        self._open(j, dek)
        return GrantSample(t1 - t0, t2 - t1, t3 - t2)

    async def grant_throughput(
        self, c: dict[str, Client], inflight: int, total: int
    ) -> tuple[float, list[GrantSample]]:
        queue = list(reversed([self.grant_job() for _ in range(total)]))
        samples: list[GrantSample] = []

        async def worker() -> None:
            while queue:
                j = queue.pop()
                try:
                    samples.append(await self.grant_one(c, j))
                except (ApiError, Unreachable, ev.EnvelopeError, RuntimeError) as exc:
                    self.failures.append(f"{j.ref} (grant): {exc.__class__.__name__}: {exc}")

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return len(samples) / (time.perf_counter() - t), samples

    # -- rotation

    async def rotate(self, c: dict[str, Client]) -> dict[str, float]:
        key = await c["ops"].get(f"/v1/keys/{ROT_KEY}")
        new_version = max(v["version"] for v in key["versions"]) + 1
        cmd = RequestRotate(request_id=new_request_id("rotate"), author="ops", key_id=ROT_KEY,
                            at=int(time.time()), activate_epoch=0)  # fmt: skip
        out = await c["ops"].post(
            "/v1/commands", {"command_b64": await signed_command(self.profiles["ops"], cmd)}
        )
        ref = out["request"]
        _check(out, "rotate", ref)
        view = await c["alice"].get(f"/v1/requests/{ref}")
        digest = recompute_digest(view)
        if digest.hex() != view["digest"]:
            raise SetupFailed("rotation digest differs from the node's")
        sigs = {w: sign_approval(self.approval_keys[w], digest).hex() for w in ("alice", "bob")}
        pc = time.perf_counter
        _check(
            await c["alice"].post(
                f"/v1/requests/{ref}/approve",
                {"request_id": f"a1-{cmd.request_id}", "signature": sigs["alice"]},
            ),
            "approve1",
            ref,
        )
        t0 = pc()
        _check(
            await c["bob"].post(
                f"/v1/requests/{ref}/approve",
                {"request_id": f"a2-{cmd.request_id}", "signature": sigs["bob"]},
            ),
            "approve2",
            ref,
        )
        t1 = pc()
        polls = 0
        while True:
            polls += 1
            r = await c["ops"].get(f"/v1/requests/{ref}", wait=WAIT_S)
            if r["state"] == "executed":
                break
            if r["state"] == "failed" or polls > 24:
                raise RuntimeError(f"rotation {ref}: {r['state']} {r.get('failure')}")
        t2 = pc()
        key = await c["ops"].get(f"/v1/keys/{ROT_KEY}")
        t3 = pc()
        v = [x for x in key["versions"] if x["version"] == new_version]
        if not v or not v[0]["group_public_key"]:
            raise RuntimeError(f"rotation {ref} executed but v{new_version} has no public key")
        # activate it (the next rotation is refused while a version is pending);
        # `epoch advance` is honoured at most once a second (epoch_min_interval_s)
        deadline = time.monotonic() + 15
        while True:
            adv = await c["ops"].post("/v1/epoch/advance", {})
            if adv["epoch"] > adv["epoch_before"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the epoch does not advance")
            await asyncio.sleep(0.3)
        return {"approve2 POST": t1 - t0, "approved -> executed": t2 - t1,
                "approved -> key view": t3 - t1}  # fmt: skip


def _check(out: dict[str, Any], what: str, ref: str) -> None:
    if not out.get("ok"):
        raise RuntimeError(f"{what} of {ref} refused: {out}")


async def measure(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    leader = await find_leader(root)
    b = Bench(root, leader)
    res: dict[str, Any] = {"leader_url": leader}
    async with contextlib.AsyncExitStack() as stack:
        c = {who: await stack.enter_async_context(Client(p, timeout=15))
             for who, p in b.profiles.items()}  # fmt: skip
        res["leader"] = (await c["ops"].get("/v1/sys/status"))["node"]
        res["grants"] = await create_grant(c, b.profiles)
        await b.learn(c)
        for _ in range(5):  # warm-up: connections, code paths
            await b.one(c, b.job())
        res["seq"] = [await b.one(c, b.job()) for _ in range(args.requests)]

        # decomposition and the what-if
        res["detail"] = [await b.detailed(c, b.job()) for _ in range(args.detail)]
        key = await c["app1"].get(f"/v1/keys/{ENC_KEY}")
        v = ev.key_version(key, b.version)
        b.vshares = {i + 1: bytes.fromhex(s) for i, s in enumerate(v["verification_shares"])}
        b.t = vss.derive_threshold(b.vshares, b.gpk)
        res["t"] = b.t
        per_node = [await stack.enter_async_context(
            Client(dataclasses.replace(b.profiles["app1"], nodes=(u,)), timeout=15, attempts=3))
            for u in b.profiles["app1"].nodes]  # fmt: skip
        for pcl in per_node:  # open the connections
            await pcl.get("/v1/sys/status")
        res["what_if"] = [await b.what_if(c, per_node, b.job()) for _ in range(args.detail)]

        res["raft_submit"] = await b.raft_reference(c, args.requests)
        cpu0 = cpu_seconds(root)
        res["tput"], res["load"] = await b.throughput(c, args.inflight, args.total)
        cpu1 = cpu_seconds(root)
        done = max(len(res["load"]), 1)
        res["cpu"] = {k: (cpu1[k] - cpu0[k]) / done for k in cpu1 if k in cpu0}

        # under the grant: no approvals, the client signs its own requests
        for _ in range(5):  # warm-up
            await b.grant_one(c, b.grant_job())
        gseq = []
        for _ in range(args.requests):
            j = b.grant_job()  # the file is made before the timed request, as above
            gseq.append(await b.grant_one(c, j))
        res["gseq"] = gseq
        cpu0 = cpu_seconds(root)
        res["gtput"], res["gload"] = await b.grant_throughput(c, args.inflight, args.total)
        cpu1 = cpu_seconds(root)
        done = max(len(res["gload"]), 1)
        res["gcpu"] = {k: (cpu1[k] - cpu0[k]) / done for k in cpu1 if k in cpu0}
        g = await c["app1"].get(f"/v1/grants/{GRANT_ID}")
        res["grant_uses"] = g["uses"]
        res["rotations"] = [await b.rotate(c) for _ in range(args.rotations)]
        res["leader_end"] = (await c["ops"].get("/v1/sys/status"))["node"]
    res["opened"] = b.opened
    res["failures"] = b.failures
    return res


# ---------------------------------------------------------------- local references


def tdec_reference(t: int, n: int, rounds: int = 300) -> dict[str, float]:
    """Library-only threshold decryption in this process, t of n trusted-dealer shares."""
    secret = g.random_scalar(os.urandom)
    shares, coefficients = shamir.split_secret(secret, t, n, os.urandom)
    commitment = vss.commit(coefficients)
    gpk = commitment[0]
    vshares = {s.identifier: vss.evaluate_commitment(s.identifier, commitment) for s in shares}
    label = ev.label_for("bench-cluster", ENC_KEY, 1, CTX)
    request = ev.partial_request("app1:bench")
    pc = time.perf_counter
    parts: dict[str, list[float]] = {k: [] for k in ("wrap", "partial", "verify", "unwrap",
                                                     "total", "derive_threshold")}  # fmt: skip
    for _ in range(rounds):
        t0 = pc()
        env = tdec.wrap(gpk, os.urandom(32), label, os.urandom)
        t1 = pc()
        partials = [tdec.partial_decrypt(shares[i], env, gpk, label, os.urandom, request)
                    for i in range(t)]  # fmt: skip
        t2 = pc()
        for p in partials:
            tdec.verify_partial(p, env, vshares[p.identifier], request)
        t3 = pc()
        tdec.unwrap(env, partials, vshares, t, gpk, label, request)
        t4 = pc()
        vss.derive_threshold(vshares, gpk)
        t5 = pc()
        for k, x in (
            ("wrap", t1 - t0),
            ("partial", (t2 - t1) / t),
            ("verify", (t3 - t2) / t),
            ("unwrap", t4 - t3),
            ("total", t4 - t0),
            ("derive_threshold", t5 - t4),
        ):
            parts[k].append(x)
    return {k: statistics.median(v) for k, v in parts.items()}


def encrypt_reference(count: int) -> tuple[float, float]:
    """encrypts/s of `encrypt_file` (4 KiB, fresh DEK, TDH2 wrap, AES-GCM), single process,
    and the median seconds of `tdec.wrap` alone."""
    secret = g.random_scalar(os.urandom)
    gpk = g.base_mult(secret)
    plaintext = os.urandom(PAYLOAD)
    for _ in range(20):
        ev.encrypt_file(gpk, "bench-cluster", ENC_KEY, 1, CTX, plaintext, os.urandom)
    t = time.perf_counter()
    for _ in range(count):
        ev.encrypt_file(gpk, "bench-cluster", ENC_KEY, 1, CTX, plaintext, os.urandom)
    rate = count / (time.perf_counter() - t)
    label = ev.label_for("bench-cluster", ENC_KEY, 1, CTX)
    wraps = []
    for _ in range(300):
        t = time.perf_counter()
        tdec.wrap(gpk, os.urandom(32), label, os.urandom)
        wraps.append(time.perf_counter() - t)
    return rate, statistics.median(wraps)


# ---------------------------------------------------------------- one cluster


def run_cluster(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    threshold = 2 if nodes == 3 else 3
    out: dict[str, Any] = {"nodes": nodes, "threshold": threshold}
    out["tdec"] = tdec_reference(threshold, nodes)
    out["encrypt"] = encrypt_reference(args.encrypts)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-envelope-{nodes}-"))
    root = tmp / "cluster"
    cluster = Cluster(root, nodes, threshold)
    started = False
    try:
        t = time.perf_counter()
        cluster.init()
        started = True
        cluster.up()
        cluster.setup()
        out["setup_s"] = time.perf_counter() - t
        out.update(asyncio.run(measure(root, args)))
    except BaseException:
        if started:
            for log in sorted(root.glob("node-*/*.log")):
                print(f"--- {log} (tail)", file=sys.stderr)
                print(log.read_text(errors="replace")[-1500:], file=sys.stderr)
        raise
    finally:
        if started:
            try:
                cluster.down()
            except SetupFailed as exc:
                print(f"cluster down failed: {exc}", file=sys.stderr)
            out["left_behind"] = cluster.alive()
            for name in out["left_behind"]:
                print(f"node process left behind: {name}", file=sys.stderr)
        if args.keep_dir:
            print(f"cluster directory kept: {root}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report_cluster(res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, ...]]:
    n, t = res["nodes"], res["threshold"]
    seq: list[Sample] = res["seq"]
    load: list[Sample] = res["load"]
    a = [s.a for s in seq]
    whole = [s.whole for s in seq]
    la = [s.a for s in load]
    lwhole = [s.whole for s in load]
    rs = res["raft_submit"]
    td = res["tdec"]
    enc_rate, wrap_med = res["encrypt"]
    rot = res["rotations"]
    cpus = len(os.sched_getaffinity(0))

    print(f"\n=== {n} nodes, threshold {t} ===")
    print(f"cluster: SoftHSM2 tokens, loopback mTLS; setup {res['setup_s']:.1f} s; requests sent "
          f"to the leader first ({res['leader']}, {res['leader_url']}; still leader at the end: "
          f"{res['leader_end'] == res['leader']}); node processes left after `cluster down`: "
          f"{', '.join(res['left_behind']) or 'none'}")  # fmt: skip
    print(
        f"requests: {len(seq)} sequential (+5 warm-up, +1 template), {len(res['detail'])} "
        f"decomposed, {len(res['what_if'])} what-if, {len(rs)} for the Raft reference, "
        f"{len(load)} with {args.inflight} in flight; under the grant {len(res['gseq'])} "
        f"sequential (+5 warm-up), {len(res['gload'])} with {args.inflight} in flight "
        f"({len(res['failures'])} failed in all); {res['opened']} payloads opened with their "
        f"recovered DEK"
    )
    for f in res["failures"][:5]:
        print(f"  failed: {f}")

    cpu = res["cpu"]
    total_cpu = sum(cpu.values())
    print(f"CPU per decryption in the throughput phase ({args.inflight} in flight): "
          + ", ".join(f"{k}{' (leader)' if k == res['leader'] else ''} {v * 1000:.2f} ms"
                      for k, v in cpu.items())
          + f"; total {total_cpu * 1000:.2f} ms = at most {cpus / max(total_cpu, 1e-9):.0f} "
          f"decrypts/s on {cpus} CPUs")  # fmt: skip

    print("\nclient-side decomposition, sequential (p50 / p99):")
    for label, xs in (
        ("submit POST (app1; one Raft commit)", [s.submit for s in seq]),
        ("approve1 POST (alice)", [s.approve1 for s in seq]),
        ("approve2 POST (bob; request approved)", [s.approve2 for s in seq]),
        ("(a) approve2 returned -> DEK (recover_dek)", a),
        ("(b) whole request", whole),
    ):
        print(f"  {label:46} {ms(pct(xs, 50)):>10} / {ms(pct(xs, 99)):>10}")

    det = res["detail"]
    print(f"\nrecover_dek step by step ({len(det)} requests, median; same calls as the library):")
    steps = list(det[0])
    total = 0.0
    for k in steps:
        m = statistics.median(d[k] for d in det)
        total += m
        print(f"  {k:46} {ms(m):>10}")
    print(f"  {'sum of medians':46} {ms(total):>10}   (recover_dek p50 above: {ms(pct(a, 50))})")
    wi = res["what_if"]
    print(
        f"  what-if, NOT the library: the {t} partials asked concurrently over open "
        f"connections: approve2 -> DEK p50 {ms(pct(wi, 50))}, p99 {ms(pct(wi, 99))}"
    )

    gseq: list[GrantSample] = res["gseq"]
    gload: list[GrantSample] = res["gload"]
    gw = [s.whole for s in gseq]
    glw = [s.whole for s in gload]
    gcpu = res["gcpu"]
    gcpu_total = sum(gcpu.values())
    print(f"\nunder grant {GRANT_ID}, no approvals (app1 signs its own request_decrypt; "
          f"sequential, p50 / p99; the grant's uses at the end: {res['grant_uses']}):")  # fmt: skip
    for label, xs in (
        ("sign request_decrypt (client CPU, Ed25519)", [s.sign for s in gseq]),
        ("POST /v1/requests/signed (approved on apply)", [s.submit for s in gseq]),
        ("POST returned -> DEK (recover_dek)", [s.dek for s in gseq]),
        ("(g) submit -> DEK, whole", gw),
    ):
        print(f"  {label:46} {ms(pct(xs, 50)):>10} / {ms(pct(xs, 99)):>10}")
    print(f"  with {args.inflight} in flight: {res['gtput']:.1f} decrypts/s; submit -> DEK p50 "
          f"{ms(pct(glw, 50))}, p99 {ms(pct(glw, 99))}; CPU per decryption: "
          + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in gcpu.items())
          + f"; total {gcpu_total * 1000:.2f} ms = at most "
          f"{cpus / max(gcpu_total, 1e-9):.0f} decrypts/s on {cpus} CPUs")  # fmt: skip

    print(
        f"\nrotation of {ROT_KEY} ({len(rot)} rotations; each: rotate command, 2 approvals, "
        f"DKG by all {n} members; then an epoch advance):"
    )
    for k in rot[0]:
        xs = [r[k] for r in rot]
        print(f"  {k:46} median {ms(statistics.median(xs)):>11}  min {ms(min(xs)):>11}  "
              f"max {ms(max(xs)):>11}")  # fmt: skip

    print("\nreferences (same run):")
    print(f"  tdec {t}-of-{n}, library only, one process: {ms(td['total'])} (wrap "
          f"{ms(td['wrap'])}, partial_decrypt {ms(td['partial'])} each, verify_partial "
          f"{ms(td['verify'])} each, unwrap {ms(td['unwrap'])}); derive_threshold "
          f"{ms(td['derive_threshold'])}")  # fmt: skip
    print(
        f"  encrypt_file 4 KiB, one process: {enc_rate:.0f} encrypts/s "
        f"(tdec.wrap alone {ms(wrap_med)})"
    )
    print(
        f"  Raft commit via API: decrypt-request submit POST   p50 {ms(pct(rs, 50))}  "
        f"p99 {ms(pct(rs, 99))}"
    )

    lib_rate = 1 / (td["total"] - td["wrap"])
    rot_med = statistics.median(r["approved -> key view"] for r in rot)
    tag = f"{n}n/t{t}"
    return [
        (tag, "(a) approval->DEK p50, sequential", ms(pct(a, 50)), "<= 10 ms",
         verdict(pct(a, 50) <= 0.010),
         f"tdec lib {ms(td['total'] - td['wrap'])}; submit POST {ms(pct(rs, 50))}"),
        (tag, "(a) approval->DEK p99, sequential", ms(pct(a, 99)), "-", "",
         f"submit POST p99 {ms(pct(rs, 99))}"),
        (tag, "(b) whole request p50, sequential", ms(pct(whole, 50)), "-", "",
         f"what-if (a) p50 {ms(pct(wi, 50))}"),
        (tag, "(b) whole request p99, sequential", ms(pct(whole, 99)), "-", "", ""),
        (tag, f"decrypts/s, {args.inflight} in flight", f"{res['tput']:.1f}/s",
         ">= 300/s (2 cores)",
         verdict(res["tput"] >= 300) + ("" if cpus == 2 else f" ({cpus} CPUs here)"),
         f"tdec lib 1-core bound {lib_rate:.0f}/s; CPU bound {cpus / max(total_cpu, 1e-9):.0f}/s"),
        (tag, f"(a) p50 with {args.inflight} in flight", ms(pct(la, 50)), "-", "",
         f"p99 {ms(pct(la, 99))}"),
        (tag, f"(b) p50 with {args.inflight} in flight", ms(pct(lwhole, 50)), "-", "",
         f"p99 {ms(pct(lwhole, 99))}"),
        (tag, "(g) grant: submit->DEK p50, sequential", ms(pct(gw, 50)), "-", "",
         f"approvals: (b) p50 {ms(pct(whole, 50))}"),
        (tag, "(g) grant: submit->DEK p99, sequential", ms(pct(gw, 99)), "-", "",
         f"approvals: (b) p99 {ms(pct(whole, 99))}"),
        (tag, f"(g) grant: decrypts/s, {args.inflight} in flight", f"{res['gtput']:.1f}/s",
         ">= 300/s (2 cores)",
         verdict(res["gtput"] >= 300) + ("" if cpus == 2 else f" ({cpus} CPUs here)"),
         f"approvals: {res['tput']:.1f}/s; CPU bound {cpus / max(gcpu_total, 1e-9):.0f}/s"),
        (tag, f"(g) grant: submit->DEK p50, {args.inflight} in flight", ms(pct(glw, 50)), "-",
         "", f"p99 {ms(pct(glw, 99))}; approvals: (b) p50 {ms(pct(lwhole, 50))}"),
        (tag, "encrypts/s, 4 KiB, local", f"{enc_rate:.0f}/s", "-", "",
         f"tdec.wrap {ms(wrap_med)}"),
        (tag, "rotation: approved -> new key published", ms(rot_med), "-", "",
         f"Raft commit p50 {ms(pct(rs, 50))} x {2 * n} posts"),
        (tag, "Raft commit (submit POST) p50", ms(pct(rs, 50)), "-", "", "reference"),
    ]  # fmt: skip


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"machine: nproc {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
          f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.system()} {platform.release()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for r in results:
        print(f"  {r['nodes']}-node cluster: {r['grants']}")
    print(
        "  two ways to decrypt: (a)/(b) a client request decided by 2 approvals (alice, bob; "
        "signed\n  client-side before the timed loop; (a) starts when the 2nd approval's POST "
        "returns);\n  (g) a client-signed request under the grant, no approvals, timed from "
        "signing it to the DEK."
    )
    rows: list[tuple[str, ...]] = []
    for res in results:
        rows += report_cluster(res, args)
    header = ("cluster", "figure", "measured", "target", "", "reference")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    print("-" * (sum(widths) + 2 * (len(header) - 1)))
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100, help="sequential decrypts (default 100)")
    p.add_argument("--inflight", type=int, default=32, help="concurrent flows (default 32)")
    p.add_argument("--total", type=int, default=320, help="decrypts under load (default 320)")
    p.add_argument("--detail", type=int, default=30, help="decomposed decrypts (default 30)")
    p.add_argument("--rotations", type=int, default=3, help="rotations per cluster (default 3)")
    p.add_argument("--encrypts", type=int, default=2000, help="local encrypts (default 2000)")
    p.add_argument(
        "--nodes",
        type=int,
        choices=(3, 5),
        default=3,
        help="5: also measure a 5-node cluster (threshold 3) after the 3-node one",
    )
    p.add_argument("--also-5", action="store_true", help="same as --nodes 5")
    p.add_argument("--keep-dir", action="store_true", help="keep the cluster directories")
    args = p.parse_args()
    if not 2 <= args.requests <= 500 or not 1 <= args.inflight <= 128:
        p.error("--requests must be 2..500 and --inflight 1..128")
    if not args.inflight <= args.total <= 600:
        p.error("--total must be between --inflight and 600 (open requests per client: 1000)")
    if not 2 <= args.detail <= 200 or not 1 <= args.rotations <= 10 or args.encrypts < 10:
        p.error("--detail 2..200, --rotations 1..10, --encrypts >= 10")
    sizes = [3, 5] if args.also_5 or args.nodes == 5 else [3]
    results = [run_cluster(n, args) for n in sizes]
    report(results, args)
    bad = any(r["failures"] or r["left_behind"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
