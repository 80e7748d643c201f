"""The plain dense computations over a whole record, one bucket at a time: the oracles the
tests hold the library's faster (sparse, C-level) arithmetic to."""

from __future__ import annotations

import math
from collections.abc import Iterable

from trio_bench import protocol as p
from trio_bench import stats


def merged(records: Iterable[stats.Record]) -> stats.Record:
    out = stats.new_record()
    for record in records:
        stats.merge_into(out, record)
    return out


def percentile_ns(record: stats.Record, fraction: float) -> int:
    """Nearest-rank percentile (``fraction`` in (0, 1]) in ns, the bucket midpoint clamped to
    the exact maximum; 0 if there were no ops."""
    total = stats.ops_of(record)
    if total == 0:
        return 0
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in range(p.NBINS):
        seen += record[index]
        if seen >= rank:
            value = p.bucket_value(index)
            return min(value, record[stats.MAX_NS]) if record[stats.MAX_NS] else value
    raise AssertionError("unreachable: rank <= total")


def mean_ns(record: stats.Record) -> float:
    total = stats.ops_of(record)
    return record[stats.SUM_NS] / total if total else 0.0
