"""HTTP routes for share repair and proactive refresh (registered by `create_app`).

`POST /v1/peer/repair`, `POST /v1/peer/refresh`: a member's sealed pieces, sums or
sub-shares for the current run (members only; the sender must be the certificate's
member). `GET /v1/repairs`: every member's latest repair and its progress per version;
`GET /v1/refresh`: the latest refresh (operators, approvers, auditors).
An operator starts a refresh with a signed `start_refresh` command through
`POST /v1/commands`, like the other operator commands.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.protocols.wire import RefreshDelivery, RepairDelivery
from node.server.app import AUDIT_ROLES, MSGPACK, RUNTIME, ApiError, _require
from node.server.repair import RepairRefused
from node.state.model import Refresh, Repair


async def _deliver(request: web.Request, duty: str, decode: Any, unknown: str) -> web.Response:
    """A sealed message for one of this member's live runs (repair or refresh): 404 while
    no such run is under way here (the sender retries), 409 when refused for good."""
    ident = _require(request, {"node"})
    delivery = decode(await request.read())
    try:
        await getattr(request.app[RUNTIME], duty).deliver(delivery, ident.name)
    except LookupError as exc:
        raise ApiError(404, unknown, str(exc)) from None
    except RepairRefused as exc:
        raise ApiError(409, "refused", str(exc)) from None
    return web.Response(body=b"", content_type=MSGPACK)


async def peer_repair(request: web.Request) -> web.StreamResponse:
    return await _deliver(request, "repair", RepairDelivery.decode, "unknown_repair")


async def peer_refresh(request: web.Request) -> web.StreamResponse:
    return await _deliver(request, "refresh", RefreshDelivery.decode, "unknown_refresh")


def refresh_view(r: Refresh) -> dict[str, Any]:
    return {
        "request": r.request, "state": r.state.value, "started_epoch": r.started_epoch,
        "finished_epoch": r.finished_epoch, "run": r.run, "participants": list(r.participants),
        "posted": sorted(r.posts), "recorded": list(r.recorded), "failed_runs": r.failed_runs,
        "failure": r.failure, "done": r.done, "total": len(r.items),
    }  # fmt: skip


async def show_refresh(request: web.Request) -> web.StreamResponse:
    _require(request, AUDIT_ROLES)
    st = request.app[RUNTIME].machine.state
    latest = [refresh_view(st.refreshes[r]) for r in sorted(st.refreshes)]
    gens = {f"{k}/{n}": v.generation for k, key in sorted(st.keys.items())
            for n, v in sorted(key.versions.items())}  # fmt: skip
    return web.json_response({"refresh": latest[0] if latest else None, "generations": gens})


def repair_view(r: Repair) -> dict[str, Any]:
    done = {(i.key_id, i.version) for i in r.items[: r.done]}
    running = r.state.value == "running"
    batch = {(i.key_id, i.version) for i in r.batch_items()} if running else set()
    return {
        "member": r.member, "request": r.request, "state": r.state.value,
        "started_epoch": r.started_epoch, "finished_epoch": r.finished_epoch,
        "run": r.run, "helpers": list(r.helpers), "excluded": list(r.excluded),
        "posted": sorted(r.posts), "failed_runs": r.failed_runs, "failure": r.failure,
        "done": r.done, "total": len(r.items),
        "versions": [
            {"key_id": i.key_id, "version": i.version,
             "state": "rebuilt" if (i.key_id, i.version) in done
             else "in this run" if (i.key_id, i.version) in batch else "waiting"}
            for i in r.items
        ],
    }  # fmt: skip


async def list_repairs(request: web.Request) -> web.StreamResponse:
    _require(request, AUDIT_ROLES)
    repairs = request.app[RUNTIME].machine.state.repairs
    return web.json_response({"repairs": [repair_view(repairs[m]) for m in sorted(repairs)]})


def register(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.post("/v1/peer/repair", peer_repair),
            web.get("/v1/repairs", list_repairs),
            web.post("/v1/peer/refresh", peer_refresh),
            web.get("/v1/refresh", show_refresh),
        ]
    )
