"""Hostile input through raw sockets: the gateway's limits, and malformed requests answered 400.

Each test sends bytes no well-behaved client would and reads what comes back until the gateway
closes the connection. The upstream is the uvicorn app of `test_gateway_proxy.py`; limits are
set small so tests need neither large payloads nor long waits (the timeouts are fractions of a
second, and the tests wait for the gateway to act, never assert how long it took).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from cove._gateway import Limits, Route
from tests.integration import test_gateway_proxy as proxy
from tests.integration.test_gateway_proxy import (
    HOST,
    WAIT_S,
    GatewayThread,
    RawUpstream,
    TestUpstream,
    read_request_head,
    read_responses,
    read_until_closed,
)

pytestmark = pytest.mark.integration

uvicorn_server = proxy.uvicorn_server
app_dir = proxy.app_dir
start_gateway = proxy.start_gateway
upstream = proxy.upstream
gw = proxy.gw
raw_upstream = proxy.raw_upstream

H = f"Host: {HOST}\r\n"
POST = f"POST /hash HTTP/1.1\r\n{H}"
GET = f"GET /echo HTTP/1.1\r\n{H}"
TE = "Transfer-Encoding: chunked\r\n"


def exchange(gw: GatewayThread, data: bytes) -> bytes:
    """Send `data` on a fresh connection and return everything until the gateway closes."""
    with gw.raw() as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def limited(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream, **limits: Any
) -> GatewayThread:
    return start_gateway({HOST: Route("shop", "square", upstream)}, limits=Limits(**limits))


# -- sizes and times


def test_request_target_over_the_limit_is_414(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, upstream, max_request_line_bytes=100)
    ok = exchange(gw, f"GET /echo?{'a' * 80} HTTP/1.1\r\n{H}Connection: close\r\n\r\n".encode())
    assert status_of(ok) == 200
    answer = exchange(gw, f"GET /echo?{'a' * 100} HTTP/1.1\r\n{H}\r\n".encode())
    assert status_of(answer) == 414
    assert answer.endswith(b"cove: request target longer than 100 bytes\n")
    assert upstream.releases == [False]  # the long one never reached the container


def test_headers_over_the_limit_are_431(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, upstream, max_head_bytes=1000)
    pads = "".join(f"X-Pad-{i}: {'p' * 100}\r\n" for i in range(5))
    assert status_of(exchange(gw, f"{GET}{pads}Connection: close\r\n\r\n".encode())) == 200
    pads = "".join(f"X-Pad-{i}: {'p' * 100}\r\n" for i in range(10))
    answer = exchange(gw, f"{GET}{pads}\r\n".encode())
    assert status_of(answer) == 431
    assert answer.endswith(b"cove: request head larger than 1000 bytes\n")


def test_a_head_that_never_completes_is_408_and_closed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """Slowloris: a few header bytes, then nothing; the gateway answers 408 and closes."""
    gw = limited(start_gateway, upstream, header_timeout_s=0.2)
    answer = exchange(gw, f"{GET}X-Slow: ".encode())
    assert status_of(answer) == 408
    assert answer.endswith(b"cove: request head not received within 0.2 s\n")
    assert b"\r\nConnection: close\r\n" in answer


def test_a_body_that_stalls_is_408_and_its_slot_is_freed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """One byte of a 1,000-byte body, then nothing: 408, closed, and the container slot given back
    (issue 12: forty such POSTs held forty-one containers forever)."""
    gw = limited(start_gateway, upstream, body_timeout_s=0.3)
    answer = exchange(gw, f"{POST}Content-Length: 1000\r\n\r\nx".encode())
    assert status_of(answer) == 408
    assert answer.endswith(b"cove: request body stalled for 0.3 s\n")
    assert b"\r\nConnection: close\r\n" in answer
    assert upstream.wait_releases(1) == [False]


def test_a_slow_body_that_keeps_coming_is_not_cut(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """The body timeout bounds a stall, not the upload: bytes arriving within it keep it alive."""
    gw = limited(start_gateway, upstream, body_timeout_s=1.0)
    with gw.raw() as sock:
        sock.sendall(f"{POST}Content-Length: 6\r\n\r\n".encode())
        for byte in b"abcdef":  # 6 x 0.25 s: longer than the timeout, never stalled for it
            time.sleep(0.25)
            sock.sendall(bytes([byte]))
        [response] = read_responses(sock, 1)
    assert response.status == 200
    assert json.loads(response.body)["length"] == 6


def test_a_client_that_never_reads_its_response_is_cut_off_and_its_slot_freed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """A client that asks for a large response and reads none of it cannot hold a container forever."""
    gw = limited(start_gateway, upstream, send_timeout_s=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the gateway fills it fast
    sock.settimeout(WAIT_S)
    with sock:
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(f"GET /download?n=50000000 HTTP/1.1\r\n{H}\r\n".encode())
        assert upstream.wait_releases(1) == [False]  # the gateway gave up on the client
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
    assert received < 50_000_000  # the response was cut short, not delivered


def test_an_unread_last_answer_does_not_hold_its_connection_open(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    """`Connection: close`, a response the gateway has whole but the client never reads: the
    connection is dropped after the send timeout instead of waiting to flush forever."""
    body = b"x" * 200_000  # arrives in one go: the exchange ends with it all buffered for the client

    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    server = raw_upstream(script)
    upstream = TestUpstream(server.path)
    gw = limited(start_gateway, upstream, send_timeout_s=0.3)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock:
        sock.connect(("127.0.0.1", gw.port))
        gw.call(_wait_until(lambda: gw.gateway.connection_count == 1))
        gw.call(_small_send_buffers(gw))  # so the kernel cannot take the whole answer off our hands
        sock.sendall(f"GET / HTTP/1.1\r\n{H}Connection: close\r\n\r\n".encode())
        assert upstream.wait_releases(1) == [False]
        gw.call(_wait_until(lambda: gw.gateway.connection_count == 0))


async def _small_send_buffers(gw: GatewayThread) -> None:
    for conn in gw.gateway._connections:
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def test_a_connection_that_sends_nothing_is_closed_silently(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, upstream, header_timeout_s=0.2)
    assert exchange(gw, b"") == b""


def test_an_idle_keep_alive_connection_is_closed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, upstream, idle_timeout_s=0.2)
    with gw.raw() as sock:
        sock.sendall(f"{GET}\r\n".encode())
        [response] = read_responses(sock, 1)
        assert response.status == 200
        assert sock.recv(65536) == b""  # closed by the gateway once idle


def test_connections_past_the_limit_are_answered_503_and_closed(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, upstream, max_connections=2)
    first, second = gw.raw(), gw.raw()
    try:
        for sock in (first, second):  # served, so the gateway has surely accepted both
            sock.sendall(f"{GET}\r\n".encode())
            assert read_responses(sock, 1)[0].status == 200
        answer = exchange(gw, f"{GET}\r\n".encode())
        assert status_of(answer) == 503
        assert b"\r\nRetry-After: 1\r\n" in answer
        assert answer.endswith(b"cove: too many open connections (limit 2); retry shortly\n")
    finally:
        first.close()
        second.close()

    gw.call(_wait_until(lambda: gw.gateway.connection_count == 0))  # both closes were seen
    assert status_of(exchange(gw, f"{GET}Connection: close\r\n\r\n".encode())) == 200


async def _wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


# -- malformed requests: 400 and close (RFC 9112 §6.3 and §11.2 included)

MALFORMED = {
    "content-length and transfer-encoding": f"{POST}Content-Length: 5\r\n{TE}\r\n0\r\n\r\n",
    "transfer-encoding and content-length": f"{POST}{TE}Content-Length: 5\r\n\r\n0\r\n\r\n",
    "two differing content-lengths": f"{POST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "content-length list": f"{POST}Content-Length: 5, 5\r\n\r\nhello",
    "negative content-length": f"{POST}Content-Length: -5\r\n\r\nhello",
    "chunked not last": f"{POST}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "chunked twice": f"{POST}{TE}{TE}\r\n0\r\n\r\n",
    "invalid chunk size": f"{POST}{TE}\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": f"{POST}{TE}\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk without its CRLF": f"{POST}{TE}\r\n5\r\nhelloXX0\r\n\r\n",
    "space before the colon": f"{POST}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "non-ASCII header name": f"{GET}X-\u00e9: 1\r\n\r\n",
    "invalid token in header name": f"{GET}X(y): 1\r\n\r\n",
    "empty header name": f"{GET}: 1\r\n\r\n",
    "obs-fold": f"{GET}X-A: 1\r\n 2\r\n\r\n",
    "bare LF": f"GET /echo HTTP/1.1\n{H}\n",
    "bare CR": f"{GET}X-A: 1\rX-B: 2\r\n\r\n",
    "NUL in a header value": f"{GET}X-A: a\x00b\r\n\r\n",
    "bad request line": "GET\r\n\r\n",
    "lowercase method": f"get /echo HTTP/1.1\r\n{H}\r\n",
    "unknown HTTP version": f"GET /echo HTTP/1.2\r\n{H}\r\n",
    "space in the target": f"GET /a b HTTP/1.1\r\n{H}\r\n",
    "control character in the target": f"GET /\x01 HTTP/1.1\r\n{H}\r\n",
    "transfer-encoding in HTTP/1.0": f"POST /hash HTTP/1.0\r\n{H}{TE}\r\n0\r\n\r\n",
    "absolute URL naming another host": f"GET http://elsewhere.localhost/echo HTTP/1.1\r\n{H}\r\n",
    "two Host headers": f"{GET}Host: other.localhost\r\n\r\n",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_request_is_400_and_closes(gw: GatewayThread, upstream: TestUpstream, name: str) -> None:
    answer = exchange(gw, MALFORMED[name].encode("latin-1"))
    assert status_of(answer) == 400, answer
    assert b"\r\nConnection: close\r\n" in answer
    assert b"\r\n\r\ncove: " in answer
    assert upstream.releases == []  # no container saw any of it


def test_a_smuggled_request_after_a_conflicting_length_is_never_answered(gw: GatewayThread) -> None:
    """CL.TE smuggling: the bytes after the refused request are not read as a second request."""
    smuggled = f"GET /echo?smuggled=1 HTTP/1.1\r\n{H}\r\n"
    data = f"{POST}Content-Length: 6\r\n{TE}\r\n0\r\n\r\n{smuggled}"
    answer = exchange(gw, data.encode())
    assert status_of(answer) == 400
    assert answer.count(b"HTTP/1.1 ") == 1


def test_http_2_in_http_1_framing_is_505(gw: GatewayThread) -> None:
    answer = exchange(gw, f"GET /echo HTTP/2.0\r\n{H}\r\n".encode())
    assert status_of(answer) == 505
    assert answer.endswith(b"cove: HTTP/2.0 is not supported; send HTTP/1.1\n")


def test_connect_is_501(gw: GatewayThread) -> None:
    answer = exchange(gw, f"CONNECT {HOST}:443 HTTP/1.1\r\n{H}\r\n".encode())
    assert status_of(answer) == 501


def test_absolute_url_naming_the_host_is_forwarded_as_a_path(gw: GatewayThread) -> None:
    answer = exchange(gw, f"GET http://{HOST}/echo?q=1 HTTP/1.1\r\n{H}Connection: close\r\n\r\n".encode())
    assert status_of(answer) == 200
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert (body["path"], body["query"]) == ("/echo", "q=1")


def test_an_h2c_upgrade_is_served_as_http_1_and_the_connection_closed(gw: GatewayThread) -> None:
    """RFC 9110 §7.8: the server may ignore Upgrade; the container never sees it."""
    head = f"{GET}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAM\r\n\r\n"
    answer = exchange(gw, head.encode())
    assert status_of(answer) == 200
    assert b"\r\nConnection: close\r\n" in answer
    names = {k for k, _ in json.loads(answer.split(b"\r\n\r\n", 1)[1])["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}


# -- headers that end at the gateway


def test_connection_cannot_strip_host_or_content_length(gw: GatewayThread) -> None:
    """Naming Host or Content-Length in Connection would change what the container reads."""
    data = f"{POST}Connection: Host, Content-Length, close\r\nContent-Length: 5\r\n\r\nhello"
    answer = exchange(gw, data.encode())
    assert status_of(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["length"] == 5


def test_forwarding_claims_spelt_with_underscores_are_dropped(gw: GatewayThread) -> None:
    """WSGI bridges fold `X_Forwarded_For` into `HTTP_X_FORWARDED_FOR`, so it is a claim too."""
    data = f"{GET}X_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n"
    headers = json.loads(exchange(gw, data.encode()).split(b"\r\n\r\n", 1)[1])["headers"]
    assert [v for k, v in headers if "forwarded" in k or "real" in k] == ["127.0.0.1", "http"]


def test_hop_by_hop_response_headers_are_not_passed_on(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=x\r\nTrailer: X-Sum\r\n"
            b"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        )

    server = raw_upstream(script)
    gw = start_gateway({HOST: Route("shop", "square", TestUpstream(server.path))})
    with gw.client() as client:
        response = client.get("/")
    assert response.text == "ok"
    assert response.headers["x-kept"] == "yes"
    for name in ("x-internal", "keep-alive", "proxy-authenticate", "trailer"):
        assert name not in response.headers
