"""The gateway server: the listening socket and everything it shares among client connections.

`Gateway` owns the listening socket, the routing table, the upstream connection pool, every client
connection (`connection.py`) and every request task, and shuts them down in order: stop accepting,
let in-flight responses finish up to a deadline, then abort what is left.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from typing import Any

from cove._gateway.auth import ProxyAuth
from cove._gateway.clientip import TrustedProxies
from cove._gateway.connection import ClientConnection
from cove._gateway.connpool import ConnectionPool
from cove._gateway.downstream import Finished
from cove._gateway.longpoll import CallStore
from cove._gateway.metrics import GatewayMetrics
from cove._gateway.policy import Limits, Policy
from cove._gateway.ratelimit import TokenBucket
from cove._gateway.routing import Route, RouteTable
from cove.config import Settings

_log = logging.getLogger("cove.gateway")


class Gateway:
    """The HTTP front door: routes each request on its Host header to a container and proxies it.

    Runs on the event loop that calls `start` (uvloop in production; plain asyncio works too).

    A request whose response has not begun `http_timeout_s` after it reached its container is
    answered `303 See Other` to its own URL plus `__cove_function_call_id=fc-…` and keeps running;
    GETs of that URL wait for the result (Modal's 150 s limit; see `longpoll.py`).

    Policy, fixed at construction: `limits` bound client input (`max_body_bytes`, if given,
    overrides `limits.max_body_bytes`); `rate_limit_rps` requests a second with bursts of
    `rate_limit_burst_s` seconds' worth pass to containers, others get 429 (None or 0: no limit);
    `verify_proxy_token(token_id, secret)` checks the proxy tokens of endpoints that require them
    (None: such endpoints refuse everyone); requests from `trusted_proxies` (addresses or CIDR
    networks) may say who the client is in `X-Forwarded-For`; `reuse_port` lets other processes
    listen on the same port (SO_REUSEPORT; the multi-process gateway, `fleet.py`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        routes: Mapping[str, Route] | None = None,
        max_body_bytes: int | None = None,
        http_timeout_s: float = Settings.http_timeout_s,
        limits: Limits | None = None,
        rate_limit_rps: float | None = None,
        rate_limit_burst_s: float = 5.0,
        verify_proxy_token: Callable[[str, str], bool] | None = None,
        trusted_proxies: Iterable[str] = (),
        reuse_port: bool = False,
    ) -> None:
        self._http_timeout_s = _check_http_timeout(http_timeout_s)
        limits = limits if limits is not None else Limits()
        if max_body_bytes is not None:
            limits = replace(limits, max_body_bytes=max_body_bytes)
        trusted = TrustedProxies(trusted_proxies)
        self._policy = Policy(
            limits=limits,
            bucket=TokenBucket(rate_limit_rps, rate_limit_burst_s) if rate_limit_rps else None,
            proxy_auth=ProxyAuth(verify_proxy_token) if verify_proxy_token is not None else None,
            trusted=trusted if trusted else None,
        )
        self._calls = CallStore()
        self._host = host
        self._requested_port = port
        self._reuse_port = reuse_port  # other processes serve the same port too (fleet.py)
        self._table = RouteTable(routes or {})
        self.metrics = GatewayMetrics()  # per-function traffic figures, for the dashboard
        self.metrics.track(routes or {})
        self.max_body_bytes = limits.max_body_bytes
        self._pool = ConnectionPool()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bound_port = 0
        self._connections: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._drained: asyncio.Event | None = None

    def __repr__(self) -> str:
        where = f"{self._host}:{self._bound_port}" if self._server is not None else "not started"
        return f"<cove Gateway {where} routes={len(self._table)}>"

    @property
    def policy(self) -> Policy:
        """What every request is checked against: limits, rate limit, proxy auth, trusted proxies."""
        return self._policy

    def forget_proxy_token(self, token_id: str) -> None:
        """`token_id` was revoked: stop accepting it now, not when its cached answer expires."""
        auth = self._policy.proxy_auth
        if auth is not None:
            auth.forget(token_id)

    @property
    def routes(self) -> RouteTable:
        """The routing table in force (`set_routes` replaces it whole)."""
        return self._table

    @property
    def closing(self) -> bool:
        """Whether `close` has begun: connections stop keeping alive."""
        return self._closing

    @property
    def connection_count(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    @property
    def pool(self) -> ConnectionPool:
        """The upstream connection pool (its counters are useful to metrics and tests)."""
        return self._pool

    @property
    def calls(self) -> CallStore:
        """Requests answered with 303: those still running and the results kept for polls."""
        return self._calls

    @property
    def http_timeout_s(self) -> float:
        """Seconds a request waits for its response head before `303 See Other` (Modal: 150)."""
        return self._http_timeout_s

    @http_timeout_s.setter
    def http_timeout_s(self, value: float) -> None:
        self.set_http_timeout(value)

    def set_http_timeout(self, http_timeout_s: float) -> None:
        """Change the 303 limit for requests that reach a container (and polls that start) from now on."""
        self._http_timeout_s = _check_http_timeout(http_timeout_s)

    @property
    def port(self) -> int:
        """The bound port (the free port chosen when constructed with `port=0`)."""
        if not self._bound_port:
            raise RuntimeError("the gateway is not listening; call `await gateway.start()` first")
        return self._bound_port

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the gateway is started already")
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConnection(self, loop),
            self._host,
            self._requested_port,
            backlog=1024,
            reuse_port=self._reuse_port or None,
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])
        _log.info(
            "gateway listening host=%s port=%d routes=%d", self._host, self._bound_port, len(self._table)
        )

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Swap the whole routing table at once; requests already routed keep their route."""
        self._table = RouteTable(routes)
        self.metrics.track(routes)
        _log.debug("routes set count=%d", len(self._table))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, let in-flight responses finish for up to `timeout_s`, then abort the rest."""
        if self._server is None or self._closing:
            return
        self._closing = True
        self._server.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self._connections:
            drained = self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(drained.wait(), timeout_s)
            except TimeoutError:
                _log.warning("gateway close timed out connections=%d", len(self._connections))
        for conn in list(self._connections):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._pool.close()
        await self._server.wait_closed()
        _log.info("gateway closed port=%d", self._bound_port)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` as a task the gateway owns: `close` cancels it and waits for it."""
        assert self._loop is not None  # connections exist only once started
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def observe(self, exchange: Finished, status: int) -> None:
        """Count a finished (or abandoned) request for its function, if it was routed to one."""
        route = exchange.route
        if route is not None:
            metrics = self.metrics.lookup(route.app_name, route.function_tag)
            if metrics is not None:
                metrics.observe(status, exchange.started)

    def opened(self, conn: ClientConnection) -> int:
        """A connection was accepted; returns how many are open now, it included."""
        self._connections.add(conn)
        return len(self._connections)

    def forget(self, conn: ClientConnection) -> None:
        """A connection closed."""
        self._connections.discard(conn)
        if not self._connections and self._drained is not None:
            self._drained.set()


def _check_http_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise ValueError(
            f"http_timeout_s must be a positive finite number of seconds, got {value!r}; "
            "to never answer 303, make it longer than every function's timeout_s"
        )
    return float(value)
