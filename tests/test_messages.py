"""Messages: every type round-trips; every kind of wrong field is one ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given

from trio_bench import protocol as p

from .strategies import message_of, messages, stats_message


@pytest.mark.parametrize("cls", p.MESSAGE_TYPES, ids=lambda c: c.TAG)
def test_every_message_type_round_trips(cls: type[p.Message]) -> None:
    @given(message_of(cls))
    def check(message: p.Message) -> None:
        decoder = p.FrameDecoder()
        decoder.feed(p.encode_message(message))
        (frame,) = list(decoder)
        assert frame["t"] == cls.TAG
        assert p.decode_message(frame) == message

    check()


@given(messages)
def test_extra_key_is_refused(message: p.Message) -> None:
    frame = p.unstructure_message(message)
    frame["surprise"] = 1
    with pytest.raises(
        p.ProtocolError, match=rf"^{message.TAG}: unexpected field\(s\) \['surprise'\]"
    ):
        p.decode_message(frame)


@given(messages)
def test_each_missing_field_is_named(message: p.Message) -> None:
    frame = p.unstructure_message(message)
    for name in [k for k in frame if k != "t"]:
        broken = {k: v for k, v in frame.items() if k != name}
        with pytest.raises(p.ProtocolError, match=rf"{name}: required field missing"):
            p.decode_message(broken)


@pytest.mark.parametrize(
    "frame, match",
    [
        ({"t": "ack", "seq": "1"}, "ack: seq: expected int, got str"),
        ({"t": "ack", "seq": True}, "ack: seq: expected int, got bool"),
        ({"t": "ack", "seq": 1.0}, "ack: seq: expected int, got float"),
        ({"t": "ack", "seq": -1}, r"ack: seq: integer -1 outside \[0, 2\*\*64\)"),
        ({"t": "ack"}, "ack: seq: required field missing"),
        ({"t": "ackk", "seq": 1}, "message: unknown tag 'ackk'"),
        ({"seq": 1}, "message: missing or non-string tag"),
        ({"t": 5, "seq": 1}, "message: missing or non-string tag"),
        ({"t": "start", "seq": 1, "stage": "warmup", "at_ns": 0}, "unknown stage 'warmup'"),
        ({"t": "ready", "seq": 1, "target": "x", "checks": "abc"}, "checks: expected array"),
        (
            {
                "t": "stats",
                "seq": 1,
                "stage": "workload",
                "warmup": False,
                "elapsed_ns": 0,
                "done": 0,
                "total": 0,
                "ops": {
                    "gett": {
                        "ops": 0,
                        "bytes": 0,
                        "errors": 0,
                        "sum_ns": 0,
                        "max_ns": 0,
                        "hist": [],
                    }
                },
                "error_codes": {},
                "cpu_user_ns": 0,
                "cpu_system_ns": 0,
                "at_ns": 0,
                "sizes": {},
            },
            "unknown op kind 'gett'",
        ),
        (
            {
                "t": "stats",
                "seq": 1,
                "stage": "workload",
                "warmup": False,
                "elapsed_ns": 0,
                "done": 0,
                "total": 0,
                "ops": {
                    "get": {
                        "ops": 3,
                        "bytes": 0,
                        "errors": 0,
                        "sum_ns": 0,
                        "max_ns": 0,
                        "hist": [[5, 1], [4, 2]],
                    }
                },
            },
            r"ops\['get'\].hist: bucket index 4 out of order",
        ),
        (
            {
                "t": "stats",
                "seq": 1,
                "stage": "workload",
                "warmup": False,
                "elapsed_ns": 0,
                "done": 0,
                "total": 0,
                "ops": {
                    "get": {
                        "ops": 3,
                        "bytes": 0,
                        "errors": 0,
                        "sum_ns": 0,
                        "max_ns": 0,
                        "hist": [[5, 1]],
                    }
                },
            },
            "counts add up to 1, but ops is 3",
        ),
        (
            {"t": "error", "seq": 0, "code": "oops", "message": "", "summaries": []},
            "unknown value 'oops'",
        ),
        ({"t": "goodbye", "reason": "x" * (p.MAX_TEXT + 1)}, "exceeds 2000"),
        (
            {
                "t": "hello",
                "protocol": 1,
                "software": "s",
                "agent_id": "a",
                "hostname": "h",
                "cpus": 1,
                "challenge": "not-bytes",
                "auth_required": False,
                "session": None,
            },
            "challenge: expected bytes, got str",
        ),
    ],
)
def test_wrong_fields(frame: dict, match: str) -> None:
    with pytest.raises(p.ProtocolError, match=match) as info:
        p.decode_message(frame)
    assert "\n" not in str(info.value)


def test_reliability_flags() -> None:
    assert p.is_reliable(p.Start(seq=1, stage="prepare", at_ns=0))
    assert not p.is_reliable(p.Ping(nonce=1, t1_ns=0))
    assert not p.is_reliable(stats_message(1, stage="prepare"))
    assert p.is_reliable(p.Error(seq=3, code="stage_failed", message="x", summaries=()))
    assert not p.is_reliable(p.Error(seq=0, code="busy", message="x", summaries=()))
