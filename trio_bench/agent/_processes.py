"""Several agent processes on one host: ``triobench agent --processes N``.

One agent is one Python process, so its workers share one GIL and top out near one core of
Python work. A many-core load host therefore runs N agents, one process each, on consecutive
ports; the controller lists them as ``{address: host:PORT, processes: N}`` (or
``--agents host:PORTxN``) and coordinates them like any other agents.

This module is the supervisor: it starts the N agent processes, forwards SIGTERM/SIGINT to
them, and restarts one that crashes (a result the crash interrupted is that agent's failure,
reported by the controller; the agent itself is back for the next run). An agent that fails
within ``STARTUP_S`` of being started (its port is taken, say) stops them all: that is a
configuration problem, not a crash.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import trio

log = logging.getLogger("triobench.agent")

SUPERVISOR_ENV = "TRIOBENCH_SUPERVISOR_PID"  # set in each agent process we start
STARTUP_S = 3.0  # an agent that exits sooner than this after starting failed to start
RESTART_PAUSE_S = 1.0
STOP_TIMEOUT_S = 15.0


class StartFailed(Exception):
    """An agent process exited during startup; ``code`` is its exit code."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"agent {name} exited with code {code} while starting")
        self.code = code


async def supervise(commands: Sequence[tuple[str, list[str]]]) -> None:
    """Run each (name, argv) as an agent process until SIGTERM or SIGINT; ``StartFailed`` if
    one cannot start (the others are stopped first)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            for name, argv in commands:
                nursery.start_soon(_keep_running, name, argv)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info(
                        "%s: stopping %d agent processes",
                        signal.Signals(signum).name,
                        len(commands),
                    )
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)


async def _keep_running(name: str, argv: list[str]) -> None:
    while True:
        started = trio.current_time()
        # Started from this (the main) thread: the agent's "parent died" signal is tied to
        # the thread that forked it, and Trio's open_process forks from worker threads that
        # come and go. Its own process group: a terminal's Ctrl-C reaches the supervisor,
        # which stops each agent once, instead of every process getting SIGINT at once.
        process = subprocess.Popen(  # noqa: ASYNC220 (a fork+exec: milliseconds, on purpose)
            argv,
            start_new_session=True,
            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
            stdin=subprocess.DEVNULL,  # stdin is the supervisor's (a token, a lifeline)
        )
        try:
            code = await _wait(process)
        except trio.Cancelled:
            await _stop(process)
            raise
        if code == 0:
            log.info("agent %s stopped", name)
            return
        if trio.current_time() - started < STARTUP_S:
            raise StartFailed(name, code)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        log.warning("agent %s exited with %s; restarting it", name, how)
        await trio.sleep(RESTART_PAUSE_S)


async def _wait(process: subprocess.Popen[bytes]) -> int:
    """The exit code, without blocking the loop (a pidfd on Linux, polling elsewhere)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        while process.poll() is None:  # noqa: ASYNC110 (no pidfd: nothing to wait on)
            await trio.sleep(0.1)
        return process.returncode
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()


async def _stop(process: subprocess.Popen[bytes]) -> None:
    with trio.CancelScope(shield=True):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            await _wait(process)
            return
        process.kill()
        await _wait(process)


def follow_supervisor() -> None:
    """In an agent process started by ``supervise``: end with the supervisor, even if it is
    killed outright, so no orphaned agent keeps holding its port (Linux; elsewhere the
    supervisor's normal stop is all there is)."""
    parent = os.environ.pop(SUPERVISOR_ENV, None)
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        raise SystemExit(0)
