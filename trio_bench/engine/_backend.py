"""The storage backend interface: what the engine needs from a storage system.

A ``Backend`` is opened once per run session from the target URI. Each worker thread gets its
own ``WorkerIO`` (its own buffers, connections, file descriptors), so the hot path shares
nothing between threads. Keys are relative paths with ``/`` separators (``agent-1/data/x``);
directories end with ``/``. A backend raises ordinary exceptions (``OSError``, ...) from
``WorkerIO`` methods: the engine counts them per op kind and keeps the first messages.

Adding a backend (s3:// for example) means implementing these two classes and registering the
scheme in ``open_backend``; the engine does not change.
"""

from __future__ import annotations

import abc
import builtins
import errno
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit

import attrs

from trio_bench.config import Config, s3_endpoint_form, spreads
from trio_bench.stopping import NEVER, StopFlag


class Pieces(Protocol):
    """An object's bytes as pieces (``engine._data.ObjectData``); iterating again gives the
    same bytes. ``part``: the same for a range (one part of a multipart upload)."""

    def __iter__(self) -> Iterator[bytes | memoryview]: ...

    def part(self, offset: int, length: int) -> Iterable[bytes | memoryview]: ...


# What a put writes: the bytes themselves (most objects), or pieces.
Payload: TypeAlias = bytes | memoryview | Pieces


class BackendError(Exception):
    """The target cannot be used (preflight failed, outside the agent's root, ...). One line."""


class ObjectMissing(Exception):
    """A get/stat/delete on a key that does not exist (also counted as an op error)."""


def error_code(exc: BaseException) -> str:
    """How a failed operation is counted: the storage's own code (an S3 code such as
    ``SlowDown``), else the errno name of an OS error (``ENOSPC``, ``EACCES``, ``ELOOP``),
    else the exception's name."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(number, int) and number in errno.errorcode:
        return errno.errorcode[number]
    return type(exc).__name__


class WorkerIO(abc.ABC):
    """One worker thread's handle on the storage. Never shared between threads.

    ``stop`` is the stage's stop flag (set by the worker that owns this handle): an operation
    made of pieces checks it between pieces and raises ``Interrupted`` once it is set."""

    stop: StopFlag = NEVER

    @abc.abstractmethod
    def get(self, key: str) -> int:
        """Read the whole object; return the bytes read."""

    def get_block(
        self, key: str, block_size: int, rng: random.Random, size: int | None = None
    ) -> int:
        """Read ``block_size`` bytes at a random offset, a multiple of ``block_size``, in the
        object (fewer if the object is smaller); return the bytes read. ``size``: the
        object's size where the pool knows it (a backend that cannot learn it cheaply
        needs it)."""
        raise NotImplementedError(f"ranged gets are not implemented for {type(self).__name__}")

    @abc.abstractmethod
    def put(self, key: str, size: int, data: Payload) -> int:
        """Create or replace the object with the ``size`` bytes of ``data``; return the
        bytes written. Each piece of ``data`` is written before the next is taken (pieces
        may share one buffer: ``engine._data``)."""

    @abc.abstractmethod
    def stat(self, key: str) -> int:
        """Return the object's size."""

    @abc.abstractmethod
    def list(self, directory: str) -> int:
        """List one directory level; return the number of entries."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; ``ObjectMissing`` if it does not exist. A key ending in "/" is
        a directory made by ``mkdir`` (removed as ``rmdir`` does: cleanup deletes both)."""

    # -- streams: an object read or written in blocks, one op per block (fio's bs)

    def open_read(self, key: str) -> tuple[Any, int]:
        """(a handle to read ``key`` block by block, its size); ``ObjectMissing`` if it
        does not exist."""
        raise NotImplementedError(f"block reads are not implemented for {type(self).__name__}")

    def read_at(self, handle: Any, offset: int, length: int) -> int:
        """Read ``length`` bytes at ``offset`` (fewer at the end); return how many."""
        raise NotImplementedError(f"block reads are not implemented for {type(self).__name__}")

    def open_write(self, key: str) -> Any:
        """A handle to write ``key`` (created or emptied) block by block."""
        raise NotImplementedError(f"block writes are not implemented for {type(self).__name__}")

    def write_piece(self, handle: Any, data: bytes | memoryview) -> int:
        """Append ``data``; return the bytes written."""
        raise NotImplementedError(f"block writes are not implemented for {type(self).__name__}")

    def close_stream(self, handle: Any, *, wrote: bool = False) -> None:  # noqa: B027
        """Done with a handle (``wrote``: a whole object was written: fsync if asked)."""

    def mkdir(self, key: str) -> None:
        """Make the directory ``key`` (ends in "/"); its parents are made as needed."""
        raise NotImplementedError(f"mkdir is not implemented for {type(self).__name__}")

    def rmdir(self, key: str) -> None:
        """Remove the empty directory ``key`` (ends in "/"); ``ObjectMissing`` if gone."""
        self.delete(key)

    # how many keys ``delete_many`` takes at once (1: it deletes one by one)
    batch_delete = 1

    def delete_many(self, keys: Sequence[str]) -> builtins.list[tuple[str, str, str]]:
        """Delete several objects; return (key, code, message) for those that failed.
        Objects already gone are not failures."""
        failed = []
        for key in keys:
            try:
                self.delete(key)
            except ObjectMissing:
                pass
            except Exception as exc:
                failed.append((key, getattr(exc, "code", type(exc).__name__), str(exc)))
        return failed

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the worker's resources."""


