"""The controller's aggregation over time: every agent's intervals on one timeline, summed
over aligned windows. The aggregate is always the sum of the agents that reported in the
window; nothing stale, nothing counted twice, nothing lost."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from trio_bench import protocol as p
from trio_bench import stats
from trio_bench.controller import Aggregator, Sample, WindowRows
from trio_bench.controller._aggregate import IntervalRow
from trio_bench.engine import record_latency

S = 10**9  # one second in ns
T0 = 1_700_000_000 * S  # the stage's coordinated start (controller clock)


def ops_map(gets: int, latency_ns: int = 1000, puts: int = 0) -> dict[str, p.OpStats]:
    get, put = stats.new_record(), stats.new_record()
    for _ in range(gets):
        record_latency(get, latency_ns, 4096)
    for _ in range(puts):
        record_latency(put, 1_000_000, 1024 * 1024)
    out = {"get": stats.to_wire(get)}
    if puts:
        out["put"] = stats.to_wire(put)
    return out


def reading(at_s: float, gets: int, *, stage: str = "workload", **fields: object) -> Sample:
    """Cumulative ``gets`` read ``at_s`` seconds after the stage start."""
    at = T0 + int(at_s * S)
    return Sample(
        stage=stage,
        warmup=bool(fields.pop("warmup", False)),
        at_ns=at,
        elapsed_ns=int(fields.pop("elapsed_s", at_s) * S),  # type: ignore[call-overload]
        ops=fields.pop("ops", None) or ops_map(gets),  # type: ignore[arg-type]
        final=bool(fields.pop("final", False)),
    )


def aggregator(**kwargs: object) -> Aggregator:
    a = Aggregator(S, run_start_ns=T0, **kwargs)  # type: ignore[arg-type]
    a.begin_stage("workload", T0, ["a1", "a2"])
    return a


def by_agent(window: WindowRows) -> dict[str, int]:
    return {row.agent: row.ops for row in window.agents}


def assert_sums(window: WindowRows) -> None:
    rows = window.agents
    assert window.total.ops == sum(r.ops for r in rows)
    assert abs(window.total.ops_per_s - sum(r.ops_per_s for r in rows)) < 1e-6
    assert abs(window.total.mib_per_s - sum(r.mib_per_s for r in rows)) < 1e-6
    assert window.total.agents == len(rows)


def test_each_window_is_the_sum_of_its_agents() -> None:
    a = aggregator()
    windows = []
    for k in range(1, 6):
        a.add("a1", reading(k, 100 * k))
        a.add("a2", reading(k + 0.003, 50 * k))  # a few ms of jitter
        windows += a.close(T0 + k * S + S // 2)
    assert [w.index for w in windows] == [1, 2, 3, 4]  # each closed once both passed it
    windows += a.flush()
    assert [w.index for w in windows] == [1, 2, 3, 4, 5]
    for w in windows:
        assert_sums(w)
        assert by_agent(w) == {"a1": 100, "a2": 50}
        assert w.total.elapsed_s == w.index and w.total.at_ns == T0 + w.index * S
    assert abs(windows[-1].total.ops_per_s - 150.0) < 0.2


def test_an_agent_that_misses_a_window_contributes_nothing_to_it() -> None:
    """The reported defect: a frozen agent's previous rate was added to the aggregate."""
    a = aggregator()
    a.add("a1", reading(1, 100))
    a.add("a2", reading(1, 100))
    assert by_agent(a.close(T0 + 3 * S)[0]) == {"a1": 100, "a2": 100}
    # a2 freezes for 3 s: windows 2..4 hold only a1 and their rate is a1's alone
    for k in (2, 3, 4):
        a.add("a1", reading(k, 100 * k))
        (w,) = a.close(T0 + k * S + 2 * S)  # past the grace: a2 is not waited for
        assert by_agent(w) == {"a1": 100}
        assert w.total.ops_per_s == w.agents[0].ops_per_s and w.total.agents == 1
    # a2 comes back: one interval of 4 s, its rate over its own length
    a.add("a1", reading(5, 500))
    a.add("a2", reading(5, 140))
    (w,) = a.flush()
    assert_sums(w)
    row = {r.agent: r for r in w.agents}["a2"]
    assert row.ops == 40 and abs(row.ops_per_s - 10.0) < 0.01


