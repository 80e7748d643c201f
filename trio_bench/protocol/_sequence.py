"""Sequence numbers: which messages need an ACK, and what happens when one is missing.

Two independent number spaces per run session and direction:

- Reliable control messages (``Message.RELIABLE``) carry ``seq`` = 1, 2, 3, ... The receiver
  processes them strictly in order, answers ``ACK(seq)`` (cumulative: everything up to ``seq``),
  and ignores a seq it already processed (a re-send) while ACKing it again. A seq that skips
  ahead is a protocol error: senders re-send every unACKed message in order, so a gap means a
  broken peer. The sender keeps each message until it is ACKed and re-sends it every resend
  interval and after a RESUME on a new connection. This is what makes a lost barrier release
  or a lost final summary impossible.
- STATS carry their own ``seq``, assigned when the snapshot is taken. Stats are cumulative, so
  an agent whose link is slow replaces an unsent snapshot with a newer one; the receiver counts
  the skipped numbers as gaps (an observation, not an error) and ignores anything older than
  what it already has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs

from ._errors import ProtocolError


@attrs.define
class _Pending:
    message: object
    last_sent_ns: int


M = TypeVar("M")


class ReliableSender:
    """Outgoing reliable messages awaiting ACK."""

    def __init__(self) -> None:
        self._next = 1
        self._pending: dict[int, _Pending] = {}

    def next_seq(self) -> int:
        """Reserve the next sequence number; pass the stamped message to ``sent``."""
        seq = self._next
        self._next += 1
        return seq

    def sent(self, seq: int, message: object, now_ns: int) -> None:
        self._pending[seq] = _Pending(message, now_ns)

    def stamp(self, build: Callable[[int], M], now_ns: int) -> M:
        """Build the next reliable message with its seq and keep it until ACKed."""
        seq = self.next_seq()
        message = build(seq)
        self.sent(seq, message, now_ns)
        return message

    @property
    def highest_sent(self) -> int:
        return self._next - 1

    def ack(self, seq: int) -> list[object]:
        """Process ``ACK(seq)``: forget every message up to ``seq``, return them in order."""
        if seq > self.highest_sent:
            raise ProtocolError(f"ack: seq {seq} was never sent (highest sent {self.highest_sent})")
        done = sorted(s for s in self._pending if s <= seq)
        return [self._pending.pop(s).message for s in done]

    def due(self, now_ns: int, interval_ns: int) -> list[object]:
        """Messages unACKed for at least ``interval_ns`` since last sent; marks them re-sent."""
        out = []
        for seq in sorted(self._pending):
            pending = self._pending[seq]
            if now_ns - pending.last_sent_ns >= interval_ns:
                pending.last_sent_ns = now_ns
                out.append(pending.message)
        return out

    def unacked(self) -> Iterator[object]:
        """Every unACKed message, in order (to re-send all after RESUME)."""
        for seq in sorted(self._pending):
            yield self._pending[seq].message

    def __len__(self) -> int:
        return len(self._pending)


class ReliableReceiver:
    """Incoming reliable messages: in-order, exactly-once processing."""

    def __init__(self) -> None:
        self.processed = 0  # highest seq processed; what we ACK
        self.duplicates = 0

    def check(self, seq: int, what: str = "message") -> bool:
        """Is this the next message to process (True) or a re-send (False)? Raises if it
        skips ahead. Changes nothing: call ``commit`` once the message was applied, so a
        message the receiver refuses does not count as processed."""
        if seq <= 0:
            raise ProtocolError(f"{what}: reliable message with seq {seq} (must be >= 1)")
        if seq <= self.processed:
            self.duplicates += 1
            return False
        if seq != self.processed + 1:
            raise ProtocolError(f"{what}: seq {seq} skips ahead (expected {self.processed + 1})")
        return True

    def commit(self, seq: int) -> None:
        assert seq == self.processed + 1, "commit without a successful check"
        self.processed = seq

    def accept(self, seq: int, what: str = "message") -> bool:
        """``check`` and, if new, ``commit`` at once."""
        if not self.check(seq, what):
            return False
        self.commit(seq)
        return True


class StatsSequence:
    """Incoming STATS numbers: counts gaps (superseded snapshots) and stale frames."""

    def __init__(self) -> None:
        self.last = 0
        self.gaps = 0
        self.stale = 0

    def accept(self, seq: int) -> bool:
        """True if this snapshot is newer than any seen; False if stale (ignore it)."""
        if seq <= self.last:
            self.stale += 1
            return False
        self.gaps += seq - self.last - 1
        self.last = seq
        return True
