"""WebSockets through the real gateway to a real uvicorn, configured as containers serve them.

The upstream is a uvicorn subprocess (websockets-sansio, no permessage-deflate, a message cap)
serving the echo ASGI app in `WS_APP`; clients are the `websockets` library's. The app records the
close code of every disconnect it sees, readable at `GET /disconnects`, so tests can tell who
closed and how. Tests wait for events (a close frame, a lease coming back), never for time,
except where the point is that time passing changes nothing.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from cove._gateway import Limits, Route
from tests.integration import test_gateway_proxy as proxy
from tests.integration.test_gateway_proxy import (
    HOST,
    WAIT_S,
    GatewayThread,
    TestUpstream,
    UvicornServer,
    start_uvicorn,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
start_gateway = proxy.start_gateway

WS_APP = """
import json

disconnects = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] == "http":
        body = json.dumps(disconnects if scope["path"] == "/disconnects" else {"ok": True}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    path = scope["path"]
    if path == "/reject":
        await send({"type": "websocket.close", "code": 1008})
        return
    offered = scope.get("subprotocols") or []
    await send({"type": "websocket.accept", "subprotocol": offered[-1] if offered else None})
    if path == "/scope":
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        await send({"type": "websocket.send", "text": json.dumps({"headers": headers})})
    elif path.startswith("/close/"):
        await send({"type": "websocket.close", "code": int(path[7:]), "reason": "bye now"})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            disconnects.append([path, message.get("code")])
            return
        await send({"type": "websocket.send", "bytes": message.get("bytes"), "text": message.get("text")})
"""

WS_RUNNER = """
import sys
import uvicorn
sys.path.insert(0, sys.argv[1])
uvicorn.run(
    "ws_app:app", fd=int(sys.argv[2]), ws="websockets-sansio", ws_max_size=int(sys.argv[3]),
    ws_per_message_deflate=False, log_level="warning", loop="uvloop", http="httptools",
)
"""


@pytest.fixture(scope="module")
def ws_app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wsapp")
    (directory / "ws_app.py").write_text(WS_APP)
    return directory


@pytest.fixture(scope="module")
def ws_server(ws_app_dir: Path) -> Iterator[UvicornServer]:
    """The upstream as a container runs it: uvicorn with the 2 MiB message cap."""
    server = start_uvicorn(ws_app_dir, WS_RUNNER, [str(2 * MIB)])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spawn_ws_server(ws_app_dir: Path) -> Iterator[Callable[[int], UvicornServer]]:
    """Upstreams with a chosen message cap, which a test may stop; all are stopped afterwards."""
    started: list[UvicornServer] = []

    def spawn(max_size: int = 2 * MIB) -> UvicornServer:
        server = start_uvicorn(ws_app_dir, WS_RUNNER, [str(max_size)])
        started.append(server)
        return server

    try:
        yield spawn
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def upstream(ws_server: UvicornServer) -> TestUpstream:
    return TestUpstream(ws_server.path)


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayThread], upstream: TestUpstream) -> GatewayThread:
    return start_gateway({HOST: Route("chat", "socket", upstream)})


def open_ws(gw: GatewayThread, path: str = "/echo", **options: Any) -> ClientConnection:
    """A WebSocket client to the gateway, with the endpoint's host in the URL (and Host header)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT_S)
    options.setdefault("max_size", None)
    ws: ClientConnection = connect(
        f"ws://{HOST}:{gw.port}{path}",
        sock=sock,
        proxy=None,
        open_timeout=WAIT_S,
        close_timeout=WAIT_S,
        ping_interval=None,
        **options,
    )
    return ws


def closed_by(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Wait for the server to close; the code and reason of the close frame it sent."""
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=WAIT_S)
    received = info.value.rcvd
    return (received.code, received.reason) if received is not None else (None, None)


def app_disconnects(server: UvicornServer, count: int) -> list[list[Any]]:
    """The disconnects the app has seen, once there are at least `count` of them."""
    deadline = time.monotonic() + WAIT_S
    with server.client() as client:
        while True:
            seen: list[list[Any]] = client.get("/disconnects", timeout=WAIT_S).json()
            if len(seen) >= count or time.monotonic() > deadline:
                return seen
            time.sleep(0.02)


# -- the relay passes everything


def test_text_binary_and_ping_pass_both_ways(gw: GatewayThread) -> None:
    """Text and binary messages come back as sent; a ping is answered with its pong."""
    with open_ws(gw) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=WAIT_S) == "héllo"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv(timeout=WAIT_S) == b"\x00\xff" * 1000
        assert ws.ping(b"are you there").wait(WAIT_S)


def test_close_code_and_reason_pass_both_ways(gw: GatewayThread, ws_server: UvicornServer) -> None:
    """The client's close code reaches the app; the app's close code and reason reach the client."""
    before = len(app_disconnects(ws_server, 0))
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=WAIT_S)
        ws.close(4001, "client done")
    assert app_disconnects(ws_server, before + 1)[-1] == ["/echo", 4001]
    with open_ws(gw, "/close/4002") as ws:
        assert closed_by(ws) == (4002, "bye now")


def test_fragmented_message_is_reassembled_by_the_app(gw: GatewayThread) -> None:
    with open_ws(gw) as ws:
        ws.send(iter([b"one,", b"two,", b"three"]))
        assert ws.recv(timeout=WAIT_S) == b"one,two,three"


def test_subprotocol_is_negotiated_end_to_end(gw: GatewayThread) -> None:
    with open_ws(gw, subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("hi")
        assert ws.recv(timeout=WAIT_S) == "hi"


def test_permessage_deflate_is_not_negotiated(gw: GatewayThread) -> None:
    """The client offers compression (the library's default); the offer never reaches the app."""
    with open_ws(gw, "/scope") as ws:
        headers = dict(json.loads(ws.recv(timeout=WAIT_S))["headers"])
        assert ws.protocol.extensions == []
    assert "sec-websocket-extensions" not in headers
    assert (headers["upgrade"], headers["connection"]) == ("websocket", "Upgrade")


def test_the_app_sees_the_peer_address_not_a_forged_one(gw: GatewayThread) -> None:
    with open_ws(gw, "/scope", additional_headers={"X-Forwarded-For": "6.6.6.6"}) as ws:
        headers = json.loads(ws.recv(timeout=WAIT_S))["headers"]
    assert [v for k, v in headers if k == "x-forwarded-for"] == ["127.0.0.1"]


def test_an_upgrade_the_app_refuses_is_answered_403(gw: GatewayThread, upstream: TestUpstream) -> None:
    with pytest.raises(Exception, match="403"):
        open_ws(gw, "/reject")
    assert upstream.wait_releases(1) == [False]


# -- message size


@pytest.mark.parametrize("upstream_cap", [2 * MIB, 16 * MIB], ids=["container-cap", "no-container-cap"])
def test_a_2_mib_message_passes_and_one_byte_more_closes_with_1009(
    start_gateway: Callable[..., GatewayThread],
    spawn_ws_server: Callable[[int], UvicornServer],
    upstream_cap: int,
) -> None:
    """Modal's cap holds whatever the container enforces (a web_server's server may have none):
    the gateway itself closes the connection with 1009, and the app sees the same code."""
    server = spawn_ws_server(upstream_cap)
    upstream = TestUpstream(server.path)
    gw = start_gateway({HOST: Route("chat", "socket", upstream)})
    with open_ws(gw) as ws:
        ws.send(b"a" * (2 * MIB))
        assert len(ws.recv(timeout=WAIT_S)) == 2 * MIB
        ws.send(iter([b"b" * MIB, b"b" * MIB]))  # fragmented: the message counts, not the frame
        assert len(ws.recv(timeout=WAIT_S)) == 2 * MIB
        ws.send(b"c" * (2 * MIB + 1))
        code, _ = closed_by(ws)
    assert code == 1009
    assert app_disconnects(server, 1) == [["/echo", 1009]]
    assert upstream.wait_releases(1) == [False]


# -- lifetime: one function call per connection


def test_the_lease_is_held_while_open_and_released_when_the_client_closes(
    gw: GatewayThread, upstream: TestUpstream
) -> None:
    with open_ws(gw) as ws:
        ws.send("x")
        assert ws.recv(timeout=WAIT_S) == "x"
        assert upstream.releases == []  # the connection is still one call on the container
    assert upstream.wait_releases(1) == [False]
    assert gw.gateway.pool.idle_count() == 0  # an upgraded connection is never reused


def test_the_lease_is_released_when_the_app_closes(gw: GatewayThread, upstream: TestUpstream) -> None:
    with open_ws(gw, "/close/1000") as ws:
        assert closed_by(ws) == (1000, "bye now")
    assert upstream.wait_releases(1) == [False]


def test_neither_timeouts_nor_idleness_cut_a_websocket(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """The function timeout, the 303 limit and the keep-alive/head timeouts all pass unnoticed."""
    limits = Limits(header_timeout_s=0.1, idle_timeout_s=0.1)
    gw = start_gateway({HOST: Route("chat", "socket", upstream, timeout_s=0.2)}, limits=limits)

    async def shorten() -> None:
        gw.gateway.set_http_timeout(0.1)

    gw.call(shorten())
    with open_ws(gw) as ws:
        time.sleep(0.6)  # idle, past every limit above
        ws.send("still here")
        assert ws.recv(timeout=WAIT_S) == "still here"
        assert upstream.releases == []


def test_a_container_stopping_closes_its_websockets_cleanly(
    start_gateway: Callable[..., GatewayThread], spawn_ws_server: Callable[[int], UvicornServer]
) -> None:
    """uvicorn closes with 1012 (service restart) when it shuts down; the code passes through."""
    server = spawn_ws_server(2 * MIB)
    upstream = TestUpstream(server.path)
    gw = start_gateway({HOST: Route("chat", "socket", upstream)})
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=WAIT_S)
        server.proc.send_signal(signal.SIGTERM)
        code, _ = closed_by(ws)
    assert code == 1012
    assert upstream.wait_releases(1) == [False]
    server.proc.wait(WAIT_S)


def test_gateway_close_closes_websockets_with_1001(
    gw: GatewayThread, ws_server: UvicornServer, upstream: TestUpstream
) -> None:
    """The gateway asks the app to close (1001, going away); the app's answer reaches the client."""
    before = len(app_disconnects(ws_server, 0))
    with open_ws(gw) as ws:
        ws.send("x")
        ws.recv(timeout=WAIT_S)
        gw.call(gw.gateway.close(timeout_s=WAIT_S))
        code, _ = closed_by(ws)
    assert code == 1001
    assert app_disconnects(ws_server, before + 1)[-1] == ["/echo", 1001]
    assert upstream.wait_releases(1) == [False]
