"""A minimal HTTP/1.1 server that answers S3 requests cheaply, so a benchmark measures the client.

    python -m bench.s3server PORT [OBJECT_SIZE]

GET returns OBJECT_SIZE bytes, HEAD its headers, PUT/POST/DELETE consume the body and answer
200/204; ListObjectsV2 returns an empty listing. Signatures are not checked. Keep-alive, one
asyncio task per connection, no framework.
"""

from __future__ import annotations

import asyncio
import sys

LISTING = (
    b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
    b"<IsTruncated>false</IsTruncated></ListBucketResult>"
)


SIZES: dict[bytes, int] = {}  # objects PUT here: GET/HEAD answer with their size


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    get = (b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "x"\r\n\r\n' % len(body)) + body
    head = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "x"\r\n\r\n' % len(body)
    ok = b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "x"\r\n\r\n'
    deleted = b"HTTP/1.1 204 No Content\r\n\r\n"
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            method, target = request.split(b" ", 2)[:2]
            length = 0
            lower = request.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(lower[at + 15 : lower.index(b"\r\n", at)])
            if b"expect: 100-continue" in lower:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if length:
                await reader.readexactly(length)
            size = SIZES.get(target)
            if method == b"GET" and size is not None and size != len(body):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
            elif method == b"GET" and b"list-type=2" in target:
                writer.write(_listing(target))
            elif method == b"GET":
                writer.write(get)
            elif method == b"HEAD":
                writer.write(head)
            elif method == b"PUT" and b"partNumber" not in target:
                SIZES[target] = length
                writer.write(ok)
            elif method == b"DELETE":
                writer.write(deleted)
            else:
                writer.write(ok)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _listing(target: bytes) -> bytes:
    """ListObjectsV2 over what was PUT here (one page; enough for benchmarks)."""
    from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

    parts = urlsplit(target)
    bucket = parts.path.rstrip(b"/") + b"/"
    prefix = parse_qs(parts.query).get(b"prefix", [b""])[0]
    items = []
    for key, size in SIZES.items():
        name = unquote_to_bytes(key[len(bucket) :]) if key.startswith(bucket) else b""
        if name.startswith(prefix) and b"/" not in name[len(prefix) :]:
            items.append(b"<Contents><Key>%s</Key><Size>%d</Size></Contents>" % (name, size))
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
        b"<IsTruncated>false</IsTruncated>" + b"".join(items) + b"</ListBucketResult>"
    )
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


async def main(port: int, size: int) -> None:
    body = b"x" * size
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, body), "127.0.0.1", port, backlog=256
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1024))
