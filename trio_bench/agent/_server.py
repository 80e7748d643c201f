"""The agent process: listen, authenticate controllers, serve one run at a time.

Every connection gets HELLO (with a fresh challenge), must answer AUTH within
``HANDSHAKE_TIMEOUT_S`` (an idle or unauthenticated connection is closed after that bound),
then CONFIGURE (a new run) or RESUME (re-attach to the run this agent holds). A second
controller while a run is active gets ERROR busy; the running one is untouched. Whatever a
peer sends, the agent logs one line, answers ERROR where it can, closes that connection and
keeps serving.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

from trio_bench import __version__
from trio_bench.clock import RunClock
from trio_bench.engine import Engine, give_the_loop_priority
from trio_bench.protocol import (
    HANDSHAKE_FRAME_SIZE,
    MAX_FRAME_SIZE,
    AgentHandshake,
    Configure,
    Error,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Refusal,
    Resume,
    encode_message,
    printable,
)
from trio_bench.transport import Connection, ConnectionClosed

from ._session import Session

log = logging.getLogger("triobench.agent")

HANDSHAKE_TIMEOUT_S = 10.0  # AUTH, then CONFIGURE/RESUME, must each arrive within this
# At most this many connections at once (one controller, plus a few being refused or
# resuming): with the pre-authentication frame cap this bounds what peers can make an agent
# buffer before anyone authenticated to MAX_CONNECTIONS x 64 KiB.
MAX_CONNECTIONS = 32
# Worker threads running flat out hand the GIL to the event loop only every switch interval
# (5 ms by default), which delays PONGs and ABORTs. At 1 ms the loop's lag under a saturated
# worker drops from ~5.5 ms to ~1.5 ms at no measurable cost in worker ops/s (bench/README.md).
AGENT_SWITCH_INTERVAL_S = 0.001


@attrs.define
class AgentOptions:
    agent_id: str
    root: str | None = None
    token: bytes | None = None
    state_dir: Path | None = None
    clock_skew_ns: int = 0
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    # what runs a session's stages: the real engine, or a stand-in (tests in virtual time)
    engine: Callable[..., Engine] = Engine
    clock: RunClock | None = None  # the agent's clock (default: RunClock(clock_skew_ns))


class AgentServer:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.clock = options.clock or RunClock(options.clock_skew_ns)
        self.session: Session | None = None
        self.runs_served = 0
        self.connections = 0
        self._unauthenticated: list[Connection] = []  # oldest first
        self._authenticated: set[Connection] = set()
        self._nursery: trio.Nursery | None = None

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener] = (),
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` (none: only those passed to ``handle``, as
        tests over memory streams do) until cancelled."""
        give_the_loop_priority()  # busy worker threads must not starve this loop
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if listeners:
                await nursery.start(trio.serve_listeners, self.handle, list(listeners))
            task_status.started()
            if not listeners:
                await trio.sleep_forever()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection (any byte stream: TCP from ``serve``, memory in tests)."""
        try:
            host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
            peer = f"{host}:{port}"
        except (OSError, AttributeError):
            peer = "controller"
        clock = self.clock

        def answer_pings(message: Message) -> bool:
            # Timestamped and answered in the reader: t2/t3 exclude our own queueing. Only
            # once authenticated: before that a PING is not part of the handshake (and would
            # tell anyone who can connect the agent's clock).
            if isinstance(message, Ping) and conn in self._authenticated:
                t2 = clock.now_ns()
                conn.send(
                    Pong(nonce=message.nonce, t1_ns=message.t1_ns, t2_ns=t2, t3_ns=clock.now_ns())
                )
                return True
            return False

        if self.connections >= self.options.max_connections:
            # At the cap, the oldest connection that has not authenticated makes way: idle
            # peers cannot lock the real controller out (each also has the handshake bound).
            waiting = [c for c in self._unauthenticated if not c.closed.is_set()]
            if not waiting:
                log.warning("controller %s refused: %d connections open", peer, self.connections)
                await _refuse_now(stream, f"agent {self.options.agent_id} has too many connections")
                return
            log.warning("too many connections: dropped the oldest unauthenticated one")
            waiting[0].abort("dropped: too many connections, and it had not authenticated")
        conn = Connection(
            stream,
            name=f"controller {peer}",
            intercept=answer_pings,
            max_frame_size=HANDSHAKE_FRAME_SIZE,
        )
        self.connections += 1
        self._unauthenticated.append(conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                try:
                    await self._converse(conn, peer)
                except ConnectionClosed:
                    pass
                except ProtocolError as exc:
                    log.warning("controller %s: protocol error: %s", peer, exc)
                    self._refuse(conn, "protocol_error", str(exc))
                except Exception as exc:  # a bug of ours: drop this connection, keep serving
                    log.error(
                        "controller %s: internal error: %s: %s", peer, type(exc).__name__, exc
                    )
                    self._refuse(conn, "internal", f"internal error: {type(exc).__name__}")
                conn.close_soon("done")
        finally:
            self.connections -= 1
            self._authenticated.discard(conn)
            if conn in self._unauthenticated:
                self._unauthenticated.remove(conn)

    def _refuse(self, conn: Connection, code: str, message: str) -> None:
        conn.send(Error(seq=0, code=code, message=printable(message, 1000), summaries=()))
        conn.close_soon(message)

    async def _receive(self, conn: Connection, what: str) -> Message:
        with trio.move_on_after(self.options.handshake_timeout_s):
            return await conn.receive()
        raise ProtocolError(f"no {what} within {self.options.handshake_timeout_s:g}s of connecting")

    async def _converse(self, conn: Connection, peer: str) -> None:
        opts = self.options
        handshake = AgentHandshake(
            agent_id=opts.agent_id,
            token=opts.token,
            software=__version__,
            hostname=socket.gethostname(),
            cpus=os.cpu_count() or 1,
            session=self.session.info() if self.session else None,
        )
        if opts.token is not None:
            conn.verify_after(handshake.key_after)  # the controller's frames after its AUTH
        conn.send(handshake.hello())
        try:
            welcome = handshake.receive_auth(await self._receive(conn, "auth"))
        except Refusal as refusal:
            log.warning("controller %s: %s", peer, refusal.text)
            self._refuse(conn, refusal.code, refusal.text)
            return
        conn.send(welcome)
        send_key = handshake.send_key()
        if send_key is not None:  # everything we send after WELCOME is authenticated
            conn.sign_from_now(send_key)
        self._unauthenticated.remove(conn)
        self._authenticated.add(conn)
        conn.allow_frames_up_to(MAX_FRAME_SIZE)  # CONFIGURE carries the workload config
        first = await self._receive(conn, "configure or resume")
        if isinstance(first, Configure):
            if self.session is not None:
                text = (
                    f"agent {opts.agent_id} is busy with run {self.session.run_id} "
                    f"({self.session.machine.state.value})"
                )
                log.warning("controller %s refused: %s", peer, text)
                self._refuse(conn, "busy", text)
                return
            session = Session(first, self.options, self.clock, self.release)
            self.session = session
            self.runs_served += 1
            log.info("controller %s: run %s configured", peer, first.run_id)
            assert self._nursery is not None
            self._nursery.start_soon(self._run_session, session)
        elif isinstance(first, Resume):
            session_or_none = self.session
            if session_or_none is None or session_or_none.run_id != first.run_id:
                held = session_or_none.run_id if session_or_none else "none"
                self._refuse(
                    conn, "unknown_run", f"cannot resume run {first.run_id}: agent holds {held}"
                )
                return
            session = session_or_none
            conn.send(session.endpoint.resume(first))
            log.info("controller %s: resumed run %s", peer, session.run_id)
        else:
            raise ProtocolError(f"expected configure or resume, got {first.TAG}")
        session.attach(conn)
        try:
            await self._serve_run(conn, session)
        finally:
            session.detach(conn)

    async def _serve_run(self, conn: Connection, session: Session) -> None:
        """Feed the run's control messages to the session until the run ends or the
        connection does. Errors are handled here: nothing propagates out of the nursery."""
        async with trio.open_nursery() as nursery:

            async def finish_when_done() -> None:
                await session.done.wait()
                conn.send(session.goodbye())
                conn.close_soon("run finished")
                nursery.cancel_scope.cancel()

            nursery.start_soon(finish_when_done)
            try:
                while True:
                    session.handle(await conn.receive())
            except ConnectionClosed:
                if conn.protocol_error:  # the frames themselves were broken
                    session.controller_gone(f"controller sent invalid bytes: {conn.protocol_error}")
            except ProtocolError as exc:
                # A controller that breaks the protocol cannot be trusted with the run:
                # abort it (results kept locally) so the agent is free for the next one.
                log.warning("%s: protocol error: %s", conn.name, exc)
                self._refuse(conn, "protocol_error", str(exc))
                session.controller_gone(f"controller sent an invalid message: {exc}")
            nursery.cancel_scope.cancel()

    def release(self, session: Session) -> None:
        if self.session is session:
            self.session = None

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        except Exception as exc:  # a bug of ours: end this run, keep the agent serving
            log.error("run %s: internal error: %r", session.run_id, exc, exc_info=True)
            # The session could not even report it: tell the controller on the connection
            # and close it, so it never waits for a run that is gone (it will find the agent
            # free and the run unknown).
            conn = session.conn
            if conn is not None:
                text = f"internal error in run {session.run_id}: {type(exc).__name__}: {exc}"
                self._refuse(conn, "internal", text)
            session.done.set()
        finally:
            self.release(session)


async def _refuse_now(stream: trio.abc.Stream, message: str) -> None:
    """Refuse a connection we will not even read from (too many open)."""
    with trio.move_on_after(1):
        try:
            await stream.send_all(
                encode_message(Error(seq=0, code="busy", message=message, summaries=()))
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)
