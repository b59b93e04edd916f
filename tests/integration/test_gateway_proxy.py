"""The gateway proxies real HTTP clients to a real uvicorn listening on a unix socket.

Each test runs a `Gateway` on its own event loop in a background thread (plain asyncio and uvloop)
and talks to it with httpx or a raw socket. Upstreams are uvicorn subprocesses serving the app in
`APP_SOURCE`, or, where uvicorn cannot misbehave on demand, a scripted socket server in a thread.
Tests synchronise with the app through HTTP "gates", never through sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httptools
import httpx
import pytest
import uvloop

from cove._gateway import Gateway, Lease, Route, UpstreamError

pytestmark = pytest.mark.integration

T = TypeVar("T")
HOST = "alice--shop-square-dev.localhost"
WAIT_S = 20.0  # upper bound for anything a test waits for; a hang fails instead of stalling

APP_SOURCE = """
import asyncio
import hashlib

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

app = FastAPI()
gates: dict[str, asyncio.Event] = {}


def gate(name: str) -> asyncio.Event:
    return gates.setdefault(name, asyncio.Event())


@app.get("/health")
async def health():
    return {"ok": True}


@app.get("/echo")
async def echo(request: Request):
    return {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "client": request.client.host if request.client else None,
        "headers": [[k, v] for k, v in request.headers.items()],
    }


@app.post("/json")
async def post_json(item: dict):
    return {"got": item, "square": item["x"] ** 2}


@app.post("/hash")
async def hash_body(request: Request):
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    return {
        "sha256": digest.hexdigest(),
        "length": length,
        "expect": request.headers.get("expect"),
        "transfer_encoding": request.headers.get("transfer-encoding"),
    }


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


@app.get("/download")
async def download(n: int, chunked: bool = False):
    body = pattern(n)
    if not chunked:
        return Response(body, media_type="application/octet-stream")

    async def parts():
        for i in range(0, n, 100_000):
            yield body[i : i + 100_000]

    return StreamingResponse(parts(), media_type="application/octet-stream")


@app.api_route("/head", methods=["GET", "HEAD"])
async def head():
    return Response(b"h" * 100, media_type="text/plain")


@app.post("/gate/{name}/open")
async def open_gate(name: str):
    gate(name).set()
    return {"opened": name}


@app.get("/wait/{name}")
async def wait_gate(name: str):
    await gate(name).wait()
    return {"waited": name}


@app.get("/sse/{name}")
async def sse(name: str):
    async def events():
        yield "data: first\\n\\n"
        await gate(name).wait()
        yield "data: second\\n\\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/hang/{name}")
async def hang(name: str):
    gate(name + "-started").set()
    await asyncio.Event().wait()
