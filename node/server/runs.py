"""What the repair and refresh duties share: the table of their live sessions, loading
a batch's shares from the slot, taking each peer's message once, sending one until it
is taken, and the leader's patience with a run."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp

from node.hsm.aad import zero
from node.protocols.batch import KeyVersion

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.runs")
K = TypeVar("K")


@dataclass
class Run:
    """This member's part in one run of a repair or refresh: its session (secrets), the
    signed post it proposes again until the log has it, messages that came early."""

    session: Any
    post: Any
    posted_at: float
    role: str = ""  # repair: "target" | "helper"
    phase: str = "posted"  # posted -> exchange -> storing -> done
    buffered: dict[int, bytes] = field(default_factory=dict)  # sender -> message, pre-exchange
    received: dict[int, bytes] = field(default_factory=dict)  # sender -> digest of its message
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Sessions(Generic[K]):
    """The duty's live sessions by run: dropping one cancels its tasks and aborts its
    session (which wipes its secrets)."""

    def __init__(self) -> None:
        self.table: dict[K, Any] = {}

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.table))

    def get(self, key: K) -> Any:
        return self.table.get(key)

    def __setitem__(self, key: K, value: Run) -> None:
        self.table[key] = value

    def drop(self, key: K) -> None:
        item = self.table.pop(key, None)
        if item is None:
            return
        for t in item.tasks:
            if t is not asyncio.current_task():
                t.cancel()
        with contextlib.suppress(Exception):
            item.session.abort()

    def drop_all(self) -> None:
        for key in list(self.table):
            self.drop(key)


def key_versions(state: Any, refs: Iterable[Any]) -> list[KeyVersion]:
    """The public data of each version `refs` names (`VersionRef`s), as the protocol
    engines take it: group key and verification shares by member index."""
    out = []
    for ref in refs:
        v = state.keys[ref.key_id].versions[ref.version]
        vshares = {i + 1: y for i, y in enumerate(v.verification_shares)}
        out.append(KeyVersion(ref.key_id, ref.version, v.group_public_key, vshares))
    return out


def load_shares(rt: Runtime, refs: Iterable[tuple[str, int]]) -> list[bytearray]:
    """This member's current shares of (key id, version), in order (blocking: run it in a
    thread); the ones already loaded are wiped if one fails."""
    out: list[bytearray] = []
    try:
        for key_id, version in refs:
            out.append(rt.slot.load_share(rt.share_id(key_id, version)))
    except Exception:
        for s in out:
            zero(s)
        raise
    return out


async def not_persisted(rt: Runtime, share_ids: list[Any]) -> list[Any]:
    """The share objects a fresh process cannot load from this member's token (SoftHSM2
    does not report a failed write: docs/hsm.md); empty for another kind of HSM."""
    config = rt.lifecycle.slot_config() if rt.lifecycle is not None else None
    if config is None or not share_ids:
        return []
    from node.hsm.softhsm import verify_persisted

    return await asyncio.to_thread(verify_persisted, config, sorted(share_ids))


def first_time(received: dict[int, bytes], sender: int, message: bytes) -> bool:
    """False for a retry of a message already taken from `sender` (its answer was lost):
    not a second message. A different second message is for the session to judge."""
    digest = hashlib.sha256(message).digest()
    if received.get(sender) == digest:
        return False
    received.setdefault(sender, digest)
    return True


async def post_until_taken(
    rt: Runtime, alive: Callable[[], bool], peer: str, path: str, body: bytes, what: str
) -> None:
    """POST `body` to `peer` until it takes it (200), refuses it for good (400/403/409),
    or `alive()` says the run it belongs to is over; backing off up to 1 s."""
    url = rt.peer_url(peer, path)
    assert rt.http is not None
    delay = 0.05
    while alive():
        try:
            async with rt.http.post(url, data=body) as resp:
                if resp.status == 200:
                    return
                if resp.status in (400, 403, 409):
                    log.warning("%s: %s refused it (%d)", what, peer, resp.status)
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def run_timeout(base_s: float, versions: int) -> float:
    """How long a run may go without finishing before the leader reports it: the DKG
    timeout, plus time for the target to store a large batch in its token (measured:
    about 20 ms per share object under load)."""
    return base_s + 0.05 * versions


def printable(text: str, limit: int = 256) -> str:
    """A reason for the log and the audit: printable ASCII, bounded."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:limit]
