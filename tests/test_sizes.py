"""Per-size-bucket statistics: sai3-bench's buckets, carried in STATS/STAGE_DONE, recorded by
real workers against real files, written as rows of summary.tsv and read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_bench import protocol as p
from trio_bench import stats
from trio_bench.analysis import read_results
from trio_bench.config import parse_config
from trio_bench.controller._results import AgentStageResult, ResultsWriter
from trio_bench.engine import Engine

from .strategies import stats_message
from .test_engine import run_stages

KIB, MIB, GIB = 1024, 1024**2, 1024**3


def sai3_bucket(n: int) -> int:
    """sai3-bench's bucket_index (src/metrics.rs), written out as its if-chain."""
    if n == 0:
        return 0
    for index, top in enumerate(
        (8 * KIB, 64 * KIB, 512 * KIB, 4 * MIB, 32 * MIB, 256 * MIB, 2 * GIB)
    ):
        if n <= top:
            return index + 1
    return 8


def test_bucket_edges_are_sai3_benchs() -> None:
    edges = [0, 1, 8 * KIB, 64 * KIB, 512 * KIB, 4 * MIB, 32 * MIB, 256 * MIB, 2 * GIB]
    for edge in edges:
        for n in (edge - 1, edge, edge + 1):
            if n >= 0:
                assert p.size_bucket(n) == sai3_bucket(n), n
    assert p.SIZE_LABELS[p.size_bucket(4096)] == "1B-8KiB"
    assert p.SIZE_LABELS[p.size_bucket(8 * KIB + 1)] == "8KiB-64KiB"
    assert p.SIZE_LABELS[p.size_bucket(2**64 - 1)] == ">2GiB"


@given(st.integers(0, 2**64 - 1))
def test_every_byte_count_has_sai3_benchs_bucket(n: int) -> None:
    assert p.size_bucket(n) == sai3_bucket(n)


def _ops(n: int, nbytes: int, errors: int = 0) -> p.OpStats:
    return p.OpStats(
        ops=n,
        bytes=nbytes,
        errors=errors,
        sum_ns=n * 100,
        max_ns=100,
        buckets=(100,) if n else (),
        counts=(n,) if n else (),
    )


@pytest.mark.parametrize(
    "sizes, match",
    [
        (
            {"get": {"zero": None, "1B-8KiB": None}},
            r"sizes\['get'\] has a nil bucket beside others",
        ),
        ({"put": {"zero": None}}, r"sizes\['put'\] names an op kind missing from ops"),
        ({"get": {"9KiB": None}}, r"sizes\['get'\] has unknown size bucket '9KiB'"),
        (
            {"get": {"1B-8KiB": _ops(3, 30), "8KiB-64KiB": _ops(3, 30_000)}},
            r"sizes\['get'\] buckets add up to 6 ops, but ops\['get'\] has 5",
        ),
    ],
)
def test_a_stats_whose_sizes_disagree_with_its_ops_is_refused_in_one_line(
    sizes: dict, match: str
) -> None:
    frame = p.unstructure_message(stats_message(ops={"get": _ops(5, 50, errors=1)}))
    frame["sizes"] = p.unstructure_message(stats_message(ops={"get": _ops(5, 50)}, sizes={}))[
        "sizes"
    ]
    frame["sizes"] = {
        kind: {
            label: (
                None
                if v is None
                else p.unstructure_message(stats_message(ops={"get": v}))["ops"]["get"]
            )
            for label, v in buckets.items()
        }
        for kind, buckets in sizes.items()
    }
    with pytest.raises(p.ProtocolError, match=f"^stats: {match}") as info:
        p.decode_message(frame)
    assert "\n" not in str(info.value)


def record(values_ns: list[int], nbytes: int) -> stats.Record:
    out = stats.new_record()
    for v in values_ns:
        out[p.bucket_index(v)] += 1
        out[stats.SUM_NS] += v
        out[stats.MAX_NS] = max(out[stats.MAX_NS], v)
    out[stats.BYTES] = nbytes
    return out


