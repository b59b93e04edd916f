"""The seam between gateway and runtime: an `Upstream` hands out `Lease`s on container slots.

The gateway never starts or stops containers. For each request it asks the route's `Upstream` for a
`Lease` (waiting in the function's queue or through a cold start if need be), talks HTTP/1.1 to the
unix socket the lease names, and gives the lease back exactly once::

    lease = await upstream.acquire()      # UpstreamError -> answered with its status
    try:
        ...                               # proxy one request to lease.address
    finally:
        lease.release(broken=failed)      # broken=True: the container failed mid-request
                                          # timed_out=True: the function's timeout passed

The runtime implements both protocols; tests implement them over a real uvicorn process.

A lease may also offer `on_drain(callback)` (optional, so other leases need not): the gateway
registers a WebSocket or a streamed response with it, and the runtime calls `callback` when the
connection must end (its version's `COVE_DRAIN_S` after a redeploy ran out, or the app is stopping);
the gateway then closes the WebSocket with 1001 or ends the stream after its current chunk.
"""

from __future__ import annotations

from typing import Literal, Protocol


class Lease(Protocol):
    """One request's hold on one container slot."""

    @property
    def address(self) -> str:
        """Filesystem path of the unix socket where the container's uvicorn listens."""
        ...

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        """Give the slot back. Called exactly once per `Upstream.acquire`.

        `broken=True` means the connection to the container failed mid-request (refused, lost, or
        the function timed out), so the runtime should look at, and probably replace, the container.
        `timed_out=True` (with `broken=True`) means the input ran past the function's `timeout`
        and may still be running: the runtime must end the container, as Modal does, or it would
        keep burning CPU and answer no other request (issue 12). Only passed when true.
        """
        ...

    async def failure_message(self) -> str:
        """Body of the 502 sent when the container failed, starting with `cove: `.

        For example `cove: container exited (code -9)`. Called before `release(broken=True)`. It
        may wait a moment to learn the container's exit, but never blocks the loop.
        """
        ...


class Upstream(Protocol):
    """Where one function's requests go: a pool of container slots."""

    async def acquire(self) -> Lease:
        """A lease on a free slot; may wait for one (queue, cold start).

        Raises `UpstreamError` to refuse the request (full queue, failed startup). The gateway
        cancels the call when the client goes away while it waits; a cancelled `acquire` must not
        hand out a lease.
        """
        ...


class SessionUpstream(Protocol):
    """An HTTP server's pool: `acquire` takes the request's `Modal-Session-ID` (or, for a sessioned
    server, its `Modal-Authorization` token; None if absent), so one session keeps to one container,
    and answers at once (it never queues)."""

    async def acquire(self, session: bytes | None = None) -> Lease: ...


#: Why the runtime refused: `queue_full` when the function's queue is at its limit (a limit the
#: caller reached: a `.remote()` call then raises `ResourceExhaustedError`); `unavailable` for every
#: other refusal (shutting down, failed to start, no container ready, busy).
RefusalKind = Literal["queue_full", "unavailable"]


class UpstreamError(Exception):
    """A refusal from the runtime, answered to the client as is (e.g. 503 with `Retry-After`)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        kind: RefusalKind = "unavailable",
    ) -> None:
        super().__init__(status, message, headers)
        self.status = status
        self.message = message  # starts with "cove: "
        self.headers = headers
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.status} {self.message}"
