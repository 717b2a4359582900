"""Network faults between drill nodes: which node is which on the wire, the iptables
rules of partitions, cut links and slow links, and the commands that apply them.

Everything here is pure (strings and argv lists; `tests/chaos/test_netfault.py`);
`chaos.sandbox` runs the commands, always as `ip netns exec <the drill's namespace>
...`, so no rule can land in the host's tables.

Inside a drill's namespace every node listens on 127.0.0.1 (a raft port and an API
port) and runs with its own group id (`node_gid`: node-N has 47100 + N). A packet's
sender is therefore the `owner` match of its socket (`-m owner --gid-owner`), and its
receiver is the destination port. Each node dials every peer's raft port for its
outbound raft messages and accepts the peers' connections for inbound ones
(`consensus/transport.py`), and calls peers' API ports for the signing and repair
protocols. So:

- cutting A -> B drops every packet A's sockets send to B's raft and API ports
  (`filter OUTPUT ... --gid-owner gA ... --dports rB,aB -j DROP`): A's raft messages
  to B are lost and A's API calls to B time out, while B's raft messages to A and
  B's API calls to A (request and answer) go through. A link cut both ways is both
  directions; a partition cuts every link between its groups both ways;
- a slow link A <-> B marks the connections between them (`mangle OUTPUT`: the first
  packet A sends to B's ports or B to A's sets the connection's mark, every packet
  restores it, so the answers on those connections carry it too); then `filter
  OUTPUT` drops a random `loss_pct` of the marked packets (`-m statistic`) and queues
  the rest to netfilter queue `fault + 1` (`-j NFQUEUE --queue-bypass`), where
  `chaos.netdelay` holds each one `delay ± jitter` ms. (The kernel the drills were
  first run on has no sch_netem, so `tc netem` could not do it there.)

The drill's own clients (the workload, the CLI, status probes) run with group 0 and
are never cut: they reach every node, as clients outside a partitioned network do.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

GID_BASE = 47100  # node-N runs with group id GID_BASE + N inside a drill's namespace
MARK_BASE = 0x100  # slow-link fault i marks its connections MARK_BASE + i
NETNS_PREFIX = "custody-drill-"


def node_gid(name: str) -> int:
    return GID_BASE + int(name.rsplit("-", 1)[1])


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A node on the wire: its group id (sender) and its raft and API ports (receiver)."""

    name: str
    gid: int
    ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SlowLink:
    """Slow-link fault `fault` on the link between nodes `a` and `b` (both ways)."""

    fault: int
    a: str
    b: str
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def mark(self) -> int:
        return MARK_BASE + self.fault

    @property
    def queue(self) -> int | None:
        """The netfilter queue of a delayed link (None: loss only, nothing queued)."""
        return self.fault + 1 if self.delay_ms > 0 else None


def endpoints(nodes: Iterable[Mapping[str, object]]) -> dict[str, Endpoint]:
    """From `cluster.json`'s nodes (`name`, `raft` and `api` as host:port)."""
    out = {}
    for n in nodes:
        name = str(n["name"])
        ports = tuple(int(str(n[k]).rsplit(":", 1)[1]) for k in ("raft", "api"))
        out[name] = Endpoint(name, node_gid(name), ports)
    return out


def _to(e: Endpoint) -> str:
    return f"-p tcp -m multiport --dports {','.join(map(str, e.ports))}"


def ruleset(eps: Mapping[str, Endpoint], cuts: Iterable[tuple[int, str, str]],
            slows: Iterable[SlowLink]) -> str:  # fmt: skip
    """The whole `iptables-restore` input for the current faults: `cuts` are (fault,
    sender, receiver) triples, `slows` the slow links. Applying it replaces every rule
    of the namespace's filter and mangle tables (an empty fault set: no rules)."""
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    mangle = ["*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
              ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]"]  # fmt: skip
    for fault, src, dst in sorted(set(cuts)):
        filt.append(f"-A OUTPUT -m owner --gid-owner {eps[src].gid} {_to(eps[dst])} "
                    f'-m comment --comment "fault {fault}: cut {src}->{dst}" -j DROP')  # fmt: skip
    slow = sorted(set(slows), key=lambda s: (s.fault, s.a, s.b))
    for s in slow:
        for src, dst in ((s.a, s.b), (s.b, s.a)):
            mangle.append(f"-A OUTPUT -m owner --gid-owner {eps[src].gid} {_to(eps[dst])} "
                          f'-m comment --comment "fault {s.fault}: slow {s.a}<->{s.b}" '
                          f"-j CONNMARK --set-mark {s.mark:#x}")  # fmt: skip
    if slow:
        mangle.append("-A OUTPUT -j CONNMARK --restore-mark")
    for s in slow:
        if s.loss_pct > 0:
            filt.append(f"-A OUTPUT -m mark --mark {s.mark:#x} -m statistic --mode random "
                        f"--probability {s.loss_pct / 100:.4f} -j DROP")  # fmt: skip
        if s.queue is not None:
            filt.append(f"-A OUTPUT -m mark --mark {s.mark:#x} -j NFQUEUE --queue-num "
                        f"{s.queue} --queue-bypass")  # fmt: skip
    return "\n".join([*filt, "COMMIT", *mangle, "COMMIT", ""])


