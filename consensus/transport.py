"""asyncio TCP transport for Raft messages: TLS 1.3, mutual certificate
authentication, length-prefixed msgpack frames, bounded queues.

Each node dials every peer once for its *outbound* traffic and accepts the
peers' connections for *inbound* traffic, so every connection carries one
direction only and needs no request/response matching.

Trust rules, all enforced here before a message reaches the core:

- a peer is the node id its verified certificate names (CN `node-<id>`);
  inbound connections from ids not in `peers` are closed at once, and an
  outbound connection whose server presents another id is closed;
- a frame whose decoded `msg.frm` differs from the authenticated id, or
  whose `msg.to` is not this node, is dropped and counted;
- a length prefix above `max_frame` closes the connection before any of the
  body is read; any other bad frame is dropped (`codec.decode_message`);
- snapshot stream frames (msgpack arrays, not maps) are checked by
  `snapstream.decode_frame`; a stream header obeys the two rules above, its
  chunks are tied to the authenticated sender's stream and never trusted for
  offsets or lengths, and a snapshot is delivered only after its SHA-256
  matches.

`send()` never blocks: it appends to the peer's bounded queue (the oldest
message is dropped when full; Raft retransmits). While the peer is connected,
a flush callback scheduled once per loop iteration writes everything queued
in one TLS write, so a Raft hop costs no task wake-up on the sending side;
the peer's sender task only dials (exponential backoff and jitter) and waits
for the socket to drain when the kernel buffer is full.

SNAPSHOT messages are streamed (`consensus.snapstream`): every one, whatever
its size, so that one tested path carries them all and any of them can
resume. The sender task writes a header, waits briefly for the receiver's
HAVE (sent back on the receiver's own outbound connection) and then writes
bounded chunks from the offset the receiver already holds, only while less
than `STREAM_WATER` sits in the transport's buffer: queued messages
(heartbeats, appends) are always written first and so wait behind at most
about two chunks, never the whole snapshot. The receiver spools chunks to a
file, checks length and SHA-256 at the end and delivers ONE SNAPSHOT message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections import Counter, deque
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path

from .codec import (
    DEFAULT_MAX_FRAME,
    DecodeError,
    FrameDecoder,
    FrameTooLarge,
    Limits,
    decode_message_async,
    encode_frame,
)
from .gate import HandshakeGate
from .messages import ConfState, Message, MsgType, Snapshot, SnapshotMeta
from .ratelog import limit_logger
from .snapstream import (
    DEFAULT_MAX_SNAPSHOT_BYTES,
    MAX_CHUNK,
    Chunk,
    Have,
    Header,
    Partial,
    Spool,
    SpoolError,
    StreamDecodeError,
    StreamLimits,
    decode_frame,
    digest_of,
    encode_chunk,
    encode_have,
    encode_header,
    is_stream_frame,
)
from .tls import PeerIdentityError, peer_node_id

log = logging.getLogger(__name__)
limit_logger(log)  # peers cause most of these lines: 10 a minute per message

READ_CHUNK = 64 * 1024
MAX_BATCH_BYTES = 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024  # bytes buffered in the transport before the sender waits
# A stream writes its next chunk only below this (and below the TLS transport's
# own high-water mark, so that a full buffer always means drain() really waits).
STREAM_WATER = 1024 * 1024
HAVE_TIMEOUT = 1.0  # seconds a sender waits for the receiver's HAVE before starting at 0
HASH_INLINE = 1024 * 1024  # larger snapshots are hashed in a worker thread


class _Phase(Enum):
    HASHING = 1  # SHA-256 being computed in a thread
    HEADER = 2  # header to be written on the (next) connection
    AWAIT_HAVE = 3  # header written; waiting for the receiver's offset
    DATA = 4  # writing chunks from `offset`


class _OutStream:
    """One SNAPSHOT message being streamed to a peer (at most one per peer)."""

    def __init__(self, msg: Message, digest: bytes | None) -> None:
        assert msg.snapshot is not None
        self.msg = msg
        self.data = msg.snapshot.data
        self.total = len(self.data)
        self.digest = digest
        self.phase = _Phase.HASHING if digest is None else _Phase.HEADER
        self.sid = 0
        self.offset = 0
        self.deadline = 0.0

    @property
    def key(self) -> tuple[int, int, int]:
        """Duplicates share it: the core re-sends the same snapshot after a timeout."""
        assert self.msg.snapshot is not None
        meta = self.msg.snapshot.meta
        return meta.index, meta.term, self.msg.term

    def header(self) -> Header:
        assert self.msg.snapshot is not None and self.digest is not None
        meta = self.msg.snapshot.meta
        return Header(
            sid=self.sid,
            term=self.msg.term,
            frm=self.msg.frm,
            to=self.msg.to,
            index=meta.index,
            snap_term=meta.term,
            voters=meta.conf.voters,
            learners=meta.conf.learners,
            total=self.total,
            digest=self.digest,
        )


class _Peer:
    """Outbound state for one peer: its queue, wake-up event and sender task."""

    def __init__(self, node_id: int, addr: tuple[str, int], queue_size: int) -> None:
        self.id = node_id
        self.addr = addr
        self.queue: deque[Message | bytes] = deque(maxlen=queue_size)  # bytes: a control frame
        self.stream: _OutStream | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.writer: asyncio.StreamWriter | None = None  # set while the sender pumps
        self.flush_scheduled = False


class Transport:
    """See the module docstring. Counters are in `stats` (a Counter of names).

    Snapshot streams: `spool_dir` holds partial incoming snapshots (one per
    sender, files 0600), so that a stream cut by a lost connection or a
    restart resumes; the runner passes `data_dir / "snap-incoming"`. With None
    a private temp directory is used and removed by `stop()` (resume then
    works across reconnects only). `max_snapshot_bytes` bounds one snapshot
    both ways; `have_timeout` is how long a sender waits for the receiver to
    say how much it holds before it streams from byte 0.
    """

    def __init__(
        self,
        node_id: int,
        listen_addr: tuple[str, int],
        peers: Mapping[int, tuple[str, int]],
        server_ctx: ssl.SSLContext,
        client_ctx: ssl.SSLContext,
        on_message: Callable[[Message], None],
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        queue_size: int = 4096,
        backoff_base: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 5.0,
        rng: random.Random | None = None,
        spool_dir: Path | None = None,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        have_timeout: float = HAVE_TIMEOUT,
        max_handshakes: int = 64,
        max_handshakes_per_ip: int = 8,
        max_inbound: int | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self.node_id = node_id
        self.listen_addr = listen_addr
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.on_message = on_message
        self.limits = Limits(max_frame=max_frame)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._rng = rng or random.Random()
        self._queue_size = queue_size
        self._started = False
        self._retired: set[asyncio.Task[None]] = set()  # senders of removed peers
        self._peers = {i: _Peer(i, a, queue_size) for i, a in peers.items() if i != node_id}
        self._server: asyncio.Server | None = None
        self._gate = HandshakeGate(
            self._serve,
            server_ctx,
            max_handshakes=max_handshakes,
            max_handshakes_per_ip=max_handshakes_per_ip,
            handshake_timeout=connect_timeout,
        )
        self._max_inbound = max_inbound
        self._inbound: dict[int, asyncio.StreamWriter] = {}
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = False
        self.stats: Counter[str] = Counter()
        # snapshot streams (see consensus.snapstream)
        self.chunk_size = max(1, min(MAX_CHUNK, max_frame // 2))
        self.have_timeout = have_timeout
        self._stream_limits = StreamLimits(max_frame, max_snapshot_bytes, self.limits.max_members)
        self._spool = Spool(spool_dir)
        self._partials: dict[int, Partial] = {}  # sender id -> what we hold of its snapshot
        self._rx_locks: dict[int, asyncio.Lock] = {}
        self._aux: set[asyncio.Task[None]] = set()  # digest computations

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        self._partials = self._spool.open(self._peers)  # partials that survived a restart
        host, port = self.listen_addr
        self._set_inbound_cap()
        self._server = await self._gate.start(host, port)
        self._started = True
        for p in self._peers.values():
            self._start_peer(p)

    def _set_inbound_cap(self) -> None:
        # one inbound connection per peer, with room for reconnects replacing old ones
        self._gate.max_established = self._max_inbound or max(8, 4 * len(self._peers))

    def _start_peer(self, p: _Peer) -> None:
        p.task = asyncio.create_task(self._run_peer(p), name=f"raft-peer-{p.id}")

    def peers(self) -> dict[int, tuple[str, int]]:
        """The current peer map (this node excluded)."""
        return {i: p.addr for i, p in self._peers.items()}

    def add_peer(self, node_id: int, addr: tuple[str, int]) -> None:
        """Start talking to `node_id` at `addr` (a node joining the cluster), or
        move it to a new address. Its inbound connections are accepted from now on."""
        if node_id == self.node_id or node_id < 1:
            raise ValueError(f"invalid peer id {node_id}")
        old = self._peers.get(node_id)
        if old is not None:
            if old.addr == addr:
                return
            self._drop_peer(old)
        p = _Peer(node_id, addr, self._queue_size)
        self._peers[node_id] = p
        self._set_inbound_cap()
        if self._started and not self._stopping:
            self._start_peer(p)

    def remove_peer(self, node_id: int) -> None:
        """Stop talking to `node_id` (a node removed from the cluster): its queue
        is dropped, its outbound and inbound connections are closed."""
        p = self._peers.pop(node_id, None)
        if p is not None:
            self._drop_peer(p)
        inbound = self._inbound.pop(node_id, None)
        if inbound is not None:
            inbound.transport.abort()
        partial = self._partials.pop(node_id, None)
        if partial is not None:
            self._spool.discard(partial)

    def _drop_peer(self, p: _Peer) -> None:
        p.queue.clear()
        p.stream = None
        if p.writer is not None:
            p.writer.transport.abort()
        if p.task is not None:
            p.task.cancel()
            self._retired.add(p.task)
            p.task.add_done_callback(self._retired.discard)

    @property
    def bound_addr(self) -> tuple[str, int]:
        """The address actually listened on (useful with port 0)."""
        assert self._server is not None
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop(self) -> None:
        """Stop listening and dialing; close every connection. Queued messages are lost."""
        self._stopping = True
        self._gate.close()  # stops listening; aborts connections still in their handshake
        self._server = None
        peers = [p.task for p in self._peers.values() if p.task is not None]
        peers += list(self._retired)
        for p in self._peers.values():
            p.wake.set()  # a sender that missed its cancellation still sees _stopping
        for t in peers:
            t.cancel()
        for a in list(self._aux):
            a.cancel()
        for w in list(self._handlers.values()):
            w.transport.abort()  # handlers then finish on their own (not cancelled:
        handlers = list(self._handlers)  # asyncio logs cancelled connection callbacks)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self.connect_timeout)
            for t in pending:
                t.cancel()
        await asyncio.gather(*peers, *self._aux, return_exceptions=True)
        self._spool.close()  # a temp spool goes; a given spool_dir keeps its partials

    # --- sending --------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Queue `msg` for `msg.to`; never blocks, never raises for a bad peer.
        A SNAPSHOT message becomes the peer's snapshot stream instead."""
        peer = self._peers.get(msg.to)
        if peer is None or self._stopping:
            self.stats["dropped_unknown_dest"] += 1
            return
        if msg.type is MsgType.SNAPSHOT and msg.snapshot is not None:
            self._start_stream(peer, msg)
            return
        self._enqueue(peer, msg)

    def _enqueue(self, peer: _Peer, item: Message | bytes) -> None:
        if len(peer.queue) == peer.queue.maxlen:
            self.stats["dropped_queue_full"] += 1  # deque drops the oldest
        peer.queue.append(item)  # while dialling, the sender flushes it once connected
        if peer.writer is not None and not peer.flush_scheduled:
            peer.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, peer)

    def _flush(self, peer: _Peer) -> None:
        """Write what is queued for a connected peer, unless its buffer is full
        (then the sender task waits for the drain and calls this again)."""
        peer.flush_scheduled = False
        writer = peer.writer
        if writer is None or self._stopping or writer.transport.is_closing():
            return
        while peer.queue:
            if writer.transport.get_write_buffer_size() > HIGH_WATER:
                peer.wake.set()
                return
            frames: list[bytes] = []
            size = 0
            sent = 0
            while peer.queue and size < MAX_BATCH_BYTES:
                m = peer.queue.popleft()
                if isinstance(m, bytes):  # a stream control frame (HAVE), already encoded
                    frames.append(m)
                    size += len(m)
                    self.stats["snap_have_sent"] += 1
                    continue
                try:
                    f = encode_frame(m, self.limits.max_frame)
                except FrameTooLarge:
                    self.stats["dropped_too_large"] += 1
                    log.warning("dropped a %s to %d: larger than max_frame", m.type.name, m.to)
                    continue
                frames.append(f)
                size += len(f)
                sent += 1
            if frames:
                writer.write(b"".join(frames))
                self.stats["sent"] += sent

    # --- sending snapshot streams ------------------------------------------------------

    def _start_stream(self, peer: _Peer, msg: Message) -> None:
        """Make `msg` the peer's snapshot stream: a duplicate of the one in flight
        is dropped (the core re-sends on a timeout), anything else replaces it."""
        assert msg.snapshot is not None
        size = len(msg.snapshot.data)
        if size > self._stream_limits.max_snapshot_bytes:
            self.stats["snap_out_too_large"] += 1
            log.warning(
                "dropped a SNAPSHOT to %d: %d bytes exceed max_snapshot_bytes",
                msg.to,
                size,
            )
            return
        old = peer.stream
        digest: bytes | None = None
        if old is not None:
            if old.key == (msg.snapshot.meta.index, msg.snapshot.meta.term, msg.term):
                self.stats["snap_out_duplicates"] += 1
                return
            self.stats["snap_out_replaced"] += 1
            if old.data is msg.snapshot.data:
                digest = old.digest  # the same bytes under a newer message term
        if digest is None and size <= HASH_INLINE:
            digest = digest_of(msg.snapshot.data)
        stream = _OutStream(msg, digest)
        peer.stream = stream
        if digest is None:
            task = asyncio.get_running_loop().create_task(self._hash(peer, stream))
            self._aux.add(task)
            task.add_done_callback(self._aux.discard)
        else:
            peer.wake.set()

    async def _hash(self, peer: _Peer, stream: _OutStream) -> None:
        """SHA-256 of a large snapshot off the event loop (hashlib releases the GIL)."""
        stream.digest = await asyncio.to_thread(digest_of, stream.data)
        stream.phase = _Phase.HEADER
        if peer.stream is stream:
            peer.wake.set()

    def _stream_step(self, peer: _Peer, writer: asyncio.StreamWriter) -> tuple[bool, float | None]:
        """Advance the peer's stream as far as the buffer allows. Returns (blocked,
        timeout): blocked = more chunks wait for the socket to drain; timeout =
        seconds until the wait for a HAVE ends."""
        s = peer.stream
        if s is None or s.phase is _Phase.HASHING or peer.queue or writer.transport.is_closing():
            return False, None
        loop = asyncio.get_running_loop()
        if s.phase is _Phase.HEADER:
            s.sid = int.from_bytes(os.urandom(8), "big") >> 1 or 1
            frame = encode_header(s.header())
            if max(len(frame) - 4, self.chunk_size + 64) > self.limits.max_frame:
                peer.stream = None  # only with a max_frame of a few hundred bytes
                self.stats["snap_out_failed"] += 1
                log.warning("dropped a SNAPSHOT to %d: max_frame too small", peer.id)
                return False, None
            writer.write(frame)
            s.phase = _Phase.AWAIT_HAVE
            s.deadline = loop.time() + self.have_timeout
            self.stats["snap_out_started"] += 1
        if s.phase is _Phase.AWAIT_HAVE:
            left = s.deadline - loop.time()
            if left > 0:
                return False, left
            self.stats["snap_out_have_timeouts"] += 1
            s.phase, s.offset = _Phase.DATA, 0
        buffered = writer.transport.get_write_buffer_size
        water = max(STREAM_WATER, writer.transport.get_write_buffer_limits()[1])
        view = memoryview(s.data)
        while s.offset < s.total:
            if buffered() >= water:  # the TLS transport is paused: drain() will wait
                return True, None
            n = min(self.chunk_size, s.total - s.offset)
            writer.write(encode_chunk(s.sid, s.offset, view[s.offset : s.offset + n]))
            s.offset += n
            self.stats["snap_out_bytes"] += n
        peer.stream = None  # every byte is in the socket's hands
        self.stats["snap_out_completed"] += 1
        return False, None

    def _on_have(self, pid: int, hv: Have) -> None:
        """The receiver says how much of our stream it already holds: skip it."""
        peer = self._peers.get(pid)
        s = peer.stream if peer is not None else None
        if (
            s is None
            or s.phase is not _Phase.AWAIT_HAVE
            or hv.sid != s.sid
            or hv.offset > s.total
            or (hv.index, hv.snap_term, hv.digest) != (s.key[0], s.key[1], s.digest)
        ):
            self.stats["snap_have_ignored"] += 1  # late, or for another stream
            return
        assert peer is not None
        s.phase, s.offset = _Phase.DATA, hv.offset
        if hv.offset:
            self.stats["snap_out_resumed"] += 1
            self.stats["snap_out_skipped_bytes"] += hv.offset
        peer.wake.set()

    def connected(self, peer_id: int) -> bool:
        p = self._peers.get(peer_id)
        return p is not None and p.connected

    def _backoff(self, attempt: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2 ** min(attempt, 30)))
        return self._rng.uniform(cap / 2, cap)  # "equal jitter"

    async def _run_peer(self, peer: _Peer) -> None:
        attempt = 0
        while not self._stopping:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        *peer.addr,
                        ssl=self.client_ctx,
                        ssl_handshake_timeout=self.connect_timeout,
                    ),
                    self.connect_timeout,
                )
                got = peer_node_id(writer.get_extra_info("peercert"))
                if got != peer.id:
                    self.stats["rejected_server_identity"] += 1
                    log.warning("peer %d at %s presented node id %d", peer.id, peer.addr, got)
                    raise PeerIdentityError("server identity mismatch")
                if self._stopping:
                    return
                self.stats["connects"] += 1
                peer.connected = True
                attempt = 0
                await self._pump(peer, reader, writer)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ssl.SSLError, PeerIdentityError, EOFError) as exc:
                self.stats["connect_failures" if not peer.connected else "disconnects"] += 1
                log.debug("peer %d: %s", peer.id, type(exc).__name__)
            finally:
                peer.connected = False
                if writer is not None:
                    writer.transport.abort()
            if self._stopping:
                return
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    async def _pump(
        self, peer: _Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Hand the connection to `_flush`; wait for the socket when it is full,
        until the connection fails or the peer closes it."""
        # The peer never writes on this connection: any read completing means EOF/error.
        closed = asyncio.ensure_future(reader.read(1))
        peer.writer = writer
        try:
            while not self._stopping:
                peer.wake.clear()
                self._flush(peer)  # what queued while we were dialling, or a backlog
                blocked, timeout = self._stream_step(peer, writer)  # after the queue
                if peer.queue or blocked:  # the transport's buffer is full: wait for the kernel
                    self.stats["snap_send_waits" if blocked else "send_waits"] += 1
                    waiter = asyncio.ensure_future(writer.drain())
                else:
                    waiter = asyncio.ensure_future(peer.wake.wait())
                done, _ = await asyncio.wait(
                    {waiter, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if closed in done:
                    raise EOFError("peer closed the connection")
                if waiter in done and waiter.exception() is not None:
                    raise waiter.exception()  # type: ignore[misc]
        finally:
            peer.writer = None
            closed.cancel()
            s = peer.stream
            if s is not None and s.phase in (_Phase.AWAIT_HAVE, _Phase.DATA):
                s.phase = _Phase.HEADER  # the next connection starts with a header (and resumes)
                self.stats["snap_out_interrupted"] += 1

    # --- receiving ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._stopping or task is None:
            writer.transport.abort()
            return
        self._handlers[task] = writer
        try:
            await self._serve_inner(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            self.stats["inbound_errors"] += 1
        except Exception:
            self.stats["inbound_errors"] += 1
            log.exception("inbound connection handler failed")
        finally:
            writer.transport.abort()
            self._handlers.pop(task, None)

    async def _serve_inner(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            pid = peer_node_id(writer.get_extra_info("peercert"))
        except PeerIdentityError:
            self.stats["rejected_identity"] += 1
            return
        if pid not in self._peers:
            self.stats["rejected_unknown_peer"] += 1
            log.warning("closed a connection from unknown node %d", pid)
            return
        old = self._inbound.get(pid)
        if old is not None:
            old.transport.abort()  # a reconnecting peer replaces its old connection
        self._inbound[pid] = writer
        dec = FrameDecoder(self.limits.max_frame)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                try:
                    bodies = dec.feed(data)
                except FrameTooLarge as exc:
                    for body in exc.complete:
                        await self._dispatch(pid, body)
                    self.stats["closed_oversized"] += 1
                    log.warning("closed connection from node %d: oversized frame", pid)
                    return
                for body in bodies:
                    await self._dispatch(pid, body)
        finally:
            if self._inbound.get(pid) is writer:
                del self._inbound[pid]

    async def _dispatch(self, pid: int, body: bytes) -> None:
        """Maps are messages (`decode_message`); arrays are snapshot stream frames."""
        if is_stream_frame(body):
            await self._on_stream_frame(pid, body)
        else:
            await self._deliver(pid, body)

    async def _deliver(self, pid: int, body: bytes) -> None:
        try:
            msg = await decode_message_async(body, self.limits)  # large frames off the loop
        except DecodeError as exc:
            self.stats["dropped_decode"] += 1
            log.warning("dropped a frame from node %d: %s", pid, exc)
            return
        if msg.frm != pid:
            self.stats["dropped_spoofed"] += 1
            log.warning("dropped a frame from node %d claiming to be %d", pid, msg.frm)
            return
        if msg.to != self.node_id:
            self.stats["dropped_misaddressed"] += 1
            return
        self.stats["received"] += 1
        try:
            self.on_message(msg)
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("on_message failed for a %s from node %d", msg.type.name, pid)

    # --- receiving snapshot streams ----------------------------------------------------

    async def _on_stream_frame(self, pid: int, body: bytes) -> None:
        try:
            f = decode_frame(body, self._stream_limits)
        except StreamDecodeError as exc:
            self.stats["snap_dropped_decode"] += 1
            log.warning("dropped a stream frame from node %d: %s", pid, exc)
            return
        if isinstance(f, Have):
            self._on_have(pid, f)
            return
        # One sender's frames are handled in order even across its reconnections
        # (the old connection's handler may still be finishing a write).
        lock = self._rx_locks.setdefault(pid, asyncio.Lock())
        async with lock:
            try:
                if isinstance(f, Header):
                    await self._on_header(pid, f)
                else:
                    await self._on_chunk(pid, f)
            except OSError as exc:  # the spool's disk: give up this partial
                self._fail_partial(pid, f"spool I/O error: {type(exc).__name__}: {exc}")

    def _fail_partial(self, pid: int, why: str) -> None:
        self.stats["snap_in_failed"] += 1
        log.warning("discarded a snapshot stream from node %d: %s", pid, why)
        p = self._partials.pop(pid, None)
        if p is not None:
            with contextlib.suppress(OSError):
                self._spool.discard(p)

    async def _on_header(self, pid: int, h: Header) -> None:
        if h.frm != pid:
            self.stats["snap_dropped_spoofed"] += 1
            log.warning("dropped a stream from node %d claiming to be %d", pid, h.frm)
            return
        if h.to != self.node_id:
            self.stats["snap_dropped_misaddressed"] += 1
            return
        current = self._partials.pop(pid, None)
        p = await asyncio.to_thread(self._spool.begin, pid, h, current)
        self._partials[pid] = p
        self.stats["snap_in_started"] += 1
        if p.offset:
            self.stats["snap_in_resumed"] += 1
        peer = self._peers.get(pid)
        if peer is not None:  # tell the sender where to start, on our own outbound link
            self._enqueue(peer, encode_have(Have(h.sid, h.index, h.snap_term, h.digest, p.offset)))
        if p.offset == p.total:
            await self._complete(pid, p)

    async def _on_chunk(self, pid: int, c: Chunk) -> None:
        p = self._partials.get(pid)
        if p is None or p.header is None or p.header.sid != c.sid:
            self.stats["snap_chunks_unexpected"] += 1  # no header, or an older stream's
            return
        if c.offset > p.offset or c.offset + len(c.data) > p.total:
            self.stats["snap_chunks_refused"] += 1  # a gap, or past the announced length
            log.warning(
                "refused a chunk from node %d: [%d, %d) with %d of %d bytes held",
                pid, c.offset, c.offset + len(c.data), p.offset, p.total,
            )  # fmt: skip
            return
        await asyncio.to_thread(self._spool.write, p, c.offset, c.data)
        self.stats["snap_in_bytes"] += len(c.data)
        if p.offset == p.total:
            await self._complete(pid, p)

    async def _complete(self, pid: int, p: Partial) -> None:
        """Check length and SHA-256 of the whole file and deliver ONE message."""
        h = p.header
        assert h is not None
        del self._partials[pid]
        try:
            data = await asyncio.to_thread(self._spool.finish, p)
        except SpoolError as exc:
            self.stats["snap_in_failed"] += 1
            self.stats["snap_in_digest_mismatch"] += 1
            log.warning("dropped a snapshot from node %d: %s", pid, exc)
            return
        self.stats["snap_in_completed"] += 1
        # A partial of another sender at or below this index is no longer needed.
        for q, other in list(self._partials.items()):
            lock = self._rx_locks.get(q)
            if other.index <= h.index and (lock is None or not lock.locked()):
                with contextlib.suppress(OSError):
                    self._spool.discard(self._partials.pop(q))
        if self._stopping:
            return  # the read may outlast stop(); the core would see it after its end
        meta = SnapshotMeta(h.index, h.snap_term, ConfState(h.voters, h.learners))
        msg = Message(
            MsgType.SNAPSHOT, to=h.to, frm=h.frm, term=h.term, snapshot=Snapshot(meta, data)
        )
        self.stats["received"] += 1
        try:
            self.on_message(msg)
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("on_message failed for a SNAPSHOT from node %d", pid)