class Backend(abc.ABC):
    scheme = ""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for READY and the results."""

    def environment(self) -> dict[str, str]:
        """Facts about the storage for the results (file system type and mount options, the
        endpoints); see ``trio_bench.environment.TARGET_KEYS``."""
        return {}

    @abc.abstractmethod
    def preflight(self, *, writes: bool) -> list[str]:
        """Check the target is usable; return what was checked. ``BackendError`` if not."""

    @abc.abstractmethod
    def scan(self, directory: str) -> dict[str, int]:
        """Objects directly under ``directory``: name -> size (empty if it does not exist)."""

    @abc.abstractmethod
    def scan_dirs(self, directory: str, head: str) -> list[str]:
        """Directories directly under ``directory`` whose names start with ``head``, as the
        keys ``mkdir`` made them under (name + "/"): what a cleanup after the fact removes."""

    @abc.abstractmethod
    def worker_io(self, worker: int) -> WorkerIO:
        """A handle for one worker thread."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


def open_backend(config: Config, *, root: str | None = None, agent_index: int = 0) -> Backend:
    """The backend for ``config.target``. ``root`` confines file:// targets (agent --root)."""
    from ._file import FileBackend
    from ._null import NullBackend
    from ._s3 import S3Backend
    from ._spread import SpreadBackend

    parts = urlsplit(config.target)
    endpoints = config.multi_endpoint.endpoints if config.multi_endpoint else ()
    if not spreads(config):
        endpoints = ()
    if parts.scheme == "null":
        return NullBackend()
    if parts.scheme == "s3":
        gateways = [form[0] for form in map(s3_endpoint_form, endpoints) if form]
        if gateways:  # s3://HOST:PORT/bucket/prefix/: the run's S3 endpoints
            s3 = attrs.evolve(config.s3, endpoint=None, endpoints=tuple(gateways))
            config = attrs.evolve(config, s3=s3)
        return S3Backend(config, agent_index=agent_index)
    if parts.scheme in ("file", "direct"):
        backends = [
            FileBackend(
                urlsplit(uri).path,
                root=root,
                fsync=config.file.fsync,
                buffer_size=config.file.buffer_size,
                page_cache_mode=config.page_cache_mode,
                direct=parts.scheme == "direct",
            )
            for uri in endpoints or [config.target]
        ]
        if len(backends) == 1:
            return backends[0]
        return SpreadBackend(backends, agent_index=agent_index, concurrency=config.concurrency)
    raise BackendError(f"target: no backend for scheme {parts.scheme!r}")
