"""The proxy: one request forwarded to a container and its response streamed back.

An `Exchange` is one request/response cycle on a client connection. It is fed the request by the
connection's parser (`connection.py`), takes a `Lease` and a pooled connection, writes the request head
and streams the body upstream, parses the response with httptools and streams it to the client.
Everything after `acquire` and `connect` happens in transport callbacks; one task per request only
awaits those two and the end of the exchange, and owns the lease (released in its `finally`).
The request side, the platform answers and the release live in `exchange.BaseExchange`.

Before forwarding, `start` asks `admission.admit` whether to forward the request, refuse it
(404 unknown host, 401 proxy auth, 413 body size, 429 rate limit, 4xx/501 what cannot be proxied)
or answer a poll for a long request's result.

Flow control both ways: a full upstream write buffer pauses reading from the client, a full client
write buffer pauses reading from the upstream, so bodies stream with bounded memory.

Long requests (Modal's 303 protocol, `longpoll.py`): the one timer armed per request fires at the
earlier of the gateway's `http_timeout_s` and the function's `timeout_s`. At the first, with no
response head yet, the client gets `303 See Other` and the exchange carries on detached: its
"client" becomes a `DetachedCall` that collects the response as the call's result, still bounded
by `timeout_s`. A GET naming the call id waits for that result (`_poll`).

WebSockets (`websocket.py`): a `GET` with `Upgrade: websocket` is forwarded with its upgrade
headers; the container's `101` is relayed and both connections become a `WebSocketRelay`, which
keeps the lease until either side closes. Other upgrades (`h2c`, …) are served as plain HTTP/1.1
requests (RFC 9110 §7.8 lets a server ignore `Upgrade`), and the client connection then closes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Sequence
from typing import Final, cast

import httptools

from cove._gateway.admission import Poll, Refusal, admit, origin_form
from cove._gateway.connpool import UpstreamConnection
from cove._gateway.downstream import PAUSE_BUFFER, PAUSE_UPSTREAM, Downstream
from cove._gateway.exchange import BaseExchange
from cove._gateway.messages import (
    CHUNKED,
    CLOSE,
    CONTINUE,
    CRLF,
    KEEP_ALIVE,
    LAST_CHUNK,
    UPGRADE_LINES,
    scan_response_headers,
)
from cove._gateway.phase import Phase
from cove._gateway.upstream import SessionUpstream, Upstream, UpstreamError
from cove._gateway.websocket import CLOSE_TIMEOUT_S, WebSocketRelay

__all__ = ["Exchange"]

_log = logging.getLogger("cove.gateway")


#: The container's response head arrived and went on (to the client, or to a detached call).
_HEAD_IN: Final = frozenset({Phase.STREAMING, Phase.RELAYING, Phase.COLLECTING})


class _StopParsing(Exception):
    """Raised in a parser callback to stop httptools: the response is complete."""


class _UnexpectedUpgrade(Exception):
    """The container switched protocols although the gateway never asked it to."""


class Exchange(BaseExchange):
    """One request on a client connection, from its parsed head to the end of its response."""

    __slots__ = ("_chunk_open", "_ending")

    def __init__(
        self,
        down: Downstream,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        *,
        http_10: bool,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        super().__init__(
            down, method, target, headers, http_10=http_10, keep_alive=keep_alive, upgrade=upgrade
        )
        self._chunk_open = False  # the container is midway through sending a chunk of the response
        self._ending = False  # the lease asked this long-lived response to end (`_drain`)

    # -- decisions taken when the exchange's turn comes

    def start(self) -> None:
        """Answer the request or forward it; called when every earlier exchange has finished."""
        if self.upgrade:
            self.keep_alive = False  # the bytes after the head are not HTTP; we cannot skip them
        down = self.down
        head = self._head
        target = self._target
        found = admit(
            head,
            down.routes,
            down.policy,
            method=self._method,
            target=target,
            http_10=self.http_10,
            upgrade=self.upgrade,
            received=self._received,  # a chunked body that arrived while it queued
        )
        if isinstance(found, Refusal):
            if found.close:
                self.keep_alive = False
            self._respond(found.status, found.message, found.headers)
            return
        if target[:1] != b"/":  # an absolute URL naming the Host (admitted): forward its path
            origin = origin_form(self._method, target, head.host)
            if origin is not None and origin != target:
                rest_of_head = self._prefix[len(self._method) + 1 + len(target) :]
                self._prefix = b"%b %b%b" % (self._method, origin, rest_of_head)
                self._target = origin
        if isinstance(found, Poll):
            self._poll(found.call_id)
            return
        upstream = found.upstream
        assert upstream is not None  # admit() refuses a stopped app
        self._route = found
        if head.expect is not None and not self.http_10 and not self._request_done:
            self._continue_sent = True
            down.transport.write(CONTINUE)
        session = (
            head.session_token if found.sessioned else head.session_id if found.session_affinity else None
        )
        self._task = down.spawn(self._run(upstream, found.timeout_s, found.session_affinity, session))

    async def _run(
        self, upstream: Upstream, timeout_s: float, affinity: bool = False, session: bytes | None = None
    ) -> None:
        """Own the lease: acquire it, connect, wait for the exchange to end, release it."""
        try:
            if self._released:  # refused before its turn came (a malformed body, say): no slot
                return
            self._to(Phase.ACQUIRING)
            try:
                if affinity:
                    lease = await cast(SessionUpstream, upstream).acquire(session)
                else:
                    lease = await upstream.acquire()
            except UpstreamError as exc:
                self._fail(exc.status, exc.message, exc.headers)
                return
            if self._released:  # the client left, or the gateway closed, while we waited
                lease.release()
                return
            self._to(Phase.FORWARDED)
            self.lease = lease
            loop = asyncio.get_running_loop()
            http_s = self.down.http_timeout_s
            # A WebSocket has no 303: without its 101 within `timeout_s` it is a 504. Nor has an HTTP
            # server (`affinity`): Modal's 303 belongs to the Function input system Servers go without.
            if http_s < timeout_s and not self.websocket and not affinity:
                self._timer = loop.call_later(http_s, self._on_http_timeout, timeout_s - http_s, timeout_s)
            else:
                self._timer = loop.call_later(timeout_s, self._on_timeout, timeout_s)
            address = lease.address
            pool = self.down.pool
            conn = pool.take(address)
            while True:
                if conn is None:
                    try:
                        conn = await pool.connect(address)
                    except OSError as exc:
                        if self._released:
                            return
                        if exc.errno in (errno.EMFILE, errno.ENFILE):  # the gateway is out of descriptors
                            _log.warning("connect failed: %s app=%s function=%s", exc, *self._names())
                            message = "cove: the gateway is out of file descriptors; retry shortly"
                            self._fail(503, message, (("Retry-After", "1"),))
                        else:
                            await self._upstream_failure(f"connect failed: {exc}")  # goes back broken
                        return
                    if self._released:
                        conn.close(abort=True)
                        return
                self._attach(conn, loop)
                assert self._waiter is not None
                if not await self._waiter:  # True: retry once on a fresh connection
                    return
                conn = None
        except Exception:
            _log.exception("gateway error app=%s function=%s", *self._names())
            self._fail(500, "cove: internal gateway error")
        finally:
            self._release_upstream(reusable=False, broken=False)

    # -- the upstream connection

    def _attach(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        parts = [self._prefix, *self._buffer]
        if self._buffer:
            self._buffer.clear()
            self._buffered = 0
            if self._buffer_paused:
                self._buffer_paused = False
                self.down.resume_reading(PAUSE_BUFFER)
        if self._request_done and self.chunked_in and not self._terminated:
            self._terminated = True
            parts.append(LAST_CHUNK)
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        self.conn = conn
        conn.sink = self
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = loop.create_future()
        if conn.reused:
            self._replay = [payload]
            self._replay_bytes = len(payload)
        if self.down.write_paused:
            conn.pause_reading()
        conn.transport.write(payload)

    def upstream_data(self, data: bytes) -> None:
        self._replay = None  # the container answered: this connection was not stale
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._relay is not None:  # a 101 for a WebSocket: what follows its head are frames
                if isinstance(exc, httptools.HttpParserUpgrade):
                    self._switch(data[int(exc.args[0]) :])
                else:  # llhttp wants Upgrade and Connection on a 101
                    self._upstream_failed(f"invalid 101 response: {exc!r}")
                return
            if not self._complete:
                cause = exc.__context__
                if cause is not None and not isinstance(cause, _UnexpectedUpgrade):
                    _log.error("gateway error in response parser", exc_info=cause)
                self._upstream_failed(f"invalid response: {exc!r}")
                return
            self._upstream_keep_alive = False  # bytes after the response, or a HEAD response
        if self._complete:
            if self._chunked_out:
                self._out.append(LAST_CHUNK)
            self._flush()
            self._release_upstream(reusable=self._upstream_keep_alive and self._request_done, broken=False)
            self._response_finished()
        elif self._out:
            self._flush()

    def upstream_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        self.conn = None
        if self._upstream_full:
            self._upstream_full = False
            self.down.resume_reading(PAUSE_UPSTREAM)
        if self._released:
            return
        if self._phase in _HEAD_IN:
            if self._until_close and exc is None:  # EOF is how this body ends (RFC 9112 §6.3)
                self._complete = True
                if self._chunked_out:
                    self._out.append(LAST_CHUNK)
                self._flush()
                self._release_upstream(reusable=False, broken=False)
                self._response_finished()
            else:
                self._upstream_failed(f"connection lost mid-response: {exc!r}")
            return
        if self._replay is not None and conn is not None and self._waiter is not None:
            # A reused connection the container closed as we sent (keep-alive timeout race):
            # nothing came back, so resend everything on a fresh connection, once.
            self._prefix = b"".join(self._replay)
            self._replay = None
            self._waiter.set_result(True)
            return
        self._upstream_failed(f"connection lost before the response head: {exc!r}")

    def upstream_write_paused(self) -> None:
        if not self._upstream_full:
            self._upstream_full = True
            self.down.pause_reading(PAUSE_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        if self._upstream_full:
            self._upstream_full = False
            self.down.resume_reading(PAUSE_UPSTREAM)

    # -- httptools.HttpResponseParser callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            raise _StopParsing  # more bytes after the response: never reuse this connection
        self._rheaders = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase is Phase.FORWARDED or self._phase is Phase.DETACHED:  # after it: trailers, dropped
            self._rheaders.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        head = scan_response_headers(self._rheaders)
        if status < 200:
            if status == 101:
                if not self.websocket or self.conn is None or self._call is not None:
                    raise _UnexpectedUpgrade  # the gateway forwards no other upgrade
                self._out += (b"HTTP/1.1 101 %b\r\n" % self._reason, head.header_lines, UPGRADE_LINES, CRLF)
                self._status = 101
                self._to(Phase.RELAYING)
                limit = self.down.policy.limits.max_ws_message_bytes
                self._relay = WebSocketRelay(self, self.down, self.conn, limit)
                return
            if not self.http_10 and self._call is None:  # RFC 9110 §15.2: no 1xx to HTTP/1.0
                self._out += (b"HTTP/1.1 %d %b\r\n" % (status, self._reason), head.header_lines, CRLF)
            self._interim = True
            return
        call = self._call
        if call is None and self._timer is not None:  # detached: `timeout_s` bounds the body too
            self._timer.cancel()
            self._timer = None
        self._upstream_keep_alive = self._parser.should_keep_alive()  # flags reset after the message
        no_body = self.is_head or status == 204 or status == 304
        delimited = no_body or head.has_content_length
        self._until_close = not delimited and not head.chunked
        if call is not None:  # the body is collected raw: the poll answer is framed anew
            call.head = (status, self._reason, head.header_lines)
            self._status = status
            self._to(Phase.COLLECTING)
            if self.is_head:
                self._complete = True
                raise _StopParsing
            return
        self._chunked_out = not delimited and not self.http_10
        # An HTTP/1.0 client learns where an undelimited body ends only from the connection closing.
        keep = self._keep = self.keep_alive and not self.down.closing and (delimited or not self.http_10)
        out = self._out
        out += (b"HTTP/1.1 %d %b\r\n" % (status, self._reason), head.header_lines)
        if self._chunked_out:
            out.append(CHUNKED)
        if not keep:
            out.append(CLOSE)
        elif self.http_10:
            out.append(KEEP_ALIVE)
        out.append(CRLF)
        self._status = status
        self._to(Phase.STREAMING)
        if self._chunked_out:  # a stream, perhaps long-lived: it ends cleanly when its container goes
            self._watch_drain()
        if self.is_head:
            # httptools cannot know a HEAD response has no body and would wait for one.
            self._complete = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        if self._chunked_out:
            self._out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self._out.append(body)

    def on_chunk_header(self) -> None:
        self._chunk_open = True

    def on_chunk_complete(self) -> None:
        self._chunk_open = False
        if self._ending and not self._complete:  # end the stream here, after a whole chunk
            self._complete = True
            raise _StopParsing

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True

    # -- the client connection

    def client_write_paused(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def client_write_resumed(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def client_lost(self) -> None:
        """The client went away: stop, drop the upstream connection, give the lease back."""
        if self._relay is not None:
            self._relay.stop()
        acquiring = self._phase is Phase.ACQUIRING
        if self._phase is not Phase.DONE:
            self._to(Phase.DONE)
        self._out.clear()
        if acquiring and self._task is not None:
            self._task.cancel()
        if self._watch is not None:  # a poll: stop waiting; the call itself goes on
            self._watch.unwatch(self._poll_done)
            self._watch = None
        self._release_upstream(reusable=False, broken=False)

    # -- WebSockets (see websocket.py)

    def _switch(self, leftover: bytes) -> None:
        """The container accepted the WebSocket: from now on bytes pass raw, both ways."""
        relay = self._relay
        conn = self.conn
        assert relay is not None and conn is not None
        if self._timer is not None:  # neither `timeout_s` nor the 303 limit cut a WebSocket
            self._timer.cancel()
            self._timer = None
        conn.sink = relay
        self._flush()  # the 101
        if leftover:
            self.down.transport.write(leftover)
        self.down.relay_to(relay)
        _log.debug("websocket open app=%s function=%s", *self._names())
        self._watch_drain()

    def relay_finished(self) -> None:
        """`websocket.RelayOwner`: either side closed; close the other, release the lease."""
        self._release_upstream(reusable=False, broken=False)
        self._finish(False)
        _log.debug("websocket closed app=%s function=%s", *self._names())

    # -- the container going away (a redeploy's drain grace ran out, or the app is stopping)

    def _watch_drain(self) -> None:
        """Ask the lease to tell us when this long-lived connection must end (`Lease.on_drain`)."""
        on_drain = getattr(self.lease, "on_drain", None)  # optional in the `Lease` protocol
        if on_drain is not None:
            on_drain(self._drain)

    def _drain(self) -> None:
        """End cleanly: a WebSocket closes with 1001 (going away) at a frame boundary; a streamed
        response ends with its last chunk after the chunk in progress (no torn chunk)."""
        if self._released:
            return
        if self._relay is not None:
            self._relay.shutdown()
            return
        if self._complete or self._ending:
            return
        self._ending = True
        loop = asyncio.get_running_loop()
        if self._chunk_open:  # `on_chunk_complete` ends it; unless the container stalls mid-chunk
            self._timer = loop.call_later(CLOSE_TIMEOUT_S, self._stream_stalled)
        else:
            loop.call_soon(self._end_stream)  # not from inside the caller (maybe a parser callback)

    def _end_stream(self) -> None:
        if self._released or self._complete:
            return
        if self._chunk_open:  # a chunk began meanwhile: `on_chunk_complete` ends the stream
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._stream_stalled)
            return
        self._complete = True
        self._out.append(LAST_CHUNK)
        self._flush()
        self._release_upstream(reusable=False, broken=False)
        self._response_finished()

    def _stream_stalled(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is not None and not self._released:
            app, function = self._names()
            _log.warning("stream end not reached in %g s app=%s function=%s", CLOSE_TIMEOUT_S, app, function)
            conn.close(abort=True)  # upstream_lost answers the client
