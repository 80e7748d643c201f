"""The data plane of one run session: preflight, then the three stages.

Everything that touches storage in bulk (preflight, scanning what prepare can skip, resolving
pools, listing what cleanup deletes) runs in a worker thread via ``trio.to_thread`` so the event
loop keeps answering PINGs: a long silent phase must never starve the control channel.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import trio

from trio_bench.clock import RunClock
from trio_bench.config import Config, ConfigError, prepare_spreads
from trio_bench.environment import host_facts
from trio_bench.stopping import StopFlag

from ._backend import Backend, open_backend
from ._data import Pattern, RandomPool, Source, salt_of
from ._file import FileBackend
from ._plan import AgentPlan, PreparedSet
from ._spread import SpreadBackend
from ._stage import StageRun
from ._workers import CleanupWorker, PrepareWorker, WorkloadWorker

# Preflight lists the directories prepared objects go to, to skip those already there; a
# directory tree with more (one listing each) is not listed.
MAX_LISTINGS = 10_000


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        agent_index: int = 0,
        agent_count: int = 1,
        prefix: str = "",
        run_tag: str = "run",
        root: str | None = None,
        clock: RunClock | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or RunClock()
        self.plan = AgentPlan(
            config,
            agent_index=agent_index,
            agent_count=agent_count,
            prefix=prefix,
            run_tag=run_tag,
        )
        self.backend = backend or open_backend(config, root=root, agent_index=agent_index)
        if isinstance(self.backend, FileBackend | SpreadBackend):
            for directory in self.plan.directories():
                self.backend.check_confined(directory)
        self._existing: dict[str, dict[str, int]] = {}
        self.environment: dict[str, str] = {}  # host and target facts, read by preflight
        self._pool: RandomPool | None = None
        self.prepare_run: StageRun | None = None
        self.runs: list[StageRun] = []  # every stage run made, to know if a thread was abandoned

    # -- preflight (CONFIGURE -> READY)

    async def preflight(self) -> list[str]:
        """Check the target and scan what exists. ``BackendError`` / ``ConfigError`` if bad."""
        return await trio.to_thread.run_sync(self._preflight, abandon_on_cancel=True)

    def _preflight(self) -> list[str]:
        checks = self.backend.preflight(writes=self.config.writes)
        # read here, in a thread: resolving a path on a hung mount may block
        self.environment = {**host_facts(), **self.backend.environment()}
        unmatched = self.plan.unmatched(self.backend.scan)
        if unmatched:
            raise ConfigError(unmatched)
        prepare = self.config.prepare
        if self.plan.prepared and (prepare.skip_verification or prepare.force_overwrite):
            checks.append(
                "prepared objects not listed: "
                + ("all are written" if prepare.force_overwrite else "assumed to exist")
            )
            return checks
        total = present = 0
        for pset in self.plan.prepared:
            directories = pset.directories()
            if len(directories) > MAX_LISTINGS:
                checks.append(
                    f"{len(directories):,} directories not listed (more than "
                    f"{MAX_LISTINGS:,}): every prepared object is written; "
                    "prepare.skip_verification assumes they exist instead"
                )
                continue
            for directory in directories:
                if directory not in self._existing:
                    self._existing[directory] = self.backend.scan(directory)
            total += len(pset.indices)
            for i in pset.indices:
                name = pset.name(i)
                present += name in self._existing[pset.key(i)[: -len(name)]]
        if total:
            checks.append(f"{present} of {total} prepared objects already exist")
        return checks

    # -- what puts write

    def source(self, pattern: Pattern, *stream: object) -> Source:
        """A new stream of data for one worker: ``stream`` names it (stage, worker, which
        op or prepared set), and with the run and agent makes its salt, so no two streams
        write the same unique data. The random pool (4 MiB) is made at the first use."""
        if self._pool is None and pattern.fill != "zero":
            self._pool = RandomPool(self.plan.seed)
        plan = self.plan
        salt = salt_of(plan.seed, plan.run_tag, plan.agent_index, *stream)
        return Source(pattern, self._pool, salt)

    # -- stages

    def _worker_count(self) -> int:
        return self.config.concurrency

    def prepare_stage(self) -> StageRun:
        stop = StopFlag()
        count = self._worker_count()
        prepare = self.config.prepare
        existing: dict[str, int] | None = {
            directory + name: size
            for directory, names in self._existing.items()
            for name, size in names.items()
        }
        if prepare.skip_verification and not prepare.force_overwrite:
            existing = None  # every object is assumed to be there
        backend = self.backend
        if isinstance(backend, SpreadBackend) and not prepare_spreads(self.config):
            backend = backend.first  # use_multi_endpoint: false on prepare's entries
        workers = [
            PrepareWorker(
                w,
                stop,
                backend.worker_io(w),
                self._prepare_items(w, count),
                existing,
                [self.source(p.data, "prepare", w, i) for i, p in enumerate(self.plan.prepared)],
            )
            for w in range(count)
        ]
        total = sum(len(p.indices) for p in self.plan.prepared)
        self.prepare_run = self._made(
            StageRun(
                "prepare", workers, stop, self.clock, total=total, max_errors=self.config.max_errors
            )
        )
        return self.prepare_run

    def _made(self, run: StageRun) -> StageRun:
        self.runs.append(run)
        return run

    def _prepare_items(self, worker: int, count: int) -> Iterator[tuple[int, PreparedSet, int]]:
        """This worker's share as (set number, set, index), lazily (millions of objects must
        not become a list)."""

        def share(n: int, pset: PreparedSet) -> Iterator[tuple[int, PreparedSet, int]]:
            # a function, not a nested generator expression: that one would see the last
            # set's ``n`` and ``pset`` by the time it runs (every set written as the last)
            return ((n, pset, i) for i in pset.indices[worker::count])

        slices = [share(n, pset) for n, pset in enumerate(self.plan.prepared)]
        if self.config.prepare.prepare_strategy == "sequential":
            return itertools.chain(*slices)
        interleaved = itertools.zip_longest(*slices)
        return (item for group in interleaved for item in group if item is not None)

    async def after_prepare(self) -> None:
        """Resolve the workload's pools (a listing per directory), then the optional delay."""
        await trio.to_thread.run_sync(
            self.plan.resolve_pools, self.backend.scan, abandon_on_cancel=True
        )
        delay = self.config.prepare.post_prepare_delay
        workers = self.prepare_run.workers if self.prepare_run else []
        created = sum(w.created for w in workers if isinstance(w, PrepareWorker))
        if delay and created:
            await trio.sleep(delay / 1e9)

    def workload_stage(self) -> StageRun:
        stop = StopFlag()
        # duration 0 (sai3-bench's prepare-only run): a workload stage with no workers
        count = self._worker_count() if self.config.duration else 0
        rate = self.config.io_rate
        interval = count / rate.iops if rate else None
        workers = [
            WorkloadWorker(
                w,
                stop,
                self.backend.worker_io(w),
                self.plan,
                random.Random(f"{self.plan.seed}:{self.plan.agent_index}:{w}"),
                {
                    op.index: self.source(op.data, "workload", w, op.index)
                    for op in self.plan.ops
                    if op.data is not None
                },
                interval_s=interval,
                distribution=rate.distribution if rate else "exponential",
            )
            for w in range(count)
        ]
        return self._made(
            StageRun(
                "workload",
                workers,
                stop,
                self.clock,
                duration_ns=self.config.duration,
                warmup_ns=self.config.warmup,
                max_errors=self.config.max_errors,
            )
        )

    async def leftovers(self) -> list[str]:
        """What this agent's puts and mkdirs created in an earlier session of this run (by
        listing)."""
        return await trio.to_thread.run_sync(
            self.plan.leftover_keys,
            self.backend.scan,
            self.backend.scan_dirs,
            abandon_on_cancel=True,
        )

    def cleanup_stage(self, *, leftovers: Sequence[str] = (), force: bool = False) -> StageRun:
        """Delete the prepared objects and what the puts created (``prepare.cleanup``, or
        ``force``), plus ``leftovers`` (keys found by ``leftovers()``)."""
        stop = StopFlag()
        count = self._worker_count()
        created = self.plan.created()
        cleanup = self.config.prepare.cleanup or force

        def keys(worker: int) -> Iterator[str]:
            if not cleanup:
                return iter(())
            prepared = (p.key(i) for p in self.plan.prepared for i in p.indices[worker::count])
            made = (key for put in created for key in put.keys(worker, count))
            return itertools.chain(prepared, made, leftovers[worker::count])

        workers = [CleanupWorker(w, stop, self.backend.worker_io(w), keys(w)) for w in range(count)]
        total = sum(len(p.indices) for p in self.plan.prepared) + sum(k.count for k in created)
        total += len(leftovers)
        return self._made(
            StageRun(
                "cleanup",
                workers,
                stop,
                self.clock,
                total=total if cleanup else 0,
                max_errors=self.config.max_errors,
            )
        )

    def close(self) -> None:
        """Release the backend, unless a worker thread was abandoned (its operation never
        returned): it may still use the backend's descriptors, and a closed descriptor's
        number can be reused by the next open, so they are left open (a few, at most)."""
        if any(run.abandoned for run in self.runs):
            return
        self.backend.close()
