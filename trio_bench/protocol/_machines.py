"""The two state machines of the protocol, as data.

``AGENT_TABLE`` is an agent's own run session; ``PEER_TABLE`` is the controller's view of one
agent. Each is one dict mapping ``(state, event)`` to the next state, and each has one function
that applies an event (``Machine.apply``). A pair missing from the table is an error that names
the state and the event and leaves the state unchanged; an event that keeps the state is
written in the table like any other, so "nothing happens" is a decision, never an accident.

Nothing here does I/O or knows about Trio; the agent and controller feed events in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from ._errors import TransitionError


class AgentState(enum.Enum):
    IDLE = "idle"  # no run; ready for a controller
    CONFIGURING = "configuring"  # CONFIGURE received, preflight running
    READY = "ready"  # preflight passed, waiting for START(prepare)
    PREPARING = "preparing"
    PREPARE_DONE = "prepare_done"  # barrier: waiting for START(workload)
    RUNNING = "running"
    WORKLOAD_DONE = "workload_done"  # barrier: waiting for START(cleanup)
    CLEANING = "cleaning"
    ABORTING = "aborting"  # stopping workers after ABORT or a lost controller
    FINISHING = "finishing"  # final message (COMPLETED/ABORTED/ERROR) sent, waiting for ACK


class AgentEvent(enum.Enum):
    CONFIGURE = "configure"
    PREFLIGHT_OK = "preflight_ok"
    PREFLIGHT_FAILED = "preflight_failed"
    START_PREPARE = "start_prepare"
    START_WORKLOAD = "start_workload"
    START_CLEANUP = "start_cleanup"
    STAGE_DONE = "stage_done"
    STAGE_FAILED = "stage_failed"
    ABORT = "abort"
    ABORT_DONE = "abort_done"
    FINAL_ACKED = "final_acked"
    CONTROLLER_LOST = "controller_lost"  # no frame from the controller for the orphan timeout
    INTERNAL_ERROR = "internal_error"  # a bug of the agent's: the run ends with ERROR internal
    PING = "ping"
    RESUME = "resume"


class PeerState(enum.Enum):
    CONNECTING = "connecting"
    VALIDATING = "validating"  # handshake done, CONFIGURE sent, waiting for READY
    READY = "ready"
    PREPARING = "preparing"
    PREPARE_DONE = "prepare_done"
    RUNNING = "running"
    WORKLOAD_DONE = "workload_done"
    CLEANING = "cleaning"
    ABORTING = "aborting"
    DISCONNECTED = "disconnected"  # silent past dead_after + probe, or connection lost
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


class PeerEvent(enum.Enum):
    HANDSHAKE_OK = "handshake_ok"
    READY = "ready"
    STARTED_PREPARE = "started_prepare"
    STATS_PREPARE = "stats_prepare"
    DONE_PREPARE = "done_prepare"
    STARTED_WORKLOAD = "started_workload"
    STATS_WORKLOAD = "stats_workload"
    DONE_WORKLOAD = "done_workload"
    STARTED_CLEANUP = "started_cleanup"
    STATS_CLEANUP = "stats_cleanup"
    DONE_CLEANUP = "done_cleanup"
    COMPLETED = "completed"
    ABORTED = "aborted"
    AGENT_ERROR = "agent_error"
    PONG = "pong"
    ABORT_SENT = "abort_sent"
    SILENT = "silent"  # silent past dead_after and the probe PING went unanswered
    CONNECTION_LOST = "connection_lost"
    PROTOCOL_VIOLATION = "protocol_violation"
    GAVE_UP = "gave_up"  # disconnected and not coming back (reconnect refused or timed out)


S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class Machine(Generic[S, E]):
    """A state plus the table that moves it. ``apply`` is the only way to change state."""

    name = "machine"

    def __init__(self, table: Mapping[tuple[S, E], S], initial: S) -> None:
        self.table = table
        self.state = initial

    def can_apply(self, event: E) -> bool:
        return (self.state, event) in self.table

    def apply(self, event: E) -> S:
        """Move to the table's state for ``event``; raise ``TransitionError`` if there is none."""
        try:
            target = self.table[(self.state, event)]
        except KeyError:
            raise TransitionError(self.name, self.state.value, event.value) from None
        self.state = target
        return target


