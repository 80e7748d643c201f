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

import functools
import json
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from trio_bench.config import ConfigError, config_from_dict
from trio_bench.engine import BackendError, Engine, StageFailed, StageRun
from trio_bench.protocol import (
    STAGES,
    START_EVENT,
    STATS_IN_FLIGHT,
    Abort,
    Aborted,
    Ack,
    AgentEvent,
    AgentMachine,
    AgentState,
    Completed,
    Configure,
    Error,
    Goodbye,
    Message,
    ProtocolError,
    Ready,
    ReliableReceiver,
    ReliableSender,
    SessionInfo,
    StageDone,
    StageSummary,
    Start,
    Started,
    Stats,
    StatsSeen,
    encode_message,
    printable,
    unstructure,
)
from trio_bench.stats import merge_snapshots, snapshot_from_wire, snapshot_to_wire
from trio_bench.transport import Connection

if TYPE_CHECKING:
    from ._server import AgentServer

log = logging.getLogger("triobench.agent")

WATCHDOG_EVERY_S = 0.5
STARTED_WAIT_S = 1.0  # how long to wait for the first worker to report it began
STARTED_REPORT_LAG_S = 0.005


class Session:
    def __init__(self, server: AgentServer, configure: Configure) -> None:
        self.server = server
        self.clock = server.clock
        self.configure = configure
        self.run_id = configure.run_id
        self.machine = AgentMachine()
        self.machine.apply(AgentEvent.CONFIGURE)
        self.sender = ReliableSender()
        self.receiver = ReliableReceiver()
        self.receiver.accept(configure.seq, "configure")
        self.conn: Connection | None = None
        self.last_heard = trio.current_time()
        self.starts: dict[str, int] = {}
        self._starts_changed = trio.Event()
        self.summaries: list[StageSummary] = []
        self.current: StageRun | None = None
        self.run_scope = trio.CancelScope()
        self.abort_reason = ""
        self.final: Message | None = None
        self.farewell = False  # the controller said GOODBYE: no ACK will come
        self.outcome = "running"
        self.done = trio.Event()
        self.stats_seq = 0
        self.stats_seen = 0  # highest STATS seq the controller acknowledged (STATS_SEEN)
        self.stats_held_back = 0  # ticks skipped because STATS_IN_FLIGHT were unacknowledged
        self.started_stage: str | None = None  # STATS only after this stage's STARTED
        self.stats_interval_s = max(configure.stats_interval_ns, 1_000_000) / 1e9
        self.orphan_timeout_s = configure.orphan_timeout_ns / 1e9
        self.resend_interval_s = 2.0
        self.internal_error: str | None = None  # set when a bug ended the run
        self.engine: Engine | None = None
        self.created_anything = False  # a stage that writes (prepare, workload) has begun
        self.abort_cleanup: trio.CancelScope | None = None  # the cleanup after an abort

    # -- connection attachment

    def info(self) -> SessionInfo:
        return SessionInfo(
            run_id=self.run_id, state=self.machine.state.value, attached=self.conn is not None
        )

    def attach(self, conn: Connection) -> None:
        previous, self.conn = self.conn, conn
        if previous is not None and previous is not conn:
            previous.close_soon("replaced by a newer connection from the controller")
        self.stats_seen = self.stats_seq  # the new connection carries nothing yet
        self.last_heard = trio.current_time()
        conn.send(Ack(seq=self.receiver.processed))
        for message in self.sender.unacked():
            assert isinstance(message, Message)
            conn.send(message)

    def detach(self, conn: Connection) -> None:
        if self.conn is conn:
            self.last_heard = max(self.last_heard, conn.last_received)
            self.conn = None

    def _send(self, message: Message) -> None:
        if self.conn is not None:
            self.conn.send(message)

    def _send_reliable(self, build: Callable[[int], Message]) -> Message:
        message = self.sender.stamp(build, self.clock.now_ns())
        self._send(message)
        return message

    # -- control messages (sync: called by the connection loop)

    def handle(self, message: Message) -> None:
        if isinstance(message, Ack):
            acked = self.sender.ack(message.seq)
            if self.final is not None and self.final in acked:
                self.machine.apply(AgentEvent.FINAL_ACKED)
                self._finish()
            return
        if isinstance(message, Goodbye):
            if self.done.is_set() and self.conn is not None:
                # The run is over (its final message ACKed, perhaps in the same read): our
                # GOODBYE still goes first, then the connection closes.
                self.conn.send(self.goodbye())
            self.controller_gone(f"controller left: {message.reason}")
            return
        if isinstance(message, StatsSeen):
            if message.seq > self.stats_seq:
                raise ProtocolError(
                    f"stats_seen: seq {message.seq} was never sent (highest {self.stats_seq})"
                )
            self.stats_seen = max(self.stats_seen, message.seq)
            return
        if isinstance(message, Configure):
            if message == self.configure:  # re-sent (our ACK was late or lost): ACK again
                self._send(Ack(seq=message.seq))
                return
            raise ProtocolError(
                f"configure: this connection already carries run {self.run_id} "
                "(one run per connection; reconnect for the next run)"
            )
        if not isinstance(message, Start | Abort):
            raise ProtocolError(f"{message.TAG}: not a message a controller sends during a run")
        if not self.receiver.check(message.seq, message.TAG):
            self._send(Ack(seq=self.receiver.processed))  # a re-send: ACK again, do nothing
            return
        # Move the machine first: if the message is not allowed now, it raises and nothing
        # (neither state nor sequence) has changed.
        if isinstance(message, Start):
            self.machine.apply(START_EVENT[message.stage])
            self.starts[message.stage] = message.at_ns
            self._starts_changed.set()
        else:
            before = self.machine.state
            self.machine.apply(AgentEvent.ABORT)
            if before is not AgentState.ABORTING and self.machine.state is AgentState.ABORTING:
                self.abort_reason = message.reason or "aborted by the controller"
                self.run_scope.cancel()
        self.receiver.commit(message.seq)
        self._send(Ack(seq=message.seq))

    def goodbye(self) -> Goodbye:
        return Goodbye(reason=f"run {self.run_id} {self.outcome}")

    def controller_gone(self, reason: str) -> None:
        """The controller said GOODBYE, or sent something invalid: nobody will ACK or resume
        this run. Abort it, keep the results locally, and free the agent at once."""
        self.farewell = True
        if self.conn is not None:
            self.conn.close_soon(reason)
        if self.abort_cleanup is not None:  # nobody is waiting for it any more
            self.abort_cleanup.cancel()
        if self.machine.state is AgentState.FINISHING:
            self._finish()
        elif self.machine.can_apply(AgentEvent.ABORT) and not self.abort_reason:
            self.machine.apply(AgentEvent.ABORT)
            self.abort_reason = printable(reason, 500)
            self.run_scope.cancel()

    def _finish(self) -> None:
        """The run is over for the controller: free the agent for the next one right now
        (synchronously), even though this session still has cleanup to do."""
        self.server.release(self)
        self.done.set()

    # -- the run

    async def run(self) -> None:
        """The whole session; returns when the final message is ACKed or the controller is
        gone for good. Never raises for anything a peer or the storage did."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guarded, self._stats_loop)
                nursery.start_soon(self._guarded, self._watchdog)
                nursery.start_soon(self._guarded, self._resend_loop)
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
            self._discard_stats()
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
            if self.machine.state is AgentState.ABORTING:
                self.machine.apply(AgentEvent.ABORT_DONE)
            self.outcome = "aborted"
            self.summaries = summaries
            reason = printable(self.abort_reason + self._keep_locally(), 1000)
            self.final = self._send_reliable(
                lambda seq: Aborted(seq=seq, reason=reason, summaries=tuple(summaries))
            )
        if self.farewell and self.final is not None:
            self._finish()

    def _report_internal_error(self, message: str) -> None:
        if not self.machine.can_apply(AgentEvent.INTERNAL_ERROR):
            return  # the final message is already out; the error is in the log
        self.machine.apply(AgentEvent.INTERNAL_ERROR)
        summaries = list(self.summaries)
        if self.current is not None:
            try:
                summaries.append(self.current.summary("failed"))
            except Exception as exc:  # the results of the stage are what failed
                log.error("run %s: no summary of the failed stage: %r", self.run_id, exc)
            self.current = None
        self.summaries = summaries
        self.outcome = "failed (internal)"
        self._discard_stats()
        message = printable(message + self._keep_locally(), 1000)

        def build(seq: int) -> Message:
            error = Error(seq=seq, code="internal", message=message, summaries=tuple(summaries))
            try:
                encode_message(error)
            except ValueError:  # the results themselves cannot be sent: say so without them
                error = Error(seq=seq, code="internal", message=message, summaries=())
            return error

        self.final = self._send_reliable(build)

    async def _cleanup_after_abort(self, continuing: bool) -> StageSummary | None:
        """After an abort, delete what the run created (``prepare.cleanup`` only), for at most
        ``prepare.cleanup_on_abort``; the controller's GOODBYE (it is not waiting any more: a
        second Ctrl-C) ends it early. Its progress goes out in STATS of the cleanup stage;
        the summary (outcome ``completed``, or ``aborted`` if cut short) goes in ABORTED.
        When it ``continues`` a cleanup stage the abort interrupted, it sends no STATS: its
        counters start from zero, and STATS of a stage are cumulative (they never go back)."""
        engine = self.engine
        if engine is None or not self.created_anything or self.farewell:
            return None
        settings = engine.config.prepare
        if not settings.cleanup or not settings.cleanup_on_abort:
            return None
        run = engine.cleanup_stage()
        self.current = run
        self.started_stage = None if continuing else "cleanup"
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
        self._discard_stats()
        finished = not scope.cancelled_caught and run.summary("completed").done == run.total
        return run.summary("completed" if finished else "aborted")

    async def _stages(self) -> None:
        config_data = self.configure.config
        try:
            config = config_from_dict(config_data)
            engine = self.engine = Engine(
                config,
                agent_index=self.configure.agent_index,
                agent_count=self.configure.agent_count,
                prefix=self.configure.path_prefix,
                run_tag=self.run_id[:8],
                root=self.server.options.root,
                clock=self.clock,
            )
            checks = await engine.preflight()
        except ConfigError as exc:
            await self._fail("bad_config", "; ".join(exc.lines), AgentEvent.PREFLIGHT_FAILED)
            return
        except BackendError as exc:
            await self._fail("preflight_failed", str(exc), AgentEvent.PREFLIGHT_FAILED)
            return
        await self._advance(AgentEvent.PREFLIGHT_OK)
        target = engine.backend.describe()
        facts = engine.environment
        self._send_reliable(
            lambda seq: Ready(seq=seq, target=target, checks=tuple(checks), environment=facts)
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
            self._discard_stats()
            await self._advance(AgentEvent.STAGE_DONE)
            self._send_reliable(functools.partial(StageDone, summary=summary))
        self.outcome = "completed"
        problem = self._keep_locally()
        if problem and self.summaries:  # COMPLETED has no text of its own: the last stage's
            last = self.summaries[-1]
            note = f"{last.message}{problem}" if last.message else problem[2:]
            self.summaries[-1] = attrs.evolve(last, message=printable(note, 1000))
        summaries = tuple(self.summaries)
        self.final = self._send_reliable(lambda seq: Completed(seq=seq, summaries=summaries))

    async def _advance(self, event: AgentEvent) -> None:
        """Apply a lifecycle event, unless an ABORT arrived meanwhile.

        ABORT moves the machine and cancels the run's scope at once, but the lifecycle task
        only sees the cancellation at its next checkpoint (a thread's result can be delivered
        first). So every lifecycle transition passes a checkpoint first: a pending abort is
        raised here, and the machine never gets an event it cannot take.
        """
        await trio.lowlevel.checkpoint()
        self.machine.apply(event)

    async def _fail(self, code: str, message: str, event: AgentEvent) -> None:
        await self._advance(event)
        self.outcome = f"failed ({code})"
        self._discard_stats()
        summaries = tuple(self.summaries)
        log.warning("run %s failed: %s", self.run_id, message)
        text = printable(message + self._keep_locally(), 1000)
        self.final = self._send_reliable(
            lambda seq: Error(seq=seq, code=code, message=text, summaries=summaries)
        )

    def _discard_stats(self) -> None:
        if self.conn is not None:
            self.conn.discard_stats()

    async def _wait_start(self, stage: str) -> int:
        while stage not in self.starts:
            await self._starts_changed.wait()
            self._starts_changed = trio.Event()
        return self.starts[stage]

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
        self._send_reliable(lambda seq: Started(seq=seq, stage=stage, at_ns=started))
        self.started_stage = stage

    # -- background duties

    def _next_stats_in(self) -> float:
        """Seconds to the next stats instant: the stage's start plus a whole number of
        intervals, so every agent reads its numbers at the same instants and each reading lands
        in its own window of the controller's timeline (protocol.md, STATS)."""
        interval = self.stats_interval_s
        run = self.current
        if run is None or not run.start_perf_ns:
            return interval
        origin = self.starts.get(run.name, run.clock.wall_from_perf(run.start_perf_ns))
        since = (self.clock.now_ns() - origin) / 1e9
        if since < 0:
            return -since + interval
        return (math.floor(since / interval) + 1) * interval - since

    async def _stats_loop(self) -> None:
        while True:
            await trio.sleep(self._next_stats_in())
            run, conn = self.current, self.conn
            if run is None or conn is None or self.started_stage != run.name:
                continue
            if conn.stats_written - self.stats_seen >= STATS_IN_FLIGHT:
                # frames actually sent but not yet seen: the link has not drained, the
                # snapshot waits (a later one will carry everything)
                self.stats_held_back += 1
                continue
            progress = run.progress()
            self.stats_seq += 1
            conn.send_stats(
                Stats(
                    seq=self.stats_seq,
                    stage=run.name,
                    warmup=progress.warmup,
                    elapsed_ns=progress.elapsed_ns,
                    done=progress.done,
                    total=progress.total,
                    ops=snapshot_to_wire(progress.snapshot),
                    error_codes=progress.error_codes,
                    cpu_user_ns=progress.cpu_user_ns,
                    cpu_system_ns=progress.cpu_system_ns,
                    at_ns=progress.at_ns,
                )
            )

    async def _resend_loop(self) -> None:
        interval_ns = int(self.resend_interval_s * 1e9)
        while True:
            await trio.sleep(self.resend_interval_s / 2)
            for message in self.sender.due(self.clock.now_ns(), interval_ns):
                assert isinstance(message, Message)
                self._send(message)

    async def _watchdog(self) -> None:
        """Abort the run when the controller has been silent for the orphan timeout."""
        while True:
            await trio.sleep(min(WATCHDOG_EVERY_S, self.orphan_timeout_s / 4))
            if self.conn is not None:
                self.last_heard = max(self.last_heard, self.conn.last_received)
            silent = trio.current_time() - self.last_heard
            if silent < self.orphan_timeout_s:
                continue
            state = self.machine.state
            if state is AgentState.FINISHING:
                self.machine.apply(AgentEvent.CONTROLLER_LOST)
                log.warning(
                    "run %s: final results not acknowledged after %.0fs; kept locally",
                    self.run_id,
                    silent,
                )
                self._finish()
                return
            if state is not AgentState.ABORTING:
                self.machine.apply(AgentEvent.CONTROLLER_LOST)
                self.abort_reason = f"controller silent for {silent:.0f}s (orphan timeout)"
                log.warning("run %s: %s; aborting", self.run_id, self.abort_reason)
                if self.conn is not None:
                    self.conn.close_soon("orphan timeout")
                self.run_scope.cancel()

    def _keep_locally(self) -> str:
        """Write the local record before the final message goes out, so that a failure to
        keep it reaches the controller in that message ("; results not kept locally: ...");
        "" when it was written (or there is no state directory)."""
        problem = self._save_locally()
        return f"; results not kept locally on the agent: {problem}" if problem else ""

    def _save_locally(self) -> str:
        """Write (or rewrite) the run's local record; the problem as one line if it failed."""
        directory = self.server.options.state_dir
        if directory is None:
            return ""
        try:
            path = Path(directory) / self.server.options.agent_id / f"{self.run_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "run_id": self.run_id,
                "agent_id": self.server.options.agent_id,
                "outcome": self.outcome,
                "final_acknowledged": self.machine.state is AgentState.IDLE
                and self.final is not None
                and len(self.sender) == 0,
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
    ops = merge_snapshots([snapshot_from_wire(first.ops), snapshot_from_wire(then.ops)])
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
        error_codes=codes,
        cpu_user_ns=first.cpu_user_ns + then.cpu_user_ns,
        cpu_system_ns=first.cpu_system_ns + then.cpu_system_ns,
    )


def _bytes_hex(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
