"""Fuzzing the gateway's request parsing with hypothesis, against a live gateway and upstream.

Requests are built from HTTP's parts (methods, targets, versions, the headers that steer framing,
routing and upgrades, bodies), then a few bytes are inserted, dropped or replaced. Each is sent on
a fresh connection and everything is read until the gateway closes it: short limits (head 0.5 s,
idle 0.3 s, function 1 s) guarantee that a working gateway always closes, so a read that times out
is a hang. The gateway must never crash (a well-formed request on a new connection is then served),
hang, log an error, or answer a 5xx of its own other than the protocol refusals 501 and 505 (a 5xx
from the app would be fine; this app has none). Bounded: `MAX_EXAMPLES` requests, no deadline.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cove._gateway import Limits, Route
from tests.integration.test_gateway_proxy import (
    HOST,
    GatewayThread,
    TestUpstream,
    UvicornServer,
    start_uvicorn,
)

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 300
HANG_S = 10.0  # far beyond every limit below: a read this long means the gateway hung

FUZZ_APP = """
import json


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"path": scope["path"], "size": size}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

FUZZ_RUNNER = """
import sys
import uvicorn
sys.path.insert(0, sys.argv[1])
uvicorn.run("fuzz_app:app", fd=int(sys.argv[2]), log_level="critical", loop="uvloop", http="httptools")
"""


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    directory: Path = tmp_path_factory.mktemp("fuzzapp")
    (directory / "fuzz_app.py").write_text(FUZZ_APP)
    server = start_uvicorn(directory, FUZZ_RUNNER)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_gateway(fuzz_server: UvicornServer) -> Iterator[tuple[GatewayThread, _Errors]]:
    limits = Limits(
        max_body_bytes=64 * 1024,
        max_head_bytes=8 * 1024,
        max_request_line_bytes=2048,
        header_timeout_s=0.5,
        idle_timeout_s=0.3,
    )
    routes = {HOST: Route("fuzz", "app", TestUpstream(fuzz_server.path), timeout_s=1.0)}
    errors = _Errors()
    logger = logging.getLogger("cove.gateway")
    logger.addHandler(errors)
    gw = GatewayThread("uvloop", routes, 64 * 1024, limits=limits)
    try:
        yield gw, errors
    finally:
        gw.close()
        logger.removeHandler(errors)


# -- requests, from their parts

