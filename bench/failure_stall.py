"""How long a failing container stalls the gateway's event loop (issue 14, item 1).

An in-process `Gateway` in front of `LocalBackend` pools, and a probe on the gateway's loop that
wakes every millisecond and records how late it woke. Each round sends one request to a container
that breaks its connection and dies just after (the gateway sees the break while the process still
runs, 40 ms: the case that used to sleep on the loop until the exit status showed) and reports the
longest stall of the loop during that request, next to the stall over an equally long quiet span.

    .venv/bin/python bench/failure_stall.py --rounds 20 2>/dev/null
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from cove._gateway import Gateway, Route
from cove._runtime.backend import ContainerRequest
from cove._runtime.backends.local.backend import LocalBackend
from cove._runtime.pool import FunctionPool

APP_SOURCE = """
import os, select, signal, socket, time
import cove

app = cove.App("stall")


def _connection():
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
    _connection().shutdown(socket.SHUT_WR)
    time.sleep(0.04)  # dies 40 ms after the break (within the 50 ms the gateway used to sleep)
    os.kill(os.getpid(), signal.SIGKILL)


@app.function()
@cove.fastapi_endpoint()
def ok():
    return {"ok": True}
"""


class Probe:
    """Wakes every millisecond on the loop; `worst` is the longest lateness since `reset`."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cove-stall-"))
    module_file = home / "stallapp.py"
    module_file.write_text(APP_SOURCE)
    spec = importlib.util.spec_from_file_location("stallapp", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    functions = {f.tag: f for f in module.app._specs()}

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    probe = Probe()
    backend = LocalBackend(home / "home", sandbox_setting="off")
    pools: list[FunctionPool] = []
    tasks: list[asyncio.Task[None]] = []

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    async def start() -> Gateway:
        routes = {}
        for tag, function in functions.items():
            request = ContainerRequest("stall", function, str(module_file), str(home))
            backend.prepare(request)
            pool = FunctionPool(function, lambda r=request: backend.launch(r, lambda *_: None))
            pools.append(pool)
            routes[f"b--stall-{tag}.localhost"] = Route("stall", tag, pool)
        gateway = Gateway(routes=routes, max_body_bytes=1 << 20)
        await gateway.start()
        tasks.append(asyncio.ensure_future(probe.run()))
        return gateway

    async def warm(pool: FunctionPool) -> None:
        pool.start_another()
        await pool.wait_started(60)

    async def stop(gateway: Gateway) -> None:
        for task in tasks:
            task.cancel()
        await gateway.close(timeout_s=5.0)
        await asyncio.gather(*(p.close() for p in pools))
        await backend.close()

    gateway = call(start())
    try:
        url = f"http://127.0.0.1:{gateway.port}/"

        def get(tag: str) -> httpx.Response:
            return httpx.get(url, headers={"Host": f"b--stall-{tag}.localhost"}, timeout=60)

        get("ok")
        failing, quiet, bodies = [], [], set()
        for _ in range(args.rounds):
            call(warm(pools[0]))  # a new container (the last one died), on no pooled connection
            probe.worst = 0.0
            started = time.perf_counter()
            response = get("crash")
            span = time.perf_counter() - started
            failing.append(probe.worst * 1000)
            bodies.add(f"{response.status_code} {response.text.strip()}")
            probe.worst = 0.0
            time.sleep(span)
            quiet.append(probe.worst * 1000)
    finally:
        call(stop(gateway))
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        shutil.rmtree(home, ignore_errors=True)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  python {sys.version.split()[0]}")
    print(f"answers: {sorted(bodies)}")
    for name, values in (("during a failing request", failing), ("quiet span of equal length", quiet)):
        print(
            f"loop stall {name}: median {statistics.median(values):.1f} ms, "
            f"max {max(values):.1f} ms over {len(values)} rounds"
        )


if __name__ == "__main__":
    main()
