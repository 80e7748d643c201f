"""The conversation rules of a run, one object per role, sans-IO.

``AgentEndpoint`` is a run on the agent, ``ControllerEndpoint`` the controller's view of one
agent's run; both live from CONFIGURE to the end of the run, across connections (§9). Each
owns its state machine (§10), the reliable sender and receiver (§5: check -> apply -> commit ->
ACK, re-sends, resume), the statistics window (§6) and the closing order. Messages go in
through ``receive``; what the application must do about them comes back as events (agent) or
readings (controller); messages to send go to the attached ``Wire``, a synchronous sink (the
Trio connection in real runs, a list in tests). Time comes in as arguments: the endpoints have
no clock of their own, and the timers they need are the calls ``tick``/``resend_due`` and the
deadlines ``orphan_deadline``.

Nothing here does I/O or imports Trio: ``tests/test_endpoints.py`` runs the two endpoints
against each other through a simulated network that breaks, duplicates and resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import attrs

from ._clock import ClockEstimator, ClockSample
from ._errors import ProtocolError, TransitionError
from ._intervals import went_back
from ._machines import (
    DONE_EVENT,
    START_EVENT,
    STARTED_EVENT,
    STATS_EVENT,
    AgentEvent,
    AgentMachine,
    AgentState,
    PeerEvent,
    PeerMachine,
    PeerState,
)
from ._messages import (
    STATS_IN_FLIGHT,
    Abort,
    Aborted,
    Ack,
    Completed,
    Configure,
    Error,
    Goodbye,
    Message,
    Ping,
    Pong,
    Ready,
    Resume,
    Resumed,
    SessionInfo,
    StageDone,
    StageSummary,
    Start,
    Started,
    Stats,
    StatsSeen,
    printable,
)
from ._sequence import ReliableReceiver, ReliableSender, StatsSequence

RESEND_INTERVAL_NS = 2_000_000_000  # §5: an unACKed reliable message is re-sent after this


class Wire(Protocol):
    """Where an endpoint's messages go: one connection. Every method returns at once."""

    stats_written: int  # seq of the last STATS actually handed to the network
    last_received: float  # when any frame last arrived (seconds, the caller's clock)

    def send(self, message: Message) -> None:
        """Queue a message; control messages keep their order and go before STATS."""

    def send_stats(self, stats: Stats) -> None:
        """Offer a STATS; it replaces one not yet sent (statistics are cumulative)."""

    def discard_stats(self) -> None:
        """Drop a STATS not yet sent."""

    def close_soon(self, reason: str) -> None:
        """Send what is queued, then close."""


M = TypeVar("M", bound=Message)


class _Endpoint:
    """What both roles share: reliable messages in and out, over whichever wire is attached."""

    def __init__(self) -> None:
        self.sender = ReliableSender()
        self.receiver = ReliableReceiver()
        self.wire: Wire | None = None

    def send(self, message: Message) -> None:
        if self.wire is not None:
            self.wire.send(message)

    def send_reliable(self, build: Callable[[int], M], now_ns: int) -> M:
        """Number the message, keep it until ACKed, and send it if a wire is attached."""
        message = self.sender.stamp(build, now_ns)
        self.send(message)
        return message

    def resend_due(self, now_ns: int, interval_ns: int = RESEND_INTERVAL_NS) -> None:
        """Re-send every message unACKed for ``interval_ns`` (§5)."""
        for message in self.sender.due(now_ns, interval_ns):
            assert isinstance(message, Message)
            self.send(message)

    def _resend_all(self) -> None:
        for message in self.sender.unacked():
            assert isinstance(message, Message)
            self.send(message)

    def _take(self, message: Message, apply: Callable[[], None]) -> bool:
        """§5's ritual for an incoming reliable message: a re-send is ACKed again and
        otherwise ignored (False); the next one is applied, counted and ACKed (True). If
        ``apply`` raises (not allowed now), nothing changed and its seq is not processed."""
        seq = getattr(message, "seq")  # noqa: B009 (every reliable message has one)
        if not self.receiver.check(seq, message.TAG):
            self.send(Ack(seq=self.receiver.processed))
            return False
        apply()
        self.receiver.commit(seq)
        self.send(Ack(seq=seq))
        return True


# --- the agent's side ------------------------------------------------------------------------


