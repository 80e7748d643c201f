"""Finished runs: the HTML report (rendered in headless Chromium), compare as a CI gate,
merge, and --json. Two short real runs (two local agents each) feed every test here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trio_bench.analysis import read_results
from trio_bench.analysis._compare import compare

pytestmark = pytest.mark.slow

RUN = """
name: {name}
target: null://
duration: 2s
concurrency: 2
io_rate: {{iops: {iops}}}
prepare: {{ensure_objects: [{{base_uri: d/, count: 200, object_size: 4KiB}}], cleanup: true}}
workload:
  - {{op: get, path: "d/*", weight: 3}}
  - {{op: put, path: "new/", weight: 1, object_size: 16KiB}}
distributed: {{stats_interval: 250ms, start_delay: 300ms}}
"""


def triobench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs of one workload: ``base`` at 800 ops/s per agent, ``slow`` throttled to a
    quarter of that. Their --json documents are kept beside them."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, iops in (("base", 800), ("slow", 200)):
        config = base / f"{name}.yaml"
        config.write_text(RUN.format(name=name, iops=iops))
        done = triobench(
            "run",
            str(config),
            "--local-agents",
            "2",
            "--results-dir",
            str(base / name),
            "--json",
            "--display",
            "plain",
        )
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)  # stdout holds only the JSON document
        (directory,) = (base / name).iterdir()
        assert document["results_dir"] == str(directory)
        (directory / "run.stdout.json").write_text(done.stdout)
        out[name] = directory
    return out


def test_json_is_the_only_thing_on_stdout_and_matches_the_results(runs) -> None:
    document = json.loads((runs["base"] / "run.stdout.json").read_text())
    assert (document["status"], document["exit_code"]) == ("completed", 0)
    get = document["stages"]["workload"]["get"]
    summary = read_results(runs["base"]).row("workload", "get")
    assert get["ops"] == int(summary["ops"]) and get["p99_us"] == float(summary["p99_us"])
    assert document["report"].endswith("report.html") and Path(document["report"]).is_file()
    assert [a["final_state"] for a in document["agents"]] == ["completed", "completed"]


def test_compare_a_run_with_itself_and_with_a_quarter_of_its_throughput(runs) -> None:
    same = triobench("compare", str(runs["base"]), str(runs["base"]), "--fail-if-worse", "0")
    assert same.returncode == 0, same.stderr
    assert "+0.0%" in same.stdout and "worse" not in same.stdout.replace("nothing worse", "")
    html = runs["base"].parent / "cmp.html"
    worse = triobench(
        "compare",
        str(runs["base"]),
        str(runs["slow"]),
        "--fail-if-worse",
        "20",
        "--html",
        str(html),
    )
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert re.search(r"worse by 7\d\.\d% \(> 20%\): workload all ops/s", worse.stderr)
    changes = {
        (c.op, c.metric): c.percent
        for c in compare(read_results(runs["base"]), read_results(runs["slow"]))
        if c.stage == "workload"
    }
    assert -80 < changes[("all", "ops/s")] < -70  # a quarter of the rate, measured
    assert "<table>" in html.read_text()
    # better is not worse: the gate holds the other way round
    better = triobench("compare", str(runs["slow"]), str(runs["base"]), "--fail-if-worse", "20")
    assert "ops/s" in better.stdout and "workload  all     ops/s" in better.stdout


def test_runs_of_different_workloads_cannot_be_compared(runs, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs["base"], other)
    summary = (other / "summary.tsv").read_text().splitlines()
    (other / "summary.tsv").write_text(
        "\n".join([summary[0], *(line.replace("put\t", "stat\t") for line in summary[1:])])
    )
    done = triobench("compare", str(runs["base"]), str(other))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"triobench: cannot compare: different workloads: {runs['base']} has op kinds get, put; "
        f"{other} has get, stat"
    ]
    missing = triobench("compare", str(runs["base"]), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def test_merged_runs_add_up_exactly_and_report_and_compare_accept_them(
    runs, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    done = triobench("merge", str(runs["base"]), str(runs["slow"]), "-o", str(out))
    assert done.returncode == 0, done.stderr
    merged, parts = read_results(out), [read_results(runs[n]) for n in ("base", "slow")]
    for op in ("get", "put", "all"):
        row = merged.row("workload", op)
        for column in ("ops", "bytes", "errors"):
            assert int(row[column]) == sum(int(p.row("workload", op)[column]) for p in parts)
        if op != "all":  # histograms.json holds the op kinds
            histogram = merged.histogram("workload", op)
            assert histogram is not None and histogram.ops == int(row["ops"])
    # the merged percentiles lie between the parts' (they come from the merged histogram)
    p99 = [float(p.row("workload", "all")["p99_us"]) for p in parts]
    assert min(p99) <= float(merged.row("workload", "all")["p99_us"]) <= max(p99)
    ids = [a["id"] for a in merged.run["agents"]]
    assert sorted(ids) == ["r1-agent-1", "r1-agent-2", "r2-agent-1", "r2-agent-2"]
    assert all((out / "agents" / i / "summary.tsv").is_file() for i in ids)
    assert triobench("report", str(out)).returncode == 0
    assert triobench("compare", str(runs["base"]), str(out)).returncode == 0
    again = triobench("merge", str(runs["base"]), str(runs["slow"]), "-o", str(out))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


# --- the report in a real browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and not root with apt-get to install Debian's package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"chromium could not be installed: {done.stderr.strip()[-200:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium was installed but is not on PATH")
    return found


def render(html: Path, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with no network."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000",
        "--window-size=1280,6000",
        "--hide-scrollbars",
    ]
    if screenshot is not None:
        subprocess.run(
            [*command, f"--screenshot={screenshot}", html.as_uri()],
            capture_output=True,
            timeout=120,
        )
    done = subprocess.run(
        [*command, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_report_renders_offline_in_chromium_without_script_errors(runs, tmp_path: Path) -> None:
    report = runs["base"] / "report.html"  # written at the end of the run
    text = report.read_text()
    # self-contained: nothing is loaded from anywhere
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text)
    assert "@import" not in text and "url(http" not in text
    assert len(text) < 400_000
    dom = render(report, tmp_path, tmp_path / "report.png")
    assert 'data-rendered="ok"' in dom, re.findall(r"report script error[^<]*", dom)
    plots = int(re.search(r'data-plots="(\d+)"', dom).group(1))
    assert plots >= 10  # throughput x5, latency, CDF and tail per stage
    assert dom.count("<canvas") >= plots
    for text_shown in (
        "ops/s by op kind",
        "latency percentiles per window",
        "Timeline",
        "Environment",
        "Configuration",
        "agent-1",
        "get",
        "put",
    ):
        assert text_shown in dom, text_shown
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_hostile_text_in_results_stays_text(runs, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(runs["base"], hostile)
    record = json.loads((hostile / "run.json").read_text())
    evil = '</script><img src=x onerror="document.body.dataset.pwned=1"><!--'
    record["agents"][0]["failure"] = evil
    record["agents"][0]["environment"]["kernel"] = evil
    record["errors"] = [evil]
    (hostile / "run.json").write_text(json.dumps(record))
    assert triobench("report", str(hostile)).returncode == 0
    dom = render(hostile / "report.html", tmp_path)
    assert 'data-rendered="ok"' in dom and "data-pwned" not in dom  # the handler never ran
    assert "<img" not in dom  # shown as text, not made an element
    assert "&lt;/script&gt;&lt;img src=x" in dom
