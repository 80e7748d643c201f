"""One run, seen from the controller: connect, configure, measure clocks, then each stage
behind a barrier with a coordinated start, then final results, ACKs and goodbyes.

Exit codes: 0 every agent completed; 1 the run finished but some agent failed or was lost
(partial results written); 2 the configuration was refused; 3 the run could not start (agent
unreachable, authentication or version mismatch, preflight failed); 130 aborted by the user.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from trio_bench import __version__
from trio_bench.clock import RunClock
from trio_bench.config import AgentAddress, Config, config_to_dict, for_agent
from trio_bench.environment import host_facts
from trio_bench.protocol import (
    PROTOCOL_VERSION,
    STAGES,
    Abort,
    Configure,
    PeerEvent,
    PeerState,
    Start,
    Stats,
    to_agent_clock,
    to_controller_clock,
)
from trio_bench.transport import ReadPoller, poller_available

from ._aggregate import Aggregator, IntervalRow, Sample, WindowRows
from ._display import AgentView, Display, RunView, progress_bar
from ._link import AgentLink, Connect, LinkFailed
from ._results import (
    AgentStageResult,
    ResultsUnusable,
    ResultsWriter,
    new_results_dir,
    unusable,
)

log = logging.getLogger("triobench.controller")

EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_START, EXIT_ABORTED = 0, 1, 2, 3, 130
ABORT_WAIT_S = 10.0  # how long agents get to confirm an ABORT with their partial results
GOODBYE_WAIT_S = 2.0
DISPLAY_EVERY_S = 0.9  # live view redraws / plain lines at most about once a second
CLOCK_SYNC_PINGS = 8
CLOCK_SYNC_GAP_S = 0.01

T = TypeVar("T")


class LoopLag:
    """Whether the controller keeps up with its agents: a task that sleeps a fixed period wakes
    late when the event loop has more work than the process's one core can do. Past
    ``SATURATED_S`` the run's timeline (and the display) says so once, and again when it has
    caught up (under a quarter of that)."""

    SATURATED_S = 1.0

    def __init__(self) -> None:
        self.behind = False
        self.worst_s = 0.0

    def observe(self, late_s: float) -> tuple[str, str] | None:
        """How late one wake-up was; an (event, detail) for the timeline when that changes
        whether the controller keeps up."""
        self.worst_s = max(self.worst_s, late_s)
        if not self.behind and late_s >= self.SATURATED_S:
            self.behind = True
            return (
                "saturated",
                f"the controller's event loop ran {late_s:.1f} s late: it has more agents or "
                "frames than one core handles, so the live view, perf_log windows and "
                "liveness lag (raise stats_interval, or split the agents over controllers)",
            )
        if self.behind and late_s < self.SATURATED_S / 4:
            self.behind = False
            return ("caught up", f"the event loop is on time again ({late_s * 1000:.0f} ms late)")
        return None


class StartupError(Exception):
    def __init__(self, lines: list[str], exit_code: int = EXIT_START) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
        self.exit_code = exit_code


@attrs.define
class RunResult:
    exit_code: int
    status: str
    results_dir: Path
    message: str = ""
    errors: list[str] = attrs.Factory(list)  # why the run could not start, one line each
    started: bool = True  # False: it never started (then ``errors`` says why)


def cpu_use(user_ns: int, system_ns: int, window_ns: int) -> dict[str, float]:
    """An agent's CPU time in a window, and the cores it kept busy on average."""
    return {
        "cpu_user_s": round(user_ns / 1e9, 3),
        "cpu_system_s": round(system_ns / 1e9, 3),
        "cpu_cores": round((user_ns + system_ns) / window_ns, 2) if window_ns else 0.0,
    }