@attrs.frozen
class StartStage:
    """Begin ``stage`` at ``at_ns`` (agent clock)."""

    stage: str
    at_ns: int


@attrs.frozen
class AbortRun:
    """Stop the run's work now; then call ``aborted``."""

    reason: str


@attrs.frozen
class ControllerLeft:
    """The controller will neither ACK nor resume: stop any cleanup nobody waits for."""

    reason: str


@attrs.frozen
class RunOver:
    """The controller is done with the run (its final message ACKed, or the controller gone
    for good): the agent is free for the next one."""

    reason: str


AgentEventOut = StartStage | AbortRun | ControllerLeft | RunOver


class AgentEndpoint(_Endpoint):
    """One run on the agent, from its CONFIGURE to the ACK of its final message."""

    def __init__(self, configure: Configure, now: float) -> None:
        super().__init__()
        self.configure = configure
        self.run_id = configure.run_id
        self.machine = AgentMachine()
        self.machine.apply(AgentEvent.CONFIGURE)
        self.receiver.accept(configure.seq, "configure")
        self.last_heard = now
        self.orphan_timeout_s = configure.orphan_timeout_ns / 1e9
        self.starts: dict[str, int] = {}
        self.final: Message | None = None
        self.farewell = False  # the controller left: no ACK will come
        self.over = False
        self.abort_reason = ""
        self.stats_seq = 0
        self.stats_seen = 0  # highest STATS seq the controller acknowledged (STATS_SEEN)
        self.stats_held_back = 0  # readings skipped: STATS_IN_FLIGHT were unacknowledged
        self.started_stage: str | None = None  # STATS only after this stage's STARTED

    @property
    def state(self) -> AgentState:
        return self.machine.state

    def info(self) -> SessionInfo:
        return SessionInfo(
            run_id=self.run_id, state=self.state.value, attached=self.wire is not None
        )

    # -- connections

    def resume(self, message: Resume) -> Resumed:
        """The answer to RESUME (the caller checked the run id); ``attach`` the wire next."""
        self.sender.ack(min(message.acked, self.sender.highest_sent))
        return Resumed(run_id=self.run_id, state=self.state.value, acked=self.receiver.processed)

    def attach(self, wire: Wire, now: float) -> None:
        """A connection now carries the run (after CONFIGURE or RESUMED): it gets the ACK of
        everything processed and every unACKed message, in order. A previous one is closed."""
        previous, self.wire = self.wire, wire
        if previous is not None and previous is not wire:
            previous.close_soon("replaced by a newer connection from the controller")
        self.stats_seen = self.stats_seq  # the new connection carries no STATS yet
        self.last_heard = now
        wire.send(Ack(seq=self.receiver.processed))
        self._resend_all()

    def detach(self, wire: Wire) -> None:
        if self.wire is wire:
            self.last_heard = max(self.last_heard, wire.last_received)
            self.wire = None

    # -- what the controller sends

    def receive(self, message: Message) -> list[AgentEventOut]:
        """Apply one message of the controller's. ``ProtocolError`` if it is not allowed now
        (state and sequence unchanged)."""
        if isinstance(message, Ack):
            acked = self.sender.ack(message.seq)
            if self.final is not None and self.final in acked and not self.over:
                self.machine.apply(AgentEvent.FINAL_ACKED)
                return self._over("final message acknowledged")
            return []
        if isinstance(message, Goodbye):
            if self.over:  # ACKed, perhaps in the same read: our GOODBYE still goes first
                self.send(self.goodbye())
            return self.controller_gone(f"controller left: {message.reason}")
        if isinstance(message, StatsSeen):
            if message.seq > self.stats_seq:
                raise ProtocolError(
                    f"stats_seen: seq {message.seq} was never sent (highest {self.stats_seq})"
                )
            self.stats_seen = max(self.stats_seen, message.seq)
            return []
        if isinstance(message, Configure):
            if message == self.configure:  # re-sent (our ACK was late or lost): ACK again
                self.send(Ack(seq=message.seq))
                return []
            raise ProtocolError(
                f"configure: this connection already carries run {self.run_id} "
                "(one run per connection; reconnect for the next run)"
            )
        if isinstance(message, Start):
            events: list[AgentEventOut] = []

            def start() -> None:
                self.machine.apply(START_EVENT[message.stage])
                self.starts[message.stage] = message.at_ns
                events.append(StartStage(message.stage, message.at_ns))

            self._take(message, start)
            return events
        if isinstance(message, Abort):
            aborts: list[AgentEventOut] = []

            def abort() -> None:
                before = self.state
                self.machine.apply(AgentEvent.ABORT)
                if before is not AgentState.ABORTING and self.state is AgentState.ABORTING:
                    self.abort_reason = message.reason or "aborted by the controller"
                    aborts.append(AbortRun(self.abort_reason))

            self._take(message, abort)
            return aborts
        raise ProtocolError(f"{message.TAG}: not a message a controller sends during a run")

    def controller_gone(self, reason: str) -> list[AgentEventOut]:
        """The controller said GOODBYE or sent something invalid: nobody will ACK or resume
        this run. It is aborted (results kept locally) and the agent freed."""
        self.farewell = True
        if self.wire is not None:
            self.wire.close_soon(reason)
        events: list[AgentEventOut] = [ControllerLeft(reason)]
        if self.state is AgentState.FINISHING and not self.over:
            events += self._over(reason)
        elif self.machine.can_apply(AgentEvent.ABORT) and not self.abort_reason:
            self.machine.apply(AgentEvent.ABORT)
            self.abort_reason = printable(reason, 500)
            events.append(AbortRun(self.abort_reason))
        return events

    def _over(self, reason: str) -> list[AgentEventOut]:
        self.over = True
        return [RunOver(reason)]

    def goodbye(self, outcome: str = "") -> Goodbye:
        return Goodbye(reason=f"run {self.run_id} {outcome or 'over'}".strip())

    # -- what the run does

    def advance(self, event: AgentEvent) -> None:
        self.machine.apply(event)

    def ready(self, build: Callable[[int], Ready], now_ns: int) -> None:
        self.advance(AgentEvent.PREFLIGHT_OK)
        self.send_reliable(build, now_ns)

    def started(self, stage: str, at_ns: int, now_ns: int) -> None:
        self.send_reliable(lambda seq: Started(seq=seq, stage=stage, at_ns=at_ns), now_ns)
        self.started_stage = stage

    def stage_done(self, summary: StageSummary, now_ns: int) -> None:
        """A stage ended: its pending STATS is dropped (the summary supersedes it)."""
        self.discard_stats()
        self.advance(AgentEvent.STAGE_DONE)
        self.send_reliable(lambda seq: StageDone(seq=seq, summary=summary), now_ns)

    def discard_stats(self) -> None:
        if self.wire is not None:
            self.wire.discard_stats()

    def finish(
        self, build: Callable[[int], Message], now_ns: int, event: AgentEvent | None = None
    ) -> list[AgentEventOut]:
        """Send the final message (COMPLETED, ABORTED or ERROR) after ``event``; the run is
        over when it is ACKed, or at once if the controller already left."""
        self.discard_stats()
        if event is not None:
            self.advance(event)
        self.final = self.send_reliable(build, now_ns)
        if self.farewell and not self.over:
            return self._over("the controller left")
        return []

    def offer_stats(self, stage: str, build: Callable[[int], Stats]) -> bool:
        """Send a STATS of ``stage`` if it may go now (§6): a wire is attached, the stage's
        STARTED is out, and fewer than STATS_IN_FLIGHT sent STATS are unacknowledged."""
        wire = self.wire
        if wire is None or self.started_stage != stage:
            return False
        if wire.stats_written - self.stats_seen >= STATS_IN_FLIGHT:
            self.stats_held_back += 1
            return False
        self.stats_seq += 1
        wire.send_stats(build(self.stats_seq))
        return True

    # -- timers

    def orphan_deadline(self) -> float:
        """When the controller's silence orphans the run (seconds, the caller's clock)."""
        if self.wire is not None:
            self.last_heard = max(self.last_heard, self.wire.last_received)
        return self.last_heard + self.orphan_timeout_s

    def tick(self, now: float, now_ns: int) -> list[AgentEventOut]:
        """Re-send what is due; orphan the run if the controller has been silent too long."""
        self.resend_due(now_ns)
        if self.over or now < self.orphan_deadline():
            return []
        silent = now - self.last_heard
        if self.state is AgentState.FINISHING:
            self.machine.apply(AgentEvent.CONTROLLER_LOST)
            return self._over(f"final results not acknowledged after {silent:.0f}s")
        if self.state is AgentState.ABORTING:
            return []
        self.machine.apply(AgentEvent.CONTROLLER_LOST)
        self.abort_reason = f"controller silent for {silent:.0f}s (orphan timeout)"
        if self.wire is not None:
            self.wire.close_soon("orphan timeout")
        return [AbortRun(self.abort_reason)]


