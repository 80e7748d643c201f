"""Network faults between the controller and real agent processes, through a loopback proxy:
latency, stalls shorter and longer than dead_after, throttling, a cut connection, corrupted
bytes. Each test asserts the outcome and that no counted operation was lost: the controller's
per-agent results equal what each agent kept locally."""

from __future__ import annotations

import contextlib
import csv
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trio_bench.config import AgentAddress
from trio_bench.controller import STAGE_FILES, Controller
from trio_bench.local import LocalAgent
from trio_bench.protocol import PeerState

from .agents import config, local_agents, quiet_controller
from .proxy import Proxy

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

RUN = """
target: null://
duration: {duration}
concurrency: 1
prepare:
  ensure_objects: [{{base_uri: data/, count: 2000, object_size: 4KiB}}]
  cleanup: true
workload:
  - {{op: get, path: "data/*", weight: 8}}
  - {{op: put, path: "new/", weight: 1, object_size: 1KiB}}
  - {{op: stat, path: "data/*", weight: 1}}
"""


def run_config(duration: str = "3s"):
    return config(RUN.format(duration=duration), policy="continue")


@contextlib.asynccontextmanager
async def proxied(
    tmp_path: Path, count: int = 2
) -> AsyncIterator[tuple[list[LocalAgent], list[Proxy]]]:
    with local_agents(tmp_path, count) as agents:
        async with trio.open_nursery() as nursery:
            proxies = [Proxy(agent.address) for agent in agents]
            for proxy in proxies:
                await nursery.start(proxy.serve)
            yield agents, proxies
            nursery.cancel_scope.cancel()


def controller_through(
    cfg,
    agents: list[LocalAgent],
    proxies: list[Proxy],
    tmp_path: Path,
    direct: tuple[int, ...] = (),
):
    """A controller reaching each agent through its proxy (or directly, for ``direct``)."""
    targets = [
        AgentAddress(address=a.address if i in direct else p.address, id=a.id)
        for i, (a, p) in enumerate(zip(agents, proxies))
    ]
    return quiet_controller(cfg, targets, tmp_path / "results")


def tsv(path: Path) -> dict[str, dict[str, str]]:
    """A summary table's per-kind rows by op (its size-bucket rows: ``sizes``)."""
    with open(path) as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {row["op"]: row for row in rows if row["size"] == "all"}


def assert_nothing_lost(result, tmp_path: Path, agents: list[LocalAgent]) -> int:
    """The controller's per-agent results equal each agent's locally kept summaries."""
    record = json.loads((result.results_dir / "run.json").read_text())
    compared = 0
    for agent in agents:
        kept_path = tmp_path / "agent-state" / agent.id / f"{record['run_id']}.json"
        deadline = time.monotonic() + 10
        while not kept_path.exists():
            assert time.monotonic() < deadline, f"{agent.id} kept no results"
            time.sleep(0.05)
        kept = json.loads(kept_path.read_text())
        for summary in kept["summaries"]:
            rows = tsv(result.results_dir / "agents" / agent.id / STAGE_FILES[summary["stage"]])
            for kind, ops in summary["ops"].items():
                for column in ("ops", "bytes", "errors"):
                    assert int(rows[kind][column]) == ops[column], (agent.id, kind, column)
                compared += ops["ops"]
    return compared


async def run(controller: Controller, during=None):
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            if during is not None:
                nursery.start_soon(during)
            result = await controller.run()
            nursery.cancel_scope.cancel()
    return result


async def running(controller: Controller, index: int = 0) -> None:
    link = controller.links[index]
    await controller.wait_for(lambda: link.latest is not None and link.latest.stage == "workload")


