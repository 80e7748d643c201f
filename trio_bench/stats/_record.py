"""Per-op-kind statistics records: what worker threads write and everyone else reads.

A record is a flat ``list[int]`` of ``RECORD_LEN`` slots: the ``NBINS`` latency histogram
buckets (layout in ``protocol._histogram``), then bytes, errors, the latency sum and the latency
maximum. One flat list because:

- a worker updates it with a few list-index increments (well under a microsecond per op);
- a snapshot taken by another thread while the worker runs is one ``list.copy()``, which runs
  in C under the GIL, so every slot of the copy is from the same instant;
- merging records (threads, agents) is slot-wise addition (max for the max slot), so
  percentiles are always computed from merged histograms and never averaged.

The number of successful operations is the histogram total: it can never disagree with the
histogram. Failed operations count only in ``errors``.

Size buckets. A snapshot also holds one record per op kind and size bucket, keyed
``"<kind> <label>"`` (``sized_key``): workers record each operation only there, by the bytes
it moved, and keep the plain ``kind`` record for what has no size (errors). ``with_totals``
then makes each plain record the kind's total, so every reader of plain kinds sees what it
always saw, and the merges and differences of snapshots work on the sized keys unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from operator import add
from typing import TypeVar

import attrs

from trio_bench.protocol import NBINS, SIZE_LABELS, OpStats, bucket_bounds

BYTES = NBINS
ERRORS = NBINS + 1
SUM_NS = NBINS + 2
MAX_NS = NBINS + 3
RECORD_LEN = NBINS + 4

Record = list[int]
Snapshot = dict[str, Record]  # op kind -> record
T = TypeVar("T")


def sized_key(kind: str, label: str) -> str:
    """The snapshot key of one op kind's operations in one size bucket."""
    return f"{kind} {label}"


def is_sized(key: str) -> bool:
    return " " in key


def kinds_only(snapshot: Mapping[str, T]) -> dict[str, T]:
    """The plain op kinds of a snapshot (its sized keys left out)."""
    return {key: record for key, record in snapshot.items() if not is_sized(key)}


def with_totals(snapshot: Snapshot) -> Snapshot:
    """Make each plain kind's record its total: what it holds itself (errors) plus every size
    bucket of the kind. In place; returns the snapshot. A kind of a single bucket copies that
    bucket's record (no per-slot addition)."""
    by_kind: dict[str, list[Record]] = {}
    for key, record in snapshot.items():
        if is_sized(key):
            by_kind.setdefault(key.partition(" ")[0], []).append(record)
    for kind, buckets in by_kind.items():
        own = snapshot.get(kind)
        if len(buckets) == 1:
            total = buckets[0].copy()
        else:
            total = list(map(sum, zip(*buckets)))
            total[MAX_NS] = max(record[MAX_NS] for record in buckets)
        if own is not None:
            total[ERRORS] += own[ERRORS]
        snapshot[kind] = total
    return snapshot


def new_record() -> Record:
    return [0] * RECORD_LEN


def ops_of(record: Record) -> int:
    return sum(record[:NBINS])


def merge_into(total: Record, other: Record) -> None:
    """Add ``other`` into ``total`` in place."""
    maximum = max(total[MAX_NS], other[MAX_NS])
    total[:] = map(add, total, other)
    total[MAX_NS] = maximum


def merge_snapshots(snapshots: Iterable[Mapping[str, Record]]) -> Snapshot:
    """Slot-wise sums (the maximum slot: the maximum) per op kind. Column sums over all the
    records at once (``zip`` + ``sum`` run in C): half the time of adding them one by one,
    which matters to an agent with hundreds of worker threads."""
    by_kind: dict[str, list[Record]] = {}
    for snapshot in snapshots:
        for kind, record in snapshot.items():
            by_kind.setdefault(kind, []).append(record)
    out: Snapshot = {}
    for kind, records in by_kind.items():
        total = list(map(sum, zip(*records)))
        total[MAX_NS] = max(record[MAX_NS] for record in records)
        out[kind] = total
    return out


