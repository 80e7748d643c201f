"""Histogram arithmetic on the wire form (``OpStats``: sparse ``(bucket, count)`` pairs).

The controller handles every agent's snapshot every interval; working on the occupied buckets
only (tens to hundreds) instead of all 2368 keeps its cost proportional to what the agents
actually measured. Same exact semantics as the dense records: merges add counts bucket by
bucket, intervals subtract cumulative snapshots, percentiles are nearest-rank bucket midpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from trio_bench.protocol import OpStats, bucket_bounds, bucket_value, counters_went_back

EMPTY = OpStats(ops=0, bytes=0, errors=0, sum_ns=0, max_ns=0, hist=())


def op_difference(later: OpStats, earlier: OpStats | None) -> OpStats:
    """What happened between two cumulative snapshots of one op kind.

    The interval's maximum is exact when the cumulative maximum grew; otherwise it is the
    upper edge of the highest bucket that gained counts (capped by the cumulative maximum).
    """
    if earlier is None or (earlier.ops == 0 and earlier.errors == 0):
        return later
    before = dict(earlier.hist)
    hist = tuple((i, c - before.get(i, 0)) for i, c in later.hist if c > before.get(i, 0))
    if later.max_ns > earlier.max_ns:
        maximum = later.max_ns
    elif hist:
        lowest, width = bucket_bounds(hist[-1][0])
        maximum = min(lowest + width - 1, later.max_ns)
    else:
        maximum = 0
    return OpStats(
        ops=later.ops - earlier.ops,
        bytes=later.bytes - earlier.bytes,
        errors=later.errors - earlier.errors,
        sum_ns=later.sum_ns - earlier.sum_ns,
        max_ns=maximum,
        hist=hist,
    )


def ops_difference(
    later: Mapping[str, OpStats], earlier: Mapping[str, OpStats]
) -> dict[str, OpStats] | None:
    """``op_difference`` for every op kind, in one pass per kind; None if any count of
    ``earlier`` is larger in ``later`` (``went_back``): then there is no interval."""
    for kind, before in earlier.items():
        if kind not in later and (before.ops or before.errors):
            return None
    out = {}
    for kind, after in later.items():
        found = earlier.get(kind)
        if found is None or (found.ops == 0 and found.errors == 0 and not found.hist):
            out[kind] = after
            continue
        before = found
        if counters_went_back(after, before):
            return None
        remaining = dict(before.hist)
        pop = remaining.pop
        hist = []
        for index, count in after.hist:
            gained = count - pop(index, 0)
            if gained < 0:
                return None
            if gained:
                hist.append((index, gained))
        if remaining:  # a bucket that had counts is gone
            return None
        if after.max_ns > before.max_ns:
            maximum = after.max_ns
        elif hist:
            lowest, width = bucket_bounds(hist[-1][0])
            maximum = min(lowest + width - 1, after.max_ns)
        else:
            maximum = 0
        out[kind] = OpStats(
            ops=after.ops - before.ops,
            bytes=after.bytes - before.bytes,
            errors=after.errors - before.errors,
            sum_ns=after.sum_ns - before.sum_ns,
            max_ns=maximum,
            hist=tuple(hist),
        )
    return out


def merge_ops(items: Iterable[OpStats]) -> OpStats:
    counts: dict[int, int] = {}
    ops = nbytes = errors = total = maximum = 0
    get = counts.get
    for item in items:
        ops += item.ops
        nbytes += item.bytes
        errors += item.errors
        total += item.sum_ns
        if item.max_ns > maximum:
            maximum = item.max_ns
        for index, count in item.hist:
            counts[index] = get(index, 0) + count
    return OpStats(
        ops=ops,
        bytes=nbytes,
        errors=errors,
        sum_ns=total,
        max_ns=maximum,
        hist=tuple(sorted(counts.items())),
    )


def percentiles(stats: OpStats, fractions: Sequence[float]) -> list[int]:
    """Nearest-rank percentiles (fractions ascending) in one pass over the occupied buckets."""
    out = [0] * len(fractions)
    if stats.ops == 0:
        return out
    ranks = [max(1, math.ceil(f * stats.ops)) for f in fractions]
    seen = 0
    k = 0
    for index, count in stats.hist:
        seen += count
        while k < len(ranks) and seen >= ranks[k]:
            value = bucket_value(index)
            out[k] = min(value, stats.max_ns) if stats.max_ns else value
            k += 1
        if k == len(ranks):
            break
    return out
