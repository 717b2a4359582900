"""The node runtime: the custody `Machine` replicated by the Raft `Driver`, the HSM
slot, and the background duties every member performs on its own replica.

Everything a member does for the cluster starts from its own replica's state:
it proposes the bootstrap (leader, once), votes epochs on its own clock,
signs checkpoints of its own snapshots, erases the shares of destroyed versions,
takes part in DKGs (`dkg.py`) and, as leader, coordinates approved signatures
(`signer.py`). Those duties are reconciliations (look at the state, do what is
missing), so a member that was down when a command committed catches up by
itself when it starts again.

Blocking PKCS#11 calls run in worker threads (`asyncio.to_thread`); the slot
serialises them internally.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from consensus import tls as ctls
from consensus.driver import (
    Driver,
    DriverConfig,
    NodeStopped,
    NotLeader,
    Overloaded,
    ProposalDropped,
    open_node,
)
from node.hsm.pkcs11_slot import Pkcs11Slot
from node.hsm.slot import ShareId
from node.protocols.signing import NonceStock
from node.server.config import NodeConfig, format_address, parse_address, slot_config
from node.state import (
    AdvanceEpoch,
    Approve,
    Command,
    DecodeError,
    Machine,
    Outcome,
    PostCheckpoint,
    RequestSign,
    SnapshotGuard,
    decode_command,
    decode_outcome,
    encode_command,
    signing_message,
    with_signature,
)
from node.state.checkpoint import checkpoint_message
from node.state.model import RequestKind, VersionState

log = logging.getLogger("custody.node")

PROPOSE_TIMEOUT_S = 5.0
PEER_TIMEOUT_S = 5.0
# A follower cut off from the leader (a partition) still believes in it: its reads and
# forwarded writes are lost. It gives up after this long and answers 503/504, so that a
# client tries another node instead of waiting out its own timeout (healthy: a few ms).
FOLLOWER_WAIT_S = 2.0
FORWARD_POLL_S = 0.1  # how often a forwarded proposal checks whether the leader changed
DUTY_MIN_S = 0.02
HANDOVER_RETRY_S = 0.5
MSGPACK = "application/msgpack"


class NoLeader(Exception):
    """No leader is known or reachable: the API answers 503 with Retry-After."""


class Observed:
    """What the Driver applies: the Machine, plus a wake-up for everyone waiting on it,
    and a direct call when an approval makes a request executable (so the leader
    starts signing at once instead of on its next reconciliation round)."""

    def __init__(
        self, machine: Machine, notify: Callable[[], None], on_approved: Callable[[str], None]
    ) -> None:
        self.machine = machine
        self.notify = notify
        self.on_approved = on_approved

    def apply(self, data: bytes) -> bytes:
        result = self.machine.apply(data)
        if b"approved" in result:  # cheap filter; decoded only when it may matter
            out = decode_outcome(result)
            if out.ok and out.code == "approved":
                with contextlib.suppress(DecodeError):
                    cmd = decode_command(data)
                    if isinstance(cmd, Approve):
                        self.on_approved(cmd.request)
                    elif isinstance(cmd, RequestSign):  # approved at once under a grant
                        self.on_approved(f"{cmd.author}:{cmd.request_id}")
        self.notify()
        return result

    def snapshot(self) -> bytes:
        return self.machine.snapshot()

    def restore(self, data: bytes) -> None:
        self.machine.restore(data)
        log.info("state restored from a snapshot (audit length %d)", len(self.machine.state.audit))
        self.notify()


def open_slot(cfg: NodeConfig) -> Pkcs11Slot:
    """Open this node's token (blocking: run it in a thread)."""
    return Pkcs11Slot.open(slot_config(cfg))


