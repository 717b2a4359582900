"""A userspace link delayer: latency and jitter for the packets of one drill link.

`python -m chaos.netdelay --queue N --delay-ms D --jitter-ms J --seed S --tag DIR`

The kernel the drills were first run on has no `sch_netem` (nor `sch_prio` or
`cls_fw`), so `tc netem` cannot delay a link there. Instead, the drill's iptables
rules (`chaos.netfault`) send the packets of one link to netfilter queue N
(`-j NFQUEUE --queue-num N --queue-bypass`); this process, running inside the
drill's network namespace, takes each packet's id from the queue (metadata only,
never the payload) and gives the kernel its ACCEPT verdict `D ± J` milliseconds
later (uniform jitter). Verdicts keep the order the packets arrived in (a packet
never overtakes an earlier one of the link: like one path, unlike netem's default
reordering), so jitter shows as variable latency with head-of-line blocking.
Loss is not done here: it is an iptables `statistic` rule in the kernel.

SIGTERM or SIGINT: every held packet is accepted at once and the process exits. If
it dies, `--queue-bypass` lets the link's packets through undelayed (and the kernel
drops the packets it held; TCP retransmits them).

The nfnetlink_queue protocol (linux/netfilter/nfnetlink_queue.h) is spoken directly
with `socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)`; the message builders and the
parser are pure functions (tests/chaos/test_netfault.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_GSO = 1 << 2
NF_ACCEPT = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_DONE = 3
AF_INET = 2
QUEUE_MAXLEN = 20000


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def message(msg_type: int, queue: int, attrs: bytes, seq: int = 0, ack: bool = False) -> bytes:
    """nlmsghdr + nfgenmsg (AF_INET, version 0, queue number big-endian) + attributes."""
    body = struct.pack("!BBH", AF_INET, 0, queue) + attrs
    flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags,
                       seq, 0) + body  # fmt: skip


def bind_messages(queue: int) -> list[bytes]:
    """Bind queue `queue`, copy metadata only, fail open when full, GSO packets whole."""
    flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    return [
        message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND,
                                                                         0, 0)), 1, ack=True),
        message(NFQNL_MSG_CONFIG, queue,
                _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
                + _attr(NFQA_CFG_MASK, struct.pack("!I", flags))
                + _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags)), 2, ack=True),
    ]  # fmt: skip


def verdict(queue: int, packet_id: int, what: int = NF_ACCEPT) -> bytes:
    return message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR,
                                                   struct.pack("!II", what, packet_id)))


def parse(data: bytes) -> tuple[list[int], list[str]]:
    """Packet ids of the NFQNL_MSG_PACKET messages in one datagram, and errors (netlink
    error messages with a nonzero code)."""
    ids: list[int] = []
    errors: list[str] = []
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, off + 16)[0]
            if code != 0:
                errors.append(os.strerror(-code))
        elif mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            a = off + 20  # after nlmsghdr (16) and nfgenmsg (4)
            end = off + length
            while a + 4 <= end:
                alen, akind = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if (akind & 0x3FFF) == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return ids, errors


class Delayer:
    """Release times for the packets of one link: `delay ± jitter`, never before an
    earlier packet's (FIFO)."""

    def __init__(self, delay_ms: float, jitter_ms: float, seed: int) -> None:
        self.delay = delay_ms / 1000
        self.jitter = jitter_ms / 1000
        self.rng = random.Random(seed)
        self.last = 0.0

    def release_at(self, now: float) -> float:
        d = self.delay + (self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        self.last = max(self.last, now + max(0.0, d))
        return self.last


def run(queue: int, delay_ms: float, jitter_ms: float, seed: int) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    for m in bind_messages(queue):
        sock.send(m)
        _, errors = parse(sock.recv(65536))
        if errors:
            print(f"netdelay: queue {queue}: {errors[0]}", file=sys.stderr, flush=True)
            return 1
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    d = Delayer(delay_ms, jitter_ms, seed)
    held: collections.deque[tuple[float, int]] = collections.deque()
    seen = 0
    print(f"netdelay: queue {queue}: {delay_ms:g} ms ± {jitter_ms:g} ms", flush=True)
    while not stopping:
        now = time.monotonic()
        while held and held[0][0] <= now:
            sock.send(verdict(queue, held.popleft()[1]))
        wait = max(0.0, held[0][0] - now) if held else 0.5
        try:
            ready, _, _ = select.select([sock], [], [], wait)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            data = sock.recv(1 << 20)
        except InterruptedError:
            continue
        except OSError as exc:  # ENOBUFS: the kernel dropped messages; go on
            print(f"netdelay: {exc}", file=sys.stderr, flush=True)
            continue
        ids, _ = parse(data)
        now = time.monotonic()
        for pid in ids:
            held.append((d.release_at(now), pid))
        seen += len(ids)
    for _, pid in held:
        sock.send(verdict(queue, pid))
    print(f"netdelay: queue {queue}: {seen} packet(s) delayed; stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.netdelay")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="the drill's work directory (for `drill clean`)")
    a = p.parse_args(argv)
    return run(a.queue, a.delay_ms, a.jitter_ms, a.seed)


if __name__ == "__main__":
    sys.exit(main())
