"""Drill reports: results.json, a Markdown summary per scenario, a PNG timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chaos.runner import DrillResult, FaultRecord
from chaos.workload import Op


def timeline(path: Path, ops: list[Op], result: DrillResult, title: str) -> None:
    """Operations completed per second by outcome (stacked bars), faults shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max([o.complete for o in ops] + [1.0])
    bins = int(end) + 1
    series = {k: [0] * bins for k in ("ok", "failed", "unknown")}
    for o in ops:
        series[o.outcome][min(bins - 1, int(o.complete))] += 1
    fig, ax = plt.subplots(figsize=(10, 3.6))
    xs = list(range(bins))
    bottom = [0] * bins
    for k, color in (("ok", "#2e7d32"), ("failed", "#c62828"), ("unknown", "#f9a825")):
        ax.bar(xs, series[k], bottom=bottom, width=1.0, align="edge", color=color, label=k)
        bottom = [a + b for a, b in zip(bottom, series[k], strict=True)]
    for f in result.faults:
        if f.injected_at is None:
            continue
        stop = f.ended_at if f.ended_at is not None else end
        ax.axvspan(f.injected_at, max(stop, f.injected_at + 0.3), color="#9e9e9e", alpha=0.3)
        ax.text(f.injected_at, max([*bottom, 1]) * 0.95, f"{f.action} {f.node}", fontsize=7,
                rotation=90, va="top")  # fmt: skip
    ax.set_xlabel("seconds since the workload started (by completion time)")
    ax.set_ylabel("operations / s")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hsm(d: dict[str, Any]) -> str:
    """`{"calls": {...}, "errors": {...}}` as "calls: sign 2; failed: sign ModuleFailureError 2"."""
    if not d:
        return "not read"
    if "error" in d:
        return f"not read ({d['error']})"
    calls = ", ".join(f"{k} {v}" for k, v in d.get("calls", {}).items()) or "none"
    errors = ", ".join(f"{k} {v}" for k, v in d.get("errors", {}).items()) or "none"
    return f"calls {calls}; failed {errors}"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a partition's groups are joined with `|`)."""
    return text.replace("|", "\\|")


def _loss(f: FaultRecord) -> str:
    """The lose-cluster paragraph: the hold, the backups, the loss, the recovery."""
    b = f.backup
    held = (f"clients held from t={_fmt(b.get('held_at'))} s (no flow in flight from "
            f"t={_fmt(b.get('quiet_at'))} s) to t={_fmt(b.get('released_at'))} s; "
            if "held_at" in b else "")  # fmt: skip
    return (f"Fault {f.index} (lose-cluster): {held}commit index at the hold "
            f"{b.get('commit_at_hold', '—')}, {b.get('audit_records_before', '—')} audit "
            f"records read; {b.get('fillers', '—')} filler request(s) until every node's "
            f"snapshot (every {b.get('snapshot_every')} entries) covered it; bundles at "
            f"snapshot indexes {b.get('bundle_indexes', '—')}, done at "
            f"t={_fmt(b.get('backups_done_at'))} s; the whole cluster lost at "
            f"t={_fmt(f.injected_at)} s; restored at indexes {b.get('restored_indexes', '—')}, "
            f"nodes started at t={_fmt(f.ended_at)} s; recovery request "
            f"`{f.op_request or '—'}` {f.op_state or '—'}, members recovered: "
            f"{', '.join(f.recovered) or 'none'}, {_fmt(f.op_s)} s from the loss to done; "
            f"first successful signing flow after the loss: {_fmt(f.recovery_s)} s after it."
            + (f" Escrow 3 s after the recovery: held {b['escrow_after'].get('escrowed')}, due "
               f"{b['escrow_after'].get('due')}." if b.get("escrow_after") else ""))


def _verdict(r: DrillResult) -> str:
    return "SKIPPED" if r.skipped else "PASSED" if r.passed else "FAILED"


def _kinds(ops: dict[str, int]) -> str:
    """`decrypt ok 3, rotate ok 1, …` from the counts by kind (signing: the rest)."""
    return ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(ops.items()) if "_" in k)


