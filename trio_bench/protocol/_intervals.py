"""Intervals: what happened between two cumulative readings of the same counters, and
whether they are one counter read twice at all (§6). Pure arithmetic on ``OpStats``."""

from __future__ import annotations

from collections.abc import Mapping

from ._histogram import bucket_bounds, hist_difference
from ._messages import OpStats


def counters_went_back(after: OpStats, before: OpStats) -> bool:
    """Whether a counter of one op kind (ops, errors, bytes, sum_ns, max_ns) is smaller in
    ``after``: the cheap half of ``went_back``, shared with the aggregator's difference."""
    return (
        after.ops < before.ops
        or after.errors < before.errors
        or after.bytes < before.bytes
        or after.sum_ns < before.sum_ns
        or after.max_ns < before.max_ns
    )


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


_last: list[object] = [None, None, None]  # later, earlier, their difference


def ops_difference(
    later: Mapping[str, OpStats], earlier: Mapping[str, OpStats]
) -> dict[str, OpStats] | None:
    """``op_difference`` for every op kind; None if any count of ``earlier`` is larger in
    ``later`` (``went_back``): then there is no interval.

    The last answer is kept: a controller asks twice about each STATS (the endpoint whether
    it went back, the aggregator for its interval), and both ask about the same two maps."""
    if _last[0] is later and _last[1] is earlier:
        return _last[2]  # type: ignore[return-value]
    out = _ops_difference(later, earlier)
    _last[:] = (later, earlier, out)
    return out


def _ops_difference(
    later: Mapping[str, OpStats], earlier: Mapping[str, OpStats]
) -> dict[str, OpStats] | None:
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


def went_back(later: Mapping[str, OpStats], earlier: Mapping[str, OpStats]) -> bool:
    """Whether any cumulative count of ``earlier`` is smaller in ``later`` (§6: ops, bytes,
    errors, sum_ns, max_ns, each histogram bucket), or a kind with operations is gone: then
    the two are not one counter read twice."""
    return ops_difference(later, earlier) is None
