"""What a reader needs to trust a number: the machine it was measured on and the storage it
was measured against. Plain facts as short strings (they travel in READY and land in
run.json); a fact that cannot be read is left out, never guessed. No Trio.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

from trio_bench import __version__

# READY's ``environment`` keys (protocol.md §6); each value at most this many characters
HOST_KEYS = ("hostname", "cpu_model", "cpus", "memory_bytes", "kernel", "os", "python", "triobench")
TARGET_KEYS = ("fs_type", "mount_point", "mount_source", "mount_options", "s3_endpoints")
MAX_FACT = 500


def host_facts() -> dict[str, str]:
    """This host: CPU model and count, memory, kernel, OS, Python and triobench versions."""
    facts = {
        "hostname": socket.gethostname(),
        "cpus": str(os.cpu_count() or 0),
        "kernel": platform.release(),
        "os": platform.system(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "triobench": __version__,
    }
    model = _cpu_model()
    if model:
        facts["cpu_model"] = model
    memory = _memory_bytes()
    if memory:
        facts["memory_bytes"] = str(memory)
    return {key: value[:MAX_FACT] for key, value in facts.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 0


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """The file system holding ``path`` (resolved): its type, mount point, source and
    options (per-mount and super-block options merged), from the longest matching mount
    point. Empty where the system does not say (not Linux, no /proc)."""
    target = os.path.realpath(path)
    best: dict[str, str] = {}
    best_length = -1
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_length:  # a later mount over the same point wins
            best_length = len(point)
            options = fields[5].split(",")
            options += [
                o for o in (tail[2].split(",") if len(tail) > 2 else []) if o not in options
            ]
            best = {
                "fs_type": tail[0],
                "mount_point": point,
                "mount_source": _unescape(tail[1]),
                "mount_options": ",".join(options),
            }
    return {key: value[:MAX_FACT] for key, value in best.items()}
