"""One client connection: parses its requests and runs their exchanges in order.

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
from collections.abc import Coroutine
from typing import Any, Protocol, cast

import httptools

from cove._gateway.admission import (
    Refusal,
    body_stalled,
    head_timed_out,
    malformed,
    refuse_connection,
    refuse_head,
    refuse_target,
    refuse_version,
)
from cove._gateway.clientip import forwarded_lines, forwarded_proto
from cove._gateway.connpool import ConnectionPool
from cove._gateway.downstream import PAUSE_PIPELINE, PAUSE_STOPPED, ClientRelay, Finished
from cove._gateway.longpoll import CallStore
from cove._gateway.messages import RequestHead, error_response
from cove._gateway.metrics import ABORTED
from cove._gateway.policy import Policy
from cove._gateway.proxy import Exchange
from cove._gateway.routing import RouteTable

_log = logging.getLogger("cove.gateway")

#: How long a connection answered before its request body finished arriving keeps reading (and
#: dropping) after our last byte: closing at once would make the kernel reset the connection when
#: more body arrives, and a reset can destroy the answer before the client reads it (RFC 9112 §9.6).
LINGER_S = 2.0


class Front(Protocol):
    """What a client connection needs from the gateway that accepted it (`server.Gateway`)."""

    @property
    def policy(self) -> Policy: ...
    @property
    def pool(self) -> ConnectionPool: ...
    @property
    def calls(self) -> CallStore: ...
    @property
    def http_timeout_s(self) -> float: ...
    @property
    def routes(self) -> RouteTable: ...
    @property
    def closing(self) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    def observe(self, exchange: Finished, status: int) -> None: ...
    def opened(self, conn: ClientConnection) -> int: ...  # how many are open now, this one included
    def forget(self, conn: ClientConnection) -> None: ...


class _Refuse(Exception):
    """Raised in a parser callback to refuse the request being parsed, and close."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal)
        self.refusal = refusal


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests and runs one exchange at a time, in order.

    Pipelined requests are parsed as they arrive (httptools cannot pause mid-buffer) and queue as
    exchanges; reading pauses while one waits, so a queue is at most one read deep. After a
    WebSocket upgrade the bytes go to the exchange's `ClientRelay` instead of the parser.

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

    def __init__(self, gateway: Front, loop: asyncio.AbstractEventLoop) -> None:
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
        self._relay: ClientRelay | None = None  # after a 101: client bytes go there
        self._early = b""  # bytes after an upgrade request, relayed if the container switches
        self._paused = 0
        self._closed = False
        self._lingering = False
        self._advancing = False
        self._malformed: Refusal | None = None  # answered last
        now = loop.time()
        self._fresh = True  # no request head completed yet
        self._head_started = False  # bytes of a request head arrived, not all of it
        self._head_since = now  # when the head being read started (a fresh connection: opened)
        self._idle_since = now
        self._body_since = now  # when a byte of the request body being read last arrived
        self._write_paused_since = now  # when the client's write buffer last filled up
        self._timer: asyncio.TimerHandle | None = None

    # -- what downstream.Downstream needs

    @property
    def routes(self) -> RouteTable:
        return self._gateway.routes

    @property
    def closing(self) -> bool:
        return self._gateway.closing

    @property
    def calls(self) -> CallStore:
        return self._gateway.calls

    @property
    def http_timeout_s(self) -> float:
        return self._gateway.http_timeout_s

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
        return self._gateway.spawn(coro)

    def exchange_finished(self, exchange: Finished, keep_alive: bool) -> None:
        self._gateway.observe(exchange, exchange.status)
        if exchange is not self._current:
            return
        self._current = None
        if not keep_alive or self._gateway.closing:
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

    def relay_to(self, relay: ClientRelay) -> None:
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
        open_count = self._gateway.opened(self)
        limits = self._limits
        refusal = refuse_connection(open_count, limits)
        if refusal is not None:
            # Answer at once rather than leave the client hanging in the accept queue.
            _log.warning("connection refused open=%d limit=%d", open_count, limits.max_connections)
            self._stop_parsing()
            self._malformed = refusal
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
            self._gateway.observe(current, ABORTED)
            current.client_lost()
        self._gateway.forget(self)

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
        refusal = refuse_target(len(self._url), self._limits)
        if refusal is not None:
            raise _Refuse(refusal)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        refusal = refuse_head(self._head_bytes, self._limits)
        if refusal is not None:
            raise _Refuse(refusal)

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._fresh = False
        if self._closed:
            self._parsing = None
            return
        parser = self._parser
        version = parser.get_http_version()
        refusal = refuse_version(version)
        if refusal is not None:
            raise _Refuse(refusal)
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
                        self._answer_and_close(self._malformed)
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
            refusal = cause.refusal
        else:
            if isinstance(exc, httptools.HttpParserCallbackError):
                _log.error("gateway error in request parser", exc_info=cause)
            refusal = malformed(str(exc) or type(exc).__name__)
        _log.debug("malformed request status=%d message=%s", refusal.status, refusal.message)
        self._refuse(refusal)

    def _refuse(self, refusal: Refusal) -> None:
        """Answer `refusal` once the exchanges before it are done, then close."""
        partial = self._parsing
        self._parsing = None
        if partial is not None and partial is self._current:
            # Answers, or aborts if its response has begun.
            partial.request_broken(refusal.message, refusal.status)
            return
        if partial is not None:  # a pipelined request that never finished arriving
            self._pipeline.remove(partial)
        self._malformed = refusal
        if self._current is None:
            self._advance()

    def _answer_and_close(self, refusal: Refusal) -> None:
        self.transport.write(
            error_response(refusal.status, refusal.message, refusal.headers, keep_alive=False)
        )
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
                self._refuse(head_timed_out(limits))
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
                        self._refuse(body_stalled(limits))
                        return
                    left = min(left, body_left)
        self._timer = self._loop.call_later(min(left, send_left), self._on_timer)
