"""Summary rows as shown live and written to ``summary.tsv``: one per op kind, ``all``, then
one per op kind and size bucket (the ``size`` column; ``all`` on the per-kind rows)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from trio_bench.protocol import OP_KINDS, SIZE_LABELS, OpStats

from ._record import kinds_only, sized_key
from ._sparse import merge_ops, percentiles

SUMMARY_COLUMNS = (
    "op",
    "size",
    "ops",
    "bytes",
    "errors",
    "seconds",
    "ops_per_s",
    "mib_per_s",
    "mean_us",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
)
MIB = 1024 * 1024


@attrs.frozen
class SummaryRow:
    op: str
    size: str
    ops: int
    bytes: int
    errors: int
    seconds: float
    ops_per_s: float
    mib_per_s: float
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float

    def cells(self) -> list[str]:
        return [
            self.op,
            self.size,
            str(self.ops),
            str(self.bytes),
            str(self.errors),
            f"{self.seconds:.3f}",
            f"{self.ops_per_s:.1f}",
            f"{self.mib_per_s:.2f}",
            f"{self.mean_us:.1f}",
            f"{self.p50_us:.1f}",
            f"{self.p90_us:.1f}",
            f"{self.p99_us:.1f}",
            f"{self.p999_us:.1f}",
            f"{self.max_us:.1f}",
        ]


def summarize(op: str, stats: OpStats, seconds: float, size: str = "all") -> SummaryRow:
    rate = 1.0 / seconds if seconds > 0 else 0.0
    p50, p90, p99, p999 = percentiles(stats, (0.50, 0.90, 0.99, 0.999))
    return SummaryRow(
        op=op,
        size=size,
        ops=stats.ops,
        bytes=stats.bytes,
        errors=stats.errors,
        seconds=seconds,
        ops_per_s=stats.ops * rate,
        mib_per_s=stats.bytes / MIB * rate,
        mean_us=stats.sum_ns / stats.ops / 1000 if stats.ops else 0.0,
        p50_us=p50 / 1000,
        p90_us=p90 / 1000,
        p99_us=p99 / 1000,
        p999_us=p999 / 1000,
        max_us=stats.max_ns / 1000,
    )


def summary_rows(snapshot: Mapping[str, OpStats], seconds: float) -> list[SummaryRow]:
    """One row per op kind present (in protocol order), then ``all`` (the merged histogram),
    then a row per op kind and size bucket that has operations (sai3-bench's size buckets).
    ``snapshot`` is in wire form (``wire_snapshot``). A size row's ``errors`` is 0: a failed
    operation moved no bytes to place it by."""
    rows = [summarize(k, snapshot[k], seconds) for k in OP_KINDS if k in snapshot]
    rows.append(summarize("all", merge_ops(kinds_only(snapshot).values()), seconds))
    for kind in OP_KINDS:
        for label in SIZE_LABELS:
            stats = snapshot.get(sized_key(kind, label))
            if stats is not None and stats.ops:
                rows.append(summarize(kind, stats, seconds, size=label))
    return rows


def format_tsv(rows: list[SummaryRow]) -> str:
    lines = ["\t".join(SUMMARY_COLUMNS)]
    lines.extend("\t".join(row.cells()) for row in rows)
    return "\n".join(lines) + "\n"
