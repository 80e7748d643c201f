"""Real agent processes on loopback for end-to-end tests: started on port 0, stopped after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

from trio_bench.config import AgentAddress, parse_config


@attrs.define
class AgentProcess:
    id: str
    address: str
    process: subprocess.Popen[str]
    log: Path

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start_agent(
    tmp_path: Path, agent_id: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> AgentProcess:
    log = tmp_path / f"{agent_id}.log"
    command = [
        sys.executable,
        "-m",
        "trio_bench",
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--id",
        agent_id,
        "--state-dir",
        str(tmp_path / "agent-state"),
        "--verbose",
        *args,
    ]
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if " listening on " not in line:
        process.kill()
        raise RuntimeError(f"agent {agent_id} did not start: {log.read_text()}")
    return AgentProcess(agent_id, line.rsplit(" ", 1)[1], process, log)


def stop(agent: AgentProcess) -> int:
    if agent.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.process.pid, signal.SIGCONT)
            agent.process.send_signal(signal.SIGTERM)
    try:
        return agent.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        agent.process.kill()
        return agent.process.wait()
    finally:
        if agent.process.stdout is not None:
            agent.process.stdout.close()


@contextlib.contextmanager
def local_agents(
    tmp_path: Path, count: int, envs: list[dict[str, str]] | None = None
) -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    try:
        for i in range(count):
            agents.append(start_agent(tmp_path, f"a{i + 1}", env=(envs or [{}] * count)[i]))
        yield agents
    finally:
        for agent in agents:
            stop(agent)


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


def addresses(agents: list[AgentProcess]) -> list[AgentAddress]:
    return [AgentAddress(address=a.address, id=a.id) for a in agents]
