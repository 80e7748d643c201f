"""Handshake security: versions, token authentication, and the token never on the wire."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import trio

from trio_bench import protocol as p
from trio_bench.config import AgentAddress
from trio_bench.local import start_local_agent, stop_local_agents

from .agents import config, quiet_controller
from .proxy import Proxy

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-that-must-never-cross-the-wire"
RUN = """
target: null://
duration: 300ms
workload: [{op: list, path: "x/"}]
"""


@pytest.fixture
def token_agent(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    agent = start_local_agent(
        "sec",
        tmp_path / "sec.log",
        state_dir=tmp_path / "state",
        args=["--token-file", str(token_file)],
    )
    yield agent
    stop_local_agents([agent])


async def run_controller(tmp_path: Path, address: str, token: str | None):
    controller = quiet_controller(
        config(RUN),
        [AgentAddress(address=address)],
        tmp_path / "results",
        token=token.encode() if token else None,
    )
    with trio.fail_after(30):
        return await controller.run()


async def test_the_right_token_works_and_never_crosses_the_wire(tmp_path, token_agent) -> None:
    async with trio.open_nursery() as nursery:
        proxy = Proxy(token_agent.address)
        await nursery.start(proxy.serve)
        result = await run_controller(tmp_path, proxy.address, TOKEN)
        nursery.cancel_scope.cancel()
    assert result.exit_code == 0
    wire = bytes(proxy.to_agent) + bytes(proxy.to_controller)
    assert len(wire) > 1000
    assert TOKEN.encode() not in wire
    assert TOKEN.encode().hex().encode() not in wire


@pytest.mark.parametrize(
    "token, message",
    [
        ("wrong-token", "authentication failed: wrong or missing token"),
        (None, "requires a token (--token-file or TRIOBENCH_TOKEN)"),
    ],
)
async def test_a_wrong_or_missing_token_is_refused(tmp_path, token_agent, token, message) -> None:
    result = await run_controller(tmp_path, token_agent.address, token)
    assert (result.exit_code, result.status) == (3, "failed")
    assert message in result.message


async def test_a_replayed_auth_is_refused(tmp_path, token_agent) -> None:
    """Record a good handshake, replay the controller's AUTH on a new connection."""
    host, port = token_agent.address.split(":")

    async def handshake(auth_bytes: bytes | None) -> tuple[p.Message, bytes]:
        stream = await trio.open_tcp_stream(host, int(port))
        decoder = p.FrameDecoder()
        async with stream:
            hello = None
            while hello is None:
                decoder.feed(await stream.receive_some(65536))
                hello = decoder.next_frame()
            hello_msg = p.decode_message(hello)
            assert isinstance(hello_msg, p.Hello)
            if auth_bytes is None:
                challenge = p.new_challenge()
                auth_bytes = p.encode_message(
                    p.Auth(
                        protocol=p.PROTOCOL_VERSION,
                        software="test",
                        controller="test",
                        challenge=challenge,
                        proof=p.make_proof(
                            TOKEN.encode(),
                            "controller",
                            hello_msg.agent_id,
                            hello_msg.challenge,
                            challenge,
                        ),
                    )
                )
            await stream.send_all(auth_bytes)
            reply = None
            while reply is None:
                decoder.feed(await stream.receive_some(65536))
                reply = decoder.next_frame()
            return p.decode_message(reply), auth_bytes

    with trio.fail_after(30):
        welcome, recorded = await handshake(None)
        assert isinstance(welcome, p.Welcome)
        replayed, _ = await handshake(recorded)
    assert isinstance(replayed, p.Error) and replayed.code == "auth_failed"


async def test_a_controller_of_another_version_is_refused_with_both_versions(token_agent) -> None:
    host, port = token_agent.address.split(":")
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            decoder = p.FrameDecoder()
            decoder.feed(await stream.receive_some(65536))
            assert isinstance(p.decode_message(decoder.next_frame()), p.Hello)
            await stream.send_all(
                p.encode_message(
                    p.Auth(
                        protocol=99, software="9.9", controller="x", challenge=b"c" * 32, proof=b""
                    )
                )
            )
            while (frame := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(65536))
    error = p.decode_message(frame)
    assert isinstance(error, p.Error) and error.code == "version_mismatch"
    assert (
        f"speaks protocol {p.PROTOCOL_VERSION}" in error.message
        and "controller speaks 99 (triobench 9.9)" in error.message
    )


