"""The Ray backend: each container is a Ray actor, placed on any node of an existing Ray cluster.

The server (gateway and control plane) runs on the cluster's head as a Ray driver. A container is a
`ContainerActor` (`cove._runtime.backends.ray.node`) with the function's cpu/memory/gpu as its resources and
its image as its `runtime_env`. The app's sources go to the cluster's object store once per version
(a bundle, as `cove deploy` makes them) and each actor unpacks them. The actor runs the same worker
as the local backend and relays `tcp://NODE_IP:PORT` to it: the address the gateway proxies to. Its
output, readiness and exit arrive on an event stream the server reads here.

A container is a fork instead when its function version has a warm spare on the node it should go
to: a zygote actor on each node the version's containers run on, holding one container's resources,
forks it from a function zygote in tens of milliseconds (`spares`, `zygote`). Otherwise (no spare
ready on a node it may go to, a GPU function) a cold start is an actor start, and the node it lands
on gets a spare.

A container whose node dies is *lost*: its event stream ends without an exit event (or, when the
machine vanished without a word, Ray reports the actor dead), the pool forgets it and starts a
replacement, which Ray places on a live node. Requests in flight on it get 502; queued ones wait
for the replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cove._bundle import make_bundle
from cove._messages import Start, encode
from cove._runtime.backend import (
    Capabilities,
    ContainerRequest,
    LogSink,
    StartupError,
    Stream,
    app_env,
)
from cove._runtime.backends.local.backend import DEFAULT_ZYGOTE_WINDOW_S, new_container_id
from cove._runtime.backends.ray.node import ContainerActor
from cove._runtime.backends.ray.options import plan
from cove._runtime.backends.ray.spares import Fork, Spares
from cove._runtime.backends.ray.zygote import ZygoteActor
from cove._spec import AppSpec, FunctionSpec, ImageSpec, ImageStep, spec_to_dict
from cove.exception import Error

log = logging.getLogger("cove.runtime")

#: Exit code of a container whose actor died without reporting its worker's exit (node loss).
LOST = -1
#: Longest wait for Ray to place an actor and set up its runtime_env (Ray's own setup timeout).
_PLACEMENT_TIMEOUT_S = 600.0
#: How long a fork beyond its spare's slot may wait for its resources on that node (else: an actor).
_RESERVE_TIMEOUT_S = 2.0
#: How old the list of live nodes may be when a launch decides between a fork and an actor.
_NODES_REFRESH_S = 2.0
#: After Ray reports the exit, how long the event stream may take to deliver the last lines.
_EVENTS_GRACE_S = 2.0
#: Keepalive on the event stream: a node that vanished without closing it is noticed in ~25 s.
_KEEPALIVE = ((socket.TCP_KEEPIDLE, 10), (socket.TCP_KEEPINTVL, 5), (socket.TCP_KEEPCNT, 3))
_RECV_BYTES = 65536


class RayUnavailable(Error):
    """The Ray backend could not start: Ray is not installed or the cluster cannot be reached."""


class RayContainer:
    """A container running as a Ray actor, as the pool sees it."""

    def __init__(self, container_id: str, log_sink: LogSink) -> None:
        loop = asyncio.get_running_loop()
        self._id = container_id
        self._log = log_sink
        self._address = ""
        self._actor: Any = None
        self._events: socket.socket | None = None
        self._buffer = b""
        self._ready: asyncio.Future[None] = loop.create_future()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self.node_id: str | None = None
        self.version = 0  # id() of the ContainerRequest it was launched for
        self.on_placed: Callable[[str], None] | None = None  # told the node once it is known
        self.stopping = False  # asked to stop: no longer counted where it runs (`_fork_node`)

    @property
    def id(self) -> str:
        return self._id

    @property
    def address(self) -> str:
        return self._address

    @property
    def returncode(self) -> int | None:
        """The exit code, as soon as the container is gone, even if its event has not been read yet.

        When the actor died, the kernel closed its event stream at the same moment: read what is
        there already (the socket does not block), so the pool does not hand the dead container
        another request.
        """
        if not self._exited.done() and self._events is not None:
            with contextlib.suppress(OSError, ValueError):
                self._read_events()
        return self._exited.result() if self._exited.done() else None

    async def exit_code(self, within_s: float) -> int | None:
        code = self.returncode
        if code is None:  # its last events may still be on their way: the loop reads them
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(self.wait_exit(), timeout=within_s)
        return code

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float = 30.0) -> None:
        self.stopping = True
        if self._exited.done():
            return
        actor = self._actor
        if actor is None:  # still being placed: nothing runs yet
            self._finish(-15, "container stopped before it was placed")
            return
        with contextlib.suppress(Exception):  # a dead actor raises; its exit arrives below either way
            await asyncio.wait_for(_await(actor.stop.remote(grace_s)), timeout=grace_s + 10)
        try:
            await asyncio.wait_for(self.wait_exit(), timeout=_EVENTS_GRACE_S)
        except TimeoutError:
            self._finish(LOST, "container lost: its actor did not report its exit")

    # -- starting ---------------------------------------------------------------------------------

    async def _begin(
        self, create: Callable[[], tuple[Any, Any]], message: dict[str, Any], timeout_s: float
    ) -> None:
        try:
            sources = await asyncio.wait_for(self._place(create), timeout=timeout_s)
            await _await(self._actor.start.remote(message, sources))
        except TimeoutError:
            self._finish(
                LOST,
                f"container was not placed on the Ray cluster within {timeout_s:g} s; "
                "`ray status` shows whether its resources are infeasible",
            )
        except Exception as exc:  # Ray's errors: runtime_env setup, actor death, cluster gone
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            for line in lines[-20:]:
                self._log(self._id, "system", line)
            # Ray's first line names the kind of failure, its last one the cause.
            cause = f" ({lines[-1].strip()})" if len(lines) > 1 else ""
            self._finish(LOST, f"container could not start on Ray: {_one_line(exc)}{cause}")

    async def _place(self, create: Callable[[], tuple[Any, Any]]) -> Any:
        """Create the actor and connect to its event stream; return the sources' ObjectRef."""
        # Packing the sources (once per version) reads files: off the loop. Shielded: a container
        # stopped meanwhile still learns of its actor, to kill it (`_adopt`).
        creating = asyncio.ensure_future(asyncio.to_thread(create))
        creating.add_done_callback(self._adopt)
        _, sources = await asyncio.shield(creating)
        info = await _await(self._actor.endpoints.remote())
        self.node_id = str(info["node_id"])
        if self.on_placed is not None:
            self.on_placed(self.node_id)
        forked = f", forked by zygote {info['zygote']}" if info.get("zygote") else ""
        self._log(self._id, "system", f"placed on Ray node {self.node_id} ({info['host']}){forked}")
        sock = socket.socket(_family(info["host"]), socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in _KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (info["host"], int(info["events_port"])))
        except BaseException:
            sock.close()
            raise
        self._events = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_events)
        self._spawn(self._watch(self._actor))
        return sources

    def _adopt(self, creating: asyncio.Future[tuple[Any, Any]]) -> None:
        if creating.cancelled() or creating.exception() is not None:
            return
        self._actor, _ = creating.result()
        if self._exited.done():
            _kill(self._actor)

    async def _watch(self, actor: Any) -> None:
        """Ray's view of the actor: its worker's exit code, or an error once Ray declares it dead."""
        try:
            code: int | None = int(await _await(actor.wait_exit.remote()))
        except Exception:
            code = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_exit(), timeout=_EVENTS_GRACE_S)
        if code is None:
            self._finish(LOST, "container lost: Ray reports its actor dead (its node died or was removed)")
        else:
            self._finish(code, f"container exited with code {code}")

    # -- the event stream ---------------------------------------------------------------------------

    def _read_events(self) -> None:
        sock = self._events
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                data = b""
            if not data:
                self._finish(LOST, "container lost: its actor died (node lost?)")
                return
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    self._event(json.loads(line))
                if self._exited.done():
                    return

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind is None:
            stream: Stream = "stderr" if event.get("stream") == "stderr" else "stdout"
            self._log(self._id, stream, str(event.get("line", "")))
        elif kind == "ready":
            self._address = str(event["address"])
            if not self._ready.done():
                self._ready.set_result(None)
        elif kind == "failed":
            if not self._ready.done():
                self._ready.set_exception(StartupError(str(event.get("reason") or "startup failed")))
        elif kind == "exit":
            code = int(event["code"])
            self._finish(code, f"container exited with code {code}")

    def _finish(self, code: int, message: str) -> None:
        """The container is gone: say why, settle its futures, release the actor's resources."""
        if self._exited.done():
            return
        sock, self._events = self._events, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self._log(self._id, "system", message)
        if not self._ready.done():
            reason = message if code == LOST else f"container exited during startup (code {code})"
            self._ready.set_exception(StartupError(reason))
        self._exited.set_result(code)
        if self._actor is not None:
            asyncio.get_running_loop().call_soon(_kill, self._actor)  # frees its resources on the node
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class RayBackend:
    """Starts containers as Ray actors on the cluster at `address` (None: Ray's own default — the
    RAY_ADDRESS variable, then a cluster started on this machine, else a new local instance)."""

    #: Ray installs each recipe in a runtime_env on its node; no host paths there (docs/ray.md).
    capabilities = Capabilities(image_layouts=frozenset({"recipe"}), host_paths=False)

    def __init__(
        self, home: Path, *, address: str | None = None, zygote_window_s: float = DEFAULT_ZYGOTE_WINDOW_S
    ) -> None:
        self._home = home
        self._address = address
        self._window_s = zygote_window_s
        self._actor_class: Any = None
        self._spares: Spares | None = None
        self._uv = True  # Ray's runtime_env has a `uv` field since 2.40
        self._containers: dict[str, RayContainer] = {}
        self._sources = _Sources()
        self._closed = False
        self._nodes: tuple[str, ...] = ()  # the ids of the cluster's live nodes, refreshed as we go
        self._nodes_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable(
                "The Ray backend needs Ray on the server and on every node: pip install 'cove[ray]'."
            ) from None
        try:
            ray.init(
                address=self._address,
                namespace="cove",
                log_to_driver=False,  # containers' output reaches `cove app logs` on the event stream
                logging_level=logging.WARNING,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self._address or "RAY_ADDRESS or the local cluster"
            raise RayUnavailable(
                f"Could not connect to the Ray cluster at {where}: {exc}. "
                "Start one with `ray start --head`, or pass --ray-address HOST:PORT."
            ) from exc
        self._actor_class = ray.remote(ContainerActor)
        zygote_class = ray.remote(ZygoteActor)

        def create_zygote(options: dict[str, Any], zygote_id: str, node_id: str) -> Any:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            pinned = NodeAffinitySchedulingStrategy(node_id, soft=False)
            named = dict(options, scheduling_strategy=pinned, name=f"cove-{zygote_id}")
            return zygote_class.options(**named).remote(zygote_id)

        self._spares = Spares(create_zygote, self._sources.get, window_s=self._window_s)
        self._uv = _version(ray.__version__) >= (2, 40)
        self._nodes, self._nodes_at = _live_nodes(), time.monotonic()
        resources = ray.cluster_resources()
        log.info(
            "event=ray_connected address=%s nodes=%d cpus=%g gpus=%g",
            self._address or "auto",
            sum(1 for node in ray.nodes() if node.get("Alive")),
            resources.get("CPU", 0),
            resources.get("GPU", 0),
        )

    def prepare(self, request: ContainerRequest) -> None:
        """A version is live: its functions' warm spares (`spares`)."""
        if self._spares is None or self._closed:
            return
        try:
            ray_plan = plan(request.function, uv=self._uv)
        except (OSError, ValueError):  # its containers say why when they start
            return
        self._spares.prepare(request, dict(ray_plan.options))

    def release(self, request: ContainerRequest) -> None:
        """That version is gone: its spares go, its sources may leave the object store."""
        if self._spares is not None:
            self._spares.release(request)
        self._sources.drop(request)

    def launch(self, request: ContainerRequest, log_sink: LogSink) -> RayContainer:
        container_id = new_container_id()
        container = RayContainer(container_id, log_sink)
        if self._closed or self._actor_class is None:
            container._finish(LOST, "the Ray backend is not running")
            return container
        try:
            ray_plan = plan(request.function, uv=self._uv)
        except (OSError, ValueError) as exc:  # a requirements file the recipe names is unreadable
            container._finish(LOST, f"container could not start on Ray: {_one_line(exc)}")
            return container
        for note in ray_plan.notes:
            log_sink(container_id, "system", note)
        options = dict(ray_plan.options, name=f"cove-{container_id}")
        actor_class, sources = self._actor_class, self._sources
        # The node fills in where it unpacked the sources (`source_dir`) and its `socket`.
        message = encode(
            Start(
                container_id=container_id,
                function=spec_to_dict(request.function),
                module_file=os.path.relpath(request.module_file, request.source_dir),
                source_dir="",
                # secrets: in the start message, never in the runtime_env. No scoped control socket
                # on Ray (docs/ray.md): calls from inside a container say so.
                env={**request.env, **app_env(request, None)},
            )
        )
        container.version = id(request)
        spares = self._spares
        if spares is not None:
            container.on_placed = lambda placed: spares.landed(request, placed)
        self._containers[container_id] = container
        container._exited.add_done_callback(lambda _: self._forget(request, container))

        def create(fork: Fork | None) -> tuple[Any, Any]:  # in a thread: packing sources reads files
            if fork is not None and fork.reserve(_RESERVE_TIMEOUT_S):  # its zygote has the sources
                return fork, None
            return actor_class.options(**options).remote(container_id), sources.get(request)

        timeout_s = request.function.startup_timeout_s or _PLACEMENT_TIMEOUT_S
        container._spawn(self._start(container, request, message, create, timeout_s))
        return container

    async def _start(
        self,
        container: RayContainer,
        request: ContainerRequest,
        message: dict[str, Any],
        create: Callable[[Fork | None], tuple[Any, Any]],
        timeout_s: float,
    ) -> None:
        """A fork or an actor, decided once the loop has run what launched it: a container stopped
        to be replaced by this one is `stopping` by then, and not counted where it runs."""
        fork = None
        node = self._fork_node(request, container)
        taken = None
        if node is not None and self._spares is not None and not container._exited.done():
            taken = self._spares.take(request, node, container.id, message)
        if taken is not None:
            fork, give_back = taken
            container.node_id = node
            container._exited.add_done_callback(lambda _: give_back())
        await container._begin(lambda: create(fork), message, timeout_s)

    def _fork_node(self, request: ContainerRequest, new: RayContainer) -> str | None:
        """The node to fork the next container of `request` on: of the live nodes with a ready spare,
        the one holding fewest of this version's containers, unless it holds more than another live
        node (counting containers still being placed as elsewhere, and not those being stopped, whose
        replacements these may be). None: start an actor, which Ray spreads. Replicas spread over
        nodes, as actors do (`options.actor_options`), so one node takes few of them down."""
        self._refresh_nodes()
        spared = self._spares.nodes(request) if self._spares is not None else ()
        live = set(self._nodes)
        candidates = [node for node in spared if not live or node in live]
        if not candidates:
            return None
        counts = dict.fromkeys(self._nodes, 0)
        unplaced = 0
        for container in self._containers.values():
            if container.version != id(request) or container.stopping or container is new:
                continue
            if container.node_id is None:
                unplaced += 1
            else:
                counts[container.node_id] = counts.get(container.node_id, 0) + 1
        node = min(candidates, key=lambda n: counts.get(n, 0))
        mine = counts.pop(node, 0)
        return node if not counts or mine <= min(counts.values()) + unplaced else None

    def _forget(self, request: ContainerRequest, gone: RayContainer) -> None:
        """A container exited: if its node holds no other container of its version, that node's
        spare starts its zygote window."""
        self._containers.pop(gone.id, None)
        node = gone.node_id
        if node is None or self._spares is None:
            return
        if not any(c.version == gone.version and c.node_id == node for c in self._containers.values()):
            self._spares.vacated(request, node)

    def _refresh_nodes(self) -> None:
        if time.monotonic() - self._nodes_at < _NODES_REFRESH_S or self._refreshing is not None:
            return

        async def refresh() -> None:
            try:
                self._nodes = await asyncio.to_thread(_live_nodes)
            except Exception:  # Ray is shutting down: keep what we knew
                pass
            finally:
                self._nodes_at, self._refreshing = time.monotonic(), None

        self._refreshing = asyncio.ensure_future(refresh())

    async def close(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            await asyncio.gather(self._refreshing, return_exceptions=True)
        await asyncio.gather(
            *(c.stop(grace_s=10) for c in list(self._containers.values())), return_exceptions=True
        )
        if self._spares is not None:
            await self._spares.close()
        if self._actor_class is not None:
            import ray

            await asyncio.to_thread(ray.shutdown)


class _Sources:
    """Each version's sources in the cluster's object store: put once, dropped with the version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[int, tuple[weakref.ref[ContainerRequest], Any]] = {}

    def get(self, request: ContainerRequest) -> Any:
        """The ObjectRef of `request`'s source bundle (called from threads, hence the lock)."""
        import ray

        with self._lock:
            for key, (alive, _) in list(self._refs.items()):
                if alive() is None:  # the version is gone (`release` was not called)
                    del self._refs[key]
            entry = self._refs.get(id(request))
            if entry is not None and entry[0]() is request:
                return entry[1]
            ref = ray.put(pack_sources(request.function, request.module_file, request.source_dir))
            self._refs[id(request)] = (weakref.ref(request), ref)
            return ref

    def drop(self, request: ContainerRequest) -> None:
        with self._lock:
            entry = self._refs.get(id(request))
            if entry is not None and entry[0]() is request:
                del self._refs[id(request)]


def pack_sources(spec: FunctionSpec, module_file: str, source_dir: str | None = None) -> bytes:
    """The app's directory and its `add_local_python_source` packages, as `cove deploy` bundles them
    (packages the server cannot see are left out: a deployed bundle has them in its directory)."""
    steps = []
    for step in spec.image.steps:
        if step.kind == "add_local_python_source":
            paths = tuple(p for p in step.arg("paths", ()) if p and os.path.exists(p))
            steps.append(ImageStep(step.kind, tuple((k, paths if k == "paths" else v) for k, v in step.args)))
    only_sources = dataclasses.replace(spec, image=ImageSpec(tuple(steps)))
    # The whole source_dir: with -m it is the directory the package was imported from.
    return make_bundle(AppSpec(None, (only_sources,)), module_file, source_dir=source_dir)


async def _await(ref: Any) -> Any:
    """An ObjectRef as a coroutine (awaiting one directly is fine; wait_for wants a coroutine)."""
    return await ref


def _version(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def _live_nodes() -> tuple[str, ...]:
    import ray

    return tuple(str(node["NodeID"]) for node in ray.nodes() if node.get("Alive"))


def _kill(actor: Any) -> None:
    if isinstance(actor, Fork):  # a fork, not an actor: its zygote actor ends it
        actor.kill()
        return
    import ray

    with contextlib.suppress(Exception):  # dead already, or Ray is shut down
        ray.kill(actor, no_restart=True)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _one_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
