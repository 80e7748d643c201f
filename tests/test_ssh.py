"""Agents the controller starts over SSH, against a real OpenSSH server on loopback.

The suite starts its own sshd (Debian's openssh-server; installed here when the tests run as
root with apt-get, otherwise skipped with the reason) on a free port with throwaway host and
user keys, accepting only those keys. Two "hosts" are two destinations that reach it
(127.0.0.1 and localhost)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SSHD = "/usr/sbin/sshd"


def _install_sshd() -> None:
    if Path(SSHD).exists() and shutil.which("ssh") and shutil.which("ssh-keygen"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no OpenSSH server, and not root with apt-get to install openssh-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "openssh-server", "openssh-client"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"openssh-server could not be installed: {done.stderr.strip()[-200:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on loopback; yields (port, user key, a wrong key)."""
    _install_sshd()
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to switch to the logging-in user")
    base = tmp_path_factory.mktemp("sshd")
    for name in ("host", "user", "wrong"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True
        )
    (base / "authorized_keys").write_text((base / "user.pub").read_text())
    os.chmod(base / "authorized_keys", 0o600)
    port = _free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
        "UsePAM no\nPidFile none\nSetEnv PYTHONUNBUFFERED=1\n"
        f"SetEnv PATH={Path(sys.executable).parent}:/usr/bin:/bin\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    with open(base / "sshd.log", "w") as log:
        process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        process.kill()
        pytest.skip(f"sshd did not start: {(base / 'sshd.log').read_text()[-300:]}")
    yield port, base / "user", base / "wrong"
    process.terminate()
    process.wait(10)


def _config(tmp_path: Path, port: int, key: Path, duration: str = "2s") -> Path:
    user = os.environ.get("USER") or "root"
    path = tmp_path / "ssh.yaml"
    path.write_text(
        f"""
name: over-ssh
target: null://
duration: {duration}
concurrency: 1
workload: [{{op: list, path: "x/"}}]
distributed:
  agents:
    - {{ssh: "{user}@127.0.0.1", processes: 2}}
    - {{ssh: "ssh://{user}@localhost:{port}"}}
  ssh:
    port: {port}
    key: {key}
    options: ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "LogLevel=ERROR"]
    command: {sys.executable} -m trio_bench
    timeout: 30s
  stats_interval: 200ms
  ping_interval: 200ms
  warn_after: 1s
  dead_after: 3s
  start_delay: 500ms
"""
    )
    return path


def _controller(config: Path, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "trio_bench", "controller", str(config)]
    command += ["--results-dir", str(tmp_path / "results"), "--display", "plain", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _remote_agents() -> list[str]:
    """Agent processes started by sshd for these tests (they carry --lifeline)."""
    out = subprocess.run(
        ["pgrep", "-af", "trio_bench agent"], capture_output=True, text=True
    ).stdout
    return [
        line
        for line in out.splitlines()
        if "--lifeline" in line or "agent --listen 0.0.0.0:0" in line
    ]


def _wait_gone(timeout_s: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _remote_agents():
        time.sleep(0.2)
    return _remote_agents()


def test_a_run_on_two_hosts_started_over_ssh(sshd, tmp_path: Path) -> None:
    port, key, _wrong = sshd
    done = _controller(_config(tmp_path, port, key), tmp_path)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, out + err
    (results,) = (tmp_path / "results").iterdir()
    record = json.loads((results / "run.json").read_text())
    assert [a["final_state"] for a in record["agents"]] == ["completed"] * 3
    # the agents' logs are in the results, one per destination
    logs = sorted(p.name for p in (results / "ssh").iterdir())
    assert len(logs) == 2 and all(name.endswith(".log") for name in logs), logs
    # config.yaml as run lists the SSH entries (runnable again), not the ports they got
    as_run = (results / "config.yaml").read_text()
    assert "ssh:" in as_run and "127.0.0.1:" not in as_run.split("ssh:")[0].split("agents:")[1]
    assert _wait_gone() == []  # stopped when the run ended


def test_the_agents_go_when_the_controller_is_killed(sshd, tmp_path: Path) -> None:
    port, key, _wrong = sshd
    process = _controller(_config(tmp_path, port, key, duration="60s"), tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_remote_agents()) < 3:
        time.sleep(0.2)
    assert len(_remote_agents()) >= 3
    time.sleep(2)  # the run is under way
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert _wait_gone() == []  # ssh died with the controller; the agents' stdin closed


def test_a_wrong_key_is_one_line_and_exit_3(sshd, tmp_path: Path) -> None:
    port, _key, wrong = sshd
    done = _controller(_config(tmp_path, port, wrong), tmp_path)
    _out, err = done.communicate(timeout=120)
    assert done.returncode == 3, err
    lines = err.strip().splitlines()
    assert any("Permission denied" in line and "ssh " in line for line in lines), lines
    assert lines[-1].startswith("triobench: could not start the SSH agents")
    assert _wait_gone() == []
