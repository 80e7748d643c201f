"""What puts write: data with a chosen deduplication and compression ratio.

sai3-bench's meaning, measured on what lands on storage:

- ``dedup_factor: N``: one unit in N is unique, the others are exact copies of units
  written before (N = 1: every unit unique). A unit is 64 KiB of an object (a smaller object,
  or an object's last piece, is one shorter unit); stores that deduplicate in fixed chunks of
  64 KiB or less, aligned to the object's start, see exactly N:1.
- ``compress_factor: C``: every 4 KiB block is 1/C random bytes followed by zeros, so a
  compressor that works block by block (as storage does inline) gets C:1. C = 1: random
  throughout, incompressible.

Every unique unit differs from every other one written anywhere: each 4 KiB block starts
with a 16-byte stamp (a salt naming the run, agent, worker and stage, and the unit's number),
and the random bytes come from a 4 MiB pool at an offset chosen by the unit's number. So no
two agents, workers or runs write the same unique data, and neither do two objects.

An object's bytes are a function of where its units sit in the worker's stream, so its body
can be produced again (an HTTP request sent twice, a payload hashed before it is sent):
``ObjectData`` is re-iterable. Its pieces are views of one reused buffer, each valid until
the next is taken (``volatile``): a consumer writes each piece before asking for another.
An object of one unit or less (most) is simply its bytes: a view of that buffer, valid until
the source makes its next object.

``fill: zero`` writes zeros (and takes neither factor).

What this costs (one worker, this repository's bench machine): about 1-2 us per object of up
to 64 KiB (a 4 KiB copy from the pool and a stamp) and ~120 us per MiB (a copy and 256
stamps). A compressor whose window is longer than the pool (4 MiB; zstd at high levels, or
with --long) finds the pool's bytes again in a large object and compresses it better than C.
"""

from __future__ import annotations

import hashlib
import mmap
import random
import struct
from collections.abc import Iterator

import attrs

UNIT = 64 * 1024  # the deduplication unit
PIECE = 1024 * 1024  # a larger object is written in pieces of up to this
BLOCK = 4096  # the compression block; each starts with a stamp
STAMP = struct.Struct("<QQ")
POOL_SIZE = 4 * 1024 * 1024  # small enough to stay in cache beside the hot loop
_STAMPS_PER_UNIT = UNIT // BLOCK
_GOLDEN = 0x9E3779B97F4A7C15
_SPREAD = 0x9E3779B1  # spreads unit numbers over the pool (32 bits: stays a small int)
_MASK = (1 << 64) - 1
MAX_COMPRESS = BLOCK // STAMP.size  # the random part must hold the stamp


@attrs.frozen
class Pattern:
    """How to fill objects: ``fill`` random or zero, with sai3-bench's two factors."""

    fill: str = "random"
    dedup: float = 1.0
    compress: float = 1.0


class RandomPool:
    """The random bytes every source of one engine copies from (made once, 4 MiB)."""

    def __init__(self, seed: object, size: int = POOL_SIZE) -> None:
        self.data = memoryview(random.Random(f"pool:{seed}").randbytes(size))


