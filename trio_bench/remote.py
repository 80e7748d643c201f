"""Agents the controller starts itself over SSH (``distributed.agents`` entries with ``ssh``).

Through the system's OpenSSH client (its configuration, keys, agent and known hosts apply;
no crypto of our own): one ``ssh`` per destination runs ``triobench agent --listen
0.0.0.0:0 --processes N --token-file - --lifeline`` there. The token goes on stdin, never on
a command line; stdin then stays open as the agents' lifeline: when this process ends however
it ends (its ``ssh`` children get SIGTERM when it dies, on Linux), the connection closes, the
agents' stdin ends and they stop. The agents print the ports they got; their log (ssh's
stderr) goes to ``<results>/ssh/<destination>.log``.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from trio_bench.config import AgentAddress, SshAgents, SshSettings, parse_destination

LISTENING = re.compile(r"^triobench agent (\S+) listening on (\S+):(\d+)\s*$")
STOP_WAIT_S = 10.0


class SshStartFailed(Exception):
    """SSH agents could not be started: one line per destination that failed."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


@attrs.define
class SshAgent:
    destination: str
    host: str  # where the controller connects
    process: subprocess.Popen[bytes]
    log: Path
    expected: int
    agents: list[AgentAddress] = attrs.Factory(list)
    lines: list[str] = attrs.Factory(list)  # stdout lines not understood (for the error)


def ssh_argv(settings: SshSettings, destination: str, remote: str, timeout_s: float) -> list[str]:
    """The ``ssh`` command line that runs ``remote`` on ``destination``."""
    user, host, port = parse_destination(destination)
    argv = [
        "ssh",
        "-T",  # no terminal: stdin is a pipe (token, lifeline), output is lines
        "-o",
        "BatchMode=yes",  # never prompt: a missing key is an error, not a hang
        "-o",
        f"ConnectTimeout={max(1, int(timeout_s))}",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]
    if settings.key:
        argv += ["-i", os.path.expanduser(settings.key)]
    if port or settings.port:
        argv += ["-p", str(port or settings.port)]
    argv += list(settings.options)
    login = user or settings.user
    argv += ["-l", login] if login else []
    return [*argv, "--", host, remote]


def _remote_command(settings: SshSettings, entry: SshAgents) -> str:
    args = ["agent", "--listen", "0.0.0.0:0", "--token-file", "-", "--lifeline"]
    if entry.processes != 1:
        args += ["--processes", str(entry.processes)]
    if entry.id:
        args += ["--id", entry.id]
    return f"{settings.command} {shlex.join(args)}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _safe_name(destination: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", destination)[:100] or "ssh"


def start_ssh_agents(
    entries: Sequence[SshAgents], settings: SshSettings, token: bytes, logs: Path
) -> list[SshAgent]:
    """Start every entry's agents and wait (``settings.timeout``) until each has said where
    it listens. ``SshStartFailed`` (the started ones are stopped) if any did not."""
    timeout_s = settings.timeout / 1e9
    logs.mkdir(parents=True, exist_ok=True)
    started: list[SshAgent] = []
    try:
        for entry in entries:
            _user, host, _port = parse_destination(entry.ssh)
            log = logs / f"{_safe_name(entry.ssh)}.log"
            with open(log, "ab") as err:
                process = subprocess.Popen(
                    ssh_argv(settings, entry.ssh, _remote_command(settings, entry), timeout_s),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,  # Ctrl-C is the controller's to handle
                    preexec_fn=_die_with_parent,
                )
            assert process.stdin is not None
            try:
                process.stdin.write(token + b"\n")
                process.stdin.flush()
            except OSError:
                pass  # ssh already gone: reported below with its log
            started.append(SshAgent(entry.ssh, host, process, log, entry.processes))
        _await_listening(started, timeout_s)
    except BaseException:
        stop_ssh_agents(started)
        raise
    return started


def _await_listening(agents: list[SshAgent], timeout_s: float) -> None:
    def read(agent: SshAgent) -> None:
        stream = agent.process.stdout
        assert stream is not None
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            match = LISTENING.match(line)
            if match is None:
                agent.lines.append(line[:200])
                continue
            ident, _host, port = match.groups()
            bracketed = f"[{agent.host}]" if ":" in agent.host else agent.host
            agent.agents.append(AgentAddress(f"{bracketed}:{port}", ident))
            if len(agent.agents) >= agent.expected:
                return

    readers = [threading.Thread(target=read, args=(a,), daemon=True) for a in agents]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout_s
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    failures = []
    for agent, reader in zip(agents, readers, strict=True):
        if len(agent.agents) >= agent.expected:
            continue
        code = agent.process.poll()
        if code is None and not reader.is_alive():  # its output ended: it is exiting
            try:
                code = agent.process.wait(5)
            except subprocess.TimeoutExpired:
                code = None
        why = _last_words(agent)
        if code is None:
            failures.append(
                f"ssh {agent.destination}: {len(agent.agents)} of {agent.expected} agent(s) "
                f"listening after {timeout_s:g}s{why} (log: {agent.log})"
            )
        else:
            failures.append(f"ssh {agent.destination}: exited with code {code}{why}")
    if failures:
        raise SshStartFailed(failures)


def _last_words(agent: SshAgent) -> str:
    """The last line ssh or the agent wrote on stderr (why it failed), if any."""
    try:
        text = agent.log.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    last = text.splitlines()[-1] if text else (agent.lines[-1] if agent.lines else "")
    return f": {last[:300]}" if last else ""


def stop_ssh_agents(agents: Sequence[SshAgent]) -> None:
    """Close each lifeline (the agents stop: a run in progress is aborted as an orphan
    would be), wait for the ssh processes, and end any that linger."""
    for agent in agents:
        stdin = agent.process.stdin
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass
    deadline = time.monotonic() + STOP_WAIT_S
    for agent in agents:
        try:
            agent.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            agent.process.terminate()
            try:
                agent.process.wait(2)
            except subprocess.TimeoutExpired:
                agent.process.kill()
        if agent.process.stdout is not None:
            agent.process.stdout.close()