"""

RUNNER = """
import sys
import uvicorn
sys.path.insert(0, sys.argv[1])
uvicorn.run(
    "cg_app:app", fd=int(sys.argv[2]), proxy_headers=True, forwarded_allow_ips="*",
    log_level="warning", loop="uvloop", http="httptools",
)
"""


# -- upstream processes ------------------------------------------------------------------------


@dataclass
class UvicornServer:
    """A uvicorn subprocess serving the test app on a unix socket the test bound for it."""

    path: str
    proc: subprocess.Popen[bytes]
    sock_dir: str

    def client(self) -> httpx.Client:
        """A client that talks to the upstream directly, bypassing the gateway."""
        return httpx.Client(transport=httpx.HTTPTransport(uds=self.path), base_url="http://upstream")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT_S)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def start_uvicorn(app_dir: Path, runner: str = RUNNER, args: Sequence[str] = ()) -> UvicornServer:
    # Short directory: unix socket paths are limited to 107 bytes.
    sock_dir = tempfile.mkdtemp(prefix="cg-")
    path = os.path.join(sock_dir, "u.sock")
    # Bind here and hand the listening socket over, as the runtime does: connects queue in the
    # backlog until uvicorn accepts, and once the child dies nobody holds the socket (refused).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(128)
        proc = subprocess.Popen(
            [sys.executable, "-c", runner, str(app_dir), str(listener.fileno()), *args],
            pass_fds=[listener.fileno()],
            stdin=subprocess.DEVNULL,
        )
    finally:
        listener.close()
    server = UvicornServer(path, proc, sock_dir)
    try:
        # Ready = it answers HTTP; the request waits in the backlog until uvicorn serves it.
        with server.client() as client:
            assert client.get("/health", timeout=WAIT_S).status_code == 200
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    (directory / "cg_app.py").write_text(APP_SOURCE)
    return directory


@pytest.fixture(scope="module")
def uvicorn_server(app_dir: Path) -> Iterator[UvicornServer]:
    server = start_uvicorn(app_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spawn_uvicorn(app_dir: Path) -> Iterator[Callable[[], UvicornServer]]:
    """Start extra upstreams a test may kill; all are stopped afterwards."""
    started: list[UvicornServer] = []

    def spawn() -> UvicornServer:
        server = start_uvicorn(app_dir)
        started.append(server)
        return server

    try:
        yield spawn
    finally:
        for server in started:
            server.stop()


class RawUpstream:
    """A scripted HTTP server on a unix socket, for misbehaviour uvicorn will not show on demand.

    Connections are accepted one after another in a thread; `script(conn, index)` handles each.
    """

    def __init__(self, script: Callable[[socket.socket, int], None]) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="cg-")
        self.path = os.path.join(self.sock_dir, "raw.sock")
        self._script = script
        self._stopping = False
        self.errors: list[BaseException] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._serve, name="raw-upstream")
        self._thread.start()

    def _serve(self) -> None:
        index = 0
        while True:
            conn, _ = self._listener.accept()
            with conn:
                if self._stopping:
                    return
                conn.settimeout(WAIT_S)
                try:
                    self._script(conn, index)
                except Exception as exc:  # reported by stop()
                    self.errors.append(exc)
            index += 1

    def stop(self) -> None:
        self._stopping = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:  # unblocks accept()
            wake.connect(self.path)
        self._thread.join(WAIT_S)
        self._listener.close()
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        assert not self.errors, self.errors


def read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"peer closed after {data!r}")
        data += chunk
    return data


@pytest.fixture
def raw_upstream() -> Iterator[Callable[[Callable[[socket.socket, int], None]], RawUpstream]]:
    started: list[RawUpstream] = []

    def start(script: Callable[[socket.socket, int], None]) -> RawUpstream:
        server = RawUpstream(script)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# -- the Upstream the runtime would provide ------------------------------------------------------


@dataclass
class TestUpstream:
    """Hands out leases on one socket and records how they come back."""

    __test__ = False  # not a test class

    address: str
    name: str = "test"
    releases: list[bool] = field(default_factory=list)  # the broken flag of each release
    double_releases: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def acquire(self) -> Lease:
        return TestLease(self)

    def record(self, broken: bool) -> None:
        with self._cond:
            self.releases.append(broken)
            self._cond.notify_all()

    def wait_releases(self, count: int) -> list[bool]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.releases) >= count, WAIT_S), self.releases
            return list(self.releases)


class TestLease:
    __test__ = False

    def __init__(self, upstream: TestUpstream) -> None:
        self._upstream = upstream
        self._released = False

    @property
    def address(self) -> str:
        return self._upstream.address

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        if self._released:
            self._upstream.double_releases += 1
        self._released = True
        self._upstream.record(broken)

    async def failure_message(self) -> str:
        return f"cove: container {self._upstream.name} failed"


class RefusingUpstream:
    async def acquire(self) -> Lease:
        raise UpstreamError(503, "cove: queue full (max_containers=1)", (("Retry-After", "1"),))


# -- the gateway in a thread ---------------------------------------------------------------------


class GatewayThread:
    """A Gateway on its own event loop in a background thread."""

    def __init__(
        self, loop_kind: str, routes: Mapping[str, Route], max_body_bytes: int, **options: Any
    ) -> None:
        self.loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop")
        self.thread.start()
        self.gateway = Gateway(routes=routes, max_body_bytes=max_body_bytes, **options)
        try:
            self.call(self.gateway.start())
        except BaseException:
            self._stop_loop()
            raise
        self.port = self.gateway.port
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        async def swap() -> None:
            self.gateway.set_routes(routes)

        self.call(swap())

    def client(self, host: str = HOST, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Host": host}, timeout=WAIT_S, **kwargs)

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)
        return sock

    def close(self) -> None:
        try:
            self.call(self.gateway.close(timeout_s=5.0))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def start_gateway(request: pytest.FixtureRequest) -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(
        routes: Mapping[str, Route], max_body_bytes: int = 4 * 1024**3, **options: Any
    ) -> GatewayThread:
        """A started gateway; `options` are further `Gateway` keyword arguments."""
        gateway = GatewayThread(request.param, routes, max_body_bytes, **options)
        started.append(gateway)
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.close()


@pytest.fixture
def upstream(uvicorn_server: UvicornServer) -> TestUpstream:
    return TestUpstream(uvicorn_server.path)


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayThread], upstream: TestUpstream) -> GatewayThread:
    return start_gateway({HOST: Route("shop", "square", upstream)})


# -- raw HTTP on the client side -----------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class _ResponseCollector:
    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.done.append(RawResponse(status, self._headers, bytes(self._body)))


def read_responses(sock: socket.socket, count: int) -> list[RawResponse]:
    """Parse `count` complete responses (1xx included) from a raw client socket."""
    collector = _ResponseCollector()
    while len(collector.done) < count:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed after {len(collector.done)} responses")
        collector.parser.feed_data(data)
    return collector.done


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


async def barrier() -> None:
    """Scheduled after a coroutine, runs after that coroutine's first step on the same loop."""


