"""Live aggregation: per-interval rates and exact percentiles, per agent and in aggregate.

One caller (the controller's tick) owns the state here: the reference tool's two callers of a
windowed aggregation corrupted each other's deltas. Each agent's interval is the difference of
two of its cumulative snapshots; its rate uses the agent's own elapsed time between them (so
controller jitter cannot distort it). The aggregate adds the agents' rates and merges their
interval histograms bin by bin: percentiles are never averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from trio_bench.protocol import OpStats, Stats
from trio_bench.stats import merge_ops, op_difference, percentiles, went_back

MIB = 1024 * 1024
PERF_LOG_COLUMNS: tuple[str, ...] = (
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
    "done",
    "total",
)

# op_log.tsv: the same interval numbers per op kind, all agents merged (no progress columns)
OP_LOG_COLUMNS = tuple("op" if c == "agent" else c for c in PERF_LOG_COLUMNS[:-2])


@attrs.frozen
class IntervalRow:
    elapsed_s: float
    stage: str
    agent: str
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

    def cells(self) -> list[str]:
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
            str(self.done),
            str(self.total),
        ]


def interval_row(
    elapsed_s: float,
    stage: str,
    agent: str,
    warmup: bool,
    delta: OpStats,
    seconds: float,
    done: int,
    total: int,
    *,
    ops_per_s: float | None = None,
    mib_per_s: float | None = None,
) -> IntervalRow:
    """One perf_log row from an interval's merged statistics (all op kinds together)."""
    rate = 1 / seconds if seconds > 0 else 0.0
    p50, p90, p99, p999 = percentiles(delta, (0.50, 0.90, 0.99, 0.999))
    return IntervalRow(
        elapsed_s=elapsed_s,
        stage=stage,
        agent=agent,
        warmup=warmup,
        ops=delta.ops,
        ops_per_s=delta.ops * rate if ops_per_s is None else ops_per_s,
        mib_per_s=delta.bytes / MIB * rate if mib_per_s is None else mib_per_s,
        errors=delta.errors,
        p50_us=p50 / 1000,
        p90_us=p90 / 1000,
        p99_us=p99 / 1000,
        p999_us=p999 / 1000,
        max_us=delta.max_ns / 1000,
        done=done,
        total=total,
    )


def _merged_row(
    elapsed_s: float, stage: str, name: str, deltas: list[OpStats], recent: list[IntervalRow]
) -> IntervalRow:
    """Several agents as one: the newly reported operations merged exactly, rates summed over
    the agents' current rates (see ``Aggregator.tick``)."""
    return interval_row(
        elapsed_s,
        stage,
        name,
        any(r.warmup for r in recent),
        merge_ops(deltas),
        1.0,
        sum(r.done for r in recent),
        sum(r.total for r in recent),
        ops_per_s=sum(r.ops_per_s for r in recent),
        mib_per_s=sum(r.mib_per_s for r in recent),
    )


@attrs.define
class _Previous:
    stage: str
    warmup: bool
    elapsed_ns: int
    ops: dict[str, OpStats]


