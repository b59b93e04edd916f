"""WebSocket connections: after the container's `101`, bytes pass both ways untouched.

The proxy (`proxy.py`) forwards a client's `GET` with `Upgrade: websocket` (without
`Sec-WebSocket-Extensions`: no permessage-deflate, as on Modal) and, when the container answers
`101 Switching Protocols`, hands both transports to a `WebSocketRelay`. Text, binary, ping/pong,
close codes and reasons and subprotocols all pass, since the bytes do; flow control is the proxy's
(a full buffer on one side pauses reading on the other).

One connection is one function call: the exchange keeps its container lease until either side
closes, so connections count against the container's `max_inputs`. Neither the function's
`timeout_s` nor any idle timeout cuts a WebSocket: it lives as long as both ends keep it. (Modal
bounds a WebSocket by the function's per-input timeout; Cove does not, because long-lived sockets
are what WebSockets are for and the lease already bounds how many a container holds.)

The relay follows the frame boundaries of the client's stream (`FrameScanner`, headers only:
payloads are neither unmasked nor copied) for two reasons: a client message over
`max_ws_message_bytes` (2 MiB) is refused for every kind of endpoint, `web_server` ones included,
and the gateway can insert a close frame of its own between two client frames. In both cases the
gateway sends the container a close frame (1009 message too big; 1001 going away when the gateway
shuts down) as if from the client, stops forwarding the client's bytes, and lets the container's
close reply travel back to the client, who thus sees a clean closing handshake with that code.
The container closing first (uvicorn sends 1012 service restart when a container stops) simply
passes through.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Final, Protocol

from cove._gateway.downstream import PAUSE_UPSTREAM

if TYPE_CHECKING:
    from cove._gateway.connpool import UpstreamConnection
    from cove._gateway.downstream import Downstream

_log = logging.getLogger("cove.gateway")

GOING_AWAY: Final = 1001
MESSAGE_TOO_BIG: Final = 1009
#: How long the container gets to answer a close frame the gateway sent before both sides are cut.
CLOSE_TIMEOUT_S: Final = 5.0


class FrameScanner:
    """Follows the frame boundaries of a WebSocket byte stream (RFC 6455 §5.2), never its payloads.

    `feed` returns the bytes that may be forwarded now: all of them, except the bytes of a frame
    header split across reads (held back until complete, at most 13 bytes, so a frame of the
    gateway's own can always be inserted at a boundary) and everything from the header of a
    frame whose message would exceed `max_message_bytes` (`too_big`), or past the boundary where
    `request_stop` asked to stop (`halted`). Pure: no I/O, no clock.

    >>> scanner = FrameScanner(4)
    >>> scanner.feed(b"\\x81\\x83mask" + b"abc")  # a masked 3-byte text frame passes
    b'\\x81\\x83maskabc'
    >>> scanner.feed(b"\\x82\\x85mask" + b"hello"), scanner.too_big
    (b'', True)
    """

    __slots__ = ("_message", "_partial", "_remaining", "close_seen", "halted", "limit", "stopping", "too_big")

    def __init__(self, max_message_bytes: int) -> None:
        self.limit = max_message_bytes
        self._message = 0  # payload bytes of the (possibly fragmented) data message so far
        self._remaining = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a frame header, held back
        self.close_seen = False  # a close frame went by
        self.too_big = False
        self.stopping = False
        self.halted = False  # nothing more passes

    @property
    def at_boundary(self) -> bool:
        """Whether everything forwarded so far ends with a whole frame."""
        return self._remaining == 0

    def request_stop(self) -> bool:
        """Stop at the next frame boundary; True if the stream is at one already (halted now)."""
        self.stopping = True
        if self._remaining == 0:
            self.halted = True
            self._partial = b""
        return self.halted

    def feed(self, data: bytes) -> bytes:
        if self.halted:
            return b""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        size = len(data)
        remaining = self._remaining
        if remaining >= size:  # the common case for large frames: all payload
            self._remaining = remaining - size
            if self.stopping and self._remaining == 0:
                self.halted = True
            return data
        self._remaining = 0
        pos = remaining
        if self.stopping and pos:
            self.halted = True
            return data[:pos]
        while size - pos >= 2:
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                header = 4
            elif length == 127:
                header = 10
            if second & 0x80:
                header += 4  # the masking key
            if size - pos < header:
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = first & 0x0F
            if opcode < 8:  # data: continuation (0) adds to the message, others start one
                message = self._message + length if opcode == 0 else length
                if message > self.limit:
                    self.too_big = self.halted = True
                    return data[:pos]
                self._message = message
            elif opcode == 8:
                self.close_seen = True
            end = pos + header + length
            if end > size:
                self._remaining = end - size
                return data
            pos = end
            if self.stopping:
                self.halted = True
                return data[:pos]
        if pos < size:
            self._partial = data[pos:]
            return data[:pos]
        return data


def close_frame(code: int, reason: str = "", *, masked: bool) -> bytes:
    """A close frame with `code` and `reason` (cut to fit 125 bytes); masked as a client's must be.

    >>> close_frame(1000, "bye", masked=False)
    b'\\x88\\x05\\x03\\xe8bye'
    """
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(byte ^ key[i & 3] for i, byte in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + key + body


class RelayOwner(Protocol):
    """The exchange that holds the connection's lease (implemented by `proxy.Exchange`)."""

    def relay_finished(self) -> None:
        """Both sides are done: close the upstream connection, release the lease, close the client."""
        ...


class WebSocketRelay:
    """Relays one upgraded connection's bytes between a client and a container until either closes."""

    __slots__ = ("_closing", "_conn", "_done", "_down", "_owner", "_scanner", "_timer")

    def __init__(
        self, owner: RelayOwner, down: Downstream, conn: UpstreamConnection, max_message_bytes: int
    ) -> None:
        self._owner = owner
        self._down = down
        self._conn = conn
        self._scanner = FrameScanner(max_message_bytes)
        self._closing: int | None = None  # the close code the gateway sent the container
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def __repr__(self) -> str:
        state = "done" if self._done else f"closing {self._closing}" if self._closing else "open"
        return f"<cove WebSocketRelay {self._conn.address} {state}>"

    # -- the client side (called by the client connection)

    def from_client(self, data: bytes) -> None:
        scanner = self._scanner
        out = scanner.feed(data)
        if out and not self._done:
            self._conn.transport.write(out)
        if scanner.halted and self._closing is None and not self._done:
            if scanner.too_big:
                limit = scanner.limit
                _log.info("websocket message over the limit bytes=%d", limit)
                self._close_upstream(MESSAGE_TOO_BIG, f"message larger than {limit} bytes")
            else:
                self._close_upstream(GOING_AWAY, "gateway shutting down")

    def shutdown(self) -> None:
        """The gateway is closing: close with 1001 at the next boundary of the client's stream."""
        if self._done or self._closing is not None:
            return
        if self._scanner.close_seen:  # the client is closing already; the container will answer
            return
        if self._scanner.request_stop():
            self._close_upstream(GOING_AWAY, "gateway shutting down")
        # else: `from_client` closes once the frame in progress has passed

    def stop(self) -> None:
        """The client connection is gone; the exchange closes the rest."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- connpool.UpstreamSink

    def upstream_data(self, data: bytes) -> None:
        self._down.transport.write(data)

    def upstream_lost(self, exc: Exception | None) -> None:
        self._finish()

    def upstream_write_paused(self) -> None:
        self._down.pause_reading(PAUSE_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        self._down.resume_reading(PAUSE_UPSTREAM)

    # -- internals

    def _close_upstream(self, code: int, reason: str) -> None:
        self._closing = code
        if not self._scanner.close_seen:
            self._conn.transport.write(close_frame(code, reason, masked=True))
        self._down.resume_reading(PAUSE_UPSTREAM)  # what the client sends now is dropped anyway
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(CLOSE_TIMEOUT_S, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._timer = None
        _log.warning("websocket close not answered by the container address=%s", self._conn.address)
        self._conn.close(abort=True)  # upstream_lost finishes

    def _finish(self) -> None:
        if self._done:
            return
        self.stop()
        self._owner.relay_finished()
