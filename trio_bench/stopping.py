"""How the event loop tells worker threads to stop, and to make way.

Neutral ground below the engine and the S3 client (both import it; it imports only the
standard library: no Trio).

Stopping: the Trio side calls ``StopFlag.set()``; a worker loop checks ``stopped`` before
every operation, and an operation made of pieces (a large file written or read in buffers, a
multipart upload) checks it between pieces and raises ``Interrupted``. Once a stage is stopped
no thread keeps writing: at most the piece in flight completes.

Making way (``Gate``, ``LoopPriority``): CPython gives the GIL to waiting threads in turn, so
with N busy worker threads the event loop thread waits about N switch intervals each time it
needs the GIL, and every stretch of Python it runs (a stats snapshot, a PONG) takes N times
longer. Measured before the gate: PING RTT p50 0.6 s with 64 null:// workers, 65 s with 300.
The gate is closed while the event loop is awake and opened when it goes back to waiting for
I/O (``trio_bench.engine.LoopPriority`` does that); workers pass the gate between operations,
so while the loop works they wait on a lock (not on the GIL) and the loop competes only with
the operations already in flight.
"""

from __future__ import annotations

import threading


class StopFlag:
    """Set once by the Trio side; read by workers before every operation and piece."""

    __slots__ = ("event", "stopped")

    def __init__(self) -> None:
        self.stopped = False
        self.event = threading.Event()  # for threads waiting for a start instant

    def set(self) -> None:
        self.stopped = True
        self.event.set()


class Interrupted(Exception):
    """An operation stopped between two of its pieces because its stage was stopped. Not a
    storage error: it is neither counted as an operation nor as a failure."""


NEVER = StopFlag()  # for operations run outside a stage (preflight probes, tests)


class Gate:
    """Worker threads pass it between operations; the event loop closes it while it works.

    Closing takes a fresh, already-held lock, so the loop never blocks on a lock a worker
    holds; opening releases it, and the workers queued on it pass one after the other.
    ``closed`` and ``lock`` are read by workers without synchronisation: a stale read costs
    at most one more operation, or one more wait until the next opening."""

    __slots__ = ("closed", "lock")

    def __init__(self) -> None:
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        """Event loop thread only. Never blocks."""
        if not self.closed:
            lock = threading.Lock()
            lock.acquire()
            self.lock = lock
            self.closed = True

    def open(self) -> None:
        """Event loop thread only. Never blocks."""
        if self.closed:
            self.closed = False
            self.lock.release()

    def wait(self) -> None:
        """Worker side, between operations: return at once while the gate is open, else block
        (off the GIL) until it opens. The hottest loop reads ``closed`` itself first.

        A worker that was queued on an opening that is already over waits again on the new
        closing: without that, every worker queued on one opening passed (one after the
        other, each taking the GIL) even after the loop had closed the gate again, and with
        hundreds of workers the loop, starved, kept reopening it: an agent with 300 busy
        workers froze for tens of seconds now and then."""
        while self.closed:
            lock = self.lock
            lock.acquire()
            lock.release()


GATE = Gate()  # one per process: every worker of the agent passes it