class Aggregator:
    """Turns the latest cumulative STATS of every agent into interval rows, once per tick.

    Works on the sparse wire form, so a tick costs in proportion to the buckets the agents
    actually filled, not agents x op kinds x 2368.
    """

    def __init__(self) -> None:
        self._previous: dict[str, _Previous] = {}
        self.last_rows: dict[str, IntervalRow] = {}  # agent id (or "all") -> newest row
        # per agent: its newest interval's rates by op kind (ops/s, MiB/s)
        self._kind_rates: dict[str, dict[str, tuple[float, float]]] = {}
        # the last tick's rows per op kind, all agents merged (``agent`` holds the op kind)
        self.op_rows: list[IntervalRow] = []
        # per load host: its agents merged like ``all`` (``agent`` holds the host name)
        self.host_rows: dict[str, IntervalRow] = {}

    def tick(
        self,
        elapsed_s: float,
        latest: Iterable[tuple[str, Stats | None]],
        stale_after_s: float = 3.0,
        hosts: Mapping[str, str] | None = None,
    ) -> list[IntervalRow]:
        """Rows for every agent with new numbers, plus one ``all`` row per stage.

        The ``all`` row's ops and percentiles cover exactly the data newly reported since the
        last tick (nothing counted twice, nothing lost); its rates are the sum of every agent's
        current rate, including agents whose next frame has not arrived yet (not older than
        ``stale_after_s``), so a frame arriving just after a tick cannot halve the aggregate.
        With ``hosts`` (agent id -> host), ``host_rows`` get the same treatment per host.
        """
        rows: list[IntervalRow] = []
        fresh: dict[str, list[OpStats]] = {}
        fresh_kinds: dict[str, dict[str, list[OpStats]]] = {}
        fresh_hosts: dict[str, dict[str, list[OpStats]]] = {}  # stage -> host -> deltas
        self.op_rows = []
        for agent, stats in latest:
            if stats is None:
                continue
            previous = self._previous.get(agent)
            new_epoch = (
                previous is None
                or previous.stage != stats.stage
                or previous.warmup != stats.warmup
                or went_back(stats.ops, previous.ops)  # counting restarted: never negative
            )
            if previous is not None and not new_epoch and stats.elapsed_ns <= previous.elapsed_ns:
                continue  # nothing new from this agent since the last tick
            base = {} if new_epoch or previous is None else previous.ops
            since = 0 if new_epoch or previous is None else previous.elapsed_ns
            kinds = {kind: op_difference(ops, base.get(kind)) for kind, ops in stats.ops.items()}
            delta = merge_ops(kinds.values())
            seconds = (stats.elapsed_ns - since) / 1e9
            row = interval_row(
                elapsed_s, stats.stage, agent, stats.warmup, delta, seconds, stats.done, stats.total
            )
            rate = 1 / seconds if seconds > 0 else 0.0
            self._kind_rates[agent] = {
                kind: (d.ops * rate, d.bytes / MIB * rate) for kind, d in kinds.items()
            }
            for kind, d in kinds.items():
                fresh_kinds.setdefault(stats.stage, {}).setdefault(kind, []).append(d)
            self._previous[agent] = _Previous(
                stats.stage, stats.warmup, stats.elapsed_ns, stats.ops
            )
            self.last_rows[agent] = row
            rows.append(row)
            fresh.setdefault(stats.stage, []).append(delta)
            if hosts is not None:
                host = hosts.get(agent, "?")
                fresh_hosts.setdefault(stats.stage, {}).setdefault(host, []).append(delta)
        for stage, deltas in fresh.items():
            recent = [
                r
                for agent, r in self.last_rows.items()
                if agent != "all" and r.stage == stage and elapsed_s - r.elapsed_s <= stale_after_s
            ]
            total = _merged_row(elapsed_s, stage, "all", deltas, recent)
            self.last_rows["all"] = total
            if hosts is not None:
                recent_by_host: dict[str, list[IntervalRow]] = {}
                for r in recent:
                    recent_by_host.setdefault(hosts.get(r.agent, "?"), []).append(r)
                for host, host_deltas in fresh_hosts.get(stage, {}).items():
                    on_host = recent_by_host.get(host, [])
                    self.host_rows[host] = _merged_row(elapsed_s, stage, host, host_deltas, on_host)
            rows.append(total)
            for kind, kind_deltas in sorted(fresh_kinds.get(stage, {}).items()):
                rates = [self._kind_rates.get(r.agent, {}).get(kind, (0.0, 0.0)) for r in recent]
                self.op_rows.append(
                    interval_row(
                        elapsed_s,
                        stage,
                        kind,
                        total.warmup,
                        merge_ops(kind_deltas),
                        1.0,
                        0,
                        0,
                        ops_per_s=sum(ops for ops, _ in rates),
                        mib_per_s=sum(mib for _, mib in rates),
                    )
                )
        return rows
