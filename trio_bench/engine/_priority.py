"""The event loop first: a Trio instrument that closes the workers' gate while the loop works.

See ``trio_bench.stopping`` for why. Installed once per Trio run by the agent
(``give_the_loop_priority``); the gate stays open (no effect) where it is not installed.
"""

from __future__ import annotations

import sys
import time

import trio

from trio_bench.stopping import GATE, Gate

# The loop may keep the gate closed this long while it has work queued (no I/O wait in
# between); then it opens for at least REOPEN_S, so workers are never starved by a busy loop.
MAX_CLOSED_S = 0.010
REOPEN_S = 0.001


class LoopPriority(trio.abc.Instrument):
    """A Trio instrument that closes ``gate`` when the event loop wakes and opens it when
    the loop waits for I/O again. Installed by the agent (``trio.lowlevel.add_instrument``)."""

    def __init__(self, gate: Gate = GATE, token: trio.lowlevel.TrioToken | None = None) -> None:
        self.gate = gate
        self.token = token
        self.switch_interval = sys.getswitchinterval()  # restored when the run ends
        self.closed_at = 0.0
        self.forced_open_at = -1.0  # when a busy loop last opened the gate for the workers

    def after_io_wait(self, timeout: float) -> None:
        if self.gate.closed:
            return
        now = time.monotonic()
        if now - self.forced_open_at >= REOPEN_S:
            self.gate.close()
            self.closed_at = now

    def before_io_wait(self, timeout: float) -> None:
        if not self.gate.closed:
            return
        if timeout > 0:
            self.gate.open()  # the loop is going to sleep: the workers run
            return
        now = time.monotonic()
        if now - self.closed_at > MAX_CLOSED_S:
            self.gate.open()
            self.forced_open_at = now

    def after_run(self) -> None:
        self.gate.open()  # never leave the process's workers behind a closed gate
        sys.setswitchinterval(self.switch_interval)  # stages may have shortened it
        _installed.discard(self.token)


_installed: set[trio.lowlevel.TrioToken] = set()

# CPython hands the GIL to waiting threads about in turn, one per switch interval, so the
# loop waits about (busy workers) x (interval) for it each time it wakes. The interval is
# chosen per stage so that this stays near LOOP_WAIT_TARGET_S: 1 ms up to 10 workers (more
# frequent switching costs busy workers throughput: 2 null:// workers lose ~17 % at 50 us),
# shorter with more, never below 50 us.
LOOP_WAIT_TARGET_S = 0.010
SWITCH_INTERVAL_RANGE_S = (0.00005, 0.001)


def switch_interval_for(workers: int) -> float:
    low, high = SWITCH_INTERVAL_RANGE_S
    return max(low, min(high, LOOP_WAIT_TARGET_S / max(1, workers)))


def prioritize_for(workers: int) -> None:
    """Where the loop has priority (an agent), set the switch interval for a stage of
    ``workers`` threads; elsewhere (the engine embedded in tests) change nothing."""
    if trio.lowlevel.current_trio_token() in _installed:
        sys.setswitchinterval(switch_interval_for(workers))


def give_the_loop_priority() -> None:
    """Install ``LoopPriority`` in the current Trio run, once however many agents it hosts
    (an instrument runs on every loop iteration)."""
    token = trio.lowlevel.current_trio_token()
    if token not in _installed:
        _installed.add(token)
        trio.lowlevel.add_instrument(LoopPriority(token=token))
