"""The controller's agent link over memory streams: endings must flush what was queued."""

from __future__ import annotations

import trio
import trio.lowlevel
import trio.testing

from trio_bench import protocol as p
from trio_bench.clock import RunClock
from trio_bench.controller import AgentLink
from trio_bench.transport import Connection

from .test_transport import read_messages


def make_link() -> AgentLink:
    return AgentLink(
        index=0,
        address="127.0.0.1:7761",
        agent_id="a1",
        clock=RunClock(),
        token=None,
        notify=lambda: None,
        record=lambda *args: None,
    )


async def test_goodbye_flushes_the_final_ack_before_closing(autojump_clock) -> None:
    """Regression: the link's consumer used to tear the connection down as soon as closing
    began, killing the writer before the final ACK reached the agent (which then stayed busy
    waiting for it)."""
    ours, theirs = trio.testing.memory_stream_pair()
    link = make_link()
    conn = Connection(ours, name="agent a1")
    link.conn = conn
    link.hello = p.Hello(
        protocol=1,
        software="x",
        agent_id="a1",
        hostname="h",
        cpus=1,
        challenge=b"c" * 32,
        auth_required=False,
        session=None,
    )
    handshake_done = trio.Event()
    handshake_done.set()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link._run_connection, conn, handshake_done)
            await trio.lowlevel.checkpoint()
            for seq in (6, 7, 8):
                link._send(p.Ack(seq=seq))
            link.say_goodbye("run finished")
            got = await read_messages(theirs, 4)
            await theirs.aclose()
    assert got == [p.Ack(seq=6), p.Ack(seq=7), p.Ack(seq=8), p.Goodbye(reason="run finished")]


async def test_close_soon_flushes_then_half_closes_and_drains(autojump_clock) -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = Connection(left, name="peer")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            conn.send(p.Ack(seq=1))
            conn.close_soon("done")
            conn.send(p.Ack(seq=2))  # after closing began: not sent
            got = await read_messages(right, 2)
            await right.send_all(p.encode_message(p.Goodbye(reason="bye")))  # still read
            await right.aclose()
            await conn.finished.wait()
    assert got == [p.Ack(seq=1)]
    assert conn.frames_received == 1


async def start_with(connect, address: str, agent_id: str, tmp_path):  # type: ignore[no-untyped-def]
    """A controller run whose links reach the agent through ``connect`` (connect_timeout 7 s)."""
    from trio_bench.config import AgentAddress, parse_config
    from trio_bench.controller import Controller

    cfg = parse_config(
        "target: null://\nworkload: [{op: list, path: x/}]\ndistributed: {connect_timeout: 7s}\n"
    )
    controller = Controller(
        cfg,
        agents=[AgentAddress(address, id=agent_id)],
        results_base=tmp_path,
        handle_signals=False,
        connect=connect,
    )
    return await controller.run()


async def test_an_agent_that_never_answers_the_connect_is_cannot_connect_timed_out(
    autojump_clock, tmp_path
) -> None:
    """An unroutable address: TCP never connects. Said as such, not as a missing handshake."""

    async def never(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    result = await start_with(never, "10.255.255.1:7761", "far", tmp_path)
    assert result.exit_code == 3
    assert result.errors == ["agent far (10.255.255.1:7761): cannot connect: timed out after 7s"]


async def test_a_peer_that_accepts_but_never_speaks_is_no_handshake(
    autojump_clock, tmp_path
) -> None:
    silent_ends = []

    async def silent(host: str, port: int) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        silent_ends.append(theirs)  # connected, and nothing ever comes back
        return ours

    result = await start_with(silent, "127.0.0.1:7761", "mute", tmp_path)
    assert result.exit_code == 3
    assert result.errors == [
        "agent mute (127.0.0.1:7761): connected, but no handshake within 7s "
        "(is this a triobench agent?)"
    ]
