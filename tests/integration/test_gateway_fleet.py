"""The gateway on several processes (COVE_GATEWAY_WORKERS): worker processes share the owner's port.

Each test runs a `SharedGateway` on its own event loop in a background thread, with one real worker
process (two processes serve the port), in front of a real uvicorn. Clients open a new connection
per request, so the kernel's SO_REUSEPORT hashing spreads them over both processes; which process
finished each request is read from the owner's per-process counts (`Fleet.served`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvloop

from cove._gateway import Lease, Route
from cove._gateway.fleet import SharedGateway
from tests.integration import test_gateway_long_requests as long_requests
from tests.integration import test_gateway_proxy as proxy
from tests.integration import test_gateway_websocket as websocket
from tests.integration.test_gateway_proxy import HOST, WAIT_S, TestUpstream, UvicornServer, gate_name

pytestmark = pytest.mark.integration

T = TypeVar("T")

uvicorn_server = proxy.uvicorn_server
upstream = proxy.upstream


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    (directory / "cg_app.py").write_text(proxy.APP_SOURCE + long_requests.SLOW_SOURCE)
    return directory


class FleetThread:
    """A `SharedGateway` with `workers` worker processes, its owner on a loop in a background thread."""

    def __init__(self, routes: Mapping[str, Route], workers: int, **options: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="owner-loop")
        self.thread.start()
        self.gateway = SharedGateway(workers=workers, routes=routes, **options)
        try:
            self.call(self.gateway.start())
        except BaseException:
            self._stop_loop()
            raise
        self.port = self.gateway.port
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S * 3)

    def get(self, path: str) -> httpx.Response:
        """One request on a connection of its own (so SO_REUSEPORT may give it to any process)."""
        with httpx.Client(base_url=self.url, headers={"Host": HOST}, timeout=WAIT_S) as client:
            return client.get(path, headers={"Connection": "close"})

    def served(self) -> dict[int, int]:
        """Requests finished per process, the workers' reports up to now included."""

        async def read() -> dict[int, int]:
            await self.gateway.fleet.barrier()
            return dict(self.gateway.fleet.served)

        return self.call(read())

    def wait(self, predicate: Callable[[], bool]) -> None:
        self.call(asyncio.wait_for(self.gateway.fleet.wait_until(predicate), WAIT_S * 2))

    def close(self) -> None:
        try:
            self.call(self.gateway.close(timeout_s=5.0))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


@pytest.fixture
def start_fleet() -> Iterator[Callable[..., FleetThread]]:
    started: list[FleetThread] = []

    def start(routes: Mapping[str, Route], workers: int = 1, **options: Any) -> FleetThread:
        fleet = FleetThread(routes, workers, **options)
        started.append(fleet)
        return fleet

    try:
        yield start
    finally:
        for fleet in started:
            fleet.close()


def until_both_serve(fleet: FleetThread, path: str = "/health", tries: int = 400) -> list[httpx.Response]:
    """Requests on new connections until the owner and its worker have each finished one."""
    responses = []
    owner = os.getpid()
    for _ in range(tries):
        responses.append(fleet.get(path))
        served = fleet.served()
        if len(served) >= 2 and served.get(owner):
            return responses
    raise AssertionError(f"one process served every request: {fleet.served()}")


