"""Warm spares on Ray: a zygote actor per node a function version runs on, whose forks start in milliseconds.

When a container of a live function version lands on a node where the version has no spare (by
actor start, the first time), `Spares.landed` creates a `ZygoteActor` (`zygote`) pinned to that node
(hard node affinity), with the function's runtime_env and the resources of *one* container: `SLOTS`.
That reservation is what a spare holds, whether or not it has a container, and it is bounded: one
container's cpu/memory per function version per node holding (or having held, within the zygote
window) its containers, and never two spares of a version on one node. A container launched on a
node with a ready spare is a fork of that actor's function zygote (a *fork*, reached as `Fork`); one
launched before any spare is ready, or for a GPU function, is an actor of its own (a cold start).

A spare goes with its version, or when its node has held none of the version's containers for the
zygote window (`Spares.vacated`, then `_expire`). A zygote actor that dies takes its forks with it:
their event streams close and they are lost, like a container on a dead node. The next container
landing on that node makes a new one (not after `_MAX_RESTARTS` in a row that never became ready).
A version released while a fork runs keeps that fork's zygote actor until the fork has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from cove._messages import Start, encode
from cove._runtime.backend import ContainerRequest, app_env
from cove._runtime.backends.ray.options import ACTOR_CONCURRENCY
from cove._spec import spec_to_dict

log = logging.getLogger("cove.runtime")

#: Containers a zygote actor reserves resources for, and so forks at once.
SLOTS = 1
#: Zygote actors made in a row for one version without one becoming ready, before giving up.
_MAX_RESTARTS = 3

Create = Callable[[dict[str, Any], str, str], Any]  # (actor options, zygote id, node id) -> actor
Sources = Callable[[ContainerRequest], Any]  # the version's source bundle, as an ObjectRef


@dataclass(eq=False)
class _Version:
    """A live function version: its containers' actor options and its spares, by node id."""

    request: ContainerRequest
    options: dict[str, Any]  # a container's actor options
    spares: dict[str, _Spare] = field(default_factory=dict)
    failures: int = 0  # spares in a row that never became ready
    released: bool = False

    @property
    def container(self) -> dict[str, float]:
        """One container's resources, as a placement group bundle names them."""
        return {
            "CPU": float(self.options.get("num_cpus") or 0),
            "memory": float(self.options.get("memory") or 0),
        }


@dataclass(eq=False)
class _Spare:
    version: _Version
    node_id: str  # the node it is pinned to
    actor: Any = None
    host: str = ""
    zygote_id: str = ""
    ready: bool = False
    busy: int = 0
    released: bool = False
    expiry: asyncio.TimerHandle | None = None


class Fork:
    """A container forked by a zygote actor, with the methods of a container's actor (`node`).

    `endpoints` forks it at once (its start message is known): its output waits in the event
    stream's backlog while the server connects, which saves a round trip. `bundle`: the resources
    to reserve on the zygote's node first, for a fork beyond the spare's own slot."""

    def __init__(
        self, actor: Any, container_id: str, message: dict[str, Any], bundle: dict[str, float] | None
    ) -> None:
        self.actor = actor
        self.endpoints = _Bound(actor.open, container_id, message)
        self.start = _Started()  # the zygote has the sources, and the fork is under way
        self.wait_exit = _Bound(actor.wait_exit, container_id)
        self.stop = _Bound(actor.stop, container_id)
        self._id = container_id
        self._bundle = bundle
        self._group: Any = None

    def reserve(self, timeout_s: float) -> bool:
        """Reserve the extra fork's resources on the zygote's node (a placement group; blocking, in
        a thread): False if Ray cannot place them there in time (start an actor instead)."""
        if self._bundle is None:
            return True
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group

        group = placement_group([self._bundle], strategy="STRICT_PACK", name=f"cove-{self._id}")
        try:
            ray.get(group.ready(), timeout=timeout_s)
        except Exception:
            with contextlib.suppress(Exception):
                remove_placement_group(group)
            return False
        self._group = group
        return True

    def unreserve(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):  # Ray is shut down: so is the reservation
                remove_placement_group(group)

    def kill(self) -> None:
        with contextlib.suppress(Exception):  # the zygote actor is gone: so is the fork
            self.actor.kill.remote(self._id)


