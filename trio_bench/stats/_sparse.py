"""Histogram arithmetic on the wire form (``OpStats``: the occupied buckets and their counts).

The controller handles every agent's snapshot every interval; working on the occupied buckets
only (tens to hundreds) instead of all 2368 keeps its cost proportional to what the agents
actually measured, and whole-array operations (``map``, ``accumulate``, ``bisect``) keep the
per-bucket work in C. Same exact semantics as the dense records: merges add counts bucket by
bucket, intervals subtract cumulative snapshots, percentiles are nearest-rank bucket midpoints.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate

from trio_bench.protocol import (
    OpStats,
    bucket_bounds,
    bucket_value,
    counters_went_back,
    hist_difference,
)

EMPTY = OpStats(ops=0, bytes=0, errors=0, sum_ns=0, max_ns=0, buckets=(), counts=())


def op_difference(later: OpStats, earlier: OpStats | None) -> OpStats | None:
    """What happened between two cumulative snapshots of one op kind; None if a count of
    ``earlier`` is larger in ``later`` (not one counter read twice).

    The interval's maximum is exact when the cumulative maximum grew; otherwise it is the
    upper edge of the highest bucket that gained counts (capped by the cumulative maximum).
    """
    if earlier is None or (earlier.ops == 0 and earlier.errors == 0 and not earlier.buckets):
        return later
    if counters_went_back(later, earlier):
        return None
    gained = hist_difference(later.buckets, later.counts, earlier.buckets, earlier.counts)
    if gained is None:
        return None
    buckets, counts = gained
    if later.max_ns > earlier.max_ns:
        maximum = later.max_ns
    elif buckets:
        lowest, width = bucket_bounds(buckets[-1])
        maximum = min(lowest + width - 1, later.max_ns)
    else:
        maximum = 0
    return OpStats(
        ops=later.ops - earlier.ops,
        bytes=later.bytes - earlier.bytes,
        errors=later.errors - earlier.errors,
        sum_ns=later.sum_ns - earlier.sum_ns,
        max_ns=maximum,
        buckets=buckets,
        counts=counts,
    )


def ops_difference(
    later: Mapping[str, OpStats], earlier: Mapping[str, OpStats]
) -> dict[str, OpStats] | None:
    """``op_difference`` for every op kind; None if any count of ``earlier`` is larger in
    ``later`` (``went_back``): then there is no interval."""
    for kind, before in earlier.items():
        if kind not in later and (before.ops or before.errors):
            return None
    out = {}
    for kind, after in later.items():
        delta = op_difference(after, earlier.get(kind))
        if delta is None:
            return None
        out[kind] = delta
    return out


def merge_ops(items: Iterable[OpStats]) -> OpStats:
    """Several histograms of the same layout as one: counts added bucket by bucket."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    counts: dict[int, int] = {}
    get = counts.get
    for item in items:
        for index, count in zip(item.buckets, item.counts):
            counts[index] = get(index, 0) + count
    merged = sorted(counts.items())
    return OpStats(
        ops=sum(item.ops for item in items),
        bytes=sum(item.bytes for item in items),
        errors=sum(item.errors for item in items),
        sum_ns=sum(item.sum_ns for item in items),
        max_ns=max((item.max_ns for item in items), default=0),
        buckets=tuple(index for index, _ in merged),
        counts=tuple(count for _, count in merged),
    )


def percentiles(stats: OpStats, fractions: Sequence[float]) -> list[int]:
    """Nearest-rank percentiles (any order of ``fractions``) in ns; 0s if there were no ops."""
    return percentiles_of([stats], fractions)


def percentiles_of(items: Sequence[OpStats], fractions: Sequence[float]) -> list[int]:
    """The percentiles of several histograms merged, without merging them: their buckets
    sorted together (equal buckets side by side) and their counts accumulated in that order."""
    ops = sum(item.ops for item in items)
    if ops == 0:
        return [0] * len(fractions)
    maximum = max(item.max_ns for item in items)
    if len(items) == 1:
        buckets, counts = items[0].buckets, items[0].counts
    else:
        pairs = sorted(pair for item in items for pair in zip(item.buckets, item.counts))
        buckets = tuple(index for index, _ in pairs)
        counts = tuple(count for _, count in pairs)
    seen = list(accumulate(counts))
    out = []
    for fraction in fractions:
        at = bisect_left(seen, max(1, math.ceil(fraction * ops)))
        value = bucket_value(buckets[at])
        out.append(min(value, maximum) if maximum else value)
    return out
