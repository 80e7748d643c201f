"""Agents as separate hosts: each in its own network namespace, joined to the controller by a
veth pair with real delay, jitter and loss (netem). Needs root, iproute2 and the netem qdisc;
skipped with the reason where the machine does not have them. Every address used belongs to
namespaces this test creates and deletes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_bench.config import AgentAddress, parse_config

from .agents import quiet_controller

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

NETEM = "delay 20ms 5ms loss 1%"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


def _netem_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = "tbprobe0"
    if _ip("link", "add", probe, "type", "veth", "peer", "name", "tbprobe1").returncode != 0:
        return "cannot create network interfaces here"
    try:
        done = subprocess.run(
            ["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return f"the netem qdisc is not available in this kernel ({done.stderr.strip()})"
    finally:
        _ip("link", "del", probe)
    return None


@contextlib.contextmanager
def namespaced_agents(tmp_path: Path, count: int) -> Iterator[list[tuple[str, str]]]:
    """``count`` agents, each in namespace tbns<i>, reachable at 10.213.<i>.2."""
    created: list[int] = []
    processes: list[subprocess.Popen[str]] = []
    token = tmp_path / "token"
    token.write_text("netns-test-token\n")
    try:
        agents = []
        for i in range(1, count + 1):
            ns, host, peer = f"tbns{i}", f"tbh{i}", f"tbp{i}"
            _ip("netns", "add", ns)
            created.append(i)
            _ip("link", "add", host, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("addr", "add", f"10.213.{i}.1/24", "dev", host)
            _ip("link", "set", host, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"10.213.{i}.2/24", "dev", peer)
            _ip("netns", "exec", ns, "ip", "link", "set", peer, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            subprocess.run(
                ["tc", "qdisc", "add", "dev", host, "root", "netem", *NETEM.split()], check=True
            )
            process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-m",
                    "trio_bench",
                    "agent",
                    "--listen",
                    f"10.213.{i}.2:7761",
                    "--id",
                    f"host{i}",
                    "--token-file",
                    str(token),
                    "--state-dir",
                    str(tmp_path / "state"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            processes.append(process)
            assert process.stdout is not None
            assert " listening on " in process.stdout.readline()
            agents.append((f"host{i}", f"10.213.{i}.2:7761"))
        yield agents
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
            if process.stdout:
                process.stdout.close()
        for i in created:
            _ip("link", "del", f"tbh{i}")
            _ip("netns", "del", f"tbns{i}")


def test_agents_in_their_own_namespaces_over_a_lossy_delayed_link(
    tmp_path: Path, reliability
) -> None:
    reason = _netem_missing()
    if reason:
        reliability(
            "agents in network namespaces, link with netem " + NETEM,
            "run completes; offsets corrected despite delay and jitter",
            f"skipped: {reason}",
        )
        pytest.skip(reason)
    cfg = parse_config("""
target: null://
duration: 3s
prepare: {ensure_objects: [{base_uri: data/, count: 1000, object_size: 4KiB}]}
workload: [{op: get, path: "data/*"}]
distributed: {warn_after: 3s, dead_after: 10s, start_delay: 1s}
""")
    with namespaced_agents(tmp_path, 2) as agents:
        controller = quiet_controller(
            cfg,
            [AgentAddress(address=a, id=i) for i, a in agents],
            tmp_path / "results",
            token=b"netns-test-token",
        )
        result = trio.run(controller.run)
    assert result.exit_code == 0, result.message
    rtts = [link.estimator.best.rtt_ns / 1e6 for link in controller.links if link.estimator.best]
    assert all(rtt > 15 for rtt in rtts)
    reliability(
        "agents in network namespaces, link with netem " + NETEM,
        "run completes; offsets corrected despite delay and jitter",
        f"exit 0; best RTT {min(rtts):.1f}-{max(rtts):.1f} ms; start skew "
        f"{max(controller.skew_ms.values()):.2f} ms",
    )
