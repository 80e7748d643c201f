"""sai3-bench's ``multi_endpoint`` for file:// and direct://: several mount points of one
namespace (NFS or a parallel file system mounted through different NICs or servers). Each
worker keeps one mount: worker w of agent i uses endpoint (i x concurrency + w) mod n, so the
workers of all agents spread evenly. Listings come from the first mount (the namespace is the
same through each); preflight checks every one."""

from __future__ import annotations

from collections.abc import Sequence

from ._backend import Backend, WorkerIO
from ._file import FileBackend


class SpreadBackend(Backend):
    def __init__(
        self, backends: Sequence[FileBackend], *, agent_index: int, concurrency: int
    ) -> None:
        self.backends = list(backends)
        self.first = self.backends[0]
        self.scheme = self.first.scheme
        self.offset = agent_index * concurrency

    def describe(self) -> str:
        more = len(self.backends) - 1
        return self.first.describe() + (f" (+ {more} more endpoint(s))" if more else "")

    def environment(self) -> dict[str, str]:
        return self.first.environment()

    def check_confined(self, directory: str) -> None:
        for backend in self.backends:
            backend.check_confined(directory)

    def preflight(self, *, writes: bool) -> list[str]:
        checks = []
        for backend in self.backends:
            checks += backend.preflight(writes=writes)
        return checks

    def scan(self, directory: str) -> dict[str, int]:
        return self.first.scan(directory)

    def scan_dirs(self, directory: str, head: str) -> list[str]:
        return self.first.scan_dirs(directory, head)

    def endpoint_of(self, worker: int) -> FileBackend:
        return self.backends[(self.offset + worker) % len(self.backends)]

    def worker_io(self, worker: int) -> WorkerIO:
        return self.endpoint_of(worker).worker_io(worker)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
