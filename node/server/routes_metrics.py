"""HTTP routes for metrics (registered by `node.server.app.create_app`).

`GET /metrics`: this node's metrics in the Prometheus text format (or
OpenMetrics, if the scraper asks for it), for roles operator, auditor and node.
The metrics are described in docs/metrics.md; `node/server/metrics.py` builds
them in a registry of this app's own.

A middleware counts and times every request by the route's path template. It
is put first in the app's middleware list (outermost), so that it sees the
status the `errors` middleware turns exceptions into, including its 503 when
the node fail-stopped. `register` runs inside `create_app`, before the app is
frozen (`Application.pre_freeze` freezes the middleware list when a runner is
set up), so the list may still be changed there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from node.server.app import RUNTIME, _require
from node.server.metrics import UNMATCHED_ROUTE, NodeMetrics

METRICS = web.AppKey("custody.metrics", NodeMetrics)
METRICS_ROLES = frozenset({"operator", "auditor", "node"})


def _route(request: web.Request) -> str:
    """The matched route's path template (`/v1/requests/{ref}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def http_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    metrics.ensure_slot()
    start = time.perf_counter()
    status = "500"
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    except asyncio.CancelledError:
        status = "cancelled"  # the client went away before an answer
        raise
    finally:
        metrics.observe_http(_route(request), request.method, status,
                             time.perf_counter() - start)  # fmt: skip


async def get_metrics(request: web.Request) -> web.StreamResponse:
    _require(request, METRICS_ROLES)
    metrics = request.app[METRICS]
    metrics.ensure_slot()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})


def register(app: web.Application) -> None:
    """Add this module's routes (and middlewares, if any) to the node's app."""
    app[METRICS] = NodeMetrics(app[RUNTIME])
    app.middlewares.insert(0, http_metrics)
    app.router.add_get("/metrics", get_metrics)