class Runtime:
    """One custody node. `await start()`, then serve the API; `await stop()` to leave."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.index = cfg.index
        self.machine = Machine(genesis=cfg.genesis)
        self.slot: Any = None
        self.driver: Driver | None = None
        self.http: aiohttp.ClientSession | None = None
        self.stock = NonceStock()
        self._waiters: list[asyncio.Future[None]] = []
        self.generation = 0  # counts applies: a level-triggered "something changed"
        self._tasks: list[asyncio.Task[None]] = []
        self._epoch_seen = (0, time.monotonic())  # (epoch, when this node saw it start)
        self._last_vote = 0
        self._last_nudge = 0.0
        self._erased: frozenset[tuple[str, int]] = frozenset()  # versions already erased
        self._checkpoints: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(maxsize=64)
        self.caught_up = False  # a read barrier succeeded since start: the replica is current
        self.dkg: Any = None  # node.server.dkg.DkgDuty
        self.signer: Any = None  # node.server.signer.Signer
        self.lifecycle: Any = None  # node.server.lifecycle.LifecycleDuty
        self.repair: Any = None  # node.server.repair.RepairDuty
        self.refresh: Any = None  # node.server.refresh.RefreshDuty
        self.membership: Any = None  # node.server.membership.MembershipDuty
        self.escrow: Any = None  # node.server.escrow.EscrowDuty
        self.recovery_key = b""  # X25519 key officers re-seal escrow pieces to (escrow.py)
        self.identity = b""  # this node's identity public key (from its token)
        self.started_at = time.time()  # a restart in place (hsm_watch) keeps the pid
        from node.server.hsm_watch import HsmWatch

        self.hsm = HsmWatch(self)
        self._unregistered_logged = False
        self._handover_after = 0.0  # hand-over attempts are at most every HANDOVER_RETRY_S

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.cfg
        self.slot = await asyncio.to_thread(open_slot, cfg)
        member = {m.name: m for m in cfg.bootstrap_command.members}.get(cfg.name)
        self.identity = self.slot.identity_public_key()
        from node.server.escrow import EscrowDuty, recovery_public

        self.recovery_key = await asyncio.to_thread(recovery_public, self.slot, cfg.cluster_id,
                                                    cfg.name)  # fmt: skip
        if member is None and not cfg.raft_join:
            raise RuntimeError(
                f"{cfg.name} is not a member in the bootstrap command (a node added later "
                "has `join = true` in [raft])"
            )
        guard = SnapshotGuard(
            self.machine, on_checkpoint=self._queue_checkpoint, bootstrap=cfg.bootstrap_command
        )
        ctx = (
            ctls.server_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key),
            ctls.client_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key),
        )
        peer_ctx = ctls.client_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key, check_hostname=True)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=peer_ctx, limit=256),
            timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S),
        )
        self.driver = await open_node(
            node_id=cfg.index,
            peers=cfg.raft_peers,
            data_dir=cfg.data_dir,
            machine=Observed(self.machine, self._notify, self._on_approved),
            tls_contexts=ctx,
            snapshot_guard=guard,
            join=cfg.raft_join,
            config=DriverConfig(
                tick_interval=cfg.tick_ms / 1000,
                election_ticks=cfg.election_ticks,
                snapshot_every=cfg.snapshot_every,
                keep_entries=min(1000, cfg.snapshot_every),
            ),
        )
        if member is not None and not self.registered():
            # Judged on the state the driver restored (its snapshot), else the bootstrap
            # command. A re-provisioned token: this node replicates the log but signs nothing
            # until the state registers this key; its signatures would be refused anyway.
            log.warning(
                "the identity key in token %r is not the one registered for %s; it acts once "
                "the cluster registers it (a lost token: custody node repair %s --public-key "
                "%s; a lost cluster: custody recover request)", cfg.hsm_token_label, cfg.name,
                cfg.name, self.identity.hex(),
            )  # fmt: skip
        from node.server.dkg import DkgDuty
        from node.server.signer import Signer

        self.dkg = DkgDuty(self)
        self.signer = Signer(self)
        # --- lifecycle duty (node/server/lifecycle.py): erasure confirmations, scheduled
        # rotations, nonces of versions that can no longer sign.
        from node.server.lifecycle import LifecycleDuty

        self.lifecycle = LifecycleDuty(self)
        # --- end lifecycle duty
        # --- audit checkpoint duty (node/server/audit_checkpoints.py): the leader has the
        # audit chain threshold-signed every N records.
        from node.server.audit_checkpoints import AuditCheckpointDuty

        self.audit_checkpoints = AuditCheckpointDuty(self)
        # --- end audit checkpoint duty
        from node.server.refresh import RefreshDuty
        from node.server.repair import RepairDuty

        self.repair = RepairDuty(self)
        self.refresh = RefreshDuty(self)
        from node.server.membership import MembershipDuty

        self.membership = MembershipDuty(self)
        self.escrow = EscrowDuty(self)
        await asyncio.to_thread(self._erase_destroyed)  # reconcile before serving
        self._erased = self._destroyed_versions()
        for name, coro in (
            ("duties", self._duties()),
            ("checkpoints", self._post_checkpoints()),
            ("hsm-watch", self.hsm.run()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"{cfg.name}-{name}"))
        log.info("started: member %s, raft %s, api %s", cfg.name, cfg.raft_listen, cfg.api_listen)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.dkg is not None:
            self.dkg.abort_all()
        if self.repair is not None:
            self.repair.abort_all()
        if self.refresh is not None:
            self.refresh.abort_all()
        self.stock.clear()  # nonces never outlive the process
        if self.driver is not None:
            await self.driver.stop()
        if self.http is not None:
            await self.http.close()
        if self.slot is not None:
            await asyncio.to_thread(self.slot.close)
        log.info("stopped")

    # ------------------------------------------------------------ state watching

    def _notify(self) -> None:
        self.generation += 1
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    def _on_approved(self, ref: str) -> None:
        req = self.machine.state.requests.get(ref)
        is_sign = req is not None and req.kind is RequestKind.SIGN
        if is_sign and self.signer is not None and self.is_leader() and self.may_act():
            self.signer.kick(ref)

    async def changed(self, timeout: float, since: int | None = None) -> None:
        """Wait until the machine applies something (or `timeout` passes). With `since`
        (a `generation` read earlier), return at once if anything was applied since then:
        no wake-up is lost while the caller was busy."""
        if since is not None and since != self.generation:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    @property
    def applied(self) -> int:
        assert self.driver is not None
        return self.driver.applied_index

    async def wait_applied(self, index: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.applied < index:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.changed(left)
        return True

    def is_leader(self) -> bool:
        return self.driver is not None and self.driver.status().leader == self.index

    def leader_name(self) -> str | None:
        lead = self.driver.status().leader if self.driver else 0
        return f"node-{lead}" if lead else None

    async def read_index(self) -> None:
        """Linearizable read barrier (ReadIndex through the leader)."""
        assert self.driver is not None
        try:
            wait = PROPOSE_TIMEOUT_S if self.is_leader() else FOLLOWER_WAIT_S
            await self.driver.read_index(timeout=wait)
        except NotLeader:
            raise NoLeader("no leader to confirm the read") from None
        except (TimeoutError, Overloaded):
            raise NoLeader("the leader did not confirm the read in time") from None

    # ------------------------------------------------------------ proposing

    async def sign_command(self, cmd: Command) -> Command:
        """Attach this member's identity-key signature (HSM) to a signed command."""
        msg = signing_message(cmd, self.cfg.cluster_id)
        sig = await asyncio.to_thread(self.slot.sign, msg)
        return with_signature(cmd, sig)

    async def propose(self, cmd: Command) -> Outcome:
        return await self.propose_bytes(encode_command(cmd))

    async def propose_bytes(self, data: bytes) -> Outcome:
        """Commit one encoded command (forwarded to the leader if need be); its outcome.

        TimeoutError / ProposalDropped / NodeStopped mean the outcome is unknown:
        the caller retries with the same request id, which never executes twice.
        """
        assert self.driver is not None
        try:
            raw = await self.driver.propose(data, timeout=PROPOSE_TIMEOUT_S)
        except NotLeader as exc:
            raw = await self._forward(exc.leader_id, data)
        except Overloaded:
            raise NoLeader("overloaded; retry") from None
        return decode_outcome(raw)

    def peer_api(self, name: str) -> tuple[str, int] | None:
        """Where member `name` serves its API: the replicated address book first (members
        added or moved through the log), then this node's configuration."""
        addr = self.machine.state.addresses.get(name)
        if addr is not None:
            return parse_address(addr.api)
        peer = self.cfg.peers.get(name)
        return peer.api if peer is not None else None

    def peer_url(self, name: str, path: str) -> str:
        api = self.peer_api(name)
        if api is None:
            raise NoLeader(f"no address known for {name}")
        return f"https://{format_address(api)}{path}"

    def peer_names(self) -> list[str]:
        """Every other member this node can reach (by the state, else its configuration)."""
        names = set(self.machine.state.members) or set(self.cfg.peers)
        return sorted(n for n in names if n != self.name and self.peer_api(n) is not None)

    async def _forward(self, leader: int, data: bytes) -> bytes:
        name = f"node-{leader}"
        if not leader or leader == self.index or self.peer_api(name) is None:
            raise NoLeader("no leader known")
        url = self.peer_url(name, "/v1/peer/propose")
        assert self.http is not None
        call = asyncio.ensure_future(self._post_propose(url, data))
        # A forward to a leader that hangs (a paused process accepts connections and never
        # answers) would wait out the HTTP timeout although a new leader is elected within
        # an election timeout: give up as soon as this node sees another leader. The old
        # one may still have proposed it: the outcome is unknown, and a retry with the same
        # request id is answered exactly once.
        give_up = time.monotonic() + FOLLOWER_WAIT_S
        while not call.done():
            await asyncio.wait({call}, timeout=FORWARD_POLL_S)
            now = self.driver.status().leader if self.driver is not None else 0
            if not call.done() and (now != leader or time.monotonic() > give_up):
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await call
                why = "the leader changed" if now != leader else "no answer from the leader"
                raise TimeoutError(f"{why} while forwarding: outcome unknown")
        return call.result()

    async def _post_propose(self, url: str, data: bytes) -> bytes:
        assert self.http is not None
        try:
            async with self.http.post(url, data=data, headers={"Content-Type": MSGPACK}) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return body
                if resp.status == 504:
                    raise TimeoutError("the leader timed out: outcome unknown")
                raise NoLeader(f"leader answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise NoLeader(f"leader unreachable ({exc.__class__.__name__})") from None

    async def propose_quietly(self, cmd: Command, what: str) -> Outcome | None:
        """Propose a duty's command; log (never raise) when it cannot be done now."""
        try:
            out = await self.propose(cmd)
        except (NoLeader, TimeoutError, ProposalDropped, NodeStopped) as exc:
            log.info("%s: not proposed now (%s)", what, exc.__class__.__name__)
            return None
        benign = ("duplicate_post", "request_decided", "epoch_not_forward", "request_id_conflict")
        if not out.ok and out.code not in benign:
            log.warning("%s: rejected: %s %s", what, out.code, out.detail[:200])
        return out

    # ------------------------------------------------------------ duties

    def may_act(self) -> bool:
        """May this member sign, coordinate or lead? Its key is the registered one and its
        HSM works (hsm_watch.py); otherwise it only replicates."""
        return self.hsm.ok and self.registered()

    def registered(self) -> bool:
        """Is this node's identity key the one the state registers for it (or, before the
        bootstrap, the one the bootstrap command names)? If not, it signs nothing."""
        member = self.machine.state.members.get(self.name)
        if member is None and not self.machine.state.bootstrapped:
            boot = {m.name: m for m in self.cfg.bootstrap_command.members}.get(self.name)
            return boot is not None and boot.public_key == self.identity
        return member is not None and member.public_key == self.identity

    async def _duties(self) -> None:
        """Reconcile on every change of the replica, and at least every 200 ms."""
        while True:
            seen = self.generation
            try:
                await self._bootstrap_if_needed()  # the operator's command, not signed here
                if not self.caught_up and self.driver is not None and self.driver.status().leader:
                    with contextlib.suppress(NoLeader):
                        await self.read_index()
                        self.caught_up = True
                if self.membership is not None:  # the address book, even before registered
                    await self.membership.reconcile()
                if not self.may_act():  # replicate only (and hand leadership on)
                    why = "identity key not registered" if self.hsm.ok else "its HSM is unusable"
                    if not self._unregistered_logged and self.caught_up:
                        log.warning("%s: %s, no duties", self.name, why)
                        self._unregistered_logged = True
                    await self._hand_over_leadership(why)
                    await self.changed(0.5, since=seen)
                    continue
                self._unregistered_logged = False
                if self.machine.state.bootstrapped:
                    await self._vote_epoch_if_due()
                    await self.dkg.reconcile()
                    await self.lifecycle.reconcile()  # lifecycle duty (lifecycle.py)
                    await self.audit_checkpoints.reconcile()  # audit_checkpoints.py
                    await self.repair.reconcile()  # repair.py
                    await self.refresh.reconcile()  # refresh.py
                    await self.escrow.reconcile()  # escrow.py: escrow, and recovery
                    if self.is_leader():
                        await self.signer.reconcile()
                    destroyed = self._destroyed_versions()
                    if destroyed != self._erased:
                        await asyncio.to_thread(self._erase_destroyed)
                        self._erased = destroyed
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("duty round failed; retrying")
                await asyncio.sleep(0.5)
            # At most one round per DUTY_MIN_S: under load a round per apply would spend
            # the CPU the requests need; signing itself starts from `_on_approved`.
            await asyncio.sleep(DUTY_MIN_S)
            await self.changed(0.2, since=seen)

    async def _hand_over_leadership(self, why: str) -> None:
        """A leader that may not sign (its key is not registered, or its HSM is unusable)
        would leave approved requests uncoordinated: it hands leadership to the first
        other member."""
        if not self.is_leader() or not self.machine.state.bootstrapped:
            return
        now = time.monotonic()
        if now < self._handover_after:
            return
        self._handover_after = now + HANDOVER_RETRY_S
        others = sorted((m.index, m.name) for m in self.machine.state.members.values()
                        if m.index != self.index)  # fmt: skip
        # Only to a member that says it can act: when none can (a whole cluster of fresh
        # nodes before `recover_members`), this one keeps leading, or leadership would
        # bounce between members that all hand it on.
        target = None
        for index, name in others:
            st = await self._peer_status(name)
            if st.get("registered") and (st.get("hsm") or {}).get("ok"):
                target = index
                break
        if target is None:
            return
        assert self.driver is not None
        try:
            await self.driver.transfer_leadership(target, timeout=2.0)
            log.info("handed leadership to node-%d (%s)", target, why)
        except Exception as exc:  # retried on the next round
            log.info("leadership hand-over failed: %s", exc.__class__.__name__)

    async def _peer_status(self, name: str) -> dict[str, Any]:
        """Another member's /v1/sys/status ({} if it does not answer within a second)."""
        assert self.http is not None
        try:
            async with self.http.get(self.peer_url(name, "/v1/sys/status"),
                                     timeout=aiohttp.ClientTimeout(total=1.0)) as r:  # fmt: skip
                body = await r.json() if r.status == 200 else {}
        except (aiohttp.ClientError, TimeoutError, NoLeader, ValueError) as exc:
            log.debug("status of %s: %s", name, exc.__class__.__name__)
            return {}
        return body if isinstance(body, dict) else {}

    async def _bootstrap_if_needed(self) -> None:
        if self.machine.state.bootstrapped or not self.is_leader():
            return
        out = await self.propose_quietly(self.cfg.bootstrap_command, "bootstrap")
        if out is not None and out.ok:
            log.info("cluster %s bootstrapped", self.cfg.cluster_id)

    async def _vote_epoch_if_due(self, *, nudge: bool = False) -> None:
        st = self.machine.state
        seen_epoch, since = self._epoch_seen
        now = time.monotonic()
        if st.epoch != seen_epoch:
            self._epoch_seen = (st.epoch, now)
            since = now
        interval = self.cfg.epoch_interval_s
        due = nudge or (interval > 0 and now - since >= interval)
        if not due or self._last_vote == st.epoch + 1:
            return
        if not self.registered():  # not a member, or its key is not (yet) the registered one
            return
        target = st.epoch + 1  # read now: a vote that moves the epoch changes `st.epoch`
        cmd = AdvanceEpoch(
            request_id=f"epoch-{target}", author=self.name, epoch=target, at=int(time.time()),
        )  # fmt: skip
        out = await self.propose_quietly(await self.sign_command(cmd), "epoch vote")
        if out is not None and (out.ok or out.code in ("duplicate_post", "request_id_conflict")):
            self._last_vote = target  # voted (or a retry of an earlier vote landed)

    async def nudge_epoch(self) -> bool:
        """An operator asked for the next epoch: vote for it now, at most once per
        `epoch_min_interval_s` (members still decide: the epoch moves on t votes)."""
        now = time.monotonic()
        if now - self._last_nudge < self.cfg.epoch_min_interval_s:
            return False
        self._last_nudge = now
        await self._vote_epoch_if_due(nudge=True)
        return True

    def _queue_checkpoint(self, index: int, state_hash: bytes) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the next snapshot will do
            self._checkpoints.put_nowait((index, state_hash))

    async def _post_checkpoints(self) -> None:
        """Sign each own deterministic snapshot's state hash with the HSM identity key."""
        while True:
            index, state_hash = await self._checkpoints.get()
            if not self.registered():
                continue
            msg = checkpoint_message(self.cfg.genesis, index, state_hash)
            try:
                sig = await asyncio.to_thread(self.slot.sign, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the HSM failed: this checkpoint is lost, not the task
                log.error("checkpoint %d not signed: the HSM failed (%s)", index,
                          exc.__class__.__name__)  # fmt: skip
                continue
            cmd = PostCheckpoint(
                request_id=f"checkpoint-{index}", author=self.name, index=index,
                state_hash=state_hash, signature=sig,
            )  # fmt: skip
            for _ in range(20):
                out = await self.propose_quietly(cmd, f"checkpoint {index}")
                if out is not None:
                    break
                await asyncio.sleep(0.5)

    def _destroyed_versions(self) -> frozenset[tuple[str, int]]:
        return frozenset(
            (k.key_id, v.number) for k in self.machine.state.keys.values()
            for v in k.versions.values() if v.state is VersionState.DESTROYED
        )  # fmt: skip

    def _erase_destroyed(self) -> None:
        """Crypto-erase this member's shares of destroyed versions (idempotent)."""
        keys = self.machine.state.keys
        doomed = []
        for sid in self.slot.list_shares():
            key = keys.get(sid.key_id)
            version = key.versions.get(sid.version) if key else None
            if version is not None and version.state is VersionState.DESTROYED:
                doomed.append(sid)
        if doomed:
            self.slot.destroy_shares(doomed)
            for sid in doomed:
                log.info("erased share of %s v%d (version destroyed)", sid.key_id, sid.version)

    # ------------------------------------------------------------ shares

    def share_id(self, key_id: str, version: int, generation: int | None = None) -> ShareId:
        """This member's share object of a version: of the generation the state names
        (a committed refresh moves it), unless `generation` is given."""
        if generation is None:
            key = self.machine.state.keys.get(key_id)
            v = key.versions.get(version) if key is not None else None
            generation = v.generation if v is not None else 0
        return ShareId(key_id, version, self.index, generation)

    def status(self) -> dict[str, Any]:
        assert self.driver is not None
        st = self.driver.status()
        state = self.machine.state
        failed = self.driver.failure is not None
        healthy = not failed and bool(st.leader) and state.bootstrapped and self.hsm.ok
        return {
            "node": self.name,
            "cluster_id": self.cfg.cluster_id,
            "role": st.role,
            "term": st.term,
            "leader": f"node-{st.leader}" if st.leader else None,
            "commit": st.commit,
            "applied": st.applied,
            "snapshot_index": st.snapshot_index,
            "log_first_index": self.driver.storage.first_index(),
            "epoch": state.epoch,
            "bootstrapped": state.bootstrapped,
            "audit_seq": len(state.audit),
            "health": "failed" if failed else ("ok" if healthy else "degraded"),
            "error": st.error if st.error or self.hsm.ok else f"hsm: {self.hsm.down}",
            "hsm": self.hsm.summary(),
            "registered": self.registered() if state.bootstrapped else None,
            "identity_key": self.identity.hex(),
            "recovery_key": self.recovery_key.hex(),
            "started_at": self.started_at,
            "signing": self.signer.summary() if self.signer is not None else {"count": 0},
            "snapshots": {
                k: v for k, v in sorted(self.driver.stats.items())
                if k.startswith(("snapshot", "refused"))
            },
            "stocked_nonces": self.stock.outstanding(),
        }


def result_request_id(kind: str, ref: str) -> str:
    """A deterministic request id for a member's post about request `ref`: a retry, or
    another leader's attempt, reuses it, so the post is never recorded twice."""
    return f"{kind}-{hashlib.sha256(ref.encode()).hexdigest()[:40]}"
