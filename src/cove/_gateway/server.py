"""The gateway server: accepts client connections, parses requests, runs their exchanges in order.

`Gateway` owns the listening socket, the routing table, the upstream connection pool, every client
connection and every request task, and shuts them down in order: stop accepting, let in-flight
responses finish up to a deadline, then abort what is left.

Hostile input (`policy.Limits`) is refused here, before any exchange exists, with the connection
closed after the answer: a request target over the limit (414), a head over the limit (431), a
head not complete in time (408; slowloris), an HTTP version other than 1.0/1.1 (505), anything
llhttp rejects (400: bad request line, invalid header names or values, obs-fold, bare CR/LF,
`Content-Length` with `Transfer-Encoding`, several `Content-Length`s, bad chunk sizes: the request
smuggling cases of RFC 9112 §6.3 and §11.2), and connections past `max_connections` (503).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import replace
from typing import Any, cast

import httptools

from cove._gateway.auth import ProxyAuth
from cove._gateway.clientip import TrustedProxies, forwarded_lines, forwarded_proto
from cove._gateway.connpool import ConnectionPool
from cove._gateway.exchange import PAUSE_PIPELINE, PAUSE_STOPPED, BaseExchange
from cove._gateway.longpoll import CallStore
from cove._gateway.messages import RequestHead, error_response
from cove._gateway.metrics import ABORTED, GatewayMetrics
from cove._gateway.policy import Limits, Policy
from cove._gateway.proxy import Exchange
from cove._gateway.ratelimit import TokenBucket
from cove._gateway.routing import Route, RouteTable
from cove._gateway.websocket import WebSocketRelay

_log = logging.getLogger("cove.gateway")

#: How long a connection answered before its request body finished arriving keeps reading (and
#: dropping) after our last byte: closing at once would make the kernel reset the connection when
#: more body arrives, and a reset can destroy the answer before the client reads it (RFC 9112 §9.6).
LINGER_S = 2.0


class _Refuse(Exception):
    """Raised in a parser callback to refuse the request being parsed with `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class _ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests and runs one exchange at a time, in order.

    Pipelined requests are parsed as they arrive (httptools cannot pause mid-buffer) and queue as
    exchanges; reading pauses while one waits, so a queue is at most one read deep. After a
    WebSocket upgrade the bytes go to the exchange's `WebSocketRelay` instead of the parser.

    One timer per connection enforces the time limits lazily (it is re-armed when it fires, not
    per request): a request head must be complete `header_timeout_s` after its first byte (or
    after the connection opened), a request body must not stall for `body_timeout_s` while the
    gateway reads it (408), a client must not leave its response unread for `send_timeout_s`
    (disconnected), and a connection idle between requests closes after `idle_timeout_s`.
    """

    __slots__ = (
        "_advancing",
        "_body_since",
        "_closed",
        "_current",
        "_early",
        "_fresh",
        "_gateway",
        "_head_bytes",
        "_head_since",
        "_head_started",
        "_headers",
        "_idle_since",
        "_limits",
        "_lingering",
        "_loop",
        "_malformed",
        "_parser",
        "_parsing",
        "_paused",
        "_peer",
        "_pipeline",
        "_relay",
        "_timer",
        "_url",
        "_write_paused_since",
        "forwarded",
        "max_body_bytes",
        "policy",
        "pool",
        "transport",
        "trusts_peer",
        "write_paused",
    )

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self._gateway = gateway
        self._loop = loop
        self.pool = gateway.pool
        self.policy = gateway.policy
        self._limits = gateway.policy.limits
        self.max_body_bytes = self._limits.max_body_bytes
        self.transport: asyncio.Transport
        self.forwarded = b""
        self.trusts_peer = False
        self.write_paused = False
        self._peer = "unknown"
        self._parser = httptools.HttpRequestParser(self)
        # Bytes after a request that says `Connection: close` are ignored, not a parse error.
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._parsing: Exchange | None = None  # receives the body being parsed
        self._current: Exchange | None = None  # being answered
        self._pipeline: deque[Exchange] = deque()  # parsed, waiting for their turn
        self._relay: WebSocketRelay | None = None  # after a 101: client bytes go there
        self._early = b""  # bytes after an upgrade request, relayed if the container switches
        self._paused = 0
        self._closed = False
        self._lingering = False
        self._advancing = False
        self._malformed: tuple[int, str, tuple[tuple[str, str], ...]] | None = None  # answered last
        now = loop.time()
        self._fresh = True  # no request head completed yet
        self._head_started = False  # bytes of a request head arrived, not all of it
        self._head_since = now  # when the head being read started (a fresh connection: opened)
        self._idle_since = now
        self._body_since = now  # when a byte of the request body being read last arrived
        self._write_paused_since = now  # when the client's write buffer last filled up
        self._timer: asyncio.TimerHandle | None = None

    # -- what proxy.Downstream needs

    @property
    def routes(self) -> RouteTable:
        return self._gateway._table

    @property
    def closing(self) -> bool:
        return self._gateway._closing

    @property
    def calls(self) -> CallStore:
        return self._gateway._calls

    @property
    def http_timeout_s(self) -> float:
        return self._gateway._http_timeout_s

    def pause_reading(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self.transport.resume_reading()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._gateway._spawn(coro)

    def exchange_finished(self, exchange: BaseExchange, keep_alive: bool) -> None:
        self._gateway._observe(exchange, exchange.status)
        if exchange is not self._current:
            return
        self._current = None
        if not keep_alive or self._gateway._closing:
            self._close()
            return
        self._idle_since = self._loop.time()
        self._advance()

    def forwarded_via(self, head: RequestHead) -> bytes:
        """The X-Forwarded-* lines for a request from a trusted proxy, believing its claims."""
        trusted = self.policy.trusted
        assert trusted is not None  # trusts_peer
        client = trusted.client(self._peer, head.forwarded_for)
        return forwarded_lines(client, forwarded_proto(head.forwarded_proto)) + head.forwarded_other

    def relay_to(self, relay: WebSocketRelay) -> None:
        self._relay = relay
        if self._timer is not None:  # no idle or head timeout on an upgraded connection
            self._timer.cancel()
            self._timer = None
        early, self._early = self._early, b""
        if early:
            relay.from_client(early)
        self.resume_reading(PAUSE_STOPPED)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        ip = self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        self.forwarded = forwarded_lines(ip)
        trusted = self.policy.trusted
        self.trusts_peer = trusted is not None and trusted.trusts(ip)
        connections = self._gateway._connections
        connections.add(self)
        limits = self._limits
        if len(connections) > limits.max_connections:
            # Answer at once rather than leave the client hanging in the accept queue.
            _log.warning("connection refused open=%d limit=%d", len(connections), limits.max_connections)
            self._stop_parsing()
            message = f"cove: too many open connections (limit {limits.max_connections}); retry shortly"
            self._malformed = (503, message, (("Retry-After", "1"),))
            self._advance()
            return
        self._timer = self._loop.call_later(limits.header_timeout_s, self._on_timer)

    def data_received(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.from_client(data)
            return
        if self._paused & PAUSE_STOPPED or self._lingering:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The bytes after the head are not HTTP: a WebSocket's, if the container agrees.
            self._early = data[int(exc.args[0]) :]
            self._stop_parsing()
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)

    def eof_received(self) -> bool | None:
        # TCP cannot tell a half-close from a client that gave up; like nginx, take EOF as the
        # client leaving, so a request stuck in a queue or a slow function does not hold its slot.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        current = self._current
        self._current = None
        self._parsing = None
        self._pipeline.clear()
        if current is not None:
            self._gateway._observe(current, ABORTED)
            current.client_lost()
        self._gateway._forget(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_since = self._loop.time()
        self._check_within(self._limits.send_timeout_s)
        if self._current is not None:
            self._current.client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._current is not None:
            self._current.client_write_resumed()

    # -- httptools.HttpRequestParser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_started = True
        if not self._fresh:  # a fresh connection's first head is timed from the connection's start
            self._head_since = self._loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        limit = self._limits.max_request_line_bytes
        if len(self._url) > limit:
            raise _Refuse(414, f"cove: request target longer than {limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_head_bytes:
            raise _Refuse(431, f"cove: request head larger than {self._limits.max_head_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._fresh = False
        if self._closed:
            self._parsing = None
            return
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Refuse(505, f"cove: HTTP/{version} is not supported; send HTTP/1.1")
        exchange = Exchange(
            self,
            parser.get_method(),
            self._url,
            self._headers,
            http_10=version == "1.0",
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        exchange.started = time.monotonic()
        self._parsing = exchange
        self._body_since = self._loop.time()
        if exchange.has_body:
            self._check_within(self._limits.body_timeout_s)
        if self._current is None and not self._pipeline:
            self._current = exchange
            exchange.start()
        else:
            self._pipeline.append(exchange)
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._body_since = self._loop.time()
            self._parsing.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        self._parsing = None
        if exchange is not None:
            exchange.request_complete()

    # -- internals

    def _advance(self) -> None:
        """Start queued exchanges until one is in flight. Not re-entrant: a queued exchange that
        is answered at once (a 404, say) finishes inside `start`, and this loop starts the next."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while self._current is None and not self._closed:
                if not self._pipeline:
                    if self._malformed is not None:
                        self._answer_and_close(*self._malformed)
                    break
                exchange = self._pipeline.popleft()
                if not self._pipeline:
                    self.resume_reading(PAUSE_PIPELINE)
                self._current = exchange
                exchange.start()
        finally:
            self._advancing = False

    def _stop_parsing(self) -> None:
        self._head_started = False
        self.pause_reading(PAUSE_STOPPED)

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        self._stop_parsing()
        cause = exc.__context__
        if isinstance(cause, _Refuse):
            status, message = cause.status, cause.message
        else:
            if isinstance(exc, httptools.HttpParserCallbackError):
                _log.error("gateway error in request parser", exc_info=cause)
            status, message = 400, f"cove: malformed request ({str(exc) or type(exc).__name__})"
        _log.debug("malformed request status=%d message=%s", status, message)
        self._refuse(status, message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` once the exchanges before it are done, then close."""
        partial = self._parsing
        self._parsing = None
        if partial is not None and partial is self._current:
            partial.request_broken(message, status)  # answers, or aborts if its response has begun
            return
        if partial is not None:  # a pipelined request that never finished arriving
            self._pipeline.remove(partial)
        self._malformed = (status, message, ())
        if self._current is None:
            self._advance()

    def _answer_and_close(self, status: int, message: str, headers: tuple[tuple[str, str], ...]) -> None:
        self.transport.write(error_response(status, message, headers, keep_alive=False))
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        if transport.is_closing():  # aborted already
            return
        midway = self._parsing is not None or self._paused & PAUSE_STOPPED
        if not midway or not transport.can_write_eof():
            transport.close()
            return
        # The client may still be sending a request we answered early (or could not parse): send
        # FIN, read and drop until its FIN (eof_received closes) or LINGER_S, then close.
        self._lingering = True
        transport.write_eof()
        if self._paused:
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(LINGER_S, transport.close)

    def _check_within(self, delay_s: float) -> None:
        """Make the timer fire within `delay_s` (it may be due later: it was armed lazily)."""
        timer = self._timer
        if timer is not None and timer.when() > self._loop.time() + delay_s:
            timer.cancel()
            self._timer = self._loop.call_later(delay_s, self._on_timer)

    def shutdown(self) -> None:
        """The gateway is closing: close now if idle, else after the response in flight.

        A WebSocket is closed with 1001 (going away) at the next boundary of the client's frames.
        """
        if self._relay is not None:
            self._relay.shutdown()
        elif self._current is None:
            self._close()

    def abort(self) -> None:
        self._closed = True
        self.transport.abort()

    def _on_timer(self) -> None:
        self._timer = None
        if self._relay is not None:
            return
        limits = self._limits
        now = self._loop.time()
        send_left = math.inf
        if self.write_paused:  # the client reads nothing of what the gateway has written
            send_left = self._write_paused_since + limits.send_timeout_s - now
            if send_left <= 0:
                _log.info("client stopped reading; disconnected peer=%s", self._peer)
                self.abort()
                return
        if self._closed:
            if send_left < math.inf:  # it closes once the client has read its last answer: in time
                self._timer = self._loop.call_later(send_left, self._on_timer)
            return
        if self._head_started:
            left = self._head_since + limits.header_timeout_s - now
            if left <= 0:
                _log.debug("request head timed out peer=%s", self._peer)
                self._stop_parsing()
                self._refuse(408, f"cove: request head not received within {limits.header_timeout_s:g} s")
                return
        elif self._current is None and not self._pipeline:
            if self._fresh:  # opened, and not a byte since: nothing to answer
                left = self._head_since + limits.header_timeout_s - now
            else:
                left = self._idle_since + limits.idle_timeout_s - now
            if left <= 0:
                self._close()
                if self.write_paused and self._timer is None:  # its last answer is unread yet
                    self._timer = self._loop.call_later(send_left, self._on_timer)
                return
        else:  # a request in flight: its body must keep arriving
            left = limits.header_timeout_s
            if self._parsing is not None:
                if self._paused:  # the gateway holds the body back (the container is slow), not the client
                    self._body_since = now
                else:
                    body_left = self._body_since + limits.body_timeout_s - now
                    if body_left <= 0:
                        _log.debug("request body stalled peer=%s", self._peer)
                        self._stop_parsing()
                        self._refuse(408, f"cove: request body stalled for {limits.body_timeout_s:g} s")
                        return
                    left = min(left, body_left)
        self._timer = self._loop.call_later(min(left, send_left), self._on_timer)


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
        http_timeout_s: float = 150.0,
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
        self._connections: set[_ClientConnection] = set()
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
            lambda: _ClientConnection(self, loop),
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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None  # connections exist only once started
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _observe(self, exchange: BaseExchange, status: int) -> None:
        """Count a finished (or abandoned) request for its function, if it was routed to one."""
        route = exchange.route
        if route is not None:
            metrics = self.metrics.lookup(route.app_name, route.function_tag)
            if metrics is not None:
                metrics.observe(status, exchange.started)

    def _forget(self, conn: _ClientConnection) -> None:
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
