"""The protocol over one Trio stream: a reader, a writer task, two logical channels.

Inbound, the reader decodes frames as they arrive and never waits on application work:

- a message the owner wants handled on arrival (PING answered with its receive timestamp,
  PONG timestamped) goes to ``intercept``, a plain function that must not block;
- STATS go to a latest-snapshot slot: stats are cumulative, so a newer snapshot replaces an
  unread older one and nothing is lost;
- every other message goes to the inbound control channel, a bounded Trio memory channel. A
  peer that overflows it (thousands of control messages the application has not consumed) is
  flooding us: protocol error.
An owner whose handling of a message is a plain function that never blocks (the controller)
can instead have the reader call it with each message as it is decoded (``handle_inline``):
nothing queues, nothing waits behind anything, and at thousands of connections it saves a
task switch per message. The agent keeps the channels: its handling awaits.

Outbound, control messages go to the outbound control channel (bounded, its own memory
channel) and STATS sit in a single replaceable slot beside it; the writer always sends every
queued control message before the pending STATS, batching them into one ``send_all``. So a
PING, an ABORT or an ACK is never stuck behind statistics, and a slow peer costs us at most
one stats frame of memory. The slots are why STATS are not channel items themselves: a
channel would keep every snapshot, the slot keeps the newest. When a slot is filled and was
empty, a marker goes through its direction's channel, so the consumer wakes for it and sees
it after the control messages that came before it.

Over a TCP socket the two hot paths skip Trio's stream: a control message sent while
nothing is queued and the writer is idle is written by ``send`` itself (one non-blocking
write; what the kernel does not take goes to the writer, first in line, so order and the
channel's bounds hold), and the reader reads the socket once it is readable, or -- given a
``ReadPoller`` (the controller's thousands of connections) -- has no task of its own: the
poller's one task hands it each read. Memory streams (tests, virtual time) take the stream
path; both paths decode and dispatch with the same code (``_take``).

Liveness is the owner's business; the connection only records when bytes last arrived
(``last_received``, in ``trio.current_time()``).

Closing is a lingering close: queued frames are flushed, our side is half-closed (FIN), and
the reader keeps reading until the peer's EOF (at most ``CLOSE_TIMEOUT_S``). Closing a socket
with unread data in its receive buffer makes the kernel send RST instead of FIN, and an RST
can destroy what the peer had not read yet -- such as the final ACK it was waiting for.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from trio_bench.protocol import (
    MAX_FRAME_SIZE,
    Error,
    FrameDecoder,
    FrameMac,
    Message,
    Pong,
    ProtocolError,
    Stats,
    decode_message,
    encode_message,
    sign_frame,
)

from ._poller import ReadPoller

log = logging.getLogger("triobench.transport")

# Bytes asked of the socket per read: a STATS frame is a few KiB. Each read allocates a buffer
# of this size and shrinks it to what arrived. At 64 KiB that cost a controller ~250 us per
# agent-second (1,000 replayed agents: 70-72 % of a core, 46-48 % at 16 KiB; 4 and 8 KiB
# measured the same as 16) and fragmented its heap past saturation (4,000 agents: 1.3-1.6
# GiB RSS, 0.95 GiB at 16 KiB).
RECEIVE_SIZE = 16384
# Why 1024: control traffic is a handful of messages per second per peer; the application
# drains the inbox as fast as frames are decoded. A thousand unconsumed messages means a peer
# flooding us, and 1024 frames of at most a few hundred bytes bound what it can make us hold.
CONTROL_BACKLOG = 1024
# Outbound: the same bound for control messages; beyond it the peer stopped reading long ago
# and the connection is closed. PONGs have their own small allowance and are dropped beyond
# it (the next PING gets one), so a PING flood can never crowd out a real control message.
OUTBOX_LIMIT = 1024
PONG_BACKLOG = 64
CLOSE_TIMEOUT_S = 2.0  # how long a graceful close waits for queued frames to be written
# Keep at most this much *unsent* data in the kernel (Linux TCP_NOTSENT_LOWAT): beyond it the
# writer waits, statistics conflate in our slot, and a control message queues behind at most
# this much instead of seconds of stale statistics on a slow link. Our traffic is small, so
# this costs no throughput.
UNSENT_LIMIT = 16 * 1024


class ConnectionClosed(Exception):
    """The connection is closed; ``reason`` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StatsMarker:
    """In a channel: the stats slot beside it was filled (take it after what came before)."""


class _Signed(bytes):
    """Outbound bytes already signed: the rest of a frame a direct write left unsent."""


_STATS = _StatsMarker()
_OutItem = bytes | FrameMac | _StatsMarker  # a frame, a key for the frames after it, a marker
_MARKERS = 4  # room in a channel beyond its limit, for markers