async def test_an_agent_of_another_version_is_refused_with_both_versions(tmp_path: Path) -> None:
    """A fake agent from the future: the controller names both versions, exit 3."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    got: list[p.Message] = []

    async def fake_agent() -> None:
        conn, _ = await listener.accept()
        async with trio.SocketStream(conn) as stream:
            await talk(stream)

    async def talk(stream: trio.SocketStream) -> None:
        await stream.send_all(
            p.encode_message(
                p.Hello(
                    protocol=p.PROTOCOL_VERSION + 1,
                    software="2.0",
                    agent_id="future",
                    hostname=socket.gethostname(),
                    cpus=os.cpu_count() or 1,
                    challenge=b"c" * 32,
                    auth_required=False,
                    session=None,
                )
            )
        )
        decoder = p.FrameDecoder()
        with trio.move_on_after(5):
            while data := await stream.receive_some(65536):
                decoder.feed(data)
                got.extend(p.decode_message(f) for f in decoder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_agent)
        result = await run_controller(tmp_path, f"127.0.0.1:{port}", None)
    listener.close()
    assert result.exit_code == 3
    assert f"controller speaks protocol {p.PROTOCOL_VERSION}" in result.message
    assert f"speaks {p.PROTOCOL_VERSION + 1} (triobench 2.0)" in result.message
    assert got and isinstance(got[0], p.Error) and got[0].code == "version_mismatch"


async def test_a_controller_with_a_token_refuses_an_agent_that_asks_for_none(tmp_path) -> None:
    """A downgrade: whatever answers on the agent's address without asking for the token is
    refused, and is sent no proof (nothing derived from the token reaches it)."""
    from .test_bad_input import serving_agent

    async with serving_agent() as (_server, address), trio.open_nursery() as nursery:
        proxy = Proxy(address)
        await nursery.start(proxy.serve)
        result = await run_controller(tmp_path, proxy.address, TOKEN)
        nursery.cancel_scope.cancel()
    assert (result.exit_code, result.status) == (3, "failed")
    assert "does not require a token, but this controller has one: refusing it" in result.message
    auth = [frame for frame in _frames(bytes(proxy.to_agent)) if frame.get("t") == "auth"]
    assert auth == []  # not even an AUTH (with a proof) was sent


def _frames(data: bytes) -> list[dict]:
    from trio_bench import protocol as p

    decoder = p.FrameDecoder()
    decoder.feed(data)
    return list(decoder)


@pytest.mark.parametrize("how", ["an injected ABORT", "a replayed frame"])
async def test_a_frame_injected_after_the_handshake_ends_the_connection(
    tmp_path, token_agent, how
) -> None:
    """A party on the path relays a good handshake, then slips in a frame of its own: an
    ABORT it made up, or a copy of a frame the controller sent earlier. The agent refuses
    it (frames after the handshake are authenticated) and says why; the forged ABORT never
    takes effect."""
    cfg = config(RUN.replace("duration: 300ms", "duration: 4s"))
    async with trio.open_nursery() as nursery:
        proxy = Proxy(token_agent.address)
        await nursery.start(proxy.serve)
        controller = quiet_controller(
            cfg, [AgentAddress(address=proxy.address)], tmp_path / "results", token=TOKEN.encode()
        )

        async def attack() -> None:
            link = controller.links[0]
            await controller.wait_for(lambda: link.state is p.PeerState.RUNNING)
            if how == "an injected ABORT":
                frame = p.encode_message(p.Abort(seq=1000, reason="forged"))
            else:  # the controller's last frame, exactly as it went over the wire
                frame = _last_whole_frame(bytes(proxy.to_agent))
            proxy.set(inject_to_agent=frame)

        nursery.start_soon(attack)
        with trio.fail_after(60):
            result = await controller.run()
        nursery.cancel_scope.cancel()
    record = json.loads((result.results_dir / "run.json").read_text())
    assert (result.exit_code, result.status) == (1, "partial")  # refused loudly, not obeyed
    assert "authentication failed on frame" in record["agents"][0]["failure"]
    assert "forged" not in json.dumps(record)


def _last_whole_frame(data: bytes) -> bytes:
    """The last complete frame of a recorded byte stream."""
    import struct

    frames, i = [], 0
    while i + 4 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        if i + 4 + length > len(data):
            break
        frames.append(data[i : i + 4 + length])
        i += 4 + length
    return frames[-1]
