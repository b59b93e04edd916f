"""The gateway's event loop never blocks on a container that failed (issue 14, item 1).

A real `Gateway` on its own loop in a thread, in front of real `FunctionPool`s of a real
`LocalBackend` (worker processes forked from zygotes). On the loop's thread, `time.sleep` and
`select.select` raise: a blocking wait there for a dying container's exit status would turn its
502 into "cove: upstream failed", so the exact exit code in the body shows it was awaited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import select
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from cove._gateway import Gateway, Route
from cove._runtime.backend import ContainerRequest
from cove._runtime.backends.local.backend import LocalBackend
from cove._runtime.pool import FunctionPool

pytestmark = pytest.mark.integration

T = TypeVar("T")
WAIT_S = 60.0

APP_SOURCE = """
import os
import select
import signal
import socket

import cove

app = cove.App("loop")


def _connection() -> socket.socket:
    # The request's connection: the accepted socket named like the listening one (one request).
    sockets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets.append(socket.socket(fileno=os.dup(int(fd))))
        except OSError:
            continue
    unix = [s for s in sockets if s.family == socket.AF_UNIX]
    accepting = [s for s in unix if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
    names = {s.getsockname() for s in accepting}
    (conn,) = [s for s in unix if s not in accepting and s.getsockname() in names]
    return conn


@app.function()
@cove.fastapi_endpoint()
async def crash():
    # Close the connection first and die only once the gateway has let go of it: the gateway sees
    # the break while this process still runs, so it must wait for the exit code (blocking its
    # loop, before issue 14) to name it. Blocking here on purpose: uvicorn reads nothing meanwhile.
    conn = _connection()
    conn.shutdown(socket.SHUT_WR)
    poller = select.poll()
    poller.register(conn, select.POLLIN | select.POLLHUP)
    poller.poll()
    os.kill(os.getpid(), signal.SIGKILL)


@app.function()
@cove.fastapi_endpoint()
def ok():
    return {"ok": True}
"""


class BlockingCallOnLoop(AssertionError):
    """A blocking call ran on the gateway's loop thread."""


class LoopThread:
    """An event loop in a thread; `call` runs a coroutine on it and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop")
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        self.loop.close()


def _forbid_on(thread: threading.Thread, original: Callable[..., T]) -> Callable[..., T]:
    def guarded(*args: Any, **kwargs: Any) -> T:
        if threading.current_thread() is thread:
            raise BlockingCallOnLoop(f"{original.__name__}{args} on the gateway's loop")
        return original(*args, **kwargs)

    return guarded


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LoopThread, Gateway]]:
    module_file = tmp_path / "loopapp.py"
    module_file.write_text(APP_SOURCE)
    spec = importlib.util.spec_from_file_location("loopapp", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.pop("loopapp", None)
    functions = {f.tag: f for f in module.app._specs()}

    runner = LoopThread()
    monkeypatch.setattr(time, "sleep", _forbid_on(runner.thread, time.sleep))
    monkeypatch.setattr(select, "select", _forbid_on(runner.thread, select.select))
    backend = LocalBackend(tmp_path / "home", sandbox_setting="off", zygote_window_s=60)
    pools: list[FunctionPool] = []

    async def start() -> Gateway:
        await backend.start()
        routes = {}
        for tag, function in functions.items():
            request = ContainerRequest("loop", function, str(module_file), str(tmp_path))
            backend.prepare(request)
            pool = FunctionPool(function, lambda r=request: backend.launch(r, lambda *_: None))
            pools.append(pool)
            routes[f"alice--loop-{tag}.localhost"] = Route("loop", tag, pool)
        gw = Gateway(routes=routes, max_body_bytes=1 << 20)
        await gw.start()
        return gw

    async def stop(gw: Gateway) -> None:
        await gw.close(timeout_s=5.0)
        await asyncio.gather(*(p.close() for p in pools))
        await backend.close()

    try:
        gw = runner.call(start())
        try:
            yield runner, gw
        finally:
            runner.call(stop(gw))
    finally:
        runner.close()


def test_a_dead_containers_502_names_its_exit_while_other_requests_are_served(
    gateway: tuple[LoopThread, Gateway],
) -> None:
    """A container killed mid-request: its request gets 502 with the exit code, learnt without a
    blocking call on the gateway's loop, while requests to another function are answered."""
    _, gw = gateway
    url = f"http://127.0.0.1:{gw.port}/"

    def get(function: str) -> httpx.Response:
        return httpx.get(url, headers={"Host": f"alice--loop-{function}.localhost"}, timeout=WAIT_S)

    assert get("ok").status_code == 200  # warm: the concurrent requests below need no cold start
    with ThreadPoolExecutor(max_workers=5) as threads:
        died = threads.submit(get, "crash")
        served = [threads.submit(get, "ok") for _ in range(4)]
        assert [f.result().json() for f in served] == [{"ok": True}] * 4
        response = died.result()
    assert (response.status_code, response.text) == (502, "cove: container exited (code -9)\n")
