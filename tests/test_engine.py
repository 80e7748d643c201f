"""The engine with real worker threads: snapshots while running, stopping, prepare/cleanup
idempotence, isolation and confinement, error accounting. Short, bounded runs."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from trio_bench import stats
from trio_bench.config import ConfigError, parse_config, prepared_name
from trio_bench.engine import (
    AgentPlan,
    BackendError,
    Engine,
    NullBackend,
    Pool,
    StageFailed,
    op_mix,
)
from trio_bench.engine import _stage as stage_module
from trio_bench.engine._null import NullIO

from . import dense


def config(target: str = "null://", **overrides: object) -> object:
    text = f"""
target: {target}
duration: {overrides.pop("duration", "300ms")}
concurrency: {overrides.pop("concurrency", 2)}
prepare:
  ensure_objects: [{{base_uri: data/, count: {overrides.pop("count", 200)}, size_spec: {{type: uniform, min: 1KiB, max: 8KiB}}}}]
  cleanup: true
workload: {overrides.pop("workload", '[{op: get, path: "data/*", weight: 3}, {op: put, path: "new/", weight: 1, object_size: 2KiB}, {op: delete, path: "new/*", weight: 1}]')}
"""
    for key, value in overrides.items():
        text += f"{key}: {value}\n"
    return parse_config(text)


async def run_stages(
    engine: Engine, *, preflight: bool = False, after_prepare: Callable[[], object] = lambda: None
) -> dict[str, object]:
    """Every stage on one engine, as an agent runs them (``after_prepare``: a test's look at
    the storage between prepare and the workload)."""
    out = {}
    if preflight:
        await engine.preflight()
    for name in ("prepare", "workload", "cleanup"):
        run = getattr(engine, f"{name}_stage")()
        await run.run(engine.clock.now_ns())
        out[name] = run.summary("completed")
        if name == "prepare":
            await engine.after_prepare()
            after_prepare()
    return out


async def test_snapshots_taken_while_workers_run_are_monotonic_and_add_up() -> None:
    engine = Engine(config(duration="600ms"))
    await engine.preflight()
    run = engine.prepare_stage()
    await run.run(engine.clock.now_ns())
    await engine.after_prepare()
    run = engine.workload_stage()
    samples = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run, engine.clock.now_ns())
        for _ in range(40):
            await trio.sleep(0.01)
            samples.append(run.progress().snapshot)
    final = stats.snapshot_from_wire(run.summary("completed").ops)
    samples.append(final)
    previous: dict[str, stats.Record] = {}
    interval_total: dict[str, stats.Record] = {}
    for snapshot in samples:
        for kind, record in snapshot.items():
            before = previous.get(kind, stats.new_record())
            delta = stats.difference(record, before)
            assert all(v >= 0 for v in delta[: stats.MAX_NS]), kind  # nothing goes backwards
            interval_total[kind] = dense.merged(
                [interval_total.get(kind, stats.new_record()), delta]
            )
        previous = snapshot
    for kind, record in final.items():
        # the intervals add up exactly to the final totals
        assert interval_total[kind][: stats.MAX_NS] == record[: stats.MAX_NS]
    assert stats.ops_of(final["get"]) > 1000


class SlowIO(NullIO):
    def __init__(self, directories, delay: float, gate: threading.Event | None = None) -> None:
        super().__init__(directories)
        self.delay = delay
        self.gate = gate

    def get(self, key: str) -> int:
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        return super().get(key)


class SlowBackend(NullBackend):
    def __init__(self, delay: float, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.delay, self.gate = delay, gate

    def worker_io(self, worker: int):
        return SlowIO(self.directories, self.delay, self.gate)


async def test_abort_stops_workers_after_their_in_flight_operation() -> None:
    engine = Engine(
        config(duration="60s", workload='[{op: get, path: "data/*"}]'), backend=SlowBackend(0.2)
    )
    await run_stages_until_workload(engine)
    run = engine.workload_stage()
    t0 = time.monotonic()
    with trio.move_on_after(0.35):
        await run.run(engine.clock.now_ns())
    elapsed = time.monotonic() - t0
    assert elapsed < 0.35 + 0.2 + 0.15  # the cancel, plus at most one 0.2 s op in flight
    summary = run.summary("aborted")
    assert summary.outcome == "aborted" and summary.ops["get"].ops >= 2
    assert summary.message == ""


async def test_an_operation_that_never_returns_is_abandoned_after_the_grace(monkeypatch) -> None:
    monkeypatch.setattr(stage_module, "STOP_GRACE_S", 0.2)
    gate = threading.Event()
    engine = Engine(
        config(duration="60s", workload='[{op: get, path: "data/*"}]'), backend=SlowBackend(0, gate)
    )
    await run_stages_until_workload(engine)
    run = engine.workload_stage()
    with trio.move_on_after(0.1):
        await run.run(engine.clock.now_ns())
    summary = run.summary("aborted")
    assert "2 worker(s) still had an operation in flight" in summary.message
    gate.set()


async def run_stages_until_workload(engine: Engine) -> None:
    await engine.preflight()
    run = engine.prepare_stage()
    await run.run(engine.clock.now_ns())
    await engine.after_prepare()


async def test_prepare_is_idempotent_and_repairs_wrong_sizes(tmp_path: Path) -> None:
    cfg = config(f"file://{tmp_path}/", count=50)
    first = Engine(cfg, prefix="agent-1/")
    assert "0 of 50 prepared objects already exist" in await first.preflight()
    run = first.prepare_stage()
    await run.run(first.clock.now_ns())
    summary = run.summary("completed")
    assert summary.ops["put"].ops == 50 and (summary.done, summary.total) == (50, 50)
    files = sorted((tmp_path / "agent-1" / "data").iterdir())
    assert [f.name for f in files] == [prepared_name(i) for i in range(50)]
    sizes = {f.name: f.stat().st_size for f in files}
    assert len(set(sizes.values())) > 1 and all(1024 <= s <= 8192 for s in sizes.values())

    (tmp_path / "agent-1" / "data" / prepared_name(7)).write_bytes(b"short")
    second = Engine(cfg, prefix="agent-1/")
    assert "50 of 50 prepared objects already exist" in await second.preflight()
    run = second.prepare_stage()
    await run.run(second.clock.now_ns())
    summary = run.summary("completed")
    assert summary.ops["put"].ops == 1  # only the damaged one is rewritten
    assert (summary.done, summary.total) == (50, 50)
    assert {f.name: f.stat().st_size for f in files} == sizes


async def test_full_run_on_files_then_cleanup_twice(tmp_path: Path) -> None:
    cfg = config(f"file://{tmp_path}/", count=40)
    engine = Engine(cfg, prefix="agent-1/")
    await engine.preflight()
    summaries = await run_stages(engine)
    workload = summaries["workload"]
    assert workload.ops["get"].ops > 0 and workload.ops["put"].ops > 0
    assert workload.ops["get"].bytes >= 1024 * workload.ops["get"].ops
    assert not any((tmp_path / "agent-1" / "data").iterdir())
    assert not any((tmp_path / "agent-1" / "new").iterdir())
    again = Engine(cfg, prefix="agent-1/")
    run = again.cleanup_stage()
    await run.run(again.clock.now_ns())
    summary = run.summary("completed")
    assert summary.done == summary.total == 40
    assert summary.ops["delete"].errors == 0  # objects already gone are done, not errors


async def test_agents_are_isolated_by_prefix(tmp_path: Path) -> None:
    cfg = config(f"file://{tmp_path}/", count=10, duration="100ms")
    for prefix in ("agent-1/", "agent-2/"):
        engine = Engine(cfg, prefix=prefix, agent_index=int(prefix[6]) - 1, agent_count=2)
        await engine.preflight()
        run = engine.prepare_stage()
        await run.run(engine.clock.now_ns())
        await engine.after_prepare()
        assert all(k.startswith(prefix) for op in engine.plan.ops if op.pool for k in op.pool.keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent-1", "agent-2"]
    assert len(list((tmp_path / "agent-2" / "data").iterdir())) == 10


def test_shared_storage_splits_prepared_objects_by_agent_index() -> None:
    cfg = config(count=10, distributed="{shared_storage: true}")
    plans = [AgentPlan(cfg, agent_index=i, agent_count=3) for i in range(3)]
    shares = [list(plan.prepared[0].indices) for plan in plans]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert all(plan.prefix == "" for plan in plans)
    keys = [plan.prepared[0].key(i) for plan, share in zip(plans, shares) for i in share]
    assert sorted(keys) == [f"data/{prepared_name(i)}" for i in range(10)]
    # every agent computes the same size for the same object
    assert plans[0].prepared[0].size_of(4) == plans[1].prepared[0].size_of(4)


def test_op_mix_has_exact_proportions() -> None:
    cfg = config(
        workload='[{op: get, path: "data/*", weight: 60}, {op: stat, path: "data/*", weight: 30}, {op: list, path: "data/", weight: 10}]'
    )
    plan = AgentPlan(cfg)
    counts = Counter(op_mix(plan.ops, random.Random(1)))
    assert [counts[i] / 4096 for i in range(3)] == pytest.approx([0.6, 0.3, 0.1], abs=1 / 4096)
    assert op_mix(plan.ops, random.Random(1)) != op_mix(plan.ops, random.Random(2))


def test_pools_are_shared_and_fed_by_puts() -> None:
    cfg = config(
        workload='[{op: get, path: "new/*"}, {op: delete, path: "new/*"}, {op: put, path: "new/", object_size: 1}, {op: put, path: "other/", object_size: 1}]'
    )
    plan = AgentPlan(cfg, prefix="a/")
    get, delete, put, other = plan.ops
    assert get.pool is delete.pool and get.pool is not None
    assert put.feeds == [get.pool] and other.feeds == []
    assert plan.fed(get.pool)
    pool = Pool("d/", "prepared-*.dat", ["d/prepared-00000001.dat", "d/prepared-00000002.dat"])
    assert pool.pick(0.99) == "d/prepared-00000002.dat"
    taken = {pool.take(0.0), pool.take(0.0)}
    assert taken == {"d/prepared-00000001.dat", "d/prepared-00000002.dat"}
    assert pool.take(0.5) is None and pool.pick(0.5) is None


async def test_a_glob_that_matches_nothing_fails_preflight() -> None:
    cfg = config(workload='[{op: get, path: "nowhere/*.dat"}]')
    with pytest.raises(
        ConfigError, match=r"workload\[0\].path: 'nowhere/\*.dat' matches no objects"
    ):
        await Engine(cfg).preflight()


async def test_errors_are_counted_with_samples_and_the_threshold_fails_the_stage() -> None:
    cfg = config(workload='[{op: get, path: "data/*"}]', max_errors=50, duration="5s")
    engine = Engine(cfg)
    await run_stages_until_workload(engine)
    engine.backend.directories.clear()  # every object vanishes: every get fails
    run = engine.workload_stage()
    with pytest.raises(StageFailed, match=r"\d+ errors exceed max_errors 50"):
        await run.run(engine.clock.now_ns())
    summary = run.summary("failed")
    assert summary.ops["get"].errors > 50 and summary.ops["get"].ops == 0
    assert len(summary.error_samples["get"]) == 5
    assert "ObjectMissing" in summary.error_samples["get"][0]


async def test_warmup_operations_are_not_counted() -> None:
    cfg = config(
        workload='[{op: get, path: "data/*"}]', duration="300ms", warmup="300ms", concurrency=1
    )
    engine = Engine(cfg, backend=SlowBackend(0.01))
    await run_stages_until_workload(engine)
    run = engine.workload_stage()
    await run.run(engine.clock.now_ns())
    summary = run.summary("completed")
    assert summary.measured_ns == pytest.approx(0.3e9, rel=0.2)
    # ~10 ms per op: about 30 in the measured window, not 60
    assert 15 <= summary.ops["get"].ops <= 35


async def test_io_rate_paces_the_workload() -> None:
    cfg = config(
        workload='[{op: get, path: "data/*"}]',
        duration="1s",
        concurrency=2,
        io_rate="{iops: 200, distribution: fixed}",
    )
    engine = Engine(cfg)
    await run_stages_until_workload(engine)
    run = engine.workload_stage()
    await run.run(engine.clock.now_ns())
    assert 150 <= run.summary("completed").ops["get"].ops <= 220


def test_root_confines_the_target(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    Engine(config(f"file://{root}/inside/"), root=str(root))
    with pytest.raises(BackendError, match="outside the agent's --root"):
        Engine(config(f"file://{outside}/"), root=str(root))
    os.symlink(outside, root / "escape")
    with pytest.raises(BackendError, match="outside the agent's --root"):
        Engine(config(f"file://{root}/escape/"), root=str(root))
    os.symlink(outside, root / "inside" / "data")  # a directory the workload uses
    with pytest.raises(BackendError, match=r"inside/data/ resolves to .*outside"):
        Engine(config(f"file://{root}/inside/"), root=str(root))


async def test_a_start_instant_in_the_past_starts_now_and_runs_the_whole_duration() -> None:
    engine = Engine(config(duration="300ms", workload='[{op: get, path: "data/*"}]'))
    await run_stages_until_workload(engine)
    run = engine.workload_stage()
    t0 = time.monotonic()
    await run.run(start_at_ns=1)  # 1970
    assert time.monotonic() - t0 >= 0.3
    summary = run.summary("completed")
    assert summary.measured_ns >= 0.3e9 and summary.ops["get"].ops > 0


def test_ranged_gets_read_one_aligned_block_anywhere_in_the_file(tmp_path: Path) -> None:
    """block_size: each get reads one block at a random offset that is a multiple of the
    block size, and the bytes are the file's bytes at that offset."""
    from trio_bench.engine._file import FileBackend

    block = 4096
    data = b"".join(i.to_bytes(4, "big") * (block // 4) for i in range(64))  # 64 distinct blocks
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big").write_bytes(data)
    (tmp_path / "d" / "small").write_bytes(b"tiny")
    io = FileBackend(f"{tmp_path}/").worker_io(0)
    rng = random.Random(7)
    seen = Counter()
    for _ in range(2000):
        assert io.get_block("d/big", block, rng) == block
        got = bytes(io.buffer[:block])
        index = int.from_bytes(got[:4], "big")
        assert got == data[index * block : (index + 1) * block]  # an aligned block, whole
        seen[index] += 1
    assert len(seen) == 64 and min(seen.values()) > 10  # every block, roughly uniformly
    assert io.get_block("d/small", block, rng) == 4  # smaller than a block: all of it
    io.close()


async def test_ranged_gets_count_blocks_not_objects(tmp_path: Path) -> None:
    cfg = config(
        f"file://{tmp_path}/",
        count=20,
        workload='[{op: get, path: "data/*", block_size: 1KiB}]',
        concurrency=1,
    )
    summaries = await run_stages(Engine(cfg))
    get = summaries["workload"].ops["get"]
    assert get.ops > 100 and get.errors == 0 and get.bytes == get.ops * 1024


@pytest.mark.parametrize(
    "workload, extra, message",
    [
        (
            "{op: stat, path: 'x/*', block_size: 4KiB}",
            "",
            "workload[0].block_size: only get and put take blocks",
        ),
        (
            "{op: put, path: x/, object_size: 1KiB, block_size: 4KiB}",
            "s3",
            "workload[0].block_size: a put in blocks is for file:// and direct://",
        ),
        (
            "{op: put, path: x/, object_size: 1KiB, access: sequential}",
            "",
            "workload[0].access: sequential is for a get with block_size",
        ),
        (
            "{op: get, path: 'x/*', block_size: 2MiB}",
            "",
            "workload[0].block_size: 2MiB exceeds the read buffer (file.buffer_size 1MiB)",
        ),
    ],
)
def test_block_size_mistakes_are_one_line(workload: str, extra: str, message: str) -> None:
    target = "s3://bucket/x/" if extra == "s3" else "null://"
    with pytest.raises(ConfigError) as info:
        parse_config(f"target: {target}\nworkload: [{workload}]\n")
    assert message in info.value.lines[0] and len(info.value.lines) == 1


@pytest.mark.parametrize(
    ("target", "workload", "message"),
    [
        (
            "missing/deep/dir/",
            '[{op: put, path: "new/", object_size: 1KiB}]',
            "does not exist, nor does",
        ),
        ("missing/", '[{op: get, path: "data/*"}]', "does not exist (this workload only reads)"),
        ("a-file/", '[{op: put, path: "new/", object_size: 1KiB}]', "is not a directory"),
    ],
)
async def test_a_missing_target_is_one_rule_and_one_line(
    tmp_path: Path, target: str, workload: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    cfg = parse_config(f"target: file://{tmp_path}/{target}\nworkload: {workload}\n")
    with pytest.raises(BackendError, match=re.escape(message)):
        await Engine(cfg).preflight()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


async def test_the_target_itself_is_created_when_its_parent_exists(tmp_path: Path) -> None:
    cfg = parse_config(
        f"target: file://{tmp_path}/new-target/\n"
        'workload: [{op: put, path: "new/", object_size: 1KiB}]\n'
    )
    checks = await Engine(cfg).preflight()
    assert (tmp_path / "new-target").is_dir() and f"created {tmp_path}/new-target/" in checks


class CountingIO(NullIO):
    """Puts and gets that take 2 ms and count how many are in flight at once."""

    def __init__(self, directories: dict, seen: dict[str, int], lock: threading.Lock) -> None:
        super().__init__(directories)
        self.seen, self.lock = seen, lock

    def _counted(self, kind: str, call: Callable[[], int]) -> int:
        with self.lock:
            self.seen[kind + "_now"] = self.seen.get(kind + "_now", 0) + 1
            self.seen[kind] = max(self.seen.get(kind, 0), self.seen[kind + "_now"])
        try:
            time.sleep(0.002)
            return call()
        finally:
            with self.lock:
                self.seen[kind + "_now"] -= 1

    def get(self, key: str) -> int:
        return self._counted("get", lambda: super(CountingIO, self).get(key))

    def put(self, key: str, size: int, data: object) -> int:
        return self._counted("put", lambda: super(CountingIO, self).put(key, size, data))


class CountingBackend(NullBackend):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()

    def worker_io(self, worker: int):  # type: ignore[no-untyped-def]
        return CountingIO(self.directories, self.seen, self.lock)


async def test_a_per_op_concurrency_limits_that_op_in_flight_not_the_others() -> None:
    backend = CountingBackend()
    workload = (
        '[{op: get, path: "data/*", weight: 1}, '
        "{op: put, path: new/, weight: 3, object_size: 1KiB, concurrency: 2}]"
    )
    engine = Engine(config(duration="400ms", concurrency=8, workload=workload), backend=backend)
    await run_stages_until_workload(engine)
    backend.seen.clear()  # prepare's puts are not the workload's
    run = engine.workload_stage()
    await run.run(engine.clock.now_ns())
    summary = run.summary("completed")
    assert summary.ops["put"].ops > 20 and summary.ops["get"].ops > 20
    assert backend.seen["put"] == 2  # sai3-bench's meaning: a cap on that op in flight
    assert backend.seen["get"] > 2  # the other workers keep getting meanwhile
    # waiting for a turn is not the put's latency: a put and a get take the same 2 ms in the
    # backend, so their latencies match however busy the machine is. Workers queue for the
    # two put slots; counting that wait would put the puts' p90 at ~10x the gets' (checked by
    # starting the clock before the wait)
    put_p90, get_p90 = (stats.percentiles(summary.ops[k], [0.9])[0] for k in ("put", "get"))
    assert put_p90 < 3 * get_p90, (put_p90, get_p90)


def test_a_directory_path_means_every_object_in_it() -> None:
    cfg = config(workload='[{op: get, path: "data/"}]')
    (op,) = AgentPlan(cfg).ops
    assert (op.directory, op.pattern) == ("data/", "*")


@pytest.mark.parametrize(
    ("flags", "rewritten", "listed"),
    [
        ("force_overwrite: true", 10, "prepared objects not listed: all are written"),
        ("skip_verification: true", 0, "prepared objects not listed: assumed to exist"),
        ("skip_verification: true\n  force_overwrite: true", 10, "all are written"),
    ],
)
async def test_sai3_prepare_flags_skip_the_listing(
    tmp_path: Path, flags: str, rewritten: int, listed: str
) -> None:
    first = Engine(config(f"file://{tmp_path}/", count=10), prefix="a/")
    await run_stages_until_workload(first)  # the objects exist now
    text = f"""
target: file://{tmp_path}/
duration: 100ms
prepare:
  ensure_objects: [{{base_uri: data/, count: 10, size_spec: {{type: uniform, min: 1KiB, max: 8KiB}}}}]
  {flags}
workload: [{{op: get, path: "data/*"}}]
"""
    engine = Engine(parse_config(text), prefix="a/")
    assert any(listed in line for line in await engine.preflight())
    run = engine.prepare_stage()
    await run.run(engine.clock.now_ns())
    summary = run.summary("completed")
    assert summary.ops["put"].ops == rewritten and summary.done == summary.total == 10


async def test_a_duration_of_zero_prepares_and_runs_no_workload(tmp_path: Path) -> None:
    engine = Engine(config(f"file://{tmp_path}/", count=10, duration="0s"), prefix="a/")
    await engine.preflight()
    summaries = await run_stages(engine)
    assert summaries["prepare"].ops["put"].ops == 10
    assert sum(op.ops for op in summaries["workload"].ops.values()) == 0
    assert summaries["cleanup"].done == 10


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
async def test_each_ensure_objects_entry_is_prepared_in_its_own_directory(
    tmp_path: Path, strategy: str
) -> None:
    """Several entries: each its own directory, count and size (every entry used to be
    written as the last one: its directory and size, with the others' counts)."""
    text = f"""
target: file://{tmp_path}/
duration: 100ms
concurrency: 3
prepare:
  prepare_strategy: {strategy}
  ensure_objects:
    - {{base_uri: small/, count: 7, size_spec: 4KiB}}
    - {{base_uri: big/, count: 5, size_spec: 100KiB}}
    - {{base_uri: odd/, count: 4, size_spec: {{type: uniform, min: 1000, max: 2000}}}}
workload: [{{op: get, path: "small/*"}}, {{op: get, path: "big/*"}}, {{op: get, path: "odd/*"}}]
"""
    engine = Engine(parse_config(text))
    await engine.preflight()
    run = engine.prepare_stage()
    await run.run(engine.clock.now_ns())
    sizes = {
        d: sorted((tmp_path / d / f).stat().st_size for f in os.listdir(tmp_path / d))
        for d in ("small", "big", "odd")
    }
    assert sizes["small"] == [4096] * 7 and sizes["big"] == [102_400] * 5
    assert len(sizes["odd"]) == 4 and all(1000 <= s <= 2000 for s in sizes["odd"])
    assert run.summary("completed").ops["put"].ops == 16
