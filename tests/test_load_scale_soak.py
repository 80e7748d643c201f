"""Load (a long prepare over a throttled link with a slow display), scale (many agents on one
controller) and soak (back-to-back runs on the same agent processes)."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
import trio

from bench.farm import farms
from trio_bench.config import parse_config
from trio_bench.controller import Display
from trio_bench.local import start_local_agents, stop_local_agents
from trio_bench.protocol import PeerState, to_controller_clock

from .agents import FAST, quiet_controller
from .test_faults import controller_through, proxied, tsv

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


class SlowDisplay(Display):
    """A terminal that takes 300 ms to draw: it blocks the controller's event loop."""

    def __init__(self) -> None:
        super().__init__("quiet")
        self.updates = 0

    def update(self, view) -> None:  # type: ignore[no-untyped-def]
        self.updates += 1
        time.sleep(0.3)


async def test_a_long_prepare_over_a_throttled_link_with_a_slow_display(
    tmp_path: Path, reliability
) -> None:
    cfg = parse_config(
        f"""
target: file://{tmp_path}/data/
duration: 1s
concurrency: 2
prepare:
  ensure_objects: [{{base_uri: objects/, count: 100000, object_size: 256}}]
workload: [{{op: get, path: "objects/*"}}]
"""
        + FAST.format(policy="abort")
    )
    async with proxied(tmp_path) as (agents, proxies):
        for proxy in proxies:
            proxy.set(bytes_per_s=8_000)
        controller = controller_through(cfg, agents, proxies, tmp_path)
        display = SlowDisplay()
        controller.display = display
        progress: list[int] = []
        marks: dict[str, float] = {}

        async def interrupt() -> None:
            link = controller.links[0]
            while not progress or progress[-1] < 30_000:  # watch the prepare progress arrive
                await controller.wait_for(
                    lambda: link.latest is not None and link.latest.done not in progress[-1:]
                )
                assert link.latest is not None
                progress.append(link.latest.done)
            marks["ctrl-c"] = trio.current_time()
            marks["ctrl-c-ns"] = controller.clock.now_ns()
            controller.request_abort("Ctrl-C during prepare", user=True)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(interrupt)
                result = await controller.run()
                marks["exit"] = trio.current_time()
    assert (result.exit_code, result.status) == (130, "aborted")
    assert progress == sorted(progress) and progress[-1] > progress[0]
    assert all(link.machine.disconnects == 0 for link in controller.links)
    assert {link.state for link in controller.links} == {PeerState.ABORTED}
    latency = marks["exit"] - marks["ctrl-c"]
    assert latency < 10
    # when the agents' workers actually stopped, from their ABORTED summaries
    stopped = (
        max(
            to_controller_clock(link.summaries["prepare"].ended_at_ns, link.offset_ns)
            - marks["ctrl-c-ns"]
            for link in controller.links
        )
        / 1e6
    )
    assert stopped < 1000
    reliability(
        "prepare of 200k objects (2 agents) over an 8 KB/s link, display taking 300 ms "
        "per redraw, then Ctrl-C",
        "progress keeps arriving; no agent declared dead; I/O stops at once on Ctrl-C; the run "
        "ends with partial results",
        f"{len(progress)} progress updates ({progress[0]:,}..{progress[-1]:,} objects); "
        f"0 disconnects; I/O stopped {stopped:.0f} ms after Ctrl-C; exit 130 (all confirmed) "
        f"after {latency:.1f} s; {display.updates} slow redraws",
    )


SCALE = """
target: null://
duration: 2s
concurrency: 1
io_rate: {iops: 50}
prepare: {ensure_objects: [{base_uri: data/, count: 100, object_size: 4KiB}]}
workload: [{op: get, path: "data/*"}]
distributed: {stats_interval: 500ms, ping_interval: 500ms, warn_after: 2s, dead_after: 5s,
              probe_timeout: 2s, start_delay: 1s, give_up_after: 20s}
"""


