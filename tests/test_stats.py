"""Latency histograms: accuracy against exact percentiles, exact merge, interval differences."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_bench import protocol as p
from trio_bench import stats
from trio_bench.engine import record_latency

from . import dense
from .strategies import stats_message

latencies = st.lists(st.integers(0, 10**11), min_size=1, max_size=400)


def record_of(values: list[int]) -> stats.Record:
    record = stats.new_record()
    for v in values:
        record_latency(record, v, 0)
    return record


def exact_percentile(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


@given(st.integers(0, 2**42 - 1))
def test_every_value_lands_in_a_bucket_that_contains_it(value: int) -> None:
    lowest, width = p.bucket_bounds(p.bucket_index(value))
    assert lowest <= value < lowest + width
    assert abs(p.bucket_value(p.bucket_index(value)) - value) <= max(1, value) / 128


def test_bucket_layout_is_contiguous() -> None:
    end = 0
    for index in range(p.NBINS):
        lowest, width = p.bucket_bounds(index)
        assert lowest == end
        end = lowest + width
    assert end == p.CLAMP_NS
    assert p.bucket_index(10**15) == p.NBINS - 1  # clamped, never out of range


@given(latencies, st.sampled_from([0.5, 0.9, 0.99, 0.999, 1.0]))
def test_percentiles_are_within_one_percent_of_exact(values: list[int], fraction: float) -> None:
    got = dense.percentile_ns(record_of(values), fraction)
    want = exact_percentile(values, fraction)
    assert abs(got - want) <= want / 100 + 1


@given(st.lists(latencies, min_size=1, max_size=5))
def test_merge_is_exactly_the_histogram_of_all_values(groups: list[list[int]]) -> None:
    merged = dense.merged(record_of(g) for g in groups)
    everything = record_of([v for g in groups for v in g])
    assert merged == everything
    assert stats.ops_of(merged) == sum(len(g) for g in groups)
    assert merged[stats.MAX_NS] == max(v for g in groups for v in g)


@given(latencies, latencies)
def test_difference_of_cumulative_snapshots_is_the_interval(
    first: list[int], second: list[int]
) -> None:
    earlier = record_of(first)
    later = record_of(first + second)
    interval = stats.difference(later, earlier)
    assert interval[: p.NBINS] == record_of(second)[: p.NBINS]
    assert interval[stats.SUM_NS] == sum(second)
    # the interval max is exact when it is a new maximum, else a bucket bound >= the truth
    assert interval[stats.MAX_NS] >= max(second) or max(second) > max(first)
    if max(second) > max(first):
        assert interval[stats.MAX_NS] == max(second)


@given(latencies)
def test_wire_round_trip_is_sparse_and_lossless(values: list[int]) -> None:
    record = record_of(values)
    record[stats.BYTES] = 12345
    record[stats.ERRORS] = 3
    wire = stats.to_wire(record)
    assert len(wire.buckets) == len(wire.counts) == sum(1 for c in record[: p.NBINS] if c)
    assert stats.from_wire(wire) == record
    frame = p.encode_message(stats_message(1, elapsed_ns=1, ops={"get": wire}))
    decoder = p.FrameDecoder()
    decoder.feed(frame)
    assert p.decode_message(next(iter(decoder))).ops["get"] == wire


def test_summary_rows_and_tsv() -> None:
    get = record_of([1000] * 90 + [10_000] * 10)
    get[stats.BYTES] = 100 * 4096
    put = record_of([50_000] * 10)
    rows = stats.summary_rows({"put": stats.to_wire(put), "get": stats.to_wire(get)}, seconds=2.0)
    assert [r.op for r in rows] == ["get", "put", "all"]
    get_row, _put_row, all_row = rows
    assert get_row.ops_per_s == 50.0
    assert get_row.mib_per_s == 100 * 4096 / 2 / 2**20
    assert get_row.p50_us == pytest.approx(1.0, rel=1 / 128)
    assert get_row.p99_us == 10.0  # clamped to the exact maximum
    assert all_row.ops == 110  # the put latencies dominate the merged tail:
    assert all_row.p99_us == pytest.approx(50.0, rel=1 / 128)
    tsv = stats.format_tsv(rows).splitlines()
    assert tsv[0].split("\t") == list(stats.SUMMARY_COLUMNS)
    assert len(tsv) == 4


def test_empty_record() -> None:
    record = stats.new_record()
    assert dense.percentile_ns(record, 0.99) == 0
    assert dense.mean_ns(record) == 0


# --- the sparse (wire-form) arithmetic the controller uses must equal the dense one -----------


@given(latencies, latencies)
def test_sparse_difference_equals_dense(first: list[int], second: list[int]) -> None:
    earlier, later = record_of(first), record_of(first + second)
    sparse = stats.op_difference(stats.to_wire(later), stats.to_wire(earlier))
    assert sparse == stats.to_wire(stats.difference(later, earlier))


@given(st.lists(latencies, min_size=1, max_size=5))
def test_sparse_merge_equals_dense(groups: list[list[int]]) -> None:
    records = [record_of(g) for g in groups]
    assert stats.merge_ops(stats.to_wire(r) for r in records) == stats.to_wire(
        dense.merged(records)
    )


@given(latencies)
def test_sparse_percentiles_equal_dense(values: list[int]) -> None:
    record = record_of(values)
    fractions = (0.5, 0.9, 0.99, 0.999, 1.0)
    assert stats.percentiles(stats.to_wire(record), fractions) == [
        dense.percentile_ns(record, f) for f in fractions
    ]


@given(st.lists(latencies, min_size=2, max_size=4))
def test_percentiles_of_several_are_those_of_their_merge(groups: list[list[int]]) -> None:
    parts = [stats.to_wire(record_of(g)) for g in groups]
    fractions = (0.5, 0.9, 0.99, 0.999, 1.0)
    assert stats.percentiles_of(parts, fractions) == stats.percentiles(
        stats.merge_ops(parts), fractions
    )


@given(st.lists(latencies, min_size=1, max_size=3))
def test_summary_rows_have_the_dense_records_numbers(groups: list[list[int]]) -> None:
    """Summary rows are computed from the wire form; each row has exactly the numbers of the
    dense record it stands for (the ``all`` row: the dense merge of the kinds)."""
    kinds = ("get", "put", "stat")[: len(groups)]
    records = {kind: record_of(g) for kind, g in zip(kinds, groups, strict=True)}
    rows = stats.summary_rows({k: stats.to_wire(r) for k, r in records.items()}, seconds=2.0)
    expected = [*((k, records[k]) for k in kinds), ("all", dense.merged(records.values()))]
    assert [row.op for row in rows] == [name for name, _ in expected]
    for row, (_, record) in zip(rows, expected, strict=True):
        assert row.ops == stats.ops_of(record)
        assert row.mean_us == dense.mean_ns(record) / 1000
        assert [row.p50_us, row.p90_us, row.p99_us, row.p999_us] == [
            dense.percentile_ns(record, f) / 1000 for f in (0.5, 0.9, 0.99, 0.999)
        ]
        assert row.max_us == record[stats.MAX_NS] / 1000
