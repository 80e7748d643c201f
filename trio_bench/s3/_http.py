"""HTTP/1.1 over one blocking keep-alive connection, with h11 (sans-IO) doing the protocol.

Used from worker threads: plain blocking sockets, no Trio, no thread hops. A connection is
opened on first use and after any failure; every failure is raised (and counted by the
caller), never retried here (an idle keep-alive connection the server closed is reopened: see
``request``). Bodies are sent from memoryviews without copying. Response bodies are either
kept (small XML answers, through h11) or, for GET payloads, received straight into one reused
buffer and counted (h11 parses only the headers).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Sequence

import attrs
import h11

from ._settings import Endpoint, S3ConfigError

RECEIVE_SIZE = 256 * 1024
COALESCE_LIMIT = 64 * 1024  # headers and bodies up to this size are sent with one syscall


class ConnectionFailed(Exception):
    """The connection failed (refused, reset, timed out, or spoke bad HTTP). ``code`` names
    the kind for error counts."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@attrs.define
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes  # kept only when asked for
    received: int  # body bytes received

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def tls_context(*, verify: bool = True, ca_bundle: str | None = None) -> ssl.SSLContext:
    """One context for all of an agent's https:// connections (thread-safe to share).

    ``ca_bundle``: a PEM file of CAs to trust instead of the system's. ``verify=False``
    accepts any certificate (self-signed test gateways); the traffic is still encrypted.
    """
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise S3ConfigError(f"s3.ca_bundle: cannot load {ca_bundle}: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpConnection:
    def __init__(
        self, endpoint: Endpoint, *, timeout_s: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            self._tls = tls or tls_context()
        self._sock: socket.socket | None = None
        self._conn: h11.Connection | None = None
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self.connects = 0
        self.stale_reopened = 0  # idle keep-alive connections the server had closed
        self._answered = False  # a byte of the current response has arrived

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._conn = None

    def _connect(self) -> tuple[socket.socket, h11.Connection]:
        try:
            sock = socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self.timeout_s
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.endpoint.host)
        except (OSError, ssl.SSLError) as exc:
            raise _failure(exc, f"connect to {self.endpoint.url}") from None
        self.connects += 1
        self._sock, self._conn = sock, h11.Connection(our_role=h11.CLIENT)
        return sock, self._conn

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Iterable[bytes | memoryview] = (),
        *,
        keep_body: bool = True,
    ) -> Response:
        """One request and its response. A kept-alive connection that the server closed while
        it sat idle (it fails before a single response byte) is reopened and the request sent
        once more: that is connection reuse, not a retry, and its time is in the latency. Any
        other failure is raised."""
        reused = self._sock is not None
        try:
            return self._exchange(method, target, headers, body, keep_body)
        except _Unanswered as exc:
            if not reused:
                raise _failure(exc, f"{method} {self.endpoint.url}") from None
        self.stale_reopened += 1
        return self.request(method, target, headers, body, keep_body=keep_body)  # fresh now

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Iterable[bytes | memoryview],
        keep_body: bool,
    ) -> Response:
        sock, conn = (self._sock, self._conn) if self._sock is not None else self._connect()
        assert conn is not None
        self._answered = False
        try:
            out: list[bytes | memoryview] = [
                conn.send(h11.Request(method=method, target=target, headers=list(headers))) or b""
            ]
            pending = len(out[0])
            volatile = getattr(body, "volatile", False)  # pieces share one buffer
            for chunk in body:
                # memoryviews pass through h11 uncopied (its stubs only say bytes)
                data = h11.Data(data=chunk)  # type: ignore[arg-type]
                for piece in conn.send_with_data_passthrough(data) or ():
                    if pending + len(piece) > COALESCE_LIMIT:
                        _send(sock, out)
                        pending = 0
                    out.append(piece)
                    pending += len(piece)
                if volatile:  # send it before the next piece overwrites it
                    _send(sock, out)
                    pending = 0
            out.append(conn.send(h11.EndOfMessage()) or b"")
            _send(sock, out)  # small requests leave in one syscall
            return self._read_response(sock, conn, keep_body)
        except (OSError, ssl.SSLError, h11.ProtocolError) as exc:
            self.close()
            if not self._answered and isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise _Unanswered(str(exc)) from None
            raise _failure(exc, f"{method} {self.endpoint.url}") from None

    def _read_response(
        self, sock: socket.socket, conn: h11.Connection, keep_body: bool
    ) -> Response:
        """Headers are read into the reused buffer and parsed by h11. A successful body that is
        only counted (GET payloads) and framed by Content-Length is then received straight into
        the same buffer, bypassing h11, which would copy every byte twice; everything else
        (kept bodies, errors, chunked answers) goes through h11."""
        buffer, view = self._buffer, self._view
        filled = 0
        while True:
            n = sock.recv_into(view[filled:])
            if not n:
                if not self._answered:
                    raise _Unanswered("the server closed the connection without answering")
                raise ConnectionResetError("the server closed the connection mid-response")
            self._answered = True
            end = buffer.find(b"\r\n\r\n", max(0, filled - 3), filled + n)
            filled += n
            if end >= 0:
                break
            if filled == len(buffer):
                raise h11.RemoteProtocolError(f"response headers longer than {len(buffer)} bytes")
        header_end = end + 4
        conn.receive_data(view[:header_end])  # type: ignore[arg-type]
        event = conn.next_event()
        if (
            not keep_body
            and isinstance(event, h11.Response)
            and 200 <= event.status_code < 300
            and conn.their_state is h11.SEND_BODY
        ):
            length = _content_length(event.headers)
            if length is not None:
                return self._count_body(sock, event, length, filled - header_end)
        if filled > header_end:  # (empty data would tell h11 the connection ended)
            conn.receive_data(view[header_end:filled])  # type: ignore[arg-type]
        return self._h11_response(sock, conn, keep_body, event)

    def _count_body(
        self, sock: socket.socket, response: h11.Response, length: int, received: int
    ) -> Response:
        if received > length:
            raise h11.RemoteProtocolError("the server sent more than its Content-Length")
        view = self._view
        while received < length:
            n = sock.recv_into(view, min(len(view), length - received))
            if not n:
                raise ConnectionResetError("the server closed the connection mid-response")
            received += n
        headers = list(response.headers)
        if response.http_version == b"1.1" and not any(
            k == b"connection" and b"close" in v.lower() for k, v in headers
        ):
            self._conn = h11.Connection(our_role=h11.CLIENT)  # keep-alive: the next exchange
        else:
            self.close()
        return Response(response.status_code, headers, b"", received)

    def _h11_response(
        self, sock: socket.socket, conn: h11.Connection, keep_body: bool, event: object
    ) -> Response:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        received = 0
        buffer = self._buffer
        while True:
            if event is h11.NEED_DATA:
                n = sock.recv_into(buffer)
                conn.receive_data(self._view[:n] if n else b"")  # type: ignore[arg-type]
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
                keep_body = keep_body or not 200 <= status < 300  # errors carry their code
            elif isinstance(event, h11.Data):
                received += len(event.data)
                if keep_body:
                    chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("the server closed the connection mid-response")
            event = conn.next_event()
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive
        else:
            self.close()  # the server will close it (HTTP/1.0, Connection: close)
        return Response(status, headers, b"".join(chunks), received)


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The body length h11 validated, unless the body is chunked."""
    length = None
    for key, value in headers:
        if key == b"transfer-encoding":
            return None
        if key == b"content-length":
            length = int(value)
    return length


class _Unanswered(ConnectionResetError):
    """The connection ended before the first byte of a response."""


def _failure(exc: BaseException, what: str) -> ConnectionFailed:
    if isinstance(exc, socket.timeout | TimeoutError):
        return ConnectionFailed("Timeout", f"{what}: timed out")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed("ConnectionRefused", f"{what}: connection refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return ConnectionFailed("ConnectionReset", f"{what}: {exc}")
    if isinstance(exc, ssl.SSLError):
        return ConnectionFailed("TLSError", f"{what}: {exc}")
    if isinstance(exc, h11.ProtocolError):
        return ConnectionFailed("HTTPProtocolError", f"{what}: {exc}")
    return ConnectionFailed(
        "ConnectionError",
        f"{what}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{what}: {exc}",
    )


def _send(sock: socket.socket, pieces: list[bytes | memoryview]) -> None:
    """Send and clear ``pieces``: joined if there are several, skipped if empty."""
    pieces[:] = [p for p in pieces if len(p)]
    if len(pieces) == 1:
        sock.sendall(pieces[0])
    elif pieces:
        sock.sendall(b"".join(pieces))
    pieces.clear()
