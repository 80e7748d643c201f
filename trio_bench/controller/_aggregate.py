"""Aggregation over time: every agent's intervals placed on the controller's timeline and
summed over aligned windows.

Each STATS carries an agent's cumulative numbers and the instant it read them (its own clock,
moved onto the controller's with the measured offset). The difference of two consecutive
readings is one *interval* of that agent; it belongs to the window holding its end. Windows
are a grid of the stats interval anchored at the stage's coordinated start: window ``k`` is
centred on ``start + k * interval``, the instant every agent reads its numbers, so jitter of
either sign keeps a reading in its own window.

Rules a reader can check in perf_log.tsv:

- An agent's row covers exactly its intervals that ended in the window; its rate is their
  operations over their own length (a frozen agent's next interval is long, its rate low).
- An agent that did not report in a window has no row there and contributes nothing to the
  aggregate rows: no rate is ever carried over from an earlier window.
- The ``all`` row (and each host's row) is the sum of its agents' rows: ops, bytes, errors and
  rates add, histograms merge bin by bin (percentiles are never averaged); ``agents`` says how
  many contributed.
- A reading taken less than a tenth of an interval after its counting (re)started (the end
  of warmup, say) is not an interval of its own: the agent's next reading covers that time.
- A window closes when every agent still running the stage has reported past its end, or a
  grace period after its end. A reading that arrives after its window closed is not placed
  elsewhere: the agent's next interval starts from its previous reading and carries those
  operations (cumulative numbers lose nothing).

Pure: no Trio, no I/O. One caller (the controller) owns the state.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

import attrs

from trio_bench.protocol import OpStats
from trio_bench.stats import (
    dense_percentiles,
    dense_span,
    merge_ops,
    ops_difference,
    percentiles_of,
)

MIB = 1024 * 1024
_BASE_COLUMNS: tuple[str, ...] = (
    "elapsed_s",
    "stage",
    "agent",
    "warmup",
    "ops",
    "ops_per_s",
    "mib_per_s",
    "errors",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
)
# perf_log.tsv: one row per window per agent, then the window's ``all`` row
PERF_LOG_COLUMNS: tuple[str, ...] = (*_BASE_COLUMNS, "done", "total", "agents", "time_utc")
# op_log.tsv: the same window numbers per op kind, all agents merged (no progress columns)
OP_LOG_COLUMNS: tuple[str, ...] = (
    *("op" if c == "agent" else c for c in _BASE_COLUMNS),
    "agents",
    "time_utc",
)


PERCENTILES = (0.50, 0.90, 0.99, 0.999)  # a row's p50_us, p90_us, p99_us, p999_us


@functools.lru_cache(maxsize=16)  # one instant per window, shared by all of its rows
def utc_text(at_ns: int) -> str:
    """An instant of the controller's clock as ISO 8601 UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(at_ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@attrs.frozen
class IntervalRow:
    elapsed_s: float
    stage: str
    agent: str  # an agent id, ``all``, a host name, or (op_log) an op kind
    warmup: bool
    ops: int
    ops_per_s: float
    mib_per_s: float
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    done: int
    total: int
    agents: int = 1  # how many agents contributed
    at_ns: int = 0  # the window's centre (controller clock, ns since the epoch)

    def cells(self) -> list[str]:
        """The perf_log.tsv row."""
        return [*self._base(), str(self.done), str(self.total), *self._tail()]

    def op_cells(self) -> list[str]:
        """The op_log.tsv row (``agent`` holds the op kind)."""
        return [*self._base(), *self._tail()]

    def _base(self) -> list[str]:
        return [
            f"{self.elapsed_s:.3f}",
            self.stage,
            self.agent,
            "1" if self.warmup else "0",
            str(self.ops),
            f"{self.ops_per_s:.1f}",
            f"{self.mib_per_s:.2f}",
            str(self.errors),
            f"{self.p50_us:.1f}",
            f"{self.p90_us:.1f}",
            f"{self.p99_us:.1f}",
            f"{self.p999_us:.1f}",
            f"{self.max_us:.1f}",
        ]

    def _tail(self) -> list[str]:
        return [str(self.agents), utc_text(self.at_ns) if self.at_ns else ""]