# --- the agent's session ---------------------------------------------------------------------

_A = AgentState
_AE = AgentEvent
_AGENT_SESSION = [s for s in AgentState if s is not _A.IDLE]
_AGENT_ABORTABLE = [s for s in _AGENT_SESSION if s not in (_A.ABORTING, _A.FINISHING)]

AGENT_TABLE: dict[tuple[AgentState, AgentEvent], AgentState] = {
    # the happy path
    (_A.IDLE, _AE.CONFIGURE): _A.CONFIGURING,
    (_A.CONFIGURING, _AE.PREFLIGHT_OK): _A.READY,
    (_A.CONFIGURING, _AE.PREFLIGHT_FAILED): _A.FINISHING,
    (_A.READY, _AE.START_PREPARE): _A.PREPARING,
    (_A.PREPARING, _AE.STAGE_DONE): _A.PREPARE_DONE,
    (_A.PREPARE_DONE, _AE.START_WORKLOAD): _A.RUNNING,
    (_A.RUNNING, _AE.STAGE_DONE): _A.WORKLOAD_DONE,
    (_A.WORKLOAD_DONE, _AE.START_CLEANUP): _A.CLEANING,
    (_A.CLEANING, _AE.STAGE_DONE): _A.FINISHING,
    (_A.FINISHING, _AE.FINAL_ACKED): _A.IDLE,
    # a stage that fails ends the run with an ERROR carrying partial results
    (_A.PREPARING, _AE.STAGE_FAILED): _A.FINISHING,
    (_A.RUNNING, _AE.STAGE_FAILED): _A.FINISHING,
    (_A.CLEANING, _AE.STAGE_FAILED): _A.FINISHING,
    # abort, from the controller or because the controller is gone
    **{(s, _AE.ABORT): _A.ABORTING for s in _AGENT_ABORTABLE},
    **{(s, _AE.CONTROLLER_LOST): _A.ABORTING for s in _AGENT_ABORTABLE},
    (_A.ABORTING, _AE.ABORT): _A.ABORTING,  # a re-sent ABORT
    (_A.ABORTING, _AE.CONTROLLER_LOST): _A.ABORTING,
    (_A.ABORTING, _AE.ABORT_DONE): _A.FINISHING,
    (_A.FINISHING, _AE.ABORT): _A.FINISHING,  # too late: the final message is already out
    (_A.FINISHING, _AE.CONTROLLER_LOST): _A.IDLE,  # results stay in the agent's local store
    # whatever went wrong inside the agent, the controller hears of it (ERROR internal)
    **{(s, _AE.INTERNAL_ERROR): _A.FINISHING for s in _AGENT_SESSION if s is not _A.FINISHING},
    # same-state inputs, explicitly
    **{(s, _AE.PING): s for s in AgentState},
    **{(s, _AE.RESUME): s for s in _AGENT_SESSION},
}


class AgentMachine(Machine[AgentState, AgentEvent]):
    name = "agent"

    def __init__(self) -> None:
        super().__init__(AGENT_TABLE, AgentState.IDLE)


START_EVENT = {
    "prepare": AgentEvent.START_PREPARE,
    "workload": AgentEvent.START_WORKLOAD,
    "cleanup": AgentEvent.START_CLEANUP,
}


# --- the controller's view of one agent ------------------------------------------------------

_P = PeerState
_PE = PeerEvent
PEER_TERMINAL = frozenset({_P.COMPLETED, _P.ABORTED, _P.FAILED})
# states in which the agent is alive and attached (liveness is watched)
PEER_LIVE = (
    _P.VALIDATING,
    _P.READY,
    _P.PREPARING,
    _P.PREPARE_DONE,
    _P.RUNNING,
    _P.WORKLOAD_DONE,
    _P.CLEANING,
    _P.ABORTING,
)
_PEER_WORKING = [s for s in PEER_LIVE if s is not _P.ABORTING]

