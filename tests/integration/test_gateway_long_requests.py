"""Long requests through the real gateway: Modal's 303 protocol past the HTTP time limit.

The gateway runs with a short limit (`LIMIT_S`) in front of the uvicorn app of
`test_gateway_proxy.py` plus a few handlers that block on a gate the test opens; when a test must
know a detached call has finished, it waits for the lease to come back. No sleeps, no timing
assertions: a response arrives when the gateway's own timers fire.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cove._gateway import Route
from cove._gateway.longpoll import Running
from tests.integration import test_gateway_proxy as proxy
from tests.integration.test_gateway_proxy import (
    APP_SOURCE,
    HOST,
    WAIT_S,
    GatewayThread,
    TestUpstream,
    UvicornServer,
    barrier,
    gate_name,
    read_responses,
)

pytestmark = pytest.mark.integration

LIMIT_S = 0.5
CALL_ID = r"fc-[0-9a-f]{32}"

SLOW_SOURCE = """

@app.api_route("/slow/{name}", methods=["GET", "POST"])
async def slow(name: str, request: Request):
    body = await request.body()
    gate(name + "-started").set()
    await gate(name).wait()
    text = f"done {name} query={request.url.query} body={body.decode()}"
    return Response(text, status_code=201, media_type="text/plain", headers={"X-Slow": name})


@app.get("/slow-stream/{name}")
async def slow_stream(name: str):
    await gate(name).wait()

    async def parts():
        for i in range(3):
            yield f"part{i};"

    return StreamingResponse(parts(), media_type="text/plain")
