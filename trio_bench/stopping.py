"""How a stage tells its worker threads to stop, down to the middle of one operation.

Neutral ground below the engine and the S3 client (both import it, it imports nothing):
the Trio side sets ``StopFlag.stopped``; a worker loop checks it before every operation, and
an operation made of pieces (a large file written or read in buffers, a multipart upload)
checks it between pieces and raises ``Interrupted``. So once a stage is stopped no thread
keeps writing: at most the piece in flight completes.
"""

from __future__ import annotations


class StopFlag:
    """Set once by the Trio side; read by workers before every operation and piece."""

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped = False


class Interrupted(Exception):
    """An operation stopped between two of its pieces because its stage was stopped. Not a
    storage error: it is neither counted as an operation nor as a failure."""


NEVER = StopFlag()  # for operations run outside a stage (preflight probes, tests)