def interval_row(
    elapsed_s: float,
    stage: str,
    agent: str,
    warmup: bool,
    parts: Sequence[OpStats],
    seconds: float,
    done: int = 0,
    total: int = 0,
    *,
    ops_per_s: float | None = None,
    mib_per_s: float | None = None,
    agents: int = 1,
    at_ns: int = 0,
    quantiles: Sequence[int] | None = None,
) -> IntervalRow:
    """One row from an interval's statistics, ``parts`` taken as one merged histogram (an
    agent's op kinds, a window's); rates over ``seconds`` unless given; ``quantiles``: the
    PERCENTILES of ``parts`` if already known."""
    rate = 1 / seconds if seconds > 0 else 0.0
    ops = sum(part.ops for part in parts)
    nbytes = sum(part.bytes for part in parts)
    return _row(
        elapsed_s,
        stage,
        agent,
        warmup,
        at_ns,
        ops=ops,
        errors=sum(part.errors for part in parts),
        max_ns=max((part.max_ns for part in parts), default=0),
        quantiles=quantiles or percentiles_of(parts, PERCENTILES),
        ops_per_s=ops * rate if ops_per_s is None else ops_per_s,
        mib_per_s=nbytes / MIB * rate if mib_per_s is None else mib_per_s,
        done=done,
        total=total,
        agents=agents,
    )


def _row(
    elapsed_s: float,
    stage: str,
    name: str,
    warmup: bool,
    at_ns: int,
    *,
    ops: int,
    errors: int,
    max_ns: int,
    quantiles: Sequence[int],
    ops_per_s: float,
    mib_per_s: float,
    done: int,
    total: int,
    agents: int,
) -> IntervalRow:
    """An IntervalRow from its numbers (times in ns)."""
    p50, p90, p99, p999 = quantiles
    return IntervalRow(
        elapsed_s=elapsed_s,
        stage=stage,
        agent=name,
        warmup=warmup,
        ops=ops,
        ops_per_s=ops_per_s,
        mib_per_s=mib_per_s,
        errors=errors,
        p50_us=p50 / 1000,
        p90_us=p90 / 1000,
        p99_us=p99 / 1000,
        p999_us=p999 / 1000,
        max_us=max_ns / 1000,
        done=done,
        total=total,
        agents=agents,
        at_ns=at_ns,
    )


@attrs.frozen
class Sample:
    """One agent's cumulative numbers of one stage at one instant of the controller's clock."""

    stage: str
    warmup: bool
    at_ns: int  # controller clock
    elapsed_ns: int  # since its counting began (the stage's start, or the end of warmup)
    ops: Mapping[str, OpStats]
    done: int = 0
    total: int = 0
    final: bool = False  # the stage's summary: nothing more will come for this stage


@attrs.frozen
class WindowRows:
    """Everything one closed window says."""

    stage: str
    index: int
    at_ns: int
    agents: tuple[IntervalRow, ...]  # one per agent that reported in the window
    total: IntervalRow  # ``all``: the sum of ``agents``
    hosts: tuple[IntervalRow, ...]  # per load host: the sum of its agents' rows
    ops: tuple[IntervalRow, ...]  # per op kind, all agents


