"""The frame codec: whole, byte by byte, any chunking, trailing data, oversize, garbage."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_bench import protocol as p

from .strategies import messages


def frame_of(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def decode_all(data: bytes, chunks: list[int] | None = None) -> list[dict]:
    decoder = p.FrameDecoder()
    out: list[dict] = []
    if chunks is None:
        decoder.feed(data)
        out.extend(decoder)
        return out
    pos = 0
    for size in chunks:
        decoder.feed(data[pos : pos + size])
        pos += size
        out.extend(decoder)
    decoder.feed(data[pos:])
    out.extend(decoder)
    return out


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_any_chunking_yields_the_same_messages(msgs: list[p.Message], data: st.DataObject) -> None:
    wire = b"".join(p.encode_message(m) for m in msgs)
    chunks = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    frames = decode_all(wire, chunks)
    assert [p.decode_message(f) for f in frames] == msgs


def test_byte_by_byte() -> None:
    msgs = [p.Ping(nonce=1, t1_ns=2), p.Ack(seq=7), p.Goodbye(reason="done")]
    wire = b"".join(p.encode_message(m) for m in msgs)
    decoder = p.FrameDecoder()
    got = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        got.extend(decoder)
    assert [p.decode_message(f) for f in got] == msgs
    assert decoder.buffered == 0


def test_partial_frame_waits_for_more_and_eof_inside_it_is_an_error() -> None:
    wire = p.encode_message(p.Ack(seq=3))
    decoder = p.FrameDecoder()
    decoder.feed(wire[:-1])
    assert decoder.next_frame() is None
    with pytest.raises(p.ProtocolError, match="connection closed after .* frame body"):
        decoder.check_eof()
    # sticky: once broken, always broken
    with pytest.raises(p.ProtocolError):
        decoder.feed(wire[-1:])


def test_eof_inside_header() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(b"\x00\x00")
    assert decoder.next_frame() is None
    with pytest.raises(p.ProtocolError, match="frame header"):
        decoder.check_eof()


def test_clean_eof_between_frames() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(p.encode_message(p.Ack(seq=1)))
    assert len(list(decoder)) == 1
    decoder.check_eof()  # no error


def test_oversize_is_refused_at_the_header_before_buffering_the_body() -> None:
    decoder = p.FrameDecoder(max_frame_size=1024)
    decoder.feed(struct.pack(">I", 1025))
    with pytest.raises(p.ProtocolError, match="declared length 1025 exceeds the maximum of 1024"):
        decoder.next_frame()
    assert decoder.buffered == 0


def test_maximum_size_itself_is_accepted() -> None:
    payload = {"t": "goodbye", "reason": ""}
    body = msgpack.packb(payload)
    decoder = p.FrameDecoder(max_frame_size=len(body))
    decoder.feed(struct.pack(">I", len(body)) + body)
    assert decoder.next_frame() == payload


def test_huge_length_prefix() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(p.ProtocolError, match="4294967295 exceeds"):
        decoder.next_frame()


def test_zero_length() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(p.ProtocolError, match="declared length is 0"):
        decoder.next_frame()


def test_non_map_body() -> None:
    decoder = p.FrameDecoder()
    decoder.feed(frame_of([1, 2, 3]))
    with pytest.raises(p.ProtocolError, match="msgpack list, expected a map"):
        decoder.next_frame()


def test_trailing_bytes_inside_a_frame() -> None:
    body = msgpack.packb({"t": "ack", "seq": 1}) + b"\x01\x02"
    decoder = p.FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(p.ProtocolError, match="2 trailing byte"):
        decoder.next_frame()


def test_truncated_msgpack_inside_a_frame() -> None:
    body = msgpack.packb({"t": "ack", "seq": 1})[:-1]
    decoder = p.FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(p.ProtocolError, match="not valid msgpack"):
        decoder.next_frame()


@pytest.mark.parametrize(
    "body, match",
    [
        (b"\xc1", "not valid msgpack"),  # 0xc1 is never used in msgpack
        (b"\x81\x91\x01\x01", "not valid msgpack"),  # map with an array key
        (b"\x81\xa1t\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8 in a str
        (b"\x91" * 5000 + b"\x01", "not valid msgpack"),  # nesting bomb
    ],
)
def test_garbage_bodies(body: bytes, match: str) -> None:
    decoder = p.FrameDecoder()
    decoder.feed(struct.pack(">I", len(body)) + body)
    with pytest.raises(p.ProtocolError, match=match):
        decoder.next_frame()


@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_random_bytes_never_raise_anything_but_protocol_error(
    data: bytes, chunks: list[int]
) -> None:
    decoder = p.FrameDecoder(max_frame_size=256)
    try:
        for frame in decode_all(data, chunks):
            p.decode_message(frame)
        decoder.feed(data)
        for frame in decoder:
            p.decode_message(frame)
        decoder.check_eof()
    except p.ProtocolError:
        pass


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text() | st.none(), max_size=6))
def test_random_maps_are_messages_or_protocol_errors(obj: dict) -> None:
    try:
        p.decode_message(obj)
    except p.ProtocolError as exc:
        assert "\n" not in str(exc)


def test_encoding_refuses_out_of_range_integers_clearly() -> None:
    with pytest.raises(ValueError, match="cannot encode frame"):
        p.encode_frame({"t": "ack", "seq": 2**64})
    with pytest.raises(ValueError, match="exceeds the maximum"):
        p.encode_frame({"t": "goodbye", "reason": "x" * 100}, max_frame_size=50)


# --- authenticated frames (after the handshake, protocol.md §3)

KEY = bytes(range(32))


def _signed_stream(messages: list[dict], key: bytes = KEY) -> list[bytes]:
    return [p.sign_frame(p.encode_frame(m), key, i) for i, m in enumerate(messages)]


def test_authenticated_frames_decode_in_order_in_any_chunking() -> None:
    messages = [{"t": "ping", "n": i, "pad": "x" * (i * 37)} for i in range(20)]
    data = b"".join(_signed_stream(messages))
    for chunk in (1, 7, 4096):
        decoder = p.FrameDecoder()
        decoder.authenticate(KEY)
        out = []
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
            out += list(decoder)
        assert out == messages


@pytest.mark.parametrize(
    "tamper, why",
    [
        (lambda f: [f[0], f[0]], "replayed"),
        (lambda f: [f[1], f[0]], "reordered"),
        (lambda f: [f[0], f[2]], "one dropped"),
        (lambda f: [f[0][:-1] + bytes([f[0][-1] ^ 1])], "tag altered"),
        (lambda f: [f[0][:6] + bytes([f[0][6] ^ 0x20]) + f[0][7:]], "body altered"),
        (lambda f: [p.encode_frame({"t": "abort", "seq": 9, "reason": "x"})], "unsigned"),
        (lambda f: _signed_stream([{"t": "ping"}], key=bytes(32)), "another key"),
        (lambda f: [struct.pack(">I", 3) + b"\x80ab"], "too short for a tag"),
    ],
)
def test_a_frame_that_fails_authentication_ends_the_stream(tamper, why) -> None:
    frames = _signed_stream([{"t": "ping", "n": i} for i in range(3)])
    decoder = p.FrameDecoder()
    decoder.authenticate(KEY)
    decoder.feed(b"".join(tamper(frames)))
    with pytest.raises(p.ProtocolError, match=r"authenticat|too short"):
        list(decoder)
    with pytest.raises(p.ProtocolError):  # sticky: nothing after it is trusted
        decoder.feed(frames[0])


def test_each_direction_has_its_own_key() -> None:
    a, c = bytes(32), bytes([1]) * 32
    args = ("agent-1", a, c)
    assert p.frame_key(b"t", "agent", *args) != p.frame_key(b"t", "controller", *args)
    assert p.frame_key(b"t", "agent", *args) != p.frame_key(b"u", "agent", *args)
    assert p.frame_key(b"t", "agent", *args) != p.frame_key(b"t", "agent", "agent-1", c, a)
