"""Thousands of agents at the protocol level, cheaply, to measure a real controller.

    python -m bench.replay N [FIRST]

Listens on N free loopback ports and prints one line per agent, ``<id> <host:port>``, then
``ready``; runs until SIGTERM/SIGINT. Each connection plays an agent's whole run the way
protocol.md says: HELLO, WELCOME, ACK + READY, PONGs, ACK + STARTED at each coordinated
start, STATS at the stage start plus whole stats intervals with realistic cumulative
histograms (three op kinds, ~120 occupied buckets each, growing every interval), STAGE_DONE
with a full summary, COMPLETED (or ABORTED when told), GOODBYE. There is no engine and no
storage: a STATS frame is assembled from pre-encoded parts, so one process can play
thousands of agents and the controller's costs are what is measured. Not a conforming agent
in every corner (it does not re-send unacknowledged messages, nor resume; it does take each
of the controller's reliable messages once, acknowledging a repeat again): a benchmark peer.
"""

from __future__ import annotations

import random
import resource
import signal
import socket
import sys
import time

import msgpack
import trio

from trio_bench import protocol as p
from trio_bench.config import parse_duration

KINDS = ("get", "put", "stat")
BUCKETS = 120
STEPS = 400  # distinct cumulative snapshots (one per interval); later ones repeat the last


def _histogram_steps() -> list[dict[str, p.OpStats]]:
    """Cumulative per-kind statistics after 1, 2, ... intervals of a steady workload."""
    rng = random.Random(7)
    per_interval = {kind: sorted(rng.sample(range(500, 1500), BUCKETS)) for kind in KINDS}
    counts = {kind: [rng.randint(1, 40) for _ in range(BUCKETS)] for kind in KINDS}
    steps = []
    for k in range(1, STEPS + 1):
        ops = {}
        for kind in KINDS:
            hist = tuple((i, c * k) for i, c in zip(per_interval[kind], counts[kind], strict=True))
            n = sum(c for _, c in hist)
            ops[kind] = p.OpStats.from_pairs(
                hist, bytes=n * 4096, errors=0, sum_ns=n * 200_000, max_ns=50_000_000
            )
        steps.append(ops)
    return steps


STEP_OPS = _histogram_steps()


def _packed_ops(ops: dict[str, p.OpStats]) -> bytes:
    """The msgpack encoding of a STATS ``ops`` value, taken from a real encoded STATS."""
    frame = p.encode_message(
        p.Stats(
            seq=1,
            stage="workload",
            warmup=False,
            elapsed_ns=0,
            done=0,
            total=0,
            ops=ops,
            error_codes={},
            cpu_user_ns=0,
            cpu_system_ns=0,
            at_ns=0,
            sizes={},
        )
    )
    body = msgpack.unpackb(frame[4:], raw=False)
    return msgpack.packb(body["ops"], use_bin_type=True)


PACKED = [_packed_ops(ops) for ops in STEP_OPS]
_PACK = msgpack.Packer(use_bin_type=True)
# as an agent sends them when each kind's operations are all of one size (the usual case)
SIZES = _PACK.pack({kind: {"1B-8KiB": None} for kind in STEP_OPS[0]})


