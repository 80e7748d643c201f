"""Bad input against a running agent and against the controller, and bad configurations.

The agent must answer a protocol error where it can, close that connection, log one line,
and keep serving; it must never buffer without bound. The controller must mark a misbehaving
agent failed with a clear reason and leave the others alone."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_bench import protocol as p
from trio_bench.agent import AgentOptions, AgentServer
from trio_bench.config import AgentAddress
from trio_bench.protocol import PeerState

from .agents import config, quiet_controller
from .strategies import messages, stats_message

pytestmark = pytest.mark.reliability

RUN = """
target: null://
duration: 200ms
workload: [{op: list, path: "x/"}]
"""


@contextlib.asynccontextmanager
async def serving_agent(**options: object) -> AsyncIterator[tuple[AgentServer, str]]:
    """An agent server in this process on a free loopback port."""
    with tempfile.TemporaryDirectory() as state:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        server = AgentServer(
            AgentOptions(
                agent_id="target",
                **{"state_dir": Path(state), "handshake_timeout_s": 0.5, **options},
            )
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            yield server, f"127.0.0.1:{port}"
            nursery.cancel_scope.cancel()


class Peer:
    """A raw client: frames in, frames out, and whether the agent closed on us."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = p.FrameDecoder()
        self.received: list[p.Message] = []
        self.closed = False

    @classmethod
    async def connect(cls, address: str) -> Peer:
        host, port = address.split(":")
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def read_until_closed(self, limit_s: float = 5.0) -> list[p.Message]:
        with trio.move_on_after(limit_s):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.closed = True
                    return self.received
                self.decoder.feed(data)
                self.received.extend(p.decode_message(f) for f in self.decoder)
        return self.received

    async def next_message(self) -> p.Message:
        while not self.received:
            data = await self.stream.receive_some(65536)
            assert data, "closed while waiting for a message"
            self.decoder.feed(data)
            self.received.extend(p.decode_message(f) for f in self.decoder)
        return self.received.pop(0)

    async def handshake(self) -> p.Hello:
        hello = await self.next_message()
        assert isinstance(hello, p.Hello)
        await self.stream.send_all(
            p.encode_message(
                p.Auth(
                    protocol=p.PROTOCOL_VERSION,
                    software="test",
                    controller="test",
                    challenge=p.new_challenge(),
                    proof=b"",
                )
            )
        )
        assert isinstance(await self.next_message(), p.Welcome)
        return hello

    async def aclose(self) -> None:
        await self.stream.aclose()


def configure(seq: int = 1, run_id: str = "r1") -> p.Configure:
    from trio_bench.config import config_to_dict

    return p.Configure(
        seq=seq,
        run_id=run_id,
        config=config_to_dict(config(RUN)),
        agent_index=0,
        agent_count=1,
        path_prefix="x/",
        stats_interval_ns=10**9,
        orphan_timeout_ns=10 * 10**9,
    )


def configure_with(**fields: object) -> bytes:
    """A CONFIGURE frame with some fields set to what no valid controller sends."""
    return p.encode_frame({**p.unstructure_message(configure()), **fields})


async def still_serves(address: str) -> None:
    """A new controller still gets a HELLO and a full run still completes."""
    controller = quiet_controller(
        config(RUN), [AgentAddress(address=address)], Path(tempfile.mkdtemp())
    )
    with trio.fail_after(30):
        result = await controller.run()
    assert result.exit_code == 0, result.message


# --- random bytes and random message sequences ------------------------------------------------

fuzz = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@fuzz
@given(st.binary(max_size=3000), st.booleans())
async def test_random_bytes_get_an_error_or_a_close_and_the_agent_serves_on(
    data: bytes, after_handshake: bool
) -> None:
    async with serving_agent() as (server, address):
        peer = await Peer.connect(address)
        if after_handshake:
            await peer.handshake()
        else:
            assert isinstance(await peer.next_message(), p.Hello)
        with contextlib.suppress(trio.BrokenResourceError):
            await peer.stream.send_all(data)
        received = await peer.read_until_closed()
        await peer.aclose()
        assert peer.closed  # the agent closed (protocol error, or the handshake bound)
        assert all(isinstance(m, p.Error | p.Ack | p.Pong | p.Goodbye) for m in received)
        assert server.session is None or server.session.run_id
        # and it keeps serving
        again = await Peer.connect(address)
        assert isinstance(await again.next_message(), p.Hello)
        await again.aclose()


