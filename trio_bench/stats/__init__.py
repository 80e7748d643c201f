"""Mergeable latency statistics (pure: no Trio, no I/O).

Workers record into flat per-op-kind records (``_record``); snapshots merge by adding bins;
interval numbers come from the difference of two cumulative snapshots; percentiles are only
ever computed from a (merged) histogram, never averaged.
"""

from trio_bench.protocol import op_difference, ops_difference, went_back

from ._record import (
    BYTES,
    ERRORS,
    MAX_NS,
    RECORD_LEN,
    SUM_NS,
    Record,
    Snapshot,
    difference,
    from_wire,
    is_sized,
    kinds_only,
    merge_into,
    merge_snapshots,
    new_record,
    ops_of,
    sized_key,
    sizes_to_wire,
    snapshot_difference,
    snapshot_from_wire,
    snapshot_to_wire,
    to_wire,
    wire_snapshot,
    with_totals,
)
from ._sparse import (
    EMPTY,
    dense_percentiles,
    dense_span,
    merge_ops,
    merge_wire,
    percentiles,
    percentiles_of,
)
from ._summary import SUMMARY_COLUMNS, SummaryRow, format_tsv, summarize, summary_rows

__all__ = [
    "BYTES",
    "EMPTY",
    "ERRORS",
    "MAX_NS",
    "RECORD_LEN",
    "SUMMARY_COLUMNS",
    "SUM_NS",
    "Record",
    "Snapshot",
    "SummaryRow",
    "dense_percentiles",
    "dense_span",
    "difference",
    "format_tsv",
    "from_wire",
    "is_sized",
    "kinds_only",
    "merge_into",
    "merge_ops",
    "merge_snapshots",
    "merge_wire",
    "new_record",
    "op_difference",
    "ops_difference",
    "ops_of",
    "percentiles",
    "percentiles_of",
    "sized_key",
    "sizes_to_wire",
    "snapshot_difference",
    "snapshot_from_wire",
    "snapshot_to_wire",
    "summarize",
    "summary_rows",
    "to_wire",
    "went_back",
    "wire_snapshot",
    "with_totals",
]
