"""Warm spares on Ray: one zygote actor per live function version, whose forks start in milliseconds.

When a version is published, `Spares.prepare` creates a `ZygoteActor` (`zygote`) for each of its
functions, placed by Ray's default policy, with the function's runtime_env and the
resources of *one* container: `SLOTS`. That reservation is what a spare holds while the version is
live, whether or not it has a container, and it is bounded: one container's cpu/memory per
function version, on one node. A container launched while the slot is free is a fork of that
actor's function zygote (a *fork*, reached as `Fork`); one launched while it is taken, or before
the zygote is ready, or for a GPU function, is an actor of its own as before (a cold start).

A zygote actor that dies takes its forks with it: their event streams close and they are lost,
like a container on a dead node. The next launch is a cold start, and a new zygote actor is made
in the background (once per death, at most `_MAX_RESTARTS` in a row without one becoming ready).
A version released while a fork runs keeps its zygote actor until that fork has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
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

Create = Callable[[dict[str, Any], str], Any]  # (actor options, zygote id) -> actor handle
Sources = Callable[[ContainerRequest], Any]  # the version's source bundle, as an ObjectRef


@dataclass(eq=False)
class _Spare:
    request: ContainerRequest
    options: dict[str, Any]  # a container's actor options
    actor: Any = None
    host: str = ""
    node_id: str | None = None
    zygote_id: str = ""
    ready: bool = False
    busy: int = 0
    released: bool = False
    failures: int = 0

    @property
    def container(self) -> dict[str, float]:
        """One container's resources, as a placement group bundle names them."""
        return {
            "CPU": float(self.options.get("num_cpus") or 0),
            "memory": float(self.options.get("memory") or 0),
        }


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
    """The zygote actors of the live function versions, and which of their slots are taken."""

    def __init__(self, create: Create, sources: Sources) -> None:
        self._create = create
        self._sources = sources
        self._spares: dict[int, _Spare] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._shutdowns: set[asyncio.Task[None]] = set()
        self._closed = False

    def prepare(self, request: ContainerRequest, options: dict[str, Any]) -> None:
        """A version is live: make its zygote actor (not for GPU functions: a fork cannot be given
        a GPU of its own)."""
        if self._closed or request.function.gpu:
            return
        spare = _Spare(request, options)
        self._spares[id(request)] = spare
        self._spawn(self._start(spare))

    def release(self, request: ContainerRequest) -> None:
        spare = self._spares.pop(id(request), None)
        if spare is not None:
            spare.released = True
            if spare.busy == 0:
                self._retire(spare)

    def node(self, request: ContainerRequest) -> str | None:
        """The node of `request`'s ready zygote actor, if it has one."""
        spare = self._spares.get(id(request))
        return spare.node_id if spare is not None and spare.ready and not self._closed else None

    def take(
        self, request: ContainerRequest, container_id: str, message: dict[str, Any]
    ) -> tuple[Fork, Callable[[], None]] | None:
        """A fork for a new container of `request` and the callback to call once it has exited;
        None when there is no ready zygote (start an actor instead). A fork beyond the spare's
        slot must `reserve` its resources before it starts."""
        spare = self._spares.get(id(request))
        if spare is None or not spare.ready or self._closed:
            return None
        bundle = None
        if spare.busy >= SLOTS:
            bundle = {f"node:{spare.host}": 0.001}
            bundle.update({k: v for k, v in spare.container.items() if v})
        spare.busy += 1
        fork = Fork(spare.actor, container_id, message, bundle)

        def give_back() -> None:
            fork.unreserve()
            spare.busy -= 1
            if spare.released and spare.busy == 0:
                self._retire(spare)

        return fork, give_back

    async def _start(self, spare: _Spare) -> None:
        request = spare.request
        zygote_id = "zy-" + secrets.token_hex(6)
        message = encode(  # the actor fills in where it unpacked the sources
            Start(
                container_id=zygote_id,
                function=spec_to_dict(request.function),
                module_file=os.path.relpath(request.module_file, request.source_dir),
                source_dir="",
                env={**request.env, **app_env(request, None)},
            )
        )
        try:
            actor = await asyncio.to_thread(self._create, zygote_options(spare.options), zygote_id)
            spare.actor, spare.zygote_id = actor, zygote_id
            if spare.released or self._closed:
                self._retire(spare)
                return
            sources = await asyncio.to_thread(self._sources, request)
            info = await _await(actor.prepare.remote(message, sources))
        except Exception as exc:
            spare.failures += 1
            text = str(exc).strip().splitlines()
            log.warning(
                "function=%s zygote=%s event=ray_zygote_failed error=%r",
                request.function.tag,
                zygote_id,
                text[-1] if text else type(exc).__name__,
            )
            self._kill(spare.actor)
            spare.actor = None
            return
        if spare.released or self._closed:
            self._retire(spare)
            return
        spare.ready, spare.failures, spare.host = True, 0, str(info.get("host"))
        spare.node_id = str(info.get("node_id"))
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
        """A zygote actor that dies (killed, its node lost) is replaced in the background."""
        with contextlib.suppress(Exception):
            await _await(actor.wait_closed.remote())
        if spare.actor is not actor:
            return
        spare.ready, spare.actor = False, None
        if spare.released or self._closed:
            return
        tag = spare.request.function.tag
        log.warning("function=%s zygote=%s event=ray_zygote_lost", tag, spare.zygote_id)
        spare.failures += 1
        if spare.failures <= _MAX_RESTARTS:
            self._spawn(self._start(spare))

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
        for spare in list(self._spares.values()):
            self._retire(spare)
        self._spares.clear()
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
    # Not SPREAD: Ray spreads by taking nodes in turn, and a spare taking a turn would put the next
    # two containers (actors) on one node.
    reserved["scheduling_strategy"] = "DEFAULT"
    for resource in ("num_cpus", "memory"):
        if resource in reserved:
            reserved[resource] = reserved[resource] * SLOTS
    return reserved


async def _await(ref: Any) -> Any:
    return await ref
