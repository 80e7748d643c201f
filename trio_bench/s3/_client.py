"""S3 operations for one worker thread: one keep-alive connection, one signer.

Every non-2xx answer raises ``S3Error`` with the S3 error code (``NoSuchKey``, ``SlowDown``,
``AccessDenied``...) and message; every connection failure raises ``ConnectionFailed``. The
engine counts both per op kind and code. Nothing is retried.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Protocol, TypeAlias

from trio_bench.stopping import NEVER, Interrupted, StopFlag

from ._http import HttpConnection, Response, tls_context
from ._settings import Endpoint, S3Settings
from ._sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer, query_string, quote_key

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys

# A request body: pieces, iterated once to send (twice with sign_payload). A body whose
# pieces share a buffer says ``volatile = True``: each piece is sent before the next.
Body: TypeAlias = Collection[bytes | memoryview] | Iterable[bytes | memoryview]


class Pieces(Protocol):
    """An object's data as pieces, again on every iteration, and any range of them."""

    def __iter__(self) -> Iterator[bytes | memoryview]: ...

    def part(self, offset: int, length: int) -> Iterable[bytes | memoryview]: ...


Payload: TypeAlias = bytes | memoryview | Pieces  # an object's bytes, or its pieces


class S3Error(Exception):
    """A non-2xx answer. ``code``: the S3 error code (or ``HTTP<status>`` without one)."""

    def __init__(self, status: int, code: str, message: str, what: str) -> None:
        super().__init__(f"{what}: {status} {code}: {message}".rstrip(": "))
        self.status = status
        self.code = code
        self.message = message


def _xml(response: Response, what: str) -> ET.Element:
    """The answer's XML with namespaces dropped: servers differ in the namespace they
    declare (s3rver uses a misspelt one), and element names are what matters."""
    try:
        root = ET.fromstring(response.body)
    except ET.ParseError as exc:
        raise S3Error(response.status, "MalformedXML", f"unparsable answer ({exc})", what) from None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag[:1] == "{":
            element.tag = element.tag.rpartition("}")[2]
    return root


def _find(element: ET.Element, name: str) -> str:
    found = element.find(name)
    return (found.text or "") if found is not None else ""


def _error_from(response: Response, what: str) -> S3Error:
    code, message = f"HTTP{response.status}", ""
    if response.body:
        try:
            root = _xml(response, what)
            code = _find(root, "Code") or code
            message = _find(root, "Message")
        except S3Error:
            message = response.body[:200].decode(errors="replace")
    elif response.status == 404:
        code = "NotFound"
    elif response.status == 403:
        code = "Forbidden"
    return S3Error(response.status, code, message, what)


