"""HTTP/1.1 message heads: which headers the proxy forwards, and the responses it writes itself.

Pure functions of bytes, shared by the proxy (`proxy.py`) and the server (`server.py`).
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import Final, NamedTuple

CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
CLOSE: Final = b"Connection: close\r\n"
KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
UPSTREAM_VERSION: Final = b" HTTP/1.1\r\n"

# RFC 9110 §7.6.1; Proxy-Connection is the pre-standard spelling some clients still send.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# The gateway states who the client is; whatever the client claims about it is dropped.
_REQUEST_DROP: Final = _HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"forwarded", b"expect"}


class RequestHead(NamedTuple):
    """What the proxy needs from a request's headers, gathered in one pass."""

    header_lines: bytes  # the headers to forward, each line ending in CRLF
    host: bytes | None
    host_count: int
    content_length: int | None
    transfer_encoding: bytes | None  # lowercased, several headers joined by ", "
    expect: bytes | None  # lowercased


class ResponseHead(NamedTuple):
    """What the proxy needs from a response's headers."""

    header_lines: bytes
    has_content_length: bool
    chunked: bool


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    return {token.strip().lower() for value in values for token in value.split(b",")} - {b""}


def _header_lines(headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] | set[bytes]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        if name.lower() not in drop:
            parts += (name, b": ", value, CRLF)
    return b"".join(parts)


def scan_request_headers(headers: Sequence[tuple[bytes, bytes]]) -> RequestHead:
    """Split a client's headers into those to forward and the facts the proxy acts on.

    Hop-by-hop headers, headers named in `Connection`, `Expect` (the gateway answers it) and the
    client's own `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` are not forwarded.
    """
    parts: list[bytes] = []
    host: bytes | None = None
    host_count = 0
    content_length: int | None = None
    transfer_encoding: bytes | None = None
    expect: bytes | None = None
    connection: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _REQUEST_DROP:
            if lname == b"transfer-encoding":
                value = value.strip().lower()
                transfer_encoding = value if transfer_encoding is None else transfer_encoding + b", " + value
            elif lname == b"connection":
                connection = [value] if connection is None else [*connection, value]
            elif lname == b"expect":
                expect = value.strip().lower()
            continue
        if lname == b"host":
            host = value.strip()
            host_count += 1
        elif lname == b"content-length":
            content_length = int(value)  # llhttp accepted it: digits, and one value only
        parts += (name, b": ", value, CRLF)
    lines = b"".join(parts)
    if connection is not None:
        named = _connection_tokens(connection) - _REQUEST_DROP
        if named:  # rare: the client named extra hop-by-hop headers (RFC 9110 §7.6.1)
            lines = _header_lines(headers, _REQUEST_DROP | named)
    return RequestHead(lines, host, host_count, content_length, transfer_encoding, expect)


def scan_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> ResponseHead:
    """The response headers to pass on (hop-by-hop ones removed) and how the body is framed."""
    parts: list[bytes] = []
    has_content_length = False
    chunked = False
    connection: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _HOP_BY_HOP:
            if lname == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif lname == b"connection":
                connection = [value] if connection is None else [*connection, value]
            continue
        if lname == b"content-length":
            has_content_length = True
        parts += (name, b": ", value, CRLF)
    lines = b"".join(parts)
    if connection is not None:
        named = _connection_tokens(connection) - _HOP_BY_HOP
        if named:
            lines = _header_lines(headers, _HOP_BY_HOP | named)
    return ResponseHead(lines, has_content_length, chunked)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def error_response(
    status: int,
    message: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    keep_alive: bool = True,
    http_10: bool = False,
    head_only: bool = False,
) -> bytes:
    """A complete plain-text response the gateway answers itself; `message` starts with `cove: `."""
    body = (message.rstrip("\n") + "\n").encode("utf-8")  # exactly one newline, however given
    parts = [
        b"HTTP/1.1 %d %b\r\n" % (status, _reason(status)),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
    ]
    for name, value in headers:
        line = f"{name}: {value}"
        if "\r" not in line and "\n" not in line:  # a header must not end the head early
            parts.append(line.encode("latin-1") + CRLF)
    if not keep_alive:
        parts.append(CLOSE)
    elif http_10:
        parts.append(KEEP_ALIVE)
    parts.append(CRLF)
    if not head_only:
        parts.append(body)
    return b"".join(parts)
