"""Keep-alive connections to containers, reused across requests.

An address is a unix socket path (local containers) or `tcp://HOST:PORT` (containers on other
machines, e.g. Ray actors; TCP_NODELAY on, since requests are small writes answered at once).

A connection is either lent to one request (its `sink` receives the bytes and the flow-control
signals) or idle in the pool. The pool knows nothing about HTTP: the request's proxy parses what
arrives and decides whether the connection may be reused.

Idle connections are reused most-recent first and dropped after `idle_timeout_s`, which must stay
below the container server's own keep-alive timeout (uvicorn's `timeout_keep_alive`, 5 s by
default) so the gateway rarely reuses a connection the container is closing at that very moment;
the proxy retries once on a fresh connection when it does.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Protocol, cast

TCP_SCHEME = "tcp://"
#: A TCP container whose node vanished never answers the SYN; give up like a refused connection.
_TCP_CONNECT_TIMEOUT_S = 10.0


class UpstreamSink(Protocol):
    """What a lent connection reports to: the request using it."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_write_paused(self) -> None: ...

    def upstream_write_resumed(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to one container socket."""

    __slots__ = ("_pool", "_read_paused", "address", "closed", "idle_since", "reused", "sink", "transport")

    def __init__(self, pool: ConnectionPool, address: str) -> None:
        self._pool = pool
        self.address = address
        self.transport: asyncio.Transport  # set by connection_made, before `connect` returns
        self.sink: UpstreamSink | None = None
        self.reused = False  # lent before: it may have been closed by the container meanwhile
        self.idle_since = 0.0
        self.closed = False
        self._read_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._pool._track(self)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_data(data)
        else:  # an idle connection has nothing to say; if it does, it cannot be trusted
            self.close(abort=True)

    def eof_received(self) -> bool | None:
        return None  # close our side too: a half-closed upstream cannot answer a new request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_write_resumed()

    # used by the proxy

    def pause_reading(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    def close(self, *, abort: bool = False) -> None:
        """Close for good; `abort` drops unsent bytes (the request is being abandoned).

        A lent connection's sink still hears `upstream_lost`; detach it first to stay silent.
        """
        if not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class ConnectionPool:
    """Idle keep-alive connections per container address (unix socket path or `tcp://HOST:PORT`)."""

    def __init__(self, *, max_idle_per_address: int = 256, idle_timeout_s: float = 4.0) -> None:
        self._max_idle = max_idle_per_address
        self._idle_timeout_s = idle_timeout_s
        self._idle: dict[str, deque[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        self._closed = False
        self.opened = 0  # connections opened over the pool's life
        self.reuses = 0  # requests served on a connection taken from the pool

    def idle_count(self, address: str | None = None) -> int:
        """Idle connections to `address`, or to all addresses."""
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(idle) for idle in self._idle.values())

    @property
    def open_count(self) -> int:
        """Connections open now, lent or idle."""
        return len(self._open)

    def take(self, address: str) -> UpstreamConnection | None:
        """The most recently used idle connection to `address` that is still fresh, if any."""
        idle = self._idle.get(address)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout_s and not conn.transport.is_closing():
                self.reuses += 1
                return conn
            conn.close()  # the older ones below are staler still
        return None

    async def connect(self, address: str) -> UpstreamConnection:
        """A new connection to `address`; raises OSError when nobody listens there."""
        if self._closed:
            raise ConnectionRefusedError(f"connection pool is closed; not connecting to {address}")
        loop = asyncio.get_running_loop()
        if address.startswith(TCP_SCHEME):
            host, _, port = address[len(TCP_SCHEME) :].rpartition(":")
            connecting = loop.create_connection(
                lambda: UpstreamConnection(self, address), host.strip("[]"), int(port)
            )
            # TimeoutError is an OSError: the caller answers it as it answers a refused connection.
            transport, conn = await asyncio.wait_for(connecting, _TCP_CONNECT_TIMEOUT_S)
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            _, conn = await loop.create_unix_connection(lambda: UpstreamConnection(self, address), address)
        self.opened += 1
        return conn

    def put(self, conn: UpstreamConnection) -> None:
        """Return a connection whose last exchange completed cleanly."""
        conn.sink = None
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle.get(conn.address)
        if idle is None:
            idle = self._idle[conn.address] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
            return
        conn.resume_reading()  # an idle connection must notice when the container closes it
        conn.reused = True
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def close(self) -> None:
        """Close every connection, idle or lent; lent ones report the loss to their request."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            conn.close(abort=True)

    def _track(self, conn: UpstreamConnection) -> None:
        self._open.add(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.address)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.address]
