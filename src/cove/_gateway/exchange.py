"""An exchange's state, its request body going upstream, its long-request (303) path and its endings.

`BaseExchange` is the half of `proxy.Exchange` that does not parse the container's response: it
holds one request's state, streams the request body to the upstream connection (or buffers it
until one is attached), answers with platform errors, detaches into a background call at the
HTTP time limit (Modal's 303 protocol, see `longpoll.py`) and releases the upstream connection
and the lease exactly once. `Downstream` is what it needs from the client connection
(`downstream.py`). Where it is in its life is one `phase.Phase`, moved forward only by `_to`,
which checks the transition; the request side (how much body arrived, what is paused) and the
response's framing are tracked apart, as they change independently of the phase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from cove._gateway.connpool import UpstreamConnection
from cove._gateway.detached import DetachedCall
from cove._gateway.downstream import PAUSE_BUFFER, PAUSE_UPSTREAM, Downstream
from cove._gateway.longpoll import (
    CallResult,
    Running,
    error_result,
    redirect_location,
    render_result,
    see_other,
)
from cove._gateway.messages import (
    CHUNKED,
    CRLF,
    LAST_CHUNK,
    UPGRADE_LINES,
    UPSTREAM_VERSION,
    error_response,
    scan_request_headers,
)
from cove._gateway.phase import HEAD_SENT, MOVED_ON, Phase, advance
from cove._gateway.routing import Route
from cove._gateway.upstream import Lease

if TYPE_CHECKING:
    import httptools

    from cove._gateway.websocket import WebSocketRelay

_log = logging.getLogger("cove.gateway")

_BUFFER_HIGH = 256 * 1024  # request body held before an upstream connection is attached
_REPLAY_MAX = 1024 * 1024  # request bytes kept to resend when a reused connection turns out dead
_DRAIN_MAX = 1024 * 1024  # unread request body discarded (rather than closing) after an early answer

#: A response head went to the client (the container's, or the gateway's own answer).
_ANSWERING: Final = HEAD_SENT | {Phase.ANSWERED, Phase.DONE}


class BaseExchange:
    """One request on a client connection: state, request side, platform answers, release."""

    __slots__ = (
        "_buffer",
        "_buffer_paused",
        "_buffered",
        "_call",
        "_chunked_out",
        "_complete",
        "_continue_sent",
        "_head",
        "_interim",
        "_keep",
        "_method",
        "_out",
        "_parser",
        "_phase",
        "_prefix",
        "_reason",
        "_received",
        "_redirect_due",
        "_relay",
        "_released",
        "_replay",
        "_replay_bytes",
        "_request_done",
        "_rheaders",
        "_route",
        "_status",
        "_target",
        "_task",
        "_terminated",
        "_timer",
        "_until_close",
        "_upstream_full",
        "_upstream_keep_alive",
        "_waiter",
        "_watch",
        "chunked_in",
        "conn",
        "down",
        "http_10",
        "is_head",
        "keep_alive",
        "lease",
        "started",
        "upgrade",
        "websocket",
    )

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
        self.down = down
        self.http_10 = http_10
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.is_head = method == b"HEAD"
        self._method = method
        self._target = target
        head = self._head = scan_request_headers(headers)
        self.chunked_in = head.transfer_encoding is not None
        # RFC 6455 §4.1: a WebSocket opening handshake is a GET asking to upgrade to "websocket".
        self.websocket = upgrade and head.upgrade == b"websocket" and method == b"GET"
        forwarded = down.forwarded if not down.trusts_peer else down.forwarded_via(head)
        # What a new upstream connection is sent first: the request head (a retry: all sent so far).
        self._prefix = b"".join(
            (
                method,
                b" ",
                target,
                UPSTREAM_VERSION,
                head.header_lines,
                CHUNKED if self.chunked_in else b"",
                UPGRADE_LINES if self.websocket else b"",
                forwarded,
                CRLF,
            )
        )
        self.lease: Lease | None = None
        self.conn: UpstreamConnection | None = None
        self._route: Route | None = None
        self.started = 0.0  # time.monotonic() when the head was parsed (set by the connection)
        self._status = 0  # of the final response head sent: the gateway's own, or the container's
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._relay: WebSocketRelay | None = None  # after a 101
        # request side
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._buffer_paused = False
        self._received = 0
        self._request_done = False
        self._continue_sent = False
        self._terminated = False  # the last chunk of a chunked request went upstream
        self._replay: list[bytes] | None = None
        self._replay_bytes = 0
        self._upstream_full = False
        # response side
        self._rheaders: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._interim = False
        self._out: list[bytes] = []
        self._chunked_out = False
        self._until_close = False
        self._upstream_keep_alive = False
        self._complete = False
        self._keep = False
        # long requests: answered with 303 and detached, or a poll for such a call's result
        self._call: DetachedCall | None = None
        self._redirect_due = False
        self._watch: Running | None = None
        # lifecycle: the phase (`phase.py`), and whether the upstream side was handed back
        self._phase = Phase.ARRIVED
        self._released = False

    # -- request body, fed by the client connection's parser

    def request_body(self, data: bytes) -> None:
        received = self._received = self._received + len(data)
        if self._released or self._phase is Phase.ANSWERED or self._phase is Phase.DONE:
            return  # answered already: the rest of the body is drained and dropped
        if received > self.down.max_body_bytes and self._route is not None:  # chunked: no length up front
            self._fail(413, f"cove: request body larger than {self.down.max_body_bytes} bytes")
            return
        if self.chunked_in:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        conn = self.conn
        if conn is not None:
            conn.transport.write(data)
            if self._replay is not None:
                self._retain(data)
        else:
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered > _BUFFER_HIGH and not self._buffer_paused:
                self._buffer_paused = True
                self.down.pause_reading(PAUSE_BUFFER)

    def request_complete(self) -> None:
        self._request_done = True
        phase = self._phase
        if phase is Phase.ANSWERED:  # drained the unread body of an early answer
            self._finish(self._keep)
            return
        if phase is Phase.DONE:
            return
        conn = self.conn
        if conn is not None and self.chunked_in:
            self._terminated = True
            conn.transport.write(LAST_CHUNK)
            if self._replay is not None:
                self._retain(LAST_CHUNK)
        if self._redirect_due and self._phase is Phase.FORWARDED and not self._released:
            self._redirect()  # the time limit passed while the body was still arriving

    def request_broken(self, message: str, status: int = 400) -> None:
        """The client broke this request midway: sent something that is not HTTP (400 `cove:
        malformed request (…)`) or stalled its body (408). Answer `status message`, or abort if
        the response has begun; either way the container slot is given back."""
        self.keep_alive = False
        if self._phase is Phase.ANSWERED:  # it was draining the body of an early answer
            self._finish(False)
        elif self._phase is not Phase.DONE:
            self._fail(status, message)

    def _retain(self, data: bytes) -> None:
        self._replay_bytes += len(data)
        if self._replay_bytes > _REPLAY_MAX:
            self._replay = None  # too much to resend: a dead reused connection becomes a 502
        elif self._replay is not None:
            self._replay.append(data)

    # -- long requests (Modal's 303 protocol, see longpoll.py)

    def _on_http_timeout(self, rest_s: float, timeout_s: float) -> None:
        """No response head within `http_timeout_s`: answer 303, keep the call running detached."""
        self._timer = asyncio.get_running_loop().call_later(rest_s, self._on_timeout, timeout_s)
        if self._phase is not Phase.FORWARDED or self._released:
            return
        if self._request_done:
            self._redirect()
        else:  # a 303 now would cut the upload short: answer it once the body has been forwarded
            self._redirect_due = True

    def _redirect(self) -> None:
        down = self.down
        calls = down.calls
        call_id = calls.start()
        keep = self.keep_alive and not down.closing  # the request is complete
        data = see_other(redirect_location(self._target, call_id), keep_alive=keep, http_10=self.http_10)
        self._status = 303
        if self._out:  # an interim 1xx not flushed yet
            data = b"".join((*self._out, data))
            self._out.clear()
        down.transport.write(data)
        _log.debug("long request answered 303 app=%s function=%s call_id=%s", *self._names(), call_id)
        # Give the client connection back as it was: reading resumed, upstream reads not held back.
        if self._buffer_paused:
            self._buffer_paused = False
            down.resume_reading(PAUSE_BUFFER)
        if self._upstream_full:
            self._upstream_full = False
            down.resume_reading(PAUSE_UPSTREAM)
        if self.conn is not None:
            self.conn.resume_reading()
        self._call = DetachedCall(down, calls, call_id)
        self.down = self._call
        self._to(Phase.DETACHED)
        down.exchange_finished(self, keep)

    def _record(self, result: CallResult) -> None:
        """The detached call ended: keep its result for the polls."""
        call = self._call
        assert call is not None
        self._call = None
        self._to(Phase.DONE)
        self._release_upstream(reusable=False, broken=False)  # released already, unless a bug
        call.finish(result)

    def _poll(self, call_id: str) -> None:
        """A GET for the result of a call answered with 303: wait up to `http_timeout_s`."""
        found = self.down.calls.lookup(call_id)
        if found is None:
            self._respond(404, f"cove: unknown or expired function call {call_id[:100]}")
        elif isinstance(found, CallResult):
            self._poll_done(found)
        else:
            self._to(Phase.POLLING)
            self._watch = found
            found.watchers.append(self._poll_done)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.down.http_timeout_s, self._poll_expired)

    def _poll_done(self, result: CallResult) -> None:
        self._watch = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send(render_result(result, keep_alive=self._answer_keep(), http_10=self.http_10))

    def _poll_expired(self) -> None:
        self._timer = None
        if self._watch is not None:
            self._watch.unwatch(self._poll_done)
            self._watch = None
        self._send(see_other(self._target, keep_alive=self._answer_keep(), http_10=self.http_10))

    # -- endings

    def _on_timeout(self, timeout_s: float) -> None:
        self._timer = None
        if self._released or self._phase in _ANSWERING:
            return
        _log.warning("function timed out app=%s function=%s timeout_s=%g", *self._names(), timeout_s)
        # The container is ended with the lease (see `Lease.release`), and other requests it was
        # serving (under @concurrent) fail with 502, as inputs of a timed-out container do on Modal.
        self._fail(504, f"cove: function timed out after {timeout_s:g} s", broken=True, timed_out=True)

    def _upstream_failed(self, reason: str) -> None:
        """The container broke the exchange: 502 before the response head, abort after it.

        The 502 names the container's exit, which the runtime may take a moment to learn: that is
        awaited in a task, never on the loop (issue 14, item 1); the broken connection goes now.
        """
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.sink = None
            conn.close(abort=True)
        self.down.spawn(self._upstream_failure(reason))

    async def _upstream_failure(self, reason: str) -> None:
        """Answer a broken exchange with the lease's failure message, then give the lease back."""
        lease = self.lease
        address = lease.address if lease is not None else None
        _log.warning(
            "upstream failed app=%s function=%s address=%s reason=%s", *self._names(), address, reason
        )
        message = "cove: upstream failed"
        try:
            if lease is not None:
                message = await lease.failure_message()
        except Exception:
            _log.exception("lease failure_message failed app=%s function=%s", *self._names())
        finally:  # cancelled (the gateway closes): still answered, and the lease given back broken
            self._fail(502, message, broken=True)

    def _fail(
        self,
        status: int,
        message: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        broken: bool = False,
        timed_out: bool = False,
    ) -> None:
        self._release_upstream(reusable=False, broken=broken, timed_out=timed_out)
        phase = self._phase
        if phase is Phase.ANSWERED or phase is Phase.DONE:
            return
        if phase in HEAD_SENT:  # too late for a status line: truncate
            self._out.clear()
            self.down.transport.abort()
            self._finish(False)
            return
        self._respond(status, message, headers)

    def _respond(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer with a platform error of our own."""
        _log.debug("refused status=%d message=%s", status, message)
        self._status = status
        if self._call is not None:  # detached: the error is the call's result
            self._record(error_result(status, message, headers))
            return
        keep = self._answer_keep()
        data = error_response(
            status, message, headers, keep_alive=keep, http_10=self.http_10, head_only=self.is_head
        )
        self._send(data)

    def _answer_keep(self) -> bool:
        """Whether the client connection stays open after an answer of our own."""
        keep = self._keep = (
            self.keep_alive and not self.down.closing and (self._request_done or self._drainable())
        )
        return keep

    def _send(self, data: bytes) -> None:
        """Write a complete answer of our own and finish the response."""
        if self._out:
            self._out.append(data)
            self._flush()
        elif self._phase is not Phase.DONE:
            self.down.transport.write(data)
        self._response_finished()

    def _drainable(self) -> bool:
        """Whether the unread rest of the request body is known and small enough to read and drop."""
        if self.chunked_in or (self._head.expect is not None and not self._continue_sent):
            return False  # unknown length; or a client that waits for a 100 we will not send
        length = self._head.content_length
        return length is None or length - self._received <= _DRAIN_MAX

    def _response_finished(self) -> None:
        phase = self._phase
        if phase not in MOVED_ON:
            self._to(Phase.ANSWERED)
        self._unpause()
        if phase in MOVED_ON:
            if self._call is not None:  # detached: the response is the call's result
                self._record(self._call.result())
            return
        if not self._keep:
            self._finish(False)
        elif self._request_done:
            self._finish(True)
        elif not self._drainable():
            self._finish(False)
        # else: request_complete() finishes once the rest of the body is drained

    def _finish(self, keep_alive: bool) -> None:
        if self._phase not in MOVED_ON:
            self._to(Phase.DONE)
            self.down.exchange_finished(self, keep_alive)

    def _to(self, phase: Phase) -> None:
        """Move to `phase`, checking that it follows the current one (`phase.PhaseError` if not)."""
        self._phase = advance(self._phase, phase)

    def _release_upstream(self, *, reusable: bool, broken: bool, timed_out: bool = False) -> None:
        """Hand back the upstream connection and the lease, exactly once; wake the task."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.sink = None
            if reusable:
                self.down.pool.put(conn)
            else:  # finished cleanly but not reusable: close; abandoned mid-exchange: abort
                conn.close(abort=not self._complete)
        self._unpause()
        lease = self.lease
        if lease is not None:
            self.lease = None
            try:
                if timed_out:
                    lease.release(broken=True, timed_out=True)
                else:
                    lease.release(broken=broken)
            except Exception:
                _log.exception("lease release failed app=%s function=%s", *self._names())
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)

    def _unpause(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        if self._buffer_paused:
            self._buffer_paused = False
            self.down.resume_reading(PAUSE_BUFFER)
        if self._upstream_full:
            self._upstream_full = False
            self.down.resume_reading(PAUSE_UPSTREAM)

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._phase is not Phase.DONE:
            self.down.transport.write(data)

    @property
    def has_body(self) -> bool:
        """Whether a request body follows the head (chunked, or a non-zero Content-Length)."""
        return self.chunked_in or bool(self._head.content_length)

    # -- for metrics (read by the client connection when the exchange finishes)

    @property
    def route(self) -> Route | None:
        """The route this request was forwarded on (None: answered before routing, or refused)."""
        return self._route

    @property
    def status(self) -> int:
        """The status of the final answer sent so far; 0 if none was (the client may have left)."""
        return self._status

    def _names(self) -> tuple[str, str]:
        route = self._route
        return (route.app_name, route.function_tag) if route is not None else ("-", "-")
