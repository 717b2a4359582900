"""`GET /metrics` on a real cluster: Prometheus text, who may read it, what it says.

One 3-node cluster (threshold 2) for the module: a policy, a key made by DKG and
activated, one signature. Then every node's metrics are scraped.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.node.cluster.harness import Live

pytestmark = pytest.mark.slow

NODES = ("node-1", "node-2", "node-3")


@dataclass
class Signed:
    live: Live
    message: bytes
    ref: str  # the sign request's reference (author:request-id)
    create_ref: str


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    root: Path = tmp_path_factory.mktemp("metrics") / "c"
    c = Live.init(root, schedule={"epoch_min_interval_s": 0.0})
    c.up()
    try:
        c.policy("p1", requesters="app1")
        create_ref = c.key("k1")
        message = b"metrics-probe-" + secrets.token_hex(8).encode()
        ref = c.sign_request("k1", message)
        c.approve(ref, "alice", "bob")
        r = c.wait_request(ref, timeout=30)
        assert r["state"] == "executed", r
        yield Signed(c, message, ref, create_ref)
    finally:
        c.down()


def _scrape(live: Live, node: str, who: str = "ops") -> tuple[int, object]:
    return asyncio.run(live.http(who, "GET", node, "/metrics"))


def _families(live: Live, node: str, who: str = "ops") -> dict[str, Metric]:
    status, body = _scrape(live, node, who)
    assert status == 200, body
    assert isinstance(body, bytes)
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(fams: dict[str, Metric], sample: str, **labels: str) -> float:
    """The sum of the samples called `sample` whose labels include `labels`."""
    family = fams[sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    found = [
        s.value for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]  # fmt: skip
    assert found, (sample, labels)
    return sum(found)


def test_operator_reads_plausible_metrics(signed: Signed) -> None:
    live = signed.live
    leader = live.leader()
    per_node = {n: _families(live, n) for n in NODES}
    lead = per_node[leader]

    for fams in per_node.values():
        assert _value(fams, "custody_raft_term") >= 1
        assert _value(fams, "custody_raft_applied_index") > 0
        commit = _value(fams, "custody_raft_commit_index")
        assert commit >= _value(fams, "custody_raft_applied_index")
        assert _value(fams, "custody_epoch") >= 2
        assert _value(fams, "custody_bootstrapped") == 1
        assert _value(fams, "custody_audit_records") > 0
        assert _value(fams, "custody_keys", purpose="sign") == 1
        assert _value(fams, "custody_keys", purpose="audit") == 1
        # k1's version and the reserved cluster-audit key's
        assert _value(fams, "custody_key_versions", state="active") == 2
        assert _value(fams, "custody_key_versions", state="pending") == 0
        assert _value(fams, "custody_keys_rotation_due") == 0
        assert _value(fams, "custody_key_primary_age_seconds", key="k1") >= 0
        assert _value(fams, "custody_requests_open", kind="sign", state="approved") == 0
        assert _value(fams, "custody_dkg_runs") == 0
        assert _value(fams, "custody_nonces_stocked") >= 0
        assert _value(fams, "custody_raft_fsyncs_total") > 0
        assert _value(fams, "custody_raft_io_seconds_total") > 0
        # every member signed its epoch votes and DKG posts with its identity key
        assert _value(fams, "custody_hsm_operations_total", op="sign") > 0
        assert _value(fams, "custody_hsm_operation_seconds_count", op="sign") > 0
        assert _value(fams, "custody_hsm_operations_total", op="store_share") >= 1
        assert "custody_http_request_seconds" in fams

    assert sum(_value(f, "custody_raft_is_leader") for f in per_node.values()) == 1
    assert _value(lead, "custody_raft_is_leader") == 1
    assert _value(lead, "custody_raft_proposals_total") > 0
    assert _value(lead, "custody_raft_proposal_batches_total") > 0

    # the leader coordinated the signature: t = 2 members loaded their share
    assert _value(lead, "custody_signatures_total") >= 1
    assert _value(lead, "custody_sign_seconds_count") >= 1
    for phase in ("pick", "commit", "shares", "aggregate", "record"):
        assert _value(lead, "custody_sign_phase_seconds_count", phase=phase) >= 1
    loads = sum(_value(f, "custody_hsm_operations_total", op="load_share")
                for f in per_node.values())  # fmt: skip
    assert loads >= 2

    # the sign request reached one node's API, by its route template
    signs = sum(
        _value(f, "custody_http_requests_total", route="/v1/keys/{key_id}/sign", method="POST",
               status="200")
        for f in per_node.values() if _has(f, route="/v1/keys/{key_id}/sign")
    )  # fmt: skip
    assert signs >= 1
    # the scrape itself is counted from the second scrape on
    again = _families(live, leader)
    assert _value(again, "custody_http_requests_total", route="/metrics", method="GET",
                  status="200") >= 1  # fmt: skip


def _has(fams: dict[str, Metric], **labels: str) -> bool:
    return any(
        all(s.labels.get(k) == v for k, v in labels.items())
        for s in fams["custody_http_requests"].samples
    )


def test_auditor_and_members_may_read(signed: Signed) -> None:
    live = signed.live
    assert "custody_epoch" in _families(live, "node-1", who="audit")
    assert "custody_epoch" in _families(live, "node-2", who="node-3")


def test_clients_and_approvers_are_refused(signed: Signed) -> None:
    live = signed.live
    for who in ("app1", "alice"):
        status, body = _scrape(live, "node-1", who)
        assert status == 403, body
        assert isinstance(body, dict) and body["error"] == "forbidden"
    fams = _families(live, "node-1")
    assert _value(fams, "custody_http_requests_total", route="/metrics", status="403") >= 2


def test_labels_carry_no_request_content(signed: Signed) -> None:
    live = signed.live
    request_ids = {signed.ref, signed.ref.split(":", 1)[1], signed.create_ref,
                   signed.create_ref.split(":", 1)[1]}  # fmt: skip
    secrets_ = {signed.message.decode(), signed.message.hex(), "app1", *request_ids}
    for node in NODES:
        fams = _families(live, node)
        routes = set()
        for family in fams.values():
            for sample in family.samples:
                for name, value in sample.labels.items():
                    assert not any(s in value for s in secrets_), (sample.name, name, value)
                    if name == "route":
                        routes.add(value)
        # route labels are templates, never raw paths
        assert routes, node
        assert all(r.startswith("/") or r == "unmatched" for r in routes), routes
        assert not any("k1" in r or ":" in r for r in routes), routes


# ---------------------------------------------------------------- in process (no cluster)


def test_instrumented_slot_counts_times_and_passes_through() -> None:
    from prometheus_client import CollectorRegistry

    from node.hsm.errors import HsmError
    from node.hsm.memory import MemorySlot
    from node.hsm.slot import ShareId
    from node.server.metrics import InstrumentedSlot, instrument_slot

    registry = CollectorRegistry()
    inner = MemorySlot("c1")
    slot = instrument_slot(inner, registry)
    assert instrument_slot(slot, registry).inner is inner  # proxies never stack
    assert isinstance(slot, InstrumentedSlot) and slot.cluster_id == "c1"
    sid = ShareId("k1", 1, 1, 0)
    slot.store_share(sid, b"\x01" * 32)
    assert bytes(slot.load_share(sid)) == b"\x01" * 32
    assert slot.list_shares() == [sid]
    assert len(slot.sign(b"m")) == 64
    slot.destroy_share(sid)
    with pytest.raises(HsmError):
        slot.load_share(sid)

    def get(name: str, **labels: str) -> float:
        v = registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    for op in ("sign", "store_share", "list_shares", "destroy_share"):
        assert get("custody_hsm_operations_total", op=op) == 1
        assert get("custody_hsm_operation_seconds_count", op=op) == 1
    assert get("custody_hsm_operations_total", op="load_share") == 2
    assert sum(
        s.value for m in registry.collect() if m.name == "custody_hsm_errors"
        for s in m.samples if s.name.endswith("_total") and s.labels["op"] == "load_share"
    ) == 1  # fmt: skip


def test_sign_timings_observe_each_entry_once() -> None:
    from collections import deque

    from node.server.metrics import SignTimings

    d: deque[dict[str, float]] = deque(maxlen=3)
    t = SignTimings()
    t.absorb(d)
    assert t.total.count == 0
    d.append({"pick": 0.001, "commit": 0.002})
    d.append({"pick": 0.001, "commit": 0.002})
    t.absorb(d)
    t.absorb(d)  # nothing new
    assert t.total.count == 2 and t.phases["commit"].count == 2 and t.gaps == 0
    for _ in range(2):
        d.append({"pick": 0.5, "commit": 0.5})
    t.absorb(d)
    assert t.total.count == 4 and t.gaps == 0
    for _ in range(5):  # more than maxlen between two scrapes: 2 are lost
        d.append({"pick": 3.0, "commit": 0.0})
    t.absorb(d)
    assert t.total.count == 7 and t.gaps == 1
    assert abs(t.total.sum - (2 * 0.003 + 2 * 1.0 + 3 * 3.0)) < 1e-9
    buckets = dict(t.phases["pick"].buckets())
    assert buckets["0.001"] == 2 and buckets["0.5"] == 4 and buckets["+Inf"] == 7


def test_two_apps_in_one_process_keep_separate_registries() -> None:
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from node.hsm.memory import MemorySlot
    from node.protocols.signing import NonceStock
    from node.server.metrics import NodeMetrics
    from node.state import Machine

    def fake_rt() -> SimpleNamespace:
        return SimpleNamespace(
            machine=Machine(genesis=b""), driver=None, slot=MemorySlot("c1"),
            stock=NonceStock(), dkg=None, signer=None,
        )  # fmt: skip

    a, b = NodeMetrics(fake_rt()), NodeMetrics(fake_rt())  # type: ignore[arg-type]
    a.observe_http("/v1/keys", "GET", "200", 0.01)
    a.observe_http("/x", "BREW", "404", 0.01)
    a.rt.slot.sign(b"m")
    assert a.registry.get_sample_value(
        "custody_http_requests_total", {"route": "/v1/keys", "method": "GET", "status": "200"}
    ) == 1  # fmt: skip
    assert a.registry.get_sample_value(
        "custody_http_requests_total", {"route": "/x", "method": "other", "status": "404"}
    ) == 1  # fmt: skip
    assert b.registry.get_sample_value(
        "custody_http_requests_total", {"route": "/v1/keys", "method": "GET", "status": "200"}
    ) is None  # fmt: skip
    assert a.registry.get_sample_value("custody_hsm_operations_total", {"op": "sign"}) == 1
    assert b.registry.get_sample_value("custody_hsm_operations_total", {"op": "sign"}) == 0
    text = generate_latest(b.registry).decode()  # no driver: the raft section is left out
    assert "custody_epoch 0.0" in text and "custody_raft_term" not in text
