"""The controller's side of one agent: its connection, state machine, clock and stats.

Liveness follows three rules (the reference tool broke all three):

- Staleness alone never kills an agent. Silent for ``warn_after``: shown as stalled. Silent
  for ``dead_after``: a probe PING is sent and the agent is declared DISCONNECTED only if
  nothing at all arrives within ``probe_timeout``. A controller that was itself paused finds
  the frames its agents sent meanwhile waiting in its socket; the probe window lets the reader
  take them in before anyone is judged.
- The socket is always read. Frames go to the connection's inbox and latest-stats slot;
  handling them here is synchronous and cheap.
- Disconnected is not terminal. Any frame recovers the agent to the state that frame implies.
  A connection that closes is followed by reconnection attempts; an agent that still holds the
  run is RESUMEd (both sides re-send what was not ACKed), one that refuses the connection or
  lost the run is given up.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_bench import __version__
from trio_bench.clock import RunClock
from trio_bench.config import split_address
from trio_bench.protocol import (
    DONE_EVENT,
    PROTOCOL_VERSION,
    STARTED_EVENT,
    STATS_EVENT,
    Aborted,
    Ack,
    Auth,
    ClockEstimator,
    ClockSample,
    Completed,
    Error,
    Goodbye,
    Hello,
    Message,
    PeerEvent,
    PeerMachine,
    PeerState,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    ReliableReceiver,
    ReliableSender,
    Resume,
    Resumed,
    StageDone,
    StageSummary,
    Started,
    Stats,
    StatsSeen,
    StatsSequence,
    TransitionError,
    Welcome,
    check_proof,
    frame_key,
    make_proof,
    new_challenge,
    to_controller_clock,
)
from trio_bench.stats import went_back
from trio_bench.transport import CLOSE_TIMEOUT_S, Connection, ConnectionClosed

from ._aggregate import Sample

log = logging.getLogger("triobench.controller")

RECONNECT_EVERY_S = 1.0


class LinkFailed(Exception):
    """Could not connect/handshake with an agent. ``code`` is the agent's error code if any;
    ``refused``: nothing listens there any more (the agent process is gone)."""

    def __init__(self, message: str, code: str = "", *, refused: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.refused = refused


# How a link reaches its agent: (host, port) -> a stream. TCP in real runs.
Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]


def _connect_error(exc: OSError) -> tuple[str, bool]:
    """(one-line reason, refused?) from what ``trio.open_tcp_stream`` raised: it wraps the
    per-address errors (ECONNREFUSED, ...) in an ExceptionGroup behind a generic OSError."""
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        causes = list(exc.__cause__.exceptions)
    refused = all(isinstance(c, ConnectionRefusedError) for c in causes)
    first = causes[0]
    number = getattr(first, "errno", None)
    if isinstance(first, socket.gaierror):
        reason = f"unknown host ({first.strerror})"
    elif isinstance(number, int) and number > 0:
        reason = os.strerror(number).lower()  # "connection refused", not trio's wrapper text
    else:
        reason = getattr(first, "strerror", None) or str(first)
    return reason, refused


class AgentLink:
    def __init__(
        self,
        *,
        index: int,
        address: str,
        agent_id: str | None,
        clock: RunClock,
        token: bytes | None,
        notify: Callable[[], None],
        record: Callable[[str, str, str], None],
        connect: Connect = trio.open_tcp_stream,
        on_sample: Callable[[str, Sample], None] = lambda agent, sample: None,
    ) -> None:
        """``on_sample(agent_id, sample)`` receives every new reading of the agent's numbers
        (each STATS and each stage summary), on the controller's clock."""
        self.index = index
        self.address = address
        self.host, self.port = split_address(address)
        self.configured_id = agent_id
        self.id = agent_id or f"agent-{index + 1}"
        self.clock = clock
        self.token = token
        self._notify = notify
        self._record = record
        self.connect = connect
        self._on_sample = on_sample
        self.machine = PeerMachine()
        self.conn: Connection | None = None
        self.hello: Hello | None = None
        self.estimator = ClockEstimator()
        self.sender = ReliableSender()
        self.receiver = ReliableReceiver()
        self.stats_sequence = StatsSequence()
        self.latest: Stats | None = None
        self._stats_handled = 0
        self.ready: Ready | None = None
        self.started_at: dict[str, int] = {}
        self.summaries: dict[str, StageSummary] = {}
        self.final: tuple[StageSummary, ...] | None = None
        self.failure: str | None = None
        self.failure_code = ""
        self.not_started: str | None = None  # healthy, but the run could not start (why)
        self.stalled = False
        self.reconnects = 0
        self.abort_requested = False
        self.run_id = ""
        self._ping_nonce = 0
        self.closed = trio.Event()  # set when the link will never talk to its agent again

    # -- facts

    @property
    def state(self) -> PeerState:
        return self.machine.state

    @property
    def offset_ns(self) -> int:
        return self.estimator.offset_ns or 0

    @property
    def load_host(self) -> str:
        """The load host this agent runs on: its hostname once it said hello, else the
        host part of its address."""
        return self.hello.hostname if self.hello is not None else self.host

    def seconds_since_frame(self) -> float | None:
        if self.conn is None:
            return None
        return trio.current_time() - self.conn.last_received

    def stage_finished(self, stage: str) -> bool:
        return stage in self.summaries or self.machine.terminal

    # -- the machine

    def apply(self, event: PeerEvent, detail: str = "") -> None:
        before = self.machine.state
        try:
            self.machine.apply(event)
        except TransitionError as exc:
            raise ProtocolError(str(exc)) from None
        after = self.machine.state
        if after is not before:
            self._record(self.id, after.value, detail or event.value)
            if (
                before is PeerState.DISCONNECTED
                and self.abort_requested
                and self.machine.can_apply(PeerEvent.ABORT_SENT)
            ):
                self.machine.apply(PeerEvent.ABORT_SENT)  # it came back: it is still aborting
        self._notify()

    def fail(self, reason: str, event: PeerEvent = PeerEvent.PROTOCOL_VIOLATION) -> None:
        if self.machine.terminal:
            return
        if self.failure is None:
            self.failure = reason
        log.info("agent %s: %s", self.id, reason)  # the display shows it
        if not self.machine.can_apply(event):
            event = PeerEvent.PROTOCOL_VIOLATION
        if self.machine.can_apply(event):
            self.apply(event, reason)
        if self.conn is not None:
            self.conn.close_soon(reason)

    # -- connecting

    async def open(self, nursery: trio.Nursery, timeout_s: float) -> Hello:
        """Connect, authenticate, and start the connection tasks. Raises ``LinkFailed``."""
        where = f"agent {self.id} ({self.address})"
        try:
            with trio.fail_after(timeout_s):
                stream = await self.connect(self.host, self.port)
        except trio.TooSlowError:
            raise LinkFailed(f"{where}: cannot connect: timed out after {timeout_s:g}s") from None
        except OSError as exc:
            reason, refused = _connect_error(exc)
            raise LinkFailed(f"{where}: cannot connect: {reason}", refused=refused) from None
        conn = Connection(
            stream,
            name=f"agent {self.id} ({self.address})",
            intercept=self._intercept,
            on_stats=self._count_stats,
        )
        handshake_done = trio.Event()
        nursery.start_soon(self._run_connection, conn, handshake_done)
        try:
            with trio.fail_after(timeout_s):
                hello = await self._handshake(conn)
        except trio.TooSlowError:
            conn.close_soon("handshake timed out")
            raise LinkFailed(
                f"{where}: connected, but no handshake within {timeout_s:g}s "
                "(is this a triobench agent?)"
            ) from None
        except ConnectionClosed as exc:
            raise LinkFailed(f"{self.address}: {exc.reason}") from None
        except LinkFailed:
            conn.close_soon("handshake failed")
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await conn.finished.wait()  # our ERROR (version, token) reaches the agent
            raise
        handshake_done.set()
        return hello

    async def _handshake(self, conn: Connection) -> Hello:
        hello = await conn.receive()
        if isinstance(hello, Error):
            raise LinkFailed(f"{self.address}: {hello.message}", hello.code)
        if not isinstance(hello, Hello):
            raise LinkFailed(f"{self.address}: expected hello, got {hello.TAG}")
        if self.configured_id is not None and hello.agent_id != self.configured_id:
            # The id names the agent's storage prefix and results folder: silently using
            # another name than the agent's own would put its data somewhere unexpected.
            raise LinkFailed(
                f"the agent at {self.address} is {hello.agent_id!r} (its --id), the config "
                f"says {self.configured_id!r}: make them agree, or leave the id out of the "
                "config",
                "bad_config",
            )
        if hello.protocol != PROTOCOL_VERSION:
            text = (
                f"version mismatch: controller speaks protocol {PROTOCOL_VERSION} "
                f"(triobench {__version__}), agent {hello.agent_id} at {self.address} speaks "
                f"{hello.protocol} (triobench {hello.software})"
            )
            conn.send(Error(seq=0, code="version_mismatch", message=text, summaries=()))
            raise LinkFailed(text, "version_mismatch")
        if self.token is not None and not hello.auth_required:
            # A peer that says it needs no token could be anything (an impostor answering on
            # the agent's address); we send it no proof and refuse it.
            raise LinkFailed(
                f"agent {hello.agent_id} at {self.address} does not require a token, but this "
                "controller has one: refusing it (start the agent with --token-file, or run "
                "the controller without a token)",
                "auth_failed",
            )
        if hello.auth_required and self.token is None:
            raise LinkFailed(
                f"agent {hello.agent_id} at {self.address} requires a token "
                "(--token-file or TRIOBENCH_TOKEN)",
                "auth_failed",
            )
        challenge = new_challenge()
        proof = b""
        if self.token is not None:
            proof = make_proof(self.token, "controller", hello.agent_id, hello.challenge, challenge)
            # the agent's frames after its WELCOME are authenticated (§3)
            agent_key = frame_key(self.token, "agent", hello.agent_id, hello.challenge, challenge)
            conn.verify_after(lambda m: agent_key if isinstance(m, Welcome) else None)
        conn.send(
            Auth(
                protocol=PROTOCOL_VERSION,
                software=__version__,
                controller=f"{socket.gethostname()}:{os.getpid()}",
                challenge=challenge,
                proof=proof,
            )
        )
        welcome = await conn.receive()
        if isinstance(welcome, Error):
            raise LinkFailed(f"agent at {self.address}: {welcome.message}", welcome.code)
        if not isinstance(welcome, Welcome):
            raise LinkFailed(f"{self.address}: expected welcome, got {welcome.TAG}")
        if self.token is not None and not check_proof(
            self.token, "agent", hello.agent_id, hello.challenge, challenge, welcome.proof
        ):
            raise LinkFailed(
                f"agent at {self.address} could not prove it knows the token", "auth_failed"
            )
        if self.token is not None:  # everything we send from now on is authenticated
            conn.sign_from_now(
                frame_key(self.token, "controller", hello.agent_id, hello.challenge, challenge)
            )
        self.hello = hello
        if self.configured_id is None:
            self.id = hello.agent_id
        self.conn = conn
        return hello

    async def _run_connection(self, conn: Connection, handshake_done: trio.Event) -> None:
        """Run one connection; once the handshake is done, feed its messages to ``handle``;
        if it is lost mid-run, try to resume on a new one."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consume, conn, handshake_done)
            await conn.run()
            nursery.cancel_scope.cancel()  # the consumer has taken everything that arrived
        if self.conn is conn and conn.protocol_error and not self.machine.terminal:
            # the agent sent bytes that are not our protocol: a broken peer, not a link fault
            self.fail(f"protocol error: {conn.protocol_error}")
            self.closed.set()
        elif self.conn is conn and not self.machine.terminal and self.hello is not None:
            reason = conn.close_reason or "connection closed"
            if self.machine.can_apply(PeerEvent.CONNECTION_LOST):
                self.apply(PeerEvent.CONNECTION_LOST, reason)
            log.info("agent %s: %s", self.id, reason)  # the display shows it
            self.conn = None
            await self._reconnect()
        elif self.machine.terminal:
            self.closed.set()

    async def _consume(self, conn: Connection, handshake_done: trio.Event) -> None:
        """Feed the connection's messages to ``handle``. It never closes the connection
        itself: ``receive`` ends as soon as closing *begins*, while the connection is still
        flushing our last ACKs and GOODBYE; tearing it down here would lose them."""
        await handshake_done.wait()
        try:
            while True:
                message = await conn.receive()
                if self.conn is conn:
                    self.handle(message)
        except ConnectionClosed:
            pass
        except ProtocolError as exc:
            self.fail(f"protocol error: {exc}")

    async def _reconnect(self) -> None:
        """The connection closed mid-run: resume on a new one, or give up on the agent."""
        deadline = trio.current_time() + self._reconnect_window
        while not self.machine.terminal:
            async with trio.open_nursery() as nursery:
                try:
                    hello = await self.open(nursery, timeout_s=max(0.5, RECONNECT_EVERY_S * 2))
                except LinkFailed as exc:
                    if exc.refused or trio.current_time() >= deadline:
                        self.give_up(f"lost: {exc}")
                        return
                else:
                    assert self.conn is not None
                    held = hello.session.run_id if hello.session else None
                    if held != self.run_id:
                        self.conn.close_soon("agent lost the run")
                        self.give_up(f"agent restarted and no longer holds run {self.run_id}")
                        return
                    self.reconnects += 1
                    self.conn.send(Resume(run_id=self.run_id, acked=self.receiver.processed))
                    for message in self.sender.unacked():
                        assert isinstance(message, Message)
                        self.conn.send(message)
                    self._record(self.id, "resumed", f"reconnected to {self.address}")
                    return  # leaving the block waits for the new connection's tasks
            await trio.sleep(RECONNECT_EVERY_S)

    _reconnect_window = 15.0  # set by the controller from dead_after

    def give_up(self, reason: str) -> None:
        """This agent is not coming back: DISCONNECTED (if it was not already), then FAILED."""
        self.failure = self.failure or reason
        if self.machine.can_apply(PeerEvent.CONNECTION_LOST) and not self.machine.terminal:
            self.apply(PeerEvent.CONNECTION_LOST, reason)
        if self.machine.can_apply(PeerEvent.GAVE_UP):
            self.apply(PeerEvent.GAVE_UP, reason)
        if self.conn is not None:
            self.conn.close_soon(reason)
        self.closed.set()
        self._notify()

    # -- inbound (synchronous)

    def _intercept(self, message: Message) -> bool:
        if isinstance(message, Pong):
            t4 = self.clock.now_ns()
            self.estimator.add(ClockSample(message.t1_ns, message.t2_ns, message.t3_ns, t4))
        return False

    def _count_stats(self, stats: Stats) -> None:
        """Runs in the reader, as each STATS frame arrives: count it and acknowledge it at
        once (flow control: the agent sends the next one only when the link has drained)."""
        if self.stats_sequence.accept(stats.seq) and self.conn is not None:
            self.conn.send(StatsSeen(seq=stats.seq))

    def handle(self, message: Message) -> None:
        """Apply one message from the agent. ``ProtocolError`` if it is not allowed now."""
        if isinstance(message, Stats):
            if message.seq > self._stats_handled:
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
                if message.stage not in self.summaries:  # a stage's summary supersedes it
                    self.latest = message
                    self._on_sample(
                        self.id,
                        Sample(
                            stage=message.stage,
                            warmup=message.warmup,
                            at_ns=to_controller_clock(message.at_ns, self.offset_ns),
                            elapsed_ns=message.elapsed_ns,
                            ops=message.ops,
                            done=message.done,
                            total=message.total,
                        ),
                    )
            return
        if isinstance(message, Ack):
            self.sender.ack(message.seq)
            return
        if isinstance(message, Pong):
            self.apply(PeerEvent.PONG)
            return
        if isinstance(message, Goodbye | Resumed):
            return
        if isinstance(message, Error) and message.seq == 0:
            # busy, auth, version, or the agent could not read what we sent (it aborted the
            # run and kept its results): this agent is done for this run
            self.failure_code = message.code
            self.fail(f"agent reported: {message.message}", PeerEvent.AGENT_ERROR)
            return
        if not isinstance(message, Ready | Started | StageDone | Completed | Aborted | Error):
            raise ProtocolError(f"{message.TAG}: not a message an agent sends")
        if not self.receiver.check(message.seq, message.TAG):
            self._send(Ack(seq=self.receiver.processed))  # a re-send: ACK again
            return
        self.apply(*self._event_for(message))
        self.receiver.commit(message.seq)
        self._remember(message)
        self._send(Ack(seq=message.seq))

    def _event_for(self, message: Message) -> tuple[PeerEvent, str]:
        if isinstance(message, Ready):
            return PeerEvent.READY, f"ready: {message.target}"
        if isinstance(message, Started):
            return STARTED_EVENT[message.stage], f"{message.stage} started"
        if isinstance(message, StageDone):
            return DONE_EVENT[message.summary.stage], f"{message.summary.stage} done"
        if isinstance(message, Completed):
            return PeerEvent.COMPLETED, "completed"
        if isinstance(message, Aborted):
            return PeerEvent.ABORTED, f"aborted: {message.reason}"
        assert isinstance(message, Error)
        return PeerEvent.AGENT_ERROR, f"{message.code}: {message.message}"

    def _remember(self, message: Message) -> None:
        if isinstance(message, Ready):
            self.ready = message
        elif isinstance(message, Started):
            self.started_at[message.stage] = message.at_ns
        elif isinstance(message, StageDone):
            self._summary(message.summary)
            self.latest = None
        elif isinstance(message, Completed | Aborted | Error):
            self.final = message.summaries
            for summary in message.summaries:  # the final word on every stage it carries
                self._summary(summary)
            if isinstance(message, Error):
                self.failure = f"{message.code}: {message.message}"
                self.failure_code = message.code
            self.latest = None

    def _summary(self, summary: StageSummary) -> None:
        self.summaries[summary.stage] = summary
        if summary.ended_at_ns:  # a stage that never began has no place on the timeline
            self._on_sample(
                self.id,
                Sample(
                    stage=summary.stage,
                    warmup=False,
                    at_ns=to_controller_clock(summary.ended_at_ns, self.offset_ns),
                    elapsed_ns=summary.measured_ns,
                    ops=summary.ops,
                    done=summary.done,
                    total=summary.total,
                    final=True,
                ),
            )

    # -- outbound

    def _send(self, message: Message) -> None:
        if self.conn is not None:
            self.conn.send(message)

    def send_reliable(self, build: Callable[[int], Message]) -> None:
        self._send(self.sender.stamp(build, self.clock.now_ns()))

    def resend_due(self, interval_ns: int) -> None:
        for message in self.sender.due(self.clock.now_ns(), interval_ns):
            assert isinstance(message, Message)
            self._send(message)

    def ping(self) -> None:
        self._ping_nonce += 1
        self._send(Ping(nonce=self._ping_nonce, t1_ns=self.clock.now_ns()))

    def say_goodbye(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.send(Goodbye(reason=reason))
            self.conn.close_soon(reason)
        self.closed.set()

    # -- liveness

    async def watch(self, settings: Any) -> None:
        """PING every ping_interval; stalled after warn_after; probe, then DISCONNECTED."""
        ping_s = settings.ping_interval / 1e9
        warn_s = settings.warn_after / 1e9
        dead_s = settings.dead_after / 1e9
        probe_s = settings.probe_timeout / 1e9
        resend_ns = settings.resend_interval
        give_up_s = settings.give_up_after / 1e9
        disconnected_since: float | None = None
        while not self.machine.terminal:
            await trio.sleep(ping_s)
            if self.state is PeerState.DISCONNECTED:
                now = trio.current_time()
                disconnected_since = disconnected_since or now
                if now - disconnected_since >= give_up_s:
                    self.give_up(
                        f"disconnected for {now - disconnected_since:.0f}s (give_up_after)"
                    )
                    return
            else:
                disconnected_since = None
            conn = self.conn
            if conn is None:
                continue
            self.ping()
            self.resend_due(resend_ns)
            silent = trio.current_time() - conn.last_received
            stalled = silent >= warn_s
            if stalled != self.stalled:
                self.stalled = stalled
                what = f"stalled: no frame for {silent:.1f}s" if stalled else "frames again"
                self._record(self.id, "stalled" if stalled else "unstalled", what)
                self._notify()
            if silent >= dead_s and self.machine.live:
                await self._probe(conn, silent, probe_s)

    async def _probe(self, conn: Connection, silent: float, probe_s: float) -> None:
        sent_at = trio.current_time()
        self.ping()
        self._record(self.id, "probe", f"silent for {silent:.1f}s: probing")
        with trio.move_on_after(probe_s):
            while conn.last_received < sent_at and not conn.closed.is_set():
                await conn.wait_frame()
        if conn.last_received < sent_at and self.machine.can_apply(PeerEvent.SILENT):
            self.apply(
                PeerEvent.SILENT,
                f"silent for {trio.current_time() - conn.last_received:.1f}s and no answer to "
                f"a probe within {probe_s:g}s",
            )
