"""Controller and agents in one process, in Trio's virtual time: no sockets, no threads.

The real ``Controller`` and real ``AgentServer``s (handshake, endpoints, sessions, timers,
transport) talk over in-memory streams through a ``Network`` that can stall, cut or refuse a
link; the agents' stages are ``VirtualEngine`` stand-ins that take virtual time instead of
doing I/O. With ``autojump_clock`` a scenario of minutes (a stall past dead_after, a probe, a
reconnect, an orphan timeout) runs in milliseconds, and nothing depends on the machine's speed.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_bench.agent import AgentServer
from trio_bench.agent._server import AgentOptions
from trio_bench.clock import RunClock
from trio_bench.config import AgentAddress, Config
from trio_bench.controller import Controller, Display
from trio_bench.engine import StageFailed
from trio_bench.engine._stage import Progress
from trio_bench.protocol import OpStats, StageSummary

RATE = 1000  # operations per virtual second, per agent
LATENCY_BUCKET = 600  # every virtual operation lands in this histogram bucket


def virtual_clock() -> RunClock:
    """A RunClock that follows Trio's clock (virtual under autojump_clock)."""
    return RunClock(perf_ns=lambda: int(trio.current_time() * 1e9))


# --- the agents' stand-in engine -------------------------------------------------------------


class _Worker:
    started_perf_ns = 0


class VirtualStage:
    """A stage that takes virtual time: ``RATE`` operations per second until its duration (the
    workload) or its object count (prepare, cleanup) is reached."""

    def __init__(self, engine: VirtualEngine, name: str, *, total: int, duration_ns: int) -> None:
        self.engine = engine
        self.name = name
        self.clock = engine.clock
        self.total = total
        self.duration_ns = duration_ns
        self.kind = {"prepare": "put", "workload": "get", "cleanup": "delete"}[name]
        self.workers = [_Worker()]
        self.start_perf_ns = 0
        self.end_perf_ns = 0

    def _perf(self) -> int:
        return int(trio.current_time() * 1e9)

    async def run(self, start_at_ns: int) -> None:
        await trio.sleep(max(0, start_at_ns - self.clock.now_ns()) / 1e9)
        self.start_perf_ns = self.workers[0].started_perf_ns = self._perf()
        try:
            if self.engine.fail_stage == self.name:
                await trio.sleep(0.5)
                raise StageFailed(f"{self.name}: the virtual storage failed")
            await trio.sleep(self.duration_ns / 1e9)
        finally:
            self.end_perf_ns = self._perf()

    def _ops(self) -> int:
        if not self.start_perf_ns:
            return 0
        end = self.end_perf_ns or self._perf()
        ops = (end - self.start_perf_ns) * RATE // 1_000_000_000
        return min(ops, self.total) if self.total else ops

    def progress(self) -> Progress:
        n = self._ops()
        now = self._perf()
        return Progress(
            snapshot={},
            done=n if self.total else 0,
            total=self.total,
            warmup=False,
            elapsed_ns=now - self.start_perf_ns if self.start_perf_ns else 0,
            error_codes={},
            cpu_user_ns=0,
            cpu_system_ns=0,
            at_ns=self.clock.wall_from_perf(now),
        )

    def wire_ops(self) -> dict[str, OpStats]:
        n = self._ops()
        hist = ((LATENCY_BUCKET, n),) if n else ()
        stats = OpStats.from_pairs(
            hist, bytes=n * 4096, errors=0, sum_ns=n * 100_000, max_ns=100_000
        )
        return {self.kind: stats} if n else {}

    def started_at_ns(self) -> int:
        return self.clock.wall_from_perf(self.start_perf_ns)

    def summary(self, outcome: str) -> StageSummary:
        n = self._ops()
        end = self.end_perf_ns or self._perf()
        return StageSummary(
            stage=self.name,
            outcome=outcome,
            started_at_ns=self.clock.wall_from_perf(self.start_perf_ns),
            ended_at_ns=self.clock.wall_from_perf(end) if self.start_perf_ns else 0,
            measured_ns=end - self.start_perf_ns if self.start_perf_ns else 0,
            done=n if self.total else 0,
            total=self.total,
            ops=self.wire_ops(),
            error_samples={},
            error_codes={},
            message="",
            cpu_user_ns=0,
            cpu_system_ns=0,
            sizes={},
        )


