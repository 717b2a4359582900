"""HTTP routes for metrics (registered by `node.server.app.create_app`)."""

from __future__ import annotations

from aiohttp import web


def register(app: web.Application) -> None:
    """Add this module's routes (and middlewares, if any) to the node's app."""
