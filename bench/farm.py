"""Many lightweight agents in one process, for scale benchmarks and tests.

    python -m bench.farm N [FIRST]

or, from Python, ``with farms(count) as targets: ...``.

Starts N agent servers on free loopback ports in one Trio process and prints one line per
agent, ``<id> <host:port>``, then ``ready``. Runs until SIGTERM/SIGINT. Each agent is a full
AgentServer (handshake, sessions, stats); only the process is shared.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import trio

from trio_bench.agent import AGENT_SWITCH_INTERVAL_S, AgentOptions, AgentServer
from trio_bench.config import AgentAddress

ROOT = Path(__file__).resolve().parent.parent
FARM_SIZE = 200  # agents per farm process: beyond that one process's GIL is the bottleneck


@contextlib.contextmanager
def farms(
    count: int, module: str = "bench.farm", per_process: int = FARM_SIZE
) -> Iterator[list[AgentAddress]]:
    """``count`` agents in ceil(count / per_process) processes of ``module`` (which prints
    ``<id> <host:port>`` per agent, then ``ready``), stopped on exit."""
    processes: list[subprocess.Popen[str]] = []
    targets: list[AgentAddress] = []
    try:
        for first in range(0, count, per_process):
            size = min(per_process, count - first)
            command = [sys.executable, "-m", module, str(size), str(first)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            processes.append(process)
            assert process.stdout is not None
            for line in process.stdout:
                if line.strip() == "ready":
                    break
                agent_id, address = line.split()
                targets.append(AgentAddress(address=address, id=agent_id))
        yield targets
    finally:
        _stop(processes)


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


async def serve(count: int, first: int, state_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(first + 1, first + count + 1):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            server = AgentServer(AgentOptions(agent_id=f"f{i}", state_dir=state_dir))
            await nursery.start(server.serve, listeners)
            print(f"f{i} 127.0.0.1:{port}", flush=True)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def main() -> None:
    count = int(sys.argv[1])
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sys.setswitchinterval(AGENT_SWITCH_INTERVAL_S)
    with tempfile.TemporaryDirectory() as state:
        trio.run(serve, count, first, Path(state))


if __name__ == "__main__":
    main()
