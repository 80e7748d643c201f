"""The two protocol endpoints against each other, with no sockets and no Trio.

A simulated network carries encoded frames between a controller (``ControllerHandshake`` +
``ControllerEndpoint``) and an agent (``AgentHandshake`` + ``AgentEndpoint``), each driven by
a minimal application that does what the real one does with the endpoint's events. Hypothesis
then breaks what a broken connection can break: a connection drops with frames in flight
(lost), the controller reconnects and RESUMEs, re-sends duplicate what was already processed,
frames of a dead connection reach the agent after the new connection's (reordered), STATS are
replaced before they are sent, time jumps. However the run is interfered with, once the
network heals it must end exactly as a clean run does: the controller holds the agent's very
summaries, each reliable message was processed once, and the agent is free.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import event as note_event
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from trio_bench import protocol as p

from .strategies import stats_message

TOKEN = b"pair-test-token"
STAGE_OPS = {"prepare": "put", "workload": "get", "cleanup": "delete"}


def _roundtrip(message: p.Message) -> p.Message:
    """What the far side decodes: every message crosses the network as its frame."""
    frame = p.encode_message(message)
    return p.decode_message(p.decode_body(frame[p.HEADER_SIZE :]))


class FakeWire:
    """One direction of one connection, as the endpoint sees it: control frames in order, STATS
    in a replaceable slot sent after them (the transport's rules)."""

    def __init__(self) -> None:
        self.control: deque[p.Message] = deque()
        self.stats: p.Stats | None = None
        self.stats_written = 0
        self.last_received = 0.0
        self.closing = False
        self.superseded = 0

    def send(self, message: p.Message) -> None:
        if not self.closing:
            self.control.append(_roundtrip(message))

    def send_stats(self, stats: p.Stats) -> None:
        if not self.closing:
            self.superseded += self.stats is not None
            self.stats = stats

    def discard_stats(self) -> None:
        self.stats = None

    def close_soon(self, reason: str) -> None:
        self.closing = True  # queued frames still go; nothing new is accepted

    def pending(self) -> bool:
        return bool(self.control) or self.stats is not None

    def take(self) -> p.Message:
        if self.control:
            return self.control.popleft()
        assert self.stats is not None
        stats, self.stats = self.stats, None
        self.stats_written = stats.seq
        return _roundtrip(stats)


@attrs.define
class Link:
    """One connection: a wire each way, and where its handshake is."""

    to_agent: FakeWire = attrs.field(factory=FakeWire)
    to_controller: FakeWire = attrs.field(factory=FakeWire)
    agent_attached: bool = False  # CONFIGURE or RESUME processed on this connection


class Agent:
    """The agent's application: the stages do their work when told, nothing else."""

    def __init__(self) -> None:
        self.endpoint: p.AgentEndpoint | None = None
        self.pending_stage: str | None = None
        self.running: str | None = None
        self.counts = 0
        self.summaries: list[p.StageSummary] = []
        self.aborting = False
        self.free = False
        self.over_events = 0

    def react(self, events: list[p.AgentEventOut]) -> None:
        for event in events:
            if isinstance(event, p.StartStage):
                self.pending_stage = event.stage
            elif isinstance(event, p.AbortRun):
                self.aborting = True
            elif isinstance(event, p.RunOver):
                self.over_events += 1
                self.free = True

    def summary(self, stage: str, outcome: str = "completed") -> p.StageSummary:
        n = self.counts
        ops = {STAGE_OPS[stage]: _ops(n)} if n else {}
        return p.StageSummary(
            stage=stage,
            outcome=outcome,
            started_at_ns=1,
            ended_at_ns=2 + n,
            measured_ns=1 + n,
            done=n if stage != "workload" else 0,
            total=n if stage != "workload" else 0,
            ops=ops,
            error_samples={},
            error_codes={},
            message="",
            cpu_user_ns=0,
            cpu_system_ns=0,
            sizes={},
        )

    def step(self, now_ns: int) -> bool:
        """One piece of the run's own work; False if there was nothing to do."""
        ep = self.endpoint
        if ep is None or ep.final is not None:
            return False
        if self.aborting:
            summaries = list(self.summaries)
            if self.running is not None:
                summaries.append(self.summary(self.running, "aborted"))
            self.summaries = summaries
            event = p.AgentEvent.ABORT_DONE if ep.state is p.AgentState.ABORTING else None
            self.react(
                ep.finish(
                    lambda seq: p.Aborted(seq=seq, reason="aborted", summaries=tuple(summaries)),
                    now_ns,
                    event,
                )
            )
            return True
        if ep.state is p.AgentState.CONFIGURING:
            ep.ready(
                lambda seq: p.Ready(seq=seq, target="null://", checks=(), environment={}), now_ns
            )
            return True
        if self.pending_stage is not None:
            stage, self.pending_stage = self.pending_stage, None
            self.running, self.counts = stage, 0
            ep.started(stage, 1, now_ns)
            return True
        if self.running is None:
            return False
        if self.counts < 3:
            self.counts += 1
            stage, n = self.running, self.counts
            ep.offer_stats(stage, lambda seq: _stats(seq, stage, n))
            return True
        summary = self.summary(self.running)
        self.summaries.append(summary)
        self.running = None
        ep.stage_done(summary, now_ns)
        if summary.stage == "cleanup":
            done = tuple(self.summaries)
            self.react(ep.finish(lambda seq: p.Completed(seq=seq, summaries=done), now_ns))
        return True


def _ops(n: int) -> p.OpStats:
    return p.OpStats(
        ops=n, bytes=4096 * n, errors=0, sum_ns=1000 * n, max_ns=1000, buckets=(40,), counts=(n,)
    )


def _stats(seq: int, stage: str, n: int) -> p.Stats:
    objects = stage != "workload"
    return stats_message(
        seq,
        stage=stage,
        elapsed_ns=n,
        done=n if objects else 0,
        total=3 if objects else 0,
        ops={STAGE_OPS[stage]: _ops(n)},
        at_ns=n,
    )


NEXT_STAGE = {
    p.PeerState.READY: "prepare",
    p.PeerState.PREPARE_DONE: "workload",
    p.PeerState.WORKLOAD_DONE: "cleanup",
}


class PairMachine(RuleBasedStateMachine):
    """A controller and an agent over a network that hypothesis breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.controller = p.ControllerEndpoint("run-1", self._changed)
        self.transitions: list[tuple[p.PeerState, str]] = []
        self.agent = Agent()
        self.link: Link | None = None
        self.stale: deque[p.Message] = deque()  # controller frames of a dead connection
        self.started_stages: list[str] = []
        self.abort_sent = False
        self.said_goodbye = False
        self.readings: list[p.Stats | p.StageSummary] = []
        self.connections = 0
        self.in_hypothesis = True
        self.connect()

    def _changed(self, state: p.PeerState, detail: str) -> None:
        self.transitions.append((state, detail))

    @property
    def now_ns(self) -> int:
        return int(self.now * 1e9)

    # -- connections

    def connect(self) -> None:
        """A new connection and its handshake (HELLO, AUTH, WELCOME through the wire), then
        CONFIGURE (the first time) or RESUME."""
        link = Link()
        self.connections += 1
        session = self.agent.endpoint.info() if self.agent.endpoint else None
        agent_side = p.AgentHandshake(
            agent_id="a1", token=TOKEN, software="t", hostname="h", cpus=1, session=session
        )
        controller_side = p.ControllerHandshake(
            token=TOKEN, software="t", controller="c", address="a1:1", configured_id="a1"
        )
        auth = controller_side.receive_hello(_roundtrip(agent_side.hello()))
        welcome = agent_side.receive_auth(_roundtrip(auth))
        controller_side.receive_welcome(_roundtrip(welcome))
        assert agent_side.send_key() == controller_side.key_after(welcome)
        assert controller_side.send_key() == agent_side.key_after(auth)
        self.link = link
        if self.connections == 1:
            self.controller.wire = link.to_agent
            self.controller.send_reliable(
                lambda seq: p.Configure(
                    seq=seq,
                    run_id="run-1",
                    config={"workload": []},
                    agent_index=0,
                    agent_count=1,
                    path_prefix="a1/",
                    stats_interval_ns=10**9,
                    orphan_timeout_ns=7 * 86400 * 10**9,
                ),
                self.now_ns,
            )
            self.controller.apply(p.PeerEvent.HANDSHAKE_OK)
        else:
            assert session is not None and session.run_id == "run-1"
            self.controller.resume(link.to_agent)

    # -- delivery

    def _to_agent(self, message: p.Message, link: Link | None) -> None:
        agent = self.agent
        if link is not None and not link.agent_attached:
            # the first frame after the handshake: CONFIGURE or RESUME (the agent's server)
            link.agent_attached = True
            if isinstance(message, p.Configure):
                assert agent.endpoint is None
                agent.endpoint = p.AgentEndpoint(message, self.now)
            else:
                assert isinstance(message, p.Resume) and agent.endpoint is not None
                link.to_controller.send(agent.endpoint.resume(message))
            agent.endpoint.attach(link.to_controller, self.now)
            return
        assert agent.endpoint is not None
        agent.react(agent.endpoint.receive(message))

    def _to_controller(self, message: p.Message) -> None:
        if isinstance(message, p.Stats):
            self.controller.stats_arrived(message)
        self.readings += self.controller.receive(message)

    @precondition(lambda self: self.link is not None and self.link.to_agent.pending())
    @rule()
    def deliver_to_agent(self) -> None:
        assert self.link is not None
        self.link.to_agent.last_received = self.now
        self._to_agent(self.link.to_agent.take(), self.link)

    @precondition(lambda self: self.link is not None and self.link.to_controller.pending())
    @rule()
    def deliver_to_controller(self) -> None:
        assert self.link is not None
        self._to_controller(self.link.to_controller.take())

    @precondition(lambda self: bool(self.stale) and self.agent.endpoint is not None)
    @rule()
    def deliver_stale_to_agent(self) -> None:
        """A frame of a dead connection, processed after the new connection's frames (the
        agent's old connection task still had it in its inbox)."""
        self._to_agent(self.stale.popleft(), None)

    @precondition(lambda self: self.link is not None and self.link.agent_attached)
    @rule(keep_for_agent=st.integers(0, 3), lost_to_controller=st.booleans())
    def break_connection(self, keep_for_agent: int, lost_to_controller: bool) -> None:
        """The connection dies. Up to ``keep_for_agent`` frames the agent had already read
        are processed late (reordered); the rest in flight is lost both ways."""
        assert self.link is not None
        link, self.link = self.link, None
        for _ in range(keep_for_agent):
            if link.to_agent.control:
                self.stale.append(link.to_agent.control.popleft())
        if not lost_to_controller:  # frames that reached the controller before the break
            while link.to_controller.pending():
                self._to_controller(link.to_controller.take())
        assert self.agent.endpoint is not None
        self.agent.endpoint.detach(link.to_controller)
        if self.controller.wire is link.to_agent:
            self.controller.lost("connection lost")

    @precondition(lambda self: self.link is None and not self.controller.machine.terminal)
    @rule()
    def reconnect(self) -> None:
        self.connect()

    @rule(seconds=st.sampled_from([0.1, 1.0, 2.5]))
    def time_passes(self, seconds: float) -> None:
        """Time passes: what is unACKed for the resend interval is sent again (duplicates)."""
        self.now += seconds
        self.controller.resend_due(self.now_ns)
        if self.agent.endpoint is not None:
            self.agent.react(self.agent.endpoint.tick(self.now, self.now_ns))

    # -- the applications

    @rule()
    def agent_works(self) -> None:
        self.agent.step(self.now_ns)

    @rule()
    def controller_acts(self) -> None:
        self._controller_step()

    def _controller_step(self) -> bool:
        c = self.controller
        stage = NEXT_STAGE.get(c.state)
        if stage is not None and stage not in self.started_stages and not self.abort_sent:
            self.started_stages.append(stage)
            c.send_reliable(lambda seq: p.Start(seq=seq, stage=stage, at_ns=1), self.now_ns)
            return True
        if c.machine.terminal and not self.said_goodbye:
            self.said_goodbye = True
            c.goodbye("run finished")
            return True
        return False

    @precondition(lambda self: not self.abort_sent and self.agent.endpoint is not None)
    @rule(data=st.data())
    def controller_aborts(self, data: Any) -> None:
        if data.draw(st.integers(0, 9), label="abort?") != 0:  # rarely: most runs complete
            return
        c = self.controller
        if c.machine.terminal or not c.machine.can_apply(p.PeerEvent.ABORT_SENT):
            return
        self.abort_sent = True
        c.abort_requested = True
        c.send_reliable(lambda seq: p.Abort(seq=seq, reason="user"), self.now_ns)
        c.apply(p.PeerEvent.ABORT_SENT, "user")

    # -- what must hold all along

    @invariant()
    def sequences_never_run_ahead(self) -> None:
        c, a = self.controller, self.agent.endpoint
        if a is not None:
            assert c.receiver.processed <= a.sender.highest_sent
            assert a.receiver.processed <= c.sender.highest_sent
        assert not c.machine.terminal or c.state is not p.PeerState.FAILED, c.failure

    @invariant()
    def a_quiet_connection_never_leaves_statistics_held_back(self) -> None:
        """Flow control never wedges: once nothing is in flight on the connection, the agent
        may send its next STATS (the controller acknowledged what held it back)."""
        link, a = self.link, self.agent.endpoint
        if link is None or a is None or a.wire is not link.to_controller or self.stale:
            return
        if link.to_agent.pending() or link.to_controller.pending():
            return
        assert link.to_controller.stats_written - a.stats_seen < p.STATS_IN_FLIGHT

    # -- the end: heal the network and let the run finish

    def teardown(self) -> None:
        for _ in range(10_000):
            if self._done():
                break
            self._heal_step()
            self.a_quiet_connection_never_leaves_statistics_held_back()
        else:
            raise AssertionError(f"the run never ended: {self.controller.state}")
        self._check_the_results()
        if self.in_hypothesis:
            self._note_what_happened()

    def _note_what_happened(self) -> None:
        note_event(f"ended {self.controller.state.value}")
        note_event(f"connections: {min(self.connections, 4)}{'+' if self.connections > 4 else ''}")
        if self.controller.receiver.duplicates or (
            self.agent.endpoint and self.agent.endpoint.receiver.duplicates
        ):
            note_event("duplicates processed")
        if self.controller.stats_sequence.gaps:
            note_event("stats superseded")

    def _done(self) -> bool:
        return (
            self.controller.machine.terminal
            and self.said_goodbye
            and self.agent.free
            and (self.link is None or not (self.link.to_agent.pending()))
        )

    def _heal_step(self) -> None:
        if self.link is None:
            if not self.controller.machine.terminal:
                self.connect()
                return
        elif self.link.to_agent.pending():
            self.deliver_to_agent()
            return
        elif self.link.to_controller.pending():
            self.deliver_to_controller()
            return
        if self.stale and self.agent.endpoint is not None:
            self.deliver_stale_to_agent()
            return
        if self.agent.step(self.now_ns) or self._controller_step():
            return
        # nothing moves: wait for re-sends (a lost final ACK ends in the orphan timeout)
        self.time_passes(2.5 if self.link is not None else 7 * 86400.0)

    def _check_the_results(self) -> None:
        c, agent = self.controller, self.agent
        a = agent.endpoint
        assert a is not None
        expected = p.PeerState.ABORTED if self.abort_sent else p.PeerState.COMPLETED
        if c.state is not expected:  # an abort may come too late: the run completed first
            assert self.abort_sent and c.state is p.PeerState.COMPLETED, c.state
        # the controller holds exactly the agent's summaries, stage by stage
        assert c.final == tuple(agent.summaries)
        assert c.summaries == {s.stage: s for s in agent.summaries}
        # every reliable message processed once, in order, on both sides
        assert c.receiver.processed == a.sender.highest_sent
        assert a.receiver.processed == c.sender.highest_sent
        assert agent.over_events == 1
        assert a.machine.state is p.AgentState.IDLE
        # each stage's readings on the controller are cumulative and end in its summary
        last: dict[str, int] = {}
        for reading in self.readings:
            ops = sum(o.ops for o in reading.ops.values())
            assert ops >= last.get(reading.stage, 0), self.readings
            last[reading.stage] = ops


PAIR_RUNS = 300


@pytest.mark.reliability
def test_the_endpoints_end_a_disturbed_run_as_a_clean_one(reliability) -> None:
    """Hypothesis drives the pair through lost frames (a connection dying with frames in
    flight), reconnection and RESUME, duplicates (re-sends), frames of a dead connection
    processed after the new one's, superseded STATS, time jumps and aborts."""
    run_state_machine_as_test(
        PairMachine,
        settings=settings(max_examples=PAIR_RUNS, stateful_step_count=60, deadline=None),
    )
    reliability(
        f"{PAIR_RUNS} generated runs of the two protocol endpoints over a network that loses "
        "frames with a broken connection, reconnects and resumes, duplicates, reorders, "
        "supersedes STATS and aborts",
        "every run ends as a clean run does: the controller holds the agent's exact summaries, "
        "each reliable message processed once, the agent free",
        f"{PAIR_RUNS} of {PAIR_RUNS} runs as a clean one",
    )


def test_a_clean_run_ends_completed_with_the_agents_summaries() -> None:
    """No interference at all: the baseline the hypothesis test compares against."""
    machine = PairMachine()
    machine.in_hypothesis = False
    machine.teardown()
    assert machine.controller.state is p.PeerState.COMPLETED
    assert [s.stage for s in machine.agent.summaries] == list(p.STAGES)
    assert machine.controller.stats_sequence.gaps == 0
