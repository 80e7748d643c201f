"""Length-prefixed msgpack framing.

A frame is a 4-byte big-endian unsigned length N, then N bytes holding exactly one msgpack map.
This module only turns bytes into maps and maps into bytes; it knows nothing about message
types, sockets or Trio. Every way a byte stream can be wrong ends in one ``ProtocolError``, and
after the first error the decoder stays broken (sticky), like h11's ERROR state: a stream that
lost its framing cannot be trusted again.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterator
from typing import Any

import msgpack

from ._auth import TAG_SIZE, FrameMac
from ._errors import ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size

# Why 4 MiB: the largest legitimate frame is a final summary. Three stages x five op kinds x a
# full 2,368-bin latency histogram sent as [index, count] pairs is under 0.5 MiB even if every
# bin were used, plus error samples (capped) and the echoed configuration (a few KiB). 4 MiB
# leaves 8x headroom while bounding what one peer can make us buffer before we see a single
# byte of its body.
MAX_FRAME_SIZE = 4 * 1024 * 1024
# Before a peer has authenticated, it may only send HELLO/AUTH/WELCOME/ERROR (a few hundred
# bytes): a 64 KiB cap keeps what an anonymous connection can make us buffer small.
HANDSHAKE_FRAME_SIZE = 64 * 1024


def encode_frame(payload: dict[str, Any], *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """Return the framed msgpack encoding of ``payload``.

    Raises ``ValueError`` (a local bug, not a peer's fault) if the map cannot be encoded, for
    example an integer outside msgpack's range [-2**63, 2**64-1], or if the result would exceed
    ``max_frame_size``.
    """
    try:
        # Text is always sent as valid UTF-8: a character UTF-8 cannot carry (a lone
        # surrogate, as in a file name that is not UTF-8) goes as its backslash escape rather
        # than making the message unsendable. Senders escape such text themselves first
        # (``printable``); this is the backstop.
        body = msgpack.packb(payload, use_bin_type=True, unicode_errors="backslashreplace")
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode frame: {exc}") from exc
    if len(body) > max_frame_size:
        raise ValueError(f"frame of {len(body)} bytes exceeds the maximum of {max_frame_size}")
    return HEADER.pack(len(body)) + body


def sign_frame(frame: bytes, key: bytes | FrameMac, counter: int) -> bytes:
    """An encoded frame made authenticated: the same body followed by its 16-byte tag, the
    length covering both (protocol.md §3)."""
    mac = key if isinstance(key, FrameMac) else FrameMac(key)
    body = memoryview(frame)[HEADER_SIZE:]
    return HEADER.pack(len(body) + TAG_SIZE) + body + mac.tag(counter, body)


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode one frame body into a map; every failure is a ``ProtocolError``."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData as exc:  # exc.extra: the bytes after the first object
        raise ProtocolError(
            f"frame: {len(getattr(exc, 'extra', b''))} trailing byte(s) after the message "
            f"inside a {len(body)}-byte frame"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # msgpack raises ValueError (incl. UnicodeDecodeError, FormatError, StackError,
        # "Unpack failed: incomplete input") or TypeError for unhashable keys.
        raise ProtocolError(
            f"frame: body is not valid msgpack ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"frame: body is a msgpack {type(obj).__name__}, expected a map")
    return obj


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, iterate complete maps.

    Bytes may arrive in any chunking, one at a time included. The declared length is checked
    against ``max_frame_size`` as soon as the 4 header bytes are in, before any of the body is
    buffered, so a peer can never make us hold more than ``max_frame_size + HEADER_SIZE`` bytes
    plus whatever a single ``feed`` hands us.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read, once known
        self._error: ProtocolError | None = None
        self._key: FrameMac | None = None  # once set, every frame carries a tag
        self._counter = 0

    def authenticate(self, key: bytes) -> None:
        """From the next frame on, every frame must end in its tag under ``key``."""
        self._key, self._counter = FrameMac(key), 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data

    def next_frame(self) -> dict[str, Any] | None:
        """Return the next complete map, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except ProtocolError as exc:
            self._error = exc
            self._buffer.clear()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def _next_frame(self) -> dict[str, Any] | None:
        if self._need is None:
            if len(self._buffer) < HEADER_SIZE:
                return None
            (length,) = HEADER.unpack_from(self._buffer)
            if length == 0:
                raise ProtocolError("frame: declared length is 0 (a frame holds one msgpack map)")
            if length > self.max_frame_size + (TAG_SIZE if self._key is not None else 0):
                raise ProtocolError(
                    f"frame: declared length {length} exceeds the maximum "
                    f"of {self.max_frame_size} bytes"
                )
            del self._buffer[:HEADER_SIZE]
            self._need = length
        if len(self._buffer) < self._need:
            return None
        body = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._need = None
        if self._key is not None:
            body = self._verified(body)
        return decode_body(body)

    def _verified(self, body: bytes) -> bytes:
        counter = self._counter
        if len(body) <= TAG_SIZE:
            raise ProtocolError(
                f"frame: authenticated frame {counter} has {len(body)} bytes, too short to "
                "hold a message and its tag"
            )
        payload, tag = body[:-TAG_SIZE], body[-TAG_SIZE:]
        assert self._key is not None
        if not hmac.compare_digest(self._key.tag(counter, payload), tag):
            raise ProtocolError(
                f"frame: authentication failed on frame {counter} after the handshake "
                "(altered, injected, replayed or reordered on the way)"
            )
        self._counter += 1
        return payload

    def check_eof(self) -> None:
        """Call when the peer closed: raises if the stream ended inside a frame."""
        if self._error is not None:
            raise self._error
        if self._buffer or self._need is not None:
            have = len(self._buffer)
            what = f"a {self._need}-byte frame body" if self._need is not None else "a frame header"
            self._error = ProtocolError(f"frame: connection closed after {have} byte(s) of {what}")
            raise self._error
