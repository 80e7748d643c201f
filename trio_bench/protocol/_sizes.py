"""Size buckets: operations grouped by how many bytes they moved, for per-size result rows.

sai3-bench's buckets, by its boundaries (each upper bound inclusive): metadata operations and
anything else that moved no data are ``zero``; a 4 KiB read is ``1B-8KiB``, an 8 KiB + 1 byte
one ``8KiB-64KiB``. Part of the wire format (STATS and STAGE_DONE carry them by label).

    bucket(n) = 0                                 if n == 0
              = SIZE_OF_BITS[(n - 1).bit_length()] otherwise
"""

from __future__ import annotations

KIB = 1024

# (label, largest byte count in the bucket); the last bucket has no upper bound
SIZE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("zero", 0),
    ("1B-8KiB", 8 * KIB),
    ("8KiB-64KiB", 64 * KIB),
    ("64KiB-512KiB", 512 * KIB),
    ("512KiB-4MiB", 4 * KIB * KIB),
    ("4MiB-32MiB", 32 * KIB * KIB),
    ("32MiB-256MiB", 256 * KIB * KIB),
    ("256MiB-2GiB", 2 * KIB * KIB * KIB),
    (">2GiB", None),
)
SIZE_LABELS = tuple(label for label, _ in SIZE_BUCKETS)


def _by_bits() -> tuple[int, ...]:
    """Bucket index by ``(n - 1).bit_length()`` for n >= 1 (the bounds are powers of two, so
    the bit length of n - 1 decides): 65 entries, any 64-bit count."""
    table = []
    for bits in range(65):
        largest = (1 << bits) if bits else 1  # the largest n with (n - 1).bit_length() == bits
        index = next(
            i for i, (_, top) in enumerate(SIZE_BUCKETS) if i and (top is None or largest <= top)
        )
        table.append(index)
    return tuple(table)


SIZE_OF_BITS = _by_bits()


def size_bucket(nbytes: int) -> int:
    """The index in ``SIZE_BUCKETS`` of an operation that moved ``nbytes`` bytes."""
    if nbytes < 0:
        raise ValueError(f"byte count must be >= 0, got {nbytes}")
    return SIZE_OF_BITS[(nbytes - 1).bit_length()] if nbytes else 0
