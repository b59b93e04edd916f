"""The dashboard as a service of the server: its unix socket, its route, its queue sampler.

The gateway reaches the dashboard like any endpoint: a route for `dashboard.<base domain>`
(`Dashboard.routes`, which the server adds to every routing table) whose `Upstream` always leases
the dashboard's socket (no container behind it). Cold starts reach the figures through
`Dashboard.cold_starts`, the `PoolObserver` the server registers with every pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from cove._control.apps import AppRegistry
from cove._control.logs import LogHub
from cove._control.records import AppState
from cove._control.store import Store
from cove._dashboard.access import Access
from cove._dashboard.app import build_app
from cove._dashboard.coldstarts import ColdStarts
from cove._gateway import Gateway
from cove._gateway.routing import Route
from cove._labels import endpoint_url

log = logging.getLogger("cove.dashboard")

#: Queue depth is sampled this often for the traffic charts.
SAMPLE_INTERVAL_S = 1.0
#: Open log streams are cut this long after shutdown starts.
_SHUTDOWN_GRACE_S = 2


class _SocketLease:
    """A lease on the dashboard's socket: nothing to hold, nothing to give back."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        pass

    async def failure_message(self) -> str:
        return "cove: the dashboard is not answering; see the server log\n"


class DashboardUpstream:
    """`gateway.Upstream` for the dashboard's host: every request goes to its socket."""

    def __init__(self, address: Path) -> None:
        self._lease = _SocketLease(str(address))

    async def acquire(self) -> _SocketLease:
        return self._lease


class Dashboard:
    """Owns the dashboard's socket, its uvicorn server and the queue sampler; stops them in order."""

    def __init__(self, socket_path: Path, gateway: Gateway, base_domain: str) -> None:
        self.socket_path = socket_path
        self.host = f"dashboard.{base_domain}"
        self._gateway = gateway
        self._route = Route(app_name="", function_tag="dashboard", upstream=DashboardUpstream(socket_path))
        self.cold_starts = ColdStarts(gateway.metrics)
        self._registry: AppRegistry | None = None
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return endpoint_url(self.host, self._gateway.port)

    @property
    def routes(self) -> Mapping[str, Route]:
        """The dashboard's own host, for the gateway's routing table."""
        return {self.host: self._route}

    async def start(self, registry: AppRegistry, logs: LogHub, store: Store) -> None:
        """Serve the dashboard on its socket and start sampling queues."""
        self._registry = registry
        access = Access(lambda token_id, secret: store.check_token(token_id, secret, "api"))
        app = build_app(registry, logs, store, self._gateway.metrics, access)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        os.chmod(self.socket_path, 0o600)  # only the gateway (this process's user) may connect
        listener.listen(128)
        config = uvicorn.Config(
            app,
            loop="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=_SHUTDOWN_GRACE_S,
        )
        server = self._server = uvicorn.Server(config)
        self._tasks.append(asyncio.ensure_future(_serve(server, listener)))
        self._tasks.append(asyncio.ensure_future(self._sample()))
        log.info("event=dashboard_started url=%s socket=%s", self.url, self.socket_path)

    async def close(self) -> None:
        """Stop sampling, end the uvicorn server (cutting open log streams), remove the socket."""
        if self._server is not None:
            self._server.should_exit = True
        sampler = self._tasks[1:] if len(self._tasks) > 1 else []
        for task in sampler:
            task.cancel()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=_SHUTDOWN_GRACE_S + 3)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("event=dashboard_task_failed error=%r", task.exception())
        self._tasks.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _sample(self) -> None:
        metrics = self._gateway.metrics
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            for record in self._registry.apps() if self._registry is not None else ():
                if record.current is None or record.state is not AppState.RUNNING:
                    continue
                for tag, pool in record.current.pools.items():
                    figures = metrics.lookup(record.name, tag)
                    if figures is not None:
                        figures.sample_queue(pool.queued)


async def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
    config = server.config
    if not config.loaded:
        config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[listener])
    await server.main_loop()
    await server.shutdown(sockets=[listener])