_METHODS = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "CONNECT", "get", "G@T", "", "PRI"]
_TARGETS = [
    "/",
    "/echo?a=1&b=%20",
    "*",
    f"http://{HOST}/x",
    "http://other.localhost/x",
    "x",
    "/" + "a" * 3000,
    "/?__cove_function_call_id=fc-00",
    "/%00",
]
_VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.12", "http/1.1", "HTTPS/1.1", ""]
_NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Expect",
    "X-Forwarded-For",
    "Modal-Key",
    "Authorization",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Extensions",
    "Trailer",
    "TE",
    "Content-Length ",
    "X_Forwarded_For",
]
# Headers that do not decide framing or routing, so any value of _VALUES leaves the request valid.
_SAFE_NAMES = [
    "X-Forwarded-For",
    "Modal-Key",
    "Authorization",
    "Sec-WebSocket-Key",
    "Upgrade",
    "TE",
    "Trailer",
]
_VALUES = [
    "chunked",
    "gzip, chunked",
    "chunked, gzip",
    "identity",
    "0",
    "5",
    "-1",
    "18446744073709551616",
    "100-continue",
    "websocket",
    "Upgrade",
    "close",
    "keep-alive, Host",
    HOST,
    "Bearer wk-1.ws-2",
]

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_!#$%&'*+.^`|~"
_TOKEN = st.text(st.sampled_from(_TOKEN_CHARS), min_size=1, max_size=12)
_ANY = st.text(st.characters(codec="latin-1"), max_size=20)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A third well-formed requests, a third well-formed but for the headers that steer framing,
    routing and upgrades, a third anything at all."""
    kind = draw(st.sampled_from(["valid", "headers", "wild"]))
    if kind != "wild":
        method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]))
        target = draw(st.sampled_from(["/", "/echo?a=1&b=%20", "*", f"http://{HOST}/x", "/?a=%ff"]))
        version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
        eol = "\r\n"
        names = st.sampled_from(_SAFE_NAMES if kind == "valid" else _NAMES)
        headers = draw(st.lists(st.tuples(names, st.sampled_from(_VALUES)), max_size=3))
        damage = [0]
    else:
        method = draw(st.sampled_from(_METHODS))
        target = draw(st.one_of(st.sampled_from(_TARGETS), _ANY))
        version = draw(st.sampled_from(_VERSIONS))
        eol = draw(st.sampled_from(["\r\n", "\r\n", "\n", "\r", "\r\r\n"]))
        names = st.one_of(st.sampled_from(_NAMES), _TOKEN, _ANY)
        values = st.one_of(st.sampled_from(_VALUES), _TOKEN, _ANY)
        headers = draw(st.lists(st.tuples(names, values), max_size=6))
        damage = [0, 1, 2, 3]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked", "none", "short"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "short":  # declares less than is sent: the rest is read as the next request
        headers.append(("Content-Length", str(len(body) // 2)))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
    if draw(st.integers(0, 7)):
        headers.insert(draw(st.integers(0, len(headers))), ("Host", HOST))
    if draw(st.integers(0, 3)):
        headers.append(("Connection", "close"))
    head = f"{method} {target} {version}{eol}" + "".join(f"{n}: {v}{eol}" for n, v in headers) + eol
    data = bytearray(head.encode("latin-1") + body)
    for _ in range(draw(st.sampled_from(damage))):  # byte-level damage
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "drop", "replace"]))
        byte = draw(st.integers(0, 255))
        if action == "insert":
            data.insert(where, byte)
        elif where < len(data):
            if action == "drop":
                del data[where]
            else:
                data[where] = byte
    return bytes(data)


class _Responses:
    """The responses the gateway sent, as (status, body so far): a HEAD's or one whose body ends
    with the connection counts once its head is complete."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytearray]] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), bytearray()))

    def on_body(self, body: bytes) -> None:
        self.done[-1][1].extend(body)


def send_and_read(port: int, data: bytes) -> bytes:
    """Send `data`, read until the gateway closes; a read past HANG_S fails the example."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_S) as sock:
        with contextlib.suppress(OSError):  # closed on us mid-send: its answer is still readable
            sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            except TimeoutError:
                raise AssertionError(f"gateway hung on {data!r}; received {received!r}") from None
            if not chunk:
                return received
            received += chunk


@given(requests())
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_fuzzed_requests_never_crash_hang_or_fail_the_gateway(
    fuzz_gateway: tuple[GatewayThread, _Errors], data: bytes
) -> None:
    gw, errors = fuzz_gateway
    received = send_and_read(gw.port, data)
    responses = _Responses()
    try:
        responses.parser.feed_data(received)
    except httptools.HttpParserError as exc:
        if not responses.done:  # a response cut short by a reset is fine; garbage is not
            raise AssertionError(f"unparseable answer {received[:300]!r} to {data!r}") from exc
    except httptools.HttpParserUpgrade:
        pass  # a relayed 101 would end the HTTP part (this app never accepts one)
    event(f"answers {[status for status, _ in responses.done]}")  # --hypothesis-show-statistics
    for status, body in responses.done:
        own = body.startswith(b"cove: ")
        assert not (own and status >= 500 and status not in (501, 505)), (status, body, data)
    assert not errors.records, [r.getMessage() for r in errors.records]
    # Still alive and well: a well-formed request on a new connection is served.
    probe = f"GET /alive HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    assert send_and_read(gw.port, probe).startswith(b"HTTP/1.1 200 ")
