"""The client library: mTLS to any node of the profile, failover, safe retries.

A write carries a request id chosen by the caller; retrying it (after a timeout,
a lost connection or a 503 while the cluster elects a leader) sends the very
same command, which the cluster executes at most once (the state machine
remembers each author's request ids). A timeout is therefore an unknown
outcome that a retry resolves.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp

from node import tlsctx
from node.client.profile import Profile

RETRY_STATUSES = frozenset({502, 503, 504})


class ApiError(Exception):
    """The cluster answered with an error (`status`, `code`, `message`)."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.status, self.code, self.message = status, code, message
        self.body = body or {}


class Unreachable(Exception):
    """No node of the profile answered in time."""


def new_request_id(prefix: str) -> str:
    """A fresh request id: reuse it on retry, never for another request."""
    return f"{prefix}-{secrets.token_hex(8)}"


class Client:
    """`async with Client(profile) as c: await c.get("/v1/keys")`."""

    def __init__(self, profile: Profile, *, timeout: float = 10.0, attempts: int = 6) -> None:
        self.profile = profile
        self.timeout = timeout
        self.attempts = attempts
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        ctx = tlsctx.client_context(self.profile.ca, self.profile.cert, self.profile.key)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=128),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled mTLS session (the profile's certificate), for calls to one node."""
        assert self._session is not None, "use `async with Client(...)`"
        return self._session

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        """One API call with failover across nodes; JSON (or bytes with `raw`)."""
        assert self._session is not None, "use `async with Client(...)`"
        nodes = self.profile.nodes
        last: Exception | None = None
        delay = 0.1
        for attempt in range(self.attempts * len(nodes)):
            base = nodes[(self._preferred + attempt) % len(nodes)]
            try:
                async with self._session.request(
                    method, base + path, json=json_body, params=params
                ) as resp:
                    if resp.status in RETRY_STATUSES:
                        last = _error(resp.status, await _body(resp))
                        self._preferred = (self._preferred + attempt + 1) % len(nodes)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                        continue
                    if resp.status >= 400:
                        raise _error(resp.status, await _body(resp))
                    self._preferred = (self._preferred + attempt) % len(nodes)
                    if raw:
                        return await resp.read(), dict(resp.headers)
                    return await resp.json()
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(min(delay, 0.2))
        if isinstance(last, ApiError):
            raise last
        raise Unreachable(f"no node answered ({last.__class__.__name__ if last else 'none'})")

    async def get(self, path: str, **params: str) -> Any:
        return await self.call("GET", path, params=params or None)

    async def post(self, path: str, body: Any) -> Any:
        return await self.call("POST", path, json_body=body)


async def _body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {"error": f"http_{resp.status}", "message": (await resp.text())[:200]}
    return data if isinstance(data, dict) else {"error": f"http_{resp.status}", "message": ""}


def _error(status: int, body: dict[str, Any]) -> ApiError:
    return ApiError(status, str(body.get("error", status)), str(body.get("message", "")), body)
