"""HTTP/1.1 message heads: which headers the proxy forwards, and the responses it writes itself.

Pure functions of bytes, shared by the proxy (`proxy.py`) and the client connection (`connection.py`).
"""

from __future__ import annotations

import http
from collections.abc import Sequence
from typing import Final, NamedTuple

from cove._gateway.auth import is_proxy_bearer

CRLF: Final = b"\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
CLOSE: Final = b"Connection: close\r\n"
KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
UPSTREAM_VERSION: Final = b" HTTP/1.1\r\n"
#: Added to a forwarded WebSocket upgrade and to the 101 relayed back: hop-by-hop, so re-stated.
UPGRADE_LINES: Final = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"

# RFC 9110 §7.6.1; Proxy-Connection is the pre-standard spelling some clients still send.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Headers whose meaning ends at the gateway, and client claims it replaces: who the client is and
# which URL it asked for (X-Forwarded-For/Proto/Host/Port/Prefix, also spelt with underscores, which
# WSGI bridges merge with the dashed names; apps build absolute URLs and redirects from them),
# proxy credentials (`auth.py`; an `Authorization` carrying a proxy token is dropped too), and
# WebSocket extensions (no permessage-deflate, as on Modal: RFC 7692 is not negotiated).
_CLAIMS: Final = frozenset(
    b"x" + sep1 + b"forwarded" + sep2 + what
    for sep1 in (b"-", b"_")
    for sep2 in (b"-", b"_")
    for what in (b"for", b"proto", b"host", b"port", b"prefix")
)
# Those of them a trusted proxy may state and the gateway passes on as they are (`clientip.py`).
_PASSED_CLAIMS: Final = frozenset({b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-prefix"})
_CREDENTIALS: Final = frozenset({b"modal-key", b"modal-secret", b"proxy-authorization"})
_REQUEST_DROP: Final = (
    _HOP_BY_HOP
    | _CLAIMS
    | _CREDENTIALS
    | {b"forwarded", b"expect", b"sec-websocket-extensions", b"x-real-ip", b"modal-authorization"}
)
# A `Connection` header may name extra hop-by-hop headers, but not these: dropping the framing
# or the Host of a forwarded message would make the other side read a different message.
_KEEP: Final = frozenset({b"host", b"content-length"})
# Proxy-Authenticate is for the next hop only (RFC 9110 §11.7.1), and that hop is the gateway.
_RESPONSE_DROP: Final = _HOP_BY_HOP | {b"proxy-authenticate"}


class RequestHead(NamedTuple):
    """What the proxy needs from a request's headers, gathered in one pass."""

    header_lines: bytes  # the headers to forward, each line ending in CRLF
    host: bytes | None
    host_count: int
    content_length: int | None
    transfer_encoding: bytes | None  # lowercased, several headers joined by ", "
    expect: bytes | None  # lowercased
    upgrade: bytes | None = None  # lowercased, stripped
    forwarded_for: bytes | None = None  # the client's X-Forwarded-For chain, several joined by ", "
    forwarded_proto: bytes | None = None  # the client's X-Forwarded-Proto
    forwarded_other: bytes = b""  # its X-Forwarded-Host/Port/Prefix lines: a trusted proxy's pass
    credentials: list[tuple[bytes, bytes]] | None = None  # (lowercased name, value), see `auth.py`
    session_id: bytes | None = None  # `Modal-Session-ID` (HTTP servers' session affinity); forwarded too
    session_token: bytes | None = None  # `Modal-Authorization: Bearer <token>` (sticky sessions); dropped


class ResponseHead(NamedTuple):
    """What the proxy needs from a response's headers."""

    header_lines: bytes
    has_content_length: bool
    chunked: bool


def _connection_tokens(values: list[bytes]) -> set[bytes]:
    return {token.strip().lower() for value in values for token in value.split(b",")} - {b""}


def _header_lines(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] | set[bytes], drop_bearer: bool = False
) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname in drop or (drop_bearer and lname == b"authorization" and is_proxy_bearer(value)):
            continue
        parts += (name, b": ", value, CRLF)
    return b"".join(parts)


def scan_request_headers(headers: Sequence[tuple[bytes, bytes]]) -> RequestHead:
    """Split a client's headers into those to forward and the facts the proxy acts on.

    Not forwarded: hop-by-hop headers and those named in `Connection` (but never `Host` or
    `Content-Length`), `Expect` (the gateway answers it), the client's own `X-Forwarded-For`,
    `-Proto`, `-Host`, `-Port`, `-Prefix`, `Forwarded` and `X-Real-IP`, proxy credentials (`Modal-Key`,
    `Modal-Secret`, `Proxy-Authorization`, an `Authorization: Bearer wk-…`), a sticky session's
    `Modal-Authorization` and `Sec-WebSocket-Extensions`.
    """
    parts: list[bytes] = []
    host: bytes | None = None
    host_count = 0
    content_length: int | None = None
    transfer_encoding: bytes | None = None
    expect: bytes | None = None
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    forwarded_for: bytes | None = None
    forwarded_proto: bytes | None = None
    forwarded_other: list[bytes] | None = None
    credentials: list[tuple[bytes, bytes]] | None = None
    session_id: bytes | None = None
    session_token: bytes | None = None
    drop_bearer = False
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
            elif lname == b"upgrade":
                upgrade = value.strip().lower()
            elif lname == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif lname == b"x-forwarded-proto":
                forwarded_proto = value
            elif lname == b"modal-authorization":  # a sticky session's token, for the gateway only
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    session_token = token.strip()
            elif lname in _PASSED_CLAIMS:
                line = (name, b": ", value, CRLF)
                forwarded_other = [*line] if forwarded_other is None else [*forwarded_other, *line]
            elif lname in _CREDENTIALS:
                credentials = [(lname, value)] if credentials is None else [*credentials, (lname, value)]
            continue
        if lname == b"host":
            host = value.strip()
            host_count += 1
        elif lname == b"content-length":
            content_length = int(value)  # llhttp accepted it: digits, and one value only
        elif lname == b"modal-session-id":
            session_id = value.strip() or None
        elif lname == b"authorization" and is_proxy_bearer(value):
            credentials = [(lname, value)] if credentials is None else [*credentials, (lname, value)]
            drop_bearer = True
            continue
        parts += (name, b": ", value, CRLF)
    lines = b"".join(parts)
    if connection is not None:
        named = _connection_tokens(connection) - _REQUEST_DROP - _KEEP
        if named:  # rare: the client named extra hop-by-hop headers (RFC 9110 §7.6.1)
            lines = _header_lines(headers, _REQUEST_DROP | named, drop_bearer)
    return RequestHead(
        lines,
        host,
        host_count,
        content_length,
        transfer_encoding,
        expect,
        upgrade,
        forwarded_for,
        forwarded_proto,
        b"".join(forwarded_other) if forwarded_other is not None else b"",
        credentials,
        session_id,
        session_token,
    )


def scan_response_headers(headers: Sequence[tuple[bytes, bytes]]) -> ResponseHead:
    """The response headers to pass on (hop-by-hop ones removed) and how the body is framed."""
    parts: list[bytes] = []
    has_content_length = False
    chunked = False
    connection: list[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_DROP:
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
        named = _connection_tokens(connection) - _RESPONSE_DROP - _KEEP
        if named:
            lines = _header_lines(headers, _RESPONSE_DROP | named)
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
