"""Key lifecycle duties of a member (docs/lifecycle.md): erasure confirmations, scheduled
rotations, and dropping the nonces of versions that can no longer sign.

Like every duty, a reconciliation of the member's own replica, run by
`Runtime._duties` after each change (and at least every 200 ms):

- **Erasure confirmations (every member).** For each destroyed version whose
  `erased_by` lacks this member: destroy whatever share objects of that version
  are still in the slot, check from a *fresh process* that none can be loaded
  any more (`softhsm.verify_persisted`), then post `record_erasure` (signed with
  the identity key, request id `erase-<key>-<version>`: one per member, a retry is
  the same command). A member that was down when the destroy committed does this
  when it comes back.
- **Scheduled rotation (leader only, once its replica is current).** For each
  key whose policy says rotation is due now (`Machine.rotation_due(key,
  int(time.time()))`) and that has no rotation under way, propose a node-signed
  `request_rotate` with the deterministic request id `rotate-<key>-v<next
  version>`. The state machine approves a due scheduled rotation at once and
  refuses a second while one is open, so a new leader just continues; the DKG
  duty then runs the rotation's DKG. After a rotation failed (its version was
  aborted), the next scheduled attempt for that key waits `dkg_timeout_s` (at
  least 5 s), so a member that is down does not cause a DKG every round.
- **Nonces.** The nonce stock of a version that is no longer active (retired,
  revoked, destroyed) is zeroized (`NonceStock.drop_version`): `may_use` and
  `executable` already refuse to use them; this frees them early. A retired version
  that an approved dual-sign request names keeps signing until that request is done,
  and a version that signs again (rollback) has its stock dropped again when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from typing import TYPE_CHECKING, Any

from node.hsm.errors import HsmError, ShareNotFoundError
from node.hsm.pkcs11_slot import SlotConfig
from node.state import RecordErasure, RequestRotate
from node.state.commands import erasure_request_id
from node.state.model import Key, VersionState

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.node")

RETRY_S = 1.0  # between two attempts at the same erasure confirmation or rotation proposal
MIN_ROTATION_BACKOFF_S = 5.0
VS = VersionState


def rotation_request_id(key_id: str, version: int) -> str:
    """The id of a scheduled rotation that would create `version` of `key_id` (key ids are
    at most 64 characters, so this always fits the request-id rule)."""
    return f"rotate-{key_id}-v{version}"


class LifecycleDuty:
    def __init__(self, rt: Runtime, *, verify_fresh: bool = True) -> None:
        self.rt = rt
        self.verify_fresh = verify_fresh  # check erasure from a fresh process (SoftHSM)
        self._erase_tried: dict[tuple[str, int], float] = {}
        self._rotation: dict[str, tuple[str, Any, float]] = {}  # key -> (id, signed cmd, when)
        self._failed_seen: dict[str, float] = {}  # aborted version's request -> first seen
        self._dropped: set[tuple[str, int]] = set()

    async def reconcile(self) -> None:
        st = self.rt.machine.state
        if not st.bootstrapped or self.rt.name not in st.members:
            return
        await self.confirm_erasures()
        self.drop_nonces()
        if self.rt.is_leader() and self.rt.caught_up:
            await self.schedule_rotations()

    # ------------------------------------------------------------ erasure

    def unconfirmed(self) -> list[tuple[str, int]]:
        """Destroyed versions this member has not confirmed erasing, in key/version order."""
        keys = self.rt.machine.state.keys
        return [
            (key_id, n) for key_id in sorted(keys) for n in sorted(keys[key_id].versions)
            if keys[key_id].versions[n].state is VS.DESTROYED
            and self.rt.name not in keys[key_id].versions[n].erased_by
        ]  # fmt: skip

    async def confirm_erasures(self) -> None:
        rt, now = self.rt, time.monotonic()
        todo = self.unconfirmed()
        for done in set(self._erase_tried) - set(todo):
            del self._erase_tried[done]
        for key_id, number in todo:
            if now - self._erase_tried.get((key_id, number), -RETRY_S) < RETRY_S:
                continue
            self._erase_tried[(key_id, number)] = now
            try:
                erased = await asyncio.to_thread(self.erase_version, key_id, number)
            except (HsmError, OSError, subprocess.SubprocessError) as exc:
                log.warning("erasure of %s v%d failed (%s); retrying", key_id, number,
                            exc.__class__.__name__)  # fmt: skip
                continue
            if not erased:
                continue
            cmd = RecordErasure(
                request_id=erasure_request_id(key_id, number), author=rt.name,
                key_id=key_id, version=number,
            )  # fmt: skip
            signed = await rt.sign_command(cmd)
            out = await rt.propose_quietly(signed, f"erasure {key_id} v{number}")
            if out is not None and out.ok:
                log.info("confirmed erasure of %s v%d (%s)", key_id, number, out.detail)

    def erase_version(self, key_id: str, number: int) -> bool:
        """Destroy this member's share objects of one version; True once none is left,
        as seen by this session and (with `verify_fresh`) by a fresh process. Blocking."""
        slot = self.rt.slot
        mine = {self.rt.share_id(key_id, number)}
        for sid in slot.list_shares(key_id):
            if sid.version != number:
                continue
            mine.add(sid)
            try:
                slot.destroy_share(sid)
                log.info("erased share of %s v%d (version destroyed)", key_id, number)
            except ShareNotFoundError:
                pass
        if any(s.version == number for s in slot.list_shares(key_id)):
            return False
        if not self.verify_fresh:
            return True
        config = self.slot_config()
        if config is None:
            return True
        from node.hsm.softhsm import verify_persisted

        still_loadable = set(mine) - set(verify_persisted(config, sorted(mine)))
        if still_loadable:
            log.warning("a fresh process still loads %d share(s) of %s v%d", len(still_loadable),
                        key_id, number)  # fmt: skip
            return False
        return True

    def slot_config(self) -> SlotConfig | None:
        """The slot configuration a fresh process uses to look at this member's token (the
        same `open_slot` uses); None when the token is not a SoftHSM2 one."""
        from node.server.config import slot_config

        cfg = self.rt.cfg
        return slot_config(cfg) if cfg.hsm_softhsm_conf is not None else None

    # ------------------------------------------------------------ nonces

    def drop_nonces(self) -> None:
        machine = self.rt.machine
        for key in machine.state.keys.values():
            for n, v in key.versions.items():
                if v.state is VS.ACTIVE or (
                    v.state is VS.RETIRED and machine.dual_signable(key.key_id, n)
                ):
                    # Signing (again: a rollback, or as a dual-sign request's second
                    # signer): its stock is dropped once more when it stops.
                    self._dropped.discard((key.key_id, n))
                elif v.state in (VS.RETIRED, VS.REVOKED, VS.DESTROYED) and (
                    key.key_id, n,
                ) not in self._dropped:  # fmt: skip
                    self._dropped.add((key.key_id, n))
                    if self.rt.stock.drop_version(key.key_id, n):
                        log.info("dropped nonces of %s v%d (%s)", key.key_id, n, v.state.value)

    # ------------------------------------------------------------ rotation

    def _in_backoff(self, key: Key, now: float) -> bool:
        """The newest version was aborted (its rotation failed): wait before the next one."""
        newest = key.versions[max(key.versions)]
        if newest.state is not VS.DESTROYED or newest.activation_epoch:
            return False
        first = self._failed_seen.setdefault(newest.request_id, now)
        return now - first < max(MIN_ROTATION_BACKOFF_S, self.rt.cfg.dkg_timeout_s)

    def due_keys(self, wall: int) -> list[str]:
        machine = self.rt.machine
        out = []
        for key_id in sorted(machine.state.keys):
            key = machine.state.keys[key_id]
            if key.lifecycle_request or any(v.state is VS.PENDING for v in key.versions.values()):
                continue  # a new version is on its way (the machine would refuse anyway)
            if machine.rotation_due(key_id, wall):
                out.append(key_id)
        return out

    async def schedule_rotations(self) -> None:
        rt, now, wall = self.rt, time.monotonic(), int(time.time())
        keys = rt.machine.state.keys
        for key_id in self.due_keys(wall):
            key = keys[key_id]
            if self._in_backoff(key, now):
                continue
            rid = rotation_request_id(key_id, max(key.versions) + 1)
            prior = self._rotation.get(key_id)
            if prior is not None and prior[0] == rid:
                if now - prior[2] < RETRY_S:
                    continue
                cmd = prior[1]  # the same signed bytes: a retry never rotates twice
            else:
                cmd = await rt.sign_command(
                    RequestRotate(request_id=rid, author=rt.name, key_id=key_id, at=wall)
                )
            self._rotation[key_id] = (rid, cmd, now)
            out = await rt.propose_quietly(cmd, f"scheduled rotation of {key_id}")
            if out is not None and out.ok:
                log.info("scheduled rotation of %s: %s:%s %s", key_id, rt.name, rid, out.code)

    def summary(self) -> dict[str, Any]:
        return {"unconfirmed_erasures": len(self.unconfirmed())}
