"""The gateway on every core: the owner's gateway plus worker processes sharing its port.

`SharedGateway` is the server process's `Gateway` (it serves on the port itself) and the single
owner of everything that must stay one: routes and their upstreams (pools, queues, affinity,
timeouts), the workspace's token bucket, the 303 call results and the metrics. Its `Fleet` starts
`workers` more processes (`worker.py`) that listen on the same port with SO_REUSEPORT, so the
kernel spreads connections over all of them. A worker parses, admits and proxies on its own, and
asks the owner over its channel (`channel.py`) only for what the owner keeps:

- `acquire host session` → the owner takes a token from the one bucket (429 otherwise), waits on
  the route's upstream as its own requests do, and answers the lease's id and socket path;
  `release lease_id broken timed_out` gives it back (a timed-out container is ended there);
- 303 calls are registered with the owner; a poll for a call another process started waits on
  the owner's store; finished requests are reported in batches to the owner's `GatewayMetrics`;
- routes, proxy-token revocations and the HTTP time limit are pushed to every worker on change.

Workers die with the owner (channel closed, or PDEATHSIG) and are restarted when they die.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from cove._gateway.admission import RATE_LIMITED
from cove._gateway.channel import Channel, Message
from cove._gateway.downstream import Finished
from cove._gateway.longpoll import CallStore, Running
from cove._gateway.ratelimit import retry_after
from cove._gateway.routing import Route
from cove._gateway.server import Gateway
from cove._gateway.upstream import Lease, SessionUpstream, UpstreamError
from cove._gateway.worker import route_rows

_log = logging.getLogger("cove.gateway")

#: How long the fleet waits for a worker to start listening before giving up on the start.
START_TIMEOUT_S = 60.0
#: Pause before restarting a worker that died, so a worker that cannot start does not spin.
RESTART_DELAY_S = 0.5


def gateway_for(processes: int, **options: Any) -> Gateway:
    """The server's gateway: a plain `Gateway` for one process, else a `SharedGateway` with workers.

    `processes` 0 means one per core this process may run on (COVE_GATEWAY_WORKERS' default).
    """
    processes = processes or len(os.sched_getaffinity(0))
    return SharedGateway(workers=processes - 1, **options) if processes > 1 else Gateway(**options)


class OwnerCallStore(CallStore):
    """The owner's 303 calls, including those started by workers (`adopt`)."""

    __slots__ = ()

    def adopt(self, call_id: str) -> None:
        """A worker answered 303 with `call_id`: polls anywhere wait for it here."""
        self._running.setdefault(call_id, Running())


class SharedGateway(Gateway):
    """The owner's gateway: serves like `Gateway`, and keeps `workers` more processes serving its port."""

    def __init__(
        self,
        *,
        workers: int,
        routes: Mapping[str, Route] | None = None,
        verify_proxy_token: Callable[[str, str], bool] | None = None,
        trusted_proxies: Iterable[str] = (),
        **options: Any,
    ) -> None:
        trusted = tuple(trusted_proxies)
        super().__init__(
            routes=routes,
            verify_proxy_token=verify_proxy_token,
            trusted_proxies=trusted,
            reuse_port=True,
            **options,
        )
        self.owner_calls = self._calls = OwnerCallStore()
        self.route_map: dict[str, Route] = dict(routes or {})
        self.verify_proxy_token = verify_proxy_token
        self.trusted_proxies = trusted
        self.fleet = Fleet(self, workers)

    async def start(self) -> None:
        await super().start()
        try:
            await self.fleet.start()
        except BaseException:  # e.g. a worker that cannot start: leave no process behind
            await asyncio.gather(self.fleet.close(timeout_s=1.0), super().close(timeout_s=1.0))
            raise

    async def close(self, timeout_s: float = 10.0) -> None:
        await asyncio.gather(self.fleet.close(timeout_s), super().close(timeout_s))

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        super().set_routes(routes)
        self.route_map = dict(routes)
        self.fleet.broadcast(("routes", route_rows(routes)))

    def forget_proxy_token(self, token_id: str) -> None:
        super().forget_proxy_token(token_id)
        self.fleet.broadcast(("forget", token_id))

    def set_http_timeout(self, http_timeout_s: float) -> None:
        super().set_http_timeout(http_timeout_s)
        if hasattr(self, "fleet"):
            self.fleet.broadcast(("http_timeout", http_timeout_s))

    def observe(self, exchange: Finished, status: int) -> None:
        super().observe(exchange, status)
        self.fleet.served[os.getpid()] += 1


class Fleet:
    """The worker processes of a `SharedGateway`: started, restarted, stopped, and served."""

    def __init__(self, gateway: SharedGateway, workers: int) -> None:
        self.gateway = gateway
        self.size = workers
        self.served: Counter[int] = Counter()  # requests finished per process id (the owner's too)
        self.pongs: dict[tuple[int, int], asyncio.Future[None]] = {}
        self._pings = itertools.count(1)
        self.leases: dict[int, tuple[_Session, Lease]] = {}
        self._lease_ids = itertools.count(1)
        self._sessions: dict[int, _Session] = {}  # ready workers by pid
        self.members: set[_Session] = set()  # channels that have their config: changes go there
        self._processes: set[asyncio.subprocess.Process] = set()
        self._supervisors: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._closing = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers serving now."""
        return sorted(self._sessions)

    async def start(self) -> None:
        if self.size < 1:
            return
        _remove_stale_dirs()
        # mode 0700: only this user may connect. Not under COVE_HOME: a unix socket path is short.
        self._dir = Path(tempfile.mkdtemp(prefix=f"cove-gw-{os.getpid()}-"))
        path = self._dir / "owner.sock"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Session(self).channel, str(path))
        for _ in range(self.size):
            self._supervisors.add(asyncio.ensure_future(self._supervise(str(path))))
        await asyncio.wait_for(self.wait_until(lambda: len(self._sessions) >= self.size), START_TIMEOUT_S)
        _log.info("gateway workers ready count=%d pids=%s", self.size, self.pids)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is checked whenever a worker starts or stops serving."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def barrier(self) -> None:
        """Return once every worker has applied what was sent to it and reported what it served."""
        loop = asyncio.get_running_loop()
        waiters = []
        for pid, session in self._sessions.items():
            number = next(self._pings)
            waiter = self.pongs[(pid, number)] = loop.create_future()
            session.channel.send(("ping", number))
            waiters.append(waiter)
        if waiters:
            await asyncio.gather(*waiters)

    def broadcast(self, message: Message) -> None:
        for session in self.members:
            session.channel.send(message)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Ask every worker to stop (they drain their connections, still served here), then kill."""
        self._closing = True
        for process in list(self._processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if self._supervisors:
            _done, pending = await asyncio.wait(self._supervisors, timeout=timeout_s)
            for process in list(self._processes):
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions.values()):
            session.channel.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _supervise(self, path: str) -> None:
        """Run one worker slot: start a worker, and another whenever it dies, until closing."""
        env = {**os.environ, "COVE_GATEWAY_OWNER_PID": str(os.getpid())}
        while not self._closing:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cove._gateway.worker", path, env=env, stdin=asyncio.subprocess.DEVNULL
            )
            self._processes.add(process)
            try:
                code = await process.wait()
            finally:
                self._processes.discard(process)
            if self._closing:
                break
            _log.warning("gateway worker died pid=%d code=%s; restarting", process.pid, code)
            await asyncio.sleep(RESTART_DELAY_S)

    def _ready(self, session: _Session) -> None:
        self._sessions[session.pid] = session
        self._notify()

    def _gone(self, session: _Session) -> None:
        if self._sessions.get(session.pid) is session:
            del self._sessions[session.pid]
            self._notify()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(notify())
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)