class Connection:
    """One peer's connection: a reader task and a writer task, two bounded memory channels
    (control in, control out) and a latest-STATS slot beside each. Sending never blocks;
    ``receive`` returns control messages in arrival order, then the newest STATS."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        name: str = "peer",
        intercept: Callable[[Message], bool] | None = None,
        on_stats: Callable[[Stats], None] | None = None,
        max_frame_size: int = MAX_FRAME_SIZE,
        poller: ReadPoller | None = None,
    ) -> None:
        self.stream = stream
        self.name = name
        self.intercept = intercept
        self.on_stats = on_stats
        # set by ``handle_inline``: every message goes to it as the reader decodes it
        self._handler: Callable[[Message], None] | None = None
        self.last_received = trio.current_time()
        self.frames_received = 0
        self.frames_written_directly = 0  # control frames ``send`` handed (some of) to the kernel
        self.stats_superseded = 0  # outbound STATS replaced before they could be sent
        self.pongs_dropped = 0
        self.close_reason: str | None = None
        self.protocol_error: str | None = None  # set if we closed because the peer sent junk
        self.closed = trio.Event()  # set when closing begins: nothing more is accepted
        self.finished = trio.Event()  # set when the stream is closed and both tasks are done
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._frame_arrived = trio.Event()
        # inbound: control messages (and the stats marker) for the application
        self._in_send, self._in_receive = trio.open_memory_channel[Message | _StatsMarker](
            CONTROL_BACKLOG + _MARKERS
        )
        self._in_control = 0  # control messages in the inbound channel
        self._in_marked = False  # a stats marker is in the inbound channel
        self.latest_stats: Stats | None = None
        # outbound: encoded frames, key changes and the stats marker, for the writer
        self._out_send, self._out_receive = trio.open_memory_channel[_OutItem](
            OUTBOX_LIMIT + PONG_BACKLOG + _MARKERS
        )
        self._out_control = 0  # control frames (PONGs apart) queued since the writer last took
        self._out_items = 0  # items of any kind queued since the writer last took
        self._writing = False  # the writer holds a batch it has not handed to the kernel yet
        self._queued_pongs = 0
        self._out_marked = False
        self._send_key: FrameMac | None = None  # authenticates what we send (once set)
        self._send_counter = 0
        # called with each inbound message until it returns the key that authenticates the
        # frames after that message
        self._verify_after: Callable[[Message], bytes | None] | None = None
        self._stats_out: bytes | None = None
        self._stats_out_seq = 0
        self.stats_written = 0  # seq of the last STATS frame actually handed to the socket
        self._cancel: trio.CancelScope | None = None
        self._socket = _limit_unsent(stream)
        # a TCP socket's descriptor: read and written directly (see ``_reader``, ``send``)
        self._fd: int | None = self._socket.fileno() if self._socket is not None else None
        # with a poller, one task reads every connection that has bytes (see ``ReadPoller``)
        self._poller = poller if self._fd is not None else None
        self._reading_done = trio.Event()

    # -- sending (never blocks)

    def send(self, message: Message) -> None:
        """Queue a control message; it goes out before any pending STATS."""
        if self.closed.is_set():
            return
        frame = encode_message(message)
        if self._fd is not None and not self._out_items and not self._writing:
            self._write_now(frame)
            return
        if isinstance(message, Pong):
            if self._queued_pongs >= PONG_BACKLOG:
                self.pongs_dropped += 1
                return
            self._queued_pongs += 1
        elif self._out_control >= OUTBOX_LIMIT:
            self._abort(f"{self.name} stopped reading: {OUTBOX_LIMIT} control frames queued")
            return
        else:
            self._out_control += 1
        self._put_out(frame)

    def _write_now(self, frame: bytes) -> None:
        """Nothing is queued and the writer is idle: hand the frame to the kernel here, with
        one non-blocking write, instead of waking the writer task for it (at thousands of
        connections, two task switches and a poll registration less per frame). Whatever the
        kernel does not take goes to the writer, first in line."""
        data = self._signed(frame)
        try:
            written = os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._lost(trio.BrokenResourceError(exc.strerror or str(exc)))
            return
        if written:
            self.frames_written_directly += 1
        if written < len(data):
            self._put_out(_Signed(data[written:]))

    def _put_out(self, item: _OutItem) -> None:
        self._out_items += 1
        try:
            self._out_send.send_nowait(item)
        except trio.WouldBlock:  # the limits above keep it from filling; never wait here
            self._abort(f"{self.name} stopped reading: its outbound channel is full")
        except trio.ClosedResourceError:
            pass  # closing: nothing more goes out

    def send_stats(self, stats: Stats) -> None:
        """Offer a STATS snapshot; it replaces any snapshot not yet sent."""
        if self.closed.is_set():
            return
        if self._stats_out is not None:
            self.stats_superseded += 1
        self._stats_out = encode_message(stats)
        self._stats_out_seq = stats.seq
        if not self._out_marked:
            self._out_marked = True
            self._put_out(_STATS)

    def discard_stats(self) -> None:
        """Drop a pending STATS (called when a stage ends: the summary supersedes it)."""
        self._stats_out = None

    # -- frame authentication (protocol.md §3)

    def sign_from_now(self, key: bytes) -> None:
        """Authenticate every frame queued after this call with ``key``."""
        self._put_out(FrameMac(key))

    def verify_after(self, key_for: Callable[[Message], bytes | None]) -> None:
        """The reader calls ``key_for`` with each message as it is decoded; once it returns a
        key, every later frame must carry its tag under that key. Switching in the reader,
        before the next frame is decoded, means a frame that arrives right behind the
        handshake in the same read is checked too."""
        self._verify_after = key_for

    def _signed(self, frame: bytes) -> bytes:
        if self._send_key is None:
            return frame
        counter, self._send_counter = self._send_counter, self._send_counter + 1
        return sign_frame(frame, self._send_key, counter)

    # -- receiving

    def allow_frames_up_to(self, size: int) -> None:
        """Raise the inbound frame cap (after the peer authenticated)."""
        self._decoder.max_frame_size = size

    async def receive(self) -> Message:
        """The next message: control messages in arrival order, then the newest STATS.

        Every control message that arrived before a STATS frame is returned before it, so a
        consumer sees a stage's STARTED before that stage's statistics. Messages that arrived
        before the connection closed are still returned; then ``ConnectionClosed``.
        """
        while True:
            try:
                item = await self._in_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise ConnectionClosed(self.close_reason or "closed") from None
            if isinstance(item, _StatsMarker):
                self._in_marked = False
                stats = self.take_stats()
                if stats is not None:
                    return stats
                continue
            self._in_control -= 1
            return item

    def handle_inline(self, handler: Callable[[Message], None]) -> None:
        """From now on, hand every message to ``handler`` in the reader, as it is decoded,
        instead of queueing it for ``receive``; what is queued already goes first. For an
        owner whose handling is a plain function that never blocks (the controller's): one
        task wake-up less per message. ``handler`` deals with what it receives itself (the
        controller fails the agent on a ProtocolError); if one escapes it in the reader, the
        connection closes as a protocol error."""
        while True:
            try:
                item = self._in_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, _StatsMarker):
                self._in_marked = False
                stats = self.take_stats()
                if stats is not None:
                    handler(stats)
            else:
                self._in_control -= 1
                handler(item)
        self._handler = handler

    async def wait_frame(self) -> None:
        """Return when the next frame arrives (any frame) or the connection closes."""
        if self._frame_arrived.is_set():
            self._frame_arrived = trio.Event()
        await self._frame_arrived.wait()

    def take_stats(self) -> Stats | None:
        stats, self.latest_stats = self.latest_stats, None
        return stats

    # -- running

    async def run(self) -> None:
        """Run the reader and writer until the connection closes; then close the stream."""
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
        finally:
            self._mark_closed(self.close_reason or "closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            self.finished.set()

    async def _receive_some(self) -> bytes | bytearray:
        """The next bytes from the peer (empty at its EOF). A TCP socket is read directly,
        once it is readable: a stream read would first try the socket (which is usually empty:
        we read it as soon as data arrives), and after a read yield to the scheduler again."""
        if self._fd is None:
            return await self.stream.receive_some(RECEIVE_SIZE)
        while True:
            await trio.lowlevel.wait_readable(self._socket)
            data = self._read_socket()
            if data is not None:  # None: woken without data
                return data

    def _read_socket(self) -> bytes | None:
        """One non-blocking read of the socket: its bytes (empty at the peer's EOF), or None
        if it has none now. ``BrokenResourceError`` if the connection is broken."""
        try:
            return os.read(self._fd, RECEIVE_SIZE)  # type: ignore[arg-type]
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(exc.strerror or str(exc)) from exc

    async def _reader(self) -> None:
        if self._poller is not None and self._fd is not None:
            self._poller.add(self._fd, self)
            try:
                await self._reading_done.wait()
            finally:
                self._poller.remove(self._fd, self)
            return
        try:
            while True:
                if not self._take(await self._receive_some()):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._lost(exc)

    def read_ready(self) -> None:
        """The poller saw bytes (or EOF) on our socket: read them and handle them here."""
        if self._reading_done.is_set():  # EOF or a broken frame taken: the reader ends now
            return
        try:
            data = self._read_socket()
        except trio.BrokenResourceError as exc:
            self._lost(exc)
            self._reading_done.set()
            return
        if data is not None and not self._take(data):
            self._reading_done.set()

    def _lost(self, exc: BaseException) -> None:
        self._abort(f"connection to {self.name} lost: {exc or type(exc).__name__}")

    def _take(self, data: bytes | bytearray) -> bool:
        """Handle bytes read from the peer; False once reading is over (its EOF, or a frame
        that broke the protocol)."""
        try:
            if not data:
                self._decoder.check_eof()
                self._abort(f"{self.name} closed the connection")
                return False
            # Any bytes are a sign of life: a large frame crossing a slow link takes a
            # while to complete, and the peer is not silent meanwhile.
            self.last_received = trio.current_time()
            self._decoder.feed(data)
            for frame in self._decoder:
                message = decode_message(frame)
                if self._verify_after is not None:
                    key = self._verify_after(message)
                    if key is not None:
                        self._verify_after = None
                        self._decoder.authenticate(key)
                self._dispatch(message)
            return True
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return False

    def _dispatch(self, message: Message) -> None:
        self.last_received = trio.current_time()
        self.frames_received += 1
        self._frame_arrived.set()
        if self.intercept is not None and self.intercept(message):
            return
        if self.closed.is_set():
            return  # closing began: the application takes nothing more
        if self._handler is not None:
            if isinstance(message, Stats) and self.on_stats is not None:
                self.on_stats(message)
            self._handler(message)
            return
        if isinstance(message, Stats):
            if self.on_stats is not None:
                self.on_stats(message)
            self.latest_stats = message
            if self._in_marked:
                return
            self._in_marked = True
            item: Message | _StatsMarker = _STATS
        else:
            if self._in_control >= CONTROL_BACKLOG:
                raise ProtocolError(
                    f"{self.name} sent more than {CONTROL_BACKLOG} control messages "
                    "that were not yet processed (flood)"
                )
            self._in_control += 1
            item = message
        self._in_send.send_nowait(item)  # room is reserved: never blocks

    def _protocol_error(self, reason: str) -> None:
        """Tell the peer what it did wrong (best effort), then close."""
        log.warning("%s: protocol error: %s", self.name, reason)
        self.protocol_error = reason
        self.close_reason = f"protocol error from {self.name}: {reason}"
        try:
            error = Error(seq=0, code="protocol_error", message=reason[:1000], summaries=())
            self._put_out(encode_message(error))
        except ValueError:
            pass
        self.close_soon(self.close_reason)

    async def _writer(self) -> None:
        try:
            while True:
                try:
                    first = await self._out_receive.receive()
                except trio.EndOfChannel:  # closing, and everything queued is sent
                    await self._half_close()
                    return
                items = [first]
                while True:
                    try:
                        items.append(self._out_receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                self._out_control = self._queued_pongs = self._out_items = 0
                self._out_marked = False
                batch: list[bytes] = []
                for item in items:
                    if isinstance(item, FrameMac):
                        self._send_key, self._send_counter = item, 0
                    elif isinstance(item, _Signed):
                        batch.append(item)
                    elif isinstance(item, bytes):
                        batch.append(self._signed(item))
                if self._stats_out is not None:
                    batch.append(self._signed(self._stats_out))  # control first, then stats
                    self._stats_out = None
                    self.stats_written = self._stats_out_seq
                if not batch:
                    continue
                self._writing = True
                await self.stream.send_all(b"".join(batch))
                self._writing = False
                if self._socket is not None:
                    # until the kernel has sent most of it, keep the next batch with us
                    await trio.lowlevel.wait_writable(self._socket)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._lost(exc)

    # -- closing

    async def _half_close(self) -> None:
        """Everything is flushed: send FIN and let the reader drain until the peer's EOF."""
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            try:
                await self.stream.send_eof()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._abort(self.close_reason or "closed")

    def _mark_closed(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self.closed.set()
        self._frame_arrived.set()
        # Both channels end: the application gets what arrived, then ConnectionClosed; the
        # writer sends what is queued, then half-closes.
        self._in_send.close()
        self._out_send.close()

    def _abort(self, reason: str) -> None:
        self._mark_closed(reason)
        if self._cancel is not None:
            self._cancel.cancel()

    def abort(self, reason: str) -> None:
        """Close at once, without flushing what is queued (a peer we are dropping)."""
        self._abort(reason)

    def close_soon(self, reason: str) -> None:
        """Flush what is queued (within ``CLOSE_TIMEOUT_S``), then close."""
        self._mark_closed(reason)
        if self._cancel is not None:
            self._cancel.deadline = min(
                self._cancel.deadline, trio.current_time() + CLOSE_TIMEOUT_S
            )

    async def aclose(self, reason: str = "closed") -> None:
        """Close now; idempotent; the stream is closed even if we are being cancelled."""
        self._abort(reason)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


def _limit_unsent(stream: trio.abc.Stream) -> Any:
    """Set TCP_NOTSENT_LOWAT on a TCP stream; return its socket (or None if not applicable)."""
    sock = getattr(stream, "socket", None)
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_LIMIT)
    except OSError:
        return None
    return sock
