"""The pool of one function's containers: hands out request slots and applies the autoscaler."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable

from cove._gateway.upstream import UpstreamError
from cove._runtime.affinity import SessionTable, StickySessions
from cove._runtime.autoscaler import ContainerView, ScalingPolicy, decide
from cove._runtime.backend import ContainerHandle, ContainerState, StartupError
from cove._runtime.lease import ContainerInfo, PoolLease, Slot
from cove._runtime.observer import PoolObserver
from cove._spec import FunctionSpec
from cove.config import Settings
from cove.exception import InvalidError
from cove.exception import TimeoutError as CoveTimeoutError

log = logging.getLogger("cove.pool")

#: Modal's pending-input limit per function (reference §2.4).
DEFAULT_MAX_QUEUE = Settings.queue_limit  # COVE_QUEUE_LIMIT's default (config.py)
_BACKOFF_FIRST_S = 1.0
_BACKOFF_MAX_S = 30.0
#: How often idle containers are checked against `scaledown_window`, at most.
_TICK_MAX_S = 1.0
#: What an HTTP server's refusals (503 while cold, 429 at capacity) tell clients to wait, in seconds.
_RETRY_AFTER = (("Retry-After", "1"),)
#: How long a refused request counts as demand for one more container (its client is due back).
_REFUSED_DEMAND_S = 5.0
#: How long connections asked to end get to do so (a WebSocket's closing handshake, a stream's
#: current chunk) before their container is stopped under them.
_ENDING_WAIT_S = 10.0

Launcher = Callable[[], ContainerHandle]


class FunctionPool:
    """Containers of one function version, with a FIFO queue of requests waiting for a slot.

    Implements the gateway's `Upstream`. Every change of demand or of containers asks the pure
    autoscaler (`cove._runtime.autoscaler.decide`) what to start and what to stop.

    An HTTP server's pool (`@app.server`, `modal.experimental.http_server`) has no queue, as on
    Modal: `acquire` answers at once, with a container chosen by session (`cove._runtime.affinity`)
    or the least busy one, `503` while no container is ready (counting as demand, so one starts)
    and `429` when all are at `max_concurrency` (its `max_inputs`).
    """

    def __init__(
        self,
        spec: FunctionSpec,
        launch: Launcher,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        app_name: str = "",
        observer: PoolObserver | None = None,
    ) -> None:
        """`observer` is told of this pool's events (`cove._runtime.observer`) as function
        `spec.tag` of app `app_name`."""
        self.spec = spec
        self.app_name = app_name
        self.policy = ScalingPolicy.of(spec)
        self._launch = launch
        self._clock = clock
        self._max_queue = max_queue
        self._slots: list[Slot] = []
        self._waiters: collections.deque[asyncio.Future[Slot]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._closed = False
        self._ending = False  # long-lived connections were asked to end (grace over, or stopping)
        self._quiet = asyncio.Event()  # set when nothing is queued or in flight
        self._quiet.set()
        self._failure: str | None = None
        self._retry_at = 0.0
        self._backoff_s = _BACKOFF_FIRST_S
        self._ticker: asyncio.Task[None] | None = None
        self._no_queue = spec.web is not None and spec.web.kind == "http_server"
        self._sessions = SessionTable(clock=clock)
        sessioned = self._no_queue and spec.web is not None and spec.web.sessioned
        self._sticky: StickySessions | None = StickySessions() if sessioned else None
        self._ready_waiters: list[asyncio.Future[None]] = []  # session starts waiting for a container
        # Until then, an HTTP server's refused request (cold or full) counts as demand for a container.
        self._refused_until = 0.0
        self._observer = observer
        self._ended_waiters: list[asyncio.Future[None]] = []  # close() waiting for long-lived ones

    def _report_ready(self, startup_s: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer.container_ready(self.app_name, self.spec.tag, startup_s)
        except Exception:
            log.exception("function=%s event=observer_failed", self.spec.tag)

    # -- the gateway's side ------------------------------------------------------------------

    async def acquire(self, session: bytes | None = None) -> PoolLease:
        if self._no_queue:
            return self._acquire_now(session)
        slot = self._free_slot()
        if slot is not None:
            self._take(slot)
            return PoolLease(self, slot)
        if self._closed:
            raise UpstreamError(503, f"cove: {self.spec.tag} is shutting down")
        if len(self._waiters) >= self._max_queue:
            message = f"cove: queue full for {self.spec.tag} ({len(self._waiters)} waiting)"
            raise UpstreamError(503, message, kind="queue_full")
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._quiet.clear()
        self._rescale()
        try:
            slot = await waiter
        except asyncio.CancelledError:
            # The client went away while queued: leave the queue, or hand on a slot we were given.
            if waiter.done() and not waiter.cancelled():
                self.release_slot(waiter.result(), broken=False)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._check_quiet()
            raise
        return PoolLease(self, slot)

    def _acquire_now(self, session: bytes | None) -> PoolLease:
        """An HTTP server's request: a slot now, or a refusal now (it never waits)."""
        tag = self.spec.tag
        if self._closed or self._draining:
            raise UpstreamError(503, f"cove: {tag} is shutting down", _RETRY_AFTER)
        if self._sticky is not None:
            return self._acquire_sticky(self._sticky, session)
        ready = {s.handle.id: s for s in self._slots if s.state is ContainerState.READY}
        if not ready:
            self._refused_until = self._clock() + _REFUSED_DEMAND_S
            self._rescale()
            if self._failure is not None and self.container_count == 0:
                raise UpstreamError(
                    503,
                    f"cove: {tag} failed to start: {self._failure} (details: cove app logs)",
                    _RETRY_AFTER,
                )
            raise UpstreamError(
                503,
                f"cove: {tag} has no ready container yet (one is starting); retry shortly",
                _RETRY_AFTER,
            )
        limit = self.spec.max_inputs
        slot: Slot | None
        if session is not None:
            chosen = self._sessions.choose(session, ready, lambda cid: ready[cid].in_flight < limit)
            slot = ready[chosen] if chosen is not None else None
        else:
            slot = self._free_slot()
        if slot is None:
            self._refused_until = self._clock() + _REFUSED_DEMAND_S
            self._rescale()
            raise UpstreamError(
                429,
                f"cove: every container of {tag} is serving max_concurrency={limit} requests; retry shortly",
                _RETRY_AFTER,
            )
        self._take(slot)
        self._rescale()
        return PoolLease(self, slot)

    def _acquire_sticky(self, sticky: StickySessions, token_bytes: bytes | None) -> PoolLease:
        """A request to a `@sessioned` server: served by its session's container, or refused."""
        tag = self.spec.tag
        if token_bytes is None:
            raise UpstreamError(
                401,
                f"cove: {tag} serves sticky sessions only: send `Modal-Authorization: Bearer <token>` with "
                f"a token from cove.Server.from_name(app_name, {tag!r}).sessions.start()",
                (("WWW-Authenticate", 'Bearer realm="cove-session"'),),
            )
        token = token_bytes.decode("latin-1")
        session = sticky.get(token, self._clock())
        if session is None:
            raise UpstreamError(
                404,
                f"cove: no live session of {tag} has this token: it was terminated, expired after its "
                "idle_timeout, or never started. Start a new session.",
            )
        slot = next((s for s in self._slots if s.handle.id == session.container_id), None)
        if slot is None or slot.state is not ContainerState.READY:
            sticky.drop(token)
            raise UpstreamError(
                410,
                f"cove: the container of this session of {tag} is gone ({session.container_id}); "
                "start a new session.",
            )
        if slot.in_flight >= self.spec.max_inputs:
            raise UpstreamError(
                429,
                f"cove: the session's container is serving max_concurrency={self.spec.max_inputs} requests; "
                "retry shortly",
                _RETRY_AFTER,
            )
        self._take(slot)
        sticky.begin(token)
        self._rescale()
        return PoolLease(self, slot, token)

    async def start_session(self, idle_timeout_s: float, wait_s: float) -> tuple[str, str]:
        """Start a sticky session on the ready container with the fewest sessions (starting one if
        none is ready, waiting up to `wait_s`); returns (token, container id)."""
        sticky = self._sticky
        if sticky is None:
            raise InvalidError(
                f"{self.spec.tag} does not take sessions: decorate its class with @modal.sessioned() "
                "below @app.server()."
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if self._closed or self._draining:
                raise InvalidError(f"{self.spec.tag} is shutting down; start the session on its new version.")
            now = self._clock()
            ready = [s for s in self._slots if s.state is ContainerState.READY]
            if ready:
                slot = min(ready, key=lambda s: (sticky.count(s.handle.id, now), s.in_flight))
                token = "ss-" + secrets.token_urlsafe(24)
                sticky.start(token, slot.handle.id, idle_timeout_s, now)
                log.info("function=%s container=%s event=session_started", self.spec.tag, slot.handle.id)
                return token, slot.handle.id
            if self._failure is not None and self.container_count == 0 and now < self._retry_at:
                raise InvalidError(
                    f"{self.spec.tag} failed to start: {self._failure} (details: cove app logs)"
                )
            self._refused_until = self._clock() + _REFUSED_DEMAND_S
            self._rescale()
            waiter: asyncio.Future[None] = loop.create_future()
            self._ready_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise CoveTimeoutError(
                    f"No container of {self.spec.tag} became ready within {wait_s:.0f} s to host the session."
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._ready_waiters.remove(waiter)

    def terminate_session(self, token: str) -> bool:
        """End a sticky session now; False if there was no such live session."""
        return self._sticky is not None and self._sticky.terminate(token)

    def _wake_session_starts(self) -> None:
        for waiter in self._ready_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, warm: int = 0) -> None:
        """Start `max(min_containers, warm)` containers and the scaling ticker."""
        self._ticker = asyncio.ensure_future(self._tick())
        for _ in range(max(self.policy.min_containers, warm)):
            self._start_container()

    async def wait_started(self, timeout_s: float) -> None:
        """Wait until no container is starting any more (ready or failed), at most `timeout_s`."""
        starting = [s.handle.wait_ready() for s in self._slots if s.state is ContainerState.STARTING]
        if starting:
            await asyncio.wait([asyncio.ensure_future(c) for c in starting], timeout=timeout_s)

    async def drain(self, grace_s: float = math.inf) -> None:
        """A new version took over: serve what is queued and in flight, stopping each container as
        soon as it has nothing left to serve, then close.

        Long-lived connections (WebSockets, streaming responses) keep their container for up to
        `grace_s` seconds (`COVE_DRAIN_S`); then they are asked to end (`PoolLease.on_drain`: a
        WebSocket closes with 1001, a stream ends after its current chunk). Other requests in
        flight are bounded by the function's `timeout` as ever.
        """
        self._draining = True
        self._retire_drained()
        if not self._quiet.is_set():
            try:
                await asyncio.wait_for(self._quiet.wait(), grace_s if math.isfinite(grace_s) else None)
            except TimeoutError:
                open_now = sum(len(s.long_lived) for s in self._slots)
                tag = self.spec.tag
                log.info("function=%s event=drain_grace_over grace_s=%g open=%d", tag, grace_s, open_now)
                self._end_long_lived()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._quiet.wait(), self.spec.timeout_s + _ENDING_WAIT_S)
        await self.close()

    async def close(self) -> None:
        """Stop now: fail queued requests, end long-lived connections, stop containers (other
        requests in flight get their 502).

        WebSockets are closed with 1001 (going away) and streams end after their current chunk;
        their containers are stopped once those have ended, or after `_ENDING_WAIT_S`.
        An HTTP server's requests in flight first get its `exit_grace_period` to finish (Modal's
        "time to finish up requests when closing down"); new ones are refused meanwhile.
        """
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        self._fail_waiters(f"cove: {self.spec.tag} was stopped", prefix=False)
        self._end_long_lived()
        grace_s = self.spec.web.exit_grace_period_s if self._no_queue and self.spec.web is not None else 0.0
        if grace_s > 0 and not self._quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), grace_s)
        if any(s.long_lived for s in self._slots):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._long_lived_ended(), _ENDING_WAIT_S)
        slots, self._slots = self._slots, []
        await asyncio.gather(*(s.handle.stop() for s in slots), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()

    def _end_long_lived(self) -> None:
        """Ask every long-lived connection to end (once); later ones are asked as they register."""
        self._ending = True
        for slot in self._slots:
            for lease in list(slot.long_lived):
                lease.drain_now()

    async def _long_lived_ended(self) -> None:
        while any(s.long_lived for s in self._slots):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._ended_waiters.append(waiter)
            await waiter

    def _retire_drained(self) -> None:
        """A draining pool with nothing queued: every container leaves rotation, each stopping
        as soon as its last request (WebSocket, stream) is done."""
        if self._draining and not self._waiters:
            for slot in self._slots:
                if slot.state in (ContainerState.STARTING, ContainerState.READY):
                    self._retire(slot, reason="replaced by a new version")

    async def stop_container(self, container_id: str, grace_s: float = math.inf) -> bool:
        """Stop one container (after its in-flight requests; its long-lived connections are asked
        to end after `grace_s`); the autoscaler replaces it if needed."""
        slot = next((s for s in self._slots if s.handle.id == container_id), None)
        if slot is None:
            return False
        self._retire(slot, reason="stopped by request")
        self._rescale()
        try:
            await asyncio.wait_for(slot.handle.wait_exit(), grace_s if math.isfinite(grace_s) else None)
        except TimeoutError:
            for lease in list(slot.long_lived):
                lease.drain_now()
            await slot.handle.wait_exit()
        return True

    @property
    def startup_failure(self) -> str | None:
        """Why the last container failed to start, if none has become ready since (else None)."""
        return self._failure

    @property
    def queued(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @property
    def container_count(self) -> int:
        return sum(1 for s in self._slots if s.state in (ContainerState.STARTING, ContainerState.READY))

    def containers(self) -> list[ContainerInfo]:
        return [
            ContainerInfo(s.handle.id, self.spec.tag, s.state.value, s.in_flight, s.served, s.started_at)
            for s in self._slots
        ]

    # -- internals ------------------------------------------------------------------------------

    def _free_slot(self) -> Slot | None:
        best: Slot | None = None
        limit = self.spec.max_inputs
        for slot in self._slots:
            if (
                slot.state is ContainerState.READY
                and slot.in_flight < limit
                and (best is None or slot.in_flight < best.in_flight)
            ):
                best = slot
        return best

    def _take(self, slot: Slot) -> None:
        slot.in_flight += 1
        slot.served += 1
        self._quiet.clear()

    @property
    def ending(self) -> bool:
        """Long-lived connections were asked to end (drain grace over, or stopping)."""
        return self._ending

    @property
    def tag(self) -> str:
        return self.spec.tag

    def release_slot(
        self, slot: Slot, *, broken: bool, timed_out: bool = False, token: str | None = None
    ) -> None:
        """`PoolLease.release`: one request on `slot` is over."""
        if token is not None and self._sticky is not None:
            self._sticky.end(token, self._clock())
        slot.in_flight -= 1
        if timed_out:
            self._kill(slot)
        elif slot.in_flight == 0:
            slot.idle_since = self._clock()
            if slot.state is ContainerState.DRAINING:
                self._spawn(slot.handle.stop())
        # A killed container is forgotten once it has exited (`_run`); asking its returncode now
        # would wait for a process that is still dying.
        if broken and not timed_out and slot.handle.returncode is not None:
            self._forget(slot)
        if self._ended_waiters:
            self._wake_ended()
        self._dispatch()
        self._check_quiet()

    def _wake_ended(self) -> None:
        if not any(s.long_lived for s in self._slots):
            waiters, self._ended_waiters = self._ended_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _check_quiet(self) -> None:
        if not self._waiters and not any(s.in_flight for s in self._slots):
            self._quiet.set()

    def _dispatch(self) -> None:
        while self._waiters:
            slot = self._free_slot()
            if slot is None:
                break
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._take(slot)
            waiter.set_result(slot)
        if self._draining:
            self._retire_drained()
        self._rescale()

    def _rescale(self) -> None:
        """Ask the autoscaler, then start and stop what it says."""
        if self._closed:
            return
        now = self._clock()
        live = [s for s in self._slots if s.state in (ContainerState.STARTING, ContainerState.READY)]
        views = [
            ContainerView(
                s.handle.id,
                "starting" if s.state is ContainerState.STARTING else "ready",
                s.in_flight,
                s.idle_since,
            )
            for s in live
        ]
        refused = 1 if now < self._refused_until else 0
        decision = decide(now, views, len(self._waiters) + refused, self.policy)
        start = decision.start
        if self._draining and not self._waiters:
            start = 0  # an old version only finishes its queue
        if start and now < self._retry_at:
            # Back off after a failed start instead of crash-looping; fail fast meanwhile.
            if not live:
                self._fail_waiters(self._failure or "startup failed")
            start = 0
        for _ in range(start):
            self._start_container()
        sticky = self._sticky
        if sticky is not None:
            sticky.expire(now)
        for container_id in decision.stop:
            if sticky is not None and sticky.count(container_id, now):
                continue  # Modal: a container holding a live sticky session is not scaled down
            slot = next(s for s in live if s.handle.id == container_id)
            self._retire(slot, reason=f"idle for {now - slot.idle_since:.1f}s")

    def _retire(self, slot: Slot, *, reason: str) -> None:
        """Take a container out of rotation; it stops once its in-flight requests are done."""
        if slot.state is ContainerState.DRAINING:
            return
        slot.state = ContainerState.DRAINING
        log.info("function=%s container=%s event=scaledown reason=%r", self.spec.tag, slot.handle.id, reason)
        if slot.in_flight == 0:
            self._spawn(slot.handle.stop())

    def _kill(self, slot: Slot) -> None:
        """An input ran past the function's timeout: end its container now and let it be replaced.

        The input may still be running (a loop that never yields, a blocked thread) and cannot be
        cancelled from outside, so the container is killed, as Modal terminates a container whose
        input timed out. Under `@concurrent` its other inputs fail with it (502 to web requests,
        an error to `.remote()` calls). The slot leaves rotation at once; the autoscaler starts a
        replacement if demand needs one, and `_run` forgets the slot once the process has exited.
        """
        if slot not in self._slots or slot.state in (ContainerState.EXITED, ContainerState.FAILED):
            return
        log.warning(
            "function=%s container=%s event=timeout_kill in_flight=%d timeout_s=%g",
            self.spec.tag,
            slot.handle.id,
            slot.in_flight,
            self.spec.timeout_s,
        )
        slot.state = ContainerState.DRAINING
        self._spawn(slot.handle.stop(grace_s=0))

    def start_another(self) -> None:
        """Start one more container now, whatever the backoff after a failed start says."""
        self._start_container()

    def _start_container(self) -> None:
        slot = Slot(self._launch(), started_at=self._clock(), idle_since=self._clock())
        self._slots.append(slot)
        self._spawn(self._run(slot))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, slot: Slot) -> None:
        try:
            await slot.handle.wait_ready()
        except StartupError as exc:
            slot.state = ContainerState.FAILED
            self._forget(slot)
            self._refused_until = 0.0  # the next request tries again (after the backoff)
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
            self._wake_session_starts()
            return
        if self._closed or slot.state is ContainerState.DRAINING:
            await slot.handle.stop()
            return
        slot.state = ContainerState.READY
        slot.idle_since = self._clock()
        self._refused_until = 0.0
        self._failure = None
        self._backoff_s = _BACKOFF_FIRST_S
        self._retry_at = 0.0
        startup_s = self._clock() - slot.started_at
        log.info(
            "function=%s container=%s event=ready startup_s=%.3f", self.spec.tag, slot.handle.id, startup_s
        )
        self._report_ready(startup_s)
        self._wake_session_starts()
        self._dispatch()
        code = await slot.handle.wait_exit()
        if slot in self._slots:
            if slot.state is not ContainerState.DRAINING:
                tag, cid = self.spec.tag, slot.handle.id
                log.warning("function=%s container=%s event=exited code=%s", tag, cid, code)
            slot.state = ContainerState.EXITED
            self._forget(slot)
            self._dispatch()
            self._check_quiet()

    def _forget(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)
        if self._ended_waiters:
            self._wake_ended()

    def _fail_waiters(self, reason: str, *, prefix: bool = True) -> None:
        message = reason
        if prefix:
            message = f"cove: {self.spec.tag} failed to start: {reason} (details: cove app logs)"
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError(503, message))
        self._check_quiet()

    async def _tick(self) -> None:
        tick = min(_TICK_MAX_S, max(0.1, self.policy.scaledown_window_s / 4))
        while True:
            await asyncio.sleep(tick)
            self._rescale()
