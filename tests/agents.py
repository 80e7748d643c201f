"""Real agent processes on loopback for end-to-end tests (see ``trio_bench.local``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from trio_bench.config import AgentAddress, parse_config
from trio_bench.local import LocalAgent, start_local_agent, stop_local_agents

AgentProcess = LocalAgent


def start_agent(tmp_path: Path, agent_id: str, *, env: dict[str, str] | None = None) -> LocalAgent:
    return start_local_agent(
        agent_id, tmp_path / f"{agent_id}.log", state_dir=tmp_path / "agent-state", env=env
    )


def stop(agent: LocalAgent) -> None:
    stop_local_agents([agent])


@contextlib.contextmanager
def local_agents(
    tmp_path: Path, count: int, envs: list[dict[str, str]] | None = None
) -> Iterator[list[LocalAgent]]:
    agents: list[LocalAgent] = []
    try:
        for i in range(count):
            agents.append(start_agent(tmp_path, f"a{i + 1}", env=(envs or [{}] * count)[i]))
        yield agents
    finally:
        stop_local_agents(agents)


FAST = """
distributed:
  stats_interval: 200ms
  ping_interval: 200ms
  warn_after: 600ms
  dead_after: 1200ms
  probe_timeout: 600ms
  give_up_after: 20s
  start_delay: 300ms
  resend_interval: 500ms
  orphan_timeout: 10s
  failure_policy: {policy}
"""


def config(body: str, policy: str = "abort"):
    """A config with fast liveness settings for tests; ``body`` gives target/workload/..."""
    return parse_config(body + FAST.format(policy=policy))


def addresses(agents: list[LocalAgent]) -> list[AgentAddress]:
    return [agent.as_target() for agent in agents]
