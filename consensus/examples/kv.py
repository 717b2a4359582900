"""A small replicated key-value server on the consensus runner.

    python -m consensus.examples.kv certs --dir D --nodes 3
    python -m consensus.examples.kv serve --id 1 --dir D --data DATA \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --http 127.0.0.1:8001

Peer traffic is Raft over mutual TLS on the `--peers` addresses; the client API
is plain HTTP on `--http` (meant for loopback):

    GET  /kv/<key>        200 + value body, or 404 (linearizable: ReadIndex)
    PUT  /kv/<key>        body = value -> 200
    POST /kv/<key>/cas    {"expected": str|null, "new": str} -> 200, or 409 {"current": ...}
    GET  /status          JSON: id, leader, term, commit, applied, role

A node that is not the leader serves a request through the leader (it learns
the leader's HTTP address from the replicated state: every new leader writes
its own address into the log). With no leader it answers 503 {"leader": null}.
Optional `X-Client-Id` and `X-Request-Seq` headers make a retried write
exactly-once (see `consensus.session`): one request in flight per client id,
sequence numbers increasing, a retry reuses the sequence number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from aiohttp import web

from consensus import ratelog
from consensus.codec import DEFAULT_MAX_FRAME
from consensus.driver import (
    Driver,
    DriverConfig,
    NodeStopped,
    NotLeader,
    Overloaded,
    ProposalDropped,
    open_node,
    write_cluster_certs,
)
from consensus.gate import raise_nofile_limit
from consensus.session import MAX_CLIENT_ID, MAX_SEQ, SessionError
from consensus.storage import StorageError

log = logging.getLogger("consensus.examples.kv")

MAX_KEY = 256  # bytes of UTF-8
MAX_VALUE = 64 * 1024
MAX_ADDR = 128
_SNAPSHOT_VERSION = 1


class BadCommand(ValueError):
    """A client request or a log command that fails validation."""


class ValueTooLarge(BadCommand):
    """A value above MAX_VALUE (HTTP 413)."""


# --------------------------------------------------------------------------
# The replicated state machine (pure, deterministic)
# --------------------------------------------------------------------------


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY:
        raise BadCommand(f"key must be 1..{MAX_KEY} bytes of UTF-8")
    if not key.isprintable():
        raise BadCommand("key must be printable")
    return key


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise BadCommand("value must be bytes")
    if len(value) > MAX_VALUE:
        raise ValueTooLarge(f"value must be at most {MAX_VALUE} bytes")
    return value


def put_command(key: str, value: bytes) -> bytes:
    return msgpack.packb(["put", _check_key(key), _check_value(value)])


def cas_command(key: str, expected: bytes | None, new: bytes) -> bytes:
    if expected is not None:
        _check_value(expected)
    return msgpack.packb(["cas", _check_key(key), expected, _check_value(new)])


def advertise_command(node_id: int, http_addr: str) -> bytes:
    return msgpack.packb(["adv", node_id, http_addr])


@dataclass(frozen=True, slots=True)
class CasResult:
    ok: bool
    current: bytes | None


class KVStore:
    """Keys to values, plus each leader's advertised HTTP address.

    Results are msgpack: `["ok"]`, `["cas", ok, current]`, or `["err", message]`
    for a command that fails validation (identically on every replica).
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.http: dict[int, str] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def apply(self, command: bytes) -> bytes:
        try:
            return self._apply(command)
        except BadCommand as exc:
            return msgpack.packb(["err", str(exc)])

    def _apply(self, command: bytes) -> bytes:
        try:
            cmd = msgpack.unpackb(command, raw=False, strict_map_key=True)
        except Exception:
            raise BadCommand("undecodable command") from None
        if not isinstance(cmd, list) or not cmd:
            raise BadCommand("command must be a non-empty list")
        op = cmd[0]
        if op == "put" and len(cmd) == 3:
            self.data[_check_key(cmd[1])] = _check_value(cmd[2])
            return msgpack.packb(["ok"])
        if op == "cas" and len(cmd) == 4:
            key, expected, new = _check_key(cmd[1]), cmd[2], _check_value(cmd[3])
            if expected is not None:
                _check_value(expected)
            current = self.data.get(key)
            if current != expected:
                return msgpack.packb(["cas", False, current])
            self.data[key] = new
            return msgpack.packb(["cas", True, new])
        if op == "adv" and len(cmd) == 3:
            node_id, addr = cmd[1], cmd[2]
            if type(node_id) is not int or node_id < 1:
                raise BadCommand("node id must be a positive int")
            if not isinstance(addr, str) or not 0 < len(addr) <= MAX_ADDR:
                raise BadCommand("bad http address")
            self.http[node_id] = addr
            return msgpack.packb(["ok"])
        raise BadCommand("unknown command")

    def snapshot(self) -> bytes:
        return msgpack.packb([_SNAPSHOT_VERSION, self.data, self.http])

    def restore(self, data: bytes) -> None:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            raise BadCommand("undecodable kv snapshot") from None
        if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == _SNAPSHOT_VERSION):
            raise BadCommand("not a version-1 kv snapshot")
        kv, http = obj[1], obj[2]
        if not (isinstance(kv, dict) and isinstance(http, dict)):
            raise BadCommand("bad kv snapshot")
        for k, v in kv.items():
            _check_key(k)
            _check_value(v)
        for n, a in http.items():
            if type(n) is not int or not isinstance(a, str) or len(a) > MAX_ADDR:
                raise BadCommand("bad kv snapshot")
        self.data, self.http = kv, http


