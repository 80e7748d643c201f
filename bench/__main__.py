"""triobench benchmarks: measured side by side in one run, printed as a table.

    python -m bench [--quick] [--only NAME,...] [--write bench/results.md]

Data plane (in-process engine, one worker thread unless said otherwise):
  null         null:// ops/s per worker thread (target >= 700k)
  get4k        4 KiB object GET from page cache: triobench vs a bare Python
               open/read/close loop over the same files (target >= 0.85x) vs fio
  mib          1 MiB object GET and PUT MiB/s vs fio
  memory       agent peak RSS at concurrency 64
Control plane (real agent processes on loopback):
  skew         start skew across 2 and 8 local agents
  ping         PING round trip p50/p99 while stats flow at full rate
  ctrlc        time from Ctrl-C to controller exit with 8 agents
  scale        agents one controller serves at 1 stats frame/s before its CPU passes 50 %
s3:// (a minimal local server answering S3 requests, in its own process):
  s3           client CPU per request and requests/s, 1 KiB GET and PUT, concurrency 16:
               triobench vs boto3 in threads vs httpx in threads
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from bench.farm import farms
from trio_bench.config import AgentAddress, parse_config
from trio_bench.controller import Controller, Display
from trio_bench.engine import Engine
from trio_bench.local import start_local_agents, stop_local_agents
from trio_bench.protocol import NBINS, StageSummary
from trio_bench.stats import BYTES, MAX_NS, SUM_NS, new_record

ROOT = Path(__file__).resolve().parent.parent


@attrs.define
class Row:
    bench: str
    measure: str
    value: str
    target: str = ""
    note: str = ""


# --- helpers ------------------------------------------------------------------------------------


def engine_workload(text: str, *, repeat: int = 1) -> list[StageSummary]:
    """Prepare once, then run the workload stage ``repeat`` times; workload summaries."""

    async def main() -> list[StageSummary]:
        engine = Engine(parse_config(text), prefix="bench/")
        await engine.preflight()
        run = engine.prepare_stage()
        await run.run(engine.clock.now_ns())
        await engine.after_prepare()
        out = []
        for _ in range(repeat):
            run = engine.workload_stage()
            await run.run(engine.clock.now_ns())
            out.append(run.summary("completed"))
        return out

    return trio.run(main)


def rate(summary: StageSummary, kind: str) -> tuple[float, float]:
    """(ops/s, MiB/s) of one op kind in a workload summary."""
    stats = summary.ops[kind]
    seconds = summary.measured_ns / 1e9
    return stats.ops / seconds, stats.bytes / seconds / 2**20


def fio(args: list[str]) -> dict | None:
    if shutil.which("fio") is None:
        return None
    out = subprocess.run(
        ["fio", "--output-format=json", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- data plane ---------------------------------------------------------------------------------


def bench_null(quick: bool) -> list[Row]:
    seconds = 2 if quick else 4

    def text(concurrency: int) -> str:
        return (
            f"target: null://\nduration: {seconds}s\nconcurrency: {concurrency}\n"
            "prepare: {ensure_objects: [{base_uri: data/, count: 10000, object_size: 4KiB}]}\n"
            'workload: [{op: get, path: "data/*"}]\n'
        )

    one = [rate(s, "get")[0] for s in engine_workload(text(1), repeat=3)]
    mixed_text = f"""
target: null://
duration: {seconds}s
concurrency: 1
prepare: {{ensure_objects: [{{base_uri: data/, count: 10000, object_size: 4KiB}}]}}
workload:
  - {{op: get, path: "data/*", weight: 60}}
  - {{op: put, path: "new/", weight: 20, object_size: 4KiB}}
  - {{op: stat, path: "data/*", weight: 10}}
  - {{op: delete, path: "new/*", weight: 10}}
"""
    (mixed,) = engine_workload(mixed_text)
    mixed_ops = sum(s.ops for s in mixed.ops.values()) / (mixed.measured_ns / 1e9)
    two = engine_workload(text(2))[0]
    return [
        Row(
            "null",
            "get ops/s, 1 worker thread (median of 3)",
            f"{median(one):,.0f}",
            ">= 700,000",
            f"{1e9 / median(one):,.0f} ns of tool per op (the get4k floor loop's iteration "
            f"is in its row); runs: {', '.join(f'{v:,.0f}' for v in one)}",
        ),
        Row("null", "mixed get/put/stat/delete ops/s, 1 thread", f"{mixed_ops:,.0f}"),
        Row(
            "null",
            "get ops/s, 2 threads, one agent",
            f"{rate(two, 'get')[0]:,.0f}",
            "",
            "one process shares one GIL: scale out with more agents per host",
        ),
    ]


def _files(directory: Path, count: int, size: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(size)
    paths = []
    for i in range(count):
        path = directory / f"prepared-{i:08d}.dat"
        path.write_bytes(block)
        paths.append(str(path))
    return paths


def _bare_loop(paths: list[str], seconds: float) -> float:
    """The plainest Python way: open, read whole, close, random file each time."""
    rnd = random.Random(1).random
    n = len(paths)
    ops = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            with open(paths[int(rnd() * n)], "rb") as f:
                f.read()
        ops += 1000
        if time.perf_counter() >= deadline:
            return ops / (time.perf_counter() - start)


@contextlib.contextmanager
def start_local_agents_ctx(count: int, directory: Path):
    agents = start_local_agents(count, directory)
    try:
        yield [agent.as_target() for agent in agents]
    finally:
        stop_local_agents(agents)


def _floor_loop(paths: list[str], seconds: float) -> float:
    """The syscall floor for a Python load generator: os.open, os.readv into one reused
    buffer, os.close, a random file each time (no file objects, no allocation per read)."""
    rnd = random.Random(1).random
    n = len(paths)
    buffers = [bytearray(4096)]
    opener, readv, close, flags = os.open, os.readv, os.close, os.O_RDONLY
    ops = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            fd = opener(paths[int(rnd() * n)], flags)
            readv(fd, buffers)
            close(fd)
        ops += 1000
        if time.perf_counter() >= deadline:
            return ops / (time.perf_counter() - start)


def _measuring_loop(paths: list[str], seconds: float) -> float:
    """The floor loop plus what any benchmark must add per operation to report latency
    percentiles: two clock reads and one histogram record (triobench's bucket arithmetic,
    written out). The gap between this and the floor is the price of measuring at all."""
    rnd = random.Random(1).random
    n = len(paths)
    buffers = [bytearray(4096)]
    opener, readv, close, flags = os.open, os.readv, os.close, os.O_RDONLY
    clock = time.perf_counter_ns
    record = new_record()
    last = NBINS - 1
    ops = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            path = paths[int(rnd() * n)]
            t0 = clock()
            fd = opener(path, flags)
            nbytes = readv(fd, buffers)
            close(fd)
            latency = clock() - t0
            shift = latency.bit_length() - 7
            index = (shift << 6) + (latency >> shift) if shift > 0 else latency
            record[index if index < NBINS else last] += 1
            record[BYTES] += nbytes
            record[SUM_NS] += latency
            if latency > record[MAX_NS]:
                record[MAX_NS] = latency
        ops += 1000
        if time.perf_counter() >= deadline:
            return ops / (time.perf_counter() - start)


def _through_the_cli(text: str, agent: AgentAddress, work: Path) -> float:
    """get ops/s of one real run: a local agent process and the controller (in this process)."""
    result = _run_controller(parse_config(text), [agent], work)
    return float(_tsv_row(result.results_dir / "summary.tsv", "get")["ops_per_s"])


def bench_get4k(quick: bool, work: Path) -> list[Row]:
    seconds = 2 if quick else 4
    count = 10_000
    target = work / "get4k"
    text = f"""
