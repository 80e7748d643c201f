"""Worker threads: tight closed loops against the backend, one record per op kind and size.

This is the hot path. Per operation a workload worker does: take the next op from a
pre-shuffled mix, pick a target from a pool, time the backend call with two
``perf_counter_ns`` reads, and add to its own flat record (histogram bucket, bytes, sum, max)
of the op's kind and size bucket (the bytes it moved: ``protocol.size_bucket``).
No locks, no allocation beyond the backend's, no Trio. The Trio side reads records with
``list.copy()`` while workers run and stops them by setting ``StopFlag.stopped``, which every
loop checks before each operation: stopping takes at most the operation in flight. Between
operations a worker also passes the process's ``GATE`` (one attribute read while it is open):
the event loop closes it while it works, so busy workers never starve the control channel.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter_ns
from typing import Any

from trio_bench.protocol import (
    MAX_ERROR_SAMPLES,
    MAX_TEXT,
    NBINS,
    SIZE_LABELS,
    SIZE_OF_BITS,
    printable,
    size_bucket,
)
from trio_bench.stats import BYTES, ERRORS, MAX_NS, SUM_NS, Record, Snapshot, new_record, sized_key
from trio_bench.stopping import GATE, Interrupted, StopFlag

from ._backend import ObjectMissing, WorkerIO, error_code
from ._data import Source
from ._plan import AgentPlan, OpPlan, Pool, PreparedSet, op_mix

_LAST_BIN = NBINS - 1


# A kind's records by size bucket (index: ``size_bucket``), each made when first needed.
Slots = list[Record | None]
# a table entry: (slots, kind, choose(r) -> target, do(target) -> bytes, after(target) | None)
Entry = tuple[Slots, str, Callable[..., Any], Callable[..., Any], Any]


def wait_until(target_perf_ns: int, stop: StopFlag | None = None) -> None:
    """Sleep until a perf_counter instant, waking at once if ``stop`` is set meanwhile. Long
    waits sleep on the stop event (no periodic wake-ups: thousands of waiting workers cost
    nothing); the last stretch is one precise sleep, so the kernel wakes us within its timer
    slack (~50 us). Spinning instead (sched_yield) competes for the CPU with every other
    agent on the host and made starts later, not earlier."""
    while stop is None or not stop.stopped:
        remaining = target_perf_ns - perf_counter_ns()
        if remaining <= 0:
            return
        if stop is not None and remaining > 20_000_000:
            stop.event.wait((remaining - 10_000_000) / 1e9)
        else:
            time.sleep(remaining / 1e9)


def record_latency(record: Record, latency_ns: int, nbytes: int) -> None:
    """The same bookkeeping the workload loop inlines, for the slower prepare/cleanup loops."""
    shift = latency_ns.bit_length() - 7
    index = (shift << 6) + (latency_ns >> shift) if shift > 0 else latency_ns
    record[index if index < NBINS else _LAST_BIN] += 1
    record[BYTES] += nbytes
    record[SUM_NS] += latency_ns
    if latency_ns > record[MAX_NS]:
        record[MAX_NS] = latency_ns


class Worker:
    """One thread's state. Subclasses implement ``loop``."""

    kinds: Sequence[str] = ()

    def __init__(self, index: int, stop: StopFlag, io: WorkerIO) -> None:
        self.index = index
        self.stop = stop
        self.io = io
        io.stop = stop  # operations made of pieces check it between pieces
        self.interrupted = 0  # operations cut short by the stop (not counted as ops or errors)
        # the plain kind's record holds what has no size (errors); operations go to the
        # kind's record of their size bucket, in ``slots`` (made on first use)
        self.records: dict[str, Record] = {kind: new_record() for kind in self.kinds}
        self.slots: dict[str, Slots] = {kind: [None] * len(SIZE_LABELS) for kind in self.kinds}
        self.error_samples: dict[str, list[str]] = {}
        self.error_codes: dict[str, dict[str, int]] = {}  # op kind -> error code -> count
        self.progress = 0  # objects done (prepare/cleanup)
        self.started_perf_ns = 0
        self.finished_perf_ns = 0
        self.crash: BaseException | None = None
        self.closers: list[Callable[[], None]] = []

    def snapshot(self) -> Snapshot:
        """A copy of every record, each copied atomically (``list.copy`` runs under the GIL):
        the plain kinds' and, keyed ``sized_key``, each size bucket's the worker has made."""
        out = {kind: record.copy() for kind, record in self.records.items()}
        for kind, slots in self.slots.items():
            for label, record in zip(SIZE_LABELS, slots):
                if record is not None:
                    out[sized_key(kind, label)] = record.copy()
        return out

    def record_for(self, kind: str, nbytes: int) -> Record:
        """The record of ``kind``'s operations that moved ``nbytes`` bytes (made on first use:
        a worker that only ever reads 4 KiB objects keeps one record, not nine)."""
        slots = self.slots[kind]
        bucket = size_bucket(nbytes)
        record = slots[bucket]
        if record is None:
            record = slots[bucket] = new_record()
        return record

    def codes_snapshot(self) -> dict[str, dict[str, int]]:
        return {kind: dict(codes) for kind, codes in list(self.error_codes.items())}

    def note_error(self, kind: str, what: str, exc: BaseException) -> None:
        """Count a failed operation by its error code and keep its first messages. File names
        that are not UTF-8 reach us with surrogate escapes: ``printable`` turns them into
        ``\\xNN`` so a sample can always be sent and read."""
        self.records[kind][ERRORS] += 1
        code = error_code(exc)
        codes = self.error_codes.setdefault(kind, {})
        codes[code] = codes.get(code, 0) + 1
        samples = self.error_samples.setdefault(kind, [])
        if len(samples) < MAX_ERROR_SAMPLES:
            text = str(exc) or type(exc).__name__
            samples.append(printable(f"{kind} {what}: {code}: {text}", MAX_TEXT // 4))

    def run(self, start_perf_ns: int) -> None:
        """Thread body: wait for the start instant, loop, record how it ended."""
        try:
            wait_until(start_perf_ns, self.stop)
            if not self.stop.stopped:
                self.started_perf_ns = perf_counter_ns()
                self.loop()
        except BaseException as exc:  # a bug, not a storage error: reported by the stage
            self.crash = exc
        finally:
            self.finished_perf_ns = perf_counter_ns()
            try:
                for close in self.closers:  # objects left open between blocks
                    close()
                self.io.close()
            except Exception as exc:  # closing must not hide the run's results
                self.error_samples.setdefault("close", []).append(str(exc))

    def loop(self) -> None:
        raise NotImplementedError


class WorkloadWorker(Worker):
    """The measured closed loop (or, with ``io_rate``, an open loop on a schedule)."""

    def __init__(
        self,
        index: int,
        stop: StopFlag,
        io: WorkerIO,
        plan: AgentPlan,
        rng: random.Random,
        sources: dict[int, Source],
        interval_s: float | None = None,
        distribution: str = "exponential",
    ) -> None:
        self.kinds = sorted({op.kind for op in plan.ops})
        super().__init__(index, stop, io)
        self.plan = plan
        self.sources = sources
        self.rng = rng
        self.mix = op_mix(plan.ops, rng)
        self.interval_s = interval_s
        self.distribution = distribution
        self.table = [self._entry(op) for op in plan.ops]

    def _entry(self, op: OpPlan) -> Entry:
        slots, kind, choose, do, after = self._bare_entry(op)
        limit = op.limit
        if limit is None:
            return slots, kind, choose, do, after
        stop = self.stop

        def choose_in_turn(r: float) -> Any:
            """Wait for a place among the op's in-flight limit (not timed: the op's latency
            starts when it starts); None once the stage stops meanwhile."""
            while not limit.acquire(timeout=0.05):
                if stop.stopped:
                    return None
            target = choose(r)
            if target is None:
                limit.release()
            return target

        def do_in_turn(target: Any) -> int:
            try:
                return int(do(target))
            finally:
                limit.release()

        return slots, kind, choose_in_turn, do_in_turn, after

    def _bare_entry(self, op: OpPlan) -> Entry:
        io = self.io
        slots = self.slots[op.kind]
        if op.kind == "put":
            # The key is counted as created when it is chosen, before the put: a put that
            # fails or is interrupted may still have left an object, and cleanup must find it.
            next_key = self.plan.put_keys(op, self.index).next_key
            size = op.size
            assert size is not None
            rng = self.rng
            fixed = size.size if size.kind == "fixed" else None
            feeds = op.feeds

            def choose_put(_r: float) -> tuple[str, int]:
                return next_key(), (fixed if fixed is not None else size.sample(rng))

            data = self.sources[op.index].object

            def do_put(target: tuple[str, int]) -> int:
                return io.put(target[0], target[1], data(target[1]))

            def after_put(target: tuple[str, int]) -> None:
                for pool in feeds:
                    pool.add(*target)

            if op.block_size is not None:
                return self._put_in_blocks(op, slots, choose_put, after_put)
            return slots, op.kind, choose_put, do_put, after_put
        if op.kind == "mkdir":  # a new directory, counted as made before it is made
            next_dir = self.plan.put_keys(op, self.index).next_key
            mkdir, made = io.mkdir, op.feeds

            def do_mkdir(key: str) -> int:
                mkdir(key)
                return 0

            def after_mkdir(key: str) -> None:
                for pool in made:
                    pool.add(key)

            return slots, op.kind, lambda _r: next_dir(), do_mkdir, after_mkdir
        if op.kind == "list":
            directory = op.directory

            def do_list(target: str) -> int:
                io.list(target)
                return 0

            return slots, op.kind, lambda _r: directory, do_list, None
        pool = op.pool
        assert pool is not None
        if op.kind == "get" and op.access == "sequential":
            return self._get_in_blocks(op, slots, pool.pick)
        if op.kind == "get" and op.block_size is not None:
            block, rng, sizes = op.block_size, self.rng, pool.sizes
            assert sizes is not None

            def do_block(key: str) -> int:
                return io.get_block(key, block, rng, sizes.get(key))

            return slots, op.kind, pool.pick, do_block, None
        if op.kind == "get":
            return slots, op.kind, pool.pick, io.get, None
        if op.kind == "stat":

            def do_stat(key: str) -> int:
                io.stat(key)
                return 0

            return slots, op.kind, pool.pick, do_stat, None

        def do_delete(key: str) -> int:
            io.delete(key)
            return 0

        def do_rmdir(key: str) -> int:
            io.rmdir(key)
            return 0

        assert isinstance(pool, Pool)  # never a tree's: its files are not taken away
        return slots, op.kind, pool.take, do_rmdir if op.kind == "rmdir" else do_delete, None

    def _get_in_blocks(self, op: OpPlan, slots: Slots, pick: Callable[[float], Any]) -> Entry:
        """access: sequential: each op reads the next ``block_size`` of the object being
        read (kept open, as fio keeps its file), from its start to its end; then the next
        op picks another object."""
        io, block = self.io, op.block_size
        assert block is not None
        state: list[Any] = [None, None, 0, 0]  # key, handle, offset, size

        def choose(r: float) -> Any:
            return state[0] if state[1] is not None else pick(r)

        def close() -> None:
            if state[1] is not None:
                handle, state[1] = state[1], None
                io.close_stream(handle)

        def do(key: str) -> int:
            if state[1] is None:
                handle, size = io.open_read(key)
                state[:] = [key, handle, 0, size]
            try:
                n = io.read_at(state[1], state[2], block)
            except BaseException:
                close()
                raise
            state[2] += n
            if n < block or state[2] >= state[3]:  # the object's end
                close()
            return n

        self.closers.append(close)
        return slots, op.kind, choose, do, None

    def _put_in_blocks(
        self,
        op: OpPlan,
        slots: Slots,
        choose_put: Callable[[float], tuple[str, int]],
        after_put: Callable[[tuple[str, int]], None],
    ) -> Entry:
        """A put with ``block_size``: each op writes the next block of the object being
        written (kept open), from its start to its end; the object then counts as made."""
        io, block, data_of = self.io, op.block_size, self.sources[op.index].object
        assert block is not None
        state: list[Any] = [None, None, 0, None]  # (key, size), handle, written, data

        def choose(r: float) -> Any:
            return state[0] if state[1] is not None else choose_put(r)

        def close(wrote: bool = False) -> None:
            if state[1] is not None:
                handle, state[1] = state[1], None
                io.close_stream(handle, wrote=wrote)

        def do(target: tuple[str, int]) -> int:
            if state[1] is None:
                state[:] = [target, io.open_write(target[0]), 0, data_of(target[1])]
            done, size, data = state[2], target[1], state[3]
            try:
                if isinstance(data, memoryview):
                    n = io.write_piece(state[1], data[done : done + block])
                else:
                    n = sum(io.write_piece(state[1], p) for p in data.range(done, block))
                state[2] = done + n
                if state[2] >= size:
                    close(wrote=True)
                    after_put(target)
            except BaseException:
                close()
                raise
            return n

        self.closers.append(close)
        return slots, op.kind, choose, do, None

    def loop(self) -> None:
        if self.interval_s is not None:
            self._paced_loop()
            return
        ops = self.plan.ops
        (only, *others) = ops
        pool = only.pool
        if (
            not others
            and isinstance(pool, Pool)
            and only.kind in ("get", "stat")
            and only.limit is None
            and only.access == "random"
        ):
            _slots, kind, _choose, do, _after = self.table[0]  # a get or stat test
            self._pool_loop(kind, pool.keys, do)
            return
        table = self.table
        mix = self.mix
        mask = len(mix) - 1
        rnd = self.rng.random
        stop = self.stop
        clock = perf_counter_ns
        j = self.index * 7 & mask
        gate = GATE
        by_bits = SIZE_OF_BITS
        record_for = self.record_for
        while not stop.stopped:
            if gate.closed:
                gate.wait()
            slots, kind, choose, do, after = table[mix[j]]
            j = (j + 1) & mask
            target = choose(rnd())
            if target is None:
                if stop.stopped:  # while waiting for an op's in-flight limit
                    break
                self.note_error(kind, "(no object left to pick)", LookupError("pool empty"))
                continue
            t0 = clock()
            try:
                nbytes = do(target)
            except Interrupted:
                self.interrupted += 1
                break
            except Exception as exc:
                self.note_error(kind, _shown(target), exc)
                continue
            latency = clock() - t0
            record = slots[nbytes and by_bits[(nbytes - 1).bit_length()]] or record_for(
                kind, nbytes
            )
            shift = latency.bit_length() - 7
            index = (shift << 6) + (latency >> shift) if shift > 0 else latency
            record[index if index < NBINS else _LAST_BIN] += 1
            record[BYTES] += nbytes
            record[SUM_NS] += latency
            if latency > record[MAX_NS]:
                record[MAX_NS] = latency
            if after is not None:
                after(target)

    def _pool_loop(self, kind: str, keys: list[str], do: Callable[[str], int]) -> None:
        """``loop`` for a workload of one op that picks from a pool (a get or stat test):
        the same steps with the mix, the pick and the bookkeeping written out, because per
        operation each Python call is a measurable share of a 4 KiB read from page cache.
        ``keys`` is the pool's list itself (puts and deletes change it in place). The record
        is looked up again only when an op's size differs from the one before."""
        rnd = self.rng.random
        stop = self.stop
        clock = perf_counter_ns
        gate = GATE
        last_nbytes = -1  # no op yet: the first one looks its record up
        record: Record = []
        while not stop.stopped:
            if gate.closed:
                gate.wait()
            try:
                key = keys[int(rnd() * len(keys))]
            except IndexError:
                self.note_error(kind, "(no object left to pick)", LookupError("pool empty"))
                continue
            t0 = clock()
            try:
                nbytes = do(key)
            except Interrupted:
                self.interrupted += 1
                break
            except Exception as exc:
                self.note_error(kind, key, exc)
                continue
            latency = clock() - t0
            if nbytes != last_nbytes:
                record = self.record_for(kind, nbytes)
                last_nbytes = nbytes
            shift = latency.bit_length() - 7
            index = (shift << 6) + (latency >> shift) if shift > 0 else latency
            record[index if index < NBINS else _LAST_BIN] += 1
            record[BYTES] += nbytes
            record[SUM_NS] += latency
            if latency > record[MAX_NS]:
                record[MAX_NS] = latency

    def _paced_loop(self) -> None:
        """Open loop at a target rate. Latency is measured from each operation's scheduled
        time, so a storage stall shows up in the percentiles instead of silently lowering
        the rate (no coordinated omission)."""
        assert self.interval_s is not None
        mean_ns = self.interval_s * 1e9
        rng = self.rng
        if self.distribution == "exponential":

            def gap() -> float:
                return rng.expovariate(1.0) * mean_ns

        elif self.distribution == "uniform":

            def gap() -> float:
                return rng.uniform(0.0, 2.0 * mean_ns)

        else:

            def gap() -> float:
                return mean_ns

        table, mix, mask, rnd, stop = self.table, self.mix, len(self.mix) - 1, rng.random, self.stop
        j = self.index * 7 & mask
        scheduled = float(perf_counter_ns())
        while not stop.stopped:
            scheduled += gap()
            # wait for the scheduled instant in slices, so a stop is noticed within 50 ms
            while (remaining := scheduled - perf_counter_ns()) > 0 and not stop.stopped:
                time.sleep(min(remaining, 50_000_000) / 1e9)
            if stop.stopped:
                break
            GATE.wait()
            _slots, kind, choose, do, after = table[mix[j]]
            j = (j + 1) & mask
            target = choose(rnd())
            if target is None:
                if stop.stopped:
                    break
                self.note_error(kind, "(no object left to pick)", LookupError("pool empty"))
                continue
            start = int(scheduled)
            try:
                nbytes = do(target)
            except Interrupted:
                self.interrupted += 1
                break
            except Exception as exc:
                self.note_error(kind, _shown(target), exc)
                continue
            latency = max(0, perf_counter_ns() - start)
            record_latency(self.record_for(kind, nbytes), latency, nbytes)
            if after is not None:
                after(target)


class PrepareWorker(Worker):
    """Creates this worker's share of the prepared objects; skips those already right."""

    kinds = ("put",)

    def __init__(
        self,
        index: int,
        stop: StopFlag,
        io: WorkerIO,
        items: Iterable[tuple[int, PreparedSet, int]],
        existing: dict[str, int] | None,  # None: assume every object exists
        sources: Sequence[Source],
    ) -> None:
        super().__init__(index, stop, io)
        self.items = items
        self.existing = existing
        self.sources = sources
        self.created = 0

    def loop(self) -> None:
        existing = self.existing
        for n, pset, i in self.items:
            if self.stop.stopped:
                return
            GATE.wait()
            key = pset.key(i)
            size = pset.size_of(i)
            if existing is not None and existing.get(key) != size:
                t0 = perf_counter_ns()
                try:
                    nbytes = self.io.put(key, size, self.sources[n].object(size))
                except Interrupted:
                    self.interrupted += 1
                    return
                except Exception as exc:
                    self.note_error("put", key, exc)
                    self.progress += 1
                    continue
                record_latency(self.record_for("put", nbytes), perf_counter_ns() - t0, nbytes)
                self.created += 1
            self.progress += 1


def _shown(target: object) -> str:
    """A workload target as an error sample names it: the key (a put's target is a
    (key, size) pair)."""
    return target[0] if isinstance(target, tuple) else str(target)


class BatchFailure(Exception):
    """One key of a batched delete that the storage refused."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CleanupWorker(Worker):
    """Deletes what the run created; an object already gone counts as done, not an error.

    With a backend that deletes in batches (S3 DeleteObjects: up to 1000 keys a request),
    every key of a batch is recorded with the latency of its batch's request."""

    kinds = ("delete",)

    def __init__(self, index: int, stop: StopFlag, io: WorkerIO, keys: Iterable[str]) -> None:
        super().__init__(index, stop, io)
        self.keys = keys

    def loop(self) -> None:
        if self.io.batch_delete > 1:
            self._batched(self.io.batch_delete)
            return
        record = self.record_for("delete", 0)
        for key in self.keys:
            if self.stop.stopped:
                return
            GATE.wait()
            t0 = perf_counter_ns()
            try:
                self.io.delete(key)
            except ObjectMissing:
                pass
            except Exception as exc:
                self.note_error("delete", key, exc)
            else:
                record_latency(record, perf_counter_ns() - t0, 0)
            self.progress += 1

    def _batched(self, size: int) -> None:
        record = self.record_for("delete", 0)
        keys = iter(self.keys)
        while not self.stop.stopped:
            GATE.wait()
            batch = list(itertools.islice(keys, size))
            if not batch:
                return
            t0 = perf_counter_ns()
            try:
                failed = self.io.delete_many(batch)
            except Exception as exc:
                self.note_error("delete", f"({len(batch)} keys)", exc)
                self.progress += len(batch)
                continue
            latency = perf_counter_ns() - t0
            for _ in range(len(batch) - len(failed)):
                record_latency(record, latency, 0)
            for key, code, message in failed:
                self.note_error("delete", key, BatchFailure(code, message))
            self.progress += len(batch)