def decode_result(result: bytes) -> list[Any]:
    obj = msgpack.unpackb(result, raw=False)
    if isinstance(obj, list) and obj and obj[0] == "err":
        raise BadCommand(str(obj[1]))
    return obj


# --------------------------------------------------------------------------
# The HTTP application
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class KVConfig:
    node_id: int
    peers: dict[int, tuple[str, int]]
    http_host: str
    http_port: int
    data_dir: Path
    cert_dir: Path
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_every: int = 5000
    max_frame: int = DEFAULT_MAX_FRAME
    request_timeout: float = 5.0
    forward_timeout: float = 6.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_addr(self) -> str:
        return f"{self.http_host}:{self.http_port}"


class NoLeader(Exception):
    """No known leader (or its HTTP address is unknown): answer 503."""

    def __init__(self, leader: int | None) -> None:
        super().__init__(f"no reachable leader (leader={leader})")
        self.leader = leader


@dataclass(frozen=True, slots=True)
class Session:
    client_id: bytes = b""
    seq: int = 0


CONFIG = web.AppKey("config", KVConfig)
STORE = web.AppKey("store", KVStore)
NODE = web.AppKey("node", Driver)
HTTP = web.AppKey("http", aiohttp.ClientSession)

FORWARDED = "X-Forwarded-By"


def _session_from(request: web.Request) -> Session:
    cid, seq = request.headers.get("X-Client-Id"), request.headers.get("X-Request-Seq")
    if cid is None and seq is None:
        return Session()
    if cid is None or seq is None:
        raise BadCommand("X-Client-Id and X-Request-Seq go together")
    raw = cid.encode()
    if not raw or len(raw) > MAX_CLIENT_ID or not cid.isascii() or not cid.isprintable():
        raise BadCommand(f"X-Client-Id must be 1..{MAX_CLIENT_ID} printable ASCII characters")
    if not seq.isdigit() or not 1 <= int(seq) <= MAX_SEQ:
        raise BadCommand("X-Request-Seq must be an integer >= 1")
    return Session(raw, int(seq))


def _key_from(request: web.Request) -> str:
    return _check_key(request.match_info["key"])


async def _write(request: web.Request, command: bytes) -> list[Any]:
    node = request.app[NODE]
    s = _session_from(request)
    cfg = request.app[CONFIG]
    result = await node.propose(
        command, client_id=s.client_id, seq=s.seq, timeout=cfg.request_timeout
    )
    return decode_result(result)


async def handle_get(request: web.Request) -> web.StreamResponse:
    key = _key_from(request)
    await request.app[NODE].read_index(timeout=request.app[CONFIG].request_timeout)
    value = request.app[STORE].get(key)
    if value is None:
        raise web.HTTPNotFound(text="not found\n")
    return web.Response(body=value, content_type="application/octet-stream")


async def handle_put(request: web.Request) -> web.StreamResponse:
    key = _key_from(request)
    value = await request.read()
    await _write(request, put_command(key, _check_value(value)))
    return web.json_response({"ok": True})


def _json_value(obj: dict[str, Any], name: str) -> bytes | None:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadCommand(f"{name!r} must be a string or null")
    return _check_value(v.encode())


