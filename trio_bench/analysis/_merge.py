"""``triobench merge RUN... -o DIR``: runs of one workload (two controllers driving two
clusters at once, say) merged into one results directory that report and compare accept.

The runs are taken as parts of one system running at the same time. Per stage:

- Counts and histograms add; percentiles come from the merged histograms (exact).
- Throughput is over the stage's window: from the earliest start to the latest end of the
  runs' measured windows (UTC, as each controller measured them); runs from before
  ``window_utc`` existed fall back to the longest of their stage times.
- perf_log/op_log: each agent's rows, placed on one time axis by their UTC time; ``all``
  (and each op kind) per window of the shortest stats interval is the sum of the agent rows
  in it. Percentile cells of those merged rows are empty: they would need each window's
  histogram, which perf_log does not keep.
- Agent ids that occur in more than one run are prefixed with ``r<k>-`` (k: the run's
  position on the command line).
"""

from __future__ import annotations

import datetime
import itertools
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trio_bench.controller import (
    HISTOGRAM_FORMAT,
    OP_LOG_COLUMNS,
    PERF_LOG_COLUMNS,
    histograms_json,
)
from trio_bench.protocol import OpStats
from trio_bench.stats import format_tsv, merge_ops, summary_rows

from ._compare import NotComparable
from ._read import STAGE_FILES, STAGES, Results, ResultsError, histogram_from_json, number

SUM_COLUMNS = ("ops", "ops_per_s", "mib_per_s", "errors", "done", "total", "agents")
STATUS_ORDER = ("completed", "partial", "aborted", "failed")