target: file://{target}/
duration: {seconds}s
concurrency: 1
prepare: {{ensure_objects: [{{base_uri: data/, count: {count}, object_size: 4KiB}}]}}
workload: [{{op: get, path: "data/*"}}]
"""
    # side by side, interleaved: floor, bare, triobench, ... (the machine is noisy)
    engine_workload(text)  # prepare the files and warm the page cache
    paths = sorted(str(p) for p in (target / "bench" / "data").iterdir())
    shared = text + "distributed: {shared_storage: true, start_delay: 300ms}\n"
    floor, measuring, bare, ours, cli = [], [], [], [], []
    with start_local_agents_ctx(1, work / "get4k-agent") as (agent,):
        _through_the_cli(shared, agent, work)  # its own prepare, and a warm cache
        for _ in range(3):
            floor.append(_floor_loop(paths, seconds))
            measuring.append(_measuring_loop(paths, seconds))
            bare.append(_bare_loop(paths, seconds))
            ours.append(rate(engine_workload(text)[0], "get")[0])
            cli.append(_through_the_cli(shared, agent, work))

    def runs(values: list[float]) -> str:
        return f"runs: {', '.join(f'{v:,.0f}' for v in values)}"

    rows = [
        Row(
            "get4k",
            "floor loop: os.open + os.readv (reused buffer) + os.close, ops/s",
            f"{median(floor):,.0f}",
            "baseline",
            f"{1e9 / median(floor):,.0f} ns per iteration; {runs(floor)}",
        ),
        Row(
            "get4k",
            "measuring loop: the floor + 2 clock reads + 1 histogram record per op, ops/s",
            f"{median(measuring):,.0f}",
            "",
            f"{median(measuring) / median(floor):.2f}x the floor (the price of timing each op); "
            f"{runs(measuring)}",
        ),
        Row(
            "get4k",
            "buffered loop: open(p, 'rb').read(), ops/s",
            f"{median(bare):,.0f}",
            "",
            f"{median(bare) / median(floor):.2f}x the floor; {runs(bare)}",
        ),
        Row(
            "get4k",
            "triobench engine in-process, file:// get, 1 thread, ops/s",
            f"{median(ours):,.0f}",
            "",
            f"{median(ours) / median(floor):.2f}x the floor, "
            f"{median(ours) / median(measuring):.2f}x the measuring loop; {runs(ours)}",
        ),
        Row(
            "get4k",
            "triobench agent process + controller, 1 thread, ops/s",
            f"{median(cli):,.0f}",
            ">= 0.9x the floor",
            f"{median(cli) / median(floor):.2f}x the floor, "
            f"{median(cli) / median(measuring):.2f}x the measuring loop; {runs(cli)}",
        ),
    ]
    fio_dir = work / "fio4k"
    fio_dir.mkdir(exist_ok=True)
    job = [
        "--name=get4k",
        f"--directory={fio_dir}",
        f"--nrfiles={count}",
        "--filesize=4k",
        "--bs=4k",
        "--rw=read",
        "--ioengine=psync",
        "--invalidate=0",
        "--file_service_type=random",
        "--time_based",
        f"--runtime={seconds}",
    ]
    if fio([*job[:-1], "--runtime=1"]) is None:  # lays out the files, warms the cache
        rows.append(Row("get4k", "fio", "not installed", "", "apt-get install fio"))
        return rows
    kept_open = [fio(job)["read"]["iops"] for _ in range(3)]
    reopened = fio([*job, "--openfiles=1"])
    rows += [
        Row(
            "get4k",
            "fio psync, same 10,000 x 4 KiB files kept open, ops/s",
            f"{median(kept_open):,.0f}",
            "",
            f"pread only, no open/close per op; triobench/fio "
            f"{median(ours) / median(kept_open):.2f}x",
        ),
        Row(
            "get4k",
            "fio psync, open/read/close per file (openfiles=1), ops/s",
            f"{reopened['read']['iops']:,.0f}",
            "",
            f"not a usable reference: fio spends {reopened['usr_cpu']:.0f}% user CPU "
            "managing its file table",
        ),
    ]
    return rows


def bench_mib(quick: bool, work: Path) -> list[Row]:
    seconds = 2 if quick else 3
    target = work / "mib"
    get_text = f"""