def gate_name() -> str:
    return uuid.uuid4().hex[:12]


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


# -- tests -----------------------------------------------------------------------------------------


def test_get_with_query_string_reaches_the_app(gw: GatewayThread, upstream: TestUpstream) -> None:
    with gw.client() as client:
        response = client.get("/echo", params={"q": "a b", "n": "1"})
    assert response.status_code == 200
    body = response.json()
    assert (body["method"], body["path"], body["query"]) == ("GET", "/echo", "q=a+b&n=1")
    assert dict(body["headers"])["host"] == HOST
    assert upstream.wait_releases(1) == [False]


def test_host_is_matched_case_insensitively_with_port_and_trailing_dot(gw: GatewayThread) -> None:
    with gw.client(host=f"{HOST.upper()}.:{gw.port}") as client:
        assert client.get("/echo").status_code == 200


def test_post_json_round_trips(gw: GatewayThread) -> None:
    with gw.client() as client:
        response = client.post("/json", json={"x": 7})
    assert response.status_code == 200
    assert response.json() == {"got": {"x": 7}, "square": 49}


def test_large_upload_with_content_length_streams_through(gw: GatewayThread) -> None:
    body = pattern(20 * 1024 * 1024)
    with gw.client() as client:
        response = client.post("/hash", content=body)
    assert response.status_code == 200
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert response.json()["length"] == len(body)


def test_chunked_upload_is_forwarded_chunked(gw: GatewayThread) -> None:
    parts = [pattern(1_000_000 + i) for i in range(20)]

    def chunks() -> Iterator[bytes]:
        yield from parts

    with gw.client() as client:
        response = client.post("/hash", content=chunks())
    assert response.status_code == 200
    whole = b"".join(parts)
    assert response.json()["sha256"] == hashlib.sha256(whole).hexdigest()
    assert response.json()["transfer_encoding"] == "chunked"


@pytest.mark.parametrize("chunked", [False, True])
def test_large_download_streams_back(gw: GatewayThread, chunked: bool) -> None:
    n = 20 * 1024 * 1024
    digest = hashlib.sha256()
    length = 0
    with gw.client() as client, client.stream("GET", "/download", params={"n": n, "chunked": chunked}) as r:
        assert r.status_code == 200
        assert ("content-length" in r.headers) is not chunked
        for chunk in r.iter_raw():
            digest.update(chunk)
            length += len(chunk)
    assert length == n
    assert digest.hexdigest() == hashlib.sha256(pattern(n)).hexdigest()


