"""One stage on one agent, seen from Trio: start the worker threads at an instant, let them
run (for a duration, or until their work is done), sample them, stop them, summarize.

Threads are plain ``threading.Thread``s that tell Trio they finished through
``TrioToken.run_sync_soon`` -- no per-operation thread hop, no thread-pool slot held by a
long-running loop. Cancelling ``run`` (ABORT) sets the stop flag and waits, shielded and
time-boxed, for the in-flight operations to end; the summary then covers what completed.
"""

from __future__ import annotations

import resource
import threading
from collections.abc import Sequence
from time import perf_counter_ns

import attrs
import trio

from trio_bench.clock import RunClock
from trio_bench.protocol import MAX_ERROR_SAMPLES, StageSummary, printable
from trio_bench.stats import (
    ERRORS,
    Snapshot,
    merge_snapshots,
    sizes_to_wire,
    snapshot_difference,
    snapshot_to_wire,
    with_totals,
)
from trio_bench.stopping import StopFlag

from ._priority import prioritize_for
from ._workers import Worker

# How long an abort waits for operations in flight before abandoning their threads. Local
# file and S3 operations end well within this; a hung NFS mount does not, and must not hang
# the agent.
STOP_GRACE_S = 5.0
SUPERVISE_EVERY_S = 0.1  # how often the error threshold and worker crashes are checked


class StageFailed(Exception):
    """The stage could not complete (error threshold, a worker crashed). One line."""


@attrs.frozen
class Progress:
    snapshot: Snapshot
    done: int
    total: int
    warmup: bool
    elapsed_ns: int
    error_codes: dict[str, dict[str, int]]
    cpu_user_ns: int
    cpu_system_ns: int
    at_ns: int  # when these numbers were read (agent clock)


