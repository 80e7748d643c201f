"""Sizes and durations as people write them in a config.

Sizes: an integer number of bytes, or a number with a unit. ``KiB``/``MiB``/``GiB``/``TiB``
are powers of 1024, ``KB``/``MB``/``GB``/``TB`` powers of 1000 (IEC and SI, as written), and a
bare ``k``/``m``/``g``/``t`` is a power of 1024 as in fio (``4k`` is 4096). Durations: a number
of seconds, or a number with ``ns``/``us``/``ms``/``s``/``m``/``h``. Both are returned as
integers (bytes, nanoseconds).
"""

from __future__ import annotations

import re
import reprlib

# Error messages quote the value they refuse, bounded: a value can be a list that YAML
# aliases make enormous, and formatting it whole would take minutes and gigabytes.
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother = 2, 60, 60
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 4


def show(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters whatever its size (for messages)."""
    return _SHOW.repr(value)


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_COMPOUND_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_COMPOUND = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+")
SIZE_HINT = "bytes, or a number with a unit such as 4KiB, 1MiB, 1GB, 64k"
DURATION_HINT = "seconds, or a number with a unit such as 500ms, 30s, 2m, 1h, 1m30s"


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a unit; ``ValueError`` says what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size ({SIZE_HINT}), got {show(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            number, unit = match.groups()
            size = float(number) * _SIZE_UNITS[unit.lower()]
            if size != int(size):
                raise ValueError(f"size {show(value)} is not a whole number of bytes")
            return int(size)
        if value.strip().startswith("-"):
            raise ValueError(f"size must not be negative, got {show(value)}")
    raise ValueError(f"{show(value)} is not a size ({SIZE_HINT})")


def parse_duration(value: object) -> int:
    """Nanoseconds from a number of seconds or a string with a unit."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({DURATION_HINT}), got {show(value)}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return round(value * 1_000_000_000)
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if match:
            number, unit = match.groups()
            unit = unit.lower() or "s"
            if unit in _DURATION_UNITS:
                return round(float(number) * _DURATION_UNITS[unit])
        text = value.strip().lower()
        if _COMPOUND.fullmatch(text):  # 1m30s, 1h5m, 2s500ms
            return sum(
                round(float(number) * _DURATION_UNITS[unit])
                for number, unit in _COMPOUND_PART.findall(text)
            )
        if value.strip().startswith("-"):
            raise ValueError(f"duration must not be negative, got {show(value)}")
    raise ValueError(f"{show(value)} is not a duration ({DURATION_HINT})")


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            scaled = size / factor
            if scaled == int(scaled):
                return f"{scaled:.0f}{unit}"
            shown = f"{scaled:.2f}"
            # 1.00MiB for 1 MiB + 1 byte would read as equal to 1MiB: say the bytes then
            return f"{size:,}B" if float(shown) == int(float(shown)) else f"{shown}{unit}"
    return f"{size}B"


def exact_size(size: int) -> str:
    """A size in the largest binary unit that holds it exactly (``parse_size`` reads it back
    to the same number): 16KiB, 1536B, 3GiB."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def exact_duration(ns: int) -> str:
    """A duration in units people write, exact (``parse_duration`` reads it back to the same
    number): 90s -> 1m30s, 1500ms, 250us, 7ns."""
    if ns == 0:
        return "0s"
    if ns % _DURATION_UNITS["s"] == 0:
        seconds = ns // _DURATION_UNITS["s"]
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        parts = [(hours, "h"), (minutes, "m"), (seconds, "s")]
        return "".join(f"{n}{unit}" for n, unit in parts if n)
    for unit in ("ms", "us", "ns"):
        if ns % _DURATION_UNITS[unit] == 0:
            return f"{ns // _DURATION_UNITS[unit]}{unit}"
    raise AssertionError("unreachable: every duration is a whole number of ns")


def format_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    for unit in ("h", "m", "s", "ms", "us"):
        factor = _DURATION_UNITS[unit]
        if ns >= factor and ns % factor == 0:
            return f"{ns // factor}{unit}"
    return f"{ns / 1e9:g}s"