# The state each message from the agent implies; recovery from DISCONNECTED goes there.
IMPLIED_STATE: dict[PeerEvent, PeerState] = {
    _PE.READY: _P.READY,
    _PE.STARTED_PREPARE: _P.PREPARING,
    _PE.STATS_PREPARE: _P.PREPARING,
    _PE.DONE_PREPARE: _P.PREPARE_DONE,
    _PE.STARTED_WORKLOAD: _P.RUNNING,
    _PE.STATS_WORKLOAD: _P.RUNNING,
    _PE.DONE_WORKLOAD: _P.WORKLOAD_DONE,
    _PE.STARTED_CLEANUP: _P.CLEANING,
    _PE.STATS_CLEANUP: _P.CLEANING,
    _PE.DONE_CLEANUP: _P.CLEANING,  # still waiting for COMPLETED
    _PE.COMPLETED: _P.COMPLETED,
    _PE.ABORTED: _P.ABORTED,
    _PE.AGENT_ERROR: _P.FAILED,
}


class _Prior(enum.Enum):
    """Table target meaning "the live state the agent was in before DISCONNECTED"."""

    PRIOR = "prior"


PRIOR = _Prior.PRIOR

PEER_TABLE: dict[tuple[PeerState, PeerEvent], PeerState | _Prior] = {
    # connecting and validating
    (_P.CONNECTING, _PE.HANDSHAKE_OK): _P.VALIDATING,
    (_P.CONNECTING, _PE.CONNECTION_LOST): _P.FAILED,
    (_P.CONNECTING, _PE.PROTOCOL_VIOLATION): _P.FAILED,
    (_P.CONNECTING, _PE.AGENT_ERROR): _P.FAILED,
    (_P.CONNECTING, _PE.ABORT_SENT): _P.ABORTED,  # user abort before the agent had a run
    (_P.VALIDATING, _PE.READY): _P.READY,
    # the stages, in order; stale stats of a finished stage change nothing
    (_P.READY, _PE.STARTED_PREPARE): _P.PREPARING,
    (_P.PREPARING, _PE.STATS_PREPARE): _P.PREPARING,
    (_P.PREPARING, _PE.DONE_PREPARE): _P.PREPARE_DONE,
    (_P.PREPARE_DONE, _PE.STATS_PREPARE): _P.PREPARE_DONE,
    (_P.PREPARE_DONE, _PE.STARTED_WORKLOAD): _P.RUNNING,
    (_P.RUNNING, _PE.STATS_WORKLOAD): _P.RUNNING,
    (_P.RUNNING, _PE.DONE_WORKLOAD): _P.WORKLOAD_DONE,
    (_P.WORKLOAD_DONE, _PE.STATS_WORKLOAD): _P.WORKLOAD_DONE,
    (_P.WORKLOAD_DONE, _PE.STARTED_CLEANUP): _P.CLEANING,
    (_P.CLEANING, _PE.STATS_CLEANUP): _P.CLEANING,
    (_P.CLEANING, _PE.DONE_CLEANUP): _P.CLEANING,
    (_P.CLEANING, _PE.COMPLETED): _P.COMPLETED,
    # in any working state: abort, failure, an agent that aborted on its own, liveness
    **{(s, _PE.ABORT_SENT): _P.ABORTING for s in _PEER_WORKING},
    **{(s, _PE.ABORTED): _P.ABORTED for s in _PEER_WORKING},
    # aborting: whatever was in flight may still arrive; only the final answer matters
    **{
        (_P.ABORTING, e): _P.ABORTING
        for e in IMPLIED_STATE
        if IMPLIED_STATE[e] not in PEER_TERMINAL
    },
    (_P.ABORTING, _PE.ABORT_SENT): _P.ABORTING,
    (_P.ABORTING, _PE.COMPLETED): _P.COMPLETED,  # it finished before the ABORT reached it
    (_P.ABORTING, _PE.ABORTED): _P.ABORTED,
    # every live state: errors, liveness
    **{(s, _PE.AGENT_ERROR): _P.FAILED for s in PEER_LIVE},
    **{(s, _PE.PROTOCOL_VIOLATION): _P.FAILED for s in PEER_LIVE},
    **{(s, _PE.PONG): s for s in PEER_LIVE},
    **{(s, _PE.SILENT): _P.DISCONNECTED for s in PEER_LIVE},
    **{(s, _PE.CONNECTION_LOST): _P.DISCONNECTED for s in PEER_LIVE},
    # disconnected: any message recovers to the state it implies; a PONG to the prior state
    **{(_P.DISCONNECTED, e): target for e, target in IMPLIED_STATE.items()},
    (_P.DISCONNECTED, _PE.PONG): PRIOR,
    (_P.DISCONNECTED, _PE.SILENT): _P.DISCONNECTED,
    (_P.DISCONNECTED, _PE.CONNECTION_LOST): _P.DISCONNECTED,
    (_P.DISCONNECTED, _PE.ABORT_SENT): _P.DISCONNECTED,  # the ABORT waits for it to return
    (_P.DISCONNECTED, _PE.PROTOCOL_VIOLATION): _P.FAILED,
    (_P.DISCONNECTED, _PE.GAVE_UP): _P.FAILED,
    # terminal: late stats and pongs, a broadcast abort, the closing connection are no-ops
    **{
        (s, e): s
        for s in PEER_TERMINAL
        for e in (
            _PE.PONG,
            _PE.STATS_PREPARE,
            _PE.STATS_WORKLOAD,
            _PE.STATS_CLEANUP,
            _PE.ABORT_SENT,
            _PE.SILENT,
            _PE.CONNECTION_LOST,
        )
    },
}


