"""The one exception type the protocol core raises for bad input from a peer."""

from __future__ import annotations


class ProtocolError(Exception):
    """A peer sent something this protocol does not allow.

    The message is one line that names what was wrong and where (frame, message tag, field).
    Whoever catches it answers the peer with an ERROR where it can and closes the connection;
    it is never a reason to crash the process.
    """


class TransitionError(ProtocolError):
    """An input that the state machine has no transition for in its current state.

    The machine's state is unchanged when this is raised.
    """

    def __init__(self, machine: str, state: str, event: str) -> None:
        super().__init__(f"{machine}: {event} is not allowed in state {state}")
        self.machine = machine
        self.state = state
        self.event = event