def _utc(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _renames(runs: Sequence[Results]) -> list[dict[str, str]]:
    """Per run: agent id -> its id in the merged results."""
    seen: dict[str, int] = {}
    for run in runs:
        for agent in run.run.get("agents", []):
            if isinstance(agent, dict):
                ident = str(agent.get("id"))
                seen[ident] = seen.get(ident, 0) + 1
    return [
        {
            str(a.get("id")): (
                f"r{k}-{a.get('id')}" if seen[str(a.get("id"))] > 1 else str(a.get("id"))
            )
            for a in run.run.get("agents", [])
            if isinstance(a, dict)
        }
        for k, run in enumerate(runs, start=1)
    ]


def _stage_span(runs: Sequence[Results], stage: str) -> tuple[float, list[str] | None]:
    starts, ends, seconds = [], [], []
    for run in runs:
        facts = run.run.get("stages", {}).get(stage)
        if not isinstance(facts, dict):
            continue
        seconds.append(float(facts.get("seconds") or 0.0))
        window = facts.get("window_utc")
        if isinstance(window, list) and len(window) == 2:
            start, end = _utc(window[0]), _utc(window[1])
            if start and end:
                starts.append(start)
                ends.append(end)
    if starts and len(starts) == len(seconds):
        first, last = min(starts), max(ends)
        return (last - first).total_seconds(), [first.isoformat(), last.isoformat()]
    return max(seconds, default=0.0), None


def _merged(entries: list[OpStats]) -> OpStats:
    return merge_ops(entries)


def _stage_histograms(
    runs: Sequence[Results], stage: str
) -> tuple[dict[str, OpStats], dict[str, dict[str, OpStats]]]:
    total: dict[str, list[OpStats]] = {}
    hosts: dict[str, dict[str, list[OpStats]]] = {}
    for run in runs:
        section = run.histograms.get(stage, {})
        for kind, entry in section.get("all", {}).items():
            total.setdefault(kind, []).append(histogram_from_json(entry, f"{stage}.all.{kind}"))
        for host, kinds in section.get("hosts", {}).items():
            for kind, entry in kinds.items():
                hosts.setdefault(host, {}).setdefault(kind, []).append(
                    histogram_from_json(entry, f"{stage}.hosts.{host}.{kind}")
                )
    return (
        {kind: _merged(items) for kind, items in total.items()},
        {host: {k: _merged(v) for k, v in kinds.items()} for host, kinds in hosts.items()},
    )


def _interval_s(run: Results) -> float:
    times = sorted({number(r, "elapsed_s") for r in run.perf_log if r.get("agent") == "all"})
    steps = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
    return steps[len(steps) // 2] if steps else 1.0


def _time_series(
    runs: Sequence[Results], renames: list[dict[str, str]], origin: datetime.datetime
) -> tuple[list[str], list[str]]:
    """Merged perf_log and op_log lines (without headers)."""
    interval = min((_interval_s(run) for run in runs if run.perf_log), default=1.0) or 1.0
    perf: list[tuple[float, str, str, dict[str, str]]] = []
    bins: dict[tuple[str, int], list[dict[str, str]]] = {}
    op_bins: dict[tuple[str, int, str], list[dict[str, str]]] = {}

    def placed(row: dict[str, str], run: Results) -> float | None:
        moment = _utc(row.get("time_utc"))
        if moment is not None:
            return (moment - origin).total_seconds()
        start = _utc(run.run.get("started_at"))
        elapsed = number(row, "elapsed_s")
        if start is None or elapsed != elapsed:
            return None
        return (start - origin).total_seconds() + elapsed

    for run, rename in zip(runs, renames, strict=True):
        for row in run.perf_log:
            if row.get("agent") == "all":
                continue
            t = placed(row, run)
            if t is None:
                continue
            row = {
                **row,
                "agent": rename.get(row.get("agent", ""), row.get("agent", "")),
                "elapsed_s": f"{t:.3f}",
            }
            perf.append((t, row.get("stage", ""), row["agent"], row))
            bins.setdefault((row.get("stage", ""), round(t / interval)), []).append(row)
        for row in run.op_log:
            t = placed(row, run)
            if t is not None:
                key = (row.get("stage", ""), round(t / interval), row.get("op", ""))
                op_bins.setdefault(key, []).append(row)

    def summed(rows: list[dict[str, str]], t: float, name_column: str, name: str) -> dict[str, str]:
        out = {c: "" for c in (*PERF_LOG_COLUMNS, *OP_LOG_COLUMNS)}
        out.update(
            elapsed_s=f"{t:.3f}",
            stage=rows[0].get("stage", ""),
            warmup=("1" if any(r.get("warmup") == "1" for r in rows) else "0"),
        )
        out[name_column] = name
        for column in SUM_COLUMNS:
            values = [number(r, column) for r in rows]
            values = [v for v in values if v == v]
            if column == "agents" and name_column == "agent":
                out[column] = str(len(rows))
            elif values:
                total = sum(values)
                out[column] = (
                    str(int(total))
                    if float(total).is_integer() and column not in ("ops_per_s", "mib_per_s")
                    else f"{total:.2f}"
                )
        moment = origin + datetime.timedelta(seconds=t)
        out["time_utc"] = (
            moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        )
        return out

    lines: list[tuple[float, int, str]] = []
    for t, _stage, _agent, row in perf:
        lines.append((t, 0, "\t".join(row.get(c, "") for c in PERF_LOG_COLUMNS)))
    for (_stage, k), rows in bins.items():
        t = k * interval
        total = summed(rows, t, "agent", "all")
        lines.append((t + interval / 2, 1, "\t".join(total[c] for c in PERF_LOG_COLUMNS)))
    op_lines = []
    for (_stage, k, op), rows in op_bins.items():
        merged = summed(rows, k * interval, "op", op)
        op_lines.append((k * interval, op, "\t".join(merged[c] for c in OP_LOG_COLUMNS)))
    return ([line for _, _, line in sorted(lines)], [line for _, _, line in sorted(op_lines)])


def merge_runs(runs: Sequence[Results], out: Path) -> Path:
    """Write the merged results directory ``out`` (created; must not hold anything)."""
    if len(runs) < 2:
        raise ResultsError("merge needs at least two results directories")
    kinds = [set(run.op_kinds()) for run in runs]
    for run, own in zip(runs[1:], kinds[1:], strict=True):
        if own != kinds[0]:
            raise NotComparable(
                f"different workloads: {runs[0].directory} has op kinds "
                f"{', '.join(sorted(kinds[0]))}; {run.directory} has {', '.join(sorted(own))}"
            )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ResultsError(f"{out}: exists and is not empty (merge writes a new directory)")
    out.mkdir(parents=True, exist_ok=True)
    renames = _renames(runs)
    starts = [_utc(run.run.get("started_at")) for run in runs]
    ends = [_utc(run.run.get("ended_at")) for run in runs]
    known = [s for s in starts if s is not None]
    origin = min(known) if known else datetime.datetime.now(datetime.UTC)

    histograms: dict[str, Any] = {}
    stage_facts: dict[str, Any] = {}
    for stage in STAGES:
        if not any(stage in run.summaries for run in runs):
            continue
        seconds, window = _stage_span(runs, stage)
        total, hosts = _stage_histograms(runs, stage)
        if total:
            rows = summary_rows(total, seconds)
            (out / STAGE_FILES[stage]).write_text(format_tsv(rows))
        for host, host_kinds in hosts.items():
            folder = out / "hosts" / host
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STAGE_FILES[stage]).write_text(format_tsv(summary_rows(host_kinds, seconds)))
        histograms[stage] = {
            "all": histograms_json(total),
            "hosts": {h: histograms_json(k) for h, k in hosts.items()},
        }
        agents_in, partial = [], []
        for run, rename in zip(runs, renames, strict=True):
            facts = run.run.get("stages", {}).get(stage, {})
            agents_in += [rename.get(a, a) for a in facts.get("agents", [])]
            partial += [rename.get(a, a) for a in facts.get("partial_agents", [])]
        stage_facts[stage] = {
            "seconds": round(seconds, 6),
            "window_utc": window,
            "agents": agents_in,
            "partial_agents": partial,
        }
    (out / "histograms.json").write_text(
        json.dumps({"format": HISTOGRAM_FORMAT, "stages": histograms}) + "\n"
    )

    for run, rename in zip(runs, renames, strict=True):
        for ident, folder_name in rename.items():
            source = run.directory / "agents" / ident
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, out / "agents" / folder_name, symlinks=True)
    with open(out / "errors.tsv", "w", encoding="utf-8") as errors:
        errors.write("stage\tagent\top\tcode\tcount\n")
        for run, rename in zip(runs, renames, strict=True):
            path = run.directory / "errors.tsv"
            if not path.is_file():
                continue
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
                cells = line.split("\t")
                if len(cells) == 5:
                    cells[1] = rename.get(cells[1], cells[1])
                    errors.write("\t".join(cells) + "\n")

    perf, ops = _time_series(runs, renames, origin)
    (out / "perf_log.tsv").write_text("\n".join(["\t".join(PERF_LOG_COLUMNS), *perf]) + "\n")
    (out / "op_log.tsv").write_text("\n".join(["\t".join(OP_LOG_COLUMNS), *ops]) + "\n")

    agents, timeline, errors_list = [], [], []
    for k, (run, rename, start) in enumerate(zip(runs, renames, starts, strict=True), start=1):
        shift = (start - origin).total_seconds() if start else 0.0
        for agent in run.run.get("agents", []):
            if isinstance(agent, dict):
                agents.append(
                    {**agent, "id": rename.get(str(agent.get("id")), agent.get("id")), "run": k}
                )
        for entry in run.run.get("timeline", []):
            if isinstance(entry, dict) and isinstance(entry.get("t_s"), int | float):
                agent = str(entry.get("agent", ""))
                timeline.append(
                    {
                        **entry,
                        "t_s": round(entry["t_s"] + shift, 3),
                        "agent": rename.get(
                            agent, agent if agent != "controller" else f"controller {k}"
                        ),
                    }
                )
        errors_list += [f"run {k}: {e}" for e in run.run.get("errors", [])]
    timeline.sort(key=lambda e: e["t_s"])
    statuses = [str(run.run.get("status", "failed")) for run in runs]
    worst = max(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER else 9)
    known_ends = [e for e in ends if e is not None]
    record = {
        "status": worst,
        "exit_code": max(int(run.run.get("exit_code") or 0) for run in runs),
        "run_id": "+".join(str(run.run.get("run_id")) for run in runs),
        "name": " + ".join(run.name for run in runs),
        "software": runs[0].run.get("software"),
        "protocol": runs[0].run.get("protocol"),
        "started_at": origin.isoformat(),
        "ended_at": max(known_ends).isoformat() if known_ends else None,
        "merged_from": [
            {
                key: run.run.get(key)
                for key in ("run_id", "name", "status", "started_at", "ended_at", "controller")
            }
            | {"directory": str(run.directory)}
            for run in runs
        ],
        "abort_reason": None,
        "stages": stage_facts,
        "agents": agents,
        "errors": errors_list,
        "timeline": timeline,
    }
    (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    configs = [
        f"# run {k}: {run.directory}\n{run.config_text.strip()}\n"
        for k, run in enumerate(runs, start=1)
    ]
    (out / "config.yaml").write_text(
        "# merged by triobench from the runs below (one YAML document each)\n"
        + "---\n".join(configs)
    )
    return out