class _Running:
    """A merge of many interval statistics kept up to date as they arrive, so closing a
    window only reads the result (the work is spread over the interval, not done at once).
    Counts go into a dense list spanning the buckets seen so far (``low`` onwards; a latency
    range covers a few hundred of the 2368): adding an interval is an index increment per
    occupied bucket, and adding two merges or reading one out is a pass in C over the span."""

    __slots__ = ("bytes", "counts", "errors", "low", "max_ns", "ops", "sum_ns")

    def __init__(self) -> None:
        self.ops = self.bytes = self.errors = self.sum_ns = self.max_ns = self.low = 0
        self.counts: list[int] = []

    def _cover(self, first: int, last: int) -> None:
        """Widen the span to hold buckets ``first`` to ``last``."""
        if not self.counts:
            self.low, self.counts = first, [0] * (last - first + 1)
            return
        if first < self.low:
            self.counts[:0] = [0] * (self.low - first)
            self.low = first
        end = self.low + len(self.counts)
        if last >= end:
            self.counts.extend([0] * (last - end + 1))

    def _totals(self, item: OpStats | _Running) -> None:
        self.ops += item.ops
        self.bytes += item.bytes
        self.errors += item.errors
        self.sum_ns += item.sum_ns
        if item.max_ns > self.max_ns:
            self.max_ns = item.max_ns

    def add(self, item: OpStats, also: list[int] | None = None, also_low: int = 0) -> None:
        """Add one interval's statistics; and its counts into ``also`` too (a dense list
        from bucket ``also_low`` on, covering them), in the same pass."""
        self._totals(item)
        buckets = item.buckets
        if not buckets:
            return
        low = self.low
        if buckets[0] < low or buckets[-1] >= low + len(self.counts):
            self._cover(buckets[0], buckets[-1])
            low = self.low
        counts = self.counts
        if also is None:
            for index, count in zip(buckets, item.counts):
                counts[index - low] += count
            return
        for index, count in zip(buckets, item.counts):
            counts[index - low] += count
            also[index - also_low] += count

    def absorb(self, other: _Running) -> None:
        """Add another running merge: one pass in C over its span."""
        self._totals(other)
        if not other.counts:
            return
        self._cover(other.low, other.low + len(other.counts) - 1)
        at = other.low - self.low
        end = at + len(other.counts)
        self.counts[at:end] = map(operator.add, self.counts[at:end], other.counts)

    @classmethod
    def merge(cls, parts: Iterable[_Running]) -> _Running:
        merged = cls()
        for part in parts:
            merged.absorb(part)
        return merged

    def percentiles(self) -> list[int]:
        """``PERCENTILES`` of the merge, as ``percentiles_of`` computes them."""
        return dense_percentiles(self.low, self.counts, self.ops, self.max_ns, PERCENTILES)


@attrs.define
class _AgentPart:
    """One agent's share of one window: its intervals merged, and its row."""

    host: str = "?"
    seconds: float = 0.0
    warmup: bool = False
    kinds: dict[str, OpStats] = attrs.Factory(dict)
    row: IntervalRow | None = None


@attrs.define
class _Window:
    agents: dict[str, _AgentPart] = attrs.Factory(dict)
    # each load host's op kinds, its agents merged; the window's kinds are their sum, made
    # when it closes (one pass per host and kind instead of a second merge per interval)
    hosts: dict[str, dict[str, _Running]] = attrs.Factory(dict)


@attrs.define
class _Previous:
    stage: str
    warmup: bool
    at_ns: int
    ops: Mapping[str, OpStats]


@attrs.define
class _Stage:
    origin_ns: int
    closed_through: int | None = None  # the highest closed window index
    windows: dict[int, _Window] = attrs.Factory(dict)
    latest: dict[str, int] = attrs.Factory(dict)  # agent -> its newest reading (ns)
    finished: set[str] = attrs.Factory(set)  # agents whose final reading arrived
    expected: frozenset[str] = frozenset()  # the agents taking part (they may not have reported)
    laggard: str | None = None  # the agent last found behind a window's end: looked at first

    def running(self) -> AbstractSet[str]:
        """The agents whose readings a window waits for."""
        return (self.expected | self.latest.keys()) - self.finished


