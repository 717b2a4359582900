"""Prometheus metrics for one custody node (docs/metrics.md).

Every app gets its own `CollectorRegistry` (`NodeMetrics.registry`), never the
process-global one: tests run several nodes' apps in one process.

Three sources:
- **Instruments updated as things happen**: HTTP requests (a middleware in
  `routes_metrics.py`) and HSM calls (`instrument_slot`, a proxy put in place
  of `Runtime.slot`).
- **A collector read at scrape time** (`RuntimeCollector`): Raft status and
  driver counters, the custody state of this node's replica, the nonce stock,
  DKG runs, and the signing coordinator's phase timings.
- Nothing else: no metric carries key material, request content (messages,
  contexts, payload hashes), request ids or the names of client principals.
  Labels are key ids, node names, route templates, methods, statuses, enum
  values (purpose, state, kind, phase) and HSM operation and exception names.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from node.state.model import Purpose, RequestKind, RequestState, VersionState

if TYPE_CHECKING:
    from node.server.runtime import Runtime

log = logging.getLogger("custody.metrics")

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0)  # fmt: skip
HSM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0)  # fmt: skip

HSM_OPS = ("sign", "load_share", "store_share", "destroy_share", "list_shares")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # the route label of requests that matched no route

# Driver.stats keys exported as counters: (stat, metric suffix, help, scale).
_DRIVER_COUNTERS = (
    ("saves", "raft_fsyncs", "Durable writes of the Raft log/hard state (one fsync batch each).",
     1.0),
    ("io_us", "raft_io_seconds", "Time spent in Raft storage writes, fsync included.", 1e-6),
    ("entries_saved", "raft_entries_saved", "Log entries written to storage.", 1.0),
    ("proposals", "raft_proposals", "Commands proposed on this node while it was leader.", 1.0),
    ("batches", "raft_proposal_batches", "Batches the proposals were appended in.", 1.0),
    ("applied", "raft_entries_applied", "Log entries applied to the state machine.", 1.0),
    ("snapshots", "raft_snapshots", "Snapshots this node took of its state machine.", 1.0),
    ("inbox_dropped", "raft_inbox_dropped", "Raft messages dropped on a full inbox.", 1.0),
)  # fmt: skip


# ---------------------------------------------------------------- HSM


class _HsmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "custody_hsm_operations", "HSM slot calls, by operation (errors included).",
            ["op"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "custody_hsm_errors", "HSM slot calls that raised, by operation and exception class.",
            ["op", "error"], registry=registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "custody_hsm_operation_seconds",
            "HSM slot call latency (waiting for the slot's internal lock included).",
            ["op"], buckets=HSM_BUCKETS, registry=registry,
        )  # fmt: skip
        for op in HSM_OPS:  # every operation is exported, at 0 until first used
            self.calls.labels(op)
            self.seconds.labels(op)


_hsm_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _HsmMetrics] = (
    weakref.WeakKeyDictionary()
)
_hsm_lock = threading.Lock()


def _hsm_metrics(registry: CollectorRegistry) -> _HsmMetrics:
    """The HSM instruments of `registry`, created on first use (so wrapping a slot again,
    e.g. after the runtime reopened it, reuses them instead of registering twice)."""
    with _hsm_lock:
        found = _hsm_by_registry.get(registry)
        if found is None:
            found = _hsm_by_registry[registry] = _HsmMetrics(registry)
        return found


class InstrumentedSlot:
    """A proxy for an HSM slot that times and counts the share and signing calls.

    Anything else (identity_public_key, close, cluster_id, ...) is passed through
    unchanged. Calls run in worker threads; prometheus_client's instruments are
    thread-safe. Arguments and results (messages, shares) are never looked at.
    """

    def __init__(self, inner: Any, hsm: _HsmMetrics,
                 on_error: Callable[[str, BaseException], None] | None = None) -> None:  # fmt: skip
        self._inner = inner
        self._hsm = hsm
        self._on_error = on_error  # told of every failed call (node.server.hsm_watch)

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"InstrumentedSlot({self._inner!r})"

    def _timed(self, op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._hsm.errors.labels(op, type(exc).__name__).inc()
            if self._on_error is not None:
                self._on_error(op, exc)
            raise
        finally:
            self._hsm.seconds.labels(op).observe(time.perf_counter() - start)
            self._hsm.calls.labels(op).inc()

    def sign(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("sign", self._inner.sign, *args, **kwargs)

    def load_share(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("load_share", self._inner.load_share, *args, **kwargs)

    def store_share(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("store_share", self._inner.store_share, *args, **kwargs)

    def destroy_share(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("destroy_share", self._inner.destroy_share, *args, **kwargs)

    def list_shares(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("list_shares", self._inner.list_shares, *args, **kwargs)

    def destroy_shares(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("destroy_share", self._inner.destroy_shares, *args, **kwargs)


def instrument_slot(slot: Any, registry: CollectorRegistry,
                    on_error: Callable[[str, BaseException], None] | None = None,
                    ) -> InstrumentedSlot:  # fmt: skip
    """`slot` behind a proxy that records `custody_hsm_*` metrics in `registry`.

    A slot that is already instrumented is unwrapped first: proxies never stack,
    and the slot's calls are counted in `registry` only.
    """
    if isinstance(slot, InstrumentedSlot):
        slot = slot.inner
    return InstrumentedSlot(slot, _hsm_metrics(registry), on_error)


# ---------------------------------------------------------------- signing timings


class _Histo:
    """A cumulative histogram kept by hand (exported through a collector)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)  # observations <= bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def buckets(self) -> list[tuple[str, float]]:
        out = [(floatToGoString(b), float(c)) for b, c in zip(self.bounds, self.counts,
                                                               strict=True)]  # fmt: skip
        out.append(("+Inf", float(self.count)))
        return out