def partition_cuts(fault: int, groups: Sequence[Sequence[str]]) -> list[tuple[int, str, str]]:
    """Every link between two groups, cut both ways."""
    return [(fault, a, b) for i, ga in enumerate(groups) for j, gb in enumerate(groups)
            if i != j for a in ga for b in gb]  # fmt: skip


def link_cuts(fault: int, links: Sequence[tuple[str, str]],
              oneway: bool) -> list[tuple[int, str, str]]:  # fmt: skip
    out = []
    for a, b in links:
        out.append((fault, a, b))
        if not oneway:
            out.append((fault, b, a))
    return out


# ---------------------------------------------------------------- commands


def netns_exec(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def setup_commands(ns: str) -> list[list[str]]:
    """Create the namespace and bring its loopback up (the only interface it has)."""
    return [["ip", "netns", "add", ns], netns_exec(ns, "ip", "link", "set", "lo", "up")]


def restore_command(ns: str) -> list[str]:
    """`iptables-restore` in the namespace; its input is `ruleset(...)`."""
    return netns_exec(ns, "iptables-restore")


def delayer_command(ns: str, python: str, s: SlowLink, jitter_ms: float, seed: int,
                    tag: str) -> list[str]:  # fmt: skip
    assert s.queue is not None
    return netns_exec(ns, python, "-m", "chaos.netdelay", "--queue", str(s.queue),
                      "--delay-ms", f"{s.delay_ms:g}", "--jitter-ms", f"{jitter_ms:g}",
                      "--seed", str(seed), "--tag", tag)  # fmt: skip


# ---------------------------------------------------------------- resolving targets


class Unresolved(Exception):
    """A fault's targets cannot be resolved now (the reason is the message)."""


class _Picker:
    """Target words of one fault to nodes: `node-N` and `leader` always the same node,
    each `follower` (a non-leader) or `random` a live node no other word of the fault
    named, `rest` every node no word named."""

    def __init__(self, names: Sequence[str], leader: str | None, live: Sequence[str],
                 rng: random.Random) -> None:  # fmt: skip
        self.names, self.leader, self.live, self.rng = list(names), leader, list(live), rng
        self.used: set[str] = set()

    def fixed(self, word: str) -> str | None:
        if word == "leader":
            if self.leader is None:
                raise Unresolved("no leader found within 8 s")
            self.used.add(self.leader)
            return self.leader
        if word.startswith("node-"):
            self.used.add(word)
            return word
        return None

    def pick(self, word: str) -> str:
        pool = [n for n in self.live if n not in self.used
                and (word == "random" or n != self.leader)]  # fmt: skip
        if not pool:
            raise Unresolved(f"no live {word} node left to pick")
        n = self.rng.choice(pool)
        self.used.add(n)
        return n


def resolve_groups(groups: Sequence[Sequence[str]], names: Sequence[str], leader: str | None,
                   live: Sequence[str], rng: random.Random) -> list[list[str]]:  # fmt: skip
    p = _Picker(names, leader, live, rng)
    out: list[list[str | None]] = [[p.fixed(w) for w in g] for g in groups]
    for g, words in zip(out, groups, strict=True):
        for i, w in enumerate(words):
            if w in ("follower", "random"):
                g[i] = p.pick(w)
    rest = [n for n in p.names if n not in p.used]
    res = [rest if tuple(ws) == ("rest",) else [n for n in g if n is not None]
           for g, ws in zip(out, groups, strict=True)]  # fmt: skip
    if any(not g for g in res):
        raise Unresolved("a group would be empty")
    return res


def resolve_links(links: Sequence[tuple[str, str]], names: Sequence[str], leader: str | None,
                  live: Sequence[str], rng: random.Random) -> list[tuple[str, str]]:  # fmt: skip
    p = _Picker(names, leader, live, rng)
    out = [[p.fixed(a), p.fixed(b)] for a, b in links]
    for pair, words in zip(out, links, strict=True):
        for i, w in enumerate(words):
            if w in ("follower", "random"):
                pair[i] = p.pick(w)
    res = []
    for a, b in out:
        assert a is not None and b is not None
        if a == b:
            raise Unresolved(f"both ends of a link are {a}")
        res.append((a, b))
    return res