async def test_many_agents_on_one_controller(tmp_path: Path, reliability) -> None:
    count = int(os.environ.get("TRIOBENCH_SCALE_AGENTS", "100"))
    with farms(count) as targets:
        controller = quiet_controller(parse_config(SCALE), targets, tmp_path / "results")
        with trio.fail_after(120):
            result = await controller.run()
        assert result.exit_code == 0, result.message
        assert all(link.machine.disconnects == 0 for link in controller.links)
        total = tsv(result.results_dir / "summary.tsv")["get"]
        parts = [tsv(result.results_dir / "agents" / t.id / "summary.tsv")["get"] for t in targets]
        assert int(total["ops"]) == sum(int(p["ops"]) for p in parts) > 0
        skew = max(controller.skew_ms.values())
        # and an abort reaches every one of them
        aborting = quiet_controller(
            parse_config(SCALE.replace("duration: 2s", "duration: 60s")),
            targets,
            tmp_path / "results",
        )
        marks: dict[str, float] = {}

        async def interrupt() -> None:
            await aborting.wait_for(
                lambda: all(a.state is PeerState.RUNNING for a in aborting.links)
            )
            marks["abort"] = trio.current_time()
            aborting.request_abort("scale test abort", user=True)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(interrupt)
                aborted = await aborting.run()
                marks["exit"] = trio.current_time()
    assert aborted.exit_code == 130
    assert {link.state for link in aborting.links} == {PeerState.ABORTED}
    reliability(
        f"{count} agents on one controller (one farm process), then an abort",
        "all complete, aggregate = sum of agents, no false disconnection; the abort "
        "reaches every agent",
        f"exit 0, {count} completed, 0 disconnects, largest start skew {skew:.1f} ms; "
        f"abort: {count} aborted, exit 130 in {marks['exit'] - marks['abort']:.2f} s",
    )


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SOAK = """
target: file://{root}/
duration: 300ms
concurrency: 2
prepare:
  ensure_objects: [{{base_uri: data/, count: 200, object_size: 4KiB}}]
  cleanup: true
workload:
  - {{op: get, path: "data/*", weight: 8}}
  - {{op: put, path: "new/", weight: 2, object_size: 4KiB}}
distributed: {{stats_interval: 100ms, ping_interval: 100ms, warn_after: 1s, dead_after: 3s,
               probe_timeout: 1s, start_delay: 100ms}}
"""


async def test_back_to_back_runs_leak_nothing(tmp_path: Path, reliability) -> None:
    runs = int(os.environ.get("TRIOBENCH_SOAK_RUNS", "10"))
    agents = start_local_agents(2, tmp_path)
    cfg = parse_config(SOAK.format(root=tmp_path / "data"))
    samples: list[tuple[int, int]] = []
    try:
        for i in range(runs):
            controller = quiet_controller(
                cfg, [a.as_target() for a in agents], tmp_path / "results"
            )
            with trio.fail_after(60):
                result = await controller.run()
            assert result.exit_code == 0, (i, result.message)
            await trio.sleep(0.2)  # let the agents finish their bookkeeping
            samples.append(
                (
                    sum(_fds(a.process.pid) for a in agents),
                    sum(_rss_kib(a.process.pid) for a in agents),
                )
            )
    finally:
        stop_local_agents(agents)
    fds = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    warm = len(samples) // 3  # allocator and caches settle in the first runs
    assert max(fds[1:]) == min(fds[1:]), fds  # no descriptor leaks
    # a leak is a trend, not one high sample: the allocator's footprint moves by ~10 MiB from
    # one run to the next on a busy machine, so compare the lows of the middle and last
    # thirds; and it is not one step either: under CPU contention the allocator may add an
    # arena once (seen: +13 MiB between two runs, flat before and after), so the largest
    # single step after the warm-up is not counted as growth
    step = max(0, *(after - before for before, after in itertools.pairwise(rss[warm:])))
    growth = (min(rss[-warm:]) - min(rss[warm : 2 * warm]) - step) / 1024
    assert growth < 8 + runs * 0.2, str(rss)  # no per-run memory growth worth the name
    reliability(
        f"{runs} back-to-back runs on the same 2 agent processes",
        "every run completes; file descriptors and memory stay flat",
        f"{runs}/{runs} exit 0; agent fds {fds[0]} -> {fds[-1]}; RSS "
        f"{rss[warm] / 1024:.0f} -> {rss[-1] / 1024:.0f} MiB after run {warm + 1}",
    )