class PeerMachine(Machine[PeerState, PeerEvent]):
    """The controller's view of one agent, with recovery from DISCONNECTED.

    ``prior`` is the live state the agent was in when it was declared DISCONNECTED; a PONG
    (which implies no particular state) recovers it there. ``recoveries`` counts the times the
    agent came back.
    """

    name = "peer"

    def __init__(self) -> None:
        super().__init__(PEER_TABLE, PeerState.CONNECTING)  # type: ignore[arg-type]
        self.prior: PeerState | None = None
        self.recoveries = 0
        self.disconnects = 0

    @property
    def terminal(self) -> bool:
        return self.state in PEER_TERMINAL

    @property
    def live(self) -> bool:
        return self.state in PEER_LIVE

    def apply(self, event: PeerEvent) -> PeerState:
        before = self.state
        try:
            target = PEER_TABLE[(before, event)]
        except KeyError:
            raise TransitionError(self.name, before.value, event.value) from None
        if target is PRIOR:
            assert self.prior is not None  # DISCONNECTED is only entered from a live state
            target = self.prior
        assert isinstance(target, PeerState)
        if target is PeerState.DISCONNECTED and before is not PeerState.DISCONNECTED:
            self.prior = before
            self.disconnects += 1
        elif before is PeerState.DISCONNECTED and target is not PeerState.DISCONNECTED:
            if target not in PEER_TERMINAL or event in IMPLIED_STATE:
                self.recoveries += 1
            self.prior = None
        self.state = target
        return target


STATS_EVENT = {
    "prepare": PeerEvent.STATS_PREPARE,
    "workload": PeerEvent.STATS_WORKLOAD,
    "cleanup": PeerEvent.STATS_CLEANUP,
}
STARTED_EVENT = {
    "prepare": PeerEvent.STARTED_PREPARE,
    "workload": PeerEvent.STARTED_WORKLOAD,
    "cleanup": PeerEvent.STARTED_CLEANUP,
}
DONE_EVENT = {
    "prepare": PeerEvent.DONE_PREPARE,
    "workload": PeerEvent.DONE_WORKLOAD,
    "cleanup": PeerEvent.DONE_CLEANUP,
}
