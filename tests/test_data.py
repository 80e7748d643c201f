"""What puts write: every object unique by default, and sai3-bench's dedup_factor and
compress_factor measured on the files that land on disk (and on an S3 server)."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_bench.config import ConfigError, parse_config
from trio_bench.engine import Engine
from trio_bench.engine._data import BLOCK, UNIT, ObjectData, Pattern, RandomPool, Source

from .test_engine import run_stages_until_workload

POOL = RandomPool(0)


def blocks_of(paths: list[Path]) -> list[bytes]:
    out = []
    for path in paths:
        data = path.read_bytes()
        out += [data[i : i + BLOCK] for i in range(0, len(data), BLOCK)]
    return out


def dedup_ratio(blocks: list[bytes]) -> float:
    """Stored 4 KiB blocks over distinct ones: what a 4 KiB-chunk deduplicating store saves."""
    return len(blocks) / len({hashlib.sha256(b).digest() for b in blocks})


def compress_ratio(blocks: list[bytes]) -> float:
    """Bytes over bytes after compressing each block alone (as storage compresses inline)."""
    return sum(map(len, blocks)) / sum(len(zlib.compress(b, 9)) for b in blocks)


def prepare_config(tmp_path: Path, entry: str, count: int = 64) -> object:
    return parse_config(
        f"""
target: file://{tmp_path}/
duration: 100ms
prepare:
  ensure_objects: [{{base_uri: data/, count: {count}, object_size: 256KiB{entry}}}]
workload: [{{op: get, path: "data/*"}}]
"""
    )


async def prepared_files(tmp_path: Path, entry: str, agents: int = 1) -> list[Path]:
    cfg = prepare_config(tmp_path, entry)
    for a in range(agents):
        engine = Engine(cfg, prefix=f"a{a}/", agent_index=a, agent_count=agents, run_tag="t")
        await run_stages_until_workload(engine)
    return sorted(tmp_path.glob("a*/data/*"))


async def test_every_block_written_is_unique_across_objects_and_agents(tmp_path: Path) -> None:
    files = await prepared_files(tmp_path, "", agents=2)
    assert len(files) == 128
    blocks = blocks_of(files)
    assert len(blocks) == 128 * 64
    assert dedup_ratio(blocks) == 1.0  # not one 4 KiB block repeats anywhere
    assert compress_ratio(blocks[:500]) < 1.0  # random: compressing only adds overhead


@pytest.mark.parametrize(("dedup", "compress"), [(3, 1), (1, 2), (5, 4), (2.5, 3)])
async def test_dedup_and_compress_factors_are_what_storage_sees(
    tmp_path: Path, dedup: float, compress: float
) -> None:
    files = await prepared_files(
        tmp_path, f", dedup_factor: {dedup}, compress_factor: {compress}", agents=2
    )
    blocks = blocks_of(files)
    # each agent's workers write their own streams: a few units more unique than 1 in N
    assert dedup * 0.9 <= dedup_ratio(blocks) <= dedup
    assert compress * 0.9 <= compress_ratio(blocks) <= compress * 1.02


async def test_fill_zero_writes_zeros(tmp_path: Path) -> None:
    files = await prepared_files(tmp_path, ", fill: zero")
    assert all(path.read_bytes() == bytes(256 * 1024) for path in files)


async def test_puts_write_unique_data_too(tmp_path: Path) -> None:
    cfg = parse_config(
        f"""
target: file://{tmp_path}/
duration: 200ms
concurrency: 2
workload: [{{op: put, path: "new/", object_size: 12KiB}}]
"""
    )
    engine = Engine(cfg, run_tag="t")
    await engine.preflight()
    run = engine.workload_stage()
    await run.run(engine.clock.now_ns())
    files = sorted((tmp_path / "new").iterdir())
    assert len(files) > 10
    assert dedup_ratio(blocks_of(files)) == 1.0


def content(data: object) -> bytes:
    if isinstance(data, memoryview):
        return bytes(data)
    assert isinstance(data, ObjectData)
    return b"".join(bytes(p) for p in data)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(UNIT + 1, 3 * UNIT + 5000),
    dedup=st.sampled_from([1, 2, 3.5]),
    compress=st.sampled_from([1, 2, 7]),
    offset=st.integers(0, 3 * UNIT + 5000),
    length=st.integers(0, 2 * UNIT),
)
def test_an_objects_bytes_come_again_and_any_range_is_a_slice_of_them(
    size: int, dedup: float, compress: float, offset: int, length: int
) -> None:
    source = Source(Pattern("random", dedup, compress), POOL, salt=7)
    source.object(1000)  # not the first object of the stream
    data = source.object(size)
    whole = content(data)
    assert len(whole) == size
    source.object(UNIT)  # later objects do not change it
    assert content(data) == whole  # an HTTP request sent again
    assert isinstance(data, ObjectData)
    assert b"".join(bytes(p) for p in data.part(offset, length)) == whole[offset : offset + length]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 4096, 4097, 60_000, UNIT])
def test_an_object_of_one_unit_is_its_bytes_the_same_as_the_long_way(size: int) -> None:
    source = Source(Pattern("random", 1, 3), POOL, salt=7)
    data = source.object(size)
    assert isinstance(data, memoryview) and len(data) == size
    again = Source(Pattern("random", 1, 3), POOL, salt=7)
    assert bytes(data) == b"".join(bytes(p) for p in ObjectData(again, 0, size))


def test_sources_with_different_salts_share_no_block() -> None:
    one, two = (Source(Pattern(), POOL, salt=s) for s in (1, 2))
    blocks = [content(s.object(UNIT)) for s in (one, two) for _ in range(20)]
    assert dedup_ratio([b[i : i + BLOCK] for b in blocks for i in range(0, UNIT, BLOCK)]) == 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            ", fill: zero, dedup_factor: 2",
            "prepare.ensure_objects[0].dedup_factor: has no meaning with fill: zero",
        ),
        (", compress_factor: 300", "prepare.ensure_objects[0].compress_factor: at most 256"),
        (", dedup_factor: 0.5", "prepare.ensure_objects[0].dedup_factor: must be a number >= 1"),
        (", compress_factor: two", "prepare.ensure_objects[0].compress_factor: expected a number"),
    ],
)
def test_data_pattern_mistakes_are_one_line(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        prepare_config(tmp_path, entry)
    assert [line for line in caught.value.lines if line.startswith(message)], caught.value.lines


def test_only_put_takes_a_data_pattern() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("target: null://\nworkload: [{op: get, path: 'a/*', dedup_factor: 2}]\n")
    assert caught.value.lines == [
        "workload[0]: get does not take fill, dedup_factor or compress_factor "
        "(only put writes objects)"
    ]
