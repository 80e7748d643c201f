"""Summary rows as shown live and written to ``summary.tsv``: one per op kind, ``all``, then
one per op kind and size bucket (the ``size`` column; ``all`` on the per-kind rows)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from trio_bench.protocol import OP_KINDS, SIZE_LABELS

from ._record import (
    BYTES,
    ERRORS,
    MAX_NS,
    Record,
    kinds_only,
    mean_ns,
    merged,
    ops_of,
    percentile_ns,
    sized_key,
)

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


def summarize(op: str, record: Record, seconds: float, size: str = "all") -> SummaryRow:
    ops = ops_of(record)
    rate = 1.0 / seconds if seconds > 0 else 0.0
    return SummaryRow(
        op=op,
        size=size,
        ops=ops,
        bytes=record[BYTES],
        errors=record[ERRORS],
        seconds=seconds,
        ops_per_s=ops * rate,
        mib_per_s=record[BYTES] / MIB * rate,
        mean_us=mean_ns(record) / 1000,
        p50_us=percentile_ns(record, 0.50) / 1000,
        p90_us=percentile_ns(record, 0.90) / 1000,
        p99_us=percentile_ns(record, 0.99) / 1000,
        p999_us=percentile_ns(record, 0.999) / 1000,
        max_us=record[MAX_NS] / 1000,
    )


def summary_rows(snapshot: Mapping[str, Record], seconds: float) -> list[SummaryRow]:
    """One row per op kind present (in protocol order), then ``all`` (the merged histogram),
    then a row per op kind and size bucket that has operations (sai3-bench's size buckets).
    A size row's ``errors`` is 0: a failed operation moved no bytes to place it by."""
    rows = [summarize(k, snapshot[k], seconds) for k in OP_KINDS if k in snapshot]
    rows.append(summarize("all", merged(kinds_only(snapshot).values()), seconds))
    for kind in OP_KINDS:
        for label in SIZE_LABELS:
            record = snapshot.get(sized_key(kind, label))
            if record is not None and ops_of(record):
                rows.append(summarize(kind, record, seconds, size=label))
    return rows


def format_tsv(rows: list[SummaryRow]) -> str:
    lines = ["\t".join(SUMMARY_COLUMNS)]
    lines.extend("\t".join(row.cells()) for row in rows)
    return "\n".join(lines) + "\n"
