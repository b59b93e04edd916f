"""The client side of an exchange: what it needs from the connection it answers on.

`Downstream` is implemented by the client connection (`connection.py`) and, once a long request
is answered with 303, by the `DetachedCall` that collects its response (`detached.py`). The pause
reasons are shared by the connection, the exchange and the WebSocket relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from cove._gateway.connpool import ConnectionPool
    from cove._gateway.longpoll import CallStore
    from cove._gateway.messages import RequestHead
    from cove._gateway.policy import Policy
    from cove._gateway.routing import Route, RouteTable

#: Why the client transport is paused; reading resumes when no reason is left.
PAUSE_PIPELINE: Final = 1  # a pipelined request waits for the ones before it
PAUSE_BUFFER: Final = 2  # request body buffered while no upstream connection is attached yet
PAUSE_UPSTREAM: Final = 4  # the upstream connection's write buffer is full
PAUSE_STOPPED: Final = 8  # nothing more will be parsed on this connection


class ClientTransport(Protocol):
    """What an exchange does to its client's transport (an `asyncio.Transport`, or a `DetachedCall`)."""

    def write(self, data: bytes) -> None: ...
    def abort(self) -> None: ...


class ClientRelay(Protocol):
    """Where an upgraded connection's client bytes go (a `websocket.WebSocketRelay`)."""

    def from_client(self, data: bytes) -> None: ...
    def shutdown(self) -> None: ...


class Finished(Protocol):
    """What the client connection reads of an exchange that finished (for metrics)."""

    @property
    def route(self) -> Route | None: ...
    @property
    def status(self) -> int: ...
    @property
    def started(self) -> float: ...


class Downstream(Protocol):
    """The client connection an exchange answers on."""

    @property
    def transport(self) -> ClientTransport: ...
    @property
    def pool(self) -> ConnectionPool: ...
    @property
    def routes(self) -> RouteTable: ...
    @property
    def max_body_bytes(self) -> int: ...
    @property
    def forwarded(self) -> bytes: ...  # the X-Forwarded-* lines naming this client
    @property
    def trusts_peer(self) -> bool: ...  # the peer is a trusted proxy: see `forwarded_via`
    @property
    def policy(self) -> Policy: ...  # limits, rate limit, proxy auth, trusted proxies
    @property
    def write_paused(self) -> bool: ...
    @property
    def closing(self) -> bool: ...  # the gateway is shutting down: no keep-alive
    @property
    def calls(self) -> CallStore: ...  # results of the requests answered with 303
    @property
    def http_timeout_s(self) -> float: ...  # no response head within it -> 303 (Modal: 150 s)

    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    def exchange_finished(self, exchange: Finished, keep_alive: bool) -> None: ...
    def forwarded_via(self, head: RequestHead) -> bytes: ...  # `forwarded`, from a trusted proxy's claims
    def relay_to(self, relay: ClientRelay) -> None: ...  # the connection was upgraded: bytes go there
