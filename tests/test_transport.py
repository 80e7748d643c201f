"""The connection layer over Trio memory and lockstep streams, with the autojump clock."""

from __future__ import annotations

import functools
import struct
from socket import SO_LINGER, SO_RCVBUF, SO_SNDBUF, SOL_SOCKET

import pytest
import trio
import trio.testing

from trio_bench import protocol as p
from trio_bench.transport import CONTROL_BACKLOG, Connection, ConnectionClosed

from .strategies import stats_message


def stats(seq: int, ops: int) -> p.Stats:
    hist = ((100, ops),) if ops else ()
    return stats_message(
        seq,
        elapsed_ns=seq,
        ops={
            "get": p.OpStats.from_pairs(
                hist, bytes=ops * 4096, errors=0, sum_ns=ops * 100, max_ns=100 if ops else 0
            )
        },
    )


async def read_messages(stream: trio.abc.ReceiveStream, count: int) -> list[p.Message]:
    decoder = p.FrameDecoder()
    out: list[p.Message] = []
    while len(out) < count:
        data = await stream.receive_some(65536)
        if not data:
            break
        decoder.feed(data)
        out.extend(p.decode_message(f) for f in decoder)
    return out


async def test_control_overtakes_a_backlog_of_stats(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = Connection(left, name="agent")
    for seq in range(1, 101):
        conn.send_stats(stats(seq, seq * 10))
    conn.send(p.Ping(nonce=7, t1_ns=1))
    conn.send(p.Abort(seq=1, reason="user"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        got = await read_messages(right, 3)
        nursery.cancel_scope.cancel()
    assert [type(m) for m in got] == [p.Ping, p.Abort, p.Stats]
    assert got[2].seq == 100 and got[2].ops["get"].ops == 1000  # only the newest, nothing lost
    assert conn.stats_superseded == 99


async def test_a_peer_that_stops_reading_blocks_nothing_but_its_own_writes(autojump_clock) -> None:
    (a_stream, b_stream) = trio.testing.lockstep_stream_pair()
    pings_seen = []

    def intercept(message: p.Message) -> bool:
        if isinstance(message, p.Ping):
            pings_seen.append(message.nonce)
            conn.send(p.Pong(nonce=message.nonce, t1_ns=message.t1_ns, t2_ns=1, t3_ns=2))
            return True
        return False

    conn = Connection(a_stream, name="controller", intercept=intercept)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            conn.send_stats(stats(1, 1))
            await trio.sleep(1)  # a's writer is now blocked: b is not reading
            # stats keep coming while b stalls, and b keeps sending PINGs that a must see
            for seq in range(2, 1000):
                conn.send_stats(stats(seq, seq))
                if seq % 200 == 0:
                    await b_stream.send_all(p.encode_message(p.Ping(nonce=seq, t1_ns=0)))
            await trio.sleep(1)
            assert pings_seen == [200, 400, 600, 800]
            assert conn.stats_superseded == 997  # one pending snapshot, not a thousand
            assert not conn.closed.is_set()
            # once b reads again: the stats in flight, then the PONGs, then the newest stats
            got = await read_messages(b_stream, 6)
            nursery.cancel_scope.cancel()
    assert [type(m).__name__ for m in got] == ["Stats"] + ["Pong"] * 4 + ["Stats"]
    assert (got[0].seq, got[-1].seq) == (1, 999)


async def test_conflated_stats_lose_no_counts(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    sequence = p.StatsSequence()
    receiver = Connection(right, name="agent", on_stats=lambda s: sequence.accept(s.seq))
    sender = Connection(left, name="controller")
    seen = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run)
        nursery.start_soon(receiver.run)
        for seq in range(1, 301):
            sender.send_stats(stats(seq, seq * 3))
            if seq % 7 == 0:
                await trio.sleep(0.01)  # a slow consumer only looks now and then
                latest = receiver.take_stats()
                if latest is not None:
                    seen.append(latest)
        await trio.sleep(0.1)
        seen.append(receiver.take_stats() or seen[-1])
        nursery.cancel_scope.cancel()
    assert seen[-1].seq == 300 and seen[-1].ops["get"].ops == 900  # the final total is exact
    assert [s.seq for s in seen] == sorted(s.seq for s in seen)
    assert sequence.last == 300 and sequence.stale == 0
    assert sequence.gaps == 300 - 1 - (300 - sender.stats_superseded - 1)


async def test_garbage_gets_a_protocol_error_then_the_connection_closes(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = Connection(left, name="peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        await right.send_all(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        got = await read_messages(right, 1)
        await conn.closed.wait()
    assert isinstance(got[0], p.Error) and got[0].code == "protocol_error"
    assert "not valid msgpack" in got[0].message
    assert "protocol error from peer" in conn.close_reason
    with pytest.raises(ConnectionClosed):
        await conn.receive()


async def test_a_control_flood_is_refused(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = Connection(left, name="peer")
    flood = p.encode_message(p.Ack(seq=1)) * (CONTROL_BACKLOG + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        await right.send_all(flood)
        await conn.closed.wait()
    assert "flood" in conn.close_reason


async def test_messages_received_before_the_peer_closed_are_still_delivered(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = Connection(left, name="agent")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        await right.send_all(p.encode_message(p.Completed(seq=9, summaries=())))
        await right.aclose()
        await conn.closed.wait()
    assert await conn.receive() == p.Completed(seq=9, summaries=())
    with pytest.raises(ConnectionClosed, match="agent closed the connection"):
        await conn.receive()


async def test_pongs_never_crowd_out_control_messages(autojump_clock) -> None:
    a_stream, b_stream = trio.testing.lockstep_stream_pair()
    conn = Connection(a_stream, name="controller")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            await trio.sleep(0.1)
            for nonce in range(5000):  # the peer does not read: its PING flood backs up
                conn.send(p.Pong(nonce=nonce, t1_ns=0, t2_ns=0, t3_ns=0))
            conn.send(p.Ready(seq=1, target="x", checks=(), environment={}))  # still accepted
            assert not conn.closed.is_set()
            assert conn.pongs_dropped >= 5000 - 64 - 1
            got = await read_messages(b_stream, 1)
            while not any(isinstance(m, p.Ready) for m in got):
                got += await read_messages(b_stream, 1)
            nursery.cancel_scope.cancel()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of one real loopback TCP connection (the transport writes and reads a TCP
    socket directly, so memory streams do not exercise that path)."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return client, server


async def test_over_tcp_what_the_kernel_does_not_take_follows_in_order() -> None:
    """Control messages go straight to the socket while nothing is queued; once the peer stops
    reading and the kernel's buffers fill, the rest of a partly written frame and everything
    after it queue for the writer, and the peer gets every frame whole and in order."""
    client, server = await tcp_pair()
    for sock, option in ((client.socket, SO_SNDBUF), (server.socket, SO_RCVBUF)):
        sock.setsockopt(SOL_SOCKET, option, 4096)
    conn = Connection(client, name="agent")
    count = 400  # ~600 KiB: far beyond both buffers
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            conn.send(p.Ping(nonce=0, t1_ns=0))
            await trio.sleep(0.05)
            assert conn.frames_written_directly == 1  # nothing queued: no writer hop
            for n in range(1, count):
                conn.send(p.Abort(seq=n, reason=f"{n:04d}" + "x" * 1500))
                if n % 50 == 0:
                    conn.send_stats(stats(n, n))
            assert conn.frames_written_directly < count  # the kernel stopped taking them
            got = await read_messages(server, count + 1)
            assert not conn.closed.is_set()
            nursery.cancel_scope.cancel()
    assert isinstance(got[0], p.Ping)
    aborts = [m for m in got if isinstance(m, p.Abort)]
    assert [m.seq for m in aborts] == list(range(1, count))
    assert all(m.reason.startswith(f"{m.seq:04d}") for m in aborts)
    assert [m.seq for m in got if isinstance(m, p.Stats)][-1] == 350
    await server.aclose()


async def test_over_tcp_a_peer_that_is_gone_closes_the_connection_with_one_line() -> None:
    client, server = await tcp_pair()
    conn = Connection(client, name="agent-3")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            # close with RST: the next writes fail at once
            server.socket.setsockopt(SOL_SOCKET, SO_LINGER, struct.pack("ii", 1, 0))
            await server.aclose()
            await trio.sleep(0.05)
            for n in range(20):
                conn.send(p.Ping(nonce=n, t1_ns=0))
                await trio.sleep(0.01)
            await conn.finished.wait()
    assert conn.close_reason is not None and "agent-3" in conn.close_reason
    assert "\n" not in conn.close_reason


async def test_one_poller_reads_many_connections_and_each_ends_on_its_own() -> None:
    """A controller's connections are read by one ``ReadPoller`` task: every connection gets
    its own frames in order, a peer that closes ends only its connection, and a socket
    number the kernel reuses is never read for the connection that had it before."""
    from trio_bench.transport import ReadPoller, poller_available

    if not poller_available():
        pytest.skip("no epoll on this system: connections read themselves")
    poller = ReadPoller()
    pairs = [await tcp_pair() for _ in range(12)]
    received: dict[int, list[int]] = {i: [] for i in range(len(pairs))}
    all_in = trio.Event()  # every connection but the closed one got its sixth

    def collect(i: int, message: p.Message) -> None:
        received[i].append(message.seq)  # type: ignore[attr-defined]
        if all(len(received[n]) == 6 for n in range(4, len(pairs))):
            all_in.set()

    conns = []
    for i, (client, _server) in enumerate(pairs):
        conn = Connection(client, name=f"agent-{i}", poller=poller)
        conn.handle_inline(functools.partial(collect, i))
        conns.append(conn)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            for conn in conns:
                nursery.start_soon(conn.run)
            for seq in range(1, 6):
                for _client, server in pairs:
                    await server.send_all(p.encode_message(p.Ack(seq=seq)))
            await pairs[3][1].aclose()  # one peer goes away
            await conns[3].finished.wait()
            for _client, server in pairs[4:]:
                await server.send_all(p.encode_message(p.Ack(seq=6)))
            await all_in.wait()
            assert conns[3].close_reason == "agent-3 closed the connection"
            assert not any(conn.closed.is_set() for i, conn in enumerate(conns) if i != 3)
            nursery.cancel_scope.cancel()
    assert received[3] == [1, 2, 3, 4, 5]
    assert all(received[i] == [1, 2, 3, 4, 5, 6] for i in range(4, len(pairs)))
    assert all(received[i] == [1, 2, 3, 4, 5] for i in range(3))
    for _client, server in pairs:
        await server.aclose()


def test_a_poller_forgets_a_socket_only_for_the_connection_that_had_it() -> None:
    from trio_bench.transport import ReadPoller, poller_available

    if not poller_available():
        pytest.skip("no epoll on this system")
    import socket as stdlib_socket

    poller = ReadPoller()
    a, b = stdlib_socket.socketpair()
    old, new = object(), object()
    poller.add(a.fileno(), old)  # type: ignore[arg-type]
    poller.add(a.fileno(), new)  # type: ignore[arg-type]  # the number, reused
    poller.remove(a.fileno(), old)  # type: ignore[arg-type]  # the old one's late cleanup
    assert poller._owners[a.fileno()] is new
    poller.remove(a.fileno(), new)  # type: ignore[arg-type]
    assert a.fileno() not in poller._owners
    a.close()
    b.close()