def test_a_window_waits_for_running_agents_but_not_for_finished_ones() -> None:
    a = aggregator()
    a.add("a1", reading(1, 10))
    a.add("a2", reading(1, 10))
    assert a.close(T0 + S + S // 2 - 1) == []  # nobody past the window's end yet
    a.add("a1", reading(2, 20))
    assert a.close(T0 + 2 * S) == []  # a2 may still report for window 1
    a.add("a2", reading(1.9, 19, final=True))  # a2's stage is over
    (w1,) = a.close(T0 + 2 * S)
    assert by_agent(w1) == {"a1": 10, "a2": 10}
    a.add("a1", reading(2.4, 24, final=True))
    (w2,) = a.close(T0 + 2 * S)  # both finished: nothing more can come for window 2
    assert by_agent(w2) == {"a1": 14, "a2": 9}
    assert a.close(T0 + 100 * S) == []


def test_a_late_reading_is_never_put_in_a_later_window() -> None:
    a = aggregator()
    a.add("a1", reading(1, 100))
    a.add("a2", reading(1, 100))
    a.close(T0 + 2 * S)
    a.add("a1", reading(2, 200))
    a.close(T0 + 4 * S)  # window 2 closed by the grace, without a2
    a.add("a2", reading(2, 200))  # a2's reading of window 2 arrives now: too late for it
    assert a.late == 1
    a.add("a1", reading(3, 300))
    a.add("a2", reading(3, 300))
    (w3,) = a.flush()
    # a2's interval runs from its last placed reading: nothing lost, nothing counted twice
    row = {r.agent: r for r in w3.agents}["a2"]
    assert row.ops == 200 and abs(row.ops_per_s - 100.0) < 0.01


def test_warmup_and_the_measured_window_are_separate_epochs() -> None:
    a = aggregator()
    a.add("a1", reading(1, 100, warmup=True))
    a.add("a1", reading(2, 200, warmup=True))
    # warmup ends at 2.5 s; counting restarts; the next reading covers 0.5 s
    a.add("a1", reading(3, 50, elapsed_s=0.5))
    windows = a.flush()
    assert [(w.total.warmup, w.total.ops) for w in windows] == [
        (True, 100),
        (True, 100),
        (False, 50),
    ]
    assert abs(windows[-1].total.ops_per_s - 100.0) < 0.01


def test_a_reading_on_the_end_of_warmup_is_not_an_interval_of_its_own() -> None:
    a = aggregator()
    a.add("a1", reading(1, 100, warmup=True))
    a.add("a1", reading(2, 0, elapsed_s=0.0001))  # warmup ended 100 us ago: rate meaningless
    a.add("a1", reading(3, 100, elapsed_s=1.0001))
    windows = a.flush()
    assert [(w.index, w.total.warmup, w.total.ops) for w in windows] == [
        (1, True, 100),
        (3, False, 100),
    ]
    assert abs(windows[-1].total.ops_per_s - 100.0) < 0.1


def test_interval_percentiles_come_from_the_interval_only() -> None:
    a = aggregator()
    a.add("a1", reading(1, 100, ops=ops_map(100, latency_ns=1_000_000)))
    record = stats.new_record()
    for latency in (1_000_000,) * 100 + (1_000,) * 100:
        record_latency(record, latency, 4096)
    a.add("a1", reading(2, 0, ops={"get": stats.to_wire(record)}))
    w1, w2 = a.flush()
    assert w1.total.p99_us > 900
    assert w2.total.ops == 100 and w2.total.p99_us < 1.1  # the slow ops were in window 1


def test_each_op_kind_and_each_host_has_rows_that_add_up() -> None:
    hosts = {"a1": "h1", "a2": "h1", "a3": "h2"}
    a = aggregator(host_of=hosts.__getitem__)
    for k in (1, 2):
        a.add("a1", reading(k, 0, ops=ops_map(100 * k, puts=10 * k)))
        a.add("a2", reading(k, 0, ops=ops_map(50 * k, latency_ns=1_000_000, puts=5 * k)))
        a.add("a3", reading(k, 0, ops=ops_map(10 * k)))
    _w1, w2 = a.flush()
    ops = {r.agent: r for r in w2.ops}
    assert (ops["get"].ops, ops["put"].ops) == (160, 15)
    assert abs(ops["get"].ops_per_s - 160) < 0.01 and abs(ops["put"].mib_per_s - 15) < 0.01
    assert ops["put"].agents == 2 and ops["get"].agents == 3
    assert 990 < ops["put"].p50_us < 1010
    h = {r.agent: r for r in w2.hosts}
    assert (h["h1"].ops, h["h1"].agents, h["h2"].ops) == (165, 2, 10)
    assert h["h1"].p50_us < 2 and 990 < h["h1"].p99_us < 1010  # merged, not averaged


def test_counts_that_restart_are_a_new_epoch_never_a_negative_interval() -> None:
    a = Aggregator(S, run_start_ns=T0)
    a.add("a1", reading(1, 100, stage="cleanup"))
    a.add("a1", reading(2, 30, stage="cleanup", elapsed_s=1))  # counting started again
    rows = [w.total.ops for w in a.flush()]
    assert rows == [100, 30]


def test_a_new_stage_starts_a_new_epoch_on_its_own_grid() -> None:
    a = aggregator()
    a.add("a1", reading(1, 500))
    a.begin_stage("cleanup", T0 + 1_300_000_000)
    a.add("a1", Sample("cleanup", False, T0 + 2_310_000_000, S, ops_map(40)))
    _w1, w2 = a.flush()
    assert (w2.stage, w2.index, w2.total.ops) == ("cleanup", 1, 40)
    assert w2.at_ns == T0 + 2_300_000_000


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 50), st.integers(-200, 200), st.booleans()),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 3),
)
def test_windows_always_add_up_and_lose_nothing(
    agents: list[list[tuple[int, int, bool]]], close_every: int
) -> None:
    """Agents with jitter (+-200 ms), missed readings and irregular closing: every window's
    aggregate is the sum of its agents, and each agent's windows add up to its last count."""
    a = Aggregator(S, run_start_ns=T0)
    a.begin_stage("workload", T0, [f"a{n}" for n in range(len(agents))])
    totals = {}
    windows: list[WindowRows] = []
    events = []
    for n, readings in enumerate(agents):
        count = 0
        for k, (gain, jitter_ms, missed) in enumerate(readings, start=1):
            count += gain
            if missed and k < len(readings):
                continue
            events.append((k * 1000 + jitter_ms, f"a{n}", count, k == len(readings)))
        totals[f"a{n}"] = count
    for i, (at_ms, agent, count, final) in enumerate(sorted(events)):
        a.add(agent, reading(at_ms / 1000, count, final=final))
        if close_every and i % close_every == 0:
            windows += a.close(T0 + at_ms * 10**6)
    windows += a.flush()
    for w in windows:
        assert_sums(w)
    seen: dict[str, int] = {}
    for w in windows:
        for row in w.agents:
            seen[row.agent] = seen.get(row.agent, 0) + row.ops
    assert seen == {agent: n for agent, n in totals.items()}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(  # agents: (host, per interval: per op kind, its latencies)
        st.tuples(
            st.sampled_from(["h1", "h2", "h3"]),
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        kind: st.lists(st.integers(0, 10**9), min_size=1, max_size=30)
                        for kind in ("get", "put", "stat")
                    },
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_every_aggregate_row_is_exactly_its_agents_intervals_merged(
    agents: list[tuple[str, list[dict[str, list[int]]]]],
) -> None:
    """Each agent's row, the all row, each host's and each op kind's row of every window have the counts,
    percentiles and maximum of the merged histogram of exactly the intervals they cover,
    whatever mix of hosts, op kinds and latency ranges the agents had."""
    hosts = {f"a{n}": host for n, (host, _) in enumerate(agents)}
    a = Aggregator(S, run_start_ns=T0, host_of=hosts.__getitem__)
    a.begin_stage("workload", T0, list(hosts))
    intervals: dict[int, list[tuple[str, str, p.OpStats]]] = {}  # window -> (agent, kind, delta)
    for n, (_, steps) in enumerate(agents):
        records: dict[str, stats.Record] = {}
        for k, step in enumerate(steps, start=1):
            for kind, values in step.items():
                before = stats.to_wire(records.setdefault(kind, stats.new_record()))
                for value in values:
                    record_latency(records[kind], value, 512)
                delta = stats.op_difference(stats.to_wire(records[kind]), before)
                assert delta is not None
                intervals.setdefault(k, []).append((f"a{n}", kind, delta))
            if records:
                snapshot = {kind: stats.to_wire(r) for kind, r in records.items()}
                a.add(f"a{n}", reading(k, 0, ops=snapshot))
    fractions = (0.5, 0.9, 0.99, 0.999)

    def expected(parts: list[p.OpStats]) -> tuple[object, ...]:
        merged = stats.merge_ops(parts)
        quantiles = stats.percentiles(merged, fractions)
        return (merged.ops, *(q / 1000 for q in quantiles), merged.max_ns / 1000)

    def got(row: IntervalRow) -> tuple[object, ...]:
        return (row.ops, row.p50_us, row.p90_us, row.p99_us, row.p999_us, row.max_us)

    for window in a.flush():
        # an agent's first reading is its first interval only if it starts at the stage start
        placed = {row.agent for row in window.agents}
        covered = [i for i in intervals.get(window.index, []) if i[0] in placed]
        assert got(window.total) == expected([d for _, _, d in covered])
        for row in window.hosts:
            assert got(row) == expected([d for agent, _, d in covered if hosts[agent] == row.agent])
        for row in window.ops:
            assert got(row) == expected([d for _, kind, d in covered if kind == row.agent])
        for row in window.agents:
            assert got(row) == expected([d for agent, _, d in covered if agent == row.agent])


def test_many_agents_are_shown_one_row_per_host() -> None:
    import io

    from rich.console import Console

    from trio_bench.controller._display import MAX_AGENT_ROWS, AgentView, Display, RunView

    def row(name: str) -> AgentView:
        return AgentView(name, "running", "workload", "", 1.0, 1.0, 1.0, 1.0, 0.1, "", 0.9)

    agents = [row(f"lg{h}-{k}") for h in (1, 2) for k in range(1, 17)]
    assert len(agents) > MAX_AGENT_ROWS
    view = RunView(
        "t", "workload", agents, 32.0, 32.0, 1.0, 1.0, "32 live", [row("lg1 (16)"), row("lg2 (16)")]
    )
    out = io.StringIO()
    Console(file=out, width=160).print(Display("plain")._table(view))
    text = out.getvalue()
    assert "host (agents)" in text and "lg1 (16)" in text and "lg2 (16)" in text
    assert "lg1-3" not in text
    view = RunView("t", "workload", agents[:3], 3.0, 3.0, 1.0, 1.0, "3 live", [row("lg1 (3)")])
    out = io.StringIO()
    Console(file=out, width=160).print(Display("plain")._table(view))
    assert "lg1-3" in out.getvalue() and "host (agents)" not in out.getvalue()


def test_the_live_view_says_where_the_run_is() -> None:
    from trio_bench.config import AgentAddress, parse_config
    from trio_bench.controller import Controller
    from trio_bench.controller._display import progress_bar

    assert progress_bar(0.0, 10) == "[----------]" and progress_bar(0.5, 10) == "[#####-----]"
    assert progress_bar(7.0, 4) == "[####]"
    cfg = parse_config(
        "target: null://\nduration: 10s\nwarmup: 2s\nworkload: [{op: list, path: x/}]\n"
    )
    controller = Controller(cfg, agents=[AgentAddress("127.0.0.1:1")], handle_signals=False)
    now = [100 * 10**9]
    controller.clock.now_ns = lambda: now[0]  # type: ignore[method-assign]
    controller._stage_at_ns = 101_200_000_000
    controller._stage = "workload"
    assert controller._phase() == "workload starting in 1.2 s"
    now[0] = 102 * 10**9  # 0.8 s in: warming up
    assert controller._phase() == "warmup [#-------------------] 1/12 s, 11 s left"
    now[0] = 107_200_000_000  # 6 s in
    assert controller._phase() == "workload [##########----------] 6/12 s, 6 s left"
    controller._stage = "cleanup"
    assert controller._phase() == "cleanup"  # no progress reported yet


def test_before_a_stages_first_window_closes_the_line_says_so_not_zero() -> None:
    """A window closes about one interval after it ends: until then a running stage has no
    numbers, and '0 ops/s' would read as "nothing is happening"."""
    from trio_bench.controller._display import Display, RunView

    pending = RunView("t", "workload", [], 0.0, 0.0, 0.0, 0.0, "2 live", measured=False)
    line = Display("plain")._line(pending)
    assert "first window not closed yet" in line and "0 ops/s" not in line
    shown = RunView("t", "workload", [], 1234.0, 5.0, 10.0, 20.0, "2 live")
    assert "all: 1,234 ops/s 5.00 MiB/s p50 10.0us p99 20.0us" in Display("plain")._line(shown)


def test_a_controller_that_falls_behind_says_so_once_and_again_when_it_caught_up() -> None:
    from trio_bench.controller._run import LoopLag

    lag = LoopLag()
    assert [lag.observe(s) for s in (0.002, 0.3, 0.9)] == [None, None, None]
    event, detail = lag.observe(2.5) or ("", "")
    assert event == "saturated" and "2.5 s late" in detail and "split the agents" in detail
    assert lag.observe(3.0) is None and lag.observe(0.5) is None  # still behind: said once
    assert (lag.observe(0.1) or ("",))[0] == "caught up"
    assert lag.observe(0.1) is None and lag.worst_s == 3.0
