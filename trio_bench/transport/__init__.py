"""The protocol over Trio streams: framing, the two logical channels, orderly closing."""

from ._connection import (
    CLOSE_TIMEOUT_S,
    CONTROL_BACKLOG,
    OUTBOX_LIMIT,
    Connection,
    ConnectionClosed,
)
from ._poller import ReadPoller
from ._poller import available as poller_available

__all__ = [
    "CLOSE_TIMEOUT_S",
    "CONTROL_BACKLOG",
    "OUTBOX_LIMIT",
    "Connection",
    "ConnectionClosed",
    "ReadPoller",
    "poller_available",
]
