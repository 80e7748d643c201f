"""Liveness, recovery, resume and abort scenarios in virtual time (see ``tests/virtual.py``).

The real controller and real agents (everything but the storage) in one process: a scenario
that lasts a minute on the wall clock runs in milliseconds, and no bound depends on how busy
the machine is. Real-process and real-TCP versions of the most important ones stay in
test_processes.py and test_faults.py.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from trio_bench.protocol import PeerState

from .agents import config
from .virtual import virtual_agents, virtual_controller

pytestmark = pytest.mark.reliability

RUN = """
target: null://
duration: 5s
concurrency: 1
prepare:
  ensure_objects: [{{base_uri: data/, count: {count}, object_size: 4KiB}}]
  cleanup: true
workload: [{{op: get, path: "data/*"}}]
"""


def run_config(count: int = 1000, policy: str = "continue", **distributed: int):
    cfg = config(RUN.format(count=count), policy)
    return attrs.evolve(cfg, distributed=attrs.evolve(cfg.distributed, **distributed))


async def test_a_clean_run_in_virtual_time(tmp_path: Path, autojump_clock) -> None:
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        result = await controller.run()
    assert (result.exit_code, result.status) == (0, "completed"), result.message
    for link in controller.links:
        assert link.state is PeerState.COMPLETED
        assert link.summaries["prepare"].done == 1000
        assert link.summaries["workload"].ops["get"].ops == 5000  # 5 s at 1000/s
        assert link.machine.disconnects == 0


async def during(controller, action) -> object:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(action)
        result = await controller.run()
        nursery.cancel_scope.cancel()
    return result


@pytest.mark.parametrize("stall_s", [0.9, 1.5], ids=["shorter-than-dead_after", "longer"])
async def test_a_stall_is_stalled_then_probed_never_dead_before_the_probe(
    tmp_path: Path, autojump_clock, stall_s: float, reliability
) -> None:
    """warn_after 600 ms, dead_after 1.2 s, probe 600 ms: a 0.9 s stall is only "stalled";
    a 1.5 s stall is probed at 1.2 s and answered within the probe window (the frames held
    back arrive at 1.5 s): never declared disconnected either. Nothing lost."""
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        link = controller.links[1]

        async def stall() -> None:
            await controller.wait_for(lambda: link.state is PeerState.RUNNING)
            network.link(agents[1].address).stall("to_controller")
            await trio.sleep(stall_s)
            network.link(agents[1].address).stall("to_controller", False)

        result = await during(controller, stall)
    assert result.exit_code == 0, result.message  # type: ignore[attr-defined]
    events = [e["event"] for e in controller.timeline if e["agent"] == "v2"]
    assert "stalled" in events and "unstalled" in events
    assert ("probe" in events) == (stall_s > 1.2)
    assert link.machine.disconnects == 0
    assert link.summaries["workload"].ops["get"].ops == 5000
    reliability(
        f"agent's frames held back {stall_s:g} s mid-run (warn 0.6 s, dead 1.2 s, probe 0.6 s; "
        "virtual time)",
        "stalled, "
        + ("probed, " if stall_s > 1.2 else "")
        + "never declared disconnected; nothing lost",
        f"exit 0; events {sorted(set(events) & {'stalled', 'unstalled', 'probe'})}; "
        "0 disconnects; 5,000 of 5,000 workload ops",
    )


async def test_silence_past_the_probe_disconnects_and_any_frame_recovers(
    tmp_path: Path, autojump_clock, reliability
) -> None:
    """Silent past dead_after + probe_timeout (1.8 s): disconnected; the frames that were held
    back recover it to the state they imply, and the run completes with nothing lost."""
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        link = controller.links[1]

        detection: list[float] = []

        async def stall() -> None:
            await controller.wait_for(lambda: link.state is PeerState.RUNNING)
            network.link(agents[1].address).stall("to_controller")
            t0 = trio.current_time()
            await controller.wait_for(lambda: link.state is PeerState.DISCONNECTED)
            detection.append(trio.current_time() - t0)
            network.link(agents[1].address).stall("to_controller", False)

        result = await during(controller, stall)
    assert result.exit_code == 0, result.message  # type: ignore[attr-defined]
    assert (link.machine.disconnects, link.machine.recoveries) == (1, 1)
    # never before dead_after + the probe window after the last frame (which came at most a
    # ping interval before the stall); at most two ping intervals late (when the silence is
    # noticed, when the probe's window is checked)
    assert 1.2 + 0.6 - 0.2 <= detection[0] <= 1.2 + 0.6 + 0.4, detection
    assert link.summaries["workload"].ops["get"].ops == 5000
    reliability(
        "agent silent past dead_after + probe_timeout, then its frames arrive (virtual time)",
        "disconnected, recovered by its next frame; run completes, nothing lost",
        f"exit 0; disconnected {detection[0]:.2f} s after the silence began (dead_after 1.2 s "
        "+ probe 0.6 s); 1 recovery; 5,000 of 5,000 workload ops",
    )


@pytest.mark.parametrize("stage", ["prepare", "workload", "cleanup"])
async def test_a_cut_connection_is_resumed_in_every_stage(
    tmp_path: Path, autojump_clock, stage: str, reliability
) -> None:
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(3000), network, agents, tmp_path)
        link = controller.links[0]

        async def cut() -> None:
            await controller.wait_for(
                lambda: link.latest is not None and link.latest.stage == stage
            )
            network.cut(agents[0].address)

        result = await during(controller, cut)
    assert result.exit_code == 0, result.message  # type: ignore[attr-defined]
    assert link.reconnects == 1 and link.machine.recoveries == 1
    assert link.summaries["prepare"].done == 3000
    assert link.summaries["workload"].ops["get"].ops == 5000
    assert len(network.links[agents[0].address]) == 2
    reliability(
        f"connection cut during {stage} (virtual time)",
        "reconnect, RESUME, unACKed messages re-sent; run completes, nothing lost",
        "exit 0; 1 reconnect; prepare 3,000 of 3,000 objects, 5,000 of 5,000 workload ops",
    )


async def test_a_connection_that_keeps_breaking_is_resumed_each_time(
    tmp_path: Path, autojump_clock
) -> None:
    async with virtual_agents(tmp_path, 1) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        link = controller.links[0]

        async def cut_often() -> None:
            await controller.wait_for(lambda: link.state is PeerState.PREPARING)
            while not link.machine.terminal:
                await trio.sleep(1.3)
                if not link.machine.terminal and link.state is not PeerState.DISCONNECTED:
                    network.cut(agents[0].address)

        result = await during(controller, cut_often)
    assert result.exit_code == 0, result.message  # type: ignore[attr-defined]
    assert link.reconnects >= 4
    assert link.summaries["workload"].ops["get"].ops == 5000


async def test_an_agent_that_dies_is_lost_and_the_others_complete(
    tmp_path: Path, autojump_clock
) -> None:
    async with virtual_agents(tmp_path, 3) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        link = controller.links[2]

        async def kill() -> None:
            await controller.wait_for(lambda: link.state is PeerState.RUNNING)
            network.kill(agents[2].address)

        result = await during(controller, kill)
    assert (result.exit_code, result.status) == (1, "partial")  # type: ignore[attr-defined]
    assert [lk.state for lk in controller.links] == [PeerState.COMPLETED] * 2 + [PeerState.FAILED]
    assert "refused" in (link.failure or "")


async def test_an_agent_unreachable_but_not_refusing_is_given_up_after_give_up_after(
    tmp_path: Path, autojump_clock
) -> None:
    """The connection breaks and every reconnection hangs (a host that vanished): the agent is
    lost give_up_after (6 s here) later, not sooner, and the run goes on without it."""
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        link = controller.links[1]
        lost_after: list[float] = []

        async def vanish() -> None:
            await controller.wait_for(lambda: link.state is PeerState.RUNNING)

            async def hang(host: str, port: int) -> trio.abc.Stream:
                await trio.sleep_forever()
                raise AssertionError

            link.connect = hang
            network.cut(agents[1].address)
            t0 = trio.current_time()
            await controller.wait_for(lambda: link.state is PeerState.FAILED)
            lost_after.append(trio.current_time() - t0)

        result = await during(controller, vanish)
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert 6.0 <= lost_after[0] < 9.0
    assert controller.links[0].state is PeerState.COMPLETED


PHASES = {
    # phase: condition on the controller under which to abort
    "configuring": lambda c: any(link.state is PeerState.VALIDATING for link in c.links),
    "waiting for start": lambda c: (
        c.stage == "prepare" and all(link.state is PeerState.READY for link in c.links)
    ),
    "prepare": lambda c: all(
        link.latest is not None and link.latest.stage == "prepare" for link in c.links
    ),
    "workload": lambda c: all(
        link.latest is not None and link.latest.stage == "workload" for link in c.links
    ),
    "cleanup": lambda c: all(
        link.latest is not None and link.latest.stage == "cleanup" for link in c.links
    ),
    "finishing": lambda c: any(link.machine.terminal for link in c.links),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_abort_in_every_phase_then_the_agents_serve_the_next_run(
    tmp_path: Path, autojump_clock, phase: str, reliability
) -> None:
    condition = PHASES[phase]
    cfg = run_config(3000, policy="abort", start_delay=2_000_000_000)
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(cfg, network, agents, tmp_path)

        async def abort() -> None:
            await controller.wait_for(lambda: condition(controller))
            controller.request_abort(f"test abort in {phase}", user=True)

        result = await during(controller, abort)
        assert (result.exit_code, result.status) == (130, "aborted")  # type: ignore[attr-defined]
        finals = {link.state for link in controller.links}
        if phase == "finishing":
            assert finals <= {PeerState.ABORTED, PeerState.COMPLETED}
        else:
            assert finals == {PeerState.ABORTED}
        if phase in ("prepare", "workload", "cleanup"):
            # cleanup after the abort removed everything each agent created
            for link in controller.links:
                cleanup = link.summaries["cleanup"]
                assert cleanup.outcome == "completed" and cleanup.done == cleanup.total
        for server in network.servers.values():
            await trio.testing.wait_all_tasks_blocked()
            assert server.session is None  # free for the next run
        again = virtual_controller(run_config(10), network, agents, tmp_path)
        second = await again.run()
    assert second.exit_code == 0, second.message
    reliability(
        f"user abort while {phase} (virtual time)",
        "every agent confirms (ABORTED, or COMPLETED if it finished first), cleans up what the "
        "run created, and serves the next run",
        f"exit 130; agents {sorted(s.value for s in finals)}; next run exit 0",
    )


async def test_an_agent_whose_controller_vanishes_aborts_at_the_orphan_timeout(
    tmp_path: Path, autojump_clock
) -> None:
    """The controller stops without a word (its link cut, never reconnecting): the agent aborts
    the run orphan_timeout (10 s) after the last frame, keeps its results and serves again."""
    async with virtual_agents(tmp_path, 1) as (network, agents):
        controller = virtual_controller(run_config(), network, agents, tmp_path)
        server = network.servers[agents[0].address]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controller.run)
            await controller.wait_for(lambda: controller.links[0].state is PeerState.RUNNING)
            nursery.cancel_scope.cancel()  # the controller is gone, its connection with it
        session = server.session
        assert session is not None
        t0 = trio.current_time()
        while server.session is not None:  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.5)
        waited = trio.current_time() - t0
        assert 9.0 <= waited <= 12.0, waited
        assert session.outcome == "aborted"
        assert session.endpoint.abort_reason.startswith("controller silent")
        again = virtual_controller(run_config(10), network, agents, tmp_path)
        assert (await again.run()).exit_code == 0


async def test_a_stage_that_fails_ends_the_run_with_the_agents_error(
    tmp_path: Path, autojump_clock
) -> None:
    async with virtual_agents(tmp_path, 2) as (network, agents):
        controller = virtual_controller(run_config(policy="abort"), network, agents, tmp_path)
        server = network.servers[agents[0].address]
        link = controller.links[0]

        async def fail_its_workload() -> None:
            await controller.wait_for(lambda: link.state is PeerState.PREPARE_DONE)
            session = server.session
            assert session is not None and session.engine is not None
            session.engine.fail_stage = "workload"  # type: ignore[attr-defined]

        result = await during(controller, fail_its_workload)
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert link.state is PeerState.FAILED and link.failure_code == "stage_failed"
    assert controller.links[1].state is PeerState.ABORTED  # failure_policy: abort


async def test_agents_whose_statistics_flow_are_pinged_every_five_intervals(
    tmp_path: Path, autojump_clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STATS every interval already show an agent alive: during a 30 s workload (STATS and
    ping_interval 200 ms) it is PINGed every 5 ping_intervals (clock samples), not every one;
    the offsets stay measured and a stall is still noticed (the other tests here)."""
    from trio_bench.controller._link import BUSY_PING_EVERY, AgentLink

    pings: list[tuple[str, str]] = []  # (agent, the controller's stage) per PING sent
    original = AgentLink.ping

    def counted(self: AgentLink) -> None:
        pings.append((self.id, controller.stage))
        original(self)

    monkeypatch.setattr(AgentLink, "ping", counted)
    async with virtual_agents(tmp_path, 2) as (network, agents):
        cfg = config(RUN.format(count=100).replace("duration: 5s", "duration: 30s"), "abort")
        controller = virtual_controller(cfg, network, agents, tmp_path)
        result = await controller.run()
    assert result.exit_code == 0, result.message
    expected = 30 / (BUSY_PING_EVERY * cfg.distributed.ping_interval / 1e9)  # 30, not 150
    for link in controller.links:
        workload = sum(1 for agent, stage in pings if agent == link.id and stage == "workload")
        assert expected - 2 <= workload <= expected + 3
        assert link.offset_ns is not None
