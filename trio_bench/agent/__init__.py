"""The agent: serves runs to controllers over TCP, drives the storage with the engine."""

from ._server import HANDSHAKE_TIMEOUT_S, AgentOptions, AgentServer
from ._session import Session

__all__ = ["HANDSHAKE_TIMEOUT_S", "AgentOptions", "AgentServer", "Session"]
