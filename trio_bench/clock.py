"""A wall clock that never jumps during a run: wall time anchored once, then advanced by
``perf_counter_ns``. PING/PONG timestamps, start instants and results all use it, so an NTP
step in the middle of a run cannot corrupt an offset or a start time.

``TRIOBENCH_CLOCK_SKEW_MS`` (a test hook, read by agents) shifts this clock by that many
milliseconds, so tests can prove that agents with skewed clocks still start together.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

SKEW_ENV = "TRIOBENCH_CLOCK_SKEW_MS"


def skew_from_env() -> int:
    raw = os.environ.get(SKEW_ENV, "").strip()
    if not raw:
        return 0
    try:
        return round(float(raw) * 1_000_000)
    except ValueError:
        raise ValueError(f"{SKEW_ENV}={raw!r} is not a number of milliseconds") from None


class RunClock:
    """Wall time anchored once, advanced by a monotonic clock: ``perf_ns`` (the process's
    ``perf_counter_ns``; tests running in Trio's virtual time pass one read from it)."""

    def __init__(
        self, skew_ns: int = 0, *, perf_ns: Callable[[], int] = time.perf_counter_ns
    ) -> None:
        self.skew_ns = skew_ns
        self._perf_ns = perf_ns
        self._anchor_perf = perf_ns()
        self._anchor_wall = time.time_ns() + skew_ns

    def now_ns(self) -> int:
        return self._anchor_wall + (self._perf_ns() - self._anchor_perf)

    def wall_from_perf(self, perf_ns: int) -> int:
        return self._anchor_wall + (perf_ns - self._anchor_perf)

    def perf_from_wall(self, wall_ns: int) -> int:
        return self._anchor_perf + (wall_ns - self._anchor_wall)