def salt_of(*parts: object) -> int:
    """A 64-bit salt naming a stream of units (run, agent, worker, stage, ...)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Source:
    """One worker's stream of units for one pattern. Not shared between threads."""

    def __init__(
        self, pattern: Pattern, pool: RandomPool | None, salt: int, piece: int = PIECE
    ) -> None:
        if pool is None and pattern.fill != "zero":
            raise ValueError("random data needs a pool")
        self.pattern = pattern
        self.salt = salt
        self.position = 0  # units handed out so far
        self._pool = pool.data if pool is not None else memoryview(b"")
        self._span = max(1, len(self._pool) - UNIT)
        # a larger object is made and written in pieces of this many units (one write each)
        self.piece_units = max(1, piece // UNIT)
        # page-aligned (an mmap), so direct:// writes it without a copy
        self._view = memoryview(mmap.mmap(-1, self.piece_units * UNIT))
        self._zero = pattern.fill == "zero"
        self._unique = pattern.dedup == 1
        # bytes of random data at the start of each block (the rest of the block stays zero)
        compress = pattern.compress
        self._random = BLOCK if compress == 1 else max(STAMP.size, round(BLOCK / compress))

    def object(self, size: int) -> memoryview | ObjectData:
        """The data of the next object of ``size`` bytes (its units are reserved now): up
        to one unit, the bytes themselves (a view of the reused buffer: valid until the
        next object of this source is made), else ``ObjectData``."""
        first = self.position
        if size <= UNIT:
            self.position = first + 1
            return self.unit(first, size)
        self.position += -(-size // UNIT)
        return ObjectData(self, first, size)

    def content_id(self, position: int) -> int:
        """The unit at ``position`` in the stream: a new unique unit, or (dedup N) one that
        came before. Exactly floor(p / N) + 1 unique units among the first p + 1."""
        dedup = self.pattern.dedup
        if dedup == 1:
            return position
        unique = int(position // dedup)
        if position == 0 or unique != int((position - 1) // dedup):
            return unique
        return ((position * _GOLDEN) & _MASK) % (unique + 1)

    def unit(self, position: int, length: int, at: int = 0) -> memoryview:
        """The bytes of the unit at ``position``, ``length`` <= UNIT of them, made at ``at``
        in the reused buffer (a view of it, valid until the buffer is written again)."""
        view = self._view[at:] if at else self._view
        if self._zero:
            return view[:length]
        k = position if self._unique else self.content_id(position)
        offset = (k * _SPREAD + self.salt) % self._span
        head = k * _STAMPS_PER_UNIT
        if length <= BLOCK and self._random >= length:  # small objects: one block
            view[:length] = self._pool[offset : offset + length]
            if length >= STAMP.size:
                STAMP.pack_into(view, 0, self.salt, head)
            else:  # a tiny object: as much of the stamp as fits
                view[:length] = STAMP.pack(self.salt, head)[:length]
            return view[:length]
        pool = self._pool
        random_part = self._random
        if random_part >= BLOCK:
            view[:length] = pool[offset : offset + length]
        else:
            for start in range(0, length, BLOCK):
                n = min(random_part, length - start)
                view[start : start + n] = pool[offset : offset + n]
                offset += n
        salt = self.salt
        pack_into = STAMP.pack_into
        for block, start in enumerate(range(0, length - STAMP.size + 1, BLOCK)):
            pack_into(view, start, salt, head + block)
        return view[:length]


class ObjectData:
    """One object's bytes, as pieces of up to the source's piece size (1 MiB by default).
    Iterate again for the same bytes."""

    __slots__ = ("first", "size", "source")
    volatile = True  # each piece is overwritten by the next

    def __init__(self, source: Source, first: int, size: int) -> None:
        self.source = source
        self.first = first
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def __iter__(self) -> Iterator[memoryview]:
        return self.range(0, self.size)

    def range(self, offset: int, length: int) -> Iterator[memoryview]:
        """The bytes from ``offset`` to ``offset + length`` (a multipart upload's part), in
        pieces of up to the source's piece size (units made side by side in its buffer)."""
        end = min(self.size, offset + length)
        source = self.source
        unit, buffer, count = source.unit, source._view, source.piece_units
        while offset < end:
            index, skip = divmod(offset, UNIT)
            made = 0
            for i in range(index, min(index + count, -(-end // UNIT))):
                made += len(unit(self.first + i, min(UNIT, self.size - i * UNIT), made))
            piece = buffer[skip : min(made, end - index * UNIT)]
            offset += len(piece)
            yield piece

    def part(self, offset: int, length: int) -> Part:
        return Part(self, offset, length)


class Part:
    """A re-iterable range of an object's data (one part of a multipart upload)."""

    volatile = True

    def __init__(self, data: ObjectData, offset: int, length: int) -> None:
        self.data, self.offset, self.length = data, offset, length

    def __len__(self) -> int:
        return self.length

    def __bool__(self) -> bool:
        return self.length > 0

    def __iter__(self) -> Iterator[memoryview]:
        return self.data.range(self.offset, self.length)
