"""Benchmark: the project's Raft (kv example) against etcd, same workload, one run.

Starts a 3-node cluster of `python -m consensus.examples.kv` and a 3-member
etcd cluster on loopback (data in a temporary directory, both with fsync on
and both with mutual TLS between peers), then drives both through HTTP with
aiohttp, always at the current leader:

- sequential PUT latency (p50, p99), 100-byte values;
- PUT throughput with 16 and 64 requests in flight.

etcd is reached through its v3 JSON gateway (POST /v3/kv/put, base64 key and
value). It prints both sides and the ratios in one table.

    .venv/bin/python benchmarks/consensus_vs_etcd.py [--seq 600] [--ops 2000] [--rounds 3]
        [--profile DIR]   # run the kv nodes under cProfile, print the leader's top functions
        [--kv-arg=FLAG]   # pass FLAG to every kv node (e.g. --kv-arg=--sync-commit-index)

Both clusters stay up for the whole run and the phases are interleaved
(kv, etcd, etcd, kv, ...) over the rounds, so that load from other processes
on the machine hits both sides alike; latencies are pooled over the rounds,
throughput is the median of the rounds.

If `etcd` is missing, the script installs Debian's etcd-server with apt-get.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
VALUE = b"v" * 100


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def ensure_etcd() -> str:
    path = shutil.which("etcd")
    if path:
        return path
    print("etcd not found: installing Debian's etcd-server with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)
    path = shutil.which("etcd")
    if not path:
        sys.exit("etcd is still missing after apt-get install etcd-server")
    return path


# --- etcd peer TLS material (ECDSA P-256, SAN 127.0.0.1) -------------------------


def _write_pem(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def etcd_certs(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-etcd-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pem(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_pem(directory / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write_pem(
            directory / f"{name}-key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


# --- clusters --------------------------------------------------------------------


class Cluster:
    """Three child processes; `put(session, key)` targets the current leader."""

    name = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leader_url = ""

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        out = open(self.tmp / log_name, "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        )
        out.close()


class KVCluster(Cluster):
    name = "kv (this project)"

    def start(self, profile_dir: Path | None, extra: list[str] | None = None) -> None:
        d = self.tmp / "kv"
        subprocess.run(
            [PY, "-m", "consensus.examples.kv", "certs", "--dir", str(d / "certs"), "--nodes", "3"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        ports = free_ports(6)
        peers = ",".join(f"{i}=127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3))
        self.http = {i: f"http://127.0.0.1:{ports[2 + i]}" for i in (1, 2, 3)}
        for i in (1, 2, 3):
            pre = [PY]
            if profile_dir is not None:
                pre += ["-m", "cProfile", "-o", str(profile_dir / f"kv-node{i}.prof")]
            self._spawn(
                [*pre, "-m", "consensus.examples.kv", "serve", "--id", str(i),
                 "--dir", str(d / "certs"), "--data", str(d / f"data{i}"),
                 "--peers", peers, "--http", f"127.0.0.1:{ports[2 + i]}", *(extra or [])],
                f"kv{i}.log",
            )

    async def find_leader(self, s: aiohttp.ClientSession) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for url in self.http.values():
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{url}/status") as r:
                        st = await r.json()
                        leader = st.get("leader") or 0
                        if leader and st["id"] == leader:
                            self.leader_url = self.http[leader]
                            async with s.put(f"{self.leader_url}/kv/warmup", data=b"x") as w:
                                if w.status == 200:
                                    return leader
            await asyncio.sleep(0.2)
        raise RuntimeError("kv cluster elected no leader within 30 s")

    async def put(self, s: aiohttp.ClientSession, key: str) -> None:
        async with s.put(f"{self.leader_url}/kv/{key}", data=VALUE) as r:
            if r.status != 200:
                raise RuntimeError(f"kv put failed: {r.status} {await r.text()}")
            await r.read()


class EtcdCluster(Cluster):
    name = "etcd " + "(Debian etcd-server)"

    def start(self, etcd: str) -> None:
        d = self.tmp / "etcd"
        names = ["e1", "e2", "e3"]
        etcd_certs(d / "tls", names)
        ports = free_ports(6)
        peer = {n: f"https://127.0.0.1:{ports[i]}" for i, n in enumerate(names)}
        self.client = {n: f"http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names)}
        initial = ",".join(f"{n}={u}" for n, u in peer.items())
        env = {**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")}
        for n in names:
            self._spawn(
                [etcd, "--name", n, "--data-dir", str(d / n),
                 "--listen-peer-urls", peer[n], "--initial-advertise-peer-urls", peer[n],
                 "--listen-client-urls", self.client[n], "--advertise-client-urls", self.client[n],
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "bench",
                 "--peer-cert-file", str(d / "tls" / f"{n}.pem"),
                 "--peer-key-file", str(d / "tls" / f"{n}-key.pem"),
                 "--peer-trusted-ca-file", str(d / "tls" / "ca.pem"),
                 "--peer-client-cert-auth",
                 "--logger", "zap", "--log-level", "warn"],
                f"{n}.log",
                env=env,
            )

    async def find_leader(self, s: aiohttp.ClientSession) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for url in self.client.values():
                with contextlib.suppress(aiohttp.ClientError, OSError, KeyError):
                    async with s.post(f"{url}/v3/maintenance/status", json={}) as r:
                        st = await r.json()
                        if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                            self.leader_url = url
                            await self.put(s, "warmup")
                            return 1
            await asyncio.sleep(0.2)
        raise RuntimeError("etcd elected no leader within 30 s")

    async def put(self, s: aiohttp.ClientSession, key: str) -> None:
        body = {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(VALUE).decode(),
        }
        async with s.post(f"{self.leader_url}/v3/kv/put", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"etcd put failed: {r.status} {await r.text()}")
            await r.read()


# --- workload --------------------------------------------------------------------


async def sequential(put: Callable[[str], Awaitable[None]], n: int) -> list[float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        await put(f"seq{i}")
        lat.append(time.perf_counter() - t)
    return lat


async def concurrent(put: Callable[[str], Awaitable[None]], inflight: int, total: int) -> float:
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await put(f"c{inflight}-{i}")

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return total / (time.perf_counter() - t)


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


async def measure(
    clusters: list[Cluster], seq_n: int, ops: int, rounds: int
) -> list[dict[str, float]]:
    """Interleave the clusters phase by phase, `rounds` times, so that load from
    anything else on the machine hits both sides alike. Latencies are pooled;
    throughput is the median over rounds."""
    conn = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    lat: list[list[float]] = [[] for _ in clusters]
    tput: list[dict[int, list[float]]] = [{16: [], 64: []} for _ in clusters]
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        puts = []
        for c in clusters:
            await c.find_leader(s)

            async def put(key: str, c: Cluster = c) -> None:
                await c.put(s, key)

            await sequential(put, 50)  # warm up connections and code paths
            puts.append(put)
        for r in range(rounds):
            order = list(range(len(clusters)))
            if r % 2:
                order.reverse()
            for i in order:
                lat[i] += await sequential(puts[i], seq_n // rounds)
            for inflight in (16, 64):
                for i in order:
                    tput[i][inflight].append(await concurrent(puts[i], inflight, ops))
    return [
        {
            "p50_ms": pct(lat[i], 50) * 1000,
            "p99_ms": pct(lat[i], 99) * 1000,
            "tput16": statistics.median(tput[i][16]),
            "tput64": statistics.median(tput[i][64]),
        }
        for i in range(len(clusters))
    ]


def print_table(kv: dict[str, float], etcd: dict[str, float]) -> None:
    rows = [
        ("sequential put p50 (ms)", "p50_ms", "lower is better; target kv/etcd <= 1.5"),
        ("sequential put p99 (ms)", "p99_ms", "lower is better"),
        ("put throughput, 16 in flight (ops/s)", "tput16", "higher is better"),
        ("put throughput, 64 in flight (ops/s)", "tput64", "higher is better; target >= 0.5"),
    ]
    print(f"\n{'metric':40} {'kv':>10} {'etcd':>10} {'kv/etcd':>8}  note")
    print("-" * 100)
    for label, key, note in rows:
        ratio = kv[key] / etcd[key] if etcd[key] else float("nan")
        print(f"{label:40} {kv[key]:10.2f} {etcd[key]:10.2f} {ratio:8.2f}  {note}")


def print_profile(profile_dir: Path, leader_url: str, http: dict[int, str]) -> None:
    leader = next((i for i, u in http.items() if u == leader_url), None)
    path = profile_dir / f"kv-node{leader}.prof"
    if leader is None or not path.exists():
        print("no profile for the leader was written")
        return
    print(f"\ncProfile of the kv leader (node {leader}), top 25 by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


async def amain(args: argparse.Namespace) -> None:
    etcd_bin = ensure_etcd()
    with tempfile.TemporaryDirectory(prefix="bench-raft-") as tmpname:
        tmp = Path(tmpname)
        profile_dir = args.profile.resolve() if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        kv, etcd = KVCluster(tmp), EtcdCluster(tmp)
        try:
            kv.start(profile_dir, args.kv_arg)
            etcd.start(etcd_bin)
            print(
                f"measuring kv and etcd, interleaved in {args.rounds} rounds: {args.seq} "
                f"sequential puts, {args.ops} puts per round at 16 and at 64 in flight"
            )
            kv_res, etcd_res = await measure([kv, etcd], args.seq, args.ops, args.rounds)
        except BaseException:
            for c in (kv, etcd):
                for log in sorted(c.tmp.glob("*.log")):
                    print(f"--- {log.name} (tail)", file=sys.stderr)
                    print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
            raise
        finally:
            kv.stop()
            etcd.stop()
        print_table(kv_res, etcd_res)
        if profile_dir:
            print_profile(profile_dir, kv.leader_url, kv.http)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seq", type=int, default=600, help="sequential puts measured (total)")
    p.add_argument("--ops", type=int, default=2000, help="puts per round and concurrency level")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    p.add_argument("--profile", type=Path, help="cProfile the kv nodes into this directory")
    p.add_argument(
        "--kv-arg",
        action="append",
        default=[],
        help="extra flag for every kv node's `serve` (repeatable)",
    )
    args = p.parse_args()
    if not 10 <= args.seq <= 100_000 or not 100 <= args.ops <= 1_000_000:
        p.error("--seq must be 10..100000 and --ops 100..1000000")
    if not 1 <= args.rounds <= 20 or args.seq < 2 * args.rounds:
        p.error("--rounds must be 1..20 and --seq at least 2 per round")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