class S3Client:
    def __init__(
        self, settings: S3Settings, endpoint: Endpoint, tls: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.endpoint = endpoint
        if tls is None and endpoint.scheme == "https":
            tls = tls_context(verify=settings.verify_tls, ca_bundle=settings.ca_bundle)
        self.http = HttpConnection(endpoint, timeout_s=settings.timeout_s, tls=tls)
        self.signer = Signer(
            settings.access_key, settings.secret_key, settings.region, settings.session_token
        )
        if settings.addressing == "virtual":
            self.host = f"{settings.bucket}.{endpoint.url.split('://', 1)[1]}"
            self._base = ""
        else:
            self.host = endpoint.url.split("://", 1)[1]
            self._base = f"/{settings.bucket}"

    def close(self) -> None:
        self.http.close()

    # -- one request

    def _request(
        self,
        method: str,
        key: str | None,
        params: Sequence[tuple[str, str]] = (),
        *,
        body: Body = (),
        length: int = 0,
        extra: Sequence[tuple[str, str]] = (),
        keep_body: bool = True,
        what: str = "",
    ) -> Response:
        target, headers = self.prepare(method, key, params, body=body, length=length, extra=extra)
        response = self.http.request(method, target, headers, body, keep_body=keep_body)
        if not 200 <= response.status < 300:
            raise _error_from(response, what or f"{method} {key or self.settings.bucket}")
        return response

    def prepare(
        self,
        method: str,
        key: str | None,
        params: Sequence[tuple[str, str]] = (),
        *,
        body: Body = (),
        length: int = 0,
        extra: Sequence[tuple[str, str]] = (),
        amz_date: str | None = None,
    ) -> tuple[str, list[tuple[str, str]]]:
        """The request target and signed headers (separate from sending, for tests)."""
        path = self._base + ("/" + quote_key(key) if key is not None else "/")
        query = query_string(params)
        if body and self.settings.sign_payload:
            digest = hashlib.sha256()
            for chunk in body:
                digest.update(chunk)
            payload = digest.hexdigest()
        else:
            payload = UNSIGNED_PAYLOAD if body else EMPTY_SHA256
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers = [
            ("host", self.host),
            ("x-amz-date", amz_date),
            ("x-amz-content-sha256", payload),
            *extra,
        ]
        if body or method in ("PUT", "POST"):
            headers.append(("content-length", str(length)))
        if self.settings.session_token:
            headers.append(("x-amz-security-token", self.settings.session_token))
        headers.append(
            (
                "authorization",
                self.signer.authorization(method, path, query, headers, payload, amz_date),
            )
        )
        return (f"{path}?{query}" if query else path), headers

    # -- operations

    def check_bucket(self) -> None:
        """A one-key listing: unlike HEAD, its error answers carry the S3 error code
        (NoSuchBucket, AccessDenied, SignatureDoesNotMatch, InvalidAccessKeyId)."""
        self._request(
            "GET",
            None,
            [("list-type", "2"), ("max-keys", "1")],
            what=f"bucket {self.settings.bucket}",
        )

    def get(self, key: str) -> int:
        return self._request("GET", key, keep_body=False, what=f"GET {key}").received

    def get_range(self, key: str, offset: int, length: int) -> int:
        """GET ``length`` bytes from ``offset`` (fewer at the object's end): 206."""
        extra = [("range", f"bytes={offset}-{offset + length - 1}")]
        response = self._request(
            "GET", key, extra=extra, keep_body=False, what=f"GET {key} {extra[0][1]}"
        )
        return response.received

    def head(self, key: str) -> int:
        response = self._request("HEAD", key, what=f"HEAD {key}")
        length = response.header(b"content-length")
        return int(length) if length else 0

    def put(self, key: str, size: int, data: Payload, stop: StopFlag = NEVER) -> int:
        """PutObject, or a multipart upload above the threshold; a multipart upload checks
        ``stop`` between parts and, once it is set, aborts the upload (``Interrupted``)."""
        if size > self.settings.multipart_threshold:
            return self._multipart(key, size, data, stop)
        body = [data] if isinstance(data, bytes | memoryview) else data
        self._request("PUT", key, body=body, length=size, what=f"PUT {key}")
        return size

    def _multipart(self, key: str, size: int, data: Payload, stop: StopFlag) -> int:
        started = self._request("POST", key, [("uploads", "")], what=f"CreateMultipartUpload {key}")
        upload = _find(_xml(started, f"CreateMultipartUpload {key}"), "UploadId")
        if not upload:
            raise S3Error(
                started.status, "MalformedXML", "no UploadId", f"CreateMultipartUpload {key}"
            )
        parts: list[tuple[int, str]] = []
        try:
            offset, number = 0, 1
            while offset < size:
                if stop.stopped:
                    raise Interrupted(key)  # aborted below: no upload is left behind
                length = min(self.settings.part_size, size - offset)
                response = self._request(
                    "PUT",
                    key,
                    [("partNumber", str(number)), ("uploadId", upload)],
                    body=(
                        [data[offset : offset + length]]
                        if isinstance(data, bytes | memoryview)
                        else data.part(offset, length)
                    ),
                    length=length,
                    what=f"UploadPart {number} {key}",
                )
                parts.append((number, (response.header(b"etag") or b"").decode()))
                offset += length
                number += 1
            xml = (
                "<CompleteMultipartUpload>"
                + "".join(
                    f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                    for n, etag in parts
                )
                + "</CompleteMultipartUpload>"
            )
            complete = xml.encode()
            what = f"CompleteMultipartUpload {key}"
            done = self._request(
                "POST",
                key,
                [("uploadId", upload)],
                body=[complete],
                length=len(complete),
                what=what,
            )
            # S3 may answer 200 and put the failure in the body (it has already sent the status
            # line while it assembles the parts)
            if done.body and _xml(done, what).tag == "Error":
                raise _error_from(done, what)
        except BaseException:
            try:
                self._request(
                    "DELETE", key, [("uploadId", upload)], what=f"AbortMultipartUpload {key}"
                )
            except Exception:  # the original failure is what matters
                pass
            raise
        return size

    def delete(self, key: str) -> None:
        self._request("DELETE", key, what=f"DELETE {key}")

    def delete_many(self, keys: Sequence[str]) -> list[tuple[str, str, str]]:
        """DeleteObjects (quiet): returns (key, code, message) for the keys that failed."""
        body = (
            "<Delete><Quiet>true</Quiet>"
            + "".join(f"<Object><Key>{_xml_escape(k)}</Key></Object>" for k in keys)
            + "</Delete>"
        )
        data = body.encode()
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        response = self._request(
            "POST",
            None,
            [("delete", "")],
            body=[data],
            length=len(data),
            extra=[("content-md5", md5)],
            what=f"DeleteObjects ({len(keys)})",
        )
        failed = []
        if response.body:
            root = _xml(response, f"DeleteObjects ({len(keys)})")
            for error in root.iter("Error"):
                failed.append((_find(error, "Key"), _find(error, "Code"), _find(error, "Message")))
        return failed

    def list_pages(
        self, prefix: str, *, delimiter: str | None = None, max_pages: int | None = None
    ) -> Iterator[list[tuple[str, int]]]:
        """ListObjectsV2 pages of (key, size), following continuation tokens."""
        token = ""
        pages = 0
        while True:
            params = [("list-type", "2"), ("prefix", prefix)]
            if delimiter:
                params.append(("delimiter", delimiter))
            if token:
                params.append(("continuation-token", token))
            response = self._request("GET", None, params, what=f"ListObjectsV2 {prefix}")
            root = _xml(response, f"ListObjectsV2 {prefix}")
            yield [(_find(c, "Key"), int(_find(c, "Size") or 0)) for c in root.iter("Contents")]
            pages += 1
            token = _find(root, "NextContinuationToken")
            if _find(root, "IsTruncated") != "true" or not token:
                return
            if max_pages is not None and pages >= max_pages:
                return


def _xml_escape(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )
