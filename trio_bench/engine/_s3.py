"""s3://bucket/prefix/: the S3 client behind the engine's Backend/WorkerIO interface.

Each worker thread owns one S3Client (one keep-alive connection). With several endpoints,
worker w of agent i uses endpoint (i x concurrency + w) mod n, so the load spreads over all
gateways. Cleanup deletes in DeleteObjects batches of up to 1000 keys.
"""

from __future__ import annotations

import builtins
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from trio_bench.config import Config
from trio_bench.environment import MAX_FACT
from trio_bench.s3 import (
    DELETE_BATCH,
    ConnectionFailed,
    S3Client,
    S3ConfigError,
    S3Error,
    resolve,
    tls_context,
)

from ._backend import Backend, BackendError, Payload, WorkerIO

# After a connection failure a worker waits this long before its next attempt: a dead
# endpoint then costs tens of counted errors per second per worker, not a busy loop.
RECONNECT_PAUSE_S = 0.05
T = TypeVar("T")
_CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


class S3Backend(Backend):
    scheme = "s3"

    def __init__(self, config: Config, *, agent_index: int = 0) -> None:
        parts = urlsplit(config.target)
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            self.settings = resolve(parts.netloc, prefix, config.s3)
            self.tls = (
                tls_context(verify=self.settings.verify_tls, ca_bundle=self.settings.ca_bundle)
                if any(e.scheme == "https" for e in self.settings.endpoints)
                else None
            )
        except S3ConfigError as exc:
            raise BackendError(str(exc)) from None
        self.bucket = parts.netloc
        self.prefix = prefix
        self.agent_index = agent_index
        self.concurrency = config.concurrency

    def describe(self) -> str:
        endpoints = self.settings.endpoints
        more = f" (+{len(endpoints) - 1} more endpoints)" if len(endpoints) > 1 else ""
        return f"s3://{self.bucket}/{self.prefix} at {endpoints[0].url}{more}"

    def environment(self) -> dict[str, str]:
        return {"s3_endpoints": ",".join(e.url for e in self.settings.endpoints)[:MAX_FACT]}

    def client(self, index: int = 0) -> S3Client:
        endpoints = self.settings.endpoints
        return S3Client(self.settings, endpoints[index % len(endpoints)], self.tls)

    def preflight(self, *, writes: bool) -> list[str]:
        checks = []
        for i, endpoint in enumerate(self.settings.endpoints):
            client = self.client(i)
            try:
                client.check_bucket()
            except S3Error as exc:
                raise BackendError(self._explain(exc, endpoint.url)) from None
            except ConnectionFailed as exc:
                raise BackendError(f"s3: cannot reach {endpoint.url}: {exc}") from None
            finally:
                client.close()
            checks.append(
                f"bucket {self.bucket} exists at {endpoint.url}; the credentials can list it"
            )
        if writes:
            checks.append(self._write_probe())
        return checks

    def _explain(self, exc: S3Error, url: str) -> str:
        if exc.code == "NoSuchBucket" or (exc.status == 404 and exc.code == "NotFound"):
            return f"s3: bucket {self.bucket} does not exist at {url}"
        if exc.code in _CREDENTIAL_CODES or exc.status == 403:
            return (
                f"s3: {url} refused the credentials (access key {self.settings.access_key}): "
                f"{exc.code}: {exc.message or 'access denied'}"
            )
        return f"s3: cannot list bucket {self.bucket} at {url}: {exc}"

    def _write_probe(self) -> str:
        key = f"{self.prefix}.triobench-preflight-{secrets.token_hex(4)}"
        client = self.client(0)
        step = "PUT"
        try:
            client.put(key, 16, b"triobench-probe!")
            step = "GET"
            if client.get(key) != 16:
                raise BackendError(f"s3: write probe: read back a different size from {key}")
            step = "DELETE"
            client.delete(key)
        except (S3Error, ConnectionFailed) as exc:
            code = getattr(exc, "code", "")
            hint = " (the credentials may be read-only)" if code in _CREDENTIAL_CODES else ""
            raise BackendError(f"s3: write probe failed at {step} {key}: {exc}{hint}") from None
        finally:
            client.close()
        return f"write probe: put, read back and deleted {key}"

    def scan(self, directory: str) -> dict[str, int]:
        base = self.prefix + directory
        client = self.client(0)
        try:
            return {
                key[len(base) :]: size
                for page in client.list_pages(base, delimiter="/")
                for key, size in page
            }
        finally:
            client.close()

    def scan_dirs(self, directory: str, head: str) -> list[str]:
        """mkdir's directory markers (empty objects named ``dir/``) under ``directory``."""
        base = self.prefix + directory
        client = self.client(0)
        try:
            names = [key[len(base) :] for page in client.list_pages(base + head) for key, _ in page]
        finally:
            client.close()
        return [name for name in names if name.endswith("/") and name.count("/") == 1]

    def worker_io(self, worker: int) -> WorkerIO:
        return S3WorkerIO(self.client(self.agent_index * self.concurrency + worker), self.prefix)


class S3WorkerIO(WorkerIO):
    batch_delete = DELETE_BATCH

    def __init__(self, client: S3Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._failed_at = 0.0

    def _pause_after_failure(self) -> None:
        if self._failed_at:
            wait = self._failed_at + RECONNECT_PAUSE_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._failed_at = 0.0

    def _call(self, operation: Callable[..., T], *args: Any) -> T:
        """Run one client operation; after a connection failure the next one waits first."""
        self._pause_after_failure()
        try:
            return operation(*args)
        except ConnectionFailed:
            self._failed_at = time.monotonic()
            raise

    def get(self, key: str) -> int:
        return self._call(self.client.get, self.prefix + key)

    def get_block(
        self, key: str, block_size: int, rng: random.Random, size: int | None = None
    ) -> int:
        if size is None:  # not in the pool's listing (it should be): ask
            size = self._call(self.client.head, self.prefix + key)
        offset = rng.randrange(max(1, size // block_size)) * block_size
        return self._call(self.client.get_range, self.prefix + key, offset, block_size)

    def put(self, key: str, size: int, data: Payload) -> int:
        return self._call(self.client.put, self.prefix + key, size, data, self.stop)

    def stat(self, key: str) -> int:
        return self._call(self.client.head, self.prefix + key)

    def list(self, directory: str) -> int:
        pages = self.client.list_pages  # a generator: consumed inside the call
        return self._call(
            lambda: sum(len(page) for page in pages(self.prefix + directory, delimiter="/"))
        )

    def delete(self, key: str) -> None:
        self._call(self.client.delete, self.prefix + key)

    def open_read(self, key: str) -> tuple[str, int]:
        return key, self._call(self.client.head, self.prefix + key)

    def read_at(self, handle: str, offset: int, length: int) -> int:
        return self._call(self.client.get_range, self.prefix + handle, offset, length)

    def mkdir(self, key: str) -> None:  # a directory marker: an empty object named "dir/"
        self._call(self.client.put, self.prefix + key, 0, b"")

    def delete_many(self, keys: Sequence[str]) -> builtins.list[tuple[str, str, str]]:
        failed = self._call(self.client.delete_many, [self.prefix + k for k in keys])
        return [(k[len(self.prefix) :], code, message) for k, code, message in failed]

    def close(self) -> None:
        self.client.close()