class SignTimings:
    """Histograms of the signing coordinator's phases, fed from `Signer.timings`.

    `Signer.timings` is a bounded deque (4096) of `{phase: seconds}`, one per
    signature this node coordinated. At each scrape the entries appended since
    the previous scrape are observed into cumulative histograms: the newest
    entry seen is remembered by identity, and the deque is read backwards down
    to it. If it fell out of the deque (more than `maxlen` signatures between
    two scrapes), everything in the deque is taken and `gaps` counts the event
    (some signatures went unobserved).
    """

    def __init__(self, buckets: Sequence[float] = SIGN_BUCKETS) -> None:
        self._buckets = tuple(buckets)
        self.phases: dict[str, _Histo] = {}
        self.total = _Histo(self._buckets)
        self.gaps = 0
        self._source: deque[dict[str, float]] | None = None
        self._last: dict[str, float] | None = None

    def absorb(self, timings: deque[dict[str, float]] | None) -> None:
        if timings is None:
            return
        if timings is not self._source:  # a new Signer: start over on its deque
            self._source, self._last = timings, None
        new: list[dict[str, float]] = []
        found = self._last is None
        for entry in reversed(timings):
            if entry is self._last:
                found = True
                break
            new.append(entry)
        if not found:
            self.gaps += 1
        for entry in reversed(new):
            for phase, seconds in entry.items():
                histo = self.phases.get(phase)
                if histo is None:
                    histo = self.phases[phase] = _Histo(self._buckets)
                histo.observe(seconds)
            self.total.observe(sum(entry.values()))
        if new:
            self._last = new[0]

    def families(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "custody_signatures", "Signatures this node coordinated (as leader) and recorded.",
            value=self.total.count,
        )  # fmt: skip
        total = HistogramMetricFamily(
            "custody_sign_seconds",
            "Coordinator time per signature, from picking members to the recorded result.",
        )
        total.add_metric([], self.total.buckets(), self.total.sum)
        yield total
        phases = HistogramMetricFamily(
            "custody_sign_phase_seconds", "Coordinator time per signature, by phase.",
            labels=["phase"],
        )  # fmt: skip
        for phase in sorted(self.phases):
            h = self.phases[phase]
            phases.add_metric([phase], h.buckets(), h.sum)
        yield phases
        yield CounterMetricFamily(
            "custody_sign_timing_gaps",
            "Scrapes that found more new signatures than Signer.timings keeps (some unobserved).",
            value=self.gaps,
        )  # fmt: skip


