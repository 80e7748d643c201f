"""Local agent processes on loopback: what ``triobench run``, the tests and the benchmarks use.

Each agent is a separate ``python -m trio_bench agent`` process listening on a free 127.0.0.1
port (port 0); it prints ``... listening on HOST:PORT`` when ready, which is how we learn its
address. Its log (stderr) goes to a file. Like the agents of ``agent --processes``, each ends
with the process that started it, even one killed outright (Linux parent-death signal), so
no local agent outlives ``triobench run``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from trio_bench.agent import SUPERVISOR_ENV
from trio_bench.config import AgentAddress


@attrs.define
class LocalAgent:
    id: str
    address: str
    process: subprocess.Popen[str]
    log: Path

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def as_target(self) -> AgentAddress:
        return AgentAddress(address=self.address, id=self.id)


def start_local_agent(
    agent_id: str,
    log: Path,
    *,
    state_dir: Path,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> LocalAgent:
    """Start one agent process and wait until it listens. ``RuntimeError`` if it does not."""
    log.parent.mkdir(parents=True, exist_ok=True)
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
        str(state_dir),
        "--verbose",
        *args,
    ]
    environment = {k: v for k, v in os.environ.items() if k != "TRIOBENCH_TOKEN"}
    # the agent ends with this process however it ends (SIGKILL included): parent-death signal
    environment[SUPERVISOR_ENV] = str(os.getpid())
    environment.update(env or {})
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environment,
            start_new_session=True,  # a Ctrl-C reaches the controller, which aborts them
        )
    assert process.stdout is not None
    try:
        line = process.stdout.readline().strip()
        if " listening on " not in line:
            raise RuntimeError(f"local agent {agent_id} did not start (see {log})")
        return LocalAgent(agent_id, line.rsplit(" ", 1)[1], process, log)
    except BaseException:  # not started, or interrupted (Ctrl-C) before the caller has it
        process.kill()
        process.wait()
        process.stdout.close()
        raise


def start_local_agents(
    count: int,
    directory: Path,
    *,
    prefix: str = "agent-",
    envs: Sequence[dict[str, str]] | None = None,
) -> list[LocalAgent]:
    """``count`` agents named ``<prefix>1..N``, logs in ``directory/agents/<id>/agent.log``."""
    agents: list[LocalAgent] = []
    try:
        for i in range(1, count + 1):
            agent_id = f"{prefix}{i}"
            agents.append(
                start_local_agent(
                    agent_id,
                    directory / "agents" / agent_id / "agent.log",
                    state_dir=directory / "agent-state",
                    env=envs[i - 1] if envs else None,
                )
            )
    except BaseException:
        stop_local_agents(agents)
        raise
    return agents


def stop_local_agents(agents: Sequence[LocalAgent], timeout: float = 15.0) -> None:
    """SIGTERM (after SIGCONT, in case a test stopped one), wait, then SIGKILL stragglers."""
    for agent in agents:
        if agent.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                agent.signal(signal.SIGCONT)
                agent.process.send_signal(signal.SIGTERM)
    for agent in agents:
        try:
            agent.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            agent.process.kill()
            agent.process.wait()
        finally:
            if agent.process.stdout is not None:
                agent.process.stdout.close()