def summary_md(r: DrillResult, description: str) -> str:
    lines = [f"# Drill `{r.scenario}` — {_verdict(r)}", ""]
    if r.skipped:
        return "\n".join([*lines, description, "", f"Not run here: {r.skipped}.", ""])
    lines += [
        description,
        "",
        f"- seed: **{r.seed}** (replay: `{r.replay}`)",
        f"- started {r.started}, wall time {r.wall_s} s, settle {_fmt(r.settle_s)} s; "
        f"isolation: {r.isolation or '—'}",
        f"- leader before: {r.leader_before or '?'}, after: {r.leader_after or '?'}; leaders "
        f"seen (sampled every 0.5 s): {', '.join(r.leaders) or '—'}",
        f"- operations (whole signing flows): ok {r.ops.get('ok', 0)}, failed "
        f"{r.ops.get('failed', 0)}, unknown {r.ops.get('unknown', 0)}; request states "
        f"at the end: {r.end_states}"
        + (f"; of which {_kinds(r.ops)}" if _kinds(r.ops) else ""),
        "- longest stretch without a successful flow completing: "
        + (
            f"{r.longest_gap[1] - r.longest_gap[0]:.2f} s "
            f"(t={r.longest_gap[0]:.2f}..{r.longest_gap[1]:.2f} s)"
            if r.longest_gap
            else "—"
        ),
        f"- **acknowledged operations lost: {r.acked_lost if r.acked_lost is not None else '?'}**"
        + ("" if r.acked_lost_by_design is None else
           f" (and {r.acked_lost_by_design} acknowledged after the newest backup, lost by "
           "design: point-in-time restore)"),
    ]
    if r.epoch_advances:
        e = r.epoch_advances
        last = f" (last: {e['last_error']})" if e.get("last_error") else ""
        reached = f"; epochs reached {e['epochs'][-1]}" if e.get("epochs") else ""
        lines.append(f"- epoch advances by ops during the workload: {e['advanced']} advanced, "
                     f"{e['not_advanced']} did not, {e['errors']} errors{last}{reached}")
    if r.error:
        lines += ["", f"**Error:** `{r.error}`"]
    lines += ["", "## Invariants", "", "| # | invariant | result | summary |", "|---|---|---|---|"]
    for i, ch in enumerate(r.checks, 1):
        lines.append(f"| {i} | {ch['name']} | {'passed' if ch['passed'] else '**FAILED**'} | "
                     f"{ch['summary'].replace('|', '/')} |")  # fmt: skip
    if not r.checks:
        lines.append("| – | (not checked: the drill did not get that far) | **FAILED** | |")
    for ch in r.checks:
        if ch["details"]:
            lines += ["", f"### {ch['name']}: details", ""]
            lines += [f"- {d}" for d in ch["details"]]
    lines += ["", "## Faults and recovery", "",
              "Recovery: from the fault (or from its end: restart/resume, heal, the restart "
              "after a full disk is freed, the last clock jump; for a lost token the "
              "start on the new token; for a lost cluster the start on the restored state) "
              "to the completion of the first successful signing "
              "flow invoked after it. Repaired: from a token loss to its member's repair done "
              "(for a lost cluster: from the loss to the officers' recovery done). "
              "Rejoined: from the end of a network or disk fault until the nodes it named are "
              "healthy, follow the leader and have applied the leader's commit index of "
              "that moment.",
              "", "| # | action | target | node | at (s) | ended (s) | status | recovery (s) | "
              "from end (s) | repaired (s) | rejoined (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for f in r.faults:
        lines.append(f"| {f.index} | {f.action} | {_cell(f.target)} | {_cell(f.node) or '—'} | "
                     f"{_fmt(f.injected_at)} | {_fmt(f.ended_at)} | {f.status} | "
                     f"{_fmt(f.recovery_s)} | {_fmt(f.recovery_from_end_s)} | "
                     f"{_fmt(f.op_s if f.action == 'lose-cluster' else f.repair_s)} | "
                     f"{_fmt(f.rejoin_s)} |")  # fmt: skip
    for f in r.faults:
        if f.action == "lose-token":
            lines += ["", f"Fault {f.index} ({f.action} {f.node or f.target}): repair "
                      f"{f.repair_state or '—'}, request `{f.repair_request or '—'}`, versions "
                      f"rebuilt {f.repair_versions or '—'}, {_fmt(f.repair_s)} s from the loss "
                      "to done."]  # fmt: skip
    for f in r.faults:
        if f.action == "hsm-refuse":
            lines += ["", f"Fault {f.index} ({f.action} {f.node or f.target}): the node's HSM "
                      f"counters while its token was away: {_hsm(f.hsm_during)}; from the "
                      f"token's return to the workload's end: {_hsm(f.hsm_after)}."]  # fmt: skip
    for f in r.faults:
        if f.action == "lose-cluster":
            lines += ["", _loss(f)]
    for f in r.faults:
        if f.action in ("rotate", "refresh"):
            lines += ["", f"Fault {f.index} ({f.action}): request `{f.op_request or '—'}` "
                      f"{f.op_state or '—'}, {_fmt(f.op_s)} s from its start to done."]  # fmt: skip
    for f in r.faults:
        if f.flow_ms is not None:
            lines += ["", f"Fault {f.index} ({f.action} {_cell(f.node)}): median signing flow "
                      f"{_fmt(f.flow_ms)} ms while it was on, {_fmt(f.flow_ms_before)} ms in "
                      "the 5 s before."]  # fmt: skip
    for f in r.faults:
        if f.observed:
            what = ("the procedure" if f.action == "lose-token" else "the node's own view"
                    if f.action == "pause" else "what was seen")  # fmt: skip
            lines += ["", f"Fault {f.index} ({f.action} {f.node}), {what}: "
                      + "; ".join(f.observed)]  # fmt: skip
    lines += ["", "![timeline](timeline.png)", ""]
    if not r.passed:
        lines += [f"Replay: `{r.replay}`; cluster directory kept in `{r.workdir}` "
                  "(`custody drill clean` removes it).", ""]  # fmt: skip
    return "\n".join(lines)


def write_scenario(out: Path, r: DrillResult, ops: list[Op], description: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary_md(r, description))
    if r.skipped:
        return
    try:
        timeline(out / "timeline.png", ops, r, f"{r.scenario} (seed {r.seed})")
    except Exception as exc:  # a report without its picture still reports
        (out / "timeline-error.txt").write_text(f"{type(exc).__name__}: {exc}\n")


def write_index(out: Path, results: list[DrillResult], seed: int, argv: list[str]) -> None:
    doc: dict[str, Any] = {"seed": seed, "command": " ".join(argv),
                           "passed": all(r.passed for r in results if not r.skipped),
                           "scenarios": [r.to_json() for r in results]}  # fmt: skip
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    lines = [f"# Drill report (seed {seed})", "", "| scenario | result | ok/failed/unknown | "
             "acked lost | recovery (s) per fault | longest gap (s) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        if r.skipped:
            lines.append(f"| [{r.scenario}]({r.scenario}/summary.md) | skipped: {r.skipped} "
                         "| — | — | — | — |")  # fmt: skip
            continue
        gap = f"{r.longest_gap[1] - r.longest_gap[0]:.2f}" if r.longest_gap else "—"
        rec = ", ".join(f"{f.action} {_cell(f.node or f.target)}: {_fmt(f.recovery_s)}"
                        + (f" (repaired {_fmt(f.repair_s)})" if f.action == "lose-token" else "")
                        + (f" (recovered {_fmt(f.op_s)})" if f.action == "lose-cluster" else "")
                        for f in r.faults) or "—"  # fmt: skip
        lines.append(f"| [{r.scenario}]({r.scenario}/summary.md) | "
                     f"{'passed' if r.passed else '**FAILED**'} | {r.ops.get('ok', 0)}/"
                     f"{r.ops.get('failed', 0)}/{r.ops.get('unknown', 0)} | {r.acked_lost}"
                     + ("" if r.acked_lost_by_design is None else
                        f" (+{r.acked_lost_by_design} by design)") + " | "
                     f"{rec} | {gap} |")  # fmt: skip
    (out / "summary.md").write_text("\n".join(lines) + "\n")
