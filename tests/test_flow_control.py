"""Stats flow control: an agent keeps at most STATS_IN_FLIGHT frames beyond the last one the
controller acknowledged, so a slow link never fills with statistics."""

from __future__ import annotations

import trio

from trio_bench import protocol as p

from .test_bad_input import Peer, serving_agent


async def collect(peer: Peer, seconds: float) -> list[p.Message]:
    got: list[p.Message] = []
    with trio.move_on_after(seconds):
        while True:
            got.append(await peer.next_message())
    return got


async def until(peer: Peer, kind: type[p.Message], count: int = 1) -> list[p.Message]:
    """Messages up to the ``count``-th of ``kind`` (no deadline of its own: the test's)."""
    got: list[p.Message] = []
    while sum(isinstance(m, kind) for m in got) < count:
        got.append(await peer.next_message())
    return got


async def test_unacknowledged_stats_stop_at_the_window() -> None:
    async with serving_agent() as (server, address):
        peer = await Peer.connect(address)
        await peer.handshake()
        await peer.stream.send_all(
            p.encode_message(
                p.Configure(
                    seq=1,
                    run_id="flow",
                    config={
                        "target": "null://",
                        "duration": "30s",
                        "workload": [{"op": "list", "path": "x/"}],
                    },
                    agent_index=0,
                    agent_count=1,
                    path_prefix="x/",
                    stats_interval_ns=50_000_000,
                    orphan_timeout_ns=30 * 10**9,
                )
            )
        )
        with trio.fail_after(60):  # waits for events, not for a machine's speed
            await until(peer, p.Ready)
            await peer.stream.send_all(p.encode_message(p.Start(seq=2, stage="prepare", at_ns=0)))
            await until(peer, p.StageDone)  # the (empty) prepare: then release the workload
            await peer.stream.send_all(p.encode_message(p.Start(seq=3, stage="workload", at_ns=0)))
            got = await until(peer, p.Stats, 2)
        got += await collect(peer, 1.5)  # 30 more stats intervals, none acknowledged
        stats = [m for m in got if isinstance(m, p.Stats)]
        assert len(stats) == 2, [m.TAG for m in got]  # then it holds back
        session = server.session
        assert session is not None and session.stats_held_back >= 1
        # acknowledging them lets two more through, carrying everything since
        await peer.stream.send_all(p.encode_message(p.StatsSeen(seq=stats[-1].seq)))
        with trio.fail_after(60):
            got = await until(peer, p.Stats, 2)
        got += await collect(peer, 0.3)
        later = [m for m in got if isinstance(m, p.Stats)]
        assert len(later) == 2 and later[0].seq > stats[-1].seq
        assert later[-1].ops["list"].ops >= stats[-1].ops["list"].ops
        # a STATS_SEEN for a frame never sent is a protocol error
        await peer.stream.send_all(p.encode_message(p.StatsSeen(seq=10**6)))
        rest = await peer.read_until_closed()
        errors = [m for m in rest if isinstance(m, p.Error)]
        assert errors and "stats_seen: seq 1000000 was never sent" in errors[-1].message
        await peer.aclose()
