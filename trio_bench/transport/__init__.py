"""The protocol over Trio streams: framing, the two logical channels, orderly closing."""

from ._connection import (
    CLOSE_TIMEOUT_S,
    CONTROL_BACKLOG,
    OUTBOX_LIMIT,
    Connection,
    ConnectionClosed,
)

__all__ = ["CLOSE_TIMEOUT_S", "CONTROL_BACKLOG", "OUTBOX_LIMIT", "Connection", "ConnectionClosed"]