class VirtualEngine:
    """What a Session needs of ``trio_bench.engine.Engine``, in virtual time. Objects are the
    config's prepare count; prepare and cleanup take count / RATE seconds."""

    def __init__(self, config: Config, *, clock: RunClock, **_: Any) -> None:
        self.config = config
        self.clock = clock
        self.environment = {"hostname": "virtual"}
        self.objects = sum(s.count for s in config.prepare.ensure_objects)
        self.fail_stage = ""
        self.backend = self

    def describe(self) -> str:
        return "virtual:// (no I/O, virtual time)"

    async def preflight(self) -> list[str]:
        await trio.sleep(0.01)
        return ["virtual target reachable"]

    def _stage(self, name: str, total: int, duration_ns: int) -> VirtualStage:
        return VirtualStage(self, name, total=total, duration_ns=duration_ns)

    def prepare_stage(self) -> VirtualStage:
        return self._stage("prepare", self.objects, self.objects * 1_000_000_000 // RATE)

    def workload_stage(self) -> VirtualStage:
        return self._stage("workload", 0, self.config.duration)

    def cleanup_stage(self) -> VirtualStage:
        return self._stage("cleanup", self.objects, self.objects * 1_000_000_000 // RATE)

    async def after_prepare(self) -> None:
        pass

    def close(self) -> None:
        pass


# --- the network -----------------------------------------------------------------------------


class Link:
    """One connection, controller <-> agent, with faults: ``stall`` holds bytes in a direction
    (they are delivered when it ends), ``cut`` breaks the connection."""

    def __init__(self) -> None:
        self.stalled = {"to_agent": False, "to_controller": False}
        self._moving = trio.Event()
        self._moving.set()
        self.cancel = trio.CancelScope()

    def stall(self, direction: str, on: bool = True) -> None:
        self.stalled[direction] = on
        if not on:
            self._moving.set()

    async def _relay(self, source: trio.abc.Stream, sink: trio.abc.Stream, direction: str) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                while self.stalled[direction]:
                    self._moving = trio.Event()
                    await self._moving.wait()
                if not data:
                    await sink.send_eof()  # type: ignore[attr-defined]
                    return
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class Network:
    """Virtual agents by address; ``connect`` is the controller's connect function."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.servers: dict[str, AgentServer] = {}
        self.links: dict[str, list[Link]] = {}
        self.down: set[str] = set()  # connection refused (no process listens)

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        address = f"{host}:{port}"
        server = self.servers.get(address)
        if server is None or address in self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        controller_end, relay_c = trio.testing.memory_stream_pair()
        relay_a, agent_end = trio.testing.memory_stream_pair()
        link = Link()
        self.links.setdefault(address, []).append(link)

        async def carry() -> None:
            with link.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(link._relay, relay_c, relay_a, "to_agent")
                    nursery.start_soon(link._relay, relay_a, relay_c, "to_controller")
            for end in (relay_c, relay_a):
                await trio.aclose_forcefully(end)

        self.nursery.start_soon(carry)
        self.nursery.start_soon(server.handle, agent_end)
        return controller_end

    def link(self, address: str) -> Link:
        return self.links[address][-1]

    def cut(self, address: str) -> None:
        """Break the current connection (both ends see it closed, mid-stream)."""
        self.link(address).cancel.cancel()

    async def add_agent(self, agent_id: str, state_dir: Path, **options: Any) -> AgentAddress:
        address = f"10.0.0.{len(self.servers) + 1}:7761"
        server = AgentServer(
            AgentOptions(
                agent_id=agent_id,
                state_dir=state_dir,
                engine=VirtualEngine,
                clock=virtual_clock(),
                **options,
            )
        )
        await self.nursery.start(server.serve)
        self.servers[address] = server
        return AgentAddress(address=address, id=agent_id)

    def kill(self, address: str) -> None:
        """The agent process is gone: connections break, new ones are refused."""
        self.down.add(address)
        for link in self.links.get(address, []):
            link.cancel.cancel()


@contextlib.asynccontextmanager
async def virtual_agents(
    tmp_path: Path, count: int, **options: Any
) -> AsyncIterator[tuple[Network, list[AgentAddress]]]:
    async with trio.open_nursery() as nursery:
        network = Network(nursery)
        addresses = [
            await network.add_agent(f"v{i + 1}", tmp_path / "agent-state", **options)
            for i in range(count)
        ]
        yield network, addresses
        nursery.cancel_scope.cancel()


def virtual_controller(
    cfg: Config, network: Network, agents: Sequence[AgentAddress], tmp_path: Path, **kw: Any
) -> Controller:
    return Controller(
        cfg,
        agents=agents,
        results_base=tmp_path / "results",
        display=Display("quiet"),
        handle_signals=False,
        connect=network.connect,
        clock=virtual_clock(),
        **kw,
    )
