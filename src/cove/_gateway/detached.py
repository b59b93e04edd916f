"""The stand-in client of a request answered with 303: its response becomes the call's result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cove._gateway.longpoll import (
    MAX_RESULT_BYTES,
    CallResult,
    CallStore,
    error_result,
    without_content_length,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine

    from cove._gateway.connpool import ConnectionPool
    from cove._gateway.downstream import ClientRelay, Downstream, Finished
    from cove._gateway.messages import RequestHead
    from cove._gateway.policy import Policy
    from cove._gateway.routing import RouteTable


class DetachedCall:
    """The stand-in client of an exchange answered with 303: it keeps the response as the result.

    The exchange goes on exactly as if streaming to a client (a `downstream.Downstream`), while its
    "transport" is this object: the body bytes it writes are collected, flow control is a no-op.
    """

    __slots__ = (
        "_origin",
        "body",
        "call_id",
        "calls",
        "head",
        "max_body_bytes",
        "overflow",
        "policy",
        "pool",
        "routes",
    )

    def __init__(self, origin: Downstream, calls: CallStore, call_id: str) -> None:
        self._origin = origin  # only to spawn on; the exchange no longer answers there
        self.pool: ConnectionPool = origin.pool
        self.routes: RouteTable = origin.routes
        self.max_body_bytes = origin.max_body_bytes
        self.policy: Policy = origin.policy
        self.calls = calls
        self.call_id = call_id
        self.head: tuple[int, bytes, bytes] | None = None  # status, reason, header lines
        self.body = bytearray()
        self.overflow = False

    # -- downstream.Downstream

    @property
    def transport(self) -> DetachedCall:
        return self

    @property
    def forwarded(self) -> bytes:
        return b""

    @property
    def trusts_peer(self) -> bool:
        return False

    @property
    def write_paused(self) -> bool:
        return False

    @property
    def closing(self) -> bool:
        return False

    @property
    def http_timeout_s(self) -> float:
        return self._origin.http_timeout_s

    def pause_reading(self, reason: int) -> None:
        pass

    def resume_reading(self, reason: int) -> None:
        pass

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._origin.spawn(coro)

    def exchange_finished(self, exchange: Finished, keep_alive: bool) -> None:
        pass

    def forwarded_via(self, head: RequestHead) -> bytes:
        return b""

    def relay_to(self, relay: ClientRelay) -> None:
        raise RuntimeError("a WebSocket is never detached: it has no 303")

    # -- downstream.ClientTransport

    def write(self, data: bytes) -> None:
        if self.overflow:
            return
        if len(self.body) + len(data) > MAX_RESULT_BYTES:
            self.overflow = True
            self.body = bytearray()
            return
        self.body += data

    def abort(self) -> None:
        pass

    # -- the end

    def result(self) -> CallResult:
        """The response collected, once complete."""
        if self.overflow:
            return error_result(
                502,
                f"cove: response larger than {MAX_RESULT_BYTES} bytes after the HTTP time limit; such "
                "results wait in memory, so store large outputs elsewhere (a Volume) and return a link",
            )
        assert self.head is not None
        status, reason, lines = self.head
        return CallResult(status, reason, without_content_length(lines), bytes(self.body))

    def finish(self, result: CallResult) -> None:
        self.calls.finish(self.call_id, result)
