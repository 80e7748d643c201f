"""End to end: real agent processes on loopback, the controller in-process (or as the CLI).

Each test is bounded: short stages, fast liveness settings, and a ``fail_after``."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import trio

from trio_bench.config import AgentAddress
from trio_bench.controller import Controller
from trio_bench.protocol import PeerState

from .agents import (
    addresses,
    config,
    controller_process,
    local_agents,
    quiet_controller,
    start_agent,
    stop,
    wait_for_workload,
)

pytestmark = pytest.mark.slow

NULL_RUN = """
target: null://
duration: {duration}
concurrency: 1
prepare:
  ensure_objects: [{{base_uri: data/, count: {count}, object_size: 4KiB}}]
  cleanup: true
workload:
  - {{op: get, path: "data/*", weight: 8}}
  - {{op: put, path: "new/", weight: 1, object_size: 1KiB}}
  - {{op: stat, path: "data/*", weight: 1}}
"""


def null_run(duration: str = "1s", count: int = 1000, policy: str = "abort"):
    return config(NULL_RUN.format(duration=duration, count=count), policy)


def controller_for(cfg, agents, tmp_path: Path) -> Controller:
    return quiet_controller(cfg, addresses(agents), tmp_path / "results")


def tsv(path: Path) -> dict[str, dict[str, str]]:
    """A summary table's per-kind rows by op (its size-bucket rows: ``sizes``)."""
    with open(path) as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {row["op"]: row for row in rows if row["size"] == "all"}


