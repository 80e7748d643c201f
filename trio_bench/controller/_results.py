"""The results directory, written as the run goes so a crash late in a run keeps what came
before it.

    config.yaml            the configuration as run (agents resolved)
    summary.tsv            workload stage, one row per op kind plus ``all``, then one per op
                           kind and size bucket (``size``; ``all`` on the others)
    prepare.tsv            prepare stage, same columns (cleanup.tsv likewise)
    agents/<id>/*.tsv      the same files for each agent
    perf_log.tsv           one row per stats interval, per agent and ``all``
    op_log.tsv             one row per stats interval per op kind, all agents merged
    hosts/<host>/*.tsv     each load host's agents merged
    histograms.json        the merged latency histograms per stage and op kind (all, each host)
    errors.tsv             failed operations by stage, agent, op kind and error code
    run.json               status, exit code, start skew, per-agent facts, timeline

Aggregate rows merge the agents' histograms (exact percentiles) and add their counts; the
aggregate window is the span from the earliest agent start to the latest agent end of that
stage (on the controller's clock), so ops_per_s is the system's throughput over the time it
was under load.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from trio_bench.protocol import OpStats, StageSummary, Stats, bucket_bounds, to_controller_clock
from trio_bench.stats import format_tsv, is_sized, merge_wire, summary_rows, wire_snapshot

from ._aggregate import OP_LOG_COLUMNS, PERF_LOG_COLUMNS, WindowRows

STAGE_FILES = {"workload": "summary.tsv", "prepare": "prepare.tsv", "cleanup": "cleanup.tsv"}


class ResultsUnusable(Exception):
    """The results directory cannot be created or written. One line naming where and why."""


def unusable(directory: Path | str, exc: OSError) -> str:
    """The one line for a failed write: where, and the system's reason."""
    where = exc.filename if exc.filename else directory
    return f"results: cannot write {where}: {exc.strerror or exc}"


def new_results_dir(base: str | Path, name: str) -> Path:
    """``<base>/<YYYYmmdd-HHMMSS>-<name>/``, never reusing an existing directory. The name is
    cut to 64 characters (a file name has a limit). ``ResultsUnusable`` if it cannot be made."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:64] or "run"
    path = Path(base) / f"{stamp}-{safe}"
    suffix = 1
    try:
        while path.exists():
            suffix += 1
            path = Path(base) / f"{stamp}-{safe}-{suffix}"
        path.mkdir(parents=True)
    except OSError as exc:
        raise ResultsUnusable(unusable(base, exc)) from None
    return path


def readable_json(record: dict[str, Any]) -> str:
    """A map as ``json.dumps(indent=2)`` lays it out, except that an array of objects (the
    agents, the timeline) has one object per line: as easy to read and to grep, and written
    by the C encoder (``indent`` makes json use its pure-Python one: run.json of 4,000 agents
    took 3 s that way)."""
    entries = []
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            inner = ",\n".join(f"    {json.dumps(item)}" for item in value)
            entries.append(f"  {json.dumps(key)}: [\n{inner}\n  ]")
        else:
            entries.append(
                f"  {json.dumps(key)}: " + json.dumps(value, indent=2).replace("\n", "\n  ")
            )
    return "{\n" + ",\n".join(entries) + "\n}\n" if entries else "{}\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class AgentStageResult:
    """One agent's numbers for one stage: its final summary, or its last live stats if it was
    lost before sending one (then ``partial``)."""

    def __init__(
        self,
        agent: str,
        summary: StageSummary | None,
        last_stats: Stats | None,
        offset_ns: int,
        host: str = "",
    ) -> None:
        self.agent = agent
        self.host = host
        self.partial = summary is None or summary.outcome != "completed"
        self.error_codes: dict[str, dict[str, int]] = (
            summary.error_codes
            if summary is not None
            else last_stats.error_codes
            if last_stats is not None
            else {}
        )
        if summary is not None:
            self.snapshot: dict[str, OpStats] = wire_snapshot(summary.ops, summary.sizes)
            self.seconds = summary.measured_ns / 1e9
            end = to_controller_clock(summary.ended_at_ns, offset_ns)
            self.window: tuple[int, int] | None = (end - summary.measured_ns, end)
        elif last_stats is not None:
            self.snapshot = wire_snapshot(last_stats.ops, last_stats.sizes)
            self.seconds = last_stats.elapsed_ns / 1e9
            self.window = None
        else:
            self.snapshot = {}
            self.seconds = 0.0
            self.window = None


def _window(results: Sequence[AgentStageResult]) -> tuple[int, int] | None:
    """From the earliest agent start to the latest agent end (controller clock, ns)."""
    windows = [r.window for r in results if r.window is not None]
    if not windows:
        return None
    return min(start for start, _ in windows), max(end for _, end in windows)


def _merged_tsv(
    path: Path, results: Sequence[AgentStageResult]
) -> tuple[float, dict[str, OpStats]]:
    """Write the merged numbers of ``results`` over their window (``_window``). Returns its
    length in seconds and the merged snapshot."""
    window = _window(results)
    if window is not None:
        span = (window[1] - window[0]) / 1e9
    else:
        span = max((r.seconds for r in results), default=0.0)
    total = merge_wire(r.snapshot for r in results)
    _atomic_write(path, format_tsv(summary_rows(total, span)))
    return span, total


def utc_iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat()


HISTOGRAM_FORMAT = (
    "stages.<stage>.all|hosts.<host>.<op>: ops, bytes, errors, sum_ns, max_ns, and hist: "
    "[low_ns, high_ns, count] per non-empty bucket (values low_ns <= v < high_ns); merge "
    "histograms by adding the counts of equal buckets. <op> is an op kind, or an op kind, "
    "a space and a size bucket (e.g. 'get 1B-8KiB': that kind's operations of that size)"
)


def histograms_json(snapshot: Mapping[str, OpStats]) -> dict[str, Any]:
    """One stage's histograms.json entry (``HISTOGRAM_FORMAT``) for a merged snapshot in wire
    form: the op kinds, then the size buckets that have operations."""
    kinds_first = sorted(snapshot.items(), key=lambda item: is_sized(item[0]))  # stable
    return {
        key: {**_totals(stats), "hist": [_bucket(i, n) for i, n in stats.pairs()]}
        for key, stats in kinds_first
        if stats.ops or not is_sized(key)
    }


def _totals(stats: OpStats) -> dict[str, int]:
    return {
        "ops": stats.ops,
        "bytes": stats.bytes,
        "errors": stats.errors,
        "sum_ns": stats.sum_ns,
        "max_ns": stats.max_ns,
    }


def _bucket(index: int, count: int) -> list[int]:
    low, width = bucket_bounds(index)
    return [low, low + width, count]


def _folder_name(text: str) -> str:
    """A host name as reported by a peer, made safe as one path segment."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64]
    return name if name and name[0] not in "._-" else f"_{name}"