class _Bound:
    """`method.remote(container_id, *first, *args)` spelled as an actor's `method.remote(*args)`."""

    def __init__(self, method: Any, container_id: str, *first: Any) -> None:
        self._method = method
        self._args = (container_id, *first)

    def remote(self, *args: Any) -> Any:
        return self._method.remote(*self._args, *args)


class _Started:
    """`start.remote(message, sources)` of a fork: nothing left to do."""

    def remote(self, *args: Any) -> Any:
        return _nothing()


async def _nothing() -> None:
    return None


class Spares:
    """The zygote actors of the live function versions, one per node in use, and their taken slots."""

    def __init__(self, create: Create, sources: Sources, *, window_s: float) -> None:
        self._create = create
        self._sources = sources
        self._window_s = window_s
        self._versions: dict[int, _Version] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdowns: set[asyncio.Task[None]] = set()
        self._closed = False

    def prepare(self, request: ContainerRequest, options: dict[str, Any]) -> None:
        """A version is live: its containers may get spares (not GPU functions': a fork cannot be
        given a GPU of its own)."""
        if self._closed or request.function.gpu:
            return
        self._versions[id(request)] = _Version(request, options)

    def release(self, request: ContainerRequest) -> None:
        version = self._versions.pop(id(request), None)
        if version is None:
            return
        version.released = True
        for spare in list(version.spares.values()):
            self._drop(spare)

    def landed(self, request: ContainerRequest, node_id: str) -> None:
        """A container of `request` runs on `node_id`: keep that node's spare, or make one."""
        version = self._versions.get(id(request))
        if version is None or self._closed:
            return
        spare = version.spares.get(node_id)
        if spare is not None:
            if spare.expiry is not None:
                spare.expiry.cancel()
                spare.expiry = None
            return
        if version.failures >= _MAX_RESTARTS:
            return
        spare = _Spare(version, node_id)
        version.spares[node_id] = spare
        self._spawn(self._start(spare))

    def vacated(self, request: ContainerRequest, node_id: str) -> None:
        """`node_id` holds none of `request`'s containers now: its spare goes after the window,
        unless a container lands there first."""
        version = self._versions.get(id(request))
        spare = version.spares.get(node_id) if version is not None else None
        if spare is None or spare.expiry is not None or self._closed:
            return
        spare.expiry = asyncio.get_running_loop().call_later(self._window_s, self._expire, spare)

    def _expire(self, spare: _Spare) -> None:
        spare.expiry = None
        version = spare.version
        if spare.busy or version.spares.get(spare.node_id) is not spare:
            return
        log.info(
            "function=%s zygote=%s event=ray_zygote_idle node=%s",
            version.request.function.tag,
            spare.zygote_id,
            spare.node_id,
        )
        del version.spares[spare.node_id]
        self._drop(spare)

    def nodes(self, request: ContainerRequest) -> tuple[str, ...]:
        """The nodes where `request` has a ready spare."""
        version = self._versions.get(id(request))
        if version is None or self._closed:
            return ()
        return tuple(node for node, spare in version.spares.items() if spare.ready)

    def take(
        self, request: ContainerRequest, node_id: str, container_id: str, message: dict[str, Any]
    ) -> tuple[Fork, Callable[[], None]] | None:
        """A fork on `node_id` for a new container of `request` and the callback to call once it has
        exited; None when that node has no ready spare (start an actor instead). A fork beyond the
        spare's slot must `reserve` its resources before it starts."""
        version = self._versions.get(id(request))
        spare = version.spares.get(node_id) if version is not None else None
        if version is None or spare is None or not spare.ready or self._closed:
            return None
        bundle = None
        if spare.busy >= SLOTS:
            bundle = {f"node:{spare.host}": 0.001}
            bundle.update({k: v for k, v in version.container.items() if v})
        spare.busy += 1
        if spare.expiry is not None:
            spare.expiry.cancel()
            spare.expiry = None
        fork = Fork(spare.actor, container_id, message, bundle)

        def give_back() -> None:
            fork.unreserve()
            spare.busy -= 1
            if spare.released and spare.busy == 0:
                self._retire(spare)

        return fork, give_back

    async def _start(self, spare: _Spare) -> None:
        version = spare.version
        request = version.request
        zygote_id = "zy-" + secrets.token_hex(6)
        spare.zygote_id = zygote_id
        message = encode(
            Start(
                container_id=zygote_id,
                function=spec_to_dict(request.function),
                module_file=os.path.relpath(request.module_file, request.source_dir),
                source_dir="",  # the actor fills in where it unpacked the sources
                env={**request.env, **app_env(request, None)},
            )
        )
        try:
            options = zygote_options(version.options)
            actor = await asyncio.to_thread(self._create, options, zygote_id, spare.node_id)
            spare.actor = actor
            if spare.released or self._closed:
                self._retire(spare)
                return
            sources = await asyncio.to_thread(self._sources, request)
            info = await _await(actor.prepare.remote(message, sources))
        except Exception as exc:
            version.failures += 1
            text = str(exc).strip().splitlines()
            log.warning(
                "function=%s zygote=%s event=ray_zygote_failed node=%s error=%r",
                request.function.tag,
                zygote_id,
                spare.node_id,
                text[-1] if text else type(exc).__name__,
            )
            self._forget(spare)
            self._kill(spare.actor)
            spare.actor = None
            return
        if spare.released or self._closed:
            self._retire(spare)
            return
        spare.ready, version.failures, spare.host = True, 0, str(info.get("host"))
        log.info(
            "function=%s zygote=%s event=ray_zygote_ready node=%s host=%s pid=%s",
            request.function.tag,
            zygote_id,
            info.get("node_id"),
            info.get("host"),
            info.get("pid"),
        )
        self._spawn(self._watch(spare, actor))

    async def _watch(self, spare: _Spare, actor: Any) -> None:
        """A zygote actor that dies (killed, its node lost) is forgotten: the next container landing
        on its node makes a new one."""
        with contextlib.suppress(Exception):
            await _await(actor.wait_closed.remote())
        if spare.actor is not actor:
            return
        spare.ready, spare.actor = False, None
        self._forget(spare)
        if spare.released or self._closed:
            return
        tag = spare.version.request.function.tag
        log.warning("function=%s zygote=%s event=ray_zygote_lost", tag, spare.zygote_id)

    def _forget(self, spare: _Spare) -> None:
        if spare.expiry is not None:
            spare.expiry.cancel()
            spare.expiry = None
        if spare.version.spares.get(spare.node_id) is spare:
            del spare.version.spares[spare.node_id]

    def _drop(self, spare: _Spare) -> None:
        """The spare is no longer wanted: retired now, or once its last fork has exited."""
        spare.released = True
        if spare.expiry is not None:
            spare.expiry.cancel()
            spare.expiry = None
        if spare.busy == 0:
            self._retire(spare)

    def _retire(self, spare: _Spare) -> None:
        actor, spare.actor, spare.ready = spare.actor, None, False
        if actor is not None:
            task = asyncio.ensure_future(self._shutdown(actor))
            self._shutdowns.add(task)
            task.add_done_callback(self._shutdowns.discard)

    async def _shutdown(self, actor: Any) -> None:
        """Ask the actor to stop its zygotes (and remove its directory), then end it."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_await(actor.shutdown.remote()), timeout=15)
        self._kill(actor)

    @staticmethod
    def _kill(actor: Any) -> None:
        if actor is None:
            return
        import ray

        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    async def close(self) -> None:
        """Retire every zygote actor (the backend has stopped the containers first)."""
        self._closed = True
        for version in list(self._versions.values()):
            version.released = True
            for spare in list(version.spares.values()):
                spare.released = True
                if spare.expiry is not None:
                    spare.expiry.cancel()
                self._retire(spare)
        self._versions.clear()
        await asyncio.gather(*self._shutdowns, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def zygote_options(options: dict[str, Any]) -> dict[str, Any]:
    """A zygote actor's options: a container's, with the resources of `SLOTS` containers (the slots
    its forks run in) and room for the methods of that many forks waiting at once."""
    reserved = dict(options, max_concurrency=ACTOR_CONCURRENCY * (SLOTS + 1))
    # Pinned to its node by the caller (`Create`), never SPREAD: Ray spreads by taking nodes in
    # turn, and a spare taking a turn would put the next two containers (actors) on one node.
    reserved.pop("scheduling_strategy", None)
    for resource in ("num_cpus", "memory"):
        if resource in reserved:
            reserved[resource] = reserved[resource] * SLOTS
    return reserved


async def _await(ref: Any) -> Any:
    return await ref