# ---------------------------------------------------------------- runtime collector


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by_labels(
    name: str, doc: str, labels: list[str], counts: dict[tuple[str, ...], float],
) -> GaugeMetricFamily:  # fmt: skip
    g = GaugeMetricFamily(name, doc, labels=labels)
    for values in sorted(counts):
        g.add_metric(list(values), counts[values])
    return g


class RuntimeCollector:
    """Reads the runtime at scrape time: Raft, custody state, nonces, DKG, signing.

    Each section is collected on its own: one that fails is logged, counted in
    `custody_metrics_collect_errors_total{section}` and left out of that scrape,
    and the others are still exported.
    """

    def __init__(self, rt: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        self.rt = rt
        self.clock = clock
        self.sign = SignTimings()
        self.errors: dict[str, int] = {}
        self._leader_seen = 0
        self._leader_changes = 0
        self._lock = threading.Lock()  # a registry may be collected from two threads

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration; families are built at scrape time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            out: list[Metric] = []
            for section, fn in (
                ("raft", self._raft), ("state", self._state), ("duties", self._duties),
                ("signing", self._signing),
            ):  # fmt: skip
                try:
                    out.extend(fn())
                except Exception:
                    self.errors[section] = self.errors.get(section, 0) + 1
                    log.warning("metrics: collecting %s failed", section, exc_info=True)
            errs = CounterMetricFamily(
                "custody_metrics_collect_errors",
                "Scrape-time collection sections that failed (and were left out).",
                labels=["section"],
            )  # fmt: skip
            for section in ("raft", "state", "duties", "signing"):
                errs.add_metric([section], self.errors.get(section, 0))
            out.append(errs)
        return iter(out)

    # ------------------------------------------------------------ raft

    def _raft(self) -> list[Metric]:
        rt = self.rt
        driver = rt.driver
        if driver is None:
            return []
        st = driver.status()
        if st.leader and st.leader != self._leader_seen:
            if self._leader_seen:
                self._leader_changes += 1
            self._leader_seen = st.leader
        out: list[Metric] = [
            _gauge("custody_raft_term", "Current Raft term.", st.term),
            _gauge("custody_raft_commit_index", "Highest log index known committed.", st.commit),
            _gauge("custody_raft_applied_index", "Highest log index applied here.", st.applied),
            _gauge("custody_raft_snapshot_index", "Log index of the latest snapshot.",
                   st.snapshot_index),
            _gauge("custody_raft_is_leader", "1 if this node is the Raft leader.",
                   1 if st.leader == st.id and st.leader else 0),
            _gauge("custody_raft_leader_known", "1 if this node knows a leader.",
                   1 if st.leader else 0),
            _gauge("custody_raft_failed", "1 once this node fail-stopped (storage failure).",
                   1 if driver.failure is not None else 0),
            CounterMetricFamily(
                "custody_raft_leader_changes",
                "Changes of the (known) leader between successive scrapes of this node.",
                value=self._leader_changes,
            ),
        ]  # fmt: skip
        stats = driver.stats
        for key, suffix, doc, scale in _DRIVER_COUNTERS:
            out.append(CounterMetricFamily(f"custody_{suffix}", doc,
                                           value=stats.get(key, 0) * scale))  # fmt: skip
        return out

    # ------------------------------------------------------------ custody state

    def _state(self) -> list[Metric]:
        machine = self.rt.machine
        st = machine.state
        now = int(self.clock())
        purposes = {(p.value,): 0.0 for p in Purpose}
        versions = {(s.value,): 0.0 for s in VersionState}
        ages = GaugeMetricFamily(
            "custody_key_primary_age_seconds",
            "Seconds since the key's primary version activated (wall clock of the epoch vote).",
            labels=["key"],
        )  # fmt: skip
        due = 0
        for key_id in sorted(st.keys):
            key = st.keys[key_id]
            purposes[(key.purpose.value,)] = purposes.get((key.purpose.value,), 0) + 1
            for v in key.versions.values():
                versions[(v.state.value,)] = versions.get((v.state.value,), 0) + 1
            primary = key.versions.get(key.primary) if key.primary else None
            if primary is None or primary.state is not VersionState.ACTIVE:
                continue
            if primary.activated_at > 0:
                ages.add_metric([key_id], max(0, now - primary.activated_at))
            if key.policy_id in st.policies and machine.rotation_due(key_id, now):
                due += 1
        requests: dict[tuple[str, ...], float] = {}
        for req in machine.open_requests():
            label = (req.kind.value, req.state.value)
            requests[label] = requests.get(label, 0) + 1
        for kind in (RequestKind.SIGN, RequestKind.CREATE_KEY):
            for state in (RequestState.PENDING, RequestState.APPROVED):
                requests.setdefault((kind.value, state.value), 0)
        return [
            _gauge("custody_bootstrapped", "1 once this replica applied the bootstrap.",
                   1 if st.bootstrapped else 0),
            _gauge("custody_epoch", "Current activation epoch.", st.epoch),
            _gauge("custody_audit_records", "Records in the audit chain.", len(st.audit)),
            _gauge("custody_members", "Current cluster members.", len(st.members)),
            _gauge("custody_threshold", "Members needed to sign or decrypt.", st.threshold),
            _gauge("custody_policies", "Policies defined.", len(st.policies)),
            _by_labels("custody_keys", "Keys, by purpose.", ["purpose"], purposes),
            _by_labels("custody_key_versions", "Key versions of all keys, by state.",
                       ["state"], versions),
            _by_labels("custody_requests_open",
                       "Requests pending approval or waiting for execution, by kind and state.",
                       ["kind", "state"], requests),
            _gauge("custody_keys_rotation_due",
                   "Keys whose policy calls for rotating the primary version now.", due),
            ages,
        ]  # fmt: skip

    # ------------------------------------------------------------ duties

    def _duties(self) -> list[Metric]:
        rt = self.rt
        return [
            _gauge("custody_nonces_stocked", "FROST nonce pairs held in memory on this node.",
                   rt.stock.outstanding()),
            _gauge("custody_dkg_runs", "DKG sessions in progress on this node.",
                   len(rt.dkg.runs) if rt.dkg is not None else 0),
            _gauge("custody_sign_inflight", "Signatures this node is coordinating now.",
                   len(rt.signer.inflight) if rt.signer is not None else 0),
        ]  # fmt: skip

    # ------------------------------------------------------------ signing

    def _signing(self) -> list[Metric]:
        signer = self.rt.signer
        self.sign.absorb(signer.timings if signer is not None else None)
        return list(self.sign.families())


# ---------------------------------------------------------------- one app's metrics


class NodeMetrics:
    """The metrics of one app: its registry, the HTTP instruments, the collector."""

    def __init__(self, rt: Runtime, registry: CollectorRegistry | None = None) -> None:
        self.rt = rt
        self.registry = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter(
            "custody_http_requests", "HTTP requests served, by route template, method, status.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "custody_http_request_seconds", "HTTP request handling time, by route template.",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.collector = RuntimeCollector(rt)
        self.registry.register(self.collector)
        self.ensure_slot()

    def ensure_slot(self) -> None:
        """Put the instrumented proxy in place of `rt.slot` if it is not there yet (the
        slot is opened by `Runtime.start`; a slot opened later is wrapped on first use)."""
        slot = self.rt.slot
        if slot is not None and not isinstance(slot, InstrumentedSlot):
            watch = getattr(self.rt, "hsm", None)
            self.rt.slot = instrument_slot(slot, self.registry,
                                           watch.suspect if watch is not None else None)

    def observe_http(self, route: str, method: str, status: str, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(route, method, status).inc()
        self.http_seconds.labels(route, method).observe(seconds)
