"""null://: performs no I/O, keeps object names and sizes in memory.

It measures triobench's own per-operation cost (op selection, timing, recording), the way
fio's null engine measures fio's. Objects live in one dict per directory, shared by the workers
of the session; single dict operations are atomic under the GIL.

Memory is bounded whatever the run's length: a directory remembers at most
``NULL_DIRECTORY_LIMIT`` objects. A put of a new name beyond that still counts as a put but
is not remembered (a later get of that name fails as missing).
"""

from __future__ import annotations

import random
from typing import Any

from ._backend import Backend, ObjectMissing, Payload, WorkerIO

NULL_DIRECTORY_LIMIT = 1_000_000  # names per directory (~100 bytes each)


class NullBackend(Backend):
    scheme = "null"

    def __init__(self) -> None:
        self.directories: dict[str, dict[str, int]] = {}

    def describe(self) -> str:
        return "null:// (no I/O: measures triobench itself)"

    def preflight(self, *, writes: bool) -> list[str]:
        return ["null:// needs no checks"]

    def scan(self, directory: str) -> dict[str, int]:
        return dict(self.directories.get(directory, {}))

    def scan_dirs(self, directory: str, head: str) -> list[str]:
        return [name + "/" for name in self.directories.get(directory, {}) if name.startswith(head)]

    def worker_io(self, worker: int) -> WorkerIO:
        return NullIO(self.directories)


def _split(key: str) -> tuple[str, str]:
    directory, _, name = key.rstrip("/").rpartition("/")
    return (directory + "/" if directory else ""), name


class NullIO(WorkerIO):
    def __init__(self, directories: dict[str, dict[str, int]]) -> None:
        self.directories = directories

    def get(self, key: str) -> int:
        directory, name = _split(key)
        try:
            return self.directories[directory][name]
        except KeyError:
            raise ObjectMissing(key) from None

    def get_block(
        self, key: str, block_size: int, rng: random.Random, size: int | None = None
    ) -> int:
        return min(block_size, self.get(key))

    def put(self, key: str, size: int, data: Payload) -> int:
        if not isinstance(data, bytes | memoryview):
            for _piece in data:  # made as for any store: generating it is part of the cost
                pass
        directory, name = _split(key)
        entries = self.directories.get(directory)
        if entries is None:
            entries = self.directories.setdefault(directory, {})
        if len(entries) < NULL_DIRECTORY_LIMIT or name in entries:
            entries[name] = size
        return size

    def stat(self, key: str) -> int:
        return self.get(key)

    def list(self, directory: str) -> int:
        return len(self.directories.get(directory, ()))

    def mkdir(self, key: str) -> None:
        self.put(key, 0, b"")

    def open_read(self, key: str) -> tuple[int, int]:
        size = self.get(key)
        return size, size  # the handle is the size

    def read_at(self, handle: int, offset: int, length: int) -> int:
        return max(0, min(length, handle - offset))

    def open_write(self, key: str) -> Any:  # [key, bytes so far]
        self.put(key, 0, b"")
        return [key, 0]

    def write_piece(self, handle: Any, data: bytes | memoryview) -> int:
        handle[1] += len(data)
        return len(data)

    def close_stream(self, handle: Any, *, wrote: bool = False) -> None:
        if isinstance(handle, list):
            self.put(handle[0], handle[1], b"")

    def delete(self, key: str) -> None:
        directory, name = _split(key)
        try:
            del self.directories[directory][name]
        except KeyError:
            raise ObjectMissing(key) from None