def test_totals_wire_and_back() -> None:
    """A kind split over two buckets is their merge plus its errors; a kind of one bucket goes
    on the wire as a nil bucket and comes back with the kind's numbers."""
    snapshot = {
        "get": stats.new_record(),
        stats.sized_key("get", "1B-8KiB"): record([1000] * 3, 3 * 4096),
        stats.sized_key("get", "64KiB-512KiB"): record([50_000] * 2, 2 * 100 * KIB),
        "stat": stats.new_record(),
        stats.sized_key("stat", "zero"): record([500] * 4, 0),
    }
    snapshot["get"][stats.ERRORS] = 2
    stats.with_totals(snapshot)
    assert stats.ops_of(snapshot["get"]) == 5 and snapshot["get"][stats.ERRORS] == 2
    assert snapshot["get"][stats.BYTES] == 3 * 4096 + 200 * KIB
    assert snapshot["get"][stats.MAX_NS] == 50_000
    ops, sizes = stats.snapshot_to_wire(snapshot), stats.sizes_to_wire(snapshot)
    assert set(ops) == {"get", "stat"}
    assert list(sizes["get"]) == ["1B-8KiB", "64KiB-512KiB"]
    assert sizes["stat"] == {"zero": None}
    message = stats_message(ops=ops, sizes=sizes)
    back = p.decode_message(p.unstructure_message(message))
    assert back == message
    again = stats.snapshot_from_wire(back.ops, back.sizes)
    assert (
        again[stats.sized_key("stat", "zero")][: stats.MAX_NS + 1]
        == snapshot["stat"][: stats.MAX_NS + 1]
    )
    for key in ("get 1B-8KiB", "get 64KiB-512KiB"):
        assert again[key] == snapshot[key]
    wire = stats.wire_snapshot(back.ops, back.sizes)  # the same, without dense records
    assert wire == {key: stats.to_wire(record) for key, record in again.items()}
    rows = stats.summary_rows(wire, seconds=1.0)
    assert [(r.op, r.size, r.ops) for r in rows] == [
        ("get", "all", 5),
        ("stat", "all", 4),
        ("all", "all", 9),
        ("get", "1B-8KiB", 3),
        ("get", "64KiB-512KiB", 2),
        ("stat", "zero", 4),
    ]
    assert rows[3].errors == 0 and rows[0].errors == 2


SIZED = """
target: file://{root}/
duration: 400ms
concurrency: 2
prepare:
  ensure_objects:
    - {{base_uri: small/, count: 40, size_spec: 4KiB}}
    - {{base_uri: big/, count: 20, size_spec: 100KiB}}
  cleanup: true
workload:
  - {{op: get, path: "small/*", weight: 2}}
  - {{op: get, path: "big/*", weight: 1}}
  - {{op: stat, path: "small/*", weight: 1}}
  - {{op: put, path: "new/", weight: 1, object_size: 16KiB}}
"""


async def test_real_files_land_in_the_bucket_of_their_size(tmp_path: Path) -> None:
    """Workers against real files: each op in the bucket of the bytes it moved, the buckets
    adding up to their kind; then the rows of summary.tsv, written and read back."""
    engine = Engine(parse_config(SIZED.format(root=tmp_path)))
    summaries = await run_stages(engine, preflight=True)
    workload = summaries["workload"]
    sizes = workload.sizes
    assert set(sizes["get"]) == {"1B-8KiB", "64KiB-512KiB"}
    small, big = sizes["get"]["1B-8KiB"], sizes["get"]["64KiB-512KiB"]
    assert small is not None and big is not None
    assert small.bytes == small.ops * 4 * KIB and big.bytes == big.ops * 100 * KIB
    assert small.ops + big.ops == workload.ops["get"].ops > 10
    assert 1.2 < small.ops / big.ops < 3.3  # weights 2:1, a short run
    assert sizes["stat"] == {"zero": None} and sizes["put"] == {"8KiB-64KiB": None}
    prepare = summaries["prepare"].sizes["put"]
    assert prepare["1B-8KiB"].ops == 40 and prepare["64KiB-512KiB"].ops == 20
    assert summaries["cleanup"].sizes["delete"] == {"zero": None}

    writer = ResultsWriter(tmp_path / "results")
    for stage in ("prepare", "workload"):
        results = [
            AgentStageResult(agent, summaries[stage], None, 0, host="h") for agent in ("a1", "a2")
        ]
        writer.write_stage(stage, results)
    writer.write_run({"run_id": "r", "name": "sizes"})
    writer.close()
    read = read_results(tmp_path / "results")
    assert [r["op"] for r in read.summaries["workload"]] == ["get", "put", "stat", "all"]
    rows = {(r["op"], r["size"]): r for r in read.sizes["workload"]}
    assert list(rows) == [
        ("get", "1B-8KiB"),
        ("get", "64KiB-512KiB"),
        ("put", "8KiB-64KiB"),
        ("stat", "zero"),
    ]
    assert int(rows[("get", "64KiB-512KiB")]["ops"]) == 2 * big.ops  # two agents merged
    assert int(rows[("get", "1B-8KiB")]["bytes"]) == 2 * small.bytes
    assert read.as_json()["sizes"]["prepare"]["put"]["1B-8KiB"]["ops"] == 80
