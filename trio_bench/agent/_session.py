"""One run on an agent, from CONFIGURE to the ACK of its final message.

The session lives in the agent's nursery, not in a connection's: if the controller's
connection drops, the run keeps going (orphaned) and a controller that reconnects with RESUME
picks it up again, with every unACKed reliable message re-sent. A controller that stays silent
for ``orphan_timeout`` (closed connection or open but quiet) gets the run aborted; the final
results are written to the agent's local state directory in every case.

All control-message handling (``handle``) is synchronous and quick: it moves the state machine,
records what the lifecycle task waits for, and cancels the run's scope on ABORT. Long work
happens in the lifecycle task and in worker threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from trio_bench.clock import RunClock
from trio_bench.config import ConfigError, config_from_dict
from trio_bench.engine import BackendError, Engine, StageFailed, StageRun
from trio_bench.protocol import (
    STAGES,
    Aborted,
    AbortRun,
    AgentEndpoint,
    AgentEvent,
    AgentEventOut,
    AgentMachine,
    AgentState,
    Completed,
    Configure,
    ControllerLeft,
    Error,
    Goodbye,
    Message,
    Ready,
    RunOver,
    SessionInfo,
    StageSummary,
    StartStage,
    Stats,
    encode_message,
    printable,
    unstructure,
)
from trio_bench.stats import (
    merge_snapshots,
    sizes_to_wire,
    snapshot_from_wire,
    snapshot_to_wire,
)
from trio_bench.transport import Connection

if TYPE_CHECKING:
    from ._server import AgentOptions

log = logging.getLogger("triobench.agent")

WATCHDOG_EVERY_S = 0.5
STARTED_WAIT_S = 1.0  # how long to wait for the first worker to report it began
STARTED_REPORT_LAG_S = 0.005


class Session:
    """One run on the agent: the engine, the stages and the background duties (stats,
    re-sends, orphan watchdog) around the run's protocol endpoint (``AgentEndpoint``), which
    holds every rule of the conversation. This class only turns the endpoint's events into
    Trio actions (a stage may start, cancel the run) and the run's progress into its calls."""

    def __init__(
        self,
        configure: Configure,
        options: AgentOptions,
        clock: RunClock,
        release: Callable[[Session], None],
    ) -> None:
        """``release(session)`` frees the agent for the next run (called once, as soon as the
        controller is done with this one)."""
        self.options = options
        self._release = release
        self.clock = clock
        self.configure = configure
        self.run_id = configure.run_id
        self.endpoint = AgentEndpoint(configure, trio.current_time())
        self._starts_changed = trio.Event()
        self.summaries: list[StageSummary] = []
        self.current: StageRun | None = None
        self.run_scope = trio.CancelScope()
        self.outcome = "running"
        self.done = trio.Event()
        self.stats_interval_ns = max(configure.stats_interval_ns, 1_000_000)
        self._instant: tuple[StageRun | None, int] = (None, 0)  # the last stats instant k
        self.internal_error: str | None = None  # set when a bug ended the run
        self.engine: Engine | None = None
        self.created_anything = False  # a stage that writes (prepare, workload) has begun
        self.abort_cleanup: trio.CancelScope | None = None  # the cleanup after an abort

    # -- the endpoint's facts

    @property
    def machine(self) -> AgentMachine:
        return self.endpoint.machine

    @property
    def conn(self) -> Connection | None:
        wire = self.endpoint.wire
        assert wire is None or isinstance(wire, Connection)
        return wire

    @property
    def stats_held_back(self) -> int:
        return self.endpoint.stats_held_back

    @property
    def final(self) -> Message | None:
        return self.endpoint.final

    def info(self) -> SessionInfo:
        return self.endpoint.info()

    # -- connections

    def attach(self, conn: Connection) -> None:
        self.endpoint.attach(conn, trio.current_time())

    def detach(self, conn: Connection) -> None:
        self.endpoint.detach(conn)

    def _now_ns(self) -> int:
        return int(trio.current_time() * 1e9)

    # -- control messages (sync: called by the connection loop)

    def handle(self, message: Message) -> None:
        self._react(self.endpoint.receive(message))

    def controller_gone(self, reason: str) -> None:
        """The controller sent something invalid (or its connection broke with junk)."""
        self._react(self.endpoint.controller_gone(reason))

    def _react(self, events: list[AgentEventOut]) -> None:
        for event in events:
            if isinstance(event, StartStage):
                self._starts_changed.set()
            elif isinstance(event, AbortRun):
                self.run_scope.cancel()
            elif isinstance(event, ControllerLeft):
                if self.abort_cleanup is not None:  # nobody is waiting for it any more
                    self.abort_cleanup.cancel()
            elif isinstance(event, RunOver):
                self._finish()

    def goodbye(self) -> Goodbye:
        return self.endpoint.goodbye(self.outcome)

    def _finish(self) -> None:
        """The run is over for the controller: free the agent for the next one right now
        (synchronously), even though this session still has cleanup to do."""
        self._release(self)
        self.done.set()

    def _send_final(self, build: Callable[[int], Message], event: AgentEvent | None) -> None:
        self._react(self.endpoint.finish(build, self._now_ns(), event))

    # -- the run

    async def run(self) -> None:
        """The whole session; returns when the final message is ACKed or the controller is
        gone for good. Never raises for anything a peer or the storage did."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, self._stats_loop)
                nursery.start_soon(self._guarded, self._timers)
                await self._lifecycle()
                await self.done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._save_locally()
            log.info("run %s ended: %s", self.run_id, self.outcome)

    async def _guarded(self, duty: Callable[[], Awaitable[None]]) -> None:
        """Run a background duty; if it fails (a bug), the run ends with ERROR internal
        rather than going on silently without its stats, resends or watchdog."""
        try:
            await duty()
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: BaseException) -> None:
        """A bug of ours, anywhere in the run: log it with its traceback, stop the run and
        tell the controller (ERROR ``internal``, with the results so far), so it is never
        left waiting for a run that silently ended."""
        log.error("run %s: internal error: %r", self.run_id, exc, exc_info=exc)
        if self.internal_error is None:
            self.internal_error = printable(f"internal error: {type(exc).__name__}: {exc}", 1000)
        self.run_scope.cancel()

    async def _lifecycle(self) -> None:
        try:
            await self._lifecycle_with_engine()
        finally:
            if self.engine is not None:
                self.engine.close()

    async def _lifecycle_with_engine(self) -> None:
        with self.run_scope:
            try:
                await self._stages()
            except Exception as exc:
                self._internal_error(exc)
        if self.internal_error is not None:
            self._report_internal_error(self.internal_error)
        elif self.run_scope.cancelled_caught:
            summaries = list(self.summaries)
            if self.current is not None:
                summaries.append(self.current.summary("aborted"))
                self.current = None
            self.endpoint.discard_stats()
            try:
                continuing = any(s.stage == "cleanup" for s in summaries)
                cleaned = await self._cleanup_after_abort(continuing)
            except Exception as exc:  # a bug: say so, with what we have
                self._internal_error(exc)
                self.summaries = summaries
                self._report_internal_error(self.internal_error or "internal error")
                return
            if cleaned is not None:
                earlier = [s for s in summaries if s.stage == "cleanup"]
                if earlier:  # the abort came during cleanup: one summary for both parts
                    cleaned = _continued(earlier[0], cleaned)
                summaries = [s for s in summaries if s.stage != "cleanup"] + [cleaned]
            self.outcome = "aborted"
            self.summaries = summaries
            reason = printable(self.endpoint.abort_reason + self._keep_locally(), 1000)
            aborting = self.machine.state is AgentState.ABORTING
            self._send_final(
                lambda seq: Aborted(seq=seq, reason=reason, summaries=tuple(summaries)),
                AgentEvent.ABORT_DONE if aborting else None,
            )

    def _report_internal_error(self, message: str) -> None:
        if not self.machine.can_apply(AgentEvent.INTERNAL_ERROR):
            return  # the final message is already out; the error is in the log
        summaries = list(self.summaries)
        if self.current is not None:
            try:
                summaries.append(self.current.summary("failed"))
            except Exception as exc:  # the results of the stage are what failed
                log.error("run %s: no summary of the failed stage: %r", self.run_id, exc)
            self.current = None
        self.summaries = summaries
        self.outcome = "failed (internal)"
        message = printable(message + self._keep_locally(), 1000)

        def build(seq: int) -> Message:
            error = Error(seq=seq, code="internal", message=message, summaries=tuple(summaries))
            try:
                encode_message(error)
            except ValueError:  # the results themselves cannot be sent: say so without them
                error = Error(seq=seq, code="internal", message=message, summaries=())
            return error

        self._send_final(build, AgentEvent.INTERNAL_ERROR)

    async def _cleanup_after_abort(self, continuing: bool) -> StageSummary | None:
        """After an abort, delete what the run created (``prepare.cleanup`` only), for at most
        ``prepare.cleanup_on_abort``; the controller's GOODBYE (it is not waiting any more: a
        second Ctrl-C) ends it early. Its progress goes out in STATS of the cleanup stage;
        the summary (outcome ``completed``, or ``aborted`` if cut short) goes in ABORTED.
        When it ``continues`` a cleanup stage the abort interrupted, it sends no STATS: its
        counters start from zero, and STATS of a stage are cumulative (they never go back)."""
        engine = self.engine
        if engine is None or not self.created_anything or self.endpoint.farewell:
            return None
        settings = engine.config.prepare
        if not settings.cleanup or not settings.cleanup_on_abort:
            return None
        run = engine.cleanup_stage()
        self.current = run
        self.endpoint.started_stage = None if continuing else "cleanup"
        log.info(
            "run %s: aborted; cleaning up (at most %s ns)", self.run_id, settings.cleanup_on_abort
        )
        with trio.move_on_after(settings.cleanup_on_abort / 1e9) as scope:
            self.abort_cleanup = scope
            try:
                await run.run(self.clock.now_ns())
            except StageFailed:
                pass  # counted in its summary: what could not be deleted is left
        self.abort_cleanup = None
        self.current = None
        self.endpoint.discard_stats()
        finished = not scope.cancelled_caught and run.summary("completed").done == run.total
        return run.summary("completed" if finished else "aborted")

    async def _stages(self) -> None:
        config_data = self.configure.config
        try:
            config = config_from_dict(config_data)
            engine = self.engine = self.options.engine(
                config,
                agent_index=self.configure.agent_index,
                agent_count=self.configure.agent_count,
                prefix=self.configure.path_prefix,
                run_tag=self.run_id[:8],
                root=self.options.root,
                clock=self.clock,
            )
            checks = await engine.preflight()
        except ConfigError as exc:
            await self._fail("bad_config", "; ".join(exc.lines), AgentEvent.PREFLIGHT_FAILED)
            return
        except BackendError as exc:
            await self._fail("preflight_failed", str(exc), AgentEvent.PREFLIGHT_FAILED)
            return
        await trio.lowlevel.checkpoint()  # a pending abort first (see _advance)
        target = engine.backend.describe()
        facts = engine.environment
        self.endpoint.ready(
            lambda seq: Ready(seq=seq, target=target, checks=tuple(checks), environment=facts),
            self._now_ns(),
        )
        for stage in STAGES:
            at_ns = await self._wait_start(stage)
            self.created_anything |= stage != "cleanup"
            run = getattr(engine, f"{stage}_stage")()
            self.current = run
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report_started, run, stage, at_ns)
                try:
                    await run.run(at_ns)
                except StageFailed as exc:
                    self.summaries.append(run.summary("failed"))
                    self.current = None
                    await self._fail("stage_failed", f"{stage}: {exc}", AgentEvent.STAGE_FAILED)
                    return
            summary = run.summary("completed")
            self.summaries.append(summary)
            self.current = None
            if stage == "prepare":
                await engine.after_prepare()
            await trio.lowlevel.checkpoint()  # a pending abort first (see _advance)
            self.endpoint.stage_done(summary, self._now_ns())
        self.outcome = "completed"
        problem = self._keep_locally()
        if problem and self.summaries:  # COMPLETED has no text of its own: the last stage's
            last = self.summaries[-1]
            note = f"{last.message}{problem}" if last.message else problem[2:]
            self.summaries[-1] = attrs.evolve(last, message=printable(note, 1000))
        summaries = tuple(self.summaries)
        self._send_final(lambda seq: Completed(seq=seq, summaries=summaries), None)

    async def _fail(self, code: str, message: str, event: AgentEvent) -> None:
        # ABORT moves the machine and cancels the run's scope at once, but this task only sees
        # the cancellation at its next checkpoint (a thread's result can be delivered first):
        # every lifecycle transition passes one first, so a pending abort is raised here and
        # the machine never gets an event it cannot take.
        await trio.lowlevel.checkpoint()
        self.outcome = f"failed ({code})"
        summaries = tuple(self.summaries)
        log.warning("run %s failed: %s", self.run_id, message)
        text = printable(message + self._keep_locally(), 1000)
        self._send_final(
            lambda seq: Error(seq=seq, code=code, message=text, summaries=summaries), event
        )

    async def _wait_start(self, stage: str) -> int:
        starts = self.endpoint.starts
        while stage not in starts:
            await self._starts_changed.wait()
            self._starts_changed = trio.Event()
        return starts[stage]

    async def _report_started(self, run: StageRun, stage: str, at_ns: int) -> None:
        # Wake a little after the instant: at the instant itself the CPU belongs to the
        # worker threads (on a busy host every extra runnable thread delays their start).
        delay = (at_ns - self.clock.now_ns()) / 1e9 + STARTED_REPORT_LAG_S
        await trio.sleep(max(0.0, delay))
        with trio.move_on_after(STARTED_WAIT_S):
            # worker threads only set an attribute; polling it costs less than a thread hop
            while not any(w.started_perf_ns for w in run.workers) and run.workers:  # noqa: ASYNC110
                await trio.sleep(0.001)
        started = run.started_at_ns()
        self.endpoint.started(stage, started, self._now_ns())

    # -- background duties

    def _next_stats_in(self) -> float:
        """Seconds to the next stats instant: the stage's start plus a whole number k of
        intervals, so every agent reads its numbers at the same instants and each reading lands
        in its own window of the controller's timeline (protocol.md, STATS). k only grows
        within a stage: a wake-up a hair before the instant it slept for (the agent's clock
        and Trio's are not the same clock) must not read twice there. In integer ns."""
        interval_ns = self.stats_interval_ns
        run = self.current
        if run is None or not run.start_perf_ns:
            return interval_ns / 1e9
        origin = self.endpoint.starts.get(run.name, run.clock.wall_from_perf(run.start_perf_ns))
        now = self.clock.now_ns()
        k = max(0, now - origin) // interval_ns + 1
        last_run, last_k = self._instant
        if last_run is run and k <= last_k:
            k = last_k + 1
        self._instant = (run, k)
        return (origin + k * interval_ns - now) / 1e9

    async def _stats_loop(self) -> None:
        while True:
            await trio.sleep(self._next_stats_in())
            run = self.current
            if run is None:
                continue

            def reading(seq: int, run: StageRun = run) -> Stats:
                progress = run.progress()
                return Stats(
                    seq=seq,
                    stage=run.name,
                    warmup=progress.warmup,
                    elapsed_ns=progress.elapsed_ns,
                    done=progress.done,
                    total=progress.total,
                    ops=snapshot_to_wire(progress.snapshot),
                    sizes=sizes_to_wire(progress.snapshot),
                    error_codes=progress.error_codes,
                    cpu_user_ns=progress.cpu_user_ns,
                    cpu_system_ns=progress.cpu_system_ns,
                    at_ns=progress.at_ns,
                )

            self.endpoint.offer_stats(run.name, reading)

    async def _timers(self) -> None:
        """Re-send what the controller has not ACKed; abort the run when the controller has
        been silent for the orphan timeout (the endpoint decides, this task keeps time)."""
        endpoint = self.endpoint
        every = min(WATCHDOG_EVERY_S, endpoint.orphan_timeout_s / 4)
        while not endpoint.over:
            await trio.sleep(every)
            now = trio.current_time()
            for event in endpoint.tick(now, int(now * 1e9)):
                if isinstance(event, RunOver):
                    log.warning("run %s: %s; kept locally", self.run_id, event.reason)
                elif isinstance(event, AbortRun):
                    log.warning("run %s: %s; aborting", self.run_id, event.reason)
                self._react([event])

    def _keep_locally(self) -> str:
        """Write the local record before the final message goes out, so that a failure to
        keep it reaches the controller in that message ("; results not kept locally: ...");
        "" when it was written (or there is no state directory)."""
        problem = self._save_locally()
        return f"; results not kept locally on the agent: {problem}" if problem else ""

    def _save_locally(self) -> str:
        """Write (or rewrite) the run's local record; the problem as one line if it failed."""
        directory = self.options.state_dir
        if directory is None:
            return ""
        try:
            path = Path(directory) / self.options.agent_id / f"{self.run_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "run_id": self.run_id,
                "agent_id": self.options.agent_id,
                "outcome": self.outcome,
                "final_acknowledged": self.machine.state is AgentState.IDLE
                and self.final is not None
                and len(self.endpoint.sender) == 0,
                "summaries": unstructure(self.summaries),
            }
            path.write_text(json.dumps(record, indent=1, default=_bytes_hex))
        except OSError as exc:
            log.warning("run %s: could not keep results locally: %s", self.run_id, exc)
            return f"{exc.strerror or exc} ({exc.filename or directory})"
        return ""


def _continued(first: StageSummary, then: StageSummary) -> StageSummary:
    """A cleanup stage cut by an abort and the cleanup after it, as one summary: operations
    and errors added, the second part's progress (it went over every key again)."""
    ops = merge_snapshots(
        [snapshot_from_wire(first.ops, first.sizes), snapshot_from_wire(then.ops, then.sizes)]
    )
    codes = {kind: dict(counts) for kind, counts in first.error_codes.items()}
    for kind, counts in then.error_codes.items():
        merged = codes.setdefault(kind, {})
        for code, n in counts.items():
            merged[code] = merged.get(code, 0) + n
    return attrs.evolve(
        then,
        started_at_ns=first.started_at_ns,
        measured_ns=first.measured_ns + then.measured_ns,
        ops=snapshot_to_wire(ops),
        sizes=sizes_to_wire(ops),
        error_codes=codes,
        cpu_user_ns=first.cpu_user_ns + then.cpu_user_ns,
        cpu_system_ns=first.cpu_system_ns + then.cpu_system_ns,
    )


def _bytes_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