class _Session:
    """The owner's end of one connection from a worker: its channel, or its blocking asks."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.pid = 0
        self.channel = Channel(self._on_message, self._on_lost)
        self._acquiring: dict[int, asyncio.Task[None]] = {}
        self._leases: set[int] = set()

    def _on_message(self, message: Message) -> None:
        kind = message[0]
        fleet = self.fleet
        gateway = fleet.gateway
        send = self.channel.send
        if kind == "acquire":
            _, request_id, host, session = message
            coro = self._acquire(request_id, host, session)
            try:  # most acquires find a free slot at once: finish those without a task
                waiting = coro.send(None)
            except StopIteration:
                return
            task = asyncio.ensure_future(_resume(coro, waiting))
            self._acquiring[request_id] = task
            task.add_done_callback(lambda _: self._forget(request_id))
        elif kind == "release":
            _, lease_id, broken, timed_out = message
            self._leases.discard(lease_id)
            found = fleet.leases.pop(lease_id, None)
            if found is not None:
                _release(found[1], broken=broken, timed_out=timed_out)
        elif kind == "failure":  # why a lease's container failed: the pool may wait for its exit
            _, request_id, lease_id = message
            task = asyncio.ensure_future(self._failure(request_id, lease_id))
            self._acquiring[request_id] = task
            task.add_done_callback(lambda _: self._forget(request_id))
        elif kind == "on_drain":  # a worker's WebSocket or stream: tell it when it must end
            lease_id = message[1]
            found = fleet.leases.get(lease_id)
            on_drain = getattr(found[1], "on_drain", None) if found is not None else None
            if on_drain is not None:
                on_drain(lambda: send(("drain", lease_id)))
        elif kind == "cancel":
            waiting = self._acquiring.pop(message[1], None)
            if waiting is not None:
                waiting.cancel()
        elif kind == "observed":
            metrics = gateway.metrics
            for app, function, status, started, now in message[1]:
                figures = metrics.lookup(app, function)
                if figures is not None:
                    figures.observe(status, started, now)
            fleet.served[self.pid] += message[2]
        elif kind == "pong":
            waiter = fleet.pongs.pop((self.pid, message[1]), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "call_start":
            gateway.owner_calls.adopt(message[1])
        elif kind == "call_finish":
            gateway.calls.finish(message[1], message[2])
        elif kind == "call_watch":
            call_id = message[1]
            call = gateway.calls.lookup(call_id)
            if isinstance(call, Running):
                call.watchers.append(lambda result: send(("call_result", call_id, result)))
            else:
                send(("call_result", call_id, call))
        elif kind == "config":  # from now on, changes are pushed to this worker too
            send(self._answer(message))
            fleet.members.add(self)
        elif kind == "ready":
            self.pid = message[1]
            fleet._ready(self)
        else:  # the blocking asks: one answer each
            send(self._answer(message))

    def _forget(self, request_id: int) -> None:
        self._acquiring.pop(request_id, None)

    def _answer(self, message: Message) -> Message:
        kind = message[0]
        gateway = self.fleet.gateway
        if kind == "sync":
            return ("ok",)
        if kind == "config":
            return (
                "config",
                gateway._host,
                gateway.port,
                gateway.policy.limits,
                gateway.http_timeout_s,
                gateway.verify_proxy_token is not None,
                gateway.trusted_proxies,
                route_rows(gateway.route_map),
            )
        if kind == "verify":
            verify = gateway.verify_proxy_token
            return (verify is not None and bool(verify(message[1], message[2])),)
        raise ValueError(f"unknown gateway channel message {kind!r}")

    async def _failure(self, request_id: int, lease_id: int) -> None:
        found = self.fleet.leases.get(lease_id)
        text = await found[1].failure_message() if found is not None else "cove: upstream failed\n"
        self.channel.send(("failure", request_id, text))

    async def _acquire(self, request_id: int, host: str, session: bytes | None) -> None:
        gateway = self.fleet.gateway
        send = self.channel.send
        route = gateway.route_map.get(host)
        upstream = route.upstream if route is not None else None
        if route is None or upstream is None:
            name = route.app_name if route is not None else host
            send(("refused", request_id, 404, f"cove: app {name} is stopped", ()))
            return
        bucket = gateway.policy.bucket
        if bucket is not None:
            wait_s = bucket.take()
            if wait_s:
                send(("refused", request_id, 429, RATE_LIMITED, (("Retry-After", retry_after(wait_s)),)))
                return
        try:
            if route.session_affinity:
                lease = await cast(SessionUpstream, upstream).acquire(session)
            else:
                lease = await upstream.acquire()
        except UpstreamError as exc:
            send(("refused", request_id, exc.status, exc.message, exc.headers))
            return
        except Exception:  # the worker's client must get an answer, not wait forever
            _log.exception("gateway worker acquire failed host=%s", host)
            send(("refused", request_id, 502, "cove: upstream failed", ()))
            return
        if not self.channel.open:  # the worker died while it waited
            lease.release()
            return
        lease_id = next(self.fleet._lease_ids)
        self.fleet.leases[lease_id] = (self, lease)
        self._leases.add(lease_id)
        send(("lease", request_id, lease_id, lease.address))

    def _on_lost(self) -> None:
        for task in list(self._acquiring.values()):
            task.cancel()
        leases = self.fleet.leases
        for lease_id in self._leases:
            found = leases.pop(lease_id, None)
            if found is not None:
                _release(found[1], broken=False, timed_out=False)
        self._leases.clear()
        self.fleet.members.discard(self)
        if self.pid:
            self.fleet._gone(self)


async def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run the rest of a coroutine whose first step ran outside a task (it yielded `waiting`).

    An eager start, as Python 3.12's `eager_task_factory` does: await what it waits for on its
    behalf and pass the outcome in, so it resumes as if a task had run it from the start.
    """
    while True:
        try:
            if waiting is None:  # a bare yield (`asyncio.sleep(0)`): one turn of the loop
                await asyncio.sleep(0)
            else:
                # What a task does with a yielded future: take over its "blocking" mark, then wait.
                waiting._asyncio_future_blocking = False
                await waiting  # its result is also what the coroutine reads when resumed
        except BaseException as exc:
            try:
                waiting = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting = coro.send(None)
            except StopIteration:
                return


def _remove_stale_dirs() -> None:
    """Remove the channel directories of this user's servers that were killed (SIGKILL cleans nothing)."""
    for entry in Path(tempfile.gettempdir()).glob("cove-gw-*-*"):
        pid = entry.name.split("-")[2]
        with contextlib.suppress(OSError, ValueError):
            if entry.stat().st_uid == os.getuid() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(lease: Lease, *, broken: bool, timed_out: bool) -> None:
    try:
        if timed_out:
            lease.release(broken=True, timed_out=True)
        else:
            lease.release(broken=broken)
    except Exception:
        _log.exception("lease release failed")
