"""The pool of one function's containers: hands out request slots, starts and stops containers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cove._gateway.upstream import UpstreamError
from cove._runtime.backend import ContainerHandle, ContainerState, StartupError
from cove._spec import FunctionSpec

log = logging.getLogger("cove.pool")

#: Modal's pending-input limit per function (reference §2.4).
DEFAULT_MAX_QUEUE = 2000
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0

Launcher = Callable[[], ContainerHandle]


@dataclass(eq=False)
class _Slot:
    """A container and the requests it is serving."""

    handle: ContainerHandle
    state: ContainerState = ContainerState.STARTING
    in_flight: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class _Lease:
    """One request slot on one container; released exactly once."""

    __slots__ = ("_pool", "_released", "_slot")

    def __init__(self, pool: FunctionPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False

    @property
    def address(self) -> str:
        return self._slot.handle.address

    def release(self, *, broken: bool = False) -> None:
        if self._released:
            return
        self._released = True
        self._pool._release(self._slot, broken=broken)

    def failure_message(self) -> str:
        code = self._slot.handle.returncode
        if code is not None:
            return f"cove: container exited (code {code})\n"
        return f"cove: container {self._slot.handle.id} closed the connection\n"


class FunctionPool:
    """Containers of one function version, with a FIFO queue of requests waiting for a slot.

    Implements the gateway's `Upstream`. Scale-up is immediate: a request that finds no free slot
    starts as many containers as the queue needs, up to `max_containers`.
    """

    def __init__(
        self,
        spec: FunctionSpec,
        launch: Launcher,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._launch = launch
        self._clock = clock
        self._max_queue = max_queue
        self._slots: list[_Slot] = []
        self._waiters: collections.deque[asyncio.Future[_Slot]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._closed = False
        self._failure: str | None = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_FIRST_S
        self._reaper: asyncio.Task[None] | None = None

    # -- the gateway's side ------------------------------------------------------------------

    async def acquire(self) -> _Lease:
        slot = self._free_slot()
        if slot is not None:
            slot.in_flight += 1
            return _Lease(self, slot)
        if self._closed:
            raise UpstreamError(503, f"cove: {self.spec.tag} is shutting down\n")
        if len(self._waiters) >= self._max_queue:
            raise UpstreamError(503, f"cove: queue full for {self.spec.tag} ({len(self._waiters)} waiting)\n")
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._scale_up()
        try:
            slot = await waiter
        except asyncio.CancelledError:
            # The client went away while queued: leave the queue, or hand on a slot we were given.
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result(), broken=False)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return _Lease(self, slot)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, warm: int = 0) -> None:
        """Start `max(min_containers, warm)` containers and the idle reaper."""
        self._reaper = asyncio.ensure_future(self._reap_idle())
        for _ in range(max(self.spec.min_containers, warm)):
            self._start_container()

    async def wait_started(self, timeout_s: float) -> None:
        """Wait until no container is starting any more (ready or failed), at most `timeout_s`."""
        starting = [s.handle.wait_ready() for s in self._slots if s.state is ContainerState.STARTING]
        if starting:
            await asyncio.wait([asyncio.ensure_future(c) for c in starting], timeout=timeout_s)

    async def drain(self) -> None:
        """Serve what is queued and in flight, then stop every container (a new version took over)."""
        self._draining = True
        while self._waiters or any(s.in_flight for s in self._slots):
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        """Stop now: fail queued requests, stop containers (in-flight requests get their 502)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError(503, f"cove: {self.spec.tag} was stopped\n"))
        slots, self._slots = self._slots, []
        await asyncio.gather(*(s.handle.stop() for s in slots), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    @property
    def container_count(self) -> int:
        return sum(1 for s in self._slots if s.state in (ContainerState.STARTING, ContainerState.READY))

    # -- internals ------------------------------------------------------------------------------

    def _free_slot(self) -> _Slot | None:
        best: _Slot | None = None
        limit = self.spec.max_inputs
        for slot in self._slots:
            if (
                slot.state is ContainerState.READY
                and slot.in_flight < limit
                and (best is None or slot.in_flight < best.in_flight)
            ):
                best = slot
        return best

    def _release(self, slot: _Slot, *, broken: bool) -> None:
        slot.in_flight -= 1
        if slot.in_flight == 0:
            slot.idle_since = self._clock()
        if broken and slot.handle.returncode is not None:
            self._forget(slot)
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            slot = self._free_slot()
            if slot is None:
                break
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            slot.in_flight += 1
            waiter.set_result(slot)
        if self._waiters:
            self._scale_up()

    def _scale_up(self) -> None:
        if self._closed:
            return
        target = max(1, self.spec.effective_target_inputs)
        demand = sum(s.in_flight for s in self._slots) + len(self._waiters)
        wanted = math.ceil(demand / target)
        if self.spec.max_containers is not None:
            wanted = min(wanted, self.spec.max_containers)
        have = self.container_count
        if wanted <= have:
            return
        if self._clock() < self._retry_at:
            # Back off after a failed start instead of crash-looping; fail fast meanwhile.
            if have == 0:
                self._fail_waiters(self._failure or "startup failed")
            return
        for _ in range(wanted - have):
            self._start_container()

    def _start_container(self) -> None:
        slot = _Slot(self._launch())
        self._slots.append(slot)
        task = asyncio.ensure_future(self._run(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, slot: _Slot) -> None:
        started = self._clock()
        try:
            await slot.handle.wait_ready()
        except StartupError as exc:
            slot.state = ContainerState.FAILED
            self._forget(slot)
            self._failure = exc.reason
            self._retry_at = self._clock() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)
            log.warning(
                "function=%s container=%s event=startup_failed reason=%r",
                self.spec.tag,
                slot.handle.id,
                exc.reason,
            )
            if self.container_count == 0:
                self._fail_waiters(exc.reason)
            return
        if self._closed:
            await slot.handle.stop()
            return
        slot.state = ContainerState.READY
        slot.idle_since = self._clock()
        self._failure = None
        self._backoff_s = _BACKOFF_FIRST_S
        log.info(
            "function=%s container=%s event=ready startup_s=%.3f",
            self.spec.tag,
            slot.handle.id,
            self._clock() - started,
        )
        self._dispatch()
        code = await slot.handle.wait_exit()
        if slot in self._slots:
            log.warning("function=%s container=%s event=exited code=%s", self.spec.tag, slot.handle.id, code)
            slot.state = ContainerState.EXITED
            self._forget(slot)
            self._dispatch()

    def _forget(self, slot: _Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)

    def _fail_waiters(self, reason: str) -> None:
        message = f"cove: {self.spec.tag} failed to start: {reason} (details: cove app logs)\n"
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError(503, message))

    async def _reap_idle(self) -> None:
        window = self.spec.scaledown_window_s
        tick = min(1.0, max(0.1, window / 4))
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            ready = [s for s in self._slots if s.state is ContainerState.READY]
            spare = len(ready) - self.spec.min_containers
            for slot in ready:
                if spare <= 0:
                    break
                if slot.in_flight == 0 and now - slot.idle_since >= window:
                    slot.state = ContainerState.DRAINING
                    self._forget(slot)
                    spare -= 1
                    log.info(
                        "function=%s container=%s event=scaledown idle_s=%.1f",
                        self.spec.tag,
                        slot.handle.id,
                        now - slot.idle_since,
                    )
                    task = asyncio.ensure_future(slot.handle.stop())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