def _cpu_now() -> tuple[int, int]:
    """This process's user and system CPU time so far, in ns (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_utime * 1e9), int(usage.ru_stime * 1e9)


class StageRun:
    def __init__(
        self,
        name: str,
        workers: Sequence[Worker],
        stop: StopFlag,
        clock: RunClock,
        *,
        total: int = 0,
        duration_ns: int | None = None,
        warmup_ns: int = 0,
        max_errors: int | None = None,
    ) -> None:
        self.name = name
        self.workers = list(workers)
        self.stop = stop
        self.clock = clock
        self.total = total
        self.duration_ns = duration_ns
        self.warmup_ns = warmup_ns
        self.max_errors = max_errors
        self.start_perf_ns = 0
        self.end_perf_ns = 0
        self.baseline: Snapshot = {}
        self.in_warmup = warmup_ns > 0
        self.failure: str | None = None
        self.abandoned = 0
        self._cpu_from = (0, 0)  # at the start of the measured window
        self._cpu_to: tuple[int, int] | None = None  # once every worker has exited
        self._running = 0
        self._all_exited = trio.Event()
        self._all_started = threading.Event()

    # -- reading

    def _merged(self) -> Snapshot:
        return merge_snapshots(w.snapshot() for w in self.workers)

    def progress(self) -> Progress:
        """Cumulative numbers right now (workers keep running)."""
        snapshot = self._merged()
        if self.baseline:
            snapshot = snapshot_difference(snapshot, self.baseline)
        with_totals(snapshot)
        now = perf_counter_ns()
        since = self.start_perf_ns + (0 if self.in_warmup else self.warmup_ns)
        user, system = self._cpu_to or _cpu_now()
        return Progress(
            snapshot=snapshot,
            done=sum(w.progress for w in self.workers),
            total=self.total,
            warmup=self.in_warmup,
            elapsed_ns=max(0, now - since) if self.start_perf_ns else 0,
            error_codes=self._codes(),
            cpu_user_ns=max(0, user - self._cpu_from[0]) if self.start_perf_ns else 0,
            cpu_system_ns=max(0, system - self._cpu_from[1]) if self.start_perf_ns else 0,
            at_ns=self.clock.wall_from_perf(now),
        )

    def _codes(self) -> dict[str, dict[str, int]]:
        codes: dict[str, dict[str, int]] = {}
        for worker in self.workers:
            for kind, counts in worker.codes_snapshot().items():
                merged = codes.setdefault(kind, {})
                for code, n in counts.items():
                    merged[code] = merged.get(code, 0) + n
        return codes

    def started_at_ns(self) -> int:
        """When the first worker began (agent clock); the scheduled instant if none did."""
        begun = [w.started_perf_ns for w in self.workers if w.started_perf_ns]
        return self.clock.wall_from_perf(min(begun) if begun else self.start_perf_ns)

    def summary(self, outcome: str) -> StageSummary:
        """The stage's final numbers. Exact once ``run`` returned (or was cancelled)."""
        progress = self.progress()
        samples: dict[str, list[str]] = {}
        for worker in self.workers:
            for kind, lines in worker.error_samples.items():
                kept = samples.setdefault(kind, [])
                kept.extend(lines[: MAX_ERROR_SAMPLES - len(kept)])
        end = self.end_perf_ns or perf_counter_ns()
        measured_from = self.start_perf_ns + self.warmup_ns
        message = self.failure or ""
        if self.abandoned:
            message = (message + "; " if message else "") + (
                f"{self.abandoned} worker(s) still had an operation in flight after "
                f"{STOP_GRACE_S:g}s and were abandoned"
            )
        return StageSummary(
            stage=self.name,
            outcome=outcome,
            started_at_ns=self.started_at_ns() if self.start_perf_ns else 0,
            ended_at_ns=self.clock.wall_from_perf(end),
            measured_ns=max(0, end - measured_from) if self.start_perf_ns else 0,
            done=progress.done,
            total=self.total,
            ops=snapshot_to_wire(progress.snapshot),
            sizes=sizes_to_wire(progress.snapshot),
            error_samples={k: tuple(v) for k, v in samples.items() if k in progress.snapshot},
            error_codes={k: v for k, v in progress.error_codes.items() if k in progress.snapshot},
            message=printable(message, 1000),
            cpu_user_ns=progress.cpu_user_ns,
            cpu_system_ns=progress.cpu_system_ns,
        )

    # -- running

    async def run(self, start_at_ns: int) -> None:
        """Run the stage, starting at ``start_at_ns`` (agent clock). Raises ``StageFailed``."""
        token = trio.lowlevel.current_trio_token()
        # an instant already past (a late START, a resumed connection) means "now": the
        # stage still runs its whole duration, and STARTED reports the late start
        self.start_perf_ns = max(self.clock.perf_from_wall(start_at_ns), perf_counter_ns())
        self._running = len(self.workers)
        self._cpu_from = _cpu_now()  # the workers sleep until the instant: no CPU before it
        if not self.workers:
            self._all_exited.set()
        prioritize_for(len(self.workers))
        # Threads are started by a starter thread, not here: starting hundreds of threads
        # takes the event loop's time (each start waits for the new thread to run).
        threading.Thread(
            target=self._start_threads,
            args=(token,),
            name=f"triobench-{self.name}-starter",
            daemon=True,
        ).start()
        try:
            await self._supervise()
        except trio.Cancelled:
            self.stop.set()
            with trio.CancelScope(shield=True):
                await self._wait_exit()
            raise
        finally:
            self.stop.set()
        if self.failure:
            raise StageFailed(self.failure)

    def _start_threads(self, token: trio.lowlevel.TrioToken) -> None:
        """Start every worker thread, then let them all go at once. Until then they wait:
        a thread start waits for the new thread to run, and with workers already busy each
        start would queue for the GIL behind them (starting 50 took seconds)."""
        try:
            for worker in self.workers:
                if self.stop.stopped:  # stopped before every thread was up: these never run
                    try:
                        token.run_sync_soon(self._worker_exited)
                    except trio.RunFinishedError:
                        return
                    continue
                threading.Thread(
                    target=self._thread_body,
                    args=(worker, token),
                    name=f"triobench-{self.name}-{worker.index}",
                    daemon=True,
                ).start()
        finally:
            self._all_started.set()

    def _thread_body(self, worker: Worker, token: trio.lowlevel.TrioToken) -> None:
        self._all_started.wait()
        worker.run(self.start_perf_ns)
        try:
            token.run_sync_soon(self._worker_exited)
        except trio.RunFinishedError:
            pass

    def _worker_exited(self) -> None:
        self._running -= 1
        if self._running == 0:
            self.end_perf_ns = perf_counter_ns()
            self._cpu_to = _cpu_now()
            self._all_exited.set()

    def _deadline(self, perf_ns: int) -> float:
        return trio.current_time() + (perf_ns - perf_counter_ns()) / 1e9

    async def _supervise(self) -> None:
        """Wake every tick, and exactly at the end of warmup and of the duration."""
        warmup_end = self.start_perf_ns + self.warmup_ns
        end = None if self.duration_ns is None else warmup_end + self.duration_ns
        while True:
            wake = perf_counter_ns() + int(SUPERVISE_EVERY_S * 1e9)
            if self.in_warmup:
                wake = min(wake, warmup_end)
            if end is not None:
                wake = min(wake, end)
            with trio.move_on_at(self._deadline(wake)):
                await self._all_exited.wait()
            now = perf_counter_ns()
            if self.in_warmup and now >= warmup_end:
                self.baseline = self._merged()
                self._cpu_from = _cpu_now()
                self.in_warmup = False
            self._check_failures()
            if self._all_exited.is_set():
                return
            if self.failure or (end is not None and now >= end):
                self.stop.set()
                with trio.CancelScope(shield=True):
                    await self._wait_exit()
                return

    def _check_failures(self) -> None:
        for worker in self.workers:
            if worker.crash is not None:
                crash = worker.crash
                self.failure = (
                    f"internal error in {self.name} worker {worker.index}: "
                    f"{type(crash).__name__}: {crash}"
                )
                return
        if self.max_errors is not None:
            errors = sum(r[ERRORS] for w in self.workers for r in w.records.values())
            if errors > self.max_errors:
                self.failure = f"{errors} errors exceed max_errors {self.max_errors}"

    async def _wait_exit(self) -> None:
        with trio.move_on_after(STOP_GRACE_S):
            await self._all_exited.wait()
        if not self._all_exited.is_set():
            self.abandoned = self._running
            self.end_perf_ns = perf_counter_ns()
            self._cpu_to = _cpu_now()
