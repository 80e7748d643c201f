"""One task that reads many TCP connections: for an owner of thousands (the controller).

Each ``Connection`` otherwise has a reader task that waits for its own socket: per frame, a
poll registration, a task wake-up and a failed read before the wait. A ``ReadPoller`` keeps
every socket registered in one epoll instance of its own, waits for that, and calls each
ready connection's ``read_ready`` (one read, then the frames are decoded and handled as a
reader task would) -- at most ``BATCH`` connections before it lets other tasks run, so a
burst of thousands of STATS never holds the event loop for long. Level-triggered: a
connection with more bytes than one read is simply ready again.

Linux only (epoll); elsewhere ``available()`` is False and connections read themselves.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection

BATCH = 64  # connections read per turn before other tasks get theirs


def available() -> bool:
    return hasattr(select, "epoll")


class ReadPoller:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._owners: dict[int, Connection] = {}

    def add(self, fd: int, conn: Connection) -> None:
        """Read ``conn``'s socket ``fd`` from now on."""
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:  # a closed socket's number, reused: take it over
            self._epoll.modify(fd, select.EPOLLIN)
        self._owners[fd] = conn

    def remove(self, fd: int, conn: Connection) -> None:
        """Stop reading ``fd`` for ``conn`` (not for a newer socket that got its number)."""
        if self._owners.get(fd) is conn:
            del self._owners[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # closed already: the kernel dropped it from the set

    async def run(self) -> None:
        """Until cancelled: wait for ready sockets, read them ``BATCH`` at a time."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll)
                ready = self._epoll.poll(0, BATCH)
                for fd, _events in ready:
                    conn = self._owners.get(fd)
                    if conn is not None:
                        conn.read_ready()
                    else:  # not ours any more: never report it again
                        try:
                            self._epoll.unregister(fd)
                        except (OSError, ValueError):
                            pass
                # back to waiting: a checkpoint, so other tasks run between batches
        finally:
            self._epoll.close()
