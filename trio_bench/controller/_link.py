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
import math
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_bench import __version__
from trio_bench.clock import RunClock
from trio_bench.config import split_address
from trio_bench.protocol import (
    ClockEstimator,
    ControllerEndpoint,
    ControllerHandshake,
    Hello,
    Message,
    PeerEvent,
    PeerMachine,
    PeerState,
    Pong,
    ProtocolError,
    Ready,
    Refusal,
    ReliableReceiver,
    StageSummary,
    Stats,
    StatsSequence,
    to_controller_clock,
)
from trio_bench.transport import CLOSE_TIMEOUT_S, Connection, ConnectionClosed, ReadPoller

from ._aggregate import Sample

WATCH_SLOTS = 10  # liveness visits a tenth of the links every tenth of ping_interval
# An agent whose statistics arrive is shown alive by them: it is PINGed only this many
# ping_intervals apart, to follow its clock (protocol.md §8). At one STATS per second, PINGs
# every second were half of a controller's frames.
BUSY_PING_EVERY = 5

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
    """One agent, as the controller reaches it: connections (open, handshake, reconnect and
    resume), liveness timers, and the adapters to the display, timeline and aggregation. The
    conversation itself (machine, sequence numbers, re-sends, what each message means) is the
    run's ``ControllerEndpoint``; the handshake's rules are ``ControllerHandshake``."""

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
        run_id: str = "",
        reconnect_window_s: float = 15.0,
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
        self.reconnect_window_s = reconnect_window_s
        self.endpoint = ControllerEndpoint(run_id, self._changed)
        self.hello: Hello | None = None
        self.not_started: str | None = None  # healthy, but the run could not start (why)
        self.stalled = False
        self._disconnected_since: float | None = None  # liveness (``watch_tick``)
        self._probing = False
        self.poller: ReadPoller | None = None  # reads the connection's socket, if set
        self._pinged_at = -math.inf  # trio time of the last PING ``watch_tick`` sent
        self._stats_at = -math.inf  # trio time of the last STATS frame
        self.reconnects = 0
        self.closed = trio.Event()  # set when the link will never talk to its agent again

    # -- facts (the endpoint's)

    @property
    def conn(self) -> Connection | None:
        wire = self.endpoint.wire
        assert wire is None or isinstance(wire, Connection)
        return wire

    @conn.setter
    def conn(self, conn: Connection | None) -> None:
        self.endpoint.wire = conn

    @property
    def run_id(self) -> str:
        return self.endpoint.run_id

    @property
    def machine(self) -> PeerMachine:
        return self.endpoint.machine

    @property
    def state(self) -> PeerState:
        return self.endpoint.state

    @property
    def estimator(self) -> ClockEstimator:
        return self.endpoint.estimator

    @property
    def offset_ns(self) -> int:
        return self.endpoint.offset_ns

    @property
    def stats_sequence(self) -> StatsSequence:
        return self.endpoint.stats_sequence

    @property
    def receiver(self) -> ReliableReceiver:
        return self.endpoint.receiver

    @property
    def latest(self) -> Stats | None:
        return self.endpoint.latest

    @property
    def ready(self) -> Ready | None:
        return self.endpoint.ready

    @property
    def started_at(self) -> dict[str, int]:
        return self.endpoint.started_at

    @property
    def summaries(self) -> dict[str, StageSummary]:
        return self.endpoint.summaries

    @property
    def final(self) -> tuple[StageSummary, ...] | None:
        return self.endpoint.final

    @property
    def failure(self) -> str | None:
        return self.endpoint.failure

    @failure.setter
    def failure(self, value: str | None) -> None:
        self.endpoint.failure = value

    @property
    def failure_code(self) -> str:
        return self.endpoint.failure_code

    @failure_code.setter
    def failure_code(self, value: str) -> None:
        self.endpoint.failure_code = value

    @property
    def abort_requested(self) -> bool:
        return self.endpoint.abort_requested

    @abort_requested.setter
    def abort_requested(self, value: bool) -> None:
        self.endpoint.abort_requested = value

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

    def _changed(self, state: PeerState, detail: str) -> None:
        self._record(self.id, state.value, detail)

    def apply(self, event: PeerEvent, detail: str = "") -> None:
        self.endpoint.apply(event, detail)
        self._notify()

    def fail(self, reason: str, event: PeerEvent = PeerEvent.PROTOCOL_VIOLATION) -> None:
        if self.machine.terminal:
            return
        log.info("agent %s: %s", self.id, reason)  # the display shows it
        self.endpoint.fail(reason, event)
        self._notify()

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
            poller=self.poller,
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
        handshake = ControllerHandshake(
            token=self.token,
            software=__version__,
            controller=f"{socket.gethostname()}:{os.getpid()}",
            address=self.address,
            configured_id=self.configured_id,
        )
        try:
            auth = handshake.receive_hello(await conn.receive())
            if self.token is not None:
                conn.verify_after(handshake.key_after)  # the agent's frames after WELCOME
            conn.send(auth)
            handshake.receive_welcome(await conn.receive())
        except Refusal as refusal:
            if refusal.tell:
                conn.send(refusal.error())
            raise LinkFailed(refusal.text, refusal.code) from None
        send_key = handshake.send_key()
        if send_key is not None:  # everything we send from now on is authenticated
            conn.sign_from_now(send_key)
        hello = handshake.hello
        assert hello is not None
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
            self.endpoint.lost(reason)
            self._notify()
            log.info("agent %s: %s", self.id, reason)  # the display shows it
            await self._reconnect()
        elif self.machine.terminal:
            self.closed.set()

    async def _consume(self, conn: Connection, handshake_done: trio.Event) -> None:
        """Once the handshake is done, the connection hands each message to ``handle`` as it
        is decoded (``handle`` is a plain function: no task of its own is needed, which at
        thousands of agents saves a task switch per message). It never closes the connection
        itself: closing begins while the connection is still flushing our last ACKs and
        GOODBYE; tearing it down here would lose them."""
        await handshake_done.wait()

        broken = False  # after a message that breaks the protocol, nothing more is taken

        def handle(message: Message) -> None:
            nonlocal broken
            if self.conn is not conn or broken:
                return
            try:
                self.handle(message)
            except ProtocolError as exc:
                broken = True
                self.fail(f"protocol error: {exc}")

        conn.handle_inline(handle)

    async def _reconnect(self) -> None:
        """The connection closed mid-run: resume on a new one, or give up on the agent."""
        deadline = trio.current_time() + self.reconnect_window_s
        while not self.machine.terminal:
            async with trio.open_nursery() as nursery:
                try:
                    hello = await self.open(nursery, timeout_s=max(0.5, RECONNECT_EVERY_S * 2))
                except LinkFailed as exc:
                    if exc.refused or trio.current_time() >= deadline:
                        self.give_up(f"lost: {exc}")
                        return
                else:
                    conn = self.conn
                    assert conn is not None
                    held = hello.session.run_id if hello.session else None
                    if held != self.run_id:
                        conn.close_soon("agent lost the run")
                        self.give_up(f"agent restarted and no longer holds run {self.run_id}")
                        return
                    self.reconnects += 1
                    self.endpoint.resume(conn)
                    self._record(self.id, "resumed", f"reconnected to {self.address}")
                    return  # leaving the block waits for the new connection's tasks
            await trio.sleep(RECONNECT_EVERY_S)

    def give_up(self, reason: str) -> None:
        """This agent is not coming back: DISCONNECTED (if it was not already), then FAILED."""
        self.endpoint.give_up(reason)
        self.closed.set()
        self._notify()

    # -- inbound (synchronous)

    def _intercept(self, message: Message) -> bool:
        if isinstance(message, Pong):
            self.endpoint.pong_arrived(message, self.clock.now_ns())
        return False

    def _count_stats(self, stats: Stats) -> None:
        """Runs in the reader, as each STATS frame arrives: count it and acknowledge it at
        once (flow control: the agent sends the next one only when the link has drained)."""
        self._stats_at = trio.current_time()
        self.endpoint.stats_arrived(stats)

    def handle(self, message: Message) -> None:
        """Apply one message from the agent. ``ProtocolError`` if it is not allowed now."""
        readings = self.endpoint.receive(message)
        self._notify()
        offset = self.offset_ns
        for reading in readings:
            if isinstance(reading, Stats):
                sample = Sample(
                    stage=reading.stage,
                    warmup=reading.warmup,
                    at_ns=to_controller_clock(reading.at_ns, offset),
                    elapsed_ns=reading.elapsed_ns,
                    ops=reading.ops,
                    done=reading.done,
                    total=reading.total,
                )
            else:
                sample = Sample(
                    stage=reading.stage,
                    warmup=False,
                    at_ns=to_controller_clock(reading.ended_at_ns, offset),
                    elapsed_ns=reading.measured_ns,
                    ops=reading.ops,
                    done=reading.done,
                    total=reading.total,
                    final=True,
                )
            self._on_sample(self.id, sample)

    # -- outbound

    def _send(self, message: Message) -> None:
        self.endpoint.send(message)

    def send_reliable(self, build: Callable[[int], Message]) -> None:
        self.endpoint.send_reliable(build, self.clock.now_ns())

    def resend_due(self, interval_ns: int) -> None:
        self.endpoint.resend_due(self.clock.now_ns(), interval_ns)

    def ping(self) -> None:
        self.endpoint.ping(self.clock.now_ns())

    def say_goodbye(self, reason: str) -> None:
        self.endpoint.goodbye(reason)
        self.closed.set()

    # -- liveness

    @staticmethod
    async def watch_links(links: list[AgentLink], settings: Any) -> None:
        """Every link's liveness from one task: the links are dealt into ``WATCH_SLOTS``
        groups and one group is visited every ping_interval / WATCH_SLOTS, so each link is
        visited once per ping_interval and the PINGs are spread over it. One timer for all
        the agents instead of one each (thousands of them)."""
        step = settings.ping_interval / 1e9 / WATCH_SLOTS
        async with trio.open_nursery() as nursery:  # for probes
            turn = 0
            while not all(link.machine.terminal for link in links):
                await trio.sleep(step)
                for link in links[turn % WATCH_SLOTS :: WATCH_SLOTS]:
                    link.watch_tick(settings, nursery)
                turn += 1

    def watch_tick(self, settings: Any, nursery: trio.Nursery) -> None:
        """Once every ping_interval (``watch_links`` calls it): PING; stalled after
        warn_after; probe (a task of its own, one at a time), then DISCONNECTED."""
        if self.machine.terminal:
            return
        now = trio.current_time()
        if self.state is PeerState.DISCONNECTED:
            self._disconnected_since = self._disconnected_since or now
            if now - self._disconnected_since >= settings.give_up_after / 1e9:
                self.give_up(
                    f"disconnected for {now - self._disconnected_since:.0f}s (give_up_after)"
                )
                return
        else:
            self._disconnected_since = None
        conn = self.conn
        if conn is None or self._probing:
            return
        interval = settings.ping_interval / 1e9
        busy = now - self._stats_at < interval
        # visits come one interval apart: half of one is the tolerance of "every N"
        if now - self._pinged_at >= ((BUSY_PING_EVERY if busy else 1) - 0.5) * interval:
            self._pinged_at = now
            self.ping()
        self.resend_due(settings.resend_interval)
        silent = now - conn.last_received
        stalled = silent >= settings.warn_after / 1e9
        if stalled != self.stalled:
            self.stalled = stalled
            what = f"stalled: no frame for {silent:.1f}s" if stalled else "frames again"
            self._record(self.id, "stalled" if stalled else "unstalled", what)
            self._notify()
        if silent >= settings.dead_after / 1e9 and self.machine.live:
            self._probing = True
            nursery.start_soon(self._probe, conn, silent, settings.probe_timeout / 1e9)

    async def _probe(self, conn: Connection, silent: float, probe_s: float) -> None:
        try:
            await self._probe_once(conn, silent, probe_s)
        finally:
            self._probing = False

    async def _probe_once(self, conn: Connection, silent: float, probe_s: float) -> None:
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
