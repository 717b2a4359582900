"""`GET /v1/recovery` (registered by `create_app`): the recovery officers, how much of each
member's share is escrowed, and the latest recovery of a lost cluster with everything an
officer needs to release its pieces (docs/recovery.md): per member being recovered, its
fresh node's recovery key and, per escrowed version, the version's public data and the
member's escrow package (sealed to the officers: useless without k officers' keys).

Officers submit nothing themselves: an operator posts their signed approvals and releases
(`officer_approve`, `officer_release`) through `POST /v1/commands`.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from node.server.app import AUDIT_ROLES, RUNTIME, _require
from node.state.model import Export, Recovery, State
from node.state.recovery import escrow_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def recovery_view(st: State, rec: Recovery, machine: Any) -> dict[str, Any]:
    members = {}
    for name in sorted(rec.keys):
        items = []
        for ref in rec.items.get(name, ()):
            v = st.keys[ref.key_id].versions[ref.version]
            e = st.escrows.get(escrow_key(name, ref.key_id, ref.version))
            items.append({
                "key_id": ref.key_id, "version": ref.version,
                "group_public_key": v.group_public_key.hex(),
                "verification_shares": [y.hex() for y in v.verification_shares],
                "package_b64": _b64(e.package) if e is not None else None,
                "released_by": sorted(machine.releases_for(rec, name, ref.key_id, ref.version)),
            })  # fmt: skip
        members[name] = {
            "index": st.members[name].index, "recovery_key": rec.keys[name].hex(),
            "recovered": name in rec.recovered, "repaired": name in rec.repaired,
            "versions": items,
        }  # fmt: skip
    return {
        "request": rec.request, "started_epoch": rec.started_epoch,
        "finished_epoch": rec.finished_epoch,
        "state": "done" if rec.finished_epoch else "running",
        "officers": [o.name for o in rec.officers.officers], "k": rec.officers.k,
        "recovered": list(rec.recovered), "repaired": list(rec.repaired), "members": members,
    }  # fmt: skip


def export_view(st: State, e: Export) -> dict[str, Any]:
    """A break-glass export: its pieces are sealed to the recipient (useless to others)."""
    v = st.keys[e.key_id].versions[e.version]
    return {
        "request": e.request, "key_id": e.key_id, "version": e.version,
        "recipient": e.recipient.hex(), "epoch": e.epoch, "threshold": st.threshold,
        "group_public_key": v.group_public_key.hex(),
        "verification_shares": [y.hex() for y in v.verification_shares],
        "pieces": {name: {"index": st.members[name].index if name in st.members
                          else st.removed_members[name].index, "piece_b64": _b64(p)}
                   for name, p in sorted(e.pieces.items())},
    }  # fmt: skip


async def show_recovery(request: web.Request) -> web.StreamResponse:
    _require(request, AUDIT_ROLES)
    machine = request.app[RUNTIME].machine
    st = machine.state
    escrowed: dict[str, int] = {}
    for e in st.escrows.values():
        escrowed[e.member] = escrowed.get(e.member, 0) + 1
    latest = [recovery_view(st, st.recoveries[r], machine) for r in sorted(st.recoveries)]
    return web.json_response({
        "cluster_id": st.cluster_id,
        "officers": [{"name": o.name, "x25519": o.x25519.hex(), "ed25519": o.ed25519.hex()}
                     for o in st.officers.officers],
        "k": st.officers.k, "officers_digest": st.officers.digest.hex(),
        "escrowed": escrowed,
        "escrow_due": {m: len(machine.escrow_due(m)) for m in sorted(st.members)},
        "recovery": latest[0] if latest else None,
        "exports": [export_view(st, st.exports[r]) for r in sorted(st.exports)],
    })  # fmt: skip


def register(app: web.Application) -> None:
    app.router.add_routes([web.get("/v1/recovery", show_recovery)])