target: file://{target}/
duration: {seconds}s
concurrency: 1
prepare: {{ensure_objects: [{{base_uri: data/, count: 256, object_size: 1MiB}}]}}
workload: [{{op: get, path: "data/*"}}]
"""
    put_text = f"""
target: file://{target}/
duration: {seconds}s
concurrency: 1
prepare: {{cleanup: true}}
workload: [{{op: put, path: "new/", object_size: 1MiB}}]
"""
    engine_workload(get_text)  # warm
    gets = [rate(engine_workload(get_text)[0], "get")[1] for _ in range(3)]
    rows = [Row("mib", "triobench 1 MiB get, 1 thread, MiB/s", f"{median(gets):,.0f}")]
    fio_dir = work / "fio1m"
    fio_dir.mkdir(exist_ok=True)
    common = ["--bs=1m", "--filesize=1m", "--ioengine=psync", "--openfiles=1", "--invalidate=0"]
    common += ["--time_based", f"--runtime={seconds}"]
    reads = [f"--directory={fio_dir}", "--nrfiles=256", "--file_service_type=random"]
    if fio(["--name=warm", "--rw=read", *common, *reads]) is None:
        rows.append(Row("mib", "fio", "not installed", "", "apt-get install fio"))
        return rows
    fio_get = [fio(["--name=r", "--rw=read", *common, *reads])["read"]["bw_bytes"] / 2**20]
    fio_get += [fio(["--name=r", "--rw=read", *common, *reads])["read"]["bw_bytes"] / 2**20]
    fio_get += [fio(["--name=r", "--rw=read", *common, *reads])["read"]["bw_bytes"] / 2**20]
    rows.append(
        Row(
            "mib",
            "fio 1 MiB read, psync, MiB/s",
            f"{median(fio_get):,.0f}",
            "",
            f"triobench/fio {median(gets) / median(fio_get):.2f}x",
        )
    )
    # Puts create a new file each and keep it, as triobench's puts do: fio creates its files
    # one after another as it reaches them (create_on_open, no preallocation) and keeps them.
    # On this VM's disk, buffered writes of new files run at whatever the kernel's dirty-page
    # throttling allows at that moment (300-1,000 MiB/s for either tool, run to run, both at
    # ~95% system CPU), which says nothing about the tool. On tmpfs there is no writeback: the
    # kernel's cost is steady and what differs is the tool. (fio's unlink_each_loop, used here
    # before, frees dirty pages before writeback sees them: not a like-for-like reference.)
    shm = Path("/dev/shm")
    put_root = Path(tempfile.mkdtemp(prefix="triobench-put-", dir=shm if shm.is_dir() else work))
    put_text = put_text.replace(f"file://{target}/", f"file://{put_root}/tb/")
    writes = ["--nrfiles=20000", "--file_service_type=sequential", "--create_on_open=1"]
    writes += ["--fallocate=none", "--rw=write", f"--directory={put_root}/fio"]
    puts: list[float] = []
    fio_put: list[float] = []

    def triobench_put() -> float:
        shutil.rmtree(put_root / "tb", ignore_errors=True)
        try:
            return rate(engine_workload(put_text)[0], "put")[1]
        finally:
            shutil.rmtree(put_root / "tb", ignore_errors=True)

    def fio_write() -> float:
        (put_root / "fio").mkdir()
        try:
            return fio(["--name=w", *common, *writes])["write"]["bw_bytes"] / 2**20
        finally:
            shutil.rmtree(put_root / "fio")

    try:
        # The first writes after the pages were freed run slower (up to 1.7x here) for either
        # tool: one unmeasured round, then the order alternates (ABBA...) so neither always
        # goes first.
        triobench_put(), fio_write()
        for i in range(4):
            pair = [(puts, triobench_put), (fio_put, fio_write)]
            for results, measure in pair if i % 2 == 0 else pair[::-1]:
                results.append(measure())
    finally:
        shutil.rmtree(put_root, ignore_errors=True)
    where = "tmpfs" if put_root.parent == shm else "disk"
    rows += [
        Row(
            "mib",
            f"triobench 1 MiB put (new file each), 1 thread, {where}, MiB/s",
            f"{median(puts):,.0f}",
        ),
        Row(
            "mib",
            f"fio 1 MiB write (new file each, kept), psync, {where}, MiB/s",
            f"{median(fio_put):,.0f}",
            "",
            f"triobench/fio {median(puts) / median(fio_put):.2f}x",
        ),
    ]
    return rows


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def bench_memory(quick: bool, work: Path) -> list[Row]:
    target = work / "memory"
    agents = start_local_agents(1, work / "memory-agents")
    try:
        pid = agents[0].process.pid
        idle = _rss_kib(pid, "VmRSS")
        cfg = parse_config(f"""
target: file://{target}/
duration: {2 if quick else 4}s
concurrency: 64
prepare: {{ensure_objects: [{{base_uri: data/, count: 2000, object_size: 4KiB}}], cleanup: true}}
workload:
  - {{op: get, path: "data/*", weight: 9}}
  - {{op: put, path: "new/", weight: 1, object_size: 64KiB}}
distributed: {{start_delay: 300ms}}
""")
        result = _run_controller(cfg, [agents[0].as_target()], work)
        peak = _rss_kib(pid, "VmHWM")
        threads = 64
    finally:
        stop_local_agents(agents)
    return [
        Row("memory", "agent RSS idle", f"{idle / 1024:.0f} MiB"),
        Row(
            "memory",
            f"agent peak RSS, concurrency {threads} (file:// get+put)",
            f"{peak / 1024:.0f} MiB",
            "",
            f"exit {result.exit_code}; 64 x 1 MiB read buffers are most of it",
        ),
    ]


def bench_soak(quick: bool, work: Path) -> list[Row]:
    """An agent's RSS over a long put-only null:// run (the fastest way to make puts): it
    must stay flat. 10 minutes (1 with --quick); not part of the default set."""
    minutes = 1 if quick else 10
    agents = start_local_agents(1, work / "soak-agents")
    samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, puts so far)
    try:
        pid = agents[0].process.pid
        cfg = parse_config(f"""