class ResultsWriter:
    """Writes one run's results directory. Every method may raise ``OSError`` (a full disk,
    a directory made read-only mid-run); the controller turns that into a clean abort."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            if not directory.is_dir():
                directory.mkdir(parents=True)
            self._perf_log = open(directory / "perf_log.tsv", "w", buffering=1)  # noqa: SIM115
            self._perf_log.write("\t".join(PERF_LOG_COLUMNS) + "\n")
            self._op_log = open(directory / "op_log.tsv", "w", buffering=1)  # noqa: SIM115
            self._op_log.write("\t".join(OP_LOG_COLUMNS) + "\n")
            self._errors = open(directory / "errors.tsv", "w", buffering=1)  # noqa: SIM115
            self._errors.write("stage\tagent\top\tcode\tcount\n")
        except OSError as exc:
            raise ResultsUnusable(unusable(directory, exc)) from None
        self._histograms: dict[str, Any] = {}

    def write_config(self, data: dict[str, Any], repeat: str, source: str) -> None:
        header = f"# as run by triobench (from {source})\n# to repeat the run: {repeat}\n"
        _atomic_write(
            self.directory / "config.yaml", header + yaml.safe_dump(data, sort_keys=False)
        )

    def log_windows(self, windows: Iterable[WindowRows]) -> None:
        """perf_log.tsv: each agent's row of the window, then ``all``; op_log.tsv: one row
        per op kind."""
        for window in windows:
            for row in (*window.agents, window.total):
                self._perf_log.write("\t".join(row.cells()) + "\n")
            for row in window.ops:
                self._op_log.write("\t".join(row.op_cells()) + "\n")

    def write_stage(self, stage: str, results: Sequence[AgentStageResult]) -> dict[str, Any]:
        """Write the stage's aggregate and per-agent TSVs; return facts for run.json."""
        name = STAGE_FILES[stage]
        for result in results:
            rows = summary_rows(result.snapshot, result.seconds)
            _atomic_write(self.directory / "agents" / result.agent / name, format_tsv(rows))
        span, total = _merged_tsv(self.directory / name, results)
        by_host: dict[str, list[AgentStageResult]] = {}
        for result in results:
            by_host.setdefault(_folder_name(result.host or "unknown"), []).append(result)
        # per host rather than per agent: bounded by the hosts, however many agents each runs
        self._histograms[stage] = {"all": histograms_json(total), "hosts": {}}
        for host, on_host in by_host.items():
            _span, host_total = _merged_tsv(self.directory / "hosts" / host / name, on_host)
            self._histograms[stage]["hosts"][host] = histograms_json(host_total)
        _atomic_write(
            self.directory / "histograms.json",
            json.dumps({"format": HISTOGRAM_FORMAT, "stages": self._histograms}) + "\n",
        )
        for result in results:
            for op, codes in sorted(result.error_codes.items()):
                for code, count in sorted(codes.items(), key=lambda item: -item[1]):
                    self._errors.write(f"{stage}\t{result.agent}\t{op}\t{code}\t{count}\n")
        window = _window(results)
        return {
            "seconds": round(span, 6),
            # the measured window on the controller's clock (UTC), for merge and the report
            "window_utc": [utc_iso(window[0]), utc_iso(window[1])] if window else None,
            "agents": [r.agent for r in results],
            "partial_agents": [r.agent for r in results if r.partial],
        }

    def write_run(self, record: dict[str, Any]) -> None:
        _atomic_write(self.directory / "run.json", readable_json(record))

    def keep_only_run_json(self) -> None:
        """A run that never started leaves only run.json (which says why), not a directory
        of empty files."""
        for entry in self.directory.iterdir():
            if entry.name == "run.json":
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError:
                pass  # the start failure is what matters

    def close(self) -> None:
        """Close every file, even if closing one fails (its buffered rows cannot be written);
        then raise the first failure."""
        failure: OSError | None = None
        for f in (self._perf_log, self._op_log, self._errors):
            try:
                f.close()
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
