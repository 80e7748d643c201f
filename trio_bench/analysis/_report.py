"""``triobench report``: one self-contained HTML file per results directory.

Everything the page needs is inside it: the plotting library (uPlot, embedded), the page's own
script and the run's data as JSON. It fetches nothing, so it opens offline and can be mailed
or attached to a ticket. Text from the results (agent ids, host names, error messages) only
ever reaches the page as data set with ``textContent``, never as markup.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import statistics
from importlib import resources
from pathlib import Path
from typing import Any

from trio_bench.protocol import bucket_bounds
from trio_bench.stats import is_sized

from ._read import STAGES, Results, Table, number

TIMELINE_EVENTS = {
    "stalled": "stall",
    "unstalled": "recovery",
    "disconnected": "disconnect",
    "resumed": "recovery",
    "recovered": "recovery",
    "failed": "failure",
    "aborted": "failure",
    "probe": "stall",
}
MAX_EVENTS = 300  # markers on the time axes; a run with thousands of agents is summarised
PERCENTILES = (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"))


def _asset(name: str) -> str:
    return (resources.files("trio_bench.analysis") / name).read_text(encoding="utf-8")


def _float(row: dict[str, str], column: str) -> float | None:
    value = number(row, column)
    return None if math.isnan(value) else value


def _aligned(
    series: dict[str, dict[float, float | None]], stage_of: dict[float, str] | None = None
) -> dict[str, Any]:
    """Series keyed by time, on one shared x axis (uPlot's form). A line breaks between
    stages and where windows are missing (more than 1.5 typical intervals without a row)."""
    xs = sorted({t for points in series.values() for t in points})
    breaks = []
    if len(xs) > 2:
        step = statistics.median(b - a for a, b in itertools.pairwise(xs))
        breaks = [a + step for a, b in itertools.pairwise(xs) if step and b - a > 1.5 * step]
    if stage_of:
        breaks += [
            (a + b) / 2 for a, b in itertools.pairwise(xs) if stage_of.get(a) != stage_of.get(b)
        ]
    xs = sorted(set(xs + breaks))
    return {
        "x": xs,
        "series": {name: [points.get(t) for t in xs] for name, points in series.items()},
    }


def _by_time(rows: Table, key: str, column: str, where: dict[str, str]) -> dict[str, Any]:
    series: dict[str, dict[float, float | None]] = {}
    stage_of: dict[float, str] = {}
    for row in rows:
        if any(row.get(k) != v for k, v in where.items()):
            continue
        t = _float(row, "elapsed_s")
        if t is None:
            continue
        series.setdefault(row.get(key, "?"), {})[t] = _float(row, column)
        stage_of[t] = row.get("stage", "")
    return _aligned(series, stage_of)


def _stages(results: Results) -> list[dict[str, Any]]:
    """Each stage's start and warmup on the time axis (run.json's stage facts)."""
    out = []
    for stage, facts in results.run.get("stages", {}).items():
        if not isinstance(facts, dict) or not isinstance(facts.get("start_s"), int | float):
            continue
        warmup = facts.get("warmup_s") or 0.0
        start = float(facts["start_s"])
        out.append(
            {
                "stage": stage,
                "start": start,
                "warmup_end": start + float(warmup) if warmup else None,
            }
        )
    return out


def _events(results: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: dict[tuple[float, str], dict[str, Any]] = {}
    for entry in results.run.get("timeline", []):
        if not isinstance(entry, dict):
            continue
        event, agent = str(entry.get("event", "")), str(entry.get("agent", ""))
        t = entry.get("t_s")
        if not isinstance(t, int | float):
            continue
        if event in TIMELINE_EVENTS:
            kind = TIMELINE_EVENTS[event]
        else:
            continue
        key = (round(float(t), 1), event)
        if key in seen:  # many agents at one instant: one marker that counts them
            seen[key]["count"] += 1
            continue
        marker = {"t": float(t), "kind": kind, "label": f"{agent}: {event}", "count": 1}
        marker["detail"] = str(entry.get("detail", ""))[:200]
        seen[key] = marker
        out.append(marker)
    del out[MAX_EVENTS:]  # the earliest; the timeline in run.json has them all
    return out


def _cdfs(results: Results) -> dict[str, Any]:
    """Per stage: each op kind's latency distribution from its merged histogram, as the
    fraction of operations at or below each bucket's upper edge (microseconds). Buckets are
    the same for every kind, so the kinds share one x axis; between its own buckets a kind's
    fraction holds (a distribution function is a step function)."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        kinds = results.histograms.get(stage, {}).get("all", {})
        points: dict[str, dict[float, float]] = {}
        for kind in kinds:
            if is_sized(kind):  # a size bucket's histogram: the summary's size rows show it
                continue
            stats = results.histogram(stage, kind)
            if stats is None or not stats.ops:
                continue
            seen = 0
            curve = points.setdefault(kind, {})
            for index, count in stats.pairs():
                low, width = bucket_bounds(index)
                seen += count
                edge = min(low + width, max(stats.max_ns, low + 1))
                curve[edge / 1000] = seen / stats.ops
        if not points:
            continue
        xs = sorted({x for curve in points.values() for x in curve})
        series = {}
        for kind, curve in points.items():
            held, column = 0.0, []
            for x in xs:
                held = curve.get(x, held)
                column.append(held)
            series[kind] = column
        out[stage] = {"x": xs, "series": series}
    return out


