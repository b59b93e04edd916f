"""Long requests (Modal's 303 protocol): call ids in URLs, the 303 and result responses, kept results.

The exchange answered with 303 goes on with a `detached.DetachedCall` as its client.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cove._gateway.messages import CLOSE, CRLF, KEEP_ALIVE, error_response

_log = logging.getLogger("cove.gateway")

#: The query parameter naming a call; Modal's is `__modal_function_call_id`.
CALL_PARAM: Final = b"__cove_function_call_id"
#: A result larger than this is replaced by a 502: results wait in memory until fetched.
MAX_RESULT_BYTES: Final = 64 * 1024 * 1024

_CONTENT_LENGTH: Final = b"content-length:"


def new_call_id() -> str:
    """A fresh, unguessable function call id, e.g. `fc-0f8e…` (32 hex digits)."""
    return "fc-" + secrets.token_hex(16)


def call_id_of(target: bytes) -> str | None:
    """The value of the call-id query parameter in a request target, if there is one.

    >>> call_id_of(b"/run?x=1&__cove_function_call_id=fc-ab12")
    'fc-ab12'
    """
    query = target.partition(b"?")[2]
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == CALL_PARAM:
            return value.decode("latin-1")
    return None


def redirect_location(target: bytes, call_id: str) -> bytes:
    """The original request target with the call id appended to its query.

    >>> redirect_location(b"/run?x=1", "fc-ab12")
    b'/run?x=1&__cove_function_call_id=fc-ab12'
    """
    if b"?" not in target:
        separator = b"?"
    elif target.endswith((b"?", b"&")):
        separator = b""
    else:
        separator = b"&"
    return b"%b%b%b=%b" % (target, separator, CALL_PARAM, call_id.encode("ascii"))


def _connection_line(keep_alive: bool, http_10: bool) -> bytes:
    if not keep_alive:
        return CLOSE
    return KEEP_ALIVE if http_10 else b""


def see_other(location: bytes, *, keep_alive: bool = True, http_10: bool = False) -> bytes:
    """The complete `303 See Other` response sending the client to `location` (no body)."""
    return b"HTTP/1.1 303 See Other\r\nLocation: %b\r\nContent-Length: 0\r\n%b\r\n" % (
        location,
        _connection_line(keep_alive, http_10),
    )


@dataclass(frozen=True)
class CallResult:
    """A complete response, kept until its call id is polled (framing headers are added then)."""

    status: int
    reason: bytes
    header_lines: bytes  # each ending in CRLF; no hop-by-hop headers, no Content-Length
    body: bytes


def without_content_length(header_lines: bytes) -> bytes:
    """Header lines (each ending in CRLF) minus `Content-Length`: a result is re-framed when sent."""
    if _CONTENT_LENGTH not in header_lines.lower():
        return header_lines
    lines = header_lines.split(CRLF)[:-1]  # the text after the last CRLF is empty
    return b"".join(line + CRLF for line in lines if not line.lower().startswith(_CONTENT_LENGTH))


def error_result(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> CallResult:
    """A platform error (the one `messages.error_response` writes) kept as a call's result."""
    status_line, _, rest = error_response(status, message, headers).partition(CRLF)
    lines, _, body = rest.partition(CRLF + CRLF)
    reason = status_line.split(b" ", 2)[2] if status_line.count(b" ") >= 2 else b""
    return CallResult(status, reason, without_content_length(lines + CRLF), body)


def render_result(result: CallResult, *, keep_alive: bool = True, http_10: bool = False) -> bytes:
    """The complete response answering a poll with a stored result."""
    parts = [b"HTTP/1.1 %d %b\r\n" % (result.status, result.reason), result.header_lines]
    body = result.body
    if result.status not in (204, 304):  # RFC 9110 §8.6: no Content-Length on a 204
        parts.append(b"Content-Length: %d\r\n" % len(body))
    else:
        body = b""
    parts += (_connection_line(keep_alive, http_10), CRLF, body)
    return b"".join(parts)


@dataclass(eq=False)
class Running:
    """A call still running in the background; `watchers` are called once with its result."""

    watchers: list[Callable[[CallResult], None]] = field(default_factory=list)

    def unwatch(self, watcher: Callable[[CallResult], None]) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)


class CallStore:
    """The calls answered with 303: those still running, and the results of those that finished.

    Modal answers a web request whose response has not begun after 150 s with `303 See Other` to
    the same URL plus `__modal_function_call_id=fc-…`; the call keeps running, and a GET of that URL
    waits up to 150 s more for the result, answering it, or another 303 while it still runs. Cove
    does the same with `__cove_function_call_id`; the proxy (`proxy.py`) decides when.

    Results are buffered whole in memory (each capped at `MAX_RESULT_BYTES`), kept `ttl_s` after
    the call finishes, at most `max_results` of them (oldest dropped first). Call ids carry 128
    random bits: whoever holds one may fetch the result, from any host. `clock` is injected so
    expiry is testable without waiting.
    """

    __slots__ = ("_clock", "_done", "_max_results", "_running", "_ttl_s")

    def __init__(
        self,
        *,
        ttl_s: float = 600.0,
        max_results: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_results < 1:
            raise ValueError(f"CallStore needs ttl_s > 0 and max_results >= 1, got {ttl_s=} {max_results=}")
        self._ttl_s = ttl_s
        self._max_results = max_results
        self._clock = clock
        self._running: dict[str, Running] = {}
        # In completion order, which is expiry order too: the TTL is the same for all.
        self._done: OrderedDict[str, tuple[float, CallResult]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<cove CallStore running={len(self._running)} results={len(self._done)}>"

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def result_count(self) -> int:
        """Results kept now (some may have expired but not been dropped yet)."""
        return len(self._done)

    def start(self) -> str:
        """Register a new running call; returns its id."""
        call_id = new_call_id()
        self._running[call_id] = Running()
        return call_id

    def finish(self, call_id: str, result: CallResult) -> None:
        """Keep the result of a call and hand it to whoever waits for it."""
        running = self._running.pop(call_id, None)
        now = self._clock()
        self._expire(now)
        self._done[call_id] = (now + self._ttl_s, result)
        while len(self._done) > self._max_results:
            self._done.popitem(last=False)
        if running is None:
            return
        watchers, running.watchers = running.watchers, []
        for watcher in watchers:
            try:
                watcher(result)
            except Exception:  # one broken poller must not cost the others their answer
                _log.exception("gateway error answering a poll call_id=%s", call_id)

    def lookup(self, call_id: str) -> CallResult | Running | None:
        """The result of `call_id`, its `Running` entry, or None when unknown or expired."""
        running = self._running.get(call_id)
        if running is not None:
            return running
        entry = self._done.get(call_id)
        if entry is None:
            return None
        now = self._clock()
        if entry[0] <= now:
            self._expire(now)
            return None
        return entry[1]

    def _expire(self, now: float) -> None:
        done = self._done
        while done:
            expires, _ = next(iter(done.values()))
            if expires > now:
                break
            done.popitem(last=False)
