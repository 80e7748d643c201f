"""file://: objects are files under the target directory.

get reads the whole file into the worker's reused buffer (no allocation per op); put writes
from one shared block of data generated once (optionally fsyncs); stat, list (one directory),
delete; missing directories are created on demand. Plain ``os`` calls on file descriptors:
no Python file objects, no Trio file API on the hot path.

With ``root`` (the agent's ``--root``), the target and every directory the run touches must
resolve (symlinks followed) inside it; the engine checks directories before any I/O.
"""

from __future__ import annotations

import os
import random
import secrets
from pathlib import Path

from ._backend import Backend, BackendError, ObjectMissing, WorkerIO

_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_AUTO_SEQUENTIAL_AT = 64 * 1024 * 1024  # sai3-bench's "auto": sequential hint from 64 MiB


class FileBackend(Backend):
    scheme = "file"

    def __init__(
        self,
        path: str,
        *,
        root: str | None = None,
        fsync: bool = False,
        buffer_size: int = 1024 * 1024,
        page_cache_mode: str = "normal",
    ) -> None:
        self.base = path if path.endswith("/") else path + "/"
        self.root = os.path.realpath(root) if root else None
        self.fsync = fsync
        self.buffer_size = max(4096, buffer_size)
        self.page_cache_mode = page_cache_mode
        if self.root is not None:
            self.check_confined("")

    def describe(self) -> str:
        return f"file://{self.base}"

    def check_confined(self, directory: str) -> None:
        """Refuse a directory that resolves (symlinks followed) outside ``root``."""
        if self.root is None:
            return
        resolved = os.path.realpath(self.base + directory)
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            where = f"file://{self.base}{directory}"
            raise BackendError(
                f"target: {where} resolves to {resolved}, outside the agent's --root {self.root}"
            )

    def preflight(self, *, writes: bool) -> list[str]:
        checks = []
        base = Path(self.base)
        if writes:
            try:
                base.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"target: cannot create {self.base}: {exc.strerror}") from None
            self.check_confined("")  # mkdir followed symlinks the check could not see before
        if not base.is_dir():
            raise BackendError(f"target: {self.base} is not a directory")
        if not os.access(self.base, os.R_OK | os.X_OK):
            raise BackendError(f"target: {self.base} is not readable")
        checks.append(f"{self.base} is a readable directory")
        if writes:
            probe = f"{self.base}.triobench-preflight-{secrets.token_hex(4)}"
            try:
                fd = os.open(probe, _WRITE, 0o644)
                try:
                    os.write(fd, b"triobench")
                finally:
                    os.close(fd)
                with open(probe, "rb") as f:
                    if f.read() != b"triobench":
                        raise BackendError(f"target: {self.base}: read back different data")
                os.unlink(probe)
            except OSError as exc:
                raise BackendError(
                    f"target: {self.base} is not writable: {exc.strerror or exc}"
                ) from None
            checks.append(f"{self.base} is writable (created, read back, deleted a probe file)")
        return checks

    def scan(self, directory: str) -> dict[str, int]:
        out = {}
        try:
            with os.scandir(self.base + directory) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        out[entry.name] = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
        return out

    def make_directory(self, directory: str) -> None:
        os.makedirs(self.base + directory, exist_ok=True)
        self.check_confined(directory)

    def worker_io(self, worker: int) -> WorkerIO:
        return FileIO(self)


class FileIO(WorkerIO):
    def __init__(self, backend: FileBackend) -> None:
        self.base = backend.base
        self.fsync = backend.fsync
        self.buffer = bytearray(backend.buffer_size)
        self.buffers = [self.buffer]
        self.view = memoryview(self.buffer)
        mode = backend.page_cache_mode
        self.advise = None if mode == "normal" else mode

    def get(self, key: str) -> int:
        try:
            fd = os.open(self.base + key, _READ)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            if self.advise is not None:
                self._advise_before(fd)
            total = 0
            size = len(self.buffer)
            buffers = self.buffers
            while True:
                n = os.readv(fd, buffers)
                total += n
                if n < size:
                    break
            if self.advise == "dontneed":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return total
        finally:
            os.close(fd)

    def get_block(self, key: str, block_size: int, rng: random.Random) -> int:
        try:
            fd = os.open(self.base + key, _READ)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            blocks = max(1, os.fstat(fd).st_size // block_size)
            offset = rng.randrange(blocks) * block_size
            n = os.preadv(fd, [self.view[:block_size]], offset)
            if self.advise == "dontneed":
                os.posix_fadvise(fd, offset, block_size, os.POSIX_FADV_DONTNEED)
            return n
        finally:
            os.close(fd)

    def _advise_before(self, fd: int) -> None:
        mode = self.advise
        if mode == "auto":
            size = os.fstat(fd).st_size
            mode = "sequential" if size >= _AUTO_SEQUENTIAL_AT else "random"
        if mode == "sequential":
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        elif mode == "random":
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

    def put(self, key: str, size: int, fill: memoryview) -> int:
        path = self.base + key
        try:
            fd = os.open(path, _WRITE, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, _WRITE, 0o644)
        try:
            chunk = len(fill)
            written = 0
            while written < size:
                written += os.write(fd, fill[: min(chunk, size - written)])
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def stat(self, key: str) -> int:
        try:
            return os.stat(self.base + key).st_size
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def list(self, directory: str) -> int:
        count = 0
        with os.scandir(self.base + directory) as entries:
            for _ in entries:
                count += 1
        return count

    def delete(self, key: str) -> None:
        try:
            os.unlink(self.base + key)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
