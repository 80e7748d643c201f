"""file://: objects are files under the target directory.

get reads the whole file into the worker's reused buffer (no allocation per op); put writes
the pieces of its data (``_data``: unique unless deduplication is asked for; optionally
fsyncs); stat, list (one directory),
delete; missing directories are created on demand. Plain ``os`` calls on file descriptors:
no Python file objects, no Trio file API on the hot path.

Every operation is relative to an open directory descriptor (``openat`` and friends), one per
directory the run touches, opened once and cached. That is also how ``root`` (the agent's
``--root``) is enforced without a race: a directory is opened first and its descriptor's real
path checked inside the root afterwards (what is checked is what is used, even if someone
swaps a directory for a symlink meanwhile), and under a root every file is opened with
``O_NOFOLLOW``, so a symlink planted at an object's name (pointing anywhere) is refused
(``ELOOP``) by get, put, prepare and stat; delete and cleanup unlink the name itself, never
what a symlink points to.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import secrets
import stat as stat_module
import threading
from pathlib import Path

from trio_bench.environment import mount_of
from trio_bench.stopping import Interrupted

from ._backend import Backend, BackendError, ObjectMissing, Payload, WorkerIO

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ = os.O_RDONLY | _CLOEXEC
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_AUTO_SEQUENTIAL_AT = 64 * 1024 * 1024  # sai3-bench's "auto": sequential hint from 64 MiB
_DIRECT = getattr(os, "O_DIRECT", 0)
# direct://: buffers, lengths and offsets in multiples of this (the largest logical block
# size in common use; a 512-byte device accepts it too)
ALIGN = 4096


def aligned_buffer(size: int) -> mmap.mmap:
    """``size`` bytes at a page-aligned address (what O_DIRECT needs), zeroed."""
    return mmap.mmap(-1, max(size, 1))


def _fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (Linux), or None where that cannot be known."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


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
        direct: bool = False,
    ) -> None:
        self.direct = direct
        if direct:
            self.scheme = "direct"
            buffer_size = -(-buffer_size // ALIGN) * ALIGN
        self.base = path if path.endswith("/") else path + "/"
        self.root = os.path.realpath(root) if root else None
        self.fsync = fsync
        self.buffer_size = max(4096, buffer_size)
        self.page_cache_mode = page_cache_mode
        # files are opened without following a final symlink when confined to a root
        self.nofollow = _NOFOLLOW if self.root is not None else 0
        self._dirs: dict[str, int] = {}  # "" or "a/b/" -> open directory descriptor
        # the same by what precedes a key's last "/" ("" or "a/b"): the hot path's lookup
        self._heads: dict[str, int] = {}
        self._dirs_lock = threading.Lock()
        if self.root is not None:
            self.check_confined("")

    def describe(self) -> str:
        return f"{self.scheme}://{self.base}"

    def environment(self) -> dict[str, str]:
        return mount_of(self.base)

    def _outside(self, resolved: str) -> bool:
        root = self.root
        return root is not None and resolved != root and not resolved.startswith(root + os.sep)

    def check_confined(self, directory: str) -> None:
        """Refuse a directory that resolves (symlinks followed) outside ``root``. An early,
        clear refusal; the descriptors checked in ``directory_fd`` are the guarantee."""
        if self.root is None:
            return
        resolved = os.path.realpath(self.base + directory)
        if self._outside(resolved):
            where = f"file://{self.base}{directory}"
            raise BackendError(
                f"target: {where} resolves to {resolved}, outside the agent's --root {self.root}"
            )

    # -- directory descriptors

    def directory_fd(self, directory: str, *, create: bool = False) -> int:
        """The open descriptor of ``directory`` ("" is the target itself, else "a/b/"),
        opening (and with ``create`` making) each level once. Under a root, each level's
        descriptor is checked to be inside it. ``FileNotFoundError`` if it does not exist."""
        fd = self._dirs.get(directory)
        if fd is not None:
            return fd
        with self._dirs_lock:
            return self._open_chain(directory, create)

    def _open_chain(self, directory: str, create: bool) -> int:
        """``directory_fd`` with the lock held: parents first, each opened once."""
        fd = self._dirs.get(directory)
        if fd is not None:
            return fd
        if not directory:
            fd = self._open_checked(None, self.base.rstrip("/") or "/", "", create)
        else:
            parent, _, name = directory[:-1].rpartition("/")
            parent_fd = self._open_chain(parent + "/" if parent else "", create)
            fd = self._open_checked(parent_fd, name, directory, create)
        self._dirs[directory] = fd
        self._heads[directory[:-1]] = fd
        return fd

    def listing_fd(self, directory: str) -> int:
        """A new descriptor of ``directory`` for one listing: a listing moves its descriptor's
        position, and the cached one is shared by every worker."""
        return os.open(".", _DIRECTORY, dir_fd=self.directory_fd(directory))

    def _open_checked(self, parent_fd: int | None, name: str, directory: str, create: bool) -> int:
        try:
            fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o777, dir_fd=parent_fd)
            except FileExistsError:
                pass  # another worker made it first
            fd = os.open(name, _DIRECTORY, dir_fd=parent_fd)
        if self.root is not None:
            real = _fd_path(fd)
            if real is not None and self._outside(real):
                os.close(fd)
                raise OSError(
                    errno.EXDEV,
                    f"file://{self.base}{directory} leads to {real}, outside the agent's "
                    f"--root {self.root}",
                )
        return fd

    def close(self) -> None:
        with self._dirs_lock:
            for fd in self._dirs.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._dirs.clear()
            self._heads.clear()

    # -- checks and listings (run in a thread, not per operation)

    def preflight(self, *, writes: bool) -> list[str]:
        checks = []
        base = Path(self.base)
        where = f"target: file://{self.base}"
        if not base.exists():
            # One rule for every workload: triobench makes at most the target's last
            # directory, and only to write there. A mistyped mount point (/mnt/nsf/bench/)
            # must not silently become a directory on the root disk.
            if not writes:
                raise BackendError(f"{where} does not exist (this workload only reads)")
            if not base.parent.is_dir():
                raise BackendError(
                    f"{where} does not exist, nor does {base.parent}: triobench creates at "
                    "most the target's last directory (is the path or the mount right?)"
                )
            try:
                base.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                raise BackendError(f"{where}: cannot create it: {exc.strerror}") from None
            checks.append(f"created {self.base}")
            self.check_confined("")  # mkdir followed symlinks the check could not see before
        if not base.is_dir():
            raise BackendError(f"{where} is not a directory")
        if not os.access(self.base, os.R_OK | os.X_OK):
            raise BackendError(f"target: {self.base} is not readable")
        try:
            base_fd = self.directory_fd("")
        except OSError as exc:  # EXDEV's message names the path already
            text = exc.strerror if exc.errno == errno.EXDEV else f"{where}: {exc.strerror}"
            raise BackendError(text if exc.strerror else f"{where}: {exc}") from None
        checks.append(f"{self.base} is a readable directory")
        if writes:
            probe = f".triobench-preflight-{secrets.token_hex(4)}"
            try:
                fd = os.open(probe, _WRITE | self.nofollow, 0o644, dir_fd=base_fd)
                try:
                    os.write(fd, b"triobench")
                finally:
                    os.close(fd)
                fd = os.open(probe, _READ, dir_fd=base_fd)
                try:
                    if os.read(fd, 64) != b"triobench":
                        raise BackendError(f"target: {self.base}: read back different data")
                finally:
                    os.close(fd)
                os.unlink(probe, dir_fd=base_fd)
            except OSError as exc:
                raise BackendError(
                    f"target: {self.base} is not writable: {exc.strerror or exc}"
                ) from None
            checks.append(f"{self.base} is writable (created, read back, deleted a probe file)")
        if self.direct:
            self._probe_direct(base_fd, writes)
            checks.append(f"{self.base} takes O_DIRECT reads" + (" and writes" if writes else ""))
        return checks

    def _probe_direct(self, base_fd: int, writes: bool) -> None:
        """Refuse a file system without O_DIRECT (some FUSE and network file systems; tmpfs
        before Linux 6.6) before the run, not as an error on every operation."""
        probe = f".triobench-direct-{secrets.token_hex(4)}"
        block = aligned_buffer(ALIGN)
        try:
            if writes:
                fd = os.open(probe, _WRITE | _DIRECT | self.nofollow, 0o644, dir_fd=base_fd)
                try:
                    os.write(fd, block)
                finally:
                    os.close(fd)
            else:  # a read-only workload: open the target directory's first file
                with os.scandir(base_fd) as entries:
                    probe = next((e.name for e in entries if e.is_file()), "")
                if not probe:
                    return
            fd = os.open(probe, _READ | _DIRECT | self.nofollow, dir_fd=base_fd)
            try:
                os.preadv(fd, [block], 0)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackendError(
                f"target: direct://{self.base}: this file system refuses O_DIRECT "
                f"({exc.strerror or exc}); use file:// (page cache) instead"
            ) from None
        finally:
            if writes:
                try:
                    os.unlink(probe, dir_fd=base_fd)
                except OSError:
                    pass

    def scan(self, directory: str) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            fd = self.listing_fd(directory)
        except (FileNotFoundError, NotADirectoryError):
            return out
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        out[entry.name] = entry.stat(follow_symlinks=False).st_size
        finally:
            os.close(fd)
        return out

    def scan_dirs(self, directory: str, head: str) -> list[str]:
        try:
            fd = self.listing_fd(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        try:
            with os.scandir(fd) as entries:
                return [
                    entry.name + "/"
                    for entry in entries
                    if entry.name.startswith(head) and entry.is_dir(follow_symlinks=False)
                ]
        finally:
            os.close(fd)

    def worker_io(self, worker: int) -> WorkerIO:
        return DirectIO(self) if self.direct else FileIO(self)


class FileIO(WorkerIO):
    def __init__(self, backend: FileBackend) -> None:
        self.backend = backend
        self.dirs = backend._dirs  # read without a lock: dict lookups are atomic
        self.heads = backend._heads
        self.nofollow = backend.nofollow
        self.read_flags = _READ | self.nofollow
        self.write_flags = _WRITE | self.nofollow
        self.fsync = backend.fsync
        self.buffer = bytearray(backend.buffer_size)
        self.buffers: list[bytearray | memoryview] = [self.buffer]
        self.view = memoryview(self.buffer)
        mode = backend.page_cache_mode
        self.advise = None if mode == "normal" else mode

    def _where(self, key: str, *, create: bool = False) -> tuple[int, str]:
        """(directory descriptor, file name) of a key."""
        directory, _, name = key.rpartition("/")
        directory = directory + "/" if directory else ""
        fd = self.dirs.get(directory)
        if fd is None:
            fd = self.backend.directory_fd(directory, create=create)
        return fd, name

    def _open_existing(self, key: str) -> int:
        head, _, name = key.rpartition("/")
        try:
            dir_fd = self.heads.get(head)
            if dir_fd is None:
                dir_fd = self.backend.directory_fd(head + "/" if head else "")
            return os.open(name, self.read_flags, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def get(self, key: str) -> int:
        # the hot path: _open_existing written out (a call less per operation)
        head, _, name = key.rpartition("/")
        try:
            dir_fd = self.heads.get(head)
            if dir_fd is None:
                dir_fd = self.backend.directory_fd(head + "/" if head else "")
            fd = os.open(name, self.read_flags, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        try:
            if self.advise is not None:
                self._advise_before(fd)
            total = 0
            size = len(self.buffer)
            buffers = self.buffers
            stop = self.stop
            while True:
                n = os.readv(fd, buffers)
                total += n
                if n < size:
                    break
                if stop.stopped:  # a large file: stop between buffers
                    raise Interrupted(key)
            if self.advise == "dontneed":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return total
        finally:
            os.close(fd)

    def get_block(
        self, key: str, block_size: int, rng: random.Random, size: int | None = None
    ) -> int:
        fd = self._open_existing(key)
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

    def put(self, key: str, size: int, data: Payload) -> int:
        fd = self.open_write(key)
        try:
            written = 0
            stop = self.stop
            # direct:// writes through write_piece (aligned blocks); file:// inline (hot path)
            through = self.write_piece if self.write_flags & _DIRECT else None
            for piece in (data,) if isinstance(data, bytes | memoryview) else data:
                if written and stop.stopped:  # a large object: stop between pieces
                    raise Interrupted(key)
                if through is not None:
                    written += through(fd, piece)
                    continue
                n = os.write(fd, piece)
                if n < len(piece):  # a short write (a full disk says ENOSPC next)
                    n += self.write_piece(fd, memoryview(piece)[n:])
                written += n
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def stat(self, key: str) -> int:
        try:
            dir_fd, name = self._where(key)
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=not self.nofollow)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        if self.nofollow and stat_module.S_ISLNK(info.st_mode):
            raise OSError(errno.ELOOP, "a symbolic link (not followed under --root)", key)
        return info.st_size

    def list(self, directory: str) -> int:
        count = 0
        fd = self.backend.listing_fd(directory)
        try:
            with os.scandir(fd) as entries:
                for _ in entries:
                    count += 1
        finally:
            os.close(fd)
        return count

    def delete(self, key: str) -> None:
        try:
            dir_fd, name = self._where(key.rstrip("/"))
            if key.endswith("/"):
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def mkdir(self, key: str) -> None:
        dir_fd, name = self._where(key.rstrip("/"), create=True)
        os.mkdir(name, 0o777, dir_fd=dir_fd)

    # -- streams: the file stays open between its blocks, as fio keeps it

    def open_read(self, key: str) -> tuple[int, int]:
        fd = self._open_existing(key)
        try:
            if self.advise is not None:
                self._advise_before(fd)
            return fd, os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise

    def read_at(self, handle: int, offset: int, length: int) -> int:
        if length > len(self.view):
            self._grow(length)
        return os.preadv(handle, [self.view[:length]], offset)

    def open_write(self, key: str) -> int:
        dir_fd, name = self._where(key, create=True)
        return os.open(name, self.write_flags, 0o644, dir_fd=dir_fd)

    def write_piece(self, handle: int, data: bytes | memoryview) -> int:
        done = os.write(handle, data)
        while done < len(data):  # a short write (a full disk says ENOSPC next)
            done += os.write(handle, memoryview(data)[done:])
        return done

    def close_stream(self, handle: int, *, wrote: bool = False) -> None:
        try:
            if wrote and self.fsync:
                os.fsync(handle)
        finally:
            os.close(handle)

    def _grow(self, length: int) -> None:
        """A block larger than the read buffer: a buffer of its size (once)."""
        self.buffer = bytearray(length)
        self.view = memoryview(self.buffer)
        self.buffers = [self.buffer]


class DirectIO(FileIO):
    """direct://: every read and write bypasses the page cache (O_DIRECT) from aligned
    buffers. A file's length need not be aligned: its last partial block is written after
    O_DIRECT is cleared on the descriptor (what O_DIRECT cannot do), and reads of the last
    block simply come back short."""

    def __init__(self, backend: FileBackend) -> None:
        super().__init__(backend)
        self._grow(len(self.buffer))  # the read buffer, page-aligned
        self.advise = None  # no page cache to advise
        self.read_flags = _READ | _DIRECT | self.nofollow
        self.write_flags = _WRITE | _DIRECT | self.nofollow

    def _grow(self, length: int) -> None:
        self.aligned = aligned_buffer(length)
        self.buffer = self.aligned  # type: ignore[assignment]
        self.view = memoryview(self.aligned)
        self.buffers = [self.view]

    def write_piece(self, handle: int, data: bytes | memoryview) -> int:
        """Whole blocks with O_DIRECT; an object's last partial block after clearing it."""
        view = self._aligned(data)
        whole = len(view) - len(view) % ALIGN
        done = super().write_piece(handle, view[:whole]) if whole else 0
        if whole < len(view):
            fcntl.fcntl(handle, fcntl.F_SETFL, fcntl.fcntl(handle, fcntl.F_GETFL) & ~_DIRECT)
            done += super().write_piece(handle, view[whole:])
        return done

    def _aligned(self, piece: bytes | memoryview) -> memoryview:
        """The piece itself if it starts at an aligned address (the data source's buffer
        does), else a copy in this worker's aligned buffer."""
        view = memoryview(piece)
        if isinstance(piece, memoryview) and isinstance(piece.obj, mmap.mmap):
            return view
        if len(view) > len(self.aligned):
            self._grow(len(view))
        self.view[: len(view)] = view
        return self.view[: len(view)]
