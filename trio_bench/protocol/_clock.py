"""Clock offset and round trip from NTP-style four-timestamp exchanges.

    t1  controller sends PING      (controller clock)
    t2  agent receives it          (agent clock)
    t3  agent sends PONG           (agent clock)
    t4  controller receives PONG   (controller clock)

    offset = ((t2 - t1) + (t3 - t4)) / 2      agent clock minus controller clock
    rtt    = (t4 - t1) - (t3 - t2)            time on the wire, agent processing excluded

If the two one-way delays are equal, ``offset`` is exact; in any case it is off by at most
``rtt / 2``. So of several samples we keep the one with the smallest round trip: it bounds the
error tightest (the reference tool took one one-way sample and never applied it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs

from ._errors import ProtocolError


@attrs.frozen
class ClockSample:
    t1_ns: int
    t2_ns: int
    t3_ns: int
    t4_ns: int

    @property
    def offset_ns(self) -> int:
        """Agent clock minus controller clock."""
        return ((self.t2_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)) // 2

    @property
    def rtt_ns(self) -> int:
        return (self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)

    @property
    def error_bound_ns(self) -> int:
        """The offset is within this many ns of the truth, whatever the path asymmetry."""
        return (self.rtt_ns + 1) // 2


def best_sample(samples: Iterable[ClockSample]) -> ClockSample:
    """The sample with the smallest round trip (the latest one among equals)."""
    best: ClockSample | None = None
    for sample in samples:
        if best is None or sample.rtt_ns <= best.rtt_ns:
            best = sample
    if best is None:
        raise ValueError("no clock samples")
    return best


def to_agent_clock(controller_ns: int, offset_ns: int) -> int:
    """A controller instant expressed on the agent's clock."""
    return controller_ns + offset_ns


def to_controller_clock(agent_ns: int, offset_ns: int) -> int:
    """An agent instant expressed on the controller's clock."""
    return agent_ns - offset_ns


class ClockEstimator:
    """Keeps the last ``window`` samples of one agent; the estimate is the min-RTT one.

    A sliding window (rather than the best sample ever) lets the estimate follow slow drift
    between the two clocks over a long run.
    """

    def __init__(self, window: int = 32) -> None:
        self._samples: deque[ClockSample] = deque(maxlen=window)
        self._best: ClockSample | None = None  # kept up to date by ``add`` (read per STATS)

    def add(self, sample: ClockSample) -> None:
        if sample.t3_ns < sample.t2_ns:
            raise ProtocolError(
                f"pong: agent send time t3={sample.t3_ns} precedes its receive time "
                f"t2={sample.t2_ns}"
            )
        if sample.rtt_ns < 0:
            # Our own clock went backwards or the agent lied about its processing time.
            raise ProtocolError(f"pong: negative round trip {sample.rtt_ns} ns")
        full = len(self._samples) == self._samples.maxlen
        evicted = self._samples[0] if full else None
        self._samples.append(sample)
        if evicted is not None and evicted is self._best:
            self._best = best_sample(self._samples)
        elif self._best is None or sample.rtt_ns <= self._best.rtt_ns:
            self._best = sample

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def best(self) -> ClockSample | None:
        return self._best

    @property
    def offset_ns(self) -> int | None:
        best = self.best
        return None if best is None else best.offset_ns
