"""Process faults: agents and the controller paused, agents killed at the awkward moments."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import trio

from trio_bench.config import parse_config
from trio_bench.protocol import PeerState

from .agents import controller_process, wait_for_workload
from .test_faults import RUN, controller_through, proxied, run, run_config, tsv

pytestmark = [pytest.mark.slow, pytest.mark.reliability]


async def test_an_agent_paused_shorter_than_dead_after_is_never_disconnected(
    tmp_path: Path, reliability
) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(run_config("3s"), agents, proxies, tmp_path)

        async def pause() -> None:
            link = controller.links[0]
            await controller.wait_for(lambda: link.state is PeerState.RUNNING)
            agents[0].signal(signal.SIGSTOP)
            await trio.sleep(0.8)  # dead_after is 1.2 s
            agents[0].signal(signal.SIGCONT)

        result = await run(controller, pause)
    assert result.exit_code == 0
    assert controller.links[0].machine.disconnects == 0
    reliability(
        "agent SIGSTOP for 0.8 s (dead_after 1.2 s), then SIGCONT",
        "shown stalled, never disconnected; run completes",
        "exit 0; 0 disconnects",
    )


async def test_a_paused_controller_finds_its_agents_alive(tmp_path: Path, reliability) -> None:
    """SIGSTOP the controller for 3x dead_after: on SIGCONT it must not declare anyone dead
    (the agents are patient, and the controller probes before judging)."""
    cfg = tmp_path / "paused.yaml"
    cfg.write_text(
        RUN.format(duration="5s")
        + """
distributed: {stats_interval: 200ms, ping_interval: 200ms, warn_after: 600ms, dead_after: 1200ms,
              probe_timeout: 600ms, start_delay: 300ms, orphan_timeout: 15s}
