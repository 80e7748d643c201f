"""The controller's live aggregation: exact interval accounting, rates that do not depend on
when frames happen to arrive relative to the controller's tick."""

from __future__ import annotations

from trio_bench import protocol as p
from trio_bench import stats
from trio_bench.controller import Aggregator
from trio_bench.engine import record_latency

from .strategies import stats_message


def snapshot(seq: int, ops: int, latency_ns: int = 1000, stage: str = "workload") -> p.Stats:
    record = stats.new_record()
    for _ in range(ops):
        record_latency(record, latency_ns, 4096)
    return stats_message(
        seq, stage=stage, elapsed_ns=seq * 10**9, ops={"get": stats.to_wire(record)}
    )


def test_intervals_add_up_to_the_cumulative_totals() -> None:
    aggregator = Aggregator()
    rows = []
    for seq in range(1, 6):
        rows += aggregator.tick(
            float(seq), [("a1", snapshot(seq, 100 * seq)), ("a2", snapshot(seq, 50 * seq))]
        )
    assert sum(r.ops for r in rows if r.agent == "a1") == 500
    assert sum(r.ops for r in rows if r.agent == "a2") == 250
    assert sum(r.ops for r in rows if r.agent == "all") == 750
    last = [r for r in rows if r.elapsed_s == 5.0]
    assert {r.agent: r.ops_per_s for r in last} == {"a1": 100.0, "a2": 50.0, "all": 150.0}


def test_a_frame_arriving_after_the_tick_does_not_halve_the_aggregate_rate() -> None:
    aggregator = Aggregator()
    aggregator.tick(1.0, [("a1", snapshot(1, 100)), ("a2", snapshot(1, 100))])
    # a2's second frame is late for this tick: the aggregate still counts a2's current rate
    rows = aggregator.tick(2.0, [("a1", snapshot(2, 200)), ("a2", snapshot(1, 100))])
    (total,) = [r for r in rows if r.agent == "all"]
    assert total.ops_per_s == 200.0
    assert total.ops == 100  # but only the newly reported operations are counted
    rows = aggregator.tick(3.0, [("a1", snapshot(2, 200)), ("a2", snapshot(3, 300))])
    (total,) = [r for r in rows if r.agent == "all"]
    assert total.ops == 200 and total.ops_per_s == 200.0


def test_interval_percentiles_come_from_the_interval_only() -> None:
    aggregator = Aggregator()
    aggregator.tick(1.0, [("a1", snapshot(1, 100, latency_ns=1_000_000))])
    record = stats.new_record()
    for _ in range(100):
        record_latency(record, 1_000_000, 4096)
    for _ in range(100):
        record_latency(record, 1_000, 4096)
    later = stats_message(2, elapsed_ns=2 * 10**9, ops={"get": stats.to_wire(record)})
    rows = aggregator.tick(2.0, [("a1", later)])
    (row,) = [r for r in rows if r.agent == "a1"]
    assert row.ops == 100 and row.p99_us < 1.1  # the slow ops were in the earlier interval


def test_a_new_stage_starts_a_new_epoch() -> None:
    aggregator = Aggregator()
    aggregator.tick(1.0, [("a1", snapshot(1, 500, stage="prepare"))])
    rows = aggregator.tick(2.0, [("a1", snapshot(2, 40, stage="workload"))])
    (row,) = [r for r in rows if r.agent == "a1"]
    assert (row.stage, row.ops) == ("workload", 40)


def mixed(seq: int, gets: int, puts: int) -> p.Stats:
    get, put = stats.new_record(), stats.new_record()
    for _ in range(gets):
        record_latency(get, 1_000, 4096)
    for _ in range(puts):
        record_latency(put, 1_000_000, 1024 * 1024)
    return stats_message(
        seq, elapsed_ns=seq * 10**9, ops={"get": stats.to_wire(get), "put": stats.to_wire(put)}
    )


def test_each_op_kind_has_its_own_interval_rows_across_agents() -> None:
    """A get/put mix: the op rows keep get's microseconds apart from put's milliseconds, add
    up exactly over agents and intervals, and rate each kind on its own."""
    aggregator = Aggregator()
    op_rows = []
    for seq in range(1, 4):
        aggregator.tick(
            float(seq),
            [("a1", mixed(seq, 100 * seq, 10 * seq)), ("a2", mixed(seq, 50 * seq, 5 * seq))],
        )
        op_rows += aggregator.op_rows
    assert {r.agent for r in op_rows} == {"get", "put"}
    assert sum(r.ops for r in op_rows if r.agent == "get") == 450
    assert sum(r.ops for r in op_rows if r.agent == "put") == 45
    last = {r.agent: r for r in op_rows if r.elapsed_s == 3.0}
    assert (last["get"].ops_per_s, last["put"].ops_per_s) == (150.0, 15.0)
    assert last["put"].mib_per_s == 15.0
    assert last["get"].p99_us < 2 and 990 < last["put"].p50_us < 1010


def test_hosts_merge_their_agents_live() -> None:
    aggregator = Aggregator()
    hosts = {"a1": "h1", "a2": "h1", "a3": "h2"}
    for seq in (1, 2):
        aggregator.tick(
            float(seq),
            [
                ("a1", snapshot(seq, 100 * seq)),
                ("a2", snapshot(seq, 100 * seq, latency_ns=1_000_000)),
                ("a3", snapshot(seq, 10 * seq)),
            ],
            hosts=hosts,
        )
    h1, h2 = aggregator.host_rows["h1"], aggregator.host_rows["h2"]
    assert (h1.ops, h1.ops_per_s, h2.ops, h2.ops_per_s) == (200, 200.0, 10, 10.0)
    # h1's percentiles come from both agents' merged intervals: half at 1 us, half at 1 ms
    assert h1.p50_us < 2 and 990 < h1.p99_us < 1010


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


def test_counts_that_restart_are_a_new_epoch_never_a_negative_interval() -> None:
    from trio_bench import protocol as p
    from trio_bench.controller._aggregate import Aggregator

    from .strategies import stats_message

    def ops(count: int) -> dict[str, p.OpStats]:
        return {
            "delete": p.OpStats(count, 0, 0, count * 500, 500, ((500, count),) if count else ())
        }

    aggregator = Aggregator()
    aggregator.tick(
        1.0, [("a1", stats_message(1, stage="cleanup", elapsed_ns=10**9, ops=ops(100)))], 3
    )
    rows = aggregator.tick(
        2.0, [("a1", stats_message(2, stage="cleanup", elapsed_ns=2 * 10**9, ops=ops(30)))], 3
    )  # the counters started again from zero: 30 in this interval, not -70
    agent = next(r for r in rows if r.agent == "a1")
    assert agent.ops == 30
