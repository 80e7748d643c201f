"""A TCP proxy on loopback between a controller and an agent, for fault-injection tests.

It records the bytes in both directions and can add latency, stall a direction (stop reading,
so TCP backpressure builds on the sender), throttle, cut every connection, or corrupt the next
frame header going to the agent (so the damage is detectable, not a silently changed value).
"""

from __future__ import annotations

import struct

import attrs
import trio

from trio_bench import protocol as p


@attrs.define
class Faults:
    delay_s: float = 0.0  # added before forwarding each chunk (each direction)
    bytes_per_s: float | None = None  # throttle (each direction)
    stall_to_agent: bool = False
    stall_to_controller: bool = False
    corrupt_next_header: bool = False  # controller -> agent
    # forward up to the message with this tag ("start"), or tag and stage ("start:cleanup"),
    # then stall
    hold_to_agent_after: str | None = None
    inject_to_agent: bytes | None = None  # sent to the agent once, between two frames


class _FrameCursor:
    """Follows frame boundaries in one direction, to find the next header."""

    def __init__(self) -> None:
        self.header = bytearray()
        self.body_left = 0

    def corrupt(self, data: bytes) -> tuple[bytes, bool]:
        """Overwrite the next frame header starting in ``data`` with 0xFFFFFFFF."""
        out = bytearray(data)
        i = 0
        while i < len(out):
            if self.body_left:
                step = min(self.body_left, len(out) - i)
                self.body_left -= step
                i += step
                continue
            if not self.header:
                out[i : i + 4] = b"\xff\xff\xff\xff"[: len(out) - i]
                return bytes(out), True
            i += self.feed_header(out, i)
        return bytes(out), False

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self.body_left:
                step = min(self.body_left, len(data) - i)
                self.body_left -= step
                i += step
            else:
                i += self.feed_header(data, i)

    def feed_header(self, data: bytes | bytearray, i: int) -> int:
        take = min(4 - len(self.header), len(data) - i)
        self.header += data[i : i + take]
        if len(self.header) == 4:
            (self.body_left,) = struct.unpack(">I", self.header)
            self.header.clear()
        return take


class Proxy:
    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.faults = Faults()
        self.to_agent = bytearray()
        self.to_controller = bytearray()
        self.connections = 0
        self.corrupted = 0
        self.held_after: str | None = None
        self._pending = bytearray()
        self._cut = trio.Event()
        self._changed = trio.Event()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Close every proxied connection now (both sides see it closed)."""
        self._cut.set()
        self._cut = trio.Event()

    def set(self, **faults: object) -> None:
        for name, value in faults.items():
            setattr(self.faults, name, value)
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._listening = nursery.cancel_scope
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            # the agent is gone: stop listening, so the next attempt is refused as it would
            # be by the dead host itself
            self._listening.cancel()
            await client.aclose()
            return
        cut = self._cut
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, self.to_agent, "stall_to_agent")
            nursery.start_soon(
                self._pump, upstream, client, self.to_controller, "stall_to_controller"
            )
            await cut.wait()
            nursery.cancel_scope.cancel()

    async def _forward_until(self, data: bytes, sink: trio.SocketStream, log: bytearray) -> None:
        """Forward whole frames; after the one tagged ``hold_to_agent_after``, stall."""
        self._pending += data
        while len(self._pending) >= 4:
            (length,) = struct.unpack(">I", self._pending[:4])
            if len(self._pending) < 4 + length:
                return
            frame = bytes(self._pending[: 4 + length])
            del self._pending[: 4 + length]
            log += frame
            await sink.send_all(frame)
            message = p.decode_body(frame[4:])
            wanted = self.faults.hold_to_agent_after
            if wanted in (message.get("t"), f"{message.get('t')}:{message.get('stage')}"):
                self.set(stall_to_agent=True, hold_to_agent_after=None)
                self.held_after = wanted
                return

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, log: bytearray, stall: str
    ) -> None:
        cursor = _FrameCursor()
        try:
            while True:
                while getattr(self.faults, stall):
                    await self._changed.wait()
                # a throttled link holds no big read-ahead buffer of its own
                data = await source.receive_some(1024 if self.faults.bytes_per_s else 65536)
                if not data:
                    await sink.send_eof()
                    return
                if self.faults.delay_s:
                    await trio.sleep(self.faults.delay_s)
                if self.faults.bytes_per_s:  # trickle, as a slow link does
                    for i in range(0, len(data), 1024):
                        await trio.sleep(min(1024, len(data) - i) / self.faults.bytes_per_s)
                        await sink.send_all(data[i : i + 1024])
                    log += data
                    continue
                if stall == "stall_to_agent" and self.faults.hold_to_agent_after:
                    await self._forward_until(data, sink, log)
                    continue
                if stall == "stall_to_agent" and self.faults.inject_to_agent is not None:
                    # between two frames: after what this read completed, if it ends on a
                    # frame boundary (the test waits for a quiet moment)
                    cursor.feed(data)
                    log += data
                    await sink.send_all(data)
                    if cursor.body_left == 0 and not cursor.header:
                        injected, self.faults.inject_to_agent = self.faults.inject_to_agent, None
                        await sink.send_all(injected)
                        self.injected = injected
                    continue
                if stall == "stall_to_agent" and self.faults.corrupt_next_header:
                    data, done = cursor.corrupt(data)
                    if done:
                        self.faults.corrupt_next_header = False
                        self.corrupted += 1
                else:
                    cursor.feed(data)
                log += data
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
