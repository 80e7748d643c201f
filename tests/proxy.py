"""A TCP proxy on loopback between a controller and an agent, for tests: it records the bytes
in both directions and can add latency, stall (stop reading, so TCP backpressure builds on the
sender), throttle, cut the connection, or corrupt bytes."""

from __future__ import annotations

import attrs
import trio


@attrs.define
class Faults:
    delay_s: float = 0.0  # added before forwarding each chunk
    stalled: bool = False  # stop reading from both sides while set
    bytes_per_s: float | None = None  # throttle
    corrupt_after: int | None = None  # flip a byte once this many bytes went to the agent


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.faults = Faults()
        self.to_agent = bytearray()
        self.to_controller = bytearray()
        self.connections = 0
        self._cut = trio.Event()
        self._unstall = trio.Event()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Close every proxied connection now (both sides see it closed)."""
        self._cut.set()
        self._cut = trio.Event()

    def stall(self) -> None:
        self.faults.stalled = True

    def resume(self) -> None:
        self.faults.stalled = False
        self._unstall.set()
        self._unstall = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream(*self.target)
        except OSError:
            await client.aclose()
            return
        cut = self._cut
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, self.to_agent, True)
            nursery.start_soon(self._pump, upstream, client, self.to_controller, False)
            await cut.wait()
            nursery.cancel_scope.cancel()

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, log: bytearray, to_agent: bool
    ) -> None:
        try:
            while True:
                while self.faults.stalled:
                    await self._unstall.wait()
                data = await source.receive_some(65536)
                if not data:
                    await sink.send_eof()
                    return
                if self.faults.delay_s:
                    await trio.sleep(self.faults.delay_s)
                if self.faults.bytes_per_s:
                    await trio.sleep(len(data) / self.faults.bytes_per_s)
                corrupt_at = self.faults.corrupt_after
                if to_agent and corrupt_at is not None and len(log) + len(data) > corrupt_at:
                    i = max(0, corrupt_at - len(log))
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                    self.faults.corrupt_after = None
                log += data
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
