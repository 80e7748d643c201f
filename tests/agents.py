"""Real agent processes on loopback for end-to-end tests (see ``trio_bench.local``)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from trio_bench.config import AgentAddress, Config, parse_config
from trio_bench.controller import Controller, Display
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
  give_up_after: 6s
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


def quiet_controller(
    cfg: Config, targets: list[AgentAddress], results: Path, **kwargs: object
) -> Controller:
    """An in-process controller that prints nothing and leaves signals alone."""
    return Controller(
        cfg,
        agents=targets,
        results_base=results,
        display=Display("quiet"),
        handle_signals=False,
        **kwargs,
    )  # type: ignore[arg-type]


def controller_process(cfg: Path, agents: list[LocalAgent], results: Path) -> subprocess.Popen[str]:
    """``triobench controller`` as a process (for tests that signal the controller)."""
    command = [sys.executable, "-m", "trio_bench", "controller", str(cfg), "--display", "plain"]
    command += ["--agents", ",".join(a.address for a in agents), "--results-dir", str(results)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_workload(process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Read the controller's plain display until the workload shows operations."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if "workload [" in line and re.search(r"all: [1-9][\d,]* ops/s", line):
            return
        assert time.monotonic() < deadline, "the run never reached the workload"
    raise AssertionError("the controller exited before the workload")