def test_the_owner_and_a_worker_process_both_serve_the_port(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    fleet = start_fleet({HOST: Route("shop", "square", upstream)})
    [worker] = fleet.gateway.fleet.pids
    assert worker != os.getpid()
    responses = until_both_serve(fleet)
    assert {r.status_code for r in responses} == {200}
    assert set(fleet.served()) == {os.getpid(), worker}
    # Every lease the worker took went through the owner's upstream and came back.
    assert upstream.wait_releases(len(responses)) == [False] * len(responses)
    figures = fleet.gateway.metrics.lookup("shop", "square")
    assert figures is not None
    assert figures.requests_total == len(responses)  # the worker's requests counted by the owner


def test_the_workspace_rate_limit_is_one_total_across_processes(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    # A bucket of 5 tokens that refills once every 100 s: per-process buckets would pass 10.
    fleet = start_fleet(
        {HOST: Route("shop", "square", upstream)}, rate_limit_rps=0.01, rate_limit_burst_s=500
    )
    responses = [fleet.get("/health") for _ in range(40)]
    served = fleet.served()
    assert len(served) == 2, f"the requests did not reach both processes: {served}"
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 35, statuses
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 429)


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    fleet = start_fleet({HOST: Route("shop", "square", upstream)})
    [first] = fleet.gateway.fleet.pids
    os.kill(first, signal.SIGKILL)
    fleet.wait(lambda: fleet.gateway.fleet.pids not in ([], [first]))
    [second] = fleet.gateway.fleet.pids
    assert second != first
    responses = until_both_serve(fleet)
    assert {r.status_code for r in responses} == {200}
    assert second in fleet.served()


def test_routes_changed_on_the_owner_reach_the_worker(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    fleet = start_fleet({HOST: Route("shop", "square", upstream)})
    until_both_serve(fleet)

    async def stop_app() -> None:
        fleet.gateway.set_routes({HOST: Route("shop", "square", None)})

    fleet.call(stop_app())
    fleet.call(fleet.gateway.fleet.barrier())  # the worker has the new table
    responses = [fleet.get("/health") for _ in range(30)]
    assert {(r.status_code, r.text) for r in responses} == {(404, "cove: app shop is stopped\n")}


def test_a_303_result_is_found_whichever_process_the_poll_reaches(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream, uvicorn_server: UvicornServer
) -> None:
    fleet = start_fleet({HOST: Route("shop", "square", upstream)})

    async def set_limit() -> None:
        fleet.gateway.set_http_timeout(long_requests.LIMIT_S)

    fleet.call(set_limit())
    fleet.call(fleet.gateway.fleet.barrier())
    until_both_serve(fleet)
    started = len(upstream.releases)
    name = gate_name()
    first = fleet.get(f"/slow/{name}")
    assert first.status_code == 303
    location = first.headers["location"]
    assert re.search(rf"__cove_function_call_id={long_requests.CALL_ID}$", location)
    with uvicorn_server.client() as direct:
        assert direct.post(f"/gate/{name}/open").status_code == 200
    upstream.wait_releases(started + 1)
    before = fleet.served()
    polls = [fleet.get(location) for _ in range(30)]
    assert {(p.status_code, p.text) for p in polls} == {(201, f"done {name} query= body=")}
    after = fleet.served()
    assert all(after[pid] > before.get(pid, 0) for pid in after), "one process answered every poll"


@dataclass
class GatedUpstream(TestUpstream):
    """Every acquire waits (as in a pool's queue) until the test opens the gate on the owner's loop."""

    __test__ = False

    waiting: int = 0
    cancelled: int = 0
    _gate: asyncio.Event | None = None

    @property
    def gate(self) -> asyncio.Event:
        if self._gate is None:
            self._gate = asyncio.Event()
        return self._gate

    async def acquire(self) -> Lease:
        self.waiting += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        return await super().acquire()


def wait_on_owner(fleet: FleetThread, predicate: Callable[[], bool]) -> None:
    """Wait until `predicate`, checked on the owner's loop between its callbacks, holds."""

    async def check() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    fleet.call(asyncio.wait_for(check(), WAIT_S))


def request_bytes() -> bytes:
    return f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def test_requests_queued_at_the_owner_are_served_when_a_slot_frees_up_whichever_process_took_them(
    start_fleet: Callable[..., FleetThread], uvicorn_server: UvicornServer
) -> None:
    gated = GatedUpstream(uvicorn_server.path)
    fleet = start_fleet({HOST: Route("shop", "square", gated)})
    before = fleet.served()
    with ThreadPoolExecutor(20) as pool:
        pending = [pool.submit(fleet.get, "/health") for _ in range(20)]
        wait_on_owner(fleet, lambda: gated.waiting == 20)

        async def open_gate() -> None:
            gated.gate.set()

        fleet.call(open_gate())
        statuses = [f.result(WAIT_S).status_code for f in pending]
    assert statuses == [200] * 20
    after = fleet.served()
    assert all(after[pid] > before.get(pid, 0) for pid in after) and len(after) == 2, after
    assert gated.wait_releases(20) == [False] * 20


def test_a_client_leaving_while_queued_leaves_the_owners_queue(
    start_fleet: Callable[..., FleetThread], uvicorn_server: UvicornServer
) -> None:
    gated = GatedUpstream(uvicorn_server.path)
    fleet = start_fleet({HOST: Route("shop", "square", gated)})
    clients = [socket.create_connection(("127.0.0.1", fleet.gateway.port), timeout=WAIT_S) for _ in range(20)]
    for client in clients:
        client.sendall(request_bytes())
    wait_on_owner(fleet, lambda: gated.waiting == 20)
    for client in clients:
        client.close()
    wait_on_owner(fleet, lambda: gated.cancelled == 20 and gated.waiting == 0)
    assert gated.releases == []  # no lease was handed out for a client that had left

    async def open_gate() -> None:
        gated.gate.set()

    fleet.call(open_gate())
    assert {fleet.get("/health").status_code for _ in range(10)} == {200}


def test_proxy_auth_is_checked_by_the_owner_and_a_revoked_token_is_refused_by_every_process(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    valid = {("wk-0123456789abcdef", "ws-secret")}
    fleet = start_fleet(
        {HOST: Route("shop", "square", upstream, requires_proxy_auth=True)},
        verify_proxy_token=lambda token_id, secret: (token_id, secret) in valid,
    )
    credentials = {"Modal-Key": "wk-0123456789abcdef", "Modal-Secret": "ws-secret"}

    def get(headers: dict[str, str]) -> int:
        with httpx.Client(base_url=fleet.url, headers={"Host": HOST}, timeout=WAIT_S) as client:
            return client.get("/health", headers={**headers, "Connection": "close"}).status_code

    before = fleet.served()
    assert {get(credentials) for _ in range(30)} == {200}
    assert {get({}) for _ in range(10)} == {401}
    after = fleet.served()
    assert len(after) == 2 and all(after[pid] > before.get(pid, 0) for pid in after), after

    async def revoke() -> None:
        valid.clear()  # the store forgets the token, then tells the gateway (Store.revoke_listeners)
        fleet.gateway.forget_proxy_token("wk-0123456789abcdef")
        await fleet.gateway.fleet.barrier()

    fleet.call(revoke())
    assert {get(credentials) for _ in range(30)} == {401}


ws_app_dir = websocket.ws_app_dir
ws_server = websocket.ws_server


def test_websockets_are_relayed_by_every_process_and_give_their_slot_back(
    start_fleet: Callable[..., FleetThread], ws_server: UvicornServer
) -> None:
    slots = TestUpstream(ws_server.path)
    fleet = start_fleet({HOST: Route("chat", "socket", slots)})
    before = fleet.served()
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(websocket.open_ws(fleet)) for _ in range(20)]  # type: ignore[arg-type]
        for number, ws in enumerate(sockets):
            ws.send(f"message {number}")
        assert [ws.recv(timeout=WAIT_S) for ws in sockets] == [f"message {n}" for n in range(20)]
    assert slots.wait_releases(20) == [False] * 20
    after = fleet.served()
    assert len(after) == 2 and all(after[pid] > before.get(pid, 0) for pid in after), after


def test_a_killed_servers_channel_directory_is_removed_by_the_next_fleet(
    start_fleet: Callable[..., FleetThread], upstream: TestUpstream
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(tempfile.gettempdir()) / f"cove-gw-{gone.pid}-test"
    stale.mkdir(mode=0o700)
    (stale / "owner.sock").touch()
    fleet = start_fleet({HOST: Route("shop", "square", upstream)})
    assert not stale.exists()
    assert fleet.get("/health").status_code == 200