def stats_frame(seq: int, stage: str, elapsed_ns: int, at_ns: int, step: int) -> bytes:
    """One STATS frame from pre-encoded parts (the ``ops`` map is the expensive part)."""
    ops = PACKED[min(step, len(PACKED)) - 1] if step > 0 else _PACK.pack({})
    sizes = SIZES if step > 0 else _PACK.pack({})
    body = b"".join(
        (
            b"\x8d",  # a map of 13 entries
            _PACK.pack("t"),
            _PACK.pack("stats"),
            _PACK.pack("seq"),
            _PACK.pack(seq),
            _PACK.pack("stage"),
            _PACK.pack(stage),
            _PACK.pack("warmup"),
            _PACK.pack(False),
            _PACK.pack("elapsed_ns"),
            _PACK.pack(elapsed_ns),
            _PACK.pack("done"),
            _PACK.pack(0),
            _PACK.pack("total"),
            _PACK.pack(0),
            _PACK.pack("ops"),
            ops,
            _PACK.pack("error_codes"),
            _PACK.pack({}),
            _PACK.pack("cpu_user_ns"),
            _PACK.pack(elapsed_ns // 20),
            _PACK.pack("cpu_system_ns"),
            _PACK.pack(elapsed_ns // 50),
            _PACK.pack("at_ns"),
            _PACK.pack(at_ns),
            _PACK.pack("sizes"),
            sizes,
        )
    )
    return len(body).to_bytes(4, "big") + body


def _summary(stage: str, started: int, ended: int, step: int) -> p.StageSummary:
    ops = STEP_OPS[min(step, STEPS) - 1] if step > 0 else {}
    return p.StageSummary(
        stage=stage,
        outcome="completed",
        started_at_ns=started,
        ended_at_ns=ended,
        measured_ns=ended - started,
        done=0,
        total=0,
        ops=ops,
        error_samples={},
        error_codes={},
        message="",
        cpu_user_ns=0,
        cpu_system_ns=0,
        sizes={kind: {"1B-8KiB": None} for kind in ops},
    )


class Player:
    """One connection, played as an agent."""

    def __init__(self, agent_id: str, stream: trio.SocketStream) -> None:
        self.agent_id = agent_id
        self.stream = stream
        self.seq = 0  # our reliable messages
        self.peer_seq = 0  # the controller's reliable messages handled (§5: once each)
        self.stats_seq = 0
        self.interval_ns = 1_000_000_000
        self.duration_ns = 10_000_000_000
        self.summaries: list[p.StageSummary] = []
        self.stage_scope: trio.CancelScope | None = None
        self.send_lock = trio.Lock()

    async def send(self, data: bytes) -> None:
        async with self.send_lock:
            await self.stream.send_all(data)

    async def reliable(self, build) -> None:
        self.seq += 1
        await self.send(p.encode_message(build(self.seq)))

    async def run(self) -> None:
        await self.send(
            p.encode_message(
                p.Hello(
                    protocol=p.PROTOCOL_VERSION,
                    software="replay",
                    agent_id=self.agent_id,
                    hostname=f"lg{int(self.agent_id.split('-')[1]) // 32:03d}",
                    cpus=1,
                    challenge=p.new_challenge(),
                    auth_required=False,
                    session=None,
                )
            )
        )
        decoder = p.FrameDecoder()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                decoder.feed(data)
                for frame in decoder:
                    if await self.handle(p.decode_message(frame)):
                        nursery.cancel_scope.cancel()
                        return

    async def handle(self, message: p.Message) -> bool:
        if isinstance(message, p.Configure | p.Start | p.Abort):
            # a reliable message the controller sent again (our ACK had not reached it yet,
            # as when it is saturated) is acknowledged again and not acted on twice (§5)
            if message.seq <= self.peer_seq:
                await self.send(p.encode_message(p.Ack(seq=message.seq)))
                return False
            self.peer_seq = message.seq
        if isinstance(message, p.Ping):
            now = time.time_ns()
            await self.send(
                p.encode_message(
                    p.Pong(
                        nonce=message.nonce, t1_ns=message.t1_ns, t2_ns=now, t3_ns=time.time_ns()
                    )
                )
            )
        elif isinstance(message, p.Auth):
            await self.send(p.encode_message(p.Welcome(proof=b"")))
        elif isinstance(message, p.Configure):
            self.interval_ns = message.stats_interval_ns
            self.duration_ns = parse_duration(message.config.get("duration", "10s"))
            await self.send(p.encode_message(p.Ack(seq=message.seq)))
            await self.reliable(
                lambda s: p.Ready(
                    seq=s, target="replay://", checks=(), environment={"hostname": "replay"}
                )
            )
        elif isinstance(message, p.Start):
            await self.send(p.encode_message(p.Ack(seq=message.seq)))
            self.nursery.start_soon(self.play_stage, message.stage, message.at_ns)
        elif isinstance(message, p.Abort):
            await self.send(p.encode_message(p.Ack(seq=message.seq)))
            if self.stage_scope is not None:
                self.stage_scope.cancel()
            await self.reliable(
                lambda s: p.Aborted(seq=s, reason=message.reason, summaries=tuple(self.summaries))
            )
        elif isinstance(message, p.Goodbye):
            await self.send(p.encode_message(p.Goodbye(reason="bye")))
            return True
        return False  # ACK, STATS_SEEN and anything else need no answer here

    async def play_stage(self, stage: str, at_ns: int) -> None:
        await trio.sleep(max(0.0, (at_ns - time.time_ns()) / 1e9))
        await self.reliable(lambda s: p.Started(seq=s, stage=stage, at_ns=time.time_ns()))
        length = self.duration_ns if stage == "workload" else 300_000_000
        step = 0
        with trio.CancelScope() as self.stage_scope:
            while True:
                next_ns = at_ns + (step + 1) * self.interval_ns
                if next_ns >= at_ns + length:
                    break
                await trio.sleep(max(0.0, (next_ns - time.time_ns()) / 1e9))
                step += 1
                self.stats_seq += 1
                active = step if stage == "workload" else 0
                await self.send(
                    stats_frame(
                        self.stats_seq, stage, step * self.interval_ns, time.time_ns(), active
                    )
                )
            await trio.sleep(max(0.0, (at_ns + length - time.time_ns()) / 1e9))
        if self.stage_scope.cancelled_caught:
            return
        ended = time.time_ns()
        summary = _summary(stage, at_ns, ended, step if stage == "workload" else 0)
        self.summaries.append(summary)
        await self.reliable(lambda s: p.StageDone(seq=s, summary=summary))
        if stage == "cleanup":
            await self.reliable(lambda s: p.Completed(seq=s, summaries=tuple(self.summaries)))


async def serve(count: int, first: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count + 1024)), hard))
    async with trio.open_nursery() as nursery:
        for i in range(count):
            agent_id = f"r-{first + i:05d}"
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]

            async def handler(stream: trio.SocketStream, agent_id: str = agent_id) -> None:
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    await Player(agent_id, stream).run()
                except (trio.BrokenResourceError, trio.ClosedResourceError, p.ProtocolError):
                    pass

            nursery.start_soon(trio.serve_listeners, handler, listeners)
            print(f"{agent_id} 127.0.0.1:{port}", flush=True)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


if __name__ == "__main__":
    trio.run(serve, int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