def _host_of(results: Results) -> dict[str, str]:
    return {
        str(a.get("id")): str(a.get("hostname") or a.get("address") or "?")
        for a in results.run.get("agents", [])
        if isinstance(a, dict)
    }


def _per_host_rates(results: Results, column: str = "ops_per_s") -> dict[str, Any]:
    """ops/s (or MiB/s) per load host per window: the sum of its agents' rows."""
    host_of = _host_of(results)
    series: dict[str, dict[float, float | None]] = {}
    for row in results.perf_log:
        agent = row.get("agent", "")
        if agent == "all" or row.get("stage") != "workload":
            continue
        t, rate = _float(row, "elapsed_s"), _float(row, column)
        if t is None or rate is None:
            continue
        points = series.setdefault(host_of.get(agent, agent), {})
        points[t] = (points.get(t) or 0.0) + rate
    return _aligned(series)


def _agents_table(results: Results) -> list[dict[str, Any]]:
    rows = []
    for agent in results.run.get("agents", []):
        if not isinstance(agent, dict):
            continue
        ident = str(agent.get("id"))
        summary = {r.get("op"): r for r in results.agents.get(ident, {}).get("workload", [])}
        total = summary.get("all", {})
        rows.append(
            {
                "agent": ident,
                "host": agent.get("hostname") or agent.get("address"),
                "state": agent.get("final_state"),
                "ops_per_s": total.get("ops_per_s", ""),
                "mib_per_s": total.get("mib_per_s", ""),
                "p50_us": total.get("p50_us", ""),
                "p99_us": total.get("p99_us", ""),
                "errors": total.get("errors", ""),
                "clock_offset_ms": agent.get("clock_offset_ms"),
                "disconnects": agent.get("disconnects"),
                "failure": agent.get("failure") or "",
            }
        )
    return rows


def _hosts_table(results: Results) -> list[dict[str, Any]]:
    rows = []
    for host, stages in results.hosts.items():
        total = {r.get("op"): r for r in stages.get("workload", [])}.get("all")
        if total is None:
            continue
        rows.append({"host": host, **{k: v for k, v in total.items() if k != "op"}})
    return rows


def report_data(results: Results) -> dict[str, Any]:
    """Everything the page shows, as plain JSON."""
    run = results.run
    op_log, perf_log = results.op_log, results.perf_log
    workload_ops = [r for r in op_log if r.get("stage") == "workload"]
    latency = {}
    for column, label in PERCENTILES:
        for kind, points in _by_time(workload_ops, "op", column, {})["series"].items():
            latency[f"{kind} {label}"] = points
    latency_x = _by_time(workload_ops, "op", "p50_us", {})["x"]
    return {
        "title": f"triobench: {results.name}",
        "run": {
            key: run.get(key)
            for key in (
                "run_id",
                "name",
                "status",
                "exit_code",
                "started_at",
                "ended_at",
                "software",
                "protocol",
                "abort_reason",
                "abort_cleanup",
                "errors",
                "start_skew_ms",
                "controller",
            )
        },
        "summaries": results.summaries,
        "sizes": results.sizes,
        "throughput": {
            "ops": _by_time(op_log, "op", "ops_per_s", {}),
            "mib": _by_time(op_log, "op", "mib_per_s", {}),
            "all_ops": _by_time(perf_log, "agent", "ops_per_s", {"agent": "all"}),
            "all_mib": _by_time(perf_log, "agent", "mib_per_s", {"agent": "all"}),
            "agents_reporting": _by_time(perf_log, "agent", "agents", {"agent": "all"}),
        },
        "latency": {"x": latency_x, "series": latency},
        "hosts_over_time": _per_host_rates(results),
        "hosts_mib_over_time": _per_host_rates(results, "mib_per_s"),
        "cdf": _cdfs(results),
        "stages": _stages(results),
        "events": _events(results),
        "hosts": _hosts_table(results),
        "agents": _agents_table(results),
        "environment": {
            str(a.get("id")): a.get("environment") or {}
            for a in run.get("agents", [])
            if isinstance(a, dict)
        },
        "config": results.config_text,
    }


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no sequence can close it or open a comment."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def render_report(results: Results) -> str:
    data = _clean(report_data(results))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(data['title'])}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_asset('vendor/uPlot.min.css')}\n{_asset('report.css')}</style>\n"
        "</head><body>\n"
        '<div id="problems" hidden></div><main id="report"></main>\n'
        f'<script id="data" type="application/json">{_script_json(data)}</script>\n'
        f"<script>{_asset('vendor/uPlot.iife.min.js')}</script>\n"
        f"<script>{_asset('report.js')}</script>\n"
        "</body></html>\n"
    )


def write_report(results: Results, out: Path | None = None) -> Path:
    """Write the report (default: report.html in the results directory); return its path."""
    path = out or results.directory / "report.html"
    text = render_report(results)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