class Aggregator:
    """Aligned windows of ``interval_ns`` on the controller's clock; see the module text.

    ``host_of(agent)`` names an agent's load host (for the host rows); ``run_start_ns`` is the
    instant ``elapsed_s`` counts from.
    """

    def __init__(
        self,
        interval_ns: int,
        *,
        run_start_ns: int = 0,
        grace_ns: int | None = None,
        host_of: Callable[[str], str] = lambda agent: "?",
    ) -> None:
        if interval_ns <= 0:
            raise ValueError("the window must be longer than 0 ns")
        self.interval_ns = interval_ns
        self.grace_ns = max(interval_ns, 1_000_000_000) if grace_ns is None else grace_ns
        self.run_start_ns = run_start_ns
        self.host_of = host_of
        self._stages: dict[str, _Stage] = {}
        self._previous: dict[str, _Previous] = {}
        self.late = 0  # readings that arrived after their window had closed
        self.latest: WindowRows | None = None  # the newest closed window

    # -- input

    def begin_stage(self, stage: str, origin_ns: int, agents: Iterable[str] = ()) -> None:
        """The stage's coordinated start (controller clock), the windows' anchor, and the
        agents taking part: a window waits for them (up to the grace) even before their first
        reading."""
        if stage not in self._stages:
            self._stages[stage] = _Stage(origin_ns, expected=frozenset(agents))

    def add(self, agent: str, sample: Sample) -> None:
        """One reading of ``agent``. Readings that add nothing new are ignored."""
        previous = self._previous.get(agent)
        kinds: dict[str, OpStats] | None = None
        if (
            previous is not None
            and previous.stage == sample.stage
            and previous.warmup == sample.warmup
        ):
            if sample.at_ns <= previous.at_ns:
                return  # nothing new
            kinds = ops_difference(sample.ops, previous.ops)  # None: counting restarted
        new_epoch = kinds is None
        if new_epoch and not sample.final and sample.elapsed_ns * 10 < self.interval_ns:
            # counting (re)started just now, as when a reading falls on the end of warmup: an
            # interval this short would show a meaningless rate; the next reading covers it
            return
        start_ns = sample.at_ns - sample.elapsed_ns if kinds is None else previous.at_ns  # type: ignore[union-attr]
        stage = self._stages.get(sample.stage)
        if stage is None:  # no START seen (a cleanup after an abort): anchor on the reading
            stage = self._stages[sample.stage] = _Stage(start_ns)
        index = self._index(stage, sample.at_ns)
        if stage.closed_through is not None and index <= stage.closed_through:
            self.late += 1
            return
        if kinds is None:
            kinds = dict(sample.ops)
        self._place(stage, sample.stage, index, agent, sample, kinds, start_ns)
        self._previous[agent] = _Previous(sample.stage, sample.warmup, sample.at_ns, sample.ops)
        stage.latest[agent] = sample.at_ns
        if sample.final:
            stage.finished.add(agent)

    def _place(
        self,
        stage: _Stage,
        name: str,
        index: int,
        agent: str,
        sample: Sample,
        kinds: dict[str, OpStats],
        start_ns: int,
    ) -> None:
        """Add one interval to its window, with the agent's row and the window's running
        merges brought up to date now rather than when the window closes."""
        window = stage.windows.get(index)
        if window is None:
            window = stage.windows[index] = _Window()
        part = window.agents.get(agent)
        if part is None:
            part = window.agents[agent] = _AgentPart(self.host_of(agent))
        part.seconds += max(0, sample.at_ns - start_ns) / 1e9
        part.warmup = part.warmup or sample.warmup
        host = window.hosts.get(part.host)
        if host is None:
            host = window.hosts[part.host] = {}
        # the agent's first interval in the window is its row: its kinds are merged for the
        # row's percentiles in the same pass that adds them to the host's merges (one kind,
        # as in a pure read or write test, is ranked from its own sparse histogram instead)
        merged = not part.kinds and len(kinds) > 1
        low, dense = dense_span(kinds.values()) if merged else (0, None)
        for kind, delta in kinds.items():
            old = part.kinds.get(kind)
            part.kinds[kind] = delta if old is None else merge_ops((old, delta))
            running = host.get(kind)
            if running is None:
                running = host[kind] = _Running()
            running.add(delta, dense, low)
        parts = list(part.kinds.values())
        quantiles = None
        if dense is not None:
            ops = sum(delta.ops for delta in parts)
            maximum = max((delta.max_ns for delta in parts), default=0)
            quantiles = dense_percentiles(low, dense, ops, maximum, PERCENTILES)
        at_ns = stage.origin_ns + index * self.interval_ns
        part.row = interval_row(
            (at_ns - self.run_start_ns) / 1e9,
            name,
            agent,
            part.warmup,
            parts,
            part.seconds,
            sample.done,
            sample.total,
            at_ns=at_ns,
            quantiles=quantiles,
        )

    # -- output

    def close(self, now_ns: int) -> list[WindowRows]:
        """The windows that are complete at ``now_ns``, oldest first."""
        return self._close(lambda stage, end_ns: self._complete(stage, end_ns, now_ns))

    def flush(self) -> list[WindowRows]:
        """Every window still open (the run is over)."""
        return self._close(lambda stage, end_ns: True)

    def _complete(self, stage: _Stage, end_ns: int, now_ns: int) -> bool:
        if now_ns >= end_ns + self.grace_ns:
            return True
        latest = stage.latest
        laggard = stage.laggard  # behind last time, and until it reports it stays behind
        if (
            laggard is not None
            and latest.get(laggard, end_ns - 1) < end_ns
            and laggard not in stage.finished
        ):
            return False
        for agent in stage.running():
            if latest.get(agent, end_ns - 1) < end_ns:
                stage.laggard = agent
                return False
        stage.laggard = None
        return True

    def _close(self, ready: Callable[[_Stage, int], bool]) -> list[WindowRows]:
        pending = sorted(
            (self._end_ns(stage, index), name, index)
            for name, stage in self._stages.items()
            for index in stage.windows
        )
        out = []
        for end_ns, name, index in pending:
            stage = self._stages[name]
            if not ready(stage, end_ns):
                break  # windows close in order
            window = stage.windows.pop(index)
            if stage.closed_through is None or index > stage.closed_through:
                stage.closed_through = index
            out.append(self._rows(name, index, stage.origin_ns + index * self.interval_ns, window))
        if out:
            self.latest = out[-1]
        return out

    def _index(self, stage: _Stage, at_ns: int) -> int:
        return (at_ns - stage.origin_ns + self.interval_ns // 2) // self.interval_ns

    def _end_ns(self, stage: _Stage, index: int) -> int:
        return stage.origin_ns + index * self.interval_ns + self.interval_ns // 2

    def _rows(self, stage: str, index: int, at_ns: int, window: _Window) -> WindowRows:
        elapsed_s = (at_ns - self.run_start_ns) / 1e9
        agent_rows = []
        # per op kind and per host: the agents' rates (each over its own intervals' length)
        kind_sums: dict[str, _Sums] = {}
        host_sums: dict[str, _Sums] = {}
        total_sums = _Sums()
        for part in window.agents.values():
            row = part.row
            if row is None:
                continue
            agent_rows.append(row)
            total_sums.add_row(row)
            sums = host_sums.get(part.host)
            if sums is None:
                sums = host_sums[part.host] = _Sums()
            sums.add_row(row)
            rate = 1 / part.seconds if part.seconds > 0 else 0.0
            for kind, delta in part.kinds.items():
                sums = kind_sums.get(kind)
                if sums is None:
                    sums = kind_sums[kind] = _Sums()
                sums.add_rates(delta.ops * rate, delta.bytes / MIB * rate, row.warmup)
        if len(window.hosts) == 1:
            (kinds,) = window.hosts.values()
        else:
            kinds = {}
            for host_kinds in window.hosts.values():
                for kind, running in host_kinds.items():
                    merged = kinds.get(kind)
                    if merged is None:
                        merged = kinds[kind] = _Running()
                    merged.absorb(running)

        def row_of(name: str, merged: _Running, sums: _Sums, warmup: bool) -> IntervalRow:
            return _row(
                elapsed_s,
                stage,
                name,
                warmup,
                at_ns,
                ops=merged.ops,
                errors=merged.errors,
                max_ns=merged.max_ns,
                quantiles=merged.percentiles(),
                ops_per_s=sums.ops_per_s,
                mib_per_s=sums.mib_per_s,
                done=sums.done,
                total=sums.total,
                agents=sums.agents,
            )

        total = row_of("all", _Running.merge(kinds.values()), total_sums, total_sums.warmup)
        hosts = tuple(
            row_of(host, _Running.merge(window.hosts[host].values()), sums, sums.warmup)
            for host, sums in sorted(host_sums.items())
            if host in window.hosts
        )
        op_rows = tuple(  # rates only (progress is an agent's, not an op kind's)
            row_of(kind, kinds[kind], sums, total.warmup)
            for kind, sums in sorted(kind_sums.items())
        )
        return WindowRows(stage, index, at_ns, tuple(agent_rows), total, hosts, op_rows)


class _Sums:
    """What adds up over several agents' rows of one window: rates, progress, how many."""

    __slots__ = ("agents", "done", "mib_per_s", "ops_per_s", "total", "warmup")

    def __init__(self) -> None:
        self.ops_per_s = self.mib_per_s = 0.0
        self.done = self.total = self.agents = 0
        self.warmup = False

    def add_row(self, row: IntervalRow) -> None:
        self.add_rates(row.ops_per_s, row.mib_per_s, row.warmup)
        self.done += row.done
        self.total += row.total

    def add_rates(self, ops_per_s: float, mib_per_s: float, warmup: bool) -> None:
        self.ops_per_s += ops_per_s
        self.mib_per_s += mib_per_s
        self.agents += 1
        self.warmup = self.warmup or warmup
