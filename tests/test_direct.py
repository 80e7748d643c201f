"""direct://: O_DIRECT reads and writes from aligned buffers, on the file system of the
test's temporary directory (ext4 here); refused in preflight where O_DIRECT is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trio_bench.config import ConfigError, parse_config
from trio_bench.engine import BackendError, Engine
from trio_bench.engine import _file as file_module

from .test_engine import run_stages


def direct_config(tmp_path: Path, workload: str, count: int = 30) -> object:
    return parse_config(
        f"""
target: direct://{tmp_path}/
duration: 300ms
concurrency: 2
file: {{buffer_size: 64KiB}}
prepare:
  ensure_objects: [{{base_uri: data/, count: {count}, size_spec: {{type: uniform, min: 1, max: 200KiB}}}}]
workload: {workload}
"""
    )


def o_direct_works(path: Path) -> bool:
    try:
        fd = os.open(path / "probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(path / "probe")
    return True


async def test_a_run_on_direct_reads_and_writes_whole_files(tmp_path: Path) -> None:
    if not o_direct_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    workload = (
        '[{op: get, path: "data/*", weight: 2}, {op: get, path: "data/*", block_size: 4KiB},'
        ' {op: put, path: "new/obj-*", weight: 2, size_spec: {type: uniform, min: 1, max: 100KiB}}]'
    )
    engine = Engine(direct_config(tmp_path, workload), run_tag="t")
    checks = await engine.preflight()
    assert any("takes O_DIRECT reads and writes" in line for line in checks)
    prepared: dict[str, int] = {}

    def look() -> None:
        prepared.update({p.name: p.stat().st_size for p in (tmp_path / "data").iterdir()})

    summaries = await run_stages(engine, after_prepare=look)
    prepare, workload_summary = summaries["prepare"], summaries["workload"]
    assert prepare.ops["put"].errors == 0 and prepare.ops["put"].ops == 30
    # every size, aligned or not, written whole (the last partial block after O_DIRECT)
    expected = {
        p.key(i).rpartition("/")[2]: p.size_of(i) for p in engine.plan.prepared for i in p.indices
    }
    assert prepared == expected and any(size % 4096 for size in prepared.values())
    ops = workload_summary.ops
    assert ops["get"].ops > 0 and ops["put"].ops > 0
    assert ops["get"].errors == ops["put"].errors == 0, workload_summary.error_samples
    assert sorted(p.name[:4] for p in (tmp_path / "new").iterdir())[0] == "obj-"


async def test_a_file_system_without_o_direct_is_refused_in_preflight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(file_module.os, "open", no_direct)
    engine = Engine(direct_config(tmp_path, '[{op: get, path: "data/*"}]'))
    with pytest.raises(BackendError) as caught:
        await engine.preflight()
    assert str(caught.value) == (
        f"target: direct://{tmp_path}/: this file system refuses O_DIRECT (Invalid argument); "
        "use file:// (page cache) instead"
    )


def test_direct_reads_blocks_in_whole_4k() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "target: direct:///tmp/x/\nworkload: [{op: get, path: 'a/*', block_size: 1000}]\n"
        )
    assert caught.value.lines == [
        "workload[0].block_size: direct:// reads whole 4KiB blocks (O_DIRECT); 1000B is not "
        "a multiple"
    ]


@pytest.mark.parametrize("scheme", ["file", "direct"])
async def test_objects_streamed_block_by_block_one_op_per_block(
    tmp_path: Path, scheme: str
) -> None:
    if scheme == "direct" and not o_direct_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    cfg = parse_config(
        f"""
target: {scheme}://{tmp_path}/
duration: 300ms
prepare:
  ensure_objects: [{{base_uri: data/, count: 4, object_size: 1MiB}}]
workload:
  - {{op: get, path: "data/*", block_size: 64KiB, access: sequential}}
  - {{op: put, path: "new/", object_size: 300KiB, block_size: 64KiB}}
"""
    )
    engine = Engine(cfg, run_tag="t")
    await engine.preflight()
    summaries = await run_stages(engine)
    get, put = summaries["workload"].ops["get"], summaries["workload"].ops["put"]
    assert get.errors == put.errors == 0, summaries["workload"].error_samples
    assert get.ops > 16 and get.bytes == get.ops * 64 * 1024  # whole blocks of whole files
    assert put.ops > 5 and put.bytes <= put.ops * 64 * 1024
    made = sorted((tmp_path / "new").iterdir())
    # every object but the last one in flight when the stage ended is whole: 4 blocks + 44 KiB
    assert sum(p.stat().st_size == 300 * 1024 for p in made) >= len(made) - 1
