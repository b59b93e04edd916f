"""The channel between the gateway's owner and one worker process: framed messages on a unix socket.

A message is a tuple whose first item names it (`("acquire", 7, "host", None)`), pickled and sent
after its 4-byte big-endian length. Both ends are processes of the same user started by the
server itself, over a socket only that user can open, so pickle is safe here.

Sending is batched: messages sent during one turn of the event loop leave in one write, so a
worker answering many requests at once costs the owner one read, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, Final, cast

_log = logging.getLogger("cove.gateway")

_LENGTH: Final = struct.Struct(">I")
#: A message larger than this is a bug (results of long requests are capped well below it).
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024

Message = tuple[Any, ...]


def encode(message: Message) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Channel(asyncio.Protocol):
    """One end of a channel: `send` queues a message, `on_message` receives each one in order.

    `on_lost` is called once when the other end goes away (or `close` is called).
    """

    def __init__(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_due = False
        self._transport: asyncio.Transport | None = None
        self._lost = False

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._lost

    def send(self, message: Message) -> None:
        if self._lost:
            return
        self._out.append(encode(message))
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        if out and self._transport is not None and not self._lost:
            self._transport.write(b"".join(out))

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._out and not self._flush_due:
            self._flush()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > MAX_MESSAGE_BYTES:
                _log.error("gateway channel message too large bytes=%d; closing", length)
                assert self._transport is not None
                self._transport.abort()
                return
            if end - start - 4 < length:
                break
            message = pickle.loads(buffer[start + 4 : start + 4 + length])
            start += 4 + length
            try:
                self._on_message(message)
            except Exception:
                _log.exception("gateway channel message failed kind=%s", message[0] if message else "?")
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._on_lost()


def call(sock: socket.socket, message: Message) -> Message:
    """Send `message` on a blocking socket and wait for the one-message answer (rare, cached paths)."""
    sock.sendall(encode(message))
    header = _read_exactly(sock, 4)
    (length,) = _LENGTH.unpack(header)
    return cast(Message, pickle.loads(_read_exactly(sock, length)))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise ConnectionError("the gateway's owner went away")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
