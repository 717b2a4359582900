"""The kv example: its pure state machine, and the real aiohttp app built by
`create_app` over a single-node cluster (real FileStorage, real mTLS listener)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import msgpack
import pytest
from aiohttp.test_utils import TestClient, TestServer

from consensus import certs
from consensus.examples.kv import (
    MAX_KEY,
    MAX_VALUE,
    BadCommand,
    KVConfig,
    KVStore,
    build_parser,
    cas_command,
    create_app,
    decode_result,
    main,
    put_command,
)


def test_store_put_cas_and_errors_are_results() -> None:
    s = KVStore()
    assert decode_result(s.apply(put_command("a", b"1"))) == ["ok"]
    assert decode_result(s.apply(cas_command("a", b"0", b"2"))) == ["cas", False, b"1"]
    assert decode_result(s.apply(cas_command("a", b"1", b"2"))) == ["cas", True, b"2"]
    assert decode_result(s.apply(cas_command("new", None, b"x"))) == ["cas", True, b"x"]
    for bad in (b"\xc1", msgpack.packb(["put", "k"]), msgpack.packb(["del", "k"]),
                msgpack.packb(["put", "", b"v"]), msgpack.packb(["put", "k", "str"]),
                msgpack.packb(["put", "k" * (MAX_KEY + 1), b"v"]),
                msgpack.packb(["put", "k", b"v" * (MAX_VALUE + 1)]),
                msgpack.packb(["adv", 0, "x"]), msgpack.packb({"op": "put"})):
        with pytest.raises(BadCommand):
            decode_result(s.apply(bad))
    assert s.data == {"a": b"2", "new": b"x"}


def test_store_snapshot_round_trip_and_rejects_garbage() -> None:
    s = KVStore()
    s.apply(put_command("k", b"v"))
    s.apply(msgpack.packb(["adv", 2, "127.0.0.1:9"]))
    r = KVStore()
    r.restore(s.snapshot())
    assert r.data == {"k": b"v"} and r.http == {2: "127.0.0.1:9"}
    for bad in (b"", msgpack.packb([2, {}, {}]), msgpack.packb([1, {"k": "str"}, {}]),
                msgpack.packb([1, {}, {"x": "a"}])):
        with pytest.raises(BadCommand):
            r.restore(bad)
    assert r.data == {"k": b"v"}  # a rejected snapshot changes nothing


def test_serve_refuses_a_non_loopback_http_address(tmp_path: Path) -> None:
    argv = ["serve", "--id", "1", "--dir", str(tmp_path), "--data", str(tmp_path / "d"),
            "--peers", "1=127.0.0.1:7001", "--http", "0.0.0.0:8001"]
    assert main(argv) == 2
    assert not (tmp_path / "d").exists()  # refused before opening anything


def test_cli_parses_peers_and_rejects_bad_ones() -> None:
    p = build_parser()
    args = p.parse_args(["serve", "--id", "2", "--dir", "d", "--data", "x", "--peers",
                         "1=127.0.0.1:7001,2=127.0.0.1:7002", "--http", "127.0.0.1:8002"])
    assert args.peers == {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002)}
    assert args.http == ("127.0.0.1", 8002)
    for peers in ("1=127.0.0.1", "x=127.0.0.1:1", "1=a:1,1=b:2", "1=h:99999"):
        with pytest.raises(SystemExit):
            p.parse_args(["serve", "--id", "1", "--dir", "d", "--data", "x", "--peers", peers,
                          "--http", "127.0.0.1:1"])


@pytest.fixture
async def client(tmp_path: Path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    certs.write_cluster(tmp_path / "certs", [1])
    cfg = KVConfig(
        node_id=1, peers={1: ("127.0.0.1", port)}, http_host="127.0.0.1", http_port=0,
        data_dir=tmp_path / "data", cert_dir=tmp_path / "certs", tick_ms=20,
    )
    async with TestClient(TestServer(create_app(cfg))) as c:
        for _ in range(500):  # a single voter elects itself after one election timeout
            async with c.get("/status") as r:
                if (await r.json())["role"] == "leader":
                    break
            await asyncio.sleep(0.02)
        yield c


async def test_put_get_cas_and_status(client: TestClient) -> None:
    async with client.get("/kv/missing") as r:
        assert r.status == 404
    async with client.put("/kv/k", data=b"\x00binary\xff") as r:
        assert r.status == 200
    async with client.get("/kv/k") as r:
        assert r.status == 200 and await r.read() == b"\x00binary\xff"
    async with client.post("/kv/c/cas", json={"expected": None, "new": "1"}) as r:
        assert r.status == 200
    async with client.post("/kv/c/cas", json={"expected": "0", "new": "2"}) as r:
        assert r.status == 409 and await r.json() == {"current": "1"}
    async with client.post("/kv/c/cas", json={"expected": "1", "new": "2"}) as r:
        assert r.status == 200
    async with client.get("/status") as r:
        st = await r.json()
        assert st["id"] == 1 and st["leader"] == 1 and st["keys"] == 2
        assert st["applied"] == st["commit"]


async def test_exactly_once_headers(client: TestClient) -> None:
    h = {"X-Client-Id": "cli-1", "X-Request-Seq": "1"}
    async with client.put("/kv/x", data=b"first", headers=h) as r:
        assert r.status == 200
    async with client.put("/kv/x", data=b"second") as r:
        assert r.status == 200
    async with client.put("/kv/x", data=b"first", headers=h) as r:  # a retry: not re-applied
        assert r.status == 200
    async with client.get("/kv/x") as r:
        assert await r.read() == b"second"
    async with client.put("/kv/x", data=b"other", headers=h) as r:  # same seq, other command
        assert r.status == 409
    async with client.put("/kv/x", data=b"b", headers={**h, "X-Request-Seq": "2"}) as r:
        assert r.status == 200
    async with client.put("/kv/x", data=b"first", headers=h) as r:  # older than the last
        assert r.status == 409


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("PUT", "/kv/" + "k" * (MAX_KEY + 1), {"data": b"v"}, 400),
        ("PUT", "/kv/big", {"data": b"v" * (MAX_VALUE + 1)}, 413),
        ("PUT", "/kv/huge", {"data": b"v" * (MAX_VALUE + 4096)}, 413),
        ("PUT", "/kv/k", {"data": b"v", "headers": {"X-Client-Id": "c"}}, 400),
        ("PUT", "/kv/k", {"data": b"v", "headers": {"X-Client-Id": "c", "X-Request-Seq": "0"}},
         400),
        ("PUT", "/kv/k", {"data": b"v", "headers": {"X-Client-Id": "c" * 65,
                                                    "X-Request-Seq": "1"}}, 400),
        ("POST", "/kv/k/cas", {"data": b"not json"}, 400),
        ("POST", "/kv/k/cas", {"json": {"new": "x"}}, 400),
        ("POST", "/kv/k/cas", {"json": {"expected": None, "new": None}}, 400),
        ("POST", "/kv/k/cas", {"json": {"expected": 5, "new": "x"}}, 400),
    ],
)
async def test_bad_requests_get_clear_4xx(
    client: TestClient, method: str, path: str, kwargs: dict, status: int
) -> None:
    async with client.request(method, path, **kwargs) as r:
        assert r.status == status
        if status == 400:
            assert "error" in await r.json()
    async with client.get("/status") as r:
        assert (await r.json())["keys"] == 0  # nothing was written
