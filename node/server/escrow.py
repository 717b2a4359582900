"""The escrow and recovery duties of a member (docs/recovery.md; rules in
`node.state.recovery`, crypto in `node.protocols.escrow`).

Escrow: with officers registered, a member escrows its share of every version whose
policy says `escrow: true` and that it has no package for (current officer set and
share generation): one package per version, split k-of-m over GF(2^8) and sealed to
each officer, posted through the log in batches. Never a key, never a share in the clear.

Recovery: a fresh node that took member i's place (`recover_members`) waits until
k officers released their pieces of each escrowed version to its recovery key, then
combines them in this process, checks every share against member i's verification
share, stores it in its token, checks from a fresh process that the token kept it, and
confirms with `record_recovery`. Its recovery key is X25519, derived from a signature
of its HSM identity key over a fixed message (`recovery_private`): only the holder of
the token can derive it, it survives restarts without being stored, and it exists in
memory only while it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.protocols import escrow as esc
from node.protocols import sealbox
from node.protocols.batch import zero
from node.server.runs import key_versions, load_shares, not_persisted
from node.server.runtime import result_request_id
from node.state import EscrowItem, PostEscrow, RecordRecovery
from node.state.commands import MAX_ESCROW_ITEMS
from node.state.digest import lp
from node.state.model import Recovery, VersionRef
from shares.rng import system_rng

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.escrow")

RECOVERY_KEY_CONTEXT = b"custody-cluster/v1/node-recovery-key"
RETRY_S = 2.0


def recovery_message(cluster_id: str, member: str) -> bytes:
    """What the identity key signs to derive the member's recovery key (never a command:
    command signatures are over 64-byte digests, this is longer and prefixed)."""
    return lp(RECOVERY_KEY_CONTEXT) + lp(cluster_id) + lp(member)


def recovery_private(slot: Any, cluster_id: str, member: str) -> X25519PrivateKey:
    """The node's X25519 recovery key: a hash of its identity key's (deterministic,
    RFC 8032) Ed25519 signature over `recovery_message` (blocking: HSM call)."""
    sig = bytearray(slot.sign(recovery_message(cluster_id, member)))
    seed = bytearray(hashlib.sha512(bytes(lp(RECOVERY_KEY_CONTEXT) + sig)).digest()[:32])
    try:
        return X25519PrivateKey.from_private_bytes(bytes(seed))
    finally:
        zero(sig)
        zero(seed)


def recovery_public(slot: Any, cluster_id: str, member: str) -> bytes:
    return sealbox.public_bytes(recovery_private(slot, cluster_id, member))


def officer_rows(officers: Any) -> list[tuple[str, bytes]]:
    return [(o.name, o.x25519) for o in officers.officers]


class EscrowDuty:
    """Escrow this member's shares; rebuild them from officers' releases in a recovery."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._next_try = 0.0
        self._recovered: str = ""  # the recovery request this node confirmed in
        self._idle_at = -1  # the runtime's apply count when nothing was left to do

    async def reconcile(self) -> None:
        now = time.monotonic()
        st = self.rt.machine.state
        if now < self._next_try or (st.officers.k == 0 and not st.exports):
            return
        seen = self.rt.generation
        if seen == self._idle_at:
            return  # nothing applied since nothing was due
        try:
            busy = await self._recover()
            busy = await self._escrow() or busy
            busy = await self._export() or busy
        except Exception:
            self._next_try = now + RETRY_S
            raise
        if not busy:
            self._idle_at = seen

    # ------------------------------------------------------------ escrow

    async def _escrow(self) -> bool:
        """Post one batch of due packages; whether anything was due."""
        rt, m = self.rt, self.rt.machine
        due = m.escrow_due(rt.name)
        if not due:
            return False
        st = m.state
        officers = st.officers
        rows = officer_rows(officers)
        me = st.members[rt.name].index
        batch = due[:MAX_ESCROW_ITEMS]
        shares = await asyncio.to_thread(load_shares, rt, [(r.key_id, r.version) for r in batch])
        rng = system_rng()
        items = []
        try:
            for ref, share in zip(batch, shares, strict=True):
                (kv,) = key_versions(st, [ref])
                ctx = esc.escrow_context(st.cluster_id, me, [kv], rows, officers.k)
                pkg = esc.escrow_package(ctx, me, [kv], [share], rows, officers.k, rng)
                gen = st.keys[ref.key_id].versions[ref.version].generation
                items.append(EscrowItem(ref.key_id, ref.version, gen, pkg))
        finally:
            for s in shares:
                zero(s)
        what = ",".join(f"{i.key_id}/{i.version}/{i.generation}" for i in items)
        rid = result_request_id("escrow", f"{rt.name}|{officers.digest.hex()}|{what}")
        cmd = PostEscrow(rid, rt.name, officers.digest, tuple(items))
        out = await rt.propose_quietly(await rt.sign_command(cmd), "escrow")
        if out is not None and out.ok:
            log.info("escrowed %d version(s) to %d officers (k=%d)", len(items), len(rows),
                     officers.k)  # fmt: skip
        else:
            self._next_try = time.monotonic() + RETRY_S
        return True

    # ------------------------------------------------------------ break-glass export

    async def _export(self) -> bool:
        """Seal this member's share of each executed export's version to its recipient
        (node.protocols.breakglass); whether one was due."""
        from node.protocols import breakglass as bg
        from node.state import PostExportPiece

        rt, m = self.rt, self.rt.machine
        st = m.state
        for ref in sorted(st.exports):
            e = st.exports[ref]
            if rt.name in e.pieces or not m.holds(rt.name, e.key_id, e.version):
                continue
            v = st.keys[e.key_id].versions[e.version]
            ctx = bg.export_context(st.cluster_id, ref, e.key_id, e.version, v.group_public_key)
            (share,) = await asyncio.to_thread(load_shares, rt, [(e.key_id, e.version)])
            try:
                piece = bg.seal_piece(ctx, st.members[rt.name].index, share, e.recipient,
                                      system_rng())  # fmt: skip
            finally:
                zero(share)
            rid = result_request_id("export-piece", f"{ref}|{rt.name}")
            cmd = PostExportPiece(rid, rt.name, ref, piece)
            out = await rt.propose_quietly(await rt.sign_command(cmd), "break-glass piece")
            if out is not None and out.ok:
                log.warning("BREAK-GLASS: sealed this member's share of %s v%d to the "
                            "recipient of export %s", e.key_id, e.version, ref)  # fmt: skip
            else:
                self._next_try = time.monotonic() + RETRY_S
            return True
        return False

    # ------------------------------------------------------------ recovery

    async def _recover(self) -> bool:
        """Rebuild this member's shares once every release is in; whether it still waits."""
        rt, m = self.rt, self.rt.machine
        rec = m.running_recovery()
        if rec is None or rt.name not in rec.keys or rt.name in (*rec.recovered, *rec.repaired):
            return False
        if rec.request == self._recovered:
            return True  # confirmed; waiting for the commit
        items = rec.items.get(rt.name, ())
        k = rec.officers.k
        if not items or any(len(m.releases_for(rec, rt.name, r.key_id, r.version)) < k
                            for r in items):  # fmt: skip
            return bool(items)
        private = await asyncio.to_thread(recovery_private, rt.slot, rt.cfg.cluster_id, rt.name)
        if sealbox.public_bytes(private) != rec.keys[rt.name]:
            log.error("recovery %s names another recovery key for %s than this token "
                      "derives: not this node's to recover", rec.request, rt.name)  # fmt: skip
            self._next_try = time.monotonic() + 30
            return True
        stored = await self._rebuild(rec, items, private)
        missing = await not_persisted(rt, stored)
        if missing:
            log.error("the token did not keep %d recovered share(s); trying again", len(missing))
            self._next_try = time.monotonic() + RETRY_S
            return True
        self._recovered = rec.request
        rid = result_request_id("recovered", f"{rec.request}|{rt.name}")
        out = await rt.propose_quietly(await rt.sign_command(RecordRecovery(rid, rt.name, rt.name)),
                                       "record recovery")  # fmt: skip
        if out is None or not (out.ok or out.code == "duplicate_post"):
            self._recovered = ""
            self._next_try = time.monotonic() + RETRY_S
            return True
        log.warning("RECOVERY: %s holds its shares of %d version(s) again, from the officers' "
                    "releases", rt.name, len(items))  # fmt: skip
        return True

    async def _rebuild(self, rec: Recovery, items: tuple[VersionRef, ...],
                       private: X25519PrivateKey) -> list[Any]:  # fmt: skip
        """Combine, check and store every share (blocking parts in a thread)."""
        rt, m = self.rt, self.rt.machine
        st = m.state
        rows = officer_rows(rec.officers)
        positions = {name: i + 1 for i, (name, _) in enumerate(rows)}
        me = st.members[rt.name].index
        stored = []
        for ref in items:
            (kv,) = key_versions(st, [ref])
            ctx = esc.escrow_context(st.cluster_id, me, [kv], rows, rec.officers.k)
            releases = {positions[o]: blob for o, blob in
                        m.releases_for(rec, rt.name, ref.key_id, ref.version).items()}  # fmt: skip
            shares, bad = esc.recover_shares(ctx, releases, private, me, [kv], rows,
                                             rec.officers.k)  # fmt: skip
            if bad:
                log.warning("%s v%d: releases of officer(s) %s did not open or disagreed",
                            ref.key_id, ref.version,
                            ", ".join(rows[o - 1][0] for o in bad))  # fmt: skip
            sid = rt.share_id(ref.key_id, ref.version)
            try:
                await asyncio.to_thread(rt.slot.store_share, sid, shares[0], replace=True)
            finally:
                for s in shares:
                    zero(s)
            stored.append(sid)
        return stored