"""
    )
    async with proxied(tmp_path) as (agents, _proxies):
        process = controller_process(cfg, agents, tmp_path / "results")
        wait_for_workload(process)
        process.send_signal(signal.SIGSTOP)
        await trio.sleep(3.6)
        process.send_signal(signal.SIGCONT)
        _out, err = await trio.to_thread.run_sync(lambda: process.communicate(timeout=60))
    assert process.returncode == 0, err
    (results,) = (tmp_path / "results").iterdir()
    record = json.loads((results / "run.json").read_text())
    assert [a["disconnects"] for a in record["agents"]] == [0, 0]
    probes = [e for e in record["timeline"] if e["event"] == "probe"]
    reliability(
        "controller SIGSTOP for 3.6 s (3x dead_after), then SIGCONT",
        "no agent declared dead: agents wait (orphan timeout 15 s), the controller "
        "probes before judging; run completes",
        f"exit 0; 0 disconnects; {len(probes)} probe(s) answered",
    )


async def kill_when(controller, agent, condition) -> float:
    await controller.wait_for(condition)
    agent.signal(signal.SIGKILL)
    killed = trio.current_time()
    index = [link.id for link in controller.links].index(agent.id)
    await controller.wait_for(lambda: controller.links[index].state is PeerState.FAILED)
    return trio.current_time() - killed


async def test_an_agent_killed_during_prepare(tmp_path: Path, reliability) -> None:
    cfg = parse_config(
        RUN.format(duration="1s").replace("count: 2000", "count: 400000")
        + "distributed: {failure_policy: continue, stats_interval: 20ms, "
        "ping_interval: 200ms, warn_after: 600ms, dead_after: 1200ms, "
        "probe_timeout: 600ms, start_delay: 300ms}\n"
    )
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(cfg, agents, proxies, tmp_path, direct=(0, 1))
        link = controller.links[1]
        detected: list[float] = []

        async def kill() -> None:
            detected.append(
                await kill_when(
                    controller,
                    agents[1],
                    lambda: (
                        link.latest is not None
                        and link.latest.stage == "prepare"
                        and link.latest.done > 0
                    ),
                )
            )

        result = await run(controller, kill)
    assert (result.exit_code, result.status) == (1, "partial")
    assert [link.state for link in controller.links] == [PeerState.COMPLETED, PeerState.FAILED]
    prepared = tsv(result.results_dir / "agents" / "a2" / "prepare.tsv")
    assert int(prepared["put"]["ops"]) > 0  # its last stats are kept, marked partial
    record = json.loads((result.results_dir / "run.json").read_text())
    assert "a2" in record["stages"]["prepare"]["partial_agents"]
    reliability(
        "agent SIGKILL during prepare (failure_policy continue)",
        "detected at once; others complete; its last stats kept, marked partial; exit 1",
        f"detected in {detected[0] * 1000:.0f} ms; exit 1; survivor completed",
    )


async def test_an_agent_killed_while_waiting_at_a_barrier(tmp_path: Path, reliability) -> None:
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(run_config("1s"), agents, proxies, tmp_path, direct=(0,))
        detected: list[float] = []

        async def kill() -> None:
            # once START is out, hold a2's messages back: a2 still looks busy while a1 waits
            await controller.wait_for(lambda: controller.stage == "prepare")
            proxies[1].set(stall_to_controller=True)
            detected.append(
                await kill_when(
                    controller,
                    agents[0],
                    lambda: controller.links[0].state is PeerState.PREPARE_DONE,
                )
            )
            proxies[1].set(stall_to_controller=False)

        result = await run(controller, kill)
    assert result.exit_code == 1
    timeline = [e for e in controller.timeline if e["agent"] == "a2"]
    assert [link.state for link in controller.links] == [PeerState.FAILED, PeerState.COMPLETED], (
        controller.links[1].failure,
        timeline,
    )
    reliability(
        "agent SIGKILL while waiting at the prepare barrier",
        "detected at once; the barrier releases the others; exit 1",
        f"detected in {detected[0] * 1000:.0f} ms; exit 1; the other agent completed",
    )


@pytest.mark.parametrize("delivered", [True, False], ids=["summary-delivered", "summary-lost"])
async def test_an_agent_killed_between_its_final_summary_and_the_ack(
    tmp_path: Path, reliability, delivered: bool
) -> None:
    """The final summary is delivered exactly once, or the agent is reported lost."""
    async with proxied(tmp_path) as (agents, proxies):
        controller = controller_through(run_config("1s"), agents, proxies, tmp_path)
        link = controller.links[0]

        async def kill() -> None:
            # START(cleanup) reaches the agent; nothing after it does (no final ACK) ... (set
            # before the run: the controller writes START the moment the workload is done)
            proxies[0].set(hold_to_agent_after="start:cleanup")
            await controller.wait_for(lambda: link.state is PeerState.WORKLOAD_DONE)
            if delivered:
                # ... and the controller receives the final summary
                await controller.wait_for(lambda: link.state is PeerState.COMPLETED)
            else:
                # ... and the final summary stays in the link
                proxies[0].set(stall_to_controller=True)
                await trio.sleep(1.0)
            assert proxies[0].held_after == "start:cleanup"
            agents[0].signal(signal.SIGKILL)

        result = await run(controller, kill)
    record = json.loads((result.results_dir / "run.json").read_text())
    agent = record["agents"][0]
    if delivered:
        assert result.exit_code == 0 and agent["final_state"] == "completed"
        assert agent["stages"]["cleanup"]["outcome"] == "completed"
        outcome = "summary delivered once: agent completed, exit 0"
    else:
        assert result.exit_code == 1 and agent["final_state"] == "failed" and agent["lost"]
        assert agent["stages"]["workload"]["outcome"] == "completed"  # earlier stages kept
        outcome = "agent reported lost, earlier stages kept, exit 1"
    reliability(
        f"agent SIGKILL after sending its final summary, before the ACK ({'summary arrived' if delivered else 'summary still in the link'})",
        "final summary delivered exactly once, or the agent reported lost",
        outcome,
    )