async def test_latency_on_the_link(tmp_path: Path, reliability) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        for proxy in proxies:
            proxy.set(delay_s=0.025)  # 50 ms round trip
        controller = controller_through(run_config("2s"), agents, proxies, tmp_path)
        result = await run(controller)
    assert result.exit_code == 0
    record = json.loads((result.results_dir / "run.json").read_text())
    rtts = [a["clock_rtt_ms"] for a in record["agents"]]
    assert all(45 < rtt < 1000 for rtt in rtts)  # the proxy adds 50 ms; a busy host more
    skew = record["start_skew_ms"]["workload"]
    assert skew < 100  # offsets are symmetric-delay exact; the spread is scheduling (busy host)
    counted = assert_nothing_lost(result, tmp_path, agents)
    reliability(
        "link latency 25 ms each way",
        "run completes; offsets corrected; nothing lost",
        f"exit 0; RTT {min(rtts):.0f}-{max(rtts):.0f} ms; workload start skew "
        f"{skew:.2f} ms; {counted:,} ops compared, 0 lost",
    )


# Stalls shorter and longer than dead_after: test_virtual.py (virtual time, exact bounds).


async def test_a_throttled_link(tmp_path, reliability) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        for proxy in proxies:
            proxy.set(bytes_per_s=10_000)
        controller = controller_through(run_config("2s"), agents, proxies, tmp_path)
        result = await run(controller)
    assert result.exit_code == 0
    assert all(link.machine.disconnects == 0 for link in controller.links)
    gaps = sum(link.stats_sequence.gaps for link in controller.links)
    counted = assert_nothing_lost(result, tmp_path, agents)
    reliability(
        "link throttled to 10 KB/s (trickling)",
        "every frame arrives late but arrives; no agent declared dead; nothing lost (a backlog "
        "beyond the kernel's socket buffers would be absorbed by superseding stats frames)",
        f"exit 0; {gaps} stats frames superseded; 0 disconnects; {counted:,} ops compared, 0 lost",
    )


async def test_a_cut_connection_is_resumed(tmp_path, reliability) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(run_config("4s"), agents, proxies, tmp_path)
        marks: dict[str, float] = {}

        async def cut() -> None:
            link = controller.links[1]
            await running(controller, 1)
            marks["cut"] = trio.current_time()
            proxies[1].cut()
            await controller.wait_for(lambda: link.reconnects > 0)
            marks["resumed"] = trio.current_time()

        result = await run(controller, cut)
    assert result.exit_code == 0
    link = controller.links[1]
    assert link.reconnects == 1 and link.machine.recoveries >= 1
    counted = assert_nothing_lost(result, tmp_path, agents)
    reliability(
        "connection cut mid-workload",
        "controller reconnects and RESUMEs; unACKed messages re-sent; run completes; nothing lost",
        f"exit 0; resumed {(marks['resumed'] - marks['cut']) * 1000:.0f} ms after the "
        f"cut; {counted:,} ops compared, 0 lost",
    )


async def test_corrupted_bytes_are_detected_never_silently_accepted(tmp_path, reliability) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(run_config("4s"), agents, proxies, tmp_path)

        async def corrupt() -> None:
            await running(controller)
            proxies[0].set(corrupt_next_header=True)  # the next frame's length becomes 4 GiB

        result = await run(controller, corrupt)
    assert proxies[0].corrupted == 1
    assert result.exit_code == 1  # failure_policy continue: the other agent completes
    broken, other = controller.links
    assert broken.state is PeerState.FAILED and "exceeds the maximum" in (broken.failure or "")
    assert other.state is PeerState.COMPLETED
    assert "protocol error" in agents[0].log_text()
    # the broken agent aborted its run and kept its results locally; the other lost nothing
    record = json.loads((result.results_dir / "run.json").read_text())
    kept = json.loads((tmp_path / "agent-state" / "a1" / f"{record['run_id']}.json").read_text())
    assert kept["outcome"] == "aborted"
    counted = assert_nothing_lost(result, tmp_path, agents[1:])
    reliability(
        "a frame header corrupted on the way to the agent",
        "the agent refuses it (protocol error), aborts that run keeping its results locally "
        "and is free at once; the controller reports that agent failed, with the reason",
        f'exit 1; a1 failed: "{broken.failure[:48]}..."; a1 kept its results; a2 '
        f"completed, {counted:,} ops compared, 0 lost",
    )
