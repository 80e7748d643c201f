"""The agent: serves runs to controllers over TCP, drives the storage with the engine."""

from ._processes import SUPERVISOR_ENV, StartFailed, follow_supervisor, supervise
from ._server import AGENT_SWITCH_INTERVAL_S, HANDSHAKE_TIMEOUT_S, AgentOptions, AgentServer
from ._session import Session

__all__ = [
    "AGENT_SWITCH_INTERVAL_S",
    "HANDSHAKE_TIMEOUT_S",
    "SUPERVISOR_ENV",
    "AgentOptions",
    "AgentServer",
    "Session",
    "StartFailed",
    "follow_supervisor",
    "supervise",
]
