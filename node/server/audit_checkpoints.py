"""The leader's audit-checkpoint duty (docs/audit.md).

Every `AUDIT_CHECKPOINT_EVERY` audit records the leader coordinates a FROST signature
by the cluster's audit key over the checkpoint of the newest boundary record
(`seq = m * N - 1`): `checkpoint_message(cluster_id, seq, hash of record seq, its
epoch)`. Each member signs only if the message is the one it computes from its own
chain (`Signer._checkpoint_share`). The signature goes through the log as
`audit_checkpoint`, verified again on apply by every replica.

Only the newest due boundary is signed (a checkpoint covers everything before it), and
nothing is done until the audit key has an active version (its DKG runs at bootstrap,
the version activates at the next epoch step).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from node.state import PostAuditCheckpoint
from node.state.audit_checkpoint import AUDIT_KEY_ID, own_message, request_id

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.audit")

# Default interval in records; `[schedule] audit_checkpoint_every` in node.toml overrides it.
AUDIT_CHECKPOINT_EVERY = 64
RETRY_S = 1.0


class AuditCheckpointDuty:
    def __init__(self, rt: Runtime, every: int | None = None) -> None:
        self.rt = rt
        self.every = max(1, int(every or rt.cfg.audit_checkpoint_every
                                or AUDIT_CHECKPOINT_EVERY))  # fmt: skip
        self.task: asyncio.Task[None] | None = None
        self.not_before = 0.0

    def due(self) -> tuple[int, int] | None:
        """(seq, audit key version) of the checkpoint to sign now, or None."""
        st = self.rt.machine.state
        key = st.keys.get(AUDIT_KEY_ID)
        if key is None or not key.primary:
            return None
        seq = (len(st.audit) // self.every) * self.every - 1
        last = st.audit_checkpoints[-1].seq if st.audit_checkpoints else -1
        return (seq, key.primary) if seq > last else None

    async def reconcile(self) -> None:
        rt = self.rt
        if not rt.is_leader() or rt.name not in rt.machine.state.members:
            return
        if self.task is not None and not self.task.done():
            return
        if time.monotonic() < self.not_before:
            return
        due = self.due()
        if due is not None:
            self.task = asyncio.get_running_loop().create_task(self._checkpoint(*due))

    async def _checkpoint(self, seq: int, version: int) -> None:
        rt = self.rt
        st = rt.machine.state
        message = own_message(st.cluster_id, st.audit, seq)
        if message is None:
            return
        head, epoch = st.audit[seq].hash, st.audit[seq].epoch
        try:
            sig = await rt.signer.sign_audit_checkpoint(seq, message, version, rt.applied)
        except Exception:
            log.exception("audit checkpoint %d: signing failed", seq)
            sig = None
        if sig is None:
            self.not_before = time.monotonic() + RETRY_S
            log.info("audit checkpoint %d: not signed now; will retry", seq)
            return
        cmd = PostAuditCheckpoint(
            request_id=request_id(seq), author=rt.name, seq=seq, head=head, epoch=epoch,
            version=version, frost_signature=sig,
        )  # fmt: skip
        signed = await rt.sign_command(cmd)
        for _ in range(10):
            out = await rt.propose_quietly(signed, f"audit checkpoint {seq}")
            if out is not None:
                if out.ok:
                    log.info("audit checkpoint at seq %d recorded", seq)
                else:
                    self.not_before = time.monotonic() + RETRY_S
                return
            await asyncio.sleep(0.2)
