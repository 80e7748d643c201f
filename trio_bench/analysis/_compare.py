"""``triobench compare BASE NEW``: two runs side by side, per stage and op kind, with the
change in percent and which way is worse; a gate for storage regressions in CI.

Throughput (ops/s, MiB/s) is worse when it drops; latency percentiles (p50, p90, p99, p99.9)
are worse when they rise. The gate (``--fail-if-worse PCT``) looks at the workload stage:
prepare and cleanup depend on how many objects existed and are shown for information.
"""

from __future__ import annotations

import html
import math

import attrs

from ._read import Results, number

METRICS = (
    ("ops_per_s", "ops/s", True),
    ("mib_per_s", "MiB/s", True),
    ("p50_us", "p50 us", False),
    ("p90_us", "p90 us", False),
    ("p99_us", "p99 us", False),
    ("p999_us", "p99.9 us", False),
)
GATED_STAGES = ("workload",)


class NotComparable(Exception):
    """The runs cannot be compared (one line saying why)."""


@attrs.frozen
class Change:
    stage: str
    op: str
    metric: str  # the label, e.g. "p99 us"
    base: float
    new: float
    higher_is_better: bool

    @property
    def percent(self) -> float | None:
        """The change from base to new in percent; None where base is 0 (or missing)."""
        if math.isnan(self.base) or math.isnan(self.new):
            return None
        if self.base == 0:
            return 0.0 if self.new == 0 else None
        return (self.new - self.base) / self.base * 100

    @property
    def worse_by(self) -> float | None:
        """How much worse in percent (negative: better)."""
        change = self.percent
        if change is None:
            return None
        return -change if self.higher_is_better else change

    def verdict(self) -> str:
        worse = self.worse_by
        if worse is None:
            return "n/a"
        if abs(worse) < 0.05:
            return "same"
        return "worse" if worse > 0 else "better"


def compare(base: Results, new: Results) -> list[Change]:
    """Every metric of every op kind of every stage both runs have. ``NotComparable`` if the
    workloads differ in their op kinds."""
    base_kinds, new_kinds = set(base.op_kinds()), set(new.op_kinds())
    if not base_kinds or not new_kinds:
        empty = base if not base_kinds else new
        raise NotComparable(f"{empty.directory}: no workload results (summary.tsv is empty)")
    if base_kinds != new_kinds:
        raise NotComparable(
            f"different workloads: {base.directory} has op kinds {', '.join(sorted(base_kinds))}; "
            f"{new.directory} has {', '.join(sorted(new_kinds))}"
        )
    changes = []
    for stage in ("workload", "prepare", "cleanup"):
        if stage not in base.summaries or stage not in new.summaries:
            continue
        ops = [r["op"] for r in base.summaries[stage] if new.row(stage, r["op"]) is not None]
        for op in ops:
            before, after = base.row(stage, op), new.row(stage, op)
            for column, label, higher_is_better in METRICS:
                b, a = number(before, column), number(after, column)
                if column == "mib_per_s" and b == 0 and a == 0:
                    continue  # an op kind that moves no data
                changes.append(Change(stage, op, label, b, a, higher_is_better))
    return changes


def regressions(changes: list[Change], percent: float) -> list[Change]:
    """The gated changes worse by more than ``percent``."""
    return [
        c
        for c in changes
        if c.stage in GATED_STAGES and c.worse_by is not None and c.worse_by > percent
    ]


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


def _percent(change: Change) -> str:
    value = change.percent
    return "n/a" if value is None else f"{value:+.1f}%"


def format_table(base: Results, new: Results, changes: list[Change]) -> str:
    rows = [("stage", "op", "metric", "base", "new", "change", "")]
    rows += [
        (c.stage, c.op, c.metric, _number(c.base), _number(c.new), _percent(c), c.verdict())
        for c in changes
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"base: {base.directory} ({base.name})", f"new:  {new.directory} ({new.name})"]
    for row in rows:
        cells = [
            c.ljust(w) if i < 3 or i == 6 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_html(base: Results, new: Results, changes: list[Change]) -> str:
    colour = {"worse": "#fdd", "better": "#dfd"}
    body = "".join(
        f'<tr style="background:{colour.get(c.verdict(), "#fff")}">'
        + "".join(
            f"<td>{html.escape(v)}</td>"
            for v in (
                c.stage,
                c.op,
                c.metric,
                _number(c.base),
                _number(c.new),
                _percent(c),
                c.verdict(),
            )
        )
        + "</tr>"
        for c in changes
    )
    head = "".join(f"<th>{h}</th>" for h in ("stage", "op", "metric", "base", "new", "change", ""))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>triobench compare'
        "</title><style>body{font:14px system-ui,sans-serif;margin:16px}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head>"
        f"<body><h1>triobench compare</h1><p>base: {html.escape(str(base.directory))} "
        f"({html.escape(base.name)})<br>new: {html.escape(str(new.directory))} "
        f"({html.escape(new.name)})</p><table><tr>{head}</tr>{body}</table></body></html>\n"
    )
