"""Notice a token that went away under the running node, and come back once it returns.

A PKCS#11 module need not recover from a token that disappeared under an open
session. SoftHSM2 does not: once its token directory has been away, every
call on the old handles answers CKR_OBJECT_HANDLE_INVALID, searches find
nothing and a new session fails with CKR_GENERAL_ERROR, even after the
directory is back, until the module is finalised and initialised again, which
python-pkcs11 cannot do in a running process (the chaos drill `hsm-refuse`
found this). So a member whose HSM fails keeps the two things that do not need
it and gives up the rest:

- it stays a Raft voter and replicates the log (the transport's keys are
  files, not HSM objects), so the cluster keeps its fault tolerance;
- it signs nothing, hands leadership to another member and reports the
  HSM in `/v1/sys/health` (status `degraded`, HTTP 503) and in its log;
- it probes the token in a *fresh process* (`softhsm.verify_persisted` with
  no shares: open, log in, find the KEK and identity key) every
  `RETRY_S`, and once that works it asks `node.server.main` to restart the
  node in place (`exec` of the same command line: the WAL is fsynced, so this
  is an ordinary crash-safe restart), which opens the token afresh.

Detection: the identity key signs a fixed probe message every `PROBE_EVERY_S`,
and at once after any slot call fails (`InstrumentedSlot.on_error`); the HSM
counts as gone when two probes `CONFIRM_S` apart both fail. A failed
share call alone proves nothing (a missing share is not a missing token); a
failed identity signature does: a healthy token always signs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from typing import TYPE_CHECKING, Any

from node.hsm.errors import HsmError

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.node")

PROBE_EVERY_S = 5.0
RETRY_S = 2.0
CONFIRM_S = 0.5  # a failed probe is repeated after this long before the HSM counts as gone
PROBE_MESSAGE = b"custody/v1/hsm-probe\x00"  # signed and thrown away; never a protocol message


class HsmWatch:
    """The member's view of its own HSM; `run()` is one of the runtime's tasks."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.down: str | None = None  # why the HSM is unusable, or None
        self.down_since: float | None = None  # wall clock
        self.last_retry: str | None = None  # why the last fresh-process probe failed
        self.restart = asyncio.Event()  # set once the token is back: main restarts the node
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ok(self) -> bool:
        return self.down is None

    def suspect(self, _op: str = "", _exc: BaseException | None = None) -> None:
        """A slot call failed (any thread): probe now rather than at the next period."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._wake.set)

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.down, "since": self.down_since,
                "last_probe_error": self.last_retry if self.down else None}  # fmt: skip

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PROBE_EVERY_S)
            self._wake.clear()
            why = await self._probe_here()
            if why is not None:  # once more, so that one transient error restarts nothing
                await asyncio.sleep(CONFIRM_S)
                why = await self._probe_here()
            if why is None:
                continue
            self.down, self.down_since = why, time.time()
            log.error("the HSM is unusable (%s): this member signs nothing and leads nothing "
                      "until its token answers a fresh process again; then it restarts "
                      "itself", why)  # fmt: skip
            await self._wait_for_token()
            log.warning("the token answers a fresh process again: restarting the node so that "
                        "its module opens the token afresh")  # fmt: skip
            self.restart.set()
            return

    async def _probe_here(self) -> str | None:
        """None if this process's slot still signs with the identity key, else why not."""
        try:
            await asyncio.to_thread(self.rt.slot.sign, PROBE_MESSAGE)
        except HsmError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _wait_for_token(self) -> None:
        from node.hsm.softhsm import verify_persisted
        from node.server.config import slot_config

        config = slot_config(self.rt.cfg)
        while True:
            await asyncio.sleep(RETRY_S)
            try:
                await asyncio.to_thread(verify_persisted, config, [])
                return
            except (HsmError, OSError, ValueError, subprocess.SubprocessError) as exc:
                why = " ".join(str(exc).split())[:300]
                if why != self.last_retry:
                    log.info("token still unusable from a fresh process: %s", why)
                self.last_retry = why