target: null://
duration: {minutes}m
concurrency: 1
prepare: {{cleanup: false}}
workload: [{{op: put, path: "new/", object_size: 4KiB}}]
distributed: {{start_delay: 300ms}}
""")
        controller = _controller(cfg, [agents[0].as_target()], work)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(controller.run)
                started = time.monotonic()
                while controller.stage not in ("cleanup", "finishing") and not all(
                    link.machine.terminal for link in controller.links
                ):
                    await trio.sleep(5 if quick else 30)
                    latest = controller.links[0].latest
                    puts = latest.ops["put"].ops if latest and "put" in latest.ops else 0
                    samples.append((time.monotonic() - started, _rss_kib(pid, "VmRSS"), puts))

        trio.run(main)
    finally:
        stop_local_agents(agents)
    during = [sample for sample in samples if sample[2] > 0] or samples
    first, last = during[0], during[-1]
    series = ", ".join(f"{t / 60:.1f} min {rss / 1024:.0f} MiB" for t, rss, _ in during[::2])
    return [
        Row(
            "soak",
            f"agent RSS over a {minutes}-minute null:// put-only run",
            f"{first[1] / 1024:.0f} -> {last[1] / 1024:.0f} MiB",
            "flat",
            f"{last[2]:,} puts by {last[0] / 60:.1f} min; {series}; "
            f"{samples[-1][1] / 1024:.0f} MiB after the run",
        )
    ]


# --- control plane ------------------------------------------------------------------------------


def _controller(cfg, targets: list[AgentAddress], work: Path) -> Controller:
    return Controller(
        cfg,
        agents=targets,
        results_base=work / "results",
        display=Display("quiet"),
        handle_signals=False,
    )


def _run_controller(cfg, targets: list[AgentAddress], work: Path):
    return trio.run(_controller(cfg, targets, work).run)


NULL_MIX = """
target: null://
duration: {duration}
concurrency: 1
{rate}
prepare: {{ensure_objects: [{{base_uri: data/, count: 1000, object_size: 4KiB}}]}}
workload:
  - {{op: get, path: "data/*", weight: 80}}
  - {{op: put, path: "new/", weight: 10, object_size: 1KiB}}
  - {{op: stat, path: "data/*", weight: 10}}
distributed: {{stats_interval: {stats}, ping_interval: {ping}, start_delay: 500ms}}
"""


def bench_processes(quick: bool, work: Path) -> list[Row]:
    """Two threads in one agent against two agents of one thread, on CPU-bound 4 KiB
    page-cache gets, through the controller: what ``agent --processes N`` is for."""
    seconds = 2 if quick else 4
    text = f"""