"""

# The fixtures of the proxy tests; `app_dir` below gives their uvicorn the slow handlers too.
uvicorn_server = proxy.uvicorn_server
start_gateway = proxy.start_gateway
upstream = proxy.upstream


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    (directory / "cg_app.py").write_text(APP_SOURCE + SLOW_SOURCE)
    return directory


def limited(start_gateway: Callable[..., GatewayThread], route: Route) -> GatewayThread:
    """A gateway whose HTTP time limit is `LIMIT_S`, set after start as an operator would."""
    gw = start_gateway({HOST: route})

    async def set_limit() -> None:
        gw.gateway.set_http_timeout(LIMIT_S)

    gw.call(set_limit())
    return gw


@pytest.fixture
def gw(start_gateway: Callable[..., GatewayThread], upstream: TestUpstream) -> GatewayThread:
    return limited(start_gateway, Route("shop", "square", upstream))


def call_id_in(location: str) -> str:
    match = re.search(rf"__cove_function_call_id=({CALL_ID})$", location)
    assert match, location
    return match.group(1)


def wait_on_loop(gw: GatewayThread, predicate: Callable[[], bool]) -> None:
    """Wait until `predicate`, evaluated on the gateway's loop between its callbacks, holds."""
    deadline = threading.Event()
    timer = threading.Timer(WAIT_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():

            async def check() -> bool:
                return predicate()

            if gw.call(check()):
                return
            gw.call(barrier())
        raise AssertionError("condition not reached on the gateway loop")
    finally:
        timer.cancel()


def test_a_fast_request_is_answered_as_usual(gw: GatewayThread, upstream: TestUpstream) -> None:
    with gw.client(follow_redirects=False) as client:
        response = client.get("/echo", params={"q": "1"})
    assert response.status_code == 200
    assert response.json()["query"] == "q=1"
    assert upstream.wait_releases(1) == [False]
    assert (gw.gateway.calls.running_count, gw.gateway.calls.result_count) == (0, 0)


def test_a_slow_request_gets_303_and_its_url_then_serves_the_result(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        first = client.get(f"/slow/{name}", params={"a": "1", "b": "two"})
        assert first.status_code == 303
        assert first.headers["content-length"] == "0"
        location = first.headers["location"]
        assert re.fullmatch(rf"/slow/{name}\?a=1&b=two&__cove_function_call_id={CALL_ID}", location)

        still_running = client.get(location)
        assert still_running.status_code == 303
        assert still_running.headers["location"] == location
        assert upstream.releases == []

        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]  # the call finished: its result is stored
        done = client.get(location)
        again = client.get(location)
    for response in (done, again):
        assert response.status_code == 201
        assert response.text == f"done {name} query=a=1&b=two body="
        assert response.headers["x-slow"] == name
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.headers["content-length"] == str(len(response.content))
    assert gw.gateway.calls.running_count == 0
    assert gw.gateway.pool.idle_count() == 1  # the upstream connection was released normally


def test_a_posted_body_reaches_the_function_before_the_303(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        first = client.post(f"/slow/{name}", content=b"payload")
        assert first.status_code == 303
        location = first.headers["location"]
        assert re.fullmatch(rf"/slow/{name}\?__cove_function_call_id={CALL_ID}", location)
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]
        result = client.get(location)
    assert result.status_code == 201
    assert result.text == f"done {name} query= body=payload"


def test_an_upload_still_arriving_at_the_limit_gets_its_303_once_forwarded(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()

    def redirect_due() -> bool:  # the limit passed while the body was arriving
        return any(c._current is not None and c._current._redirect_due for c in gw.gateway._connections)

    with gw.raw() as sock, gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        sock.sendall(
            f"POST /slow/{name}?n=1 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\n\r\nhello".encode()
        )
        wait_on_loop(gw, redirect_due)
        sock.sendall(b"world")
        (first,) = read_responses(sock, 1)
        assert first.status == 303
        location = first.headers["location"]
        assert re.fullmatch(rf"/slow/{name}\?n=1&__cove_function_call_id={CALL_ID}", location)
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]
        result = client.get(location)
    assert result.status_code == 201
    assert result.text == f"done {name} query=n=1 body=helloworld"


def test_a_streamed_result_is_collected_whole(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        location = client.get(f"/slow-stream/{name}").headers["location"]
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]
        result = client.get(location)
    assert result.status_code == 200
    assert result.text == "part0;part1;part2;"
    assert "transfer-encoding" not in result.headers
    assert result.headers["content-length"] == str(len(result.content))


def test_the_result_url_works_from_any_host_but_only_with_get(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        location = client.get(f"/slow/{name}").headers["location"]
        not_get = client.post(location, content=b"x")
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]
    with gw.client(host="elsewhere.localhost", follow_redirects=False) as other:
        elsewhere = other.get(location)
        head = other.head(location)
    assert not_get.status_code == 400
    assert not_get.text == "cove: bad redirect method\n"
    assert elsewhere.status_code == 201
    assert head.status_code == 400


def test_an_unknown_call_id_is_404(gw: GatewayThread) -> None:
    with gw.client(host="nobody.localhost") as client:
        response = client.get("/anything", params={"x": "1", "__cove_function_call_id": "fc-0000"})
    assert response.status_code == 404
    assert response.text == "cove: unknown or expired function call fc-0000\n"


def test_the_function_timeout_still_bounds_a_detached_call(
    start_gateway: Callable[..., GatewayThread], upstream: TestUpstream
) -> None:
    gw = limited(start_gateway, Route("shop", "square", upstream, timeout_s=1.0))
    with gw.client(follow_redirects=False) as client:
        first = client.get(f"/hang/{gate_name()}")
        assert first.status_code == 303
        assert upstream.wait_releases(1) == [True]  # timed out: the container is suspect
        result = client.get(first.headers["location"])
    assert result.status_code == 504
    assert result.text == "cove: function timed out after 1 s\n"
    assert gw.gateway.pool.idle_count() == 0  # the upstream connection was dropped


def test_a_client_that_follows_redirects_gets_the_final_result(
    gw: GatewayThread, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    redirected = threading.Event()

    def on_response(response: httpx.Response) -> None:
        if response.status_code == 303:
            redirected.set()

    hooks: dict[str, Any] = {"response": [on_response]}
    with (
        gw.client(follow_redirects=True, event_hooks=hooks) as client,
        uvicorn_server.client() as direct,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.get, f"/slow/{name}")
        assert redirected.wait(WAIT_S)
        assert direct.post(f"/gate/{name}/open").status_code == 200
        response = pending.result(WAIT_S)
    assert response.status_code == 201
    assert response.text == f"done {name} query= body="
    assert response.history and {r.status_code for r in response.history} == {303}
    assert "__cove_function_call_id=fc-" in str(response.url)


def test_a_poller_that_leaves_does_not_stop_the_call(
    gw: GatewayThread, upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    name = gate_name()
    with gw.client(follow_redirects=False) as client, uvicorn_server.client() as direct:
        location = client.get(f"/slow/{name}").headers["location"]
        call_id = call_id_in(location)

        def watchers() -> int:
            found = gw.gateway.calls.lookup(call_id)
            return len(found.watchers) if isinstance(found, Running) else -1

        with gw.raw() as sock:
            sock.sendall(f"GET {location} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            wait_on_loop(gw, lambda: watchers() == 1)
        wait_on_loop(gw, lambda: watchers() == 0)  # stopped waiting; the call is still running
        assert direct.post(f"/gate/{name}/open").status_code == 200
        assert upstream.wait_releases(1) == [False]
        result = client.get(location)
    assert result.status_code == 201


def test_close_ends_a_detached_call_and_releases_its_lease(gw: GatewayThread, upstream: TestUpstream) -> None:
    with gw.client(follow_redirects=False) as client:
        assert client.get(f"/hang/{gate_name()}").status_code == 303
    gw.call(gw.gateway.close(timeout_s=WAIT_S))
    assert upstream.wait_releases(1) == [False]
    assert gw.gateway.pool.open_count == 0