def difference(later: Record, earlier: Record) -> Record:
    """What happened between two cumulative snapshots of the same counter.

    Counts subtract exactly. The interval's maximum is exact when the cumulative maximum grew
    (the new maximum happened in the interval); otherwise it is the upper edge of the highest
    non-empty bucket of the difference, capped by the cumulative maximum.
    """
    out = [a - b for a, b in zip(later, earlier)]
    if later[MAX_NS] > earlier[MAX_NS]:
        out[MAX_NS] = later[MAX_NS]
    else:
        out[MAX_NS] = 0
        for index in range(NBINS - 1, -1, -1):
            if out[index]:
                lowest, width = bucket_bounds(index)
                out[MAX_NS] = min(lowest + width - 1, later[MAX_NS])
                break
    return out


def snapshot_difference(later: Mapping[str, Record], earlier: Mapping[str, Record]) -> Snapshot:
    zero = new_record()
    return {kind: difference(record, earlier.get(kind, zero)) for kind, record in later.items()}


def to_wire(record: Record) -> OpStats:
    buckets = tuple(i for i, c in enumerate(record[:NBINS]) if c)
    counts = tuple(record[i] for i in buckets)
    return OpStats(
        ops=sum(counts),
        bytes=record[BYTES],
        errors=record[ERRORS],
        sum_ns=record[SUM_NS],
        max_ns=record[MAX_NS],
        buckets=buckets,
        counts=counts,
    )


def from_wire(stats: OpStats) -> Record:
    record = new_record()
    for index, count in zip(stats.buckets, stats.counts):
        record[index] = count
    record[BYTES] = stats.bytes
    record[ERRORS] = stats.errors
    record[SUM_NS] = stats.sum_ns
    record[MAX_NS] = stats.max_ns
    return record


def snapshot_to_wire(snapshot: Mapping[str, Record]) -> dict[str, OpStats]:
    """The plain op kinds of a snapshot as sent (``sizes_to_wire`` sends the rest)."""
    return {kind: to_wire(record) for kind, record in snapshot.items() if not is_sized(kind)}


def sizes_to_wire(snapshot: Mapping[str, Record]) -> dict[str, dict[str, OpStats | None]]:
    """The sized keys of a snapshot as STATS and STAGE_DONE carry them: ``{kind: {label:
    stats}}`` in bucket order, empty buckets left out; a kind whose operations all fell in one
    bucket is sent as ``{label: None}`` (its numbers are the kind's own, errors aside)."""
    by_kind: dict[str, dict[str, Record]] = {}
    for key, record in snapshot.items():
        kind, space, label = key.partition(" ")
        if space and ops_of(record):
            by_kind.setdefault(kind, {})[label] = record
    out: dict[str, dict[str, OpStats | None]] = {}
    for kind, buckets in by_kind.items():
        if len(buckets) == 1:
            out[kind] = dict.fromkeys(buckets)
        else:
            out[kind] = {
                label: to_wire(buckets[label]) for label in SIZE_LABELS if label in buckets
            }
    return out


def wire_snapshot(
    ops: Mapping[str, OpStats], sizes: Mapping[str, Mapping[str, OpStats | None]] | None = None
) -> dict[str, OpStats]:
    """What a STATS or STAGE_DONE carries as one map: its op kinds and, given ``sizes``, a key
    per kind and size bucket (``sized_key``; a nil bucket is the kind's numbers without its
    errors). ``snapshot_from_wire`` is the same as dense records."""
    out = dict(ops)
    for kind, buckets in (sizes or {}).items():
        for label, stats in buckets.items():
            if stats is not None:
                out[sized_key(kind, label)] = stats
            elif kind in ops:
                out[sized_key(kind, label)] = attrs.evolve(ops[kind], errors=0)
    return out


def snapshot_from_wire(
    ops: Mapping[str, OpStats], sizes: Mapping[str, Mapping[str, OpStats | None]] | None = None
) -> Snapshot:
    """``wire_snapshot`` as dense records (what an agent merges and differences)."""
    return {key: from_wire(stats) for key, stats in wire_snapshot(ops, sizes).items()}