target: file://{work}/processes/
duration: {seconds}s
concurrency: {{concurrency}}
prepare: {{{{ensure_objects: [{{{{base_uri: d/, count: 2000, object_size: 4KiB}}}}]}}}}
workload: [{{{{op: get, path: "d/*"}}}}]
distributed: {{{{shared_storage: true}}}}
"""
    agents = start_local_agents(2, work / "processes-agents")
    single, threads, processes = [], [], []
    try:
        for _ in range(3):  # alternating
            for results, concurrency, targets in (
                (single, 1, [agents[0].as_target()]),
                (threads, 2, [agents[0].as_target()]),
                (processes, 1, [a.as_target() for a in agents]),
            ):
                cfg = parse_config(text.format(concurrency=concurrency))
                result = _run_controller(cfg, targets, work)
                results.append(
                    float(_tsv_row(result.results_dir / "summary.tsv", "all")["ops_per_s"])
                )
    finally:
        stop_local_agents(agents)
    return [
        Row(
            "processes",
            "4 KiB get, 1 agent x 1 thread, ops/s",
            f"{median(single):,.0f}",
            "",
            _runs(single),
        ),
        Row(
            "processes",
            "4 KiB get, 1 agent x 2 threads, ops/s",
            f"{median(threads):,.0f}",
            "",
            _runs(threads),
        ),
        Row(
            "processes",
            "4 KiB get, 2 agents x 1 thread, ops/s",
            f"{median(processes):,.0f}",
            "",
            _runs(processes),
        ),
        Row(
            "processes",
            "2 agent processes / 2 threads in one agent",
            f"{median(processes) / median(threads):.1f}x",
            "",
            f"2 processes / 1 thread: {median(processes) / median(single):.1f}x; "
            "one GIL per agent: use agent --processes N",
        ),
    ]


def _runs(values: list[float]) -> str:
    return "runs: " + ", ".join(f"{v:,.0f}" for v in values)


def _tsv_row(path: Path, op: str) -> dict[str, str]:
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return next(r for r in rows if r["op"] == op and r.get("size", "all") == "all")


def bench_skew(quick: bool, work: Path) -> list[Row]:
    return _skew(2, work) + _skew(8, work)


def _skew(count: int, work: Path) -> list[Row]:
    agents = start_local_agents(count, work / f"skew-agents-{count}")
    try:
        cfg = parse_config(NULL_MIX.format(duration="500ms", rate="", stats="1s", ping="1s"))
        skews: dict[str, list[float]] = {}
        for _ in range(3):
            result = _run_controller(cfg, [a.as_target() for a in agents], work)
            record = json.loads((result.results_dir / "run.json").read_text())
            for stage, value in record["start_skew_ms"].items():
                skews.setdefault(stage, []).append(value)
            bounds = [a["clock_error_bound_ms"] for a in record["agents"]]
    finally:
        stop_local_agents(agents)
    return [
        Row(
            "skew",
            f"start skew, {count} local agents, {stage} (median of 3)",
            f"{median(values):.3f} ms",
            "a few ms",
            f"runs: {', '.join(f'{v:.3f}' for v in values)}",
        )
        for stage, values in skews.items()
    ] + [
        Row(
            "skew",
            f"clock offset error bound (rtt/2), worst of {count} agents",
            f"{max(bounds):.3f} ms",
        )
    ]


def _collect_rtts(controller: Controller) -> list[float]:
    """Record the RTT (ms) of every PONG received while its agent runs the workload."""
    samples: list[float] = []
    for link in controller.links:

        def add(sample, original=link.estimator.add, link=link):
            original(sample)
            if link.state.value == "running":
                samples.append(sample.rtt_ns / 1e6)

        link.estimator.add = add  # type: ignore[method-assign]
    return samples


def _ping_rtts(
    agents, work: Path, *, stats: str, rate: str, duration: str
) -> tuple[list[float], int]:
    cfg = parse_config(NULL_MIX.format(duration=duration, rate=rate, stats=stats, ping="50ms"))
    controller = _controller(cfg, [a.as_target() for a in agents], work)
    samples = _collect_rtts(controller)
    trio.run(controller.run)
    return sorted(samples), sum(link.stats_sequence.last for link in controller.links)


def bench_ping(quick: bool, work: Path) -> list[Row]:
    agents = start_local_agents(8, work / "ping-agents")
    duration = "3s" if quick else "5s"
    cases = [
        ("agents at 2,000 ops/s, stats every 1 s", "1s", "io_rate: {iops: 2000}"),
        ("agents at 2,000 ops/s, stats every 10 ms (full rate)", "10ms", "io_rate: {iops: 2000}"),
        ("agents saturating the CPUs (null:// flat out), stats every 1 s", "1s", ""),
    ]
    rows = []
    try:
        for label, stats, rate in cases:
            samples, frames = _ping_rtts(agents, work, stats=stats, rate=rate, duration=duration)
            p50 = samples[len(samples) // 2]
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            rows.append(
                Row(
                    "ping",
                    f"PING RTT p50 / p99, 8 agents, {label}",
                    f"{p50:.3f} / {p99:.3f} ms",
                    "",
                    f"{len(samples)} pings, {frames} stats frames",
                )
            )
    finally:
        stop_local_agents(agents)
    return rows


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def bench_workers(quick: bool, work: Path) -> list[Row]:
    """PING RTT while one agent's worker threads run flat out on null:// (pure Python, the
    worst case for the GIL): the control channel must stay responsive at any concurrency."""
    agents = start_local_agents(1, work / "workers-agents")
    duration = "3s" if quick else "5s"
    rows = []
    try:
        for concurrency in (1, 64, 300):
            text = NULL_MIX.format(duration=duration, rate="", stats="1s", ping="50ms")
            cfg = parse_config(text.replace("concurrency: 1", f"concurrency: {concurrency}"))
            controller = _controller(cfg, [a.as_target() for a in agents], work)
            samples = _collect_rtts(controller)
            started = time.monotonic()
            result = trio.run(controller.run)
            wall = time.monotonic() - started
            samples.sort()
            frames = sum(link.stats_sequence.last for link in controller.links)
            rows.append(
                Row(
                    "workers",
                    f"PING RTT p50 / p99, 1 agent, {concurrency} null:// worker thread(s)",
                    f"{_percentile(samples, 0.5):.1f} / {_percentile(samples, 0.99):.1f} ms",
                    "bounded",
                    f"{len(samples)} pings; {frames} stats frames; exit {result.exit_code}; "
                    f"run of {duration} took {wall:.1f} s",
                )
            )
    finally:
        stop_local_agents(agents)
    return rows


def bench_ctrlc(quick: bool, work: Path) -> list[Row]:
    agents = start_local_agents(8, work / "ctrlc-agents")
    config = work / "ctrlc.yaml"
    config.write_text(NULL_MIX.format(duration="60s", rate="", stats="200ms", ping="200ms"))
    times = []
    try:
        for _ in range(3):
            command = [
                sys.executable,
                "-m",
                "trio_bench",
                "controller",
                str(config),
                "--agents",
                ",".join(a.address for a in agents),
                "--results-dir",
                str(work / "results"),
                "--display",
                "plain",
            ]
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
            )
            assert process.stdout is not None
            for line in process.stdout:
                if "workload [" in line and "all: 0 ops/s" not in line:
                    break
            start = time.perf_counter()
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)
            times.append(time.perf_counter() - start)
            assert process.returncode == 130, process.returncode
    finally:
        stop_local_agents(agents)
    return [
        Row(
            "ctrlc",
            "Ctrl-C to controller exit, 8 agents mid-workload (median of 3)",
            f"{median(times) * 1000:.0f} ms",
            "",
            f"runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms; exit 130, "
            "partial results written",
        )
    ]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _controller_cpu_share(cfg, targets: list[AgentAddress], work: Path) -> tuple[float, Controller]:
    """Run a controller in this process; its CPU share over 4 s in the middle of the workload."""
    controller = _controller(cfg, targets, work)
    marks: list[tuple[float, float]] = []

    async def sample() -> None:
        await controller.wait_for(lambda: controller.stage == "workload")
        await trio.sleep(2.5)
        marks.append((time.perf_counter(), _cpu_seconds()))
        await trio.sleep(4)
        marks.append((time.perf_counter(), _cpu_seconds()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            await controller.run()
            nursery.cancel_scope.cancel()

    trio.run(main)
    (t0, c0), (t1, c1) = marks
    return (c1 - c0) / (t1 - t0), controller


def bench_scale(quick: bool, work: Path) -> list[Row]:
    rows = []
    counts = [50, 100, 200] if quick else [100, 200, 400, 800]
    cfg = parse_config(
        NULL_MIX.format(duration="8s", rate="io_rate: {iops: 20}", stats="1s", ping="1s")
    )
    for count in counts:
        with farms(count) as targets:
            share, controller = _controller_cpu_share(cfg, targets, work)
        frames = sum(link.stats_sequence.last for link in controller.links)
        states = {link.state.value for link in controller.links}
        rows.append(
            Row(
                "scale",
                f"controller CPU, {count} agents at 1 stats frame/s",
                f"{share:.0%} of a core",
                "< 50%",
                f"agents ended {'/'.join(sorted(states))}; {frames} stats frames",
            )
        )
        if share > 0.5:
            break
    return rows


REPLAY_PER_PROCESS = 2500


def _replayers(count: int):
    """``count`` protocol-level agents (bench/replay.py) in as few processes as will do."""
    return farms(count, module="bench.replay", per_process=REPLAY_PER_PROCESS)


def _rss_mib() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)) / 1024, int(fields.get("VmHWM", 0)) / 1024


def _replay_run(count: int, work: Path) -> dict[str, float]:
    """One run of a real in-process controller against ``count`` replayed agents: its CPU
    share and RSS in the middle of the workload, PING RTTs and stats-to-display delays during
    it, then Ctrl-C (an abort by the user) and the time until the run returned, and how long
    writing the results took."""
    from trio_bench.controller import ResultsWriter

    cfg = parse_config(
        "target: null://\nduration: 30s\nworkload: [{op: get, path: 'd/*'}]\n"
        "prepare: {ensure_objects: [{base_uri: d/, count: 1, object_size: 1KiB}]}\n"
        "distributed: {stats_interval: 1s, ping_interval: 1s, warn_after: 10s, "
        "dead_after: 30s, probe_timeout: 10s, start_delay: 3s, connect_timeout: 60s, "
        "configure_timeout: 120s, give_up_after: 120s}\n"
    )
    out: dict[str, float] = {}
    writing = [0.0]
    originals = (ResultsWriter.write_stage, ResultsWriter.write_run)

    def timed(method):
        def wrapper(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                writing[0] += time.perf_counter() - started

        return wrapper

    gc.set_threshold(50_000, 20, 1000)  # as `triobench controller` does (cli.py)
    ResultsWriter.write_stage = timed(originals[0])  # type: ignore[method-assign]
    ResultsWriter.write_run = timed(originals[1])  # type: ignore[method-assign]
    try:
        with _replayers(count) as targets, open(os.devnull, "w") as devnull:
            controller = Controller(
                cfg,
                agents=targets,
                results_base=work / "results",
                display=Display("plain", stream=devnull),
                handle_signals=False,
            )
            rtts = _collect_rtts(controller)
            delays: list[float] = []
            close = controller.aggregator.close
            half = controller.aggregator.interval_ns // 2

            def closing(now_ns: int):
                windows = close(now_ns)
                for window in windows:
                    if window.stage == "workload":
                        delays.append((now_ns - window.at_ns - half) / 1e6)
                return windows

            controller.aggregator.close = closing  # type: ignore[method-assign]

            async def measure() -> None:
                await controller.wait_for(lambda: controller.stage == "workload")
                await trio.sleep(8)
                t0, c0 = time.perf_counter(), _cpu_seconds()
                await trio.sleep(10)
                out["cpu"] = (_cpu_seconds() - c0) / (time.perf_counter() - t0)
                out["rss"], _ = _rss_mib()
                writing[0] = 0.0
                out["abort_at"] = time.perf_counter()
                controller.request_abort("interrupted by the user (bench)", user=True)

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(measure)
                    await controller.run()
                    out["exit"] = time.perf_counter() - out.get("abort_at", time.perf_counter())
                    nursery.cancel_scope.cancel()

            trio.run(main)
            out["writing"] = writing[0]
            out["rtt_p99"] = _percentile(rtts, 0.99) if rtts else float("nan")
            out["delay_p50"] = _percentile(delays, 0.5) if delays else float("nan")
            out["delay_p99"] = _percentile(delays, 0.99) if delays else float("nan")
            out["frames"] = sum(link.stats_sequence.last for link in controller.links)
            out["aborted"] = sum(link.state.value == "aborted" for link in controller.links)
            out["hwm"] = _rss_mib()[1]
    finally:
        ResultsWriter.write_stage, ResultsWriter.write_run = originals  # type: ignore[method-assign]
        gc.set_threshold(700, 10, 10)
    return out


def _replay_in_process_of_its_own(count: int, work: Path) -> dict[str, float]:
    """``_replay_run`` in a new Python process: a count measured after others in the same
    process carried their heap (2,000 agents: 283 instead of 203 MiB, and more CPU)."""
    code = (
        "import json, pathlib, sys; from bench.__main__ import _replay_run; "
        "print(json.dumps(_replay_run(int(sys.argv[1]), pathlib.Path(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(count), str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _python_speed() -> float:
    """Microseconds for a fixed piece of pure Python (best of 7): the speed of this machine's
    CPU for the kind of work a controller does, so replay curves measured on different days
    can be compared (a shared 2-vCPU machine's speed was seen to vary by 40 % between days).
    It does not use triobench: the same code every time, whatever the controller's."""
    rng = random.Random(3)
    pairs = [(i, rng.randint(1, 9)) for i in sorted(rng.sample(range(2000), 360))]
    words = [f"k{i}" for i in range(200)]

    def piece() -> int:
        dense = [0] * 2000
        for _ in range(20):
            for index, count in pairs:
                dense[index] += count
            table = dict.fromkeys(words, 0)
            for word in words:
                table[word] += len(word)
        return sum(dense) + len(table)

    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        piece()
        best = min(best, time.perf_counter() - started)
    return best * 1e6


def bench_replay(quick: bool, work: Path) -> list[Row]:
    """The controller against 500 to 5,000 agents played at the protocol level (bench/replay.py)
    at 1 stats frame/s each."""
    rows = [
        Row(
            "replay",
            "this machine's Python speed (fixed pure-Python piece, best of 7)",
            f"{_python_speed():.0f} us",
            "",
            "lower is faster; compare curves of different days by it",
        )
    ]
    for count in [500, 1000] if quick else [500, 1000, 2000, 5000]:
        # the target count three times (this machine is shared and noisy): the median run
        runs = 3 if count == 2000 else 1
        try:
            tries = [_replay_in_process_of_its_own(count, work) for _ in range(runs)]
        except Exception as exc:  # one count failing must not lose the others
            rows.append(Row("replay", f"{count} agents", "FAILED", "", repr(exc)[:200]))
            continue
        measured = sorted((t for t in tries if "cpu" in t), key=lambda t: t["cpu"])
        got = measured[len(measured) // 2] if measured else tries[0]
        shares = ", ".join(format(t["cpu"], ".0%") for t in measured)
        spread = f" (median of {len(measured)}: {shares})" if len(measured) > 1 else ""
        if "cpu" not in got:
            rows.append(
                Row(
                    "replay",
                    f"{count} agents",
                    "not measured",
                    "",
                    f"the run ended before 18 s of workload ({got.get('aborted', 0):.0f} "
                    f"agents aborted, {got.get('frames', 0):.0f} STATS)",
                )
            )
            continue
        rows.append(
            Row(
                "replay",
                f"{count} agents at 1 frame/s: controller CPU, RSS",
                f"{got['cpu']:.0%} of a core{spread}, {got['rss']:.0f} MiB",
                "< 50% at 2,000" if count == 2000 else "",
                f"PING RTT p99 {got['rtt_p99']:.0f} ms; stats-to-display p50/p99 "
                f"{got['delay_p50']:.0f}/{got['delay_p99']:.0f} ms; Ctrl-C to exit "
                f"{got['exit']:.1f} s ({got['aborted']:.0f} aborted); results written in "
                f"{got['writing']:.2f} s; {got['frames']:.0f} STATS",
            )
        )
    return rows


S3_CONCURRENCY = 16
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCH",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
}


def _s3_server() -> tuple[subprocess.Popen[str], str]:
    from tests.s3server import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.s3server", str(port), "1024"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    process.stdout.readline()
    return process, f"http://127.0.0.1:{port}"


def _cpu_and_rate(seconds: float, body: Callable[[], int]) -> tuple[float, float]:
    """(client CPU ms per request, requests/s) of ``body()`` which returns requests done."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    done = body()
    c1, t1 = _cpu_seconds(), time.perf_counter()
    return (c1 - c0) / max(done, 1) * 1000, done / (t1 - t0)


def _threads(ops: list[Callable[[], None]], seconds: float) -> int:
    """Run one thread per prepared op, each calling it in a loop for ``seconds``; total ops."""
    import threading

    counts = [0] * len(ops)
    stop = threading.Event()

    def loop(i: int) -> None:
        op = ops[i]
        while not stop.is_set():
            op()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(ops))]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts)


def bench_s3(quick: bool, work: Path) -> list[Row]:
    seconds = 2.0 if quick else 4.0
    server, endpoint = _s3_server()
    rows = []
    try:
        os.environ.update(S3_ENV)
        for op, label in (("get", "1 KiB GET"), ("put", "1 KiB PUT"), ("get1m", "1 MiB GET")):
            size = "1MiB" if op == "get1m" else "1KiB"
            workload = (
                '[{op: put, path: "new/", object_size: 1KiB}]'
                if op == "put"
                else '[{op: get, path: "data/*"}]'
            )
            text = f"""
target: s3://bench/
duration: {seconds}s
concurrency: {S3_CONCURRENCY}
prepare: {{ensure_objects: [{{base_uri: data/, count: 100, object_size: {size}}}]}}
workload: {workload}
s3: {{endpoint: "{endpoint}"}}
"""
            kind = "put" if op == "put" else "get"
            ours_cpu, ours_rate = _cpu_and_rate(
                seconds, lambda text=text, kind=kind: engine_workload(text)[0].ops[kind].ops
            )
            # clients are built and warmed before the clock starts: only requests count
            boto_ops = [_boto3_op(endpoint, op) for _ in range(S3_CONCURRENCY)]
            for call in boto_ops:
                call()
            boto_cpu, boto_rate = _cpu_and_rate(
                seconds, lambda ops=boto_ops: _threads(ops, seconds)
            )
            httpx_ops = [_httpx_op(endpoint, op) for _ in range(S3_CONCURRENCY)]
            for call in httpx_ops:
                call()
            httpx_cpu, httpx_rate = _cpu_and_rate(
                seconds, lambda ops=httpx_ops: _threads(ops, seconds)
            )
            mib_s = ours_rate if op == "get1m" else ours_rate / 1024
            mib = f", {mib_s:,.0f} MiB/s"
            rows += [
                Row(
                    "s3",
                    f"{label}, c={S3_CONCURRENCY}: triobench client CPU / request",
                    f"{ours_cpu:.3f} ms",
                    "" if op == "get1m" else "<= 0.3 ms",
                    f"{ours_rate:,.0f} req/s{mib}",
                ),
                Row(
                    "s3",
                    f"{label}: boto3 in {S3_CONCURRENCY} threads",
                    f"{boto_cpu:.3f} ms",
                    "",
                    f"{boto_rate:,.0f} req/s",
                ),
                Row(
                    "s3",
                    f"{label}: httpx (+ our signer) in {S3_CONCURRENCY} threads",
                    f"{httpx_cpu:.3f} ms",
                    "",
                    f"{httpx_rate:,.0f} req/s",
                ),
                Row(
                    "s3",
                    f"{label}: triobench / boto3 requests/s",
                    f"{ours_rate / boto_rate:.1f}x",
                    "" if op == "get1m" else ">= 3x",
                    f"httpx: {ours_rate / httpx_rate:.1f}x",
                ),
            ]
    finally:
        server.terminate()
        server.wait()
        if server.stdout:
            server.stdout.close()
    return rows


def _boto3_op(endpoint: str, op: str) -> Callable[[], None]:
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
    )
    body = b"x" * 1024
    if op == "get":
        return lambda: client.get_object(Bucket="bench", Key="data/k")["Body"].read() and None
    if op == "get1m":
        client.put_object(
            Bucket="bench", Key="data/big", Body=b"x" * 2**20
        )  # the server keeps its size
        return lambda: client.get_object(Bucket="bench", Key="data/big")["Body"].read() and None
    return lambda: client.put_object(Bucket="bench", Key="new/k", Body=body) and None


def _httpx_op(endpoint: str, op: str) -> Callable[[], None]:
    import httpx

    from trio_bench.s3 import Endpoint, S3Client, resolve

    settings = resolve("bench", "", SimpleOptions(endpoint), S3_ENV)
    signer = S3Client(settings, Endpoint.parse(endpoint))
    http = httpx.Client(base_url=endpoint)
    body = b"x" * 1024

    def get(key: str = "data/k") -> None:
        target, headers = signer.prepare("GET", key)
        http.get(target, headers=[(k, v) for k, v in headers if k != "host"]).read()

    def put() -> None:
        target, headers = signer.prepare("PUT", "new/k", body=[body], length=len(body))
        http.put(
            target,
            content=body,
            headers=[(k, v) for k, v in headers if k not in ("host", "content-length")],
        )

    if op == "get1m":
        return lambda: get("data/big")  # stored by the boto3 setup (same server)
    return get if op == "get" else put


class SimpleOptions:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint


def _frame_costs(message, key: bytes | None, rounds: int) -> tuple[float, float, int]:
    """ns per frame to encode (+ sign) and to decode (+ verify) ``message``; its size."""
    from trio_bench import protocol as p

    mac = p.FrameMac(key) if key is not None else None
    frame = p.encode_message(message)
    if mac is not None:
        frame = p.sign_frame(frame, mac, 0)
    started = time.perf_counter_ns()
    for i in range(rounds):
        out = p.encode_message(message)
        if mac is not None:
            out = p.sign_frame(out, mac, i)
    send_ns = (time.perf_counter_ns() - started) / rounds
    frames = (
        [p.sign_frame(p.encode_message(message), key, i) for i in range(rounds)]
        if key
        else [frame] * rounds
    )
    decoder = p.FrameDecoder()
    if key is not None:
        decoder.authenticate(key)
    started = time.perf_counter_ns()
    for data in frames:
        decoder.feed(data)
        p.decode_message(decoder.next_frame())
    receive_ns = (time.perf_counter_ns() - started) / rounds
    return send_ns, receive_ns, len(frame)


def bench_frames(quick: bool, work: Path) -> list[Row]:
    """What authenticating every frame after the handshake costs (protocol.md §3): encode +
    sign and decode + verify, for a PING and for a STATS of a busy agent (five op kinds, ~150
    occupied histogram buckets each), with and without a key, alternating, medians of 5."""
    import random

    from trio_bench import protocol as p

    rng = random.Random(1)
    ops = {}
    for kind in ("get", "put", "stat", "list", "delete"):
        hist = tuple((i, rng.randint(1, 10**6)) for i in sorted(rng.sample(range(400, 1400), 150)))
        ops[kind] = p.OpStats.from_pairs(hist, bytes=10**12, errors=3, sum_ns=10**15, max_ns=10**9)
    stats = p.Stats(
        seq=1000,
        stage="workload",
        warmup=False,
        elapsed_ns=10**11,
        done=0,
        total=0,
        ops=ops,
        error_codes={"get": {"NoSuchKey": 3}},
        cpu_user_ns=10**10,
        cpu_system_ns=10**9,
        at_ns=1_800_000_000 * 10**9,
        sizes={kind: {"1B-8KiB": None} for kind in ops},
    )
    ping = p.Ping(t1_ns=1_800_000_000 * 10**9, nonce=12345)
    key = bytes(range(32))
    rounds = 2000 if quick else 10000
    rows = []
    for name, message in (("PING", ping), ("STATS, 5 kinds x 150 buckets", stats)):
        plain: list[tuple[float, float]] = []
        signed: list[tuple[float, float]] = []
        size = signed_size = 0
        for _ in range(5):
            send, receive, size = _frame_costs(message, None, rounds)
            plain.append((send, receive))
            send, receive, signed_size = _frame_costs(message, key, rounds)
            signed.append((send, receive))
        base = median([a + b for a, b in plain])
        auth = median([a + b for a, b in signed])
        rows.append(
            Row(
                "frames",
                f"{name}: send + receive, plain / authenticated",
                f"{base / 1000:.1f} / {auth / 1000:.1f} us",
                "",
                f"+{(auth - base) / 1000:.1f} us per frame ({(auth / base - 1) * 100:.0f}%); "
                f"{size} -> {signed_size} bytes",
            )
        )
    return rows


BENCHES: dict[str, Callable[..., list[Row]]] = {
    "null": lambda quick, work: bench_null(quick),
    "get4k": bench_get4k,
    "mib": bench_mib,
    "memory": bench_memory,
    "processes": bench_processes,
    "skew": bench_skew,
    "ping": bench_ping,
    "workers": bench_workers,
    "ctrlc": bench_ctrlc,
    "scale": bench_scale,
    "s3": bench_s3,
    "soak": bench_soak,
    "frames": bench_frames,
    "replay": bench_replay,
}
DEFAULT = [name for name in BENCHES if name != "soak"]  # soak takes 10 minutes: --only soak


def table(rows: list[Row]) -> str:
    header = ["bench", "measure", "value", "target", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(f"| {row.bench} | {row.measure} | {row.value} | {row.target} | {row.note} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    fio_version = ""
    if shutil.which("fio"):
        fio_version = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}, "
        f"{fio_version.strip() or 'no fio'}, {time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--write",
        default=str(ROOT / "bench" / "results.md"),
        help="where to write the markdown table ('' to skip)",
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or DEFAULT
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (have {', '.join(BENCHES)})")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="triobench-bench-") as tmp:
        for name in names:
            started = time.perf_counter()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                got = BENCHES[name](args.quick, Path(tmp))
            except Exception as exc:  # one broken benchmark must not lose the others
                got = [Row(name, "FAILED", type(exc).__name__, "", str(exc)[:200])]
            for row in got:
                print(f"  {row.measure}: {row.value} {row.note}", file=sys.stderr, flush=True)
            rows += got
            print(f"  {name}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    text = f"Measured on {machine()}\n\n{table(rows)}\n"
    print(text)
    if args.write:
        Path(args.write).write_text(text)


if __name__ == "__main__":
    main()
