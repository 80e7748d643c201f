"""Both state machines: against independent models (stateful), over every (state, event) pair,
and the graph properties the protocol relies on."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trio_bench import protocol as p

A, AE = p.AgentState, p.AgentEvent
P, PE = p.PeerState, p.PeerEvent

# --- independent models: the rules of protocol.md written as plain code --------------------

AGENT_FLOW = [A.READY, A.PREPARING, A.PREPARE_DONE, A.RUNNING, A.WORKLOAD_DONE, A.CLEANING]
AGENT_STARTS = {
    AE.START_PREPARE: (A.READY, A.PREPARING),
    AE.START_WORKLOAD: (A.PREPARE_DONE, A.RUNNING),
    AE.START_CLEANUP: (A.WORKLOAD_DONE, A.CLEANING),
}


def agent_model(state: p.AgentState, event: p.AgentEvent) -> p.AgentState | None:
    """None means "not allowed"."""
    if event is AE.PING:
        return state
    if state is A.IDLE:
        return A.CONFIGURING if event is AE.CONFIGURE else None
    if event is AE.RESUME:
        return state
    if event is AE.INTERNAL_ERROR:  # a bug ends any run not yet finishing
        return None if state is A.FINISHING else A.FINISHING
    if state is A.FINISHING:
        return {AE.FINAL_ACKED: A.IDLE, AE.ABORT: A.FINISHING, AE.CONTROLLER_LOST: A.IDLE}.get(
            event
        )
    if state is A.ABORTING:
        if event in (AE.ABORT, AE.CONTROLLER_LOST):
            return A.ABORTING
        return A.FINISHING if event is AE.ABORT_DONE else None
    if event in (AE.ABORT, AE.CONTROLLER_LOST):
        return A.ABORTING
    if state is A.CONFIGURING:
        return {AE.PREFLIGHT_OK: A.READY, AE.PREFLIGHT_FAILED: A.FINISHING}.get(event)
    if event in AGENT_STARTS:
        before, after = AGENT_STARTS[event]
        return after if state is before else None
    if state in (A.PREPARING, A.RUNNING, A.CLEANING):
        if event is AE.STAGE_FAILED:
            return A.FINISHING
        if event is AE.STAGE_DONE:
            return A.FINISHING if state is A.CLEANING else AGENT_FLOW[AGENT_FLOW.index(state) + 1]
    return None


PEER_FLOW = [P.READY, P.PREPARING, P.PREPARE_DONE, P.RUNNING, P.WORKLOAD_DONE, P.CLEANING]
MESSAGE_EVENTS = {  # event -> (state it implies, stage position)
    PE.READY: P.READY,
    PE.STARTED_PREPARE: P.PREPARING,
    PE.STATS_PREPARE: P.PREPARING,
    PE.DONE_PREPARE: P.PREPARE_DONE,
    PE.STARTED_WORKLOAD: P.RUNNING,
    PE.STATS_WORKLOAD: P.RUNNING,
    PE.DONE_WORKLOAD: P.WORKLOAD_DONE,
    PE.STARTED_CLEANUP: P.CLEANING,
    PE.STATS_CLEANUP: P.CLEANING,
    PE.DONE_CLEANUP: P.CLEANING,
    PE.COMPLETED: P.COMPLETED,
    PE.ABORTED: P.ABORTED,
    PE.AGENT_ERROR: P.FAILED,
}
STATS = {PE.STATS_PREPARE, PE.STATS_WORKLOAD, PE.STATS_CLEANUP}
TERMINAL = {P.COMPLETED, P.ABORTED, P.FAILED}
LIVE = {P.VALIDATING, *PEER_FLOW, P.ABORTING}


def peer_model(state: p.PeerState, prior: p.PeerState | None, event: p.PeerEvent):
    """Returns the next state, or None if not allowed."""
    if state in TERMINAL:
        quiet = STATS | {PE.PONG, PE.ABORT_SENT, PE.SILENT, PE.CONNECTION_LOST}
        return state if event in quiet else None
    if state is P.CONNECTING:
        return {
            PE.HANDSHAKE_OK: P.VALIDATING,
            PE.CONNECTION_LOST: P.FAILED,
            PE.PROTOCOL_VIOLATION: P.FAILED,
            PE.AGENT_ERROR: P.FAILED,
            PE.ABORT_SENT: P.ABORTED,
        }.get(event)
    if state is P.DISCONNECTED:
        if event in MESSAGE_EVENTS:
            return MESSAGE_EVENTS[event]
        return {
            PE.PONG: prior,
            PE.SILENT: state,
            PE.CONNECTION_LOST: state,
            PE.ABORT_SENT: state,
            PE.PROTOCOL_VIOLATION: P.FAILED,
            PE.GAVE_UP: P.FAILED,
        }.get(event)
    # live states
    if event in (PE.SILENT, PE.CONNECTION_LOST):
        return P.DISCONNECTED
    if event in (PE.AGENT_ERROR, PE.PROTOCOL_VIOLATION):
        return P.FAILED
    if event is PE.PONG:
        return state
    if state is P.ABORTING:
        if event in (PE.COMPLETED, PE.ABORTED):
            return MESSAGE_EVENTS[event]
        if event in MESSAGE_EVENTS or event is PE.ABORT_SENT:
            return state
        return None
    if event is PE.ABORT_SENT:
        return P.ABORTING
    if event is PE.ABORTED:
        return P.ABORTED
    if state is P.VALIDATING:
        return P.READY if event is PE.READY else None
    implied = MESSAGE_EVENTS.get(event)
    if implied is None or (implied in TERMINAL and event is not PE.COMPLETED):
        return None
    if event is PE.COMPLETED:
        return P.COMPLETED if state is P.CLEANING else None
    here, there = PEER_FLOW.index(state), PEER_FLOW.index(implied)
    if there == here:
        # staying: stats of the running stage, or DONE_CLEANUP while cleaning
        return state if (event in STATS or event is PE.DONE_CLEANUP) else None
    if there == here + 1:
        # only STARTED opens a stage; only DONE closes one
        opens = event in (PE.STARTED_PREPARE, PE.STARTED_WORKLOAD, PE.STARTED_CLEANUP)
        closes = event in (PE.DONE_PREPARE, PE.DONE_WORKLOAD)
        return implied if opens or closes else None
    if there == here - 1 and event in STATS and state in (P.PREPARE_DONE, P.WORKLOAD_DONE):
        return state  # stale stats of the stage just finished
    return None


# --- stateful tests -------------------------------------------------------------------------


HAPPY_PATH = [
    PE.HANDSHAKE_OK,
    PE.READY,
    PE.STARTED_PREPARE,
    PE.DONE_PREPARE,
    PE.STARTED_WORKLOAD,
    PE.DONE_WORKLOAD,
    PE.STARTED_CLEANUP,
    PE.COMPLETED,
]
AGENT_HAPPY_PATH = [
    AE.CONFIGURE,
    AE.PREFLIGHT_OK,
    AE.START_PREPARE,
    AE.STAGE_DONE,
    AE.START_WORKLOAD,
    AE.STAGE_DONE,
    AE.START_CLEANUP,
    AE.STAGE_DONE,
    AE.FINAL_ACKED,
]


class AgentMachineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = p.AgentMachine()
        self.model = A.IDLE

    @rule(event=st.sampled_from(list(AE)))
    def apply(self, event: p.AgentEvent) -> None:
        expected = agent_model(self.model, event)
        if expected is None:
            with pytest.raises(
                p.TransitionError, match=f"{event.value} is not allowed in state {self.model.value}"
            ):
                self.machine.apply(event)
        else:
            assert self.machine.apply(event) is expected
            self.model = expected

    @rule()
    def advance(self) -> None:
        for event in AGENT_HAPPY_PATH:
            if agent_model(self.model, event) not in (None, self.model):
                self.apply(event)
                return

    @invariant()
    def same_state(self) -> None:
        assert self.machine.state is self.model


class PeerMachineVsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = p.PeerMachine()
        self.model = P.CONNECTING
        self.prior: p.PeerState | None = None
        self.recoveries = 0

    @rule(event=st.sampled_from(list(PE)))
    def apply(self, event: p.PeerEvent) -> None:
        expected = peer_model(self.model, self.prior, event)
        if expected is None:
            with pytest.raises(p.TransitionError):
                self.machine.apply(event)
            return
        assert self.machine.apply(event) is expected
        if expected is P.DISCONNECTED and self.model is not P.DISCONNECTED:
            self.prior = self.model
        elif self.model is P.DISCONNECTED and expected is not P.DISCONNECTED:
            if event in MESSAGE_EVENTS or event is PE.PONG:
                self.recoveries += 1
            self.prior = None
        self.model = expected

    @rule()
    def advance(self) -> None:
        """Random events alone rarely get deep into a run: also walk the happy path."""
        for event in HAPPY_PATH:
            if peer_model(self.model, self.prior, event) not in (None, self.model):
                self.apply(event)
                return

    @invariant()
    def same_state(self) -> None:
        assert self.machine.state is self.model
        assert self.machine.recoveries == self.recoveries

    @invariant()
    def prior_only_while_disconnected(self) -> None:
        assert (self.machine.prior is not None) == (self.machine.state is P.DISCONNECTED)
        assert self.machine.prior is None or self.machine.prior in LIVE


TestAgentMachine = AgentMachineVsModel.TestCase
TestPeerMachine = PeerMachineVsModel.TestCase


# --- every (state, event) pair --------------------------------------------------------------


@given(st.sampled_from(list(A)), st.sampled_from(list(AE)))
def test_agent_every_pair_is_a_transition_or_the_defined_error(state, event) -> None:
    machine = p.AgentMachine()
    machine.state = state
    if (state, event) in p.AGENT_TABLE:
        assert machine.apply(event) is p.AGENT_TABLE[(state, event)]
    else:
        with pytest.raises(p.TransitionError) as info:
            machine.apply(event)
        assert machine.state is state
        assert (info.value.state, info.value.event) == (state.value, event.value)
        assert str(info.value) == f"agent: {event.value} is not allowed in state {state.value}"


@given(st.sampled_from(list(P)), st.sampled_from(list(PE)))
def test_peer_every_pair_is_a_transition_or_the_defined_error(state, event) -> None:
    machine = p.PeerMachine()
    machine.state = state
    if state is P.DISCONNECTED:
        machine.prior = P.RUNNING
    target = p.PEER_TABLE.get((state, event))
    if target is None:
        with pytest.raises(
            p.TransitionError, match=f"peer: {event.value} is not allowed in state {state.value}"
        ):
            machine.apply(event)
        assert machine.state is state
    else:
        expected = P.RUNNING if target is p.PRIOR else target
        assert machine.apply(event) is expected


# --- graph properties -----------------------------------------------------------------------


def reachable(table, start):
    seen, todo = {start}, deque([start])
    while todo:
        state = todo.popleft()
        for (s, _e), t in table.items():
            if s is state and t not in seen and not isinstance(t, type(p.PRIOR)):
                seen.add(t)
                todo.append(t)
    return seen


def test_every_agent_state_is_reachable_and_leads_back_to_idle() -> None:
    assert reachable(p.AGENT_TABLE, A.IDLE) == set(A)
    for state in A:
        assert A.IDLE in reachable(p.AGENT_TABLE, state), state


def test_agent_can_be_aborted_in_every_phase_of_a_run() -> None:
    for state in A:
        if state in (A.IDLE, A.FINISHING):
            continue
        assert p.AGENT_TABLE[(state, AE.ABORT)] is A.ABORTING


def test_only_completed_aborted_failed_are_terminal() -> None:
    for state in P:
        exits = {t for (s, _e), t in p.PEER_TABLE.items() if s is state and t is not state}
        if state in TERMINAL:
            assert exits == set(), state
        else:
            assert exits, f"{state} has no way out"


def test_every_live_state_can_disconnect_and_recover_to_itself() -> None:
    for state in LIVE:
        machine = p.PeerMachine()
        machine.state = state
        assert machine.apply(PE.SILENT) is P.DISCONNECTED
        assert machine.apply(PE.PONG) is state
        assert (machine.disconnects, machine.recoveries) == (1, 1)


def test_recovery_goes_to_the_state_the_message_implies() -> None:
    machine = p.PeerMachine()
    for event in (PE.HANDSHAKE_OK, PE.READY, PE.STARTED_PREPARE, PE.STATS_PREPARE):
        machine.apply(event)
    assert machine.apply(PE.SILENT) is P.DISCONNECTED
    # while it was away, it finished prepare and started the workload
    assert machine.apply(PE.STATS_WORKLOAD) is P.RUNNING
    assert machine.recoveries == 1


def test_a_stale_stats_frame_never_moves_a_stage_back() -> None:
    machine = p.PeerMachine()
    for event in (PE.HANDSHAKE_OK, PE.READY, PE.STARTED_PREPARE, PE.DONE_PREPARE):
        machine.apply(event)
    assert machine.apply(PE.STATS_PREPARE) is P.PREPARE_DONE


def test_happy_path_message_sequence() -> None:
    agent, peer = p.AgentMachine(), p.PeerMachine()
    peer.apply(PE.HANDSHAKE_OK)
    agent.apply(AE.CONFIGURE)
    agent.apply(AE.PREFLIGHT_OK)
    peer.apply(PE.READY)
    for stage in p.STAGES:
        agent.apply(p.START_EVENT[stage])
        peer.apply(p.STARTED_EVENT[stage])
        peer.apply(p.STATS_EVENT[stage])
        agent.apply(AE.STAGE_DONE)
        peer.apply(p.DONE_EVENT[stage])
    assert agent.state is A.FINISHING
    peer.apply(PE.COMPLETED)
    agent.apply(AE.FINAL_ACKED)
    assert (agent.state, peer.state) == (A.IDLE, P.COMPLETED)
