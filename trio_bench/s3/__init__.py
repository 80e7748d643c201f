"""A lean S3 client for the data plane: SigV4 with the standard library, HTTP/1.1 with h11 over
one blocking keep-alive connection per worker thread. No Trio, no per-request allocation of
big buffers, nothing retried behind the caller's back."""

from ._client import DELETE_BATCH, S3Client, S3Error
from ._http import ConnectionFailed, HttpConnection, Response, tls_context
from ._settings import Endpoint, S3ConfigError, S3Settings, resolve
from ._sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, Signer, query_string, quote_key

__all__ = [
    "DELETE_BATCH",
    "EMPTY_SHA256",
    "UNSIGNED_PAYLOAD",
    "ConnectionFailed",
    "Endpoint",
    "HttpConnection",
    "Response",
    "S3Client",
    "S3ConfigError",
    "S3Error",
    "S3Settings",
    "Signer",
    "query_string",
    "quote_key",
    "resolve",
    "tls_context",
]