@fuzz
@given(st.lists(messages, max_size=8))
async def test_random_message_sequences_never_break_the_agent(sequence: list[p.Message]) -> None:
    async with serving_agent() as (_server, address):
        peer = await Peer.connect(address)
        await peer.handshake()
        with contextlib.suppress(trio.BrokenResourceError):
            for message in sequence:
                await peer.stream.send_all(p.encode_message(message))
        await peer.read_until_closed(limit_s=1.0)
        await peer.aclose()
        # any refusal is fine (a CONFIGURE with seq 1 gets a run, whose random config is
        # bad_config), a bug of the agent's is not
        errors = [m for m in peer.received if isinstance(m, p.Error)]
        assert all(e.code != "internal" for e in errors), errors
        again = await Peer.connect(address)
        assert isinstance(await again.next_message(), p.Hello)
        await again.aclose()


# --- named cases -----------------------------------------------------------------------------

CASES = {
    "huge length prefix": (False, [b"\xff\xff\xff\xff"], "exceeds the maximum of 65536"),
    "zero length prefix": (False, [b"\x00\x00\x00\x00"], "declared length is 0"),
    "truncated frame": (False, [p.encode_message(p.Ack(seq=1))[:-2]], "no auth within"),
    "wrong field type": (
        False,
        [
            p.encode_frame(
                {
                    "t": "auth",
                    "protocol": "1",
                    "software": "x",
                    "controller": "x",
                    "challenge": b"",
                    "proof": b"",
                }
            )
        ],
        "auth: protocol: expected int, got str",
    ),
    "unknown tag": (
        False,
        [p.encode_frame({"t": "launch_missiles"})],
        "message: unknown tag 'launch_missiles'",
    ),
    "START before CONFIGURE": (
        True,
        [p.encode_message(p.Start(seq=1, stage="workload", at_ns=1))],
        "expected configure or resume, got start",
    ),
    "ACK for an unknown sequence": (
        True,
        [p.encode_message(configure()), p.encode_message(p.Ack(seq=99))],
        "ack: seq 99 was never sent",
    ),
    "a second CONFIGURE": (
        True,
        [p.encode_message(configure()), p.encode_message(configure(seq=2, run_id="r2"))],
        "this connection already carries run r1",
    ),
    "START out of order": (
        True,
        [p.encode_message(configure()), p.encode_message(p.Start(seq=2, stage="cleanup", at_ns=1))],
        "start_cleanup is not allowed in state",
    ),
    "sequence skipping ahead": (
        True,
        [p.encode_message(configure()), p.encode_message(p.Abort(seq=5, reason="x"))],
        "abort: seq 5 skips ahead (expected 2)",
    ),
    "CONFIGURE with a run_id that is a path": (
        True,
        [configure_with(run_id="../../../../tmp/x")],
        "run id '../../../../tmp/x' is not 1-64 of",
    ),
    "CONFIGURE with an empty run_id": (True, [configure_with(run_id="")], "run id '' is not"),
    "CONFIGURE with a 300-character run_id": (
        True,
        [configure_with(run_id="r" * 300)],
        "run id 'rrrr",
    ),
    "CONFIGURE with a path_prefix that climbs": (
        True,
        [configure_with(path_prefix="../../etc/")],
        "path_prefix '../../etc/' is neither empty nor one folder name",
    ),
    "CONFIGURE with agent_count 0": (
        True,
        [configure_with(agent_count=0)],
        "agent_index 0 is not in [0, agent_count 0)",
    ),
    "CONFIGURE with stats_interval_ns 0": (
        True,
        [configure_with(stats_interval_ns=0)],
        "stats_interval_ns 0 is outside",
    ),
    "CONFIGURE with orphan_timeout_ns 0": (
        True,
        [configure_with(orphan_timeout_ns=0)],
        "orphan_timeout_ns 0 is outside",
    ),
    "PING before authenticating": (
        False,
        [p.encode_message(p.Ping(nonce=1, t1_ns=1))],
        "expected auth, got ping",
    ),
    "STATS from a controller": (
        True,
        [
            p.encode_message(configure()),
            p.encode_message(stats_message(1)),
        ],
        "stats: not a message a controller sends",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_named_bad_input(case: str, caplog: pytest.LogCaptureFixture, reliability) -> None:
    after_handshake, frames, expected = CASES[case]
    async with serving_agent() as (_server, address):
        peer = await Peer.connect(address)
        if after_handshake:
            await peer.handshake()
        else:
            assert isinstance(await peer.next_message(), p.Hello)
        for frame in frames:
            await peer.stream.send_all(frame)
        received = await peer.read_until_closed()
        await peer.aclose()
        errors = [m for m in received if isinstance(m, p.Error)]
        assert peer.closed and errors, received
        assert expected in errors[-1].message
        assert errors[-1].code == "protocol_error"
        logged = [r for r in caplog.records if expected in r.getMessage()]
        assert len(logged) == 1 and "\n" not in logged[0].getMessage()
        await still_serves(address)
    reliability(
        f"agent: {case}",
        "ERROR protocol_error naming it, connection closed, one log "
        "line; the agent serves the next run",
        f'ERROR: "{errors[-1].message[:70]}"',
    )


async def test_idle_connections_cannot_lock_the_controller_out(tmp_path: Path, reliability) -> None:
    """40 peers connect and say nothing (the cap is 32, the handshake bound 30 s here): the
    real controller still gets in, at once, because the oldest idle connection makes way."""
    async with serving_agent(handshake_timeout_s=30.0) as (server, address):
        idle = [await Peer.connect(address) for _ in range(40)]
        controller = quiet_controller(config(RUN), [AgentAddress(address=address)], tmp_path)
        with trio.fail_after(20):  # far less than the 30 s an idle peer may hold a slot
            result = await controller.run()
        assert result.exit_code == 0, result.message
        assert server.connections <= server.options.max_connections + 1
        for peer in idle:
            await peer.aclose()
    reliability(
        "agent: 40 idle connections that never authenticate (cap 32, handshake bound 30 s)",
        "the real controller connects at once: the oldest unauthenticated connection is dropped",
        f"run exit 0 with {len(idle)} idle peers connected",
    )


async def test_a_ping_flood_is_answered_and_bounded(reliability) -> None:
    async with serving_agent() as (server, address):
        peer = await Peer.connect(address)
        await peer.handshake()
        await peer.stream.send_all(p.encode_message(configure()))
        flood = b"".join(p.encode_message(p.Ping(nonce=i, t1_ns=i)) for i in range(20_000))
        pongs = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.stream.send_all, flood)
            while True:  # read until the agent has been quiet for a second
                with trio.move_on_after(1.0) as quiet:
                    message = await peer.next_message()
                if quiet.cancelled_caught:
                    break
                pongs += isinstance(message, p.Pong)
        assert server.session is not None and server.session.conn is not None
        dropped = server.session.conn.pongs_dropped
        # still responsive: a PING now is answered at once
        await peer.stream.send_all(p.encode_message(p.Ping(nonce=-1 % 2**64, t1_ns=0)))
        with trio.fail_after(2):
            while not isinstance(await peer.next_message(), p.Pong):
                pass
        await peer.stream.send_all(p.encode_message(p.Goodbye(reason="done")))  # frees it
        await peer.aclose()
        await still_serves(address)
    assert pongs + dropped == 20_000 and pongs > 0
    reliability(
        "agent: 20,000 PINGs in one burst",
        "each answered, or its PONG dropped when "
        "the outbox is full (bounded); the agent stays responsive and serves on",
        f"{pongs:,} PONGs + {dropped:,} dropped; a later PING answered at once",
    )


async def test_half_open_connections_are_closed_after_the_handshake_bound(reliability) -> None:
    async with serving_agent(handshake_timeout_s=0.5) as (_server, address):
        peer = await Peer.connect(address)  # connects, never says anything
        t0 = trio.current_time()
        received = await peer.read_until_closed()
        waited = trio.current_time() - t0
        await peer.aclose()
    assert peer.closed and 0.4 < waited < 3
    assert isinstance(received[-1], p.Error) and "no auth within 0.5s" in received[-1].message
    reliability(
        "agent: a connection that never authenticates",
        "closed after the handshake bound",
        f"closed after {waited:.2f} s (bound 0.5 s)",
    )


async def test_no_peer_can_make_the_agent_buffer_without_bound(reliability) -> None:
    async with serving_agent(max_connections=8) as (_server, address):
        # before authentication a frame may be at most 64 KiB: refused at the header
        peer = await Peer.connect(address)
        await peer.next_message()
        await peer.stream.send_all(struct.pack(">I", 1024 * 1024) + b"x" * 1000)
        received = await peer.read_until_closed()
        assert "exceeds the maximum of 65536" in received[-1].message
        await peer.aclose()
        # and at most max_connections at once: beyond the cap the oldest unauthenticated
        # connections are dropped to make way for the newest
        peers = [await Peer.connect(address) for _ in range(12)]
        await trio.sleep(0.1)  # well inside the 0.5 s handshake bound of this agent
        refused = 0
        for extra in peers:
            await extra.read_until_closed(limit_s=0.01)
            refused += extra.closed
        for extra in peers:
            await extra.aclose()
        assert refused == 4
        assert not any(extra.closed for extra in peers[4:])  # the newest ones were kept
        await trio.sleep(0.6)  # the held ones time out
        await still_serves(address)
    reliability(
        "agent: 1 MiB frame before authenticating; 12 connections at once "
        "(connection cap set to 8 for the test; 32 by default)",
        "refused at the header (64 KiB cap before auth); beyond the cap the oldest "
        "unauthenticated connections are dropped: at most cap x 64 KiB buffered",
        f"header refused; the {refused} oldest of 12 dropped",
    )


# --- a misbehaving agent, seen from the controller ---------------------------------------------


def _ops(count: int) -> p.OpStats:
    """``count`` operations of 1 us each."""
    return p.OpStats(
        ops=count,
        bytes=0,
        errors=0,
        sum_ns=count * 1000,
        max_ns=1000,
        buckets=(1000,),
        counts=(count,),
    )


async def fake_agent(listener: trio.SocketListener, behaviour: str) -> None:
    """Handshakes like an agent, then misbehaves once configured."""
    stream = await listener.accept()
    async with stream:
        peer = Peer(stream)
        await stream.send_all(
            p.encode_message(
                p.Hello(
                    protocol=p.PROTOCOL_VERSION,
                    software="fake",
                    agent_id="fake",
                    hostname=socket.gethostname(),
                    cpus=os.cpu_count() or 1,
                    challenge=b"c" * 32,
                    auth_required=False,
                    session=None,
                )
            )
        )
        assert isinstance(await peer.next_message(), p.Auth)
        await stream.send_all(p.encode_message(p.Welcome(proof=b"")))
        assert isinstance(await peer.next_message(), p.Configure)
        await stream.send_all(
            p.encode_message(p.Ready(seq=1, target="null://", checks=(), environment={}))
        )
        while not isinstance(await peer.next_message(), p.Start):
            pass  # ACK, PINGs ... until the run is underway
        bad = {
            "garbage bytes": b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
            "STATS with wrong types": p.encode_frame({"t": "stats", "seq": "one"}),
            "ACK for a message never sent": p.encode_message(p.Ack(seq=7)),
            "a stage out of order": p.encode_message(p.Started(seq=2, stage="cleanup", at_ns=1)),
            "STATS whose counts go backwards": [
                p.encode_message(p.Started(seq=2, stage="prepare", at_ns=1))
                + p.encode_message(stats_message(1, stage="prepare", ops={"put": _ops(10)})),
                # a moment later (STATS conflate: the first must be seen before the second)
                p.encode_message(stats_message(2, stage="prepare", ops={"put": _ops(3)})),
            ],
        }[behaviour]
        for frames in bad if isinstance(bad, list) else [bad]:
            await stream.send_all(frames)
            await trio.sleep(0.3)
        await peer.read_until_closed(limit_s=10)


@pytest.mark.parametrize(
    "behaviour",
    [
        "garbage bytes",
        "STATS with wrong types",
        "ACK for a message never sent",
        "a stage out of order",
        "STATS whose counts go backwards",
    ],
)
async def test_a_misbehaving_agent_is_failed_and_the_others_are_unaffected(
    behaviour: str, reliability
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    fake_address = f"127.0.0.1:{listener.socket.getsockname()[1]}"
    async with serving_agent() as (_server, good_address), trio.open_nursery() as nursery:
        nursery.start_soon(fake_agent, listener, behaviour)
        controller = quiet_controller(
            config(RUN, policy="continue"),
            [
                AgentAddress(address=good_address, id="target"),
                AgentAddress(address=fake_address, id="fake"),
            ],
            Path(tempfile.mkdtemp()),
        )
        with trio.fail_after(30):
            result = await controller.run()
        nursery.cancel_scope.cancel()
    await listener.aclose()
    good, fake = controller.links
    assert (result.exit_code, good.state, fake.state) == (1, PeerState.COMPLETED, PeerState.FAILED)
    assert fake.failure and "protocol error" in fake.failure
    reliability(
        f"controller: an agent sends {behaviour}",
        "that agent failed with the reason; the others complete",
        f'exit 1; fake: "{fake.failure[:60]}"; good agent completed',
    )


async def test_an_agent_id_that_would_escape_the_results_directory_is_refused(
    tmp_path: Path, reliability
) -> None:
    """The controller names per-agent results folders after the id in HELLO when the config
    gives none: a peer must not be able to choose "../../x"."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    address = f"127.0.0.1:{listener.socket.getsockname()[1]}"

    async def hostile() -> None:
        stream = await listener.accept()
        async with stream:
            hello = {
                "t": "hello",
                "protocol": p.PROTOCOL_VERSION,
                "software": "fake",
                "agent_id": "../../escaped",
                "hostname": "h",
                "cpus": 1,
                "challenge": b"c" * 32,
                "auth_required": False,
                "session": None,
            }
            await stream.send_all(p.encode_frame(hello))
            await Peer(stream).read_until_closed(limit_s=10)

    results = tmp_path / "deep" / "results"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hostile)
        controller = quiet_controller(config(RUN), [AgentAddress(address=address)], results)
        with trio.fail_after(30):
            result = await controller.run()
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert result.exit_code == 3
    assert "agent id '../../escaped' is not 1-64 of" in result.message, result.message
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    reliability(
        "controller: an agent's HELLO names it ../../escaped",
        "refused at the handshake as a protocol error; nothing written outside results/",
        f'exit 3; "{result.message.split("hello: ")[-1][:70]}"',
    )


# --- bad configurations --------------------------------------------------------------------------

BAD_CONFIGS = {
    "invalid YAML": ("target: [\n", "invalid YAML"),
    "wrong type": (
        "target: null://\nconcurrency: many\nworkload: [{op: list, path: x/}]\n",
        "concurrency: expected a whole number",
    ),
    "unknown op": (
        "target: null://\nworkload: [{op: gett, path: 'x/*'}]\n",
        "workload[0].op: unknown operation 'gett'",
    ),
    "negative size": (
        "target: null://\nworkload: [{op: put, path: x/, object_size: -4}]\n",
        "workload[0].object_size: size must not be negative",
    ),
    "unknown key": (
        "target: null://\nthreads: 4\nworkload: [{op: list, path: x/}]\n",
        "threads: unknown key",
    ),
    "percent-encoded target": (
        "target: file:///tmp/%2e%2e/etc/\nworkload: [{op: list, path: x/}]\n",
        "percent-encoding",
    ),
    "glob matching nothing": (
        "target: null://\nworkload: [{op: get, path: 'nothing/*.dat'}]\n",
        "matches no objects",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configs_are_one_line_errors_and_exit_2(tmp_path: Path, case: str, reliability) -> None:
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    command = [
        sys.executable,
        "-m",
        "trio_bench",
        "run",
        str(path),
        "--local-agents",
        "1",
        "--results-dir",
        str(tmp_path / "results"),
        "--display",
        "quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("triobench: ")]
    assert any(expected in line for line in errors), done.stderr
    assert "Traceback" not in done.stderr
    reliability(
        f"config: {case}",
        "one-line error naming the field, exit 2",
        f'exit 2: "{next(e for e in errors if expected in e)[11:80]}"',
    )


# --- confinement ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["outside", "dotdot", "symlink"])
async def test_root_confines_targets_before_any_io(tmp_path: Path, how: str, reliability) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    target = {
        "outside": f"file://{outside}/",
        "dotdot": f"file://{root}/inside/../../outside/",
        "symlink": f"file://{root}/link/",
    }[how]
    cfg = config(f"""
target: {target}
duration: 200ms
prepare: {{ensure_objects: [{{base_uri: data/, count: 5, object_size: 1KiB}}]}}
workload: [{{op: get, path: "data/*"}}]
""")
    async with serving_agent(root=str(root)) as (_server, address):
        controller = quiet_controller(cfg, [AgentAddress(address=address)], tmp_path / "results")
        with trio.fail_after(30):
            result = await controller.run()
    assert result.exit_code == 3
    assert "outside the agent's --root" in result.message
    assert list(outside.iterdir()) == []  # nothing was written there
    reliability(
        f"--root: target {how} the root",
        "refused at preflight, before any I/O; exit 3",
        'exit 3: "resolves to ... outside the agent\'s --root"; nothing written',
    )


def test_percent_encoding_cannot_smuggle_dotdot_into_workload_paths() -> None:
    from trio_bench.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="contains URL-encoded characters"):
        parse_config("target: null://\nworkload: [{op: get, path: 'a/%2e%2e/*'}]\n")


# --- internal errors -----------------------------------------------------------------------------


def _boom(*_args: object, **_kwargs: object) -> object:
    raise RuntimeError("boom \udcff")


@pytest.mark.parametrize("where", ["a stage", "a background duty"])
async def test_an_internal_error_in_a_run_reaches_the_controller(
    tmp_path: Path, monkeypatch, where: str, reliability
) -> None:
    from trio_bench.agent import _session
    from trio_bench.engine import Engine

    if where == "a stage":
        monkeypatch.setattr(Engine, "workload_stage", _boom)
    else:

        async def broken_stats_loop(self: object) -> None:
            await trio.sleep(0.3)
            _boom()

        monkeypatch.setattr(_session.Session, "_stats_loop", broken_stats_loop)
    cfg = config("target: null://\nduration: 2s\nworkload: [{op: put, path: x/, object_size: 1}]\n")
    async with serving_agent() as (server, address):
        controller = quiet_controller(cfg, [AgentAddress(address=address)], tmp_path / "results")
        with trio.fail_after(30):
            result = await controller.run()
        assert server.session is None  # the agent is free for the next run
    assert result.exit_code == 1
    failure = controller.links[0].failure or ""
    assert "internal error: RuntimeError: boom \\xff" in failure, failure  # escaped
    reliability(
        f"agent: an exception in {where} of a run",
        "ERROR internal reaches the controller (agent failed, exit 1) at once; agent free",
        f'exit 1; "{failure[:70]}"',
    )


# --- hostile configuration files -----------------------------------------------------------------

_OK_TAIL = b"duration: 1s\nworkload: [{op: put, path: x/, object_size: 4KiB}]\n"


def _alias_bomb() -> bytes:
    """~400 bytes of YAML whose aliases expand to 9^10 (3.5 billion) values."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return ("\n".join(lines) + "\ntarget: null://\nworkload: *a9\n").encode()


HOSTILE_CONFIGS = {
    "an integer above 2^64": (
        b"target: null://\nseed: 99999999999999999999999\n" + _OK_TAIL,
        "seed: 99999999999999999999999 is out of range (at most 2^64-1)",
    ),
    "a size above 2^64 bytes": (
        b"target: null://\nduration: 1s\n"
        b"workload: [{op: put, path: x/, object_size: 99999999999TiB}]\n",
        "workload[0].size_spec: ",
    ),
    "a lone surrogate": (b'target: null://\nname: "\\udcff"\n' + _OK_TAIL, "invalid"),
    "a file that is not UTF-8": (b"target: null://\nname: caf\xe9\n" + _OK_TAIL, "not UTF-8 text"),
    "a YAML alias bomb (371 bytes -> 3.5 billion values)": (_alias_bomb(), "aliases expand"),
    "a self-referencing alias": (b"target: null://\nworkload: &w [*w]\n", "refers to itself"),
    "a 50 MB file": (b"target: null://\n#" + b"x" * 50_000_000 + b"\n", "larger than 1024 KiB"),
    "a config bigger than a frame once aliases expand": (
        b"target: null://\nduration: 1s\nworkload: [&a {op: put, path: '"
        + b"p" * 100
        + b"/', object_size: 1}"
        + b", *a" * 60_000
        + b"]\n",
        "over the protocol's limit",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_hostile_config_files_are_one_line_errors_for_validate_and_run(
    tmp_path: Path, case: str, reliability
) -> None:
    data, expected = HOSTILE_CONFIGS[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(data)
    outcomes = []
    for command in (
        ["validate", str(path)],
        ["run", str(path), "--local-agents", "1", "--results-dir", str(tmp_path / "results")],
    ):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "trio_bench", *command, "--display", "quiet"][
                : None if command[0] == "run" else -2
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        outcomes.append(time.monotonic() - started)
        assert done.returncode == 2, (command[0], done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines and all(line.startswith("triobench: ") for line in lines), done.stderr
        assert any(expected in line for line in lines), done.stderr
        assert all(len(line) < 300 for line in lines)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    reliability(
        f"config: {case}",
        "validate and run both refuse it: one line, exit 2, nothing written",
        f'exit 2 in {max(outcomes):.1f} s: "{lines[0][11:80]}"',
    )


def test_what_cannot_travel_to_agents_is_named() -> None:
    from trio_bench.config import wire_problems

    assert wire_problems({"a": [1, {"b": 2**70}], "c": "ok\udcff", "d": -(2**64)}) == [
        "a[1].b: 1180591620717411303424 is out of range (at most 2^64-1)",
        "c: not valid text (character '\\udcff' at position 2)",
        "d: -18446744073709551616 is out of range (at most 2^64-1)",
    ]


def test_io_rate_written_without_a_dot_is_a_number() -> None:
    from trio_bench.config import parse_config

    cfg = parse_config("target: null://\nio_rate: 1e-3\nworkload: [{op: list, path: x/}]\n")
    assert cfg.io_rate is not None and cfg.io_rate.iops == 0.001
    cfg = parse_config("target: null://\nio_rate: {iops: 2e3}\nworkload: [{op: list, path: x/}]\n")
    assert cfg.io_rate is not None and cfg.io_rate.iops == 2000


async def test_a_re_sent_configure_is_acked_again_and_changes_nothing(reliability) -> None:
    async with serving_agent() as (server, address):
        peer = await Peer.connect(address)
        await peer.handshake()
        await peer.stream.send_all(p.encode_message(configure()))
        await peer.stream.send_all(p.encode_message(configure()))  # the same, re-sent
        acks = []
        with trio.fail_after(10):
            while len(acks) < 2:
                message = await peer.next_message()
                assert not isinstance(message, p.Error), message
                if isinstance(message, p.Ack) and message.seq == 1:
                    acks.append(message)
        assert server.session is not None and server.runs_served == 1
        await peer.aclose()
    reliability(
        "agent: CONFIGURE re-sent with the same seq (its ACK was late)",
        "ACKed again and otherwise ignored (the run goes on); a different one is an error",
        "2 ACKs of seq 1, no ERROR, one run",
    )


async def test_an_ack_and_a_goodbye_in_one_read_still_get_the_agents_goodbye() -> None:
    """Closing order (protocol.md section 5): the agent says GOODBYE after the ACK of its final
    message, even when the controller's GOODBYE arrives in the same read."""
    async with serving_agent() as (_server, address):
        peer = await Peer.connect(address)
        await peer.handshake()
        await peer.stream.send_all(p.encode_message(configure()))
        next_start = {"ready": "prepare", "prepare": "workload", "workload": "cleanup"}
        seq = 1
        with trio.fail_after(30):
            while True:
                message = await peer.next_message()
                if isinstance(message, p.Completed):
                    await peer.stream.send_all(
                        p.encode_message(p.Ack(seq=message.seq))
                        + p.encode_message(p.Goodbye(reason="run over"))
                    )
                    break
                if isinstance(message, p.Error):
                    raise AssertionError(message)
                if p.is_reliable(message):
                    frames = p.encode_message(p.Ack(seq=message.seq))  # type: ignore[attr-defined]
                    done = "ready" if isinstance(message, p.Ready) else None
                    if isinstance(message, p.StageDone):
                        done = message.summary.stage
                    if done in next_start:
                        seq += 1
                        frames += p.encode_message(
                            p.Start(seq=seq, stage=next_start[done], at_ns=1)
                        )
                    await peer.stream.send_all(frames)
            received = await peer.read_until_closed()
        await peer.aclose()
    assert peer.closed
    assert any(isinstance(m, p.Goodbye) for m in received), received


async def test_a_failure_to_keep_results_locally_reaches_the_controller(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the agent's state directory should be")
    async with serving_agent(state_dir=blocked) as (_server, address):
        controller = quiet_controller(config(RUN), [AgentAddress(address=address)], tmp_path / "r")
        with trio.fail_after(30):
            result = await controller.run()
    assert result.exit_code == 0  # the run itself completed
    summary = controller.links[0].summaries["cleanup"]
    assert "results not kept locally on the agent: " in summary.message
    record = json.loads((result.results_dir / "run.json").read_text())
    assert "results not kept locally" in record["agents"][0]["stages"]["cleanup"]["message"]


# --- the process's own limits ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("hard", [300, 8192], ids=["hard-limit-too-low", "soft-limit-raised"])
def test_more_agents_than_open_files_is_one_line_before_connecting(
    tmp_path: Path, hard: int
) -> None:
    """1,000 agents need ~1,000 descriptors. Under a soft limit of 256 the controller raises
    it toward the hard limit; if the hard limit is too low it says so in one line (exit 3)
    before connecting to anything, rather than failing agent after agent with EMFILE."""
    import resource

    path = tmp_path / "run.yaml"
    path.write_text("target: null://\nduration: 1s\nworkload: [{op: get, path: 'd/*'}]\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    agents = ",".join(f"127.0.0.{n}:9x250" for n in (1, 2, 3, 4))
    command = ["controller", str(path), "--display", "quiet", "--agents", agents]
    done = subprocess.run(
        [sys.executable, "-m", "trio_bench", *command, "--results-dir", str(tmp_path / "results")],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    about_files = [line for line in lines if "open files" in line]
    if hard == 300:
        assert lines == about_files and len(lines) == 1 and "1,000 agents" in lines[0]
    else:  # raised: it went on to connect (port 9 refuses: nothing listens)
        assert not about_files and "Too many open files" not in done.stderr
