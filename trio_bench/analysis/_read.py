"""Reading a results directory back: the one place that knows its files, for report, compare
and merge. A file that is missing or unreadable is a ``ResultsError`` naming it (one line),
except the optional ones, which read as empty."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_bench.protocol import OpStats, bucket_index
from trio_bench.stats import SummaryRow

STAGES = ("prepare", "workload", "cleanup")
STAGE_FILES = {"prepare": "prepare.tsv", "workload": "summary.tsv", "cleanup": "cleanup.tsv"}


class ResultsError(Exception):
    """A results directory cannot be read. One line naming the file and what is wrong."""


Table = list[dict[str, str]]


@attrs.frozen
class Results:
    directory: Path
    run: dict[str, Any]  # run.json
    summaries: dict[str, Table]  # stage -> summary rows (op, ops, ..., p999_us, max_us)
    sizes: dict[str, Table]  # stage -> per op kind and size bucket rows (same columns)
    perf_log: Table
    op_log: Table
    histograms: dict[str, Any]  # histograms.json "stages"
    config_text: str
    hosts: dict[str, dict[str, Table]]  # host -> stage -> rows
    agents: dict[str, dict[str, Table]]  # agent id -> stage -> rows

    @property
    def name(self) -> str:
        return str(self.run.get("name") or self.directory.name)

    def row(self, stage: str, op: str) -> dict[str, str] | None:
        for row in self.summaries.get(stage, []):
            if row.get("op") == op:
                return row
        return None

    def op_kinds(self, stage: str = "workload") -> list[str]:
        return [r["op"] for r in self.summaries.get(stage, []) if r.get("op") != "all"]

    def as_json(self) -> dict[str, Any]:
        """The final numbers for scripts: per stage and op kind, summary.tsv's columns as
        numbers; the run's id and per-agent outcome."""

        def numbers(row: dict[str, str]) -> dict[str, int | float | str]:
            return {k: _typed(v) for k, v in row.items() if k not in ("op", "size")}

        stages = {
            stage: {row["op"]: numbers(row) for row in rows}
            for stage, rows in self.summaries.items()
        }
        sizes: dict[str, dict[str, dict[str, Any]]] = {}
        for stage, rows in self.sizes.items():
            for row in rows:
                sizes.setdefault(stage, {}).setdefault(row["op"], {})[row["size"]] = numbers(row)
        agents = [
            {key: a.get(key) for key in ("id", "hostname", "final_state", "failure")}
            for a in self.run.get("agents", [])
            if isinstance(a, dict)
        ]
        return {
            "run_id": self.run.get("run_id"),
            "name": self.name,
            "stages": stages,
            "sizes": sizes,
            "agents": agents,
        }

    def histogram(self, stage: str, op: str) -> OpStats | None:
        """The merged histogram of ``op`` in ``stage`` (``all``: every kind merged)."""
        entry = self.histograms.get(stage, {}).get("all", {}).get(op)
        return None if entry is None else histogram_from_json(entry, f"{stage}.{op}")


def _table(path: Path, required: bool) -> Table:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except FileNotFoundError:
        if required:
            raise ResultsError(
                f"{path}: missing (is this a triobench results directory?)"
            ) from None
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from None


def _json(path: Path, required: bool) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ResultsError(
                f"{path}: missing (is this a triobench results directory?)"
            ) from None
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsError(f"{path}: cannot read: {exc}") from None


def _split_sizes(rows: Table) -> tuple[Table, Table]:
    """A summary table's per-kind rows (``size`` ``all``, or no size column: results written
    before size rows existed) and its per-size-bucket rows."""
    kinds = [r for r in rows if r.get("size", "all") == "all"]
    sizes = [r for r in rows if r.get("size", "all") != "all"]
    return kinds, sizes


def _per_folder(base: Path) -> dict[str, dict[str, Table]]:
    out: dict[str, dict[str, Table]] = {}
    if not base.is_dir():
        return out
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        tables = {stage: _table(folder / name, False) for stage, name in STAGE_FILES.items()}
        out[folder.name] = {stage: _split_sizes(rows)[0] for stage, rows in tables.items() if rows}
    return out


def read_results(directory: Path | str) -> Results:
    """Everything a results directory holds. ``ResultsError`` if it is not one."""
    path = Path(directory)
    if not path.is_dir():
        raise ResultsError(f"{path}: not a directory")
    run = _json(path / "run.json", True)
    if not isinstance(run, dict):
        raise ResultsError(f"{path / 'run.json'}: expected a JSON object")
    tables = {stage: _table(path / name, False) for stage, name in STAGE_FILES.items()}
    split = {stage: _split_sizes(rows) for stage, rows in tables.items() if rows}
    histograms = _json(path / "histograms.json", False)
    try:
        config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        config_text = ""
    return Results(
        directory=path,
        run=run,
        summaries={stage: kinds for stage, (kinds, _) in split.items()},
        sizes={stage: sizes for stage, (_, sizes) in split.items() if sizes},
        perf_log=_table(path / "perf_log.tsv", False),
        op_log=_table(path / "op_log.tsv", False),
        histograms=histograms.get("stages", {}) if isinstance(histograms, dict) else {},
        config_text=config_text,
        hosts=_per_folder(path / "hosts"),
        agents=_per_folder(path / "agents"),
    )


def histogram_from_json(entry: Mapping[str, Any], where: str) -> OpStats:
    """histograms.json's form ([low_ns, high_ns, count] per bucket) back to OpStats."""
    try:
        counts: dict[int, int] = {}
        for low, _high, count in entry["hist"]:
            if int(low) < 0 or int(count) < 1:
                raise ValueError(f"bucket [{low}, {_high}, {count}]")
            index = bucket_index(int(low))
            counts[index] = counts.get(index, 0) + int(count)
        hist = sorted(counts.items())
        stats = OpStats(
            ops=int(entry["ops"]),
            bytes=int(entry["bytes"]),
            errors=int(entry["errors"]),
            sum_ns=int(entry["sum_ns"]),
            max_ns=int(entry["max_ns"]),
            buckets=tuple(index for index, _ in hist),
            counts=tuple(count for _, count in hist),
        )
        stats.check()
        return stats
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"histograms.json: {where}: not a histogram ({exc})") from None


def _typed(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def number(row: Mapping[str, str] | None, column: str) -> float:
    """A numeric cell; NaN where the row or the cell is missing or not a number."""
    if row is None:
        return math.nan
    try:
        return float(row.get(column, "nan"))
    except ValueError:
        return math.nan


def summary_cells(row: SummaryRow) -> dict[str, str]:
    """A computed summary row as the strings summary.tsv holds."""
    from trio_bench.stats import SUMMARY_COLUMNS

    return dict(zip(SUMMARY_COLUMNS, row.cells(), strict=True))
