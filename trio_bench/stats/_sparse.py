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
from itertools import accumulate, compress

from trio_bench.protocol import OpStats, bucket_value

EMPTY = OpStats(ops=0, bytes=0, errors=0, sum_ns=0, max_ns=0, buckets=(), counts=())


def merge_ops(items: Iterable[OpStats]) -> OpStats:
    """Several histograms of the same layout as one: counts added bucket by bucket (into one
    dense list spanning the buckets they occupy, read back in C); none: ``EMPTY``."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    low, dense = dense_sum(items)
    return OpStats(
        ops=sum(item.ops for item in items),
        bytes=sum(item.bytes for item in items),
        errors=sum(item.errors for item in items),
        sum_ns=sum(item.sum_ns for item in items),
        max_ns=max((item.max_ns for item in items), default=0),
        buckets=tuple(compress(range(low, low + len(dense)), dense)),
        counts=tuple(compress(dense, dense)),
    )


def merge_wire(snapshots: Iterable[Mapping[str, OpStats]]) -> dict[str, OpStats]:
    """Snapshots in wire form (op kinds and sized keys, ``wire_snapshot``) merged key by
    key: what results are made of, without a dense record per agent and key (4,000 agents'
    dense records were 0.5 GB and seconds to build)."""
    by_key: dict[str, list[OpStats]] = {}
    for snapshot in snapshots:
        for key, stats in snapshot.items():
            by_key.setdefault(key, []).append(stats)
    return {key: merge_ops(items) for key, items in by_key.items()}


def percentiles(stats: OpStats, fractions: Sequence[float]) -> list[int]:
    """Nearest-rank percentiles (any order of ``fractions``) in ns; 0s if there were no ops."""
    return percentiles_of([stats], fractions)


def percentiles_of(items: Sequence[OpStats], fractions: Sequence[float]) -> list[int]:
    """The percentiles of several histograms merged, without building the merged histogram:
    their counts added into one dense list spanning the buckets they occupy (a latency range
    spans a few hundred of the 2368 buckets), accumulated in C, each rank found by bisection."""
    ops = sum(item.ops for item in items)
    if ops == 0:
        return [0] * len(fractions)
    maximum = max(item.max_ns for item in items)
    if len(items) == 1:
        return _ranked(items[0].buckets, items[0].counts, ops, maximum, fractions)
    low, dense = dense_sum(items)
    return dense_percentiles(low, dense, ops, maximum, fractions)


def dense_span(items: Iterable[OpStats]) -> tuple[int, list[int]]:
    """(lowest bucket, zeros for every bucket up to the highest) of ``items``' histograms."""
    occupied = [item for item in items if item.buckets]
    if not occupied:
        return 0, []
    low = min(item.buckets[0] for item in occupied)
    return low, [0] * (max(item.buckets[-1] for item in occupied) - low + 1)


def dense_sum(items: Sequence[OpStats]) -> tuple[int, list[int]]:
    """``items``' histograms added into one dense list: (its lowest bucket, the counts)."""
    low, dense = dense_span(items)
    for item in items:
        for index, count in zip(item.buckets, item.counts):
            dense[index - low] += count
    return low, dense


def dense_percentiles(
    low: int, dense: list[int], ops: int, maximum: int, fractions: Sequence[float]
) -> list[int]:
    """``percentiles_of`` for counts already added into ``dense_span``'s list."""
    if ops == 0:
        return [0] * len(fractions)
    return _ranked(range(low, low + len(dense)), dense, ops, maximum, fractions)


def _ranked(
    buckets: Sequence[int],
    counts: Sequence[int],
    ops: int,
    maximum: int,
    fractions: Sequence[float],
) -> list[int]:
    seen = list(accumulate(counts))
    out = []
    for fraction in fractions:
        value = bucket_value(buckets[bisect_left(seen, max(1, math.ceil(fraction * ops)))])
        out.append(min(value, maximum) if maximum else value)
    return out
