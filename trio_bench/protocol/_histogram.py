"""The latency histogram's bucket layout: part of the wire format, so it lives in the core.

Log-linear buckets over integer nanoseconds, like fio's: values below 128 ns get one bucket
each; above that, every power-of-two range [2**k, 2**(k+1)) is split into 64 equal buckets.
Reporting a bucket's midpoint is then within 1/128 (0.79 %) of any value in it. Two histograms
of the same layout merge exactly by adding counts bin by bin, across threads, agents and time.

    index(v) = v                                  if v < 128
             = (s << 6) + (v >> s)                with s = v.bit_length() - 7, otherwise

Values at or above 2**42 ns (73 minutes) all land in the last bucket; the exact maximum is
carried beside the histogram.
"""

from __future__ import annotations

import itertools
import operator

SUB_BUCKET_BITS = 6
SUB_BUCKETS = 1 << SUB_BUCKET_BITS  # 64 buckets per power of two: <= 1/128 relative error
EXACT_BELOW = SUB_BUCKETS * 2  # 128: every value below has its own bucket
MAX_SHIFT = 35  # 2**(MAX_SHIFT + 7) ns = 2**42 ns ~ 73 min: longer than any sane single op
NBINS = (MAX_SHIFT + 2) * SUB_BUCKETS  # 2368
CLAMP_NS = 1 << (MAX_SHIFT + SUB_BUCKET_BITS + 1)


def bucket_index(value_ns: int) -> int:
    """The bucket of a latency in nanoseconds (negative values are a caller bug)."""
    if value_ns < 0:
        raise ValueError(f"latency must be >= 0 ns, got {value_ns}")
    shift = value_ns.bit_length() - (SUB_BUCKET_BITS + 1)
    if shift <= 0:
        return value_ns
    if shift > MAX_SHIFT:
        return NBINS - 1
    return (shift << SUB_BUCKET_BITS) + (value_ns >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """``(lowest, width)``: the bucket holds values ``lowest <= v < lowest + width``."""
    if not 0 <= index < NBINS:
        raise ValueError(f"bucket index {index} outside [0, {NBINS})")
    if index < EXACT_BELOW:
        return index, 1
    shift = (index >> SUB_BUCKET_BITS) - 1
    return (index - (shift << SUB_BUCKET_BITS)) << shift, 1 << shift


def bucket_value(index: int) -> int:
    """The value reported for a bucket: its midpoint (exact below 128 ns)."""
    lowest, width = bucket_bounds(index)
    return lowest + (width - 1) // 2


def hist_difference(
    buckets: tuple[int, ...],
    counts: tuple[int, ...],
    earlier_buckets: tuple[int, ...],
    earlier_counts: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The histogram of what happened between two cumulative readings of one counter, as
    (buckets, counts) without empty buckets; None if any bucket of the earlier one has more
    counts than the later (or is gone): then they are not one counter read twice.

    Once a workload is steady both readings have the same buckets, and the difference is one
    element-wise subtraction in C; otherwise the earlier counts are taken away by position."""
    if buckets == earlier_buckets:
        gains = list(map(operator.sub, counts, earlier_counts))
    else:
        position = dict(zip(buckets, range(len(buckets))))
        gains = list(counts)
        for index, count in zip(earlier_buckets, earlier_counts):
            at = position.get(index)
            if at is None:
                return None
            gains[at] -= count
    if not gains:
        return (), ()
    least = min(gains)
    if least < 0:
        return None
    if least == 0:
        return tuple(itertools.compress(buckets, gains)), tuple(itertools.compress(gains, gains))
    return buckets, tuple(gains)