def _show(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


async def handle_cas(request: web.Request) -> web.StreamResponse:
    key = _key_from(request)
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadCommand("body must be JSON") from None
    if not isinstance(body, dict) or set(body) != {"expected", "new"}:
        raise BadCommand('body must be {"expected": value or null, "new": value}')
    expected, new = _json_value(body, "expected"), _json_value(body, "new")
    if new is None:
        raise BadCommand('"new" must be a string')
    res = await _write(request, cas_command(key, expected, new))
    if not res[1]:
        return web.json_response({"current": _show(res[2])}, status=409)
    return web.json_response({"ok": True})


async def handle_status(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    st = node.status()
    store = request.app[STORE]
    http = {str(k): v for k, v in store.http.items()}
    return web.json_response(
        {**st.as_dict(), "keys": len(store.data), "http": http, "stats": dict(node.stats)},
        status=503 if st.error else 200,
    )


def _error(status: int, **body: Any) -> web.Response:
    return web.json_response(body, status=status)


async def _forward(request: web.Request, leader: int | None) -> web.StreamResponse:
    """Serve the request through the leader's HTTP API (one hop, never a loop)."""
    if not leader or FORWARDED in request.headers:
        raise NoLeader(leader or None)
    store = request.app[STORE]
    if leader not in store.http:
        # The leader's advertisement may be committed but not applied here yet.
        with contextlib.suppress(NotLeader, TimeoutError, ProposalDropped, Overloaded):
            await request.app[NODE].read_index(timeout=request.app[CONFIG].request_timeout)
    addr = store.http.get(leader)
    if addr is None:
        raise NoLeader(leader)
    headers = {FORWARDED: str(request.app[CONFIG].node_id)}
    for h in ("X-Client-Id", "X-Request-Seq", "Content-Type"):
        if h in request.headers:
            headers[h] = request.headers[h]
    body = await request.read()
    try:
        async with request.app[HTTP].request(
            request.method, f"http://{addr}{request.rel_url}", data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            return web.Response(
                status=resp.status, body=payload, content_type=resp.content_type
            )
    except (aiohttp.ClientError, TimeoutError):
        raise NoLeader(leader) from None


@web.middleware  # required in aiohttp 3.x: undecorated functions are old-style factories
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Translate domain errors into HTTP answers; NotLeader becomes a forward."""
    failure = request.app[NODE].failure
    if failure is not None and request.path != "/status":
        return _error(503, leader=None, error=f"node failed: {failure}")
    try:
        try:
            return await handler(request)
        except NotLeader as exc:
            return await _forward(request, exc.leader_id)
    except NoLeader as exc:
        return _error(503, leader=exc.leader, error="no leader")
    except ValueTooLarge as exc:
        return _error(413, error=str(exc))
    except BadCommand as exc:
        return _error(400, error=str(exc))
    except SessionError as exc:
        return _error(409, error=str(exc))
    except Overloaded as exc:
        return _error(503, leader=request.app[NODE].status().leader or None, error=str(exc))
    except (TimeoutError, ProposalDropped, NodeStopped):
        return _error(504, error="timed out: outcome unknown; retry with the same X-Request-Seq")


async def _http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=app[CONFIG].forward_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[HTTP] = session
        yield


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    store = KVStore()
    app[STORE] = store
    node = await open_node(
        node_id=cfg.node_id,
        peers=cfg.peers,
        data_dir=cfg.data_dir,
        cert_dir=cfg.cert_dir,
        machine=store,
        max_frame=cfg.max_frame,
        config=DriverConfig(
            tick_interval=cfg.tick_ms / 1000,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=cfg.heartbeat_ticks,
            snapshot_every=cfg.snapshot_every,
            **cfg.extra,
        ),
    )
    app[NODE] = node
    advertiser = asyncio.create_task(_advertise(node, store, cfg))
    try:
        yield
    finally:
        advertiser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await advertiser
        await node.stop()


async def _advertise(node: Driver, store: KVStore, cfg: KVConfig) -> None:
    """While leader, make sure the log holds this node's HTTP address (for forwarding)."""
    while True:
        await asyncio.sleep(cfg.tick_ms / 1000)
        st = node.status()
        if st.leader != cfg.node_id or store.http.get(cfg.node_id) == cfg.http_addr:
            continue
        try:
            await node.propose(
                advertise_command(cfg.node_id, cfg.http_addr), timeout=cfg.request_timeout
            )
        except Exception as exc:  # retried on the next round
            log.info("advertise failed: %s", exc.__class__.__name__)


def create_app(config: KVConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_VALUE + 1024, middlewares=[errors_middleware])
    app[CONFIG] = config
    app.cleanup_ctx.extend([_http_client_ctx, _node_ctx])
    app.router.add_routes(
        [
            web.get("/kv/{key}", handle_get),
            web.put("/kv/{key}", handle_put),
            web.post("/kv/{key}/cas", handle_cas),
            web.get("/status", handle_status),
        ]
    )
    return app


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _peers(text: str) -> dict[int, tuple[str, int]]:
    peers: dict[int, tuple[str, int]] = {}
    for item in text.split(","):
        nid, sep, addr = item.partition("=")
        if not sep or not nid.isdigit() or int(nid) < 1 or int(nid) in peers:
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT,..., got {item!r}")
        peers[int(nid)] = _host_port(addr)
    return peers


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m consensus.examples.kv",
        description="Replicated key-value server on the project's Raft runner.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("certs", help="write a CA and each node's mTLS material")
    c.add_argument("--dir", type=Path, required=True, help="output directory")
    c.add_argument("--nodes", type=int, required=True, help="number of nodes (ids 1..N)")
    s = sub.add_parser("serve", help="run one node in the foreground")
    s.add_argument("--id", type=int, required=True, help="this node's id (a key of --peers)")
    s.add_argument("--dir", type=Path, required=True, help="directory written by `certs`")
    s.add_argument("--data", type=Path, required=True, help="this node's data directory")
    s.add_argument("--peers", type=_peers, required=True, help="ID=HOST:PORT,... (Raft, mTLS)")
    s.add_argument("--http", type=_host_port, required=True, help="client API HOST:PORT")
    s.add_argument("--tick-ms", type=int, default=50, help="Raft tick (default 50 ms)")
    s.add_argument("--election-ticks", type=int, default=10, help="election timeout in ticks")
    s.add_argument("--snapshot-every", type=int, default=5000, help="entries between snapshots")
    s.add_argument(
        "--max-frame",
        type=int,
        default=DEFAULT_MAX_FRAME,
        help="largest peer frame in bytes (snapshots stream in chunks below it)",
    )
    s.add_argument(
        "--inline-io", action="store_true", help="fsync on the event loop, not in a thread"
    )
    s.add_argument(
        "--no-early-send", action="store_true", help="leader fsyncs before it replicates"
    )
    s.add_argument(
        "--sync-commit-index",
        action="store_true",
        help="leader fsyncs its commit index after each batch (default: deferred, as etcd)",
    )
    s.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "certs":
        if not 1 <= args.nodes <= 64:
            print("--nodes must be 1..64", file=sys.stderr)
            return 2
        write_cluster_certs(args.dir, list(range(1, args.nodes + 1)))
        print(f"wrote CA and {args.nodes} node certificates to {args.dir}")
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if args.id not in args.peers:
        print(f"--id {args.id} is not in --peers", file=sys.stderr)
        return 2
    if not _is_loopback(args.http[0]):
        print("--http must be a loopback address: the client API is plain HTTP", file=sys.stderr)
        return 2
    if not 64 * 1024 <= args.max_frame <= DEFAULT_MAX_FRAME:
        print(f"--max-frame must be 65536..{DEFAULT_MAX_FRAME}", file=sys.stderr)
        return 2
    if not 1 <= args.tick_ms <= 10_000 or not 2 <= args.election_ticks <= 1000:
        print("--tick-ms must be 1..10000 and --election-ticks 2..1000", file=sys.stderr)
        return 2
    cfg = KVConfig(
        node_id=args.id,
        peers=args.peers,
        http_host=args.http[0],
        http_port=args.http[1],
        data_dir=args.data,
        cert_dir=args.dir,
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        snapshot_every=max(1, args.snapshot_every),
        max_frame=args.max_frame,
        extra={
            **({"leader_io_thread": False} if args.inline_io else {}),
            **({"leader_early_send": False} if args.no_early_send else {}),
            **({"defer_commit_fsync": False} if args.sync_commit_index else {}),
        },
    )
    ratelog.install()  # no peer can make this process write unbounded log lines
    raise_nofile_limit()  # the handshake gate, not the fd limit, bounds connections
    return asyncio.run(serve(cfg))


async def serve(cfg: KVConfig) -> int:
    """Run the node until SIGINT/SIGTERM (exit 0) or until it fail-stops (exit 1).

    A node whose storage failed stops serving at once (the runner closes its
    Raft transport; HTTP answers 503) and the process exits non-zero, so that
    a supervisor restarts it; a restart on a disk that is still full is
    refused with a clear message (exit 1 as well).
    """
    runner = web.AppRunner(create_app(cfg), access_log=None, handle_signals=False)
    try:
        await runner.setup()
    except StorageError as exc:
        print(f"kv node {cfg.node_id}: cannot start: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        return 1
    node = runner.app[NODE]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        site = web.TCPSite(runner, cfg.http_host, cfg.http_port)
        await site.start()
        failed = asyncio.ensure_future(node.wait_failed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for t in (failed, stopped):
            t.cancel()
        if node.failure is not None:
            print(
                f"kv node {cfg.node_id}: failed and stopped serving: {node.failure!r}; "
                f"exiting for a supervisor to restart it",
                file=sys.stderr,
            )
            code = 1
    finally:
        await runner.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