class Controller:
    def __init__(
        self,
        config: Config,
        *,
        agents: Sequence[AgentAddress],
        token: bytes | None = None,
        results_base: str | Path = "results",
        display: Display | None = None,
        source: str = "config",
        handle_signals: bool = True,
        run_id: str | None = None,
        results_dir: Path | None = None,
        connect: Connect = trio.open_tcp_stream,
        local_agents: int | None = None,
        tokens: Mapping[str, bytes] | None = None,
        started: Collection[str] = (),
        clock: RunClock | None = None,
    ) -> None:
        """``connect(host, port)`` opens a stream to an agent (TCP by default; tests pass one
        that returns in-memory streams). ``local_agents``: the agents are the throwaway local
        ones of ``triobench run`` (config.yaml as run then names no agents). ``tokens``: a token
        per agent address, where it differs from ``token`` (agents started over SSH).
        ``started``: addresses of agents started for this run (over SSH), which config.yaml
        as run does not list (the entries that started them are in it). ``clock``: the
        controller's clock (tests in virtual time pass one that follows Trio's)."""
        self.config = config
        self.settings = config.distributed
        self.source = source
        self.local_agents = local_agents
        self.started_addresses = frozenset(started)
        self.display = display or Display("quiet")
        self.handle_signals = handle_signals
        self.clock = clock or RunClock()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.results_base = results_base
        self.results_dir = results_dir
        self._change = trio.lowlevel.ParkingLot()  # wakes _wait_until's waiters
        self.timeline: list[dict[str, Any]] = []
        self.lag = LoopLag()  # whether this process keeps up with its agents
        self.links = [
            AgentLink(
                index=i,
                address=agent.address,
                agent_id=agent.id,
                clock=self.clock,
                token=(tokens or {}).get(agent.address, token),
                notify=self._changed,
                record=self._record,
                connect=connect,
                on_sample=self._sample,
                run_id=self.run_id,
                reconnect_window_s=self.settings.give_up_after / 1e9,
            )
            for i, agent in enumerate(agents)
        ]
        self._by_id: dict[str, AgentLink] = {}  # for _host_of, per reading
        self._stage = "connecting"
        self.abort_reason: str | None = None
        self.user_abort = False
        self.skew_ms: dict[str, float] = {}
        self.stage_facts: dict[str, dict[str, Any]] = {}
        self.aggregator = Aggregator(self.settings.stats_interval, host_of=self._host_of)
        self.errors: list[str] = []
        self._t0 = 0.0
        self._main_scope: trio.CancelScope | None = None
        self._results: ResultsWriter | None = None
        self.results_failure: str | None = None  # the first write to results/ that failed
        self._started_wall = time.time()
        self._exit_code = EXIT_OK
        self._status = "running"
        self._in_progress: tuple[str, list[AgentLink]] | None = None
        self.started = False  # a START was sent: the run is under way
        self.abort_cleanup: str | None = None  # what the cleanup after an abort did
        self._stage_at_ns = 0  # the current stage's coordinated start (controller clock)
        self._last_view = float("-inf")
        self._failed = trio.Event()  # an agent's state became failed (``_policy_watch``)

    # -- notifications and the timeline

    def _changed(self) -> None:
        if self._change:  # every message calls this: nothing to do when no one waits
            self._change.unpark_all()

    @property
    def stage(self) -> str:
        """What the run is doing: connecting, validating, clock sync, a stage name, ..."""
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        self._stage = value
        self._changed()

    def _all_terminal(self) -> bool:
        return all(link.machine.terminal for link in self.links)

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._change.park()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; re-checked whenever any agent's state changes
        (for embedding the controller, and for tests that act at a precise phase)."""
        await self._wait_until(condition)

    def _elapsed(self) -> float:
        return trio.current_time() - self._t0 if self._t0 else 0.0

    def _record(self, agent: str, event: str, detail: str) -> None:
        if event == PeerState.FAILED.value:
            self._failed.set()
        self.timeline.append(
            {"t_s": round(self._elapsed(), 3), "agent": agent, "event": event, "detail": detail}
        )
        if not self.started and event in ("failed", "disconnected", "aborted"):
            return  # a failed start is reported once, at the end, one line per cause
        if event in (
            "disconnected",
            "failed",
            "stalled",
            "unstalled",
            "resumed",
            "aborted",
            "probe",
            "saturated",
            "caught up",
        ) or (agent != "controller" and event in ("ready", "completed")):
            self.display.event(f"[{self._elapsed():7.1f}s] {agent}: {event} ({detail})")

    # -- the run

    async def run(self) -> RunResult:
        """The whole run. ``ResultsUnusable`` (before any agent is contacted) if the results
        directory cannot be created and written."""
        self._t0 = trio.current_time()
        self.aggregator.run_start_ns = self.clock.now_ns()
        return await self._run()

    async def _run(self) -> RunResult:
        if self.results_dir is None:
            self.results_dir = new_results_dir(self.results_base, self.config.name or "run")
        self._results = ResultsWriter(self.results_dir)
        try:
            self._results.write_config(*self._config_as_run(), self.source)
        except OSError as exc:
            raise ResultsUnusable(unusable(self.results_dir, exc)) from None
        self.display.start()
        message = ""
        try:
            async with trio.open_nursery() as nursery:
                if self.handle_signals:
                    nursery.start_soon(self._signals)
                if poller_available():  # one task reads every agent's socket
                    poller = ReadPoller()
                    for link in self.links:
                        link.poller = poller
                    nursery.start_soon(poller.run)
                try:
                    message = await self._orchestrate(nursery)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self.started:  # the final state of every agent, not the last progress
                self.stage = "done"
                self.display.update(self._view())
            self.display.stop()
            self._write_run_json()
            self._write(self._results.close, always=True)
            if not self.started:
                self._results.keep_only_run_json()
        if self.results_failure is not None:
            message = f"{message}; {self.results_failure}" if message else self.results_failure
        return RunResult(
            self._exit_code, self._status, self.results_dir, message, self.errors, self.started
        )

    async def _orchestrate(self, nursery: trio.Nursery) -> str:
        with trio.CancelScope() as scope:
            self._main_scope = scope
            try:
                await self._connect_all(nursery)
                await self._configure_all(nursery)
                await self._sync_clocks()
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._policy_watch)
                for stage in STAGES:
                    await self._run_stage(stage)
                    if self.abort_reason:
                        break
                if not self.abort_reason:
                    self.stage = "finishing"
                    await self._wait_until(
                        lambda: all(link.machine.terminal for link in self.links)
                    )
            except StartupError as exc:
                # One line per cause, each naming the agent at fault (printed once, at the
                # end); the healthy agents are "not started" because of them, not failed.
                self.errors.extend(exc.lines)
                at_fault = [link.id for link in self.links if link.failure is not None]
                healthy = [link for link in self.links if link.failure is None]
                because = f"{', '.join(at_fault) or 'the run'} could not start"
                for link in healthy:
                    link.not_started = because
                    if link.state is PeerState.CONNECTING:  # connected, never configured
                        link.apply(PeerEvent.ABORT_SENT, because)
                if healthy:
                    names = ", ".join(link.id for link in healthy)
                    self.errors.append(f"not started: {names} ({because})")
                self._exit_code = exc.exit_code
                self._status = "failed"
                if any(link.machine.live for link in self.links):
                    await self._abort_all(f"the run could not start: {because}")
                await self._goodbye_all("could not start")
                return "; ".join(exc.lines)
        if self.abort_reason:
            await self._abort_all(self.abort_reason)
            if self._in_progress is not None:
                self._write_stage(*self._in_progress)
        await self._goodbye_all("run finished")
        self._tick(final=True)  # every window still open, with whatever arrived at the end
        return self._decide()

    def _decide(self) -> str:
        if self.results_failure is not None and not self.user_abort:
            self._exit_code, self._status = EXIT_PARTIAL, "failed"
            return "failed: results could not be written"
        states = [link.state for link in self.links]
        cleanup = f"; {self.abort_cleanup}" if self.abort_cleanup else ""
        if self.user_abort:
            self._exit_code, self._status = EXIT_ABORTED, "aborted"
            return f"aborted: {self.abort_reason}{cleanup}"
        if all(state is PeerState.COMPLETED for state in states):
            self._exit_code, self._status = EXIT_OK, "completed"
            return "completed"
        self._exit_code, self._status = EXIT_PARTIAL, "partial"
        lost = [
            f"{link.id}: {link.failure or link.state.value}"
            for link in self.links
            if link.state is not PeerState.COMPLETED
        ]
        return "partial: " + "; ".join(lost) + cleanup

    # -- start-up

    async def _connect_all(self, nursery: trio.Nursery) -> None:
        self.stage = "connecting"
        timeout = self.settings.connect_timeout / 1e9
        failures: list[str] = []

        async def connect(link: AgentLink) -> None:
            try:
                await link.open(nursery, timeout)
            except LinkFailed as exc:
                failures.append(str(exc))
                link.failure = str(exc)
                link.failure_code = exc.code
                link.apply(PeerEvent.CONNECTION_LOST, str(exc))

        async with trio.open_nursery() as connecting:
            for link in self.links:
                connecting.start_soon(connect, link)
        ids = [link.id for link in self.links if link.hello is not None]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            failures.append(
                f"several agents report the id {', '.join(duplicates)}: give each an id "
                "(distributed.agents[].id or the agent's --id)"
            )
        if failures:
            misconfigured = any(link.failure_code == "bad_config" for link in self.links)
            raise StartupError(failures, EXIT_CONFIG if misconfigured else EXIT_START)
        self._record("controller", "connected", f"{len(self.links)} agent(s)")

    async def _configure_all(self, nursery: trio.Nursery) -> None:
        self.stage = "validating"
        config = config_to_dict(self.config)
        shared = self.settings.shared_storage
        for link in self.links:
            own = for_agent(self.config, link.address)  # its overrides, if it has any
            sent = config if own is self.config else config_to_dict(own)
            assert link.hello is not None
            link.apply(PeerEvent.HANDSHAKE_OK, f"{link.hello.hostname} ({link.address})")
            link.send_reliable(
                functools.partial(
                    Configure,
                    run_id=self.run_id,
                    config=sent,
                    agent_index=link.index,
                    agent_count=len(self.links),
                    path_prefix="" if shared else f"{link.id}/",
                    stats_interval_ns=self.settings.stats_interval,
                    orphan_timeout_ns=self.settings.orphan_timeout,
                )
            )
        nursery.start_soon(AgentLink.watch_links, self.links, self.settings)
        with trio.move_on_after(self.settings.configure_timeout / 1e9):
            await self._wait_until(
                lambda: all(link.state is not PeerState.VALIDATING for link in self.links)
            )
        problems = []
        refused = False
        for link in self.links:
            if link.state is PeerState.READY:
                continue
            if link.state is PeerState.VALIDATING:
                link.fail("no READY within configure_timeout", PeerEvent.AGENT_ERROR)
            problems.append(f"agent {link.id}: {link.failure or link.state.value}")
            refused |= link.failure_code == "bad_config"
        if problems:
            raise StartupError(problems, EXIT_CONFIG if refused else EXIT_START)

    async def _sync_clocks(self) -> None:
        self.stage = "clock sync"
        for _ in range(CLOCK_SYNC_PINGS):
            for link in self.links:
                link.ping()
            await trio.sleep(CLOCK_SYNC_GAP_S)
        with trio.move_on_after(max(1.0, self.settings.ping_interval / 1e9)):
            await self._wait_until(lambda: all(len(link.estimator) > 0 for link in self.links))
        for link in self.links:
            best = link.estimator.best
            if best is not None:
                self._record(
                    link.id,
                    "clock",
                    f"offset {best.offset_ns / 1e6:+.3f}ms rtt {best.rtt_ns / 1e6:.3f}ms",
                )

    # -- stages

    async def _run_stage(self, stage: str) -> None:
        participants = [link for link in self.links if not link.machine.terminal]
        if not participants:
            return
        self.stage = stage
        self.started = True
        self._in_progress = (stage, participants)
        start_at = self.clock.now_ns() + self.settings.start_delay
        self._stage_at_ns = start_at
        self.aggregator.begin_stage(stage, start_at, [link.id for link in participants])
        for link in participants:
            at = to_agent_clock(start_at, link.offset_ns)
            link.send_reliable(functools.partial(Start, stage=stage, at_ns=at))
        self._record(
            "controller",
            f"start {stage}",
            f"at +{self.settings.start_delay / 1e9:g}s for {len(participants)} agent(s)",
        )
        await self._wait_until(lambda: all(link.stage_finished(stage) for link in participants))
        self._write_stage(stage, participants)

    def _write_stage(self, stage: str, participants: list[AgentLink]) -> None:
        """The stage's results files and facts: final summaries where the agents sent them,
        partial ones (ABORTED, a lost agent's last STATS) otherwise."""
        self._in_progress = None
        starts = [
            to_controller_clock(link.started_at[stage], link.offset_ns)
            for link in participants
            if stage in link.started_at
        ]
        if starts:
            self.skew_ms[stage] = (max(starts) - min(starts)) / 1e6
        assert self._results is not None
        results = [
            AgentStageResult(
                link.id,
                link.summaries.get(stage),
                link.latest if link.latest is not None and link.latest.stage == stage else None,
                link.offset_ns,
                link.load_host,
            )
            for link in participants
        ]
        facts = self._write(self._results.write_stage, stage, results)
        if facts is not None:
            # where the stage sits on the run's time axis (perf_log's elapsed_s), for people
            # and the report: its coordinated start, and the warmup before the measured window
            facts["start_s"] = round((self._stage_at_ns - self.aggregator.run_start_ns) / 1e9, 3)
            facts["warmup_s"] = self.config.warmup / 1e9 if stage == "workload" else 0.0
            self.stage_facts[stage] = facts
        self._write_run_json()

    async def _policy_watch(self) -> None:
        """Failure policy: with ``abort``, one agent failing aborts the others. It wakes when
        an agent's state becomes failed (``_record`` says so), not at every change: at
        thousands of agents, looking at every link at every message was the controller's
        largest cost."""
        seen: set[str] = set()
        while True:
            await self._failed.wait()
            self._failed = trio.Event()
            for link in self.links:
                if link.state is PeerState.FAILED and link.id not in seen:
                    seen.add(link.id)
                    self.display.event(f"agent {link.id} failed: {link.failure or 'lost'}")
                    if self.settings.failure_policy == "abort" and not self.abort_reason:
                        self.request_abort(f"agent {link.id} failed (failure_policy: abort)")

    def request_abort(self, reason: str, *, user: bool = False) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
            self.user_abort = user
            self._record("controller", "abort", reason)
            if self._main_scope is not None:
                self._main_scope.cancel()

    async def _abort_all(self, reason: str) -> None:
        self.stage = "aborting"
        for link in self.links:
            if link.machine.terminal:
                continue
            link.abort_requested = True
            if link.state is not PeerState.CONNECTING:
                link.send_reliable(functools.partial(Abort, reason=reason[:500]))
            link.apply(PeerEvent.ABORT_SENT, reason)
        wait_s = ABORT_WAIT_S + self._abort_cleanup_s()
        with trio.move_on_after(wait_s):
            await self._wait_until(self._all_terminal)
        for link in self.links:
            if not link.machine.terminal:
                link.give_up(f"did not confirm the abort within {wait_s:g}s")
        self._report_abort_cleanup()

    def _abort_cleanup_s(self) -> float:
        """How long agents may spend deleting what an aborted run created (0: they won't)."""
        prepare = self.config.prepare
        if not (self.started and prepare.cleanup):
            return 0.0
        return prepare.cleanup_on_abort / 1e9

    def _report_abort_cleanup(self) -> None:
        """Say what the cleanup after the abort removed, and whether anything was left."""
        if not self._abort_cleanup_s():
            return
        done = total = 0
        unsure = []
        for link in self.links:
            summary = link.summaries.get("cleanup")
            if summary is None or link.state is not PeerState.ABORTED:
                unsure.append(link.id)
                continue
            done, total = done + summary.done, total + summary.total
            if summary.outcome != "completed":
                unsure.append(link.id)
        line = f"cleanup after the abort: {done:,} of {total:,} objects removed"
        if unsure:
            line += (
                f"; data may be left by {', '.join(unsure)}: `triobench cleanup "
                f"{self.results_dir}` removes it"
            )
        self.abort_cleanup = line
        self._record("controller", "abort cleanup", line)
        self.display.event(line)

    async def _goodbye_all(self, reason: str) -> None:
        for link in self.links:
            link.say_goodbye(reason)
        with trio.move_on_after(GOODBYE_WAIT_S):  # let the writers flush the last ACKs
            for link in self.links:
                if link.conn is not None:
                    await link.conn.finished.wait()

    # -- live view

    async def _ticker(self) -> None:
        # a window closes once every agent has reported past it: look a few times per
        # interval so the view and perf_log follow within a fraction of one
        period = max(0.01, min(self.settings.stats_interval / 4e9, 0.25))
        while True:
            asleep = trio.current_time()
            await trio.sleep(period)
            note = self.lag.observe(trio.current_time() - asleep - period)
            if note is not None:
                self._record("controller", *note)
            self._tick()

    def _sample(self, agent: str, sample: Sample) -> None:
        self.aggregator.add(agent, sample)

    def _host_of(self, agent: str) -> str:
        link = self._by_id.get(agent)
        if link is None or link.id != agent:  # ids are learnt in the handshake: look again
            self._by_id = {link.id: link for link in self.links}
            link = self._by_id.get(agent)
        return link.load_host if link is not None else "?"

    def _tick(self, *, final: bool = False) -> None:
        windows = self.aggregator.flush() if final else self.aggregator.close(self.clock.now_ns())
        if self._results is not None and windows:
            self._write(self._results.log_windows, windows)
        # perf_log keeps every window; people need at most a few redraws a second
        now = trio.current_time()
        if now - self._last_view >= DISPLAY_EVERY_S and self.display.mode != "quiet":
            self._last_view = now
            # a plain line shows totals only: no row per agent to build (thousands of them)
            self.display.update(self._view(rows=self.display.mode == "live"))

    def _current_window(self) -> WindowRows | None:
        """The newest closed window, if it belongs to the stage running now."""
        latest = self.aggregator.latest
        return latest if latest is not None and latest.stage == self.stage else None

    def _view(self, *, rows: bool = True) -> RunView:
        """What the display shows now; ``rows``: with a row per agent and per host."""
        window = self._current_window()
        cpus = [_agent_cpu(link.latest) for link in self.links]
        agents = []
        if rows:
            by_agent = {row.agent: row for row in window.agents} if window is not None else {}
            agents = [
                _agent_view(link, by_agent.get(link.id), cores)
                for link, cores in zip(self.links, cpus, strict=True)
            ]
        # numbers of a finished stage are not the current throughput
        total = window.total if window is not None else None
        live = [link for link in self.links if link.machine.live]
        counts = (
            f"{len(live)} live, {sum(link.stalled for link in self.links)} stalled, "
            f"{sum(link.state is PeerState.DISCONNECTED for link in self.links)} disconnected, "
            f"{sum(link.state is PeerState.FAILED for link in self.links)} failed"
        )
        ended = [
            f"{sum(link.state is state for link in self.links)} {state.value}"
            for state in (PeerState.COMPLETED, PeerState.ABORTED)
            if any(link.state is state for link in self.links)
        ]
        if ended:
            counts += ", " + ", ".join(ended)
        return RunView(
            title=f"[{self._elapsed():7.1f}s] run {self.run_id}",
            phase=self._phase(),
            stage=self.stage,
            agents=agents,
            hosts=self._host_views(agents) if rows else [],
            cpu_cores=sum(cores for cores in cpus if cores is not None),
            ops_per_s=total.ops_per_s if total else 0.0,
            mib_per_s=total.mib_per_s if total else 0.0,
            p50_us=total.p50_us if total else 0.0,
            p99_us=total.p99_us if total else 0.0,
            counts=counts,
            measured=window is not None,
        )

    def _phase(self) -> str:
        """Where the run is, for people: a countdown before each coordinated start, then a
        progress bar: time for the workload, objects for prepare and cleanup."""
        stage = self.stage
        if stage == "aborting" and self._abort_cleanup_s():
            done = total = 0
            for link in self.links:
                latest = link.latest
                if latest is not None and latest.stage == "cleanup":
                    done, total = done + latest.done, total + latest.total
            progress = f" {progress_bar(done / total)} {done:,}/{total:,} objects" if total else ""
            return f"aborting: cleaning up what the run created{progress} (Ctrl-C again skips it)"
        if stage not in STAGES:
            return stage
        now = self.clock.now_ns()
        if now < self._stage_at_ns:
            return f"{stage} starting in {(self._stage_at_ns - now) / 1e9:.1f} s"
        if stage == "workload":
            warmup, duration = self.config.warmup, self.config.duration
            elapsed = now - self._stage_at_ns
            left = max(0, warmup + duration - elapsed)
            where = "warmup" if elapsed < warmup else "workload"
            return (
                f"{where} {progress_bar(elapsed / (warmup + duration))} "
                f"{min(elapsed, warmup + duration) / 1e9:.0f}/{(warmup + duration) / 1e9:.0f} s"
                f", {left / 1e9:.0f} s left"
            )
        done = total = 0
        for link in self.links:
            latest = link.latest
            summary = link.summaries.get(stage)
            if summary is not None:
                done, total = done + summary.done, total + summary.total
            elif latest is not None and latest.stage == stage:
                done, total = done + latest.done, total + latest.total
        if not total:
            return stage
        return f"{stage} {progress_bar(done / total)} {done:,}/{total:,} objects"

    def _host_views(self, agents: list[AgentView]) -> list[AgentView]:
        """One row per load host, its agents merged (exact interval percentiles)."""
        window = self._current_window()
        host_rows = {row.agent: row for row in window.hosts} if window is not None else {}
        by_host: dict[str, list[tuple[AgentLink, AgentView]]] = {}
        for link, view in zip(self.links, agents):
            by_host.setdefault(link.load_host, []).append((link, view))
        out = []
        for host, members in by_host.items():
            row = host_rows.get(host)
            states: dict[str, int] = {}
            for link, _view in members:
                states[link.state.value] = states.get(link.state.value, 0) + 1
            cpus = [v.cpu_cores for _link, v in members if v.cpu_cores is not None]
            notes = [v.note for _link, v in members if v.note]
            silent = [v.silent_s for _link, v in members if v.silent_s is not None]
            out.append(
                AgentView(
                    id=f"{host} ({len(members)})",
                    state=", ".join(f"{n} {state}" for state, n in sorted(states.items())),
                    stage=self.stage,
                    progress="",
                    ops_per_s=row.ops_per_s if row else 0.0,
                    mib_per_s=row.mib_per_s if row else 0.0,
                    p50_us=row.p50_us if row else 0.0,
                    p99_us=row.p99_us if row else 0.0,
                    silent_s=max(silent) if silent else None,
                    note=f"{len(notes)} agent(s): {notes[0]}" if notes else "",
                    cpu_cores=sum(cpus) if cpus else None,
                )
            )
        return out

    # -- signals

    async def _signals(self) -> None:
        # A closed terminal (SIGHUP) or a service manager (SIGTERM) stops a run like Ctrl-C:
        # abort, free the agents, write the partial results.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.abort_reason is None or not self.user_abort:
                    self.display.event(
                        f"{name}: aborting the run (press Ctrl-C again to exit at once)"
                    )
                    self.request_abort(f"interrupted by the user ({name})", user=True)
                else:
                    # Tell the agents we are gone (GOODBYE ends a cleanup after the abort at
                    # once), give the writers a moment to send it, and exit.
                    for link in self.links:
                        link.say_goodbye(f"second {name}: the controller exits now")
                    with trio.move_on_after(0.3):
                        for link in self.links:
                            if link.conn is not None:
                                await link.conn.finished.wait()
                    self.display.stop()
                    self._exit_code, self._status = EXIT_ABORTED, "aborted"
                    self.errors.append(
                        f"second {name}: exited without waiting for the agents"
                        + (
                            "; the cleanup after the abort was skipped"
                            if self._abort_cleanup_s()
                            else ""
                        )
                    )
                    self._write_run_json()
                    left = (
                        f"; `triobench cleanup {self.results_dir}` removes what it left"
                        if self.started and self.config.writes
                        else ""
                    )
                    with contextlib.suppress(OSError, ValueError):  # the terminal may be gone
                        print(f"triobench: {self.errors[-1]}{left}", file=sys.stderr, flush=True)
                    os._exit(EXIT_ABORTED)

    # -- results

    def _config_as_run(self) -> tuple[dict[str, Any], str]:
        """config.yaml as run (human units, every setting, overrides applied) and the
        command that repeats the run with it."""
        data = config_to_dict(self.config, human=True)
        if self.local_agents is not None:
            data["distributed"].pop("agents", None)
            return data, f"triobench run config.yaml --local-agents {self.local_agents}"
        listed = [
            {"address": link.address, **({"id": link.configured_id} if link.configured_id else {})}
            for link in self.links
            if link.address not in self.started_addresses
        ]
        ssh = [entry for entry in data["distributed"]["agents"] if "ssh" in entry]
        data["distributed"]["agents"] = listed + ssh
        token = " (with the same --token-file)" if self.links and self.links[0].token else ""
        return data, f"triobench controller config.yaml{token}"

    def _write_run_json(self) -> None:
        if self._results is None:
            return
        self._write(self._results.write_run, self.run_record(), always=True)

    def _write(self, write: Callable[..., T], *args: Any, always: bool = False) -> T | None:
        """One write to the results directory. The first failure (a full disk, a directory
        gone read-only) aborts the run cleanly -- the agents are freed, the user is told where
        results could not be written -- and later writes are skipped (run.json is still tried:
        it may fit where a larger file did not)."""
        if self.results_failure is not None and not always:
            return None
        try:
            return write(*args)
        except OSError as exc:
            if self.results_failure is None:
                line = unusable(self.results_dir or self.results_base, exc)
                self.results_failure = line
                self.errors.append(line)
                self.display.event(f"error: {line}")
                self.request_abort(line)
            return None

    def run_record(self) -> dict[str, Any]:
        def iso(ts: float) -> str:
            return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()

        agents = []
        for link in self.links:
            best = link.estimator.best
            errors: dict[str, int] = {}
            samples: dict[str, list[str]] = {}
            codes: dict[str, dict[str, int]] = {}
            for summary in link.summaries.values():
                for kind, stats in summary.ops.items():
                    errors[kind] = errors.get(kind, 0) + stats.errors
                for kind, lines in summary.error_samples.items():
                    samples.setdefault(kind, []).extend(lines)
                for kind, counts in summary.error_codes.items():
                    merged = codes.setdefault(kind, {})
                    for code, n in counts.items():
                        merged[code] = merged.get(code, 0) + n
            agents.append(
                {
                    "id": link.id,
                    "address": link.address,
                    "hostname": link.hello.hostname if link.hello else None,
                    "software": link.hello.software if link.hello else None,
                    "final_state": link.state.value,
                    "lost": link.state is PeerState.FAILED and link.final is None,
                    "failure": link.failure,
                    "not_started": link.not_started,
                    "target": link.ready.target if link.ready else None,
                    "environment": dict(link.ready.environment) if link.ready else {},
                    "preflight": list(link.ready.checks) if link.ready else [],
                    "clock_offset_ms": best.offset_ns / 1e6 if best else None,
                    "clock_rtt_ms": best.rtt_ns / 1e6 if best else None,
                    "clock_error_bound_ms": best.error_bound_ns / 1e6 if best else None,
                    "disconnects": link.machine.disconnects,
                    "recoveries": link.machine.recoveries,
                    "reconnects": link.reconnects,
                    "sequence_gaps": link.stats_sequence.gaps,
                    "stale_stats": link.stats_sequence.stale,
                    "duplicate_messages": link.receiver.duplicates,
                    "errors": errors,
                    "error_codes": codes,
                    "error_samples": samples,
                    "stages": {
                        stage: {
                            "outcome": s.outcome,
                            "measured_s": s.measured_ns / 1e9,
                            "message": s.message,
                            **cpu_use(s.cpu_user_ns, s.cpu_system_ns, s.measured_ns),
                        }
                        for stage, s in link.summaries.items()
                    },
                }
            )
        return {
            "status": self._status,
            "exit_code": self._exit_code,
            "run_id": self.run_id,
            "name": self.config.name,
            "software": __version__,
            "protocol": PROTOCOL_VERSION,
            "controller": {
                **host_facts(),
                "command_line": shlex.join(sys.argv),
                # how late its event loop ran at worst: seconds mean it could not keep up
                # with its agents (the view, perf_log windows and liveness lagged that much)
                "loop_lag_max_s": round(self.lag.worst_s, 3),
            },
            "started_at": iso(self._started_wall),
            "ended_at": iso(time.time()),
            "abort_reason": self.abort_reason,
            "abort_cleanup": self.abort_cleanup,
            "start_skew_ms": self.skew_ms,
            "stages": self.stage_facts,
            "agents": agents,
            "errors": self.errors,
            "timeline": self.timeline,
        }


def _agent_cpu(latest: Stats | None) -> float | None:
    """An agent's CPU use in cores, from its newest STATS (None before its first)."""
    if latest is None or not latest.elapsed_ns:
        return None
    return (latest.cpu_user_ns + latest.cpu_system_ns) / latest.elapsed_ns


def _agent_view(link: AgentLink, row: IntervalRow | None, cores: float | None) -> AgentView:
    """One agent's line of the live view; ``row``: its numbers in the newest window (none if
    it did not report in it)."""
    latest = link.latest
    notes = []
    if link.stalled:
        notes.append("stalled")
    if link.machine.recoveries:
        notes.append(f"recovered x{link.machine.recoveries}")
    if latest is not None and latest.error_codes:
        by_code: dict[str, int] = {}
        for per_kind in latest.error_codes.values():
            for code, n in per_kind.items():
                by_code[code] = by_code.get(code, 0) + n
        top = sorted(by_code.items(), key=lambda item: -item[1])[:2]
        notes.append("errors: " + ", ".join(f"{code} {n:,}" for code, n in top))
    if link.failure:
        notes.append(link.failure[:60])
    return AgentView(
        id=link.id,
        state=link.state.value,
        stage=latest.stage if latest else "",
        progress=f"{latest.done}/{latest.total}" if latest and latest.total else "",
        ops_per_s=row.ops_per_s if row else 0.0,
        mib_per_s=row.mib_per_s if row else 0.0,
        p50_us=row.p50_us if row else 0.0,
        p99_us=row.p99_us if row else 0.0,
        silent_s=link.seconds_since_frame(),
        note=", ".join(notes),
        cpu_cores=cores,
    )
