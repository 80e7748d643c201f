"""Messages: every type round-trips; every kind of wrong field is one ProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
                        "buckets": [],
                        "counts": [],
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


def _stats_frame_with(get: object) -> dict:
    frame = p.unstructure_message(stats_message())
    frame["ops"] = {"get": get}
    return frame


GOOD_OPS = {
    "ops": 3,
    "bytes": 0,
    "errors": 0,
    "sum_ns": 0,
    "max_ns": 0,
    "buckets": [4, 9],
    "counts": [1, 2],
}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"buckets": [4]}, r"buckets and counts differ in length \(1, 2\)"),
        ({"counts": [1, True]}, r"counts\[1\] is a bool, expected int"),
        ({"counts": [0, 3]}, r"counts\[0\] is 0 \(must be >= 1\)"),
        ({"buckets": [4, 4]}, r"buckets\[1\] is 4: out of order"),
        ({"buckets": [9, 4]}, r"buckets\[1\] is 4: out of order"),
        ({"counts": [1, 1]}, r"counts: add up to 2, but ops is 3"),
        ({"buckets": [4, p.NBINS]}, rf"buckets\[1\] is {p.NBINS}: out of order or outside"),
        ({"buckets": [-1, 4]}, r"buckets\[0\] is -1, outside \[0, 2\*\*64\)"),
        ({"buckets": "ab"}, r"buckets: expected array, got str"),
        ({"sum_ns": 2**64}, r"sum_ns: integer 18446744073709551616 outside"),
        ({"max_ns": 1.5}, r"max_ns: expected int, got float"),
        ({"hist": [[4, 1]]}, r"unexpected field\(s\) \['hist'\]"),
    ],
)
def test_a_bad_histogram_is_named_in_one_line(change: dict, match: str) -> None:
    frame = _stats_frame_with({**GOOD_OPS, **change})
    with pytest.raises(p.ProtocolError, match=rf"^stats: ops\['get'\]\.{match}") as info:
        p.decode_message(frame)
    assert "\n" not in str(info.value)


def test_a_histogram_missing_a_field_is_named() -> None:
    get = {k: v for k, v in GOOD_OPS.items() if k != "counts"}
    with pytest.raises(p.ProtocolError, match=r"ops\['get'\]\.counts: required field missing"):
        p.decode_message(_stats_frame_with(get))
    assert p.decode_message(_stats_frame_with(GOOD_OPS)).ops["get"].counts == (1, 2)


def _leaves(value: object, path: tuple = ()) -> list[tuple]:
    """Every place in a decoded frame (map keys and values, array items), as paths."""
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += [(*path, ("key", key)), *_leaves(item, (*path, ("value", key)))]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _leaves(item, (*path, ("value", i)))
    return out


def _replaced(value: object, path: tuple, new: object) -> object:
    (how, where), rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if how == "key":
            item = copy.pop(where)
            try:
                copy[new] = item  # type: ignore[index]
            except TypeError:  # an unhashable key cannot even be decoded from msgpack
                copy[where] = item
            return copy
        copy[where] = _replaced(copy[where], rest, new) if rest else new
        return copy
    copy_list = list(value)  # type: ignore[call-overload]
    copy_list[where] = _replaced(copy_list[where], rest, new) if rest else new
    return copy_list


@settings(max_examples=300)
@given(
    message_of(p.Stats),
    st.data(),
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**65)
    | st.floats()
    | st.text(max_size=8)
    | st.lists(st.integers(0, 3), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.none()),
)
def test_stats_decode_fast_path_accepts_nothing_the_converter_refuses(
    message: p.Stats, data: st.DataObject, new: object
) -> None:
    """STATS are decoded by a written-out fast path; with any one place of a valid frame
    replaced by any value, it gives the converter's answer or leaves the frame to it."""
    from trio_bench.protocol._messages import _converter, _stats_fast

    frame = msgpack.unpackb(msgpack.packb(p.unstructure_message(message)), strict_map_key=False)
    assert p.decode_message(frame) == message
    field = data.draw(st.sampled_from(sorted(k for k in frame if k != "t")))  # each field alike
    path = data.draw(
        st.sampled_from([(("value", field),), *_leaves(frame[field], (("value", field),))])
    )
    broken = _replaced(frame, path, new)
    fields = {k: v for k, v in broken.items() if k != "t"}  # type: ignore[union-attr]
    try:
        expected: object = _converter.structure(fields, p.Stats)
    except Exception:
        expected = None
    assert _stats_fast(fields) in (None, expected)
    if expected is None:
        assert _stats_fast(fields) is None