def sizes(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """A summary table's size-bucket rows by (op, size)."""
    with open(path) as f:
        rows = csv.DictReader(f, delimiter="\t")
        return {(row["op"], row["size"]): row for row in rows if row["size"] != "all"}


def run_json(result) -> dict:
    return json.loads((result.results_dir / "run.json").read_text())


def perf_log_windows(directory: Path) -> dict[tuple[str, str], dict[str, dict[str, str]]]:
    """perf_log.tsv by window (stage, elapsed_s): agent (or ``all``) -> row. Checks on the
    way that every window's ``all`` row is the sum of its agents' rows (ops, errors, rates to
    the rounding of the file) and says how many agents contributed."""
    windows: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    with open(directory / "perf_log.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            windows.setdefault((row["stage"], row["elapsed_s"]), {})[row["agent"]] = row
    for key, rows in windows.items():
        total = rows.pop("all")
        assert int(total["agents"]) == len(rows), key
        for column in ("ops", "errors"):
            assert int(total[column]) == sum(int(r[column]) for r in rows.values()), key
        for column, rounding in (("ops_per_s", 0.05), ("mib_per_s", 0.005)):
            parts = sum(float(r[column]) for r in rows.values())
            assert abs(float(total[column]) - parts) <= rounding * (len(rows) + 1), key
        assert total["time_utc"].endswith("Z") and total["time_utc"][:2] == "20", key
        rows["all"] = total
    return windows


async def test_two_agents_aggregate_equals_the_sum_of_the_agents(tmp_path: Path) -> None:
    with local_agents(tmp_path, 2) as agents:
        controller = controller_for(null_run("1s"), agents, tmp_path)
        with trio.fail_after(60):
            result = await controller.run()
    assert (result.exit_code, result.status) == (0, "completed")
    directory = result.results_dir
    for name in ("summary.tsv", "prepare.tsv", "cleanup.tsv"):
        total = tsv(directory / name)
        parts = [tsv(directory / "agents" / a.id / name) for a in agents]
        for op, row in total.items():
            for column in ("ops", "bytes", "errors"):
                assert int(row[column]) == sum(int(p[op][column]) for p in parts), (name, op)
        # the size-bucket rows add up too: across agents, and to their op kind's row
        by_size = sizes(directory / name)
        parts_by_size = [sizes(directory / "agents" / a.id / name) for a in agents]
        for key, row in by_size.items():
            for column in ("ops", "bytes"):
                assert int(row[column]) == sum(
                    int(p[key][column]) for p in parts_by_size if key in p
                )
        for op, row in total.items():
            if op != "all" and int(row["ops"]):
                split = [r for (o, _), r in by_size.items() if o == op]
                assert int(row["ops"]) == sum(int(r["ops"]) for r in split), (name, op)
                assert int(row["bytes"]) == sum(int(r["bytes"]) for r in split), (name, op)
    workload = tsv(directory / "summary.tsv")
    assert int(workload["get"]["ops"]) > 1000
    assert {size for op, size in sizes(directory / "summary.tsv") if op == "stat"} == {"zero"}
    # both agents run on this host: its per-host numbers are the whole run's
    (host,) = (directory / "hosts").iterdir()
    assert host.name == socket.gethostname()
    for name in ("summary.tsv", "prepare.tsv", "cleanup.tsv"):
        assert tsv(host / name) == tsv(directory / name), name
    assert float(workload["all"]["p99_us"]) >= float(workload["all"]["p50_us"]) > 0
    record = run_json(result)
    assert record["status"] == "completed" and record["exit_code"] == 0
    assert set(record["start_skew_ms"]) == {"prepare", "workload", "cleanup"}
    assert record["start_skew_ms"]["workload"] < 500  # loose: a busy host; bench/ measures it
    for agent in record["agents"]:
        assert agent["final_state"] == "completed" and agent["clock_rtt_ms"] is not None
        # a null:// worker loops flat out: the agent process keeps a core busy when it gets one
        # (how much it gets depends on what else the machine runs, so only a loose bound)
        facts = agent["stages"]["workload"]
        busy = facts["cpu_user_s"] + facts["cpu_system_s"]
        assert busy > 0.1 and 0.1 < facts["cpu_cores"] < 2.5, facts
    lines = (directory / "perf_log.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["elapsed_s", "stage", "agent"]
    windows = perf_log_windows(directory)
    # the time series adds up to the final numbers: each agent's measured windows hold
    # exactly the operations of its summary
    for agent in agents:
        summary = tsv(directory / "agents" / agent.id / "summary.tsv")
        logged = sum(
            int(rows[agent.id]["ops"])
            for (stage, _), rows in windows.items()
            if stage == "workload" and agent.id in rows and rows[agent.id]["warmup"] == "0"
        )
        assert logged == int(summary["all"]["ops"]), agent.id
    # histograms.json holds the merged histograms the percentiles came from: a reader can
    # recompute summary.tsv's p99 (nearest rank, bucket midpoint clamped to the max)
    histograms = json.loads((directory / "histograms.json").read_text())["stages"]
    get = histograms["workload"]["all"]["get"]
    assert get["ops"] == int(workload["get"]["ops"]) == sum(n for _, _, n in get["hist"])
    rank, seen = math.ceil(0.99 * get["ops"]), 0
    for low, high, n in get["hist"]:
        seen += n
        if seen >= rank:
            p99_ns = min(low + (high - low - 1) // 2, get["max_ns"])
            break
    assert round(p99_ns / 1000, 1) == float(workload["get"]["p99_us"])
    assert histograms["workload"]["hosts"][socket.gethostname()]["get"] == get
    ops_log = (directory / "op_log.tsv").read_text().splitlines()
    assert ops_log[0].split("\t")[:3] == ["elapsed_s", "stage", "op"]
    assert {line.split("\t")[2] for line in ops_log[1:] if "\tworkload\t" in line} == {
        "get",
        "put",
        "stat",
    }
    assert "agents:" in (directory / "config.yaml").read_text()


def quick_stats(cfg):
    """STATS every 20 ms: a stage of a few hundred thousand null:// objects then reports
    progress many times over (the abort needs one report of it), instead of needing millions
    of objects to outlast a 200 ms interval."""
    return attrs.evolve(cfg, distributed=attrs.evolve(cfg.distributed, stats_interval=20_000_000))


# Real processes, for the phases where worker threads are running; every phase, in virtual
# time: test_virtual.py.
PHASES = {
    # phase: (config, condition on the controller under which to abort)
    "configuring": (
        lambda: null_run("1s"),
        lambda c: any(link.state is PeerState.VALIDATING for link in c.links),
    ),
    "waiting for start": (
        lambda: attrs.evolve(
            null_run("1s", 10),
            distributed=attrs.evolve(null_run().distributed, start_delay=30_000_000_000),
        ),
        # START is sent (the stage is "prepare"), the agents wait for the instant 30 s ahead
        lambda c: c.stage == "prepare" and all(link.state is PeerState.READY for link in c.links),
    ),
    "prepare": (
        lambda: quick_stats(null_run("1s", 400_000)),
        lambda c: any(
            link.latest is not None and link.latest.stage == "prepare" and link.latest.done > 0
            for link in c.links
        ),
    ),
    "workload": (
        lambda: null_run("60s"),
        lambda c: any(
            link.latest is not None and link.latest.stage == "workload" for link in c.links
        ),
    ),
    "cleanup": (
        lambda: quick_stats(null_run("200ms", 400_000)),
        lambda c: any(
            link.latest is not None and link.latest.stage == "cleanup" and link.latest.done > 0
            for link in c.links
        ),
    ),
}


@pytest.mark.parametrize("phase", ["workload", "cleanup"])
async def test_abort_in_every_phase_then_the_agents_serve_the_next_run(
    tmp_path: Path, phase: str
) -> None:
    make_config, condition = PHASES[phase]
    cfg = make_config()
    with local_agents(tmp_path, 2) as agents:
        controller = controller_for(cfg, agents, tmp_path)
        t0 = time.monotonic()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def abort_when_ready() -> None:
                    await controller.wait_for(lambda: condition(controller))
                    controller.request_abort(f"test abort in {phase}", user=True)

                nursery.start_soon(abort_when_ready)
                result = await controller.run()
                nursery.cancel_scope.cancel()
        assert time.monotonic() - t0 < 30
        assert (result.exit_code, result.status) == (130, "aborted")
        record = run_json(result)
        assert record["abort_reason"] == f"test abort in {phase}"
        assert {a["final_state"] for a in record["agents"]} == {"aborted"}
        # the same agent processes serve the next run normally
        again = controller_for(null_run("300ms", 10), agents, tmp_path)
        with trio.fail_after(60):
            second = await again.run()
        assert second.exit_code == 0, run_json(second)


async def test_an_agent_paused_past_dead_after_recovers_and_the_run_completes(
    tmp_path: Path,
) -> None:
    with local_agents(tmp_path, 2) as agents:
        controller = controller_for(null_run("5s"), agents, tmp_path)
        paused = agents[1]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def pause_and_resume() -> None:
                    link = controller.links[1]
                    await controller.wait_for(lambda: link.state is PeerState.RUNNING)
                    paused.signal(signal.SIGSTOP)
                    await controller.wait_for(lambda: link.state is PeerState.DISCONNECTED)
                    paused.signal(signal.SIGCONT)

                nursery.start_soon(pause_and_resume)
                result = await controller.run()
    assert (result.exit_code, result.status) == (0, "completed")
    record = run_json(result)
    agent = record["agents"][1]
    assert agent["disconnects"] >= 1 and agent["recoveries"] >= 1
    events = [(e["agent"], e["event"]) for e in record["timeline"]]
    assert (paused.id, "disconnected") in events


@pytest.mark.parametrize("policy", ["continue", "abort"])
async def test_an_agent_killed_mid_run_is_detected_and_the_others_results_are_intact(
    tmp_path: Path, policy: str
) -> None:
    with local_agents(tmp_path, 3) as agents:
        controller = controller_for(null_run("3s", policy=policy), agents, tmp_path)
        victim = agents[2]
        killed_at = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def kill_during_workload() -> None:
                    link = controller.links[2]
                    await controller.wait_for(
                        lambda: link.latest is not None and link.latest.stage == "workload"
                    )
                    victim.signal(signal.SIGKILL)
                    killed_at.append(trio.current_time())
                    await controller.wait_for(lambda: link.state is PeerState.FAILED)
                    killed_at.append(trio.current_time())

                nursery.start_soon(kill_during_workload)
                result = await controller.run()
    assert (result.exit_code, result.status) == (1, "partial")
    assert killed_at[1] - killed_at[0] < 2.0  # a closed connection is detected at once
    record = run_json(result)
    states = {a["id"]: a["final_state"] for a in record["agents"]}
    survivors = "completed" if policy == "continue" else "aborted"
    assert states == {"a1": survivors, "a2": survivors, "a3": "failed"}
    assert record["agents"][2]["lost"] is True
    summary = tsv(result.results_dir / "summary.tsv")
    parts = [tsv(result.results_dir / "agents" / a.id / "summary.tsv") for a in agents]
    assert int(parts[2]["all"]["ops"]) > 0  # the lost agent's last stats are kept
    assert int(summary["all"]["ops"]) == sum(int(p["all"]["ops"]) for p in parts)
    assert record["stages"]["workload"]["partial_agents"] == (
        ["a3"] if policy == "continue" else ["a1", "a2", "a3"]
    )


async def test_skewed_agent_clocks_still_start_together(tmp_path: Path) -> None:
    envs = [{"TRIOBENCH_CLOCK_SKEW_MS": "5000"}, {"TRIOBENCH_CLOCK_SKEW_MS": "-3000"}]
    with local_agents(tmp_path, 2, envs) as agents:
        controller = controller_for(null_run("500ms"), agents, tmp_path)
        with trio.fail_after(60):
            result = await controller.run()
    assert result.exit_code == 0
    record = run_json(result)
    offsets = [a["clock_offset_ms"] for a in record["agents"]]
    # Bounds far from the 8,000 ms an uncorrected start would show, and far above what a
    # busy machine adds (an offset is known to within half a PING's round trip; a start is
    # late by however long the OS takes to run the agent): this proves the correction, while
    # bench/ (skew) measures how close it gets.
    assert offsets[0] == pytest.approx(5000, abs=250)
    assert offsets[1] == pytest.approx(-3000, abs=250)
    for stage, skew in record["start_skew_ms"].items():
        assert skew < 500, (stage, skew)  # without correction they would be 8000 ms apart


async def test_a_busy_agent_refuses_a_second_controller(tmp_path: Path) -> None:
    with local_agents(tmp_path, 1) as agents:
        first = controller_for(null_run("2s"), agents, tmp_path)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def second_controller() -> None:
                    await first.wait_for(lambda: first.links[0].state is PeerState.RUNNING)
                    second = controller_for(null_run("1s"), agents, tmp_path)
                    result = await second.run()
                    assert (result.exit_code, result.status) == (3, "failed")
                    errors = run_json(result)["errors"]
                    assert len(errors) == 1 and "is busy with run" in errors[0]
                    assert first.run_id in errors[0]

                nursery.start_soon(second_controller)
                result = await first.run()
    assert result.exit_code == 0  # the running one is untouched
    assert "busy" in agents[0].log_text()


def test_cli_run_demo_then_ctrl_c_on_the_controller(tmp_path: Path) -> None:
    """The README's main job, as a user runs it; then an interrupted run exits 130."""
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(
        NULL_RUN.format(duration="60s", count=1000)
        + "distributed: {stats_interval: 200ms, start_delay: 300ms}\n"
    )
    command = [
        sys.executable,
        "-m",
        "trio_bench",
        "run",
        str(cfg),
        "--local-agents",
        "2",
        "--results-dir",
        str(tmp_path / "results"),
        "--display",
        "plain",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    for line in process.stdout:
        if "workload [" in line and re.search(r"all: [1-9][\d,]* ops/s", line):
            break
        assert time.monotonic() < deadline, "the run never reached the workload"
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert time.monotonic() - interrupted < 10
    assert "run aborted" in out and "Traceback" not in err
    (results,) = (tmp_path / "results").iterdir()
    record = json.loads((results / "run.json").read_text())
    assert record["status"] == "aborted" and record["exit_code"] == 130
    assert {a["final_state"] for a in record["agents"]} == {"aborted"}
    assert int(tsv(results / "summary.tsv")["all"]["ops"]) > 0  # partial results written


def test_agent_startup_errors_are_one_line(tmp_path: Path) -> None:
    first = start_agent(tmp_path, "first")
    try:
        taken = subprocess.run(
            [sys.executable, "-m", "trio_bench", "agent", "--listen", first.address],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert taken.returncode == 3
        assert taken.stderr.strip().startswith(f"triobench: cannot listen on {first.address}")
        assert len(taken.stderr.strip().splitlines()) == 1
    finally:
        stop(first)
    exposed = subprocess.run(
        [sys.executable, "-m", "trio_bench", "agent", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TRIOBENCH_TOKEN": ""},
    )
    assert exposed.returncode == 2
    assert "not a loopback address: give a token" in exposed.stderr


def _consecutive_free_ports(count: int) -> int:
    import random

    for _ in range(100):
        base = random.randrange(10000, 32000)  # below the kernel's ephemeral port range
        sockets = []
        try:
            for k in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + k))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free consecutive ports")


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids_with_argument(argument: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if argument.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _supervisor(tmp_path: Path, agent_id: str) -> tuple[subprocess.Popen[str], int, list[str]]:
    """``agent --processes 2`` on two free consecutive ports, and the ids it reports ready.
    Ports found free can be taken before the agents bind them: then it tries other ports."""
    for _ in range(3):
        port = _consecutive_free_ports(2)
        supervisor = subprocess.Popen(
            [
                *(sys.executable, "-m", "trio_bench", "agent", "--listen", f"127.0.0.1:{port}"),
                *("--processes", "2", "--id", agent_id, "--state-dir", str(tmp_path / "state")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert supervisor.stdout is not None and supervisor.stderr is not None
        lines = [supervisor.stdout.readline(), supervisor.stdout.readline()]
        if all(" listening on " in line for line in lines):
            return supervisor, port, sorted(line.split()[2] for line in lines)
        children = _children(supervisor.pid)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        for pid in children:  # in their own sessions: not in the supervisor's group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        err = supervisor.stderr.read()
        supervisor.stdout.close()
        supervisor.stderr.close()
        assert "Address already in use" in err, f"exit {supervisor.returncode}: {lines} {err}"
    raise AssertionError("no two free consecutive ports stayed free")


def test_one_agent_command_runs_several_processes_and_restarts_a_crashed_one(
    tmp_path: Path,
) -> None:
    """``agent --processes 2``: two agents on consecutive ports, listed as HOST:PORTx2; a
    SIGKILLed one is back for the next run; SIGTERM stops them all."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(NULL_RUN.format(duration="300ms", count=10))
    supervisor, port, ready = _supervisor(tmp_path, "host")
    assert supervisor.stdout is not None and supervisor.stderr is not None
    try:
        assert ready == ["host-1", "host-2"]

        def controller() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *(sys.executable, "-m", "trio_bench", "controller", str(cfg)),
                    *("--agents", f"127.0.0.1:{port}x2", "--display", "quiet"),
                    *("--results-dir", str(tmp_path / "results")),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        first = controller()
        assert first.returncode == 0, first.stderr
        (crashed,) = _pids_with_argument("host-2")
        os.kill(crashed, signal.SIGKILL)
        assert "host-2 listening on" in supervisor.stdout.readline()  # restarted
        second = controller()
        assert second.returncode == 0, second.stderr
        for results in (tmp_path / "results").iterdir():
            assert sorted(p.name for p in (results / "agents").iterdir()) == ["host-1", "host-2"]
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=20) == 0
        assert "agent host-2 exited with signal SIGKILL; restarting it" in supervisor.stderr.read()
        assert _pids_with_argument("host-1") == _pids_with_argument("host-2") == []
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            for pid in _pids_with_argument("host-1") + _pids_with_argument("host-2"):
                os.kill(pid, signal.SIGKILL)
        supervisor.wait()
        supervisor.stdout.close()
        supervisor.stderr.close()


def test_agent_processes_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """SIGKILL gives the supervisor no chance to stop its agents: they must end by themselves
    (parent-death signal), or they would keep holding their ports."""
    supervisor, _port, ready = _supervisor(tmp_path, "orphan")
    assert supervisor.stdout is not None and supervisor.stderr is not None
    try:
        assert ready == ["orphan-1", "orphan-2"]
        children = _children(supervisor.pid)
        assert len(children) == 2
        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children):
            assert time.monotonic() < deadline, "agent processes outlived their supervisor"
            time.sleep(0.1)
    finally:
        for pid in _pids_with_argument("orphan-1") + _pids_with_argument("orphan-2"):
            os.kill(pid, signal.SIGKILL)
        supervisor.stdout.close()
        supervisor.stderr.close()


def test_host_names_from_peers_are_safe_folder_names() -> None:
    from trio_bench.controller._results import _folder_name

    assert _folder_name("lg1.lab") == "lg1.lab"
    assert _folder_name("../../etc") == "_.._.._etc"
    assert _folder_name("..") == "_.."
    assert _folder_name("a/b\\c d") == "a_b_c_d"
    assert len(_folder_name("x" * 300)) == 64


def test_agents_on_consecutive_ports_are_written_host_port_x_count(capsys) -> None:
    import typer

    from trio_bench.cli import _agents_from
    from trio_bench.config import parse_config

    cfg = parse_config("target: null://\nworkload: [{op: list, path: x/}]\n")
    agents = _agents_from("h1:7761x3, h2:7761", cfg)
    assert [a.address for a in agents] == ["h1:7761", "h1:7762", "h1:7763", "h2:7761"]
    with pytest.raises(typer.Exit):
        _agents_from("h1:7761x3,h1:7763", cfg)  # the third of h1's and h1:7763 collide
    assert capsys.readouterr().err == "triobench: --agents: an address is listed twice\n"


async def test_when_the_controller_dies_agents_abort_keep_results_and_serve_the_next(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text(
        NULL_RUN.format(duration="60s", count=100)
        + """
distributed: {stats_interval: 200ms, ping_interval: 200ms, warn_after: 600ms, dead_after: 1s,
              probe_timeout: 500ms, start_delay: 300ms, orphan_timeout: 2s}
"""
    )
    with local_agents(tmp_path, 2) as agents:
        process = controller_process(cfg, agents, tmp_path / "results")
        wait_for_workload(process)
        process.kill()
        killed = time.monotonic()
        process.communicate()
        (results,) = (tmp_path / "results").iterdir()
        run_id = json.loads((results / "run.json").read_text())["run_id"]
        # the agents are busy until they notice (orphan timeout 2 s) and abort
        while True:
            second = controller_for(null_run("300ms", 10), agents, tmp_path)
            with trio.fail_after(60):
                result = await second.run()
            if result.exit_code == 0:
                break
            assert "busy" in result.message
            assert time.monotonic() - killed < 15, "the agents never gave the run up"
            await trio.sleep(0.5)
        freed_after = time.monotonic() - killed
    assert 2.0 <= freed_after < 10.0
    for agent in agents:
        kept = json.loads((tmp_path / "agent-state" / agent.id / f"{run_id}.json").read_text())
        assert kept["outcome"] == "aborted" and not kept["final_acknowledged"]
        workload = [s for s in kept["summaries"] if s["stage"] == "workload"]
        assert workload and workload[0]["ops"]["get"]["ops"] > 0  # results kept locally
        assert "orphan timeout" in agent.log_text()


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text(
        NULL_RUN.format(duration="60s", count=100)
        + "distributed: {stats_interval: 200ms, start_delay: 300ms}\n"
    )
    with local_agents(tmp_path, 2) as agents:
        process = controller_process(cfg, agents, tmp_path / "results")
        wait_for_workload(process)
        agents[0].signal(signal.SIGSTOP)  # this one cannot confirm the abort
        try:
            process.send_signal(signal.SIGINT)
            time.sleep(0.5)
            second = time.monotonic()
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=30)
            assert time.monotonic() - second < 2.0  # not the 10 s wait for confirmations
        finally:
            agents[0].signal(signal.SIGCONT)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    (results,) = (tmp_path / "results").iterdir()
    record = json.loads((results / "run.json").read_text())
    assert record["status"] == "aborted"
    assert any("second SIGINT" in e for e in record["errors"])


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("how", ["SIGKILL", "SIGHUP", "two SIGINTs to its process group"])
def test_run_never_leaves_its_local_agents_behind(tmp_path: Path, how: str, reliability) -> None:
    cfg = tmp_path / "long.yaml"
    cfg.write_text(
        NULL_RUN.format(duration="60s", count=100)
        + "distributed: {stats_interval: 200ms, start_delay: 300ms}\n"
    )
    command = [sys.executable, "-m", "trio_bench", "run", str(cfg), "--local-agents", "2"]
    command += ["--results-dir", str(tmp_path / "results"), "--display", "plain"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
    )
    try:
        wait_for_workload(process)
        agents = _children(process.pid)
        assert len(agents) == 2
        if how == "SIGKILL":
            process.kill()
        elif how == "SIGHUP":
            process.send_signal(signal.SIGHUP)
        else:
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.2)
            os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=30)
        gone_by = time.monotonic() + 3
        while any(_alive(pid) for pid in agents) and time.monotonic() < gone_by:
            time.sleep(0.05)
        left = [pid for pid in agents if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert left == [], f"agents still running after {how}"
    if how == "SIGHUP":  # handled like Ctrl-C: the run is aborted and its results written
        assert process.returncode == 130
        (results,) = (tmp_path / "results").iterdir()
        record = json.loads((results / "run.json").read_text())
        assert record["status"] == "aborted"
    reliability(
        f"`triobench run` ended by {how}",
        "no local agent outlives it (within 3 s); SIGHUP aborts the run like Ctrl-C",
        f"0 of 2 agents left; exit {process.returncode}",
    )


async def test_an_id_in_the_config_that_differs_from_the_agents_own_is_refused(
    tmp_path: Path,
) -> None:
    from .test_bad_input import serving_agent

    async with serving_agent() as (_server, address):  # an agent whose --id is "target"
        controller = quiet_controller(
            config(NULL_RUN.format(duration="200ms", count=10)),
            [AgentAddress(address=address, id="lg7")],
            tmp_path / "results",
        )
        with trio.fail_after(30):
            result = await controller.run()
    assert result.exit_code == 2
    assert result.errors == [
        f"the agent at {address} is 'target' (its --id), the config says 'lg7': make them "
        "agree, or leave the id out of the config"
    ]
    assert not result.started and [p.name for p in result.results_dir.iterdir()] == ["run.json"]


def test_command_line_overrides_reach_the_plan_and_config_as_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(NULL_RUN.format(duration="60s", count=10))
    command = [sys.executable, "-m", "trio_bench", "run", str(cfg), "--local-agents", "1"]
    command += ["--results-dir", str(tmp_path / "results"), "--display", "plain"]
    command += [
        "--duration",
        "300ms",
        "--concurrency",
        "2",
        "--set",
        "distributed.start_delay=200ms",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "duration     300ms" in done.stdout and "concurrency  2 worker" in done.stdout
    assert "overrides    --set duration=300ms --set concurrency=2" in done.stdout
    (results,) = (tmp_path / "results").iterdir()
    as_run = (results / "config.yaml").read_text()
    assert "with --set duration=300ms" in as_run.splitlines()[0]
    import yaml

    from trio_bench.config import parse_duration

    data = yaml.safe_load(as_run)
    assert data["concurrency"] == 2
    assert parse_duration(data["distributed"]["start_delay"]) == 200_000_000
    # in the units people write, and runnable as is: the header says how to repeat the run
    assert (data["duration"], data["distributed"]["start_delay"]) == ("300ms", "200ms")
    assert not re.search(r"\d+ns\b", as_run) and "agents:" not in as_run
    repeat = as_run.splitlines()[1]
    assert repeat == "# to repeat the run: triobench run config.yaml --local-agents 1"
    command = [sys.executable, "-m", "trio_bench", "run", str(results / "config.yaml")]
    command += ["--local-agents", "1", "--results-dir", str(tmp_path / "again")]
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    (second,) = (tmp_path / "again").iterdir()
    assert yaml.safe_load((second / "config.yaml").read_text()) == data


async def test_an_aborted_run_cleans_up_what_it_created(tmp_path: Path, reliability) -> None:
    from .test_bad_input import serving_agent

    data = tmp_path / "data"
    data.mkdir()
    cfg = config(f"""
target: file://{data}/
duration: 60s
prepare: {{ensure_objects: [{{base_uri: d/, count: 500, object_size: 1KiB}}], cleanup: true}}
workload: [{{op: get, path: "d/*", weight: 3}}, {{op: put, path: "new/", object_size: 1KiB}}]
""")
    async with serving_agent() as (_server, address):
        controller = quiet_controller(cfg, [AgentAddress(address=address)], tmp_path / "r")
        async with trio.open_nursery() as nursery:
            done: list[object] = []

            async def run() -> None:
                done.append(await controller.run())

            nursery.start_soon(run)
            with trio.fail_after(30):
                await controller.wait_for(
                    lambda: (
                        controller.links[0].latest is not None
                        and controller.links[0].latest.stage == "workload"
                    )
                )
            controller.request_abort("interrupted by the user (test)", user=True)
    (result,) = done
    assert result.exit_code == 130  # type: ignore[attr-defined]
    left = [p for p in data.rglob("*") if p.is_file()]
    assert left == []
    record = json.loads((result.results_dir / "run.json").read_text())  # type: ignore[attr-defined]
    cleaned = record["abort_cleanup"]
    assert cleaned.startswith("cleanup after the abort: ") and "may be left" not in cleaned
    # the environment a reader needs: the agent's host and the file system under the target
    (agent,) = record["agents"]
    env = agent["environment"]
    assert {"hostname", "cpus", "kernel", "python", "triobench", "fs_type"} <= set(env), env
    assert str(data).startswith(env["mount_point"]) and env["mount_options"]
    assert record["controller"]["hostname"] == socket.gethostname()
    assert record["controller"]["command_line"]
    reliability(
        "Ctrl-C during a workload of a run with cleanup: true (file://)",
        "the agents delete what the run created (bounded, shown), then confirm the abort",
        f"exit 130; 0 files left; {cleaned}",
    )


@pytest.mark.reliability
def test_a_second_ctrl_c_skips_the_cleanup_and_triobench_cleanup_removes_the_rest(
    tmp_path: Path, reliability
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "big.yaml"
    cfg.write_text(f"""
target: file://{data}/
duration: 60s
concurrency: 2
prepare: {{ensure_objects: [{{base_uri: d/, count: 1000000, object_size: 0}}], cleanup: true}}
workload: [{{op: get, path: "d/*"}}]
distributed: {{stats_interval: 200ms, start_delay: 300ms}}
""")
    command = [sys.executable, "-m", "trio_bench", "run", str(cfg), "--local-agents", "1"]
    command += ["--results-dir", str(tmp_path / "results"), "--display", "plain"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:  # prepare is creating files
        if "prepare [" in line and " 0/" not in line:
            break
    process.send_signal(signal.SIGINT)
    for line in process.stdout:  # the agent is cleaning up after the abort
        if "aborting: cleaning up" in line:
            break
    second = time.monotonic()
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    took = time.monotonic() - second
    assert process.returncode == 130, err
    assert took < 5  # not the cleanup's bound (60 s)
    (results,) = (tmp_path / "results").iterdir()
    record = json.loads((results / "run.json").read_text())
    assert any("the cleanup after the abort was skipped" in e for e in record["errors"]), record
    time.sleep(0.5)  # the agent saw the GOODBYE (or its parent's death) and stopped
    left = sum(1 for p in data.rglob("*") if p.is_file())
    done = subprocess.run(
        [sys.executable, "-m", "trio_bench", "cleanup", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [p for p in data.rglob("*") if p.is_file()] == []
    reliability(
        "a second Ctrl-C while the agents clean up after an abort; then `triobench cleanup`",
        "exit 130 at once, cleanup skipped and said so; `triobench cleanup` removes the rest",
        f"exited {took:.1f} s after the second Ctrl-C; {left:,} files left, 0 after "
        f"`triobench cleanup` ({done.stdout.strip()[:60]})",
    )


async def test_a_frozen_agent_contributes_nothing_to_the_windows_it_missed(
    tmp_path: Path,
) -> None:
    """An agent frozen (SIGSTOP) for 2 s, shorter than dead_after: the windows it missed hold
    only the other agent, ``all`` is exactly the sum of the agents that reported, and the
    frozen agent's next row covers its long interval at its own (low) rate."""
    cfg = null_run("5s", count=100)
    cfg = attrs.evolve(
        cfg,
        distributed=attrs.evolve(
            cfg.distributed, warn_after=10**9, dead_after=6 * 10**9, probe_timeout=3 * 10**9
        ),
    )
    with local_agents(tmp_path, 2) as agents:
        controller = controller_for(cfg, agents, tmp_path)

        async def freeze() -> None:
            await controller.wait_for(
                lambda: all(link.state is PeerState.RUNNING for link in controller.links)
            )
            await trio.sleep(1.0)
            agents[1].signal(signal.SIGSTOP)
            await trio.sleep(2.0)
            agents[1].signal(signal.SIGCONT)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(freeze)
                result = await controller.run()
    assert result.exit_code == 0, result.message
    windows = perf_log_windows(result.results_dir)  # asserts all == sum in every window
    workload = [rows for (stage, _), rows in sorted(windows.items()) if stage == "workload"]
    frozen = agents[1].id
    missed = [rows for rows in workload if frozen not in rows]
    assert len(missed) >= 6, [sorted(rows) for rows in workload]  # ~10 windows of 200 ms
    for rows in missed:
        assert int(rows["all"]["agents"]) == 1
        assert rows["all"]["ops_per_s"] == rows[agents[0].id]["ops_per_s"]