def test_sse_streams_event_by_event(gw: GatewayThread) -> None:
    """The first event arrives while the app still waits for the test to allow the second."""
    name = gate_name()
    with gw.client() as client, gw.client() as control, client.stream("GET", f"/sse/{name}") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        assert next(lines) == ""
        assert control.post(f"/gate/{name}/open").status_code == 200
        assert next(lines) == "data: second"


def test_unknown_host_is_404_naming_the_host(gw: GatewayThread) -> None:
    with gw.client(host="Nobody--Here.localhost:8000") as client:
        response = client.get("/echo")
    assert response.status_code == 404
    assert response.text == "cove: no endpoint at nobody--here.localhost\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_stopped_app_is_404(start_gateway: Callable[..., GatewayThread]) -> None:
    gw = start_gateway({HOST: Route("shop", "square", None)})
    with gw.client() as client:
        response = client.get("/echo")
    assert response.status_code == 404
    assert response.text == "cove: app shop is stopped\n"


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_missing_host_is_400(gw: GatewayThread, version: str) -> None:
    with gw.raw() as sock:
        sock.sendall(f"GET /echo {version}\r\n\r\n".encode())
        [response] = read_responses(sock, 1)
    assert response.status == 400
    assert response.body == b"cove: missing Host header\n"


def test_forwarded_headers_are_replaced_by_the_peer_address(gw: GatewayThread) -> None:
    spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"}
    with gw.client() as client:
        body = client.get("/echo", headers=spoofed).json()
    headers = body["headers"]
    assert body["client"] == "127.0.0.1"
    assert [v for k, v in headers if k == "x-forwarded-for"] == ["127.0.0.1"]
    assert [v for k, v in headers if k == "x-forwarded-proto"] == ["http"]
    assert not [k for k, _ in headers if k == "forwarded"]


def test_hop_by_hop_request_headers_are_not_forwarded(gw: GatewayThread) -> None:
    with gw.client() as client:
        response = client.get("/echo", headers={"Connection": "keep-alive, X-Private", "X-Private": "1"})
    names = {k for k, _ in response.json()["headers"]}
    assert "x-private" not in names
    assert "keep-alive" not in names


def test_keep_alive_reuses_one_upstream_connection(gw: GatewayThread, upstream: TestUpstream) -> None:
    with gw.client() as client:
        for i in range(5):
            assert client.get("/echo", params={"i": i}).status_code == 200
    assert gw.gateway.pool.opened == 1
    assert gw.gateway.pool.reuses == 4
    assert upstream.wait_releases(5) == [False] * 5
    assert upstream.double_releases == 0


def test_head_has_no_body_and_the_client_connection_stays_usable(gw: GatewayThread) -> None:
    with gw.client() as client:
        head = client.head("/head")
        get = client.get("/head")
    assert head.status_code == 200
    assert head.headers["content-length"] == "100"
    assert head.content == b""
    assert get.content == b"h" * 100
    assert gw.gateway.pool.opened == 2  # the HEAD's upstream connection is not reused