# --- the controller's side -------------------------------------------------------------------


class ControllerEndpoint(_Endpoint):
    """The controller's view of one agent's run, across connections.

    ``on_change(state, detail)`` is called after every change of state (for the timeline
    and the display). ``receive`` returns the agent's new readings: each STATS and each
    stage summary, in order, for the aggregation.
    """

    def __init__(
        self, run_id: str, on_change: Callable[[PeerState, str], None] = lambda s, d: None
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.machine = PeerMachine()
        self._on_change = on_change
        self.estimator = ClockEstimator()
        self.stats_sequence = StatsSequence()
        self._stats_acked = 0  # the seq of our last STATS_SEEN on this connection
        self.latest: Stats | None = None  # the newest STATS of the stage in progress
        self._stats_handled = 0
        self.ready: Ready | None = None
        self.started_at: dict[str, int] = {}
        self.summaries: dict[str, StageSummary] = {}
        self.final: tuple[StageSummary, ...] | None = None
        self.failure: str | None = None
        self.failure_code = ""
        self.abort_requested = False
        self._ping_nonce = 0

    @property
    def state(self) -> PeerState:
        return self.machine.state

    @property
    def offset_ns(self) -> int:
        return self.estimator.offset_ns or 0

    def apply(self, event: PeerEvent, detail: str = "") -> None:
        """Move the machine (``ProtocolError`` if ``event`` is not allowed now)."""
        before = self.machine.state
        try:
            self.machine.apply(event)
        except TransitionError as exc:
            raise ProtocolError(str(exc)) from None
        after = self.machine.state
        if after is not before:
            self._on_change(after, detail or event.value)
            if (
                before is PeerState.DISCONNECTED
                and self.abort_requested
                and self.machine.can_apply(PeerEvent.ABORT_SENT)
            ):
                self.machine.apply(PeerEvent.ABORT_SENT)  # it came back: it is still aborting

    def fail(self, reason: str, event: PeerEvent = PeerEvent.PROTOCOL_VIOLATION) -> None:
        """This agent failed (``reason``): its state says so and its connection closes."""
        if self.machine.terminal:
            return
        if self.failure is None:
            self.failure = reason
        if not self.machine.can_apply(event):
            event = PeerEvent.PROTOCOL_VIOLATION
        if self.machine.can_apply(event):
            self.apply(event, reason)
        if self.wire is not None:
            self.wire.close_soon(reason)

    def give_up(self, reason: str) -> None:
        """Not coming back: DISCONNECTED (if it was not already), then FAILED."""
        self.failure = self.failure or reason
        if self.machine.can_apply(PeerEvent.CONNECTION_LOST) and not self.machine.terminal:
            self.apply(PeerEvent.CONNECTION_LOST, reason)
        if self.machine.can_apply(PeerEvent.GAVE_UP):
            self.apply(PeerEvent.GAVE_UP, reason)
        if self.wire is not None:
            self.wire.close_soon(reason)

    # -- connections

    def resume(self, wire: Wire) -> None:
        """A new connection to an agent that still holds the run: RESUME, then every
        unACKed message in order (§9)."""
        self.wire = wire
        # what the agent counts from on the new connection is at least what we received
        self._stats_acked = self.stats_sequence.last
        wire.send(Resume(run_id=self.run_id, acked=self.receiver.processed))
        self._resend_all()

    def lost(self, reason: str) -> None:
        """The connection closed mid-run."""
        self.wire = None
        if not self.machine.terminal and self.machine.can_apply(PeerEvent.CONNECTION_LOST):
            self.apply(PeerEvent.CONNECTION_LOST, reason)

    # -- what the agent sends

    def pong_arrived(self, pong: Pong, t4_ns: int) -> None:
        """A PONG, timestamped as it is decoded (before any queueing): a clock sample."""
        self.estimator.add(ClockSample(pong.t1_ns, pong.t2_ns, pong.t3_ns, t4_ns))

    def stats_arrived(self, stats: Stats) -> None:
        """A STATS frame, as it is decoded: acknowledged at once once its seq is
        STATS_IN_FLIGHT above the last acknowledged (flow control, §1): an agent holds back
        at exactly that distance, so it is never left waiting, and half the frames go
        unanswered."""
        if self.stats_sequence.accept(stats.seq) and (
            stats.seq - self._stats_acked >= STATS_IN_FLIGHT
        ):
            self._stats_acked = stats.seq
            self.send(StatsSeen(seq=stats.seq))

    def receive(self, message: Message) -> list[Stats | StageSummary]:
        """Apply one message from the agent; its new readings. ``ProtocolError`` if it is not
        allowed now."""
        if isinstance(message, Stats):
            return self._stats(message)
        if isinstance(message, Ack | Pong | Resumed | Goodbye):
            # no state of its own, but a sign of life: a disconnected agent is back (§9)
            self.apply(PeerEvent.PONG)
            if isinstance(message, Ack):
                self.sender.ack(message.seq)
            elif isinstance(message, Resumed):
                self.sender.ack(min(message.acked, self.sender.highest_sent))
            return []
        if isinstance(message, Error) and message.seq == 0:
            # busy, auth, version, or the agent could not read what we sent (it aborted the
            # run and kept its results): this agent is done for this run
            self.failure_code = message.code
            self.fail(f"agent reported: {message.message}", PeerEvent.AGENT_ERROR)
            return []
        if not isinstance(message, Ready | Started | StageDone | Completed | Aborted | Error):
            raise ProtocolError(f"{message.TAG}: not a message an agent sends")
        readings: list[Stats | StageSummary] = []
        self._take(message, lambda: self._apply_reliable(message, readings))
        return readings

    def _stats(self, message: Stats) -> list[Stats | StageSummary]:
        if message.seq <= self._stats_handled:
            return []  # older than what we have (the newest replaced it)
        previous = self.latest
        if (
            previous is not None
            and previous.stage == message.stage
            and previous.warmup == message.warmup
            and went_back(message.ops, previous.ops)
        ):
            raise ProtocolError(
                f"stats: seq {message.seq}: the cumulative counts of stage "
                f"{message.stage} went backwards (seq {previous.seq} had more)"
            )
        self._stats_handled = message.seq
        self.apply(STATS_EVENT[message.stage])
        if message.stage in self.summaries:  # a stage's summary supersedes its STATS
            return []
        self.latest = message
        return [message]

    def _apply_reliable(self, message: Message, readings: list[Stats | StageSummary]) -> None:
        if isinstance(message, Ready):
            self.apply(PeerEvent.READY, f"ready: {message.target}")
            self.ready = message
        elif isinstance(message, Started):
            self.apply(STARTED_EVENT[message.stage], f"{message.stage} started")
            self.started_at[message.stage] = message.at_ns
        elif isinstance(message, StageDone):
            stage = message.summary.stage
            self.apply(DONE_EVENT[stage], f"{stage} done")
            readings += self._summary(message.summary)
            self.latest = None
        else:
            assert isinstance(message, Completed | Aborted | Error)
            if isinstance(message, Completed):
                self.apply(PeerEvent.COMPLETED, "completed")
            elif isinstance(message, Aborted):
                self.apply(PeerEvent.ABORTED, f"aborted: {message.reason}")
            else:
                self.apply(PeerEvent.AGENT_ERROR, f"{message.code}: {message.message}")
                self.failure = f"{message.code}: {message.message}"
                self.failure_code = message.code
            self.final = message.summaries
            for summary in message.summaries:  # the final word on every stage it carries
                readings += self._summary(summary)
            self.latest = None

    def _summary(self, summary: StageSummary) -> list[StageSummary]:
        self.summaries[summary.stage] = summary
        # a stage that never began has no place on the timeline
        return [summary] if summary.ended_at_ns else []

    # -- what the controller sends

    def ping(self, now_ns: int) -> None:
        self._ping_nonce += 1
        self.send(Ping(nonce=self._ping_nonce, t1_ns=now_ns))

    def goodbye(self, reason: str) -> None:
        if self.wire is not None:
            self.wire.send(Goodbye(reason=reason))
            self.wire.close_soon(reason)
