"""A pool's slots and leases: a container and the requests it serves, one request's hold on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cove._runtime.backend import ContainerHandle, ContainerState

log = logging.getLogger("cove.pool")

#: How long a failed request's 502 waits to name the container's exit code (only that request waits).
_EXIT_WAIT_S = 0.2


class SlotOwner(Protocol):
    """What a lease needs of its pool (`FunctionPool`)."""

    @property
    def ending(self) -> bool: ...

    @property
    def tag(self) -> str: ...

    def release_slot(
        self, slot: Slot, *, broken: bool, timed_out: bool = False, token: str | None = None
    ) -> None: ...


@dataclass(eq=False)
class Slot:
    """A container and the requests it is serving."""

    handle: ContainerHandle
    state: ContainerState = ContainerState.STARTING
    in_flight: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    served: int = 0
    # Leases whose holder asked to hear when its connection must end (`PoolLease.on_drain`).
    long_lived: set[PoolLease] = field(default_factory=set)


class PoolLease:
    """One request slot on one container; released exactly once."""

    __slots__ = ("_drain", "_pool", "_released", "_slot", "_token")

    def __init__(self, pool: SlotOwner, slot: Slot, token: str | None = None) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False
        self._token = token  # the sticky session the request belongs to
        self._drain: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        return self._slot.handle.address

    @property
    def container_id(self) -> str:
        return self._slot.handle.id

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when this connection must end: its version's drain grace ran out,
        or its app is stopping. See `cove._gateway.upstream.Lease`."""
        if self._released:
            return
        self._drain = callback
        self._slot.long_lived.add(self)
        if self._pool.ending:  # asked while the pool is ending already: end at once
            self.drain_now()

    def drain_now(self) -> None:
        callback, self._drain = self._drain, None
        if callback is None or self._released:
            return
        try:
            callback()
        except Exception:
            log.exception("function=%s event=drain_callback_failed", self._pool.tag)

    def release(self, *, broken: bool = False, timed_out: bool = False) -> None:
        if self._released:
            return
        self._released = True
        self._drain = None
        if self._slot.long_lived:
            self._slot.long_lived.discard(self)
        self._pool.release_slot(self._slot, broken=broken, timed_out=timed_out, token=self._token)

    async def failure_message(self) -> str:
        code = await self._slot.handle.exit_code(_EXIT_WAIT_S)
        if code is not None:
            return f"cove: container exited (code {code})\n"
        return f"cove: container {self._slot.handle.id} closed the connection\n"


@dataclass(frozen=True)
class ContainerInfo:
    """A container as `cove container list` shows it."""

    id: str
    function: str
    state: str
    in_flight: int
    served: int
    started_at: float