def test_pipelined_requests_are_answered_in_order(gw: GatewayThread) -> None:
    requests = (
        b"".join(f"GET /echo?n={i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode() for i in range(4))
        + b"GET /echo HTTP/1.1\r\nHost: nowhere.localhost\r\n\r\n"
    )
    with gw.raw() as sock:
        sock.sendall(requests)
        responses = read_responses(sock, 5)
    assert [json.loads(r.body)["query"] for r in responses[:4]] == [f"n={i}" for i in range(4)]
    assert responses[4].status == 404


def test_http_10_request_gets_its_answer_and_a_closed_connection(gw: GatewayThread) -> None:
    with gw.raw() as sock:
        sock.sendall(f"GET /echo?v=10 HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"\r\ntransfer-encoding" not in data.lower()
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["query"] == "v=10"


def test_expect_100_continue_is_answered_by_the_gateway(gw: GatewayThread) -> None:
    head = f"POST /hash HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    with gw.raw() as sock:
        sock.sendall(head.encode())
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        [response] = read_responses(sock, 1)
    assert response.status == 200
    assert json.loads(response.body) == {
        "sha256": hashlib.sha256(b"hello").hexdigest(),
        "length": 5,
        "expect": None,
        "transfer_encoding": None,
    }


def test_websocket_upgrade_the_app_refuses_gets_the_apps_answer_and_a_closed_connection(
    gw: GatewayThread,
) -> None:
    """The upgrade is forwarded; /echo has no WebSocket route, so the app's 403 comes back."""
    head = (
        f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with gw.raw() as sock:
        sock.sendall(head.encode())
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nConnection: close\r\n" in data


def test_acquire_error_is_answered_with_its_status_and_headers(
    start_gateway: Callable[..., GatewayThread],
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", RefusingUpstream())})
    with gw.client() as client:
        response = client.get("/echo")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.text == "cove: queue full (max_containers=1)\n"


def test_body_over_the_limit_is_413(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", upstream)}, max_body_bytes=1000)
    with gw.client() as client:
        too_big = client.post("/hash", content=b"x" * 1001)
        chunked = client.post("/hash", content=iter([b"x" * 600, b"x" * 600]))
        fits = client.post("/hash", content=b"x" * 1000)
    assert too_big.status_code == 413
    assert too_big.text == "cove: request body larger than 1000 bytes\n"
    assert chunked.status_code == 413
    assert fits.status_code == 200


def test_slow_handler_is_504_after_the_function_timeout(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = start_gateway({HOST: Route("shop", "square", upstream, timeout_s=0.5)})
    with gw.client() as client:
        response = client.get(f"/hang/{gate_name()}")
    assert response.status_code == 504
    assert response.text == "cove: function timed out after 0.5 s\n"
    assert upstream.wait_releases(1) == [True]
    assert gw.gateway.pool.idle_count() == 0


def test_upstream_killed_mid_request_is_502_then_a_new_upstream_serves(
    start_gateway: Callable[..., GatewayThread], spawn_uvicorn: Callable[[], UvicornServer]
) -> None:
    doomed = spawn_uvicorn()
    first = TestUpstream(doomed.path, name="doomed")
    gw = start_gateway({HOST: Route("shop", "square", first)})
    name = gate_name()
    with gw.client() as client, ThreadPoolExecutor(1) as pool, doomed.client() as direct:
        pending = pool.submit(client.get, f"/hang/{name}")
        assert direct.get(f"/wait/{name}-started", timeout=WAIT_S).status_code == 200
        doomed.proc.kill()
        response = pending.result(WAIT_S)
    assert response.status_code == 502
    assert response.text == "cove: container doomed failed\n"
    assert first.wait_releases(1) == [True]

    fresh = spawn_uvicorn()
    second = TestUpstream(fresh.path, name="fresh")
    gw.set_routes({HOST: Route("shop", "square", second)})
    with gw.client() as client:
        assert client.get("/echo").status_code == 200
    assert second.wait_releases(1) == [False]


def test_connect_refused_is_502(start_gateway: Callable[..., GatewayThread], tmp_path: Path) -> None:
    missing = TestUpstream(str(tmp_path / "nobody.sock"), name="absent")
    gw = start_gateway({HOST: Route("shop", "square", missing)})
    with gw.client() as client:
        response = client.get("/echo")
    assert response.status_code == 502
    assert response.text == "cove: container absent failed\n"
    assert missing.wait_releases(1) == [True]


def test_client_disconnect_releases_the_lease_and_drops_the_upstream_connection(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.raw() as sock, uvicorn_server.client() as direct:
        sock.sendall(f"GET /hang/{name} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert direct.get(f"/wait/{name}-started", timeout=WAIT_S).status_code == 200
    assert upstream.wait_releases(1) == [False]
    assert gw.gateway.pool.idle_count() == 0


def test_close_delimited_response_is_rechunked_for_http_11_and_raw_for_http_10(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, ")
        conn.sendall(b"world")

    server = raw_upstream(script)
    gw = start_gateway({HOST: Route("shop", "square", TestUpstream(server.path))})
    with gw.client() as client:
        response = client.get("/")
        again = client.get("/")
    assert response.text == again.text == "hello, world"
    assert response.headers["transfer-encoding"] == "chunked"
    with gw.raw() as sock:
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n".encode())
        data = read_until_closed(sock)
    assert data.endswith(b"\r\n\r\nhello, world")
    assert b"chunked" not in data.lower()


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)
        if index == 0:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            read_request_head(conn)  # then close without answering, like a keep-alive timeout
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    server = raw_upstream(script)
    upstream = TestUpstream(server.path)
    gw = start_gateway({HOST: Route("shop", "square", upstream)})
    with gw.client() as client:
        assert client.get("/").text == "first"
        assert client.get("/").text == "second"
    assert gw.gateway.pool.opened == 2
    assert upstream.wait_releases(2) == [False, False]


def test_fresh_connection_lost_before_the_head_is_502_without_retry(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)  # and close without answering

    server = raw_upstream(script)
    upstream = TestUpstream(server.path, name="raw")
    gw = start_gateway({HOST: Route("shop", "square", upstream)})
    with gw.client() as client:
        response = client.get("/")
    assert response.status_code == 502
    assert response.text == "cove: container raw failed\n"
    assert gw.gateway.pool.opened == 1


def test_close_lets_the_response_in_flight_finish(gw: GatewayThread, uvicorn_server: UvicornServer) -> None:
    name = gate_name()
    with gw.client() as client, uvicorn_server.client() as direct:
        with client.stream("GET", f"/sse/{name}") as response:
            lines = response.iter_lines()
            assert next(lines) == "data: first"
            assert next(lines) == ""
            closing = asyncio.run_coroutine_threadsafe(gw.gateway.close(timeout_s=WAIT_S), gw.loop)
            gw.call(barrier())  # close() has taken its first step: the listening socket is closed
            with pytest.raises(OSError):
                gw.raw().close()
            assert direct.post(f"/gate/{name}/open").status_code == 200
            assert next(lines) == "data: second"
        closing.result(WAIT_S)


def test_oversized_upload_gets_its_413_although_the_client_keeps_sending(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    """The gateway answers at once, then reads and drops what still arrives before closing, so the
    client is not reset before it reads the answer."""
    gw = start_gateway({HOST: Route("shop", "square", upstream)}, max_body_bytes=1000)
    head = f"POST /hash HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 50000000\r\n\r\n"
    with gw.raw() as sock:
        sock.sendall(head.encode() + b"x" * 1_000_000)
        sock.shutdown(socket.SHUT_WR)  # gives up sending; the gateway closes on seeing that
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(b"cove: request body larger than 1000 bytes\n")
    assert upstream.releases == []  # refused before any container was asked


def test_set_routes_applies_to_new_requests_only(gw: GatewayThread, uvicorn_server: UvicornServer) -> None:
    name = gate_name()
    with (
        gw.client() as client,
        uvicorn_server.client() as direct,
        client.stream("GET", f"/sse/{name}") as response,
    ):
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        gw.set_routes({HOST: Route("shop", "square", None)})
        assert client.get("/echo").text == "cove: app shop is stopped\n"
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert next(lines) == ""
        assert next(lines) == "data: second"


def test_upstream_lost_after_the_head_aborts_the_client_connection(
    start_gateway: Callable[..., GatewayThread], raw_upstream: Callable[..., RawUpstream]
) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    server = raw_upstream(script)
    upstream = TestUpstream(server.path)
    gw = start_gateway({HOST: Route("shop", "square", upstream)})
    with gw.client() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/")
    assert upstream.wait_releases(1) == [True]


def test_malformed_request_is_400_and_closes(gw: GatewayThread) -> None:
    with gw.raw() as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"\r\n\r\ncove: malformed request (" in data


def test_oversized_request_head_is_431(gw: GatewayThread) -> None:
    with gw.raw() as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 70_000}\r\n\r\n".encode())
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert data.endswith(b"cove: request head larger than 65536 bytes\n")
