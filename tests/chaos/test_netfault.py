"""Network faults without a network: the iptables rules, the commands, target
resolution, and the NFQUEUE delayer's messages (pure; no root needed). One test at the
end feeds a ruleset to the real iptables-restore in a throwaway namespace when run as
root (skipped otherwise)."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import uuid

import pytest

from chaos import netdelay, netfault
from chaos.netfault import Endpoint, SlowLink, Unresolved

NODES = [{"name": f"node-{i}", "raft": f"127.0.0.1:{5000 + i}", "api": f"127.0.0.1:{6000 + i}"}
         for i in (1, 2, 3)]  # fmt: skip
EPS = netfault.endpoints(NODES)
NAMES = ["node-1", "node-2", "node-3"]


def rules(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("-A ")]


def test_endpoints_and_gids() -> None:
    assert EPS["node-2"] == Endpoint("node-2", 47102, (5002, 6002))
    assert netfault.node_gid("node-7") == 47107


def test_no_faults_no_rules() -> None:
    text = netfault.ruleset(EPS, [], [])
    assert rules(text) == []
    # both tables are replaced whole (a healed fault leaves nothing behind)
    assert text.splitlines()[0] == "*filter" and "*mangle" in text and text.count("COMMIT") == 2


def test_cut_is_the_senders_packets_to_the_receivers_ports() -> None:
    text = netfault.ruleset(EPS, [(3, "node-1", "node-2")], [])
    assert rules(text) == [
        "-A OUTPUT -m owner --gid-owner 47101 -p tcp -m multiport --dports 5002,6002 "
        '-m comment --comment "fault 3: cut node-1->node-2" -j DROP'
    ]


def test_partition_cuts_every_link_between_groups_both_ways() -> None:
    cuts = netfault.partition_cuts(0, [["node-1"], ["node-2", "node-3"]])
    assert sorted((a, b) for _, a, b in cuts) == [
        ("node-1", "node-2"), ("node-1", "node-3"), ("node-2", "node-1"), ("node-3", "node-1")]
    # three groups: all six directed links
    assert len(netfault.partition_cuts(0, [["node-1"], ["node-2"], ["node-3"]])) == 6
    # nodes in one group keep talking
    assert ("node-2", "node-3") not in {(a, b) for _, a, b in cuts}


def test_link_cuts_oneway_and_both() -> None:
    assert netfault.link_cuts(1, [("node-1", "node-2")], oneway=True) == [(1, "node-1", "node-2")]
    assert netfault.link_cuts(1, [("node-1", "node-2")], oneway=False) == [
        (1, "node-1", "node-2"), (1, "node-2", "node-1")]  # fmt: skip


def test_overlapping_faults_keep_their_own_rules() -> None:
    a = netfault.link_cuts(1, [("node-1", "node-2")], oneway=True)
    b = netfault.link_cuts(2, [("node-1", "node-2")], oneway=True)
    text = netfault.ruleset(EPS, a + b, [])
    assert len(rules(text)) == 2  # healing fault 1 (dropping its triples) keeps fault 2's


def test_slow_link_marks_both_directions_then_drops_and_queues() -> None:
    s = SlowLink(4, "node-1", "node-3", delay_ms=80, loss_pct=5)
    assert (s.mark, s.queue) == (0x104, 5)
    text = netfault.ruleset(EPS, [], [s])
    mangle = text[text.index("*mangle"):]
    assert rules(mangle) == [
        "-A OUTPUT -m owner --gid-owner 47101 -p tcp -m multiport --dports 5003,6003 "
        '-m comment --comment "fault 4: slow node-1<->node-3" -j CONNMARK --set-mark 0x104',
        "-A OUTPUT -m owner --gid-owner 47103 -p tcp -m multiport --dports 5001,6001 "
        '-m comment --comment "fault 4: slow node-1<->node-3" -j CONNMARK --set-mark 0x104',
        "-A OUTPUT -j CONNMARK --restore-mark",
    ]
    filt = text[: text.index("*mangle")]
    assert rules(filt) == [
        "-A OUTPUT -m mark --mark 0x104 -m statistic --mode random --probability 0.0500 -j DROP",
        "-A OUTPUT -m mark --mark 0x104 -j NFQUEUE --queue-num 5 --queue-bypass",
    ]


def test_loss_only_link_queues_nothing_and_cuts_come_first() -> None:
    s = SlowLink(0, "node-1", "node-2", delay_ms=0, loss_pct=20)
    assert s.queue is None
    filt = rules(netfault.ruleset(EPS, [(1, "node-2", "node-3")], [s]).split("*mangle")[0])
    assert "NFQUEUE" not in "\n".join(filt)
    assert filt[0].endswith("-j DROP") and "cut node-2->node-3" in filt[0]
    assert "--probability 0.2000" in filt[1]


def test_commands_always_run_in_the_namespace() -> None:
    ns = "custody-drill-abc123-1-1"
    assert netfault.setup_commands(ns) == [
        ["ip", "netns", "add", ns], ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    assert netfault.restore_command(ns) == ["ip", "netns", "exec", ns, "iptables-restore"]
    cmd = netfault.delayer_command(ns, "/py", SlowLink(2, "node-1", "node-2", 80, 0), 40, 9,
                                   "/w/d")  # fmt: skip
    assert cmd == ["ip", "netns", "exec", ns, "/py", "-m", "chaos.netdelay", "--queue", "3",
                   "--delay-ms", "80", "--jitter-ms", "40", "--seed", "9", "--tag", "/w/d"]


# ---------------------------------------------------------------- resolving targets


def test_groups_leader_against_the_rest() -> None:
    g = netfault.resolve_groups([["leader"], ["rest"]], NAMES, "node-2", NAMES, random.Random(1))
    assert g == [["node-2"], ["node-1", "node-3"]]


def test_groups_follower_is_never_the_leader_and_rest_takes_the_others() -> None:
    for seed in range(20):
        g = netfault.resolve_groups([["follower"], ["rest"]], NAMES, "node-3", NAMES,
                                    random.Random(seed))  # fmt: skip
        assert g[0][0] != "node-3" and sorted(g[0] + g[1]) == NAMES


def test_groups_without_a_leader_or_an_empty_group() -> None:
    with pytest.raises(Unresolved, match="no leader"):
        netfault.resolve_groups([["leader"], ["rest"]], NAMES, None, NAMES, random.Random(1))
    with pytest.raises(Unresolved, match="empty"):
        netfault.resolve_groups([["node-1", "node-2", "node-3"], ["rest"]], NAMES, None, NAMES,
                                random.Random(1))  # fmt: skip


def test_links_leader_follower_and_the_bridge() -> None:
    for seed in range(20):
        (a, b), = netfault.resolve_links([("leader", "follower")], NAMES, "node-1", NAMES,
                                         random.Random(seed))  # fmt: skip
        assert a == "node-1" and b in ("node-2", "node-3")


def test_links_each_follower_word_picks_another_node() -> None:
    links = netfault.resolve_links([("leader", "follower"), ("leader", "follower")], NAMES,
                                   "node-2", NAMES, random.Random(3))  # fmt: skip
    assert {b for _, b in links} == {"node-1", "node-3"}
    with pytest.raises(Unresolved, match="no live follower"):
        netfault.resolve_links([("leader", "follower")], NAMES, "node-2", ["node-2"],
                               random.Random(3))  # fmt: skip


# ---------------------------------------------------------------- the delayer


def test_delayer_messages() -> None:
    bind, params = netdelay.bind_messages(5)
    length, mtype, flags = struct.unpack_from("=IHH", bind)
    assert length == len(bind) and mtype == (3 << 8) | 2 and flags == 0x5  # REQUEST|ACK
    assert struct.unpack_from("!BBH", bind, 16) == (2, 0, 5)  # AF_INET, v0, queue 5
    assert struct.unpack_from("=HHBBH", bind, 20) == (8, 1, 1, 0, 0)  # CFG_CMD: BIND
    assert len(params) % 4 == 0
    v = netdelay.verdict(5, 0xDEADBEEF)
    assert struct.unpack_from("=HH", v, 20) == (12, 2)  # NFQA_VERDICT_HDR
    assert struct.unpack_from("!II", v, 24) == (1, 0xDEADBEEF)  # NF_ACCEPT, packet id


def _packet(pid: int) -> bytes:
    hdr = struct.pack("!IHB", pid, 0x0800, 3)
    attrs = netdelay._attr(netdelay.NFQA_PACKET_HDR, hdr) + netdelay._attr(3, b"\0\0\1\4")
    body = struct.pack("!BBH", 2, 0, 5) + attrs
    return struct.pack("=IHHII", 16 + len(body), 3 << 8, 0, 0, 0) + body


def test_delayer_parses_packet_ids_and_errors() -> None:
    ids, errors = netdelay.parse(_packet(7) + _packet(8))
    assert ids == [7, 8] and errors == []
    err = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -1) + b"\0" * 16
    assert netdelay.parse(err)[1] == [os.strerror(1)]
    ack = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, 0) + b"\0" * 16
    assert netdelay.parse(ack) == ([], [])


def test_delayer_keeps_order_and_bounds() -> None:
    d = netdelay.Delayer(80, 40, seed=1)
    times = [d.release_at(100.0 + k * 0.001) for k in range(200)]
    assert times == sorted(times)  # FIFO: no packet overtakes an earlier one
    assert all(t >= 100.04 for t in times) and times[0] <= 100.0 + 0.121
    assert netdelay.Delayer(50, 0, 1).release_at(10.0) == pytest.approx(10.05)


# ---------------------------------------------------------------- against iptables itself


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                    or shutil.which("iptables-restore") is None,
                    reason="needs root, ip and iptables")  # fmt: skip
def test_ruleset_is_accepted_by_iptables_restore_in_a_namespace() -> None:
    ns = f"custody-drill-test-{uuid.uuid4().hex[:8]}"
    text = netfault.ruleset(EPS, netfault.partition_cuts(0, [["node-1"], ["node-2", "node-3"]]),
                            [SlowLink(1, "node-2", "node-3", 50, 2)])  # fmt: skip
    try:
        for argv in netfault.setup_commands(ns):
            subprocess.run(argv, check=True, capture_output=True)
        subprocess.run(netfault.restore_command(ns), input=text, text=True, check=True,
                       capture_output=True)  # fmt: skip
        saved = subprocess.run(netfault.netns_exec(ns, "iptables-save"), check=True,
                               capture_output=True, text=True).stdout  # fmt: skip
        assert saved.count("-j DROP") == 5 and "NFQUEUE --queue-num 2" in saved
        assert "CONNMARK --restore-mark" in saved
        subprocess.run(netfault.restore_command(ns), input=netfault.ruleset(EPS, [], []),
                       text=True, check=True, capture_output=True)  # fmt: skip
        saved = subprocess.run(netfault.netns_exec(ns, "iptables-save"), check=True,
                               capture_output=True, text=True).stdout  # fmt: skip
        assert "-A OUTPUT" not in saved
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
