"""Zygotes: warm processes that containers are forked from, so a cold start costs tens of milliseconds.

Two levels, kept by the local backend (`COVE_ZYGOTE=0` turns both off):

- an *image zygote*: a worker that has imported the serving stack inside a sandbox on the image, and
  knows no secret. There is one per sandbox, and a sandbox per placement (image, source, mounts,
  network, limits) *and function* (`sandbox_key`): the forks of one function share a PID and a
  network namespace, which two functions must not (they would see each other's processes, and
  their secrets in /proc). It lives while a version that may launch there is live.
- a *function zygote* per function version, forked from its image zygote when the version is
  published: it imported the user's module and ran the `@enter(snap=True)` hooks, with the
  function's secrets in its environment (Modal's memory-snapshot semantics). It stays while the
  function has containers, for `window_s` after the last one stopped, and always with
  `min_containers` > 0. A function that starts again after its window forks from the image zygote
  and gets a new function zygote once that container is ready.

A container is a fork of the function zygote when there is one, else of the image zygote. It enters
its own user and mount namespaces (and network namespace for `web_server`; see `namespaces`),
session and cgroup, runs what its zygote has not, then its `@enter` hooks, and serves on a listening
socket the server made. Zygotes never serve traffic. The processes, as the server sees them, are in
`forks`; the zygote's side is `forkserver`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove._messages import BecomeZygote, Go, Isolation, Start, encode
from cove._runtime.backend import ContainerRequest, LogSink, StartupError, Stream
from cove._runtime.backends.local import namespaces
from cove._runtime.backends.local.forks import Forked, FunctionZygote, ImageZygote, Wire, Zygote, finish, pump
from cove._runtime.backends.local.isolation import Host, Network, Placement, attach_network
from cove._runtime.backends.local.limits import Applied, Limiter
from cove._runtime.backends.local.sandbox import HOME
from cove._runtime.backends.local.spawner import Spawner, listen
from cove._spec import spec_to_dict

log = logging.getLogger("cove.runtime")

Key = tuple[object, ...]
#: A function zygote's output kept until a container of the function gives it a log to go to.
_BACKLOG_LINES = 500
#: After a container forked from the image zygote is ready, wait this long before making a function
#: zygote, so the import does not compete with the first requests for the CPU.
_REZYGOTE_DELAY_S = 1.0


def new_zygote_id() -> str:
    return "zy-" + secrets.token_hex(6)


@dataclass(eq=False)
class _ImageEntry:
    placement: Placement
    users: int = 0
    zygote: ImageZygote | None = None
    starting: asyncio.Task[ImageZygote] | None = None


@dataclass(eq=False)
class _FunctionEntry:
    request: ContainerRequest
    placement: Placement
    key: Key  # its image zygote's
    zygote: FunctionZygote | None = None
    starting: asyncio.Task[FunctionZygote | None] | None = None
    containers: int = 0
    expiry: asyncio.TimerHandle | None = None
    released: bool = False
    sink: LogSink | None = None
    backlog: collections.deque[tuple[str, Stream, str]] = field(
        default_factory=lambda: collections.deque(maxlen=_BACKLOG_LINES)
    )

    @property
    def keep(self) -> bool:
        return self.request.function.min_containers > 0

    def log(self, source: str, stream: Stream, line: str) -> None:
        if self.sink is not None:
            self.sink(source, stream, line)
        else:
            self.backlog.append((source, stream, line))

    def attach(self, sink: LogSink) -> None:
        self.sink = sink
        while self.backlog:
            sink(*self.backlog.popleft())


class Zygotes:
    """The image and function zygotes of the local backend, and the containers forked from them."""

    def __init__(
        self, spawner: Spawner, limiter: Limiter, host: Host, sockets: Path, *, window_s: float
    ) -> None:
        self._spawner = spawner
        self._limiter = limiter
        self._host = host
        self._sockets = sockets
        self._window_s = window_s
        self._images: dict[Key, _ImageEntry] = {}
        self._functions: dict[int, _FunctionEntry] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- versions come and go ---------------------------------------------------------------------

    def prepare(self, request: ContainerRequest, placement: Placement) -> None:
        """A version that may launch `request` is live: its image zygote, and a function zygote."""
        key = sandbox_key(request, placement)
        image = self._images.setdefault(key, _ImageEntry(placement))
        image.users += 1
        entry = _FunctionEntry(request, placement, key)
        self._functions[id(request)] = entry
        self._start_function_zygote(entry)

    def release(self, request: ContainerRequest) -> None:
        entry = self._functions.pop(id(request), None)
        if entry is None:
            return
        entry.released = True
        self._cancel_expiry(entry)
        if entry.starting is not None:
            entry.starting.cancel()
        if entry.zygote is not None:
            self._spawn(entry.zygote.stop())
            entry.zygote = None
        image = self._images.get(entry.key)
        if image is not None:
            image.users -= 1
            if image.users <= 0:
                self._images.pop(entry.key, None)
                self._spawn(self._stop_image(image))

    # -- containers -------------------------------------------------------------------------------

    async def fork_container(
        self, request: ContainerRequest, container_id: str, address: str, start: Start, sink: LogSink
    ) -> Forked:
        """Fork a container for `request`: from its function zygote if there is one (waiting for one
        being made), else from the image zygote. It listens on `address` once ready."""
        entry = self._functions.get(id(request))
        if entry is None:
            raise StartupError(f"no live version launches {request.function.tag} (prepare() first)")
        entry.attach(sink)
        entry.containers += 1
        self._cancel_expiry(entry)
        try:
            forked = await self._fork(entry, container_id, address, start)
        except BaseException:
            self._container_gone(entry)
            raise
        forked.exited.add_done_callback(lambda _: self._container_gone(entry))
        return forked

    async def _fork(self, entry: _FunctionEntry, container_id: str, address: str, start: Start) -> Forked:
        fn = entry.request.function
        placement = entry.placement
        plan = _plan(placement, network=fn.web is not None and fn.web.relays_port)
        outbound = (
            plan is not None
            and plan.network
            and placement.needs is not None
            and placement.needs.network == "outbound"
            and self._host.network_tool is not None
        )
        limits = self._limiter.apply(container_id, placement.cpu, placement.memory_mib)
        # cpu= and memory= hold the child until it is in its cgroup. The process cap alone (every
        # container's group has one) does not: moving a process between cgroups takes ~10 ms (an
        # RCU grace period), so the child is moved while it starts (under its sandbox's cap until
        # then: the image zygote's group, see `spawner`), and is ready once it is in (`started`).
        limited = placement.cpu is not None or placement.memory_mib is not None
        hold = bool((limited and limits.limits.cgroup_procs) or limits.limits.data_bytes or outbound)
        networks: list[Network] = []  # its pasta, once attached

        def cleanup() -> None:
            for network in networks:
                network.stop()
            self._limiter.release(limits)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)

        async def fork_from(zygote: Zygote) -> Forked:
            listener = listen(address)
            try:
                return await zygote.fork(
                    container_id, "container", start, plan=plan, hold=hold, listener=listener, cleanup=cleanup
                )
            finally:
                listener.close()

        try:
            zygote: Zygote | None = await self._ready_function_zygote(entry)
            forked: Forked | None = None
            if zygote is not None:
                try:
                    forked = await fork_from(zygote)
                except StartupError as exc:  # it died just now: the image zygote is still there
                    log.warning("container=%s event=function_zygote_lost error=%r", container_id, exc)
            if forked is None:
                zygote = await self._image_zygote(entry.key)
                forked = await fork_from(zygote)
        except BaseException:
            cleanup()
            raise
        forked.limits = limits
        if hold:
            await self._place(forked, limits, networks if outbound else None)
            if forked.exited.done():  # it died meanwhile: its cleanup may have run before pasta came
                cleanup()
        elif limits.limits.cgroup_procs:
            forked.joining = asyncio.ensure_future(_join_cgroups(forked, limits))
        if forked.via == "image" and not entry.released:
            self._spawn(self._rezygote_when_ready(entry, forked))
        return forked

    async def _place(self, forked: Forked, limits: Applied, networks: list[Network] | None) -> None:
        """A held child is in its own namespaces: put it in its cgroup and network, then let it go."""
        event = await forked.wire.receive()
        if event is None or event.get("event") != "isolated":
            forked.pending = event
            return
        # Both take milliseconds in the kernel (a cgroup move waits for an RCU grace period): at once.
        joining = asyncio.ensure_future(_join_cgroups(forked, limits))
        try:
            if networks is not None:
                network = await attach_network(self._host, forked.host_pid)
                if network is not None:
                    networks.append(network)
        finally:
            await joining
        with contextlib.suppress(OSError):
            await forked.wire.send(encode(Go(limits.limits.data_bytes)))

    def _container_gone(self, entry: _FunctionEntry) -> None:
        entry.containers -= 1
        self._arm_expiry(entry)

    # -- function zygotes -------------------------------------------------------------------------

    async def _ready_function_zygote(self, entry: _FunctionEntry) -> FunctionZygote | None:
        if entry.zygote is not None and entry.zygote.alive:
            return entry.zygote
        if entry.starting is not None:
            return await asyncio.shield(entry.starting)
        return None

    def _start_function_zygote(self, entry: _FunctionEntry) -> None:
        if self._closed or entry.released or entry.starting is not None:
            return
        if entry.zygote is not None and entry.zygote.alive:
            return
        entry.starting = asyncio.ensure_future(self._make_function_zygote(entry))

    async def _make_function_zygote(self, entry: _FunctionEntry) -> FunctionZygote | None:
        request, placement = entry.request, entry.placement
        zygote_id = new_zygote_id()
        start = Start(
            container_id=zygote_id,
            function=spec_to_dict(request.function),
            module_file=placement.module_file,
            source_dir=placement.source_dir,
            workdir=placement.workdir,
            env=dict(request.env),
        )
        plan = _plan(placement, network=False)
        try:
            image = await self._image_zygote(entry.key)
            forked = await image.fork(zygote_id, "function", start, plan=plan)
            self._spawn(pump(forked.stdout, _to_function_log(entry, zygote_id, "stdout")))
            self._spawn(pump(forked.stderr, _to_function_log(entry, zygote_id, "stderr")))
            event = await forked.started()
        except (StartupError, OSError) as exc:
            log.warning("function=%s event=zygote_failed error=%r", request.function.tag, exc)
            return None
        finally:
            entry.starting = None
        if event is None or event.get("event") != "ready":
            reason = (event or {}).get("reason") or "it exited"
            entry.log(zygote_id, "system", f"function zygote failed ({reason}); containers start without it")
            tag = request.function.tag
            log.warning("function=%s zygote=%s event=zygote_failed reason=%r", tag, zygote_id, reason)
            self._spawn(finish(forked))
            return None
        zygote = FunctionZygote(forked)
        stamps = event.get("stamps") or {}
        log.info(
            "function=%s zygote=%s event=zygote_ready import_ms=%.1f snap_ms=%.1f",
            request.function.tag,
            zygote_id,
            _ms(stamps, "imported", "isolated"),
            _ms(stamps, "entered", "imported"),
        )
        if entry.released or self._closed:
            self._spawn(zygote.stop())
            return None
        entry.zygote = zygote
        forked.exited.add_done_callback(lambda _: self._function_zygote_exited(entry, zygote))
        self._arm_expiry(entry)
        return zygote

    def _function_zygote_exited(self, entry: _FunctionEntry, zygote: FunctionZygote) -> None:
        zygote.forked.release()  # again after a stop: harmless
        if entry.zygote is zygote:
            log.warning("function=%s zygote=%s event=zygote_exited", entry.request.function.tag, zygote.id)
            entry.zygote = None
            self._cancel_expiry(entry)

    async def _rezygote_when_ready(self, entry: _FunctionEntry, forked: Forked) -> None:
        """A container forked from the image zygote is up: make the function zygote again, soon."""
        event = await asyncio.shield(forked.first_event)
        if event is not None and event.get("event") == "ready":
            await asyncio.sleep(_REZYGOTE_DELAY_S)
            self._start_function_zygote(entry)

    def _arm_expiry(self, entry: _FunctionEntry) -> None:
        self._cancel_expiry(entry)
        if entry.released:
            return
        delay = expiry_delay(
            self._window_s, keep=entry.keep, containers=entry.containers, has_zygote=entry.zygote is not None
        )
        if delay == 0:
            self._expire(entry)
        elif delay is not None:
            entry.expiry = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    @staticmethod
    def _cancel_expiry(entry: _FunctionEntry) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _expire(self, entry: _FunctionEntry) -> None:
        entry.expiry = None
        if entry.zygote is None or entry.containers > 0 or entry.keep:
            return
        log.info("function=%s zygote=%s event=zygote_expired", entry.request.function.tag, entry.zygote.id)
        self._spawn(entry.zygote.stop())
        entry.zygote = None

    # -- image zygotes ----------------------------------------------------------------------------

    async def _image_zygote(self, key: Key) -> ImageZygote:
        entry = self._images.get(key)
        if entry is None:
            raise StartupError("the version was stopped; its image zygote is gone")
        if entry.zygote is not None and entry.zygote.alive:
            return entry.zygote
        if entry.starting is None:
            entry.starting = asyncio.ensure_future(self._make_image_zygote(entry))
        try:
            return await asyncio.shield(entry.starting)
        finally:
            if entry.starting is not None and entry.starting.done():
                entry.starting = None

    async def _make_image_zygote(self, entry: _ImageEntry) -> ImageZygote:
        spawned = await self._spawner.spawn(entry.placement, new_zygote_id(), zygote=True)
        try:
            for stream, reader in (("stdout", spawned.stdout), ("stderr", spawned.stderr)):
                self._spawn(pump(reader, _to_server_log(spawned.id, stream)))
            wire = Wire(spawned.channel)
            try:
                await wire.send(encode(BecomeZygote()))
                event = await wire.receive()
            except OSError:  # it died before reading its first message (its stderr is in the log)
                event = None
            if event is None or event.get("event") != "ready":
                raise StartupError(f"the image zygote exited during startup (code {await spawned.wait()})")
            host_pid = spawned.signal_pid if spawned.sandboxed else spawned.pid
        except BaseException:
            await spawned.discard()
            raise
        zygote = ImageZygote(spawned, wire, host_pid)
        self._spawn(self._watch_image_zygote(entry, zygote))
        log.info("zygote=%s event=image_zygote_ready", spawned.id)
        entry.zygote = zygote
        if self._closed:
            await zygote.stop()
            raise StartupError("the server is stopping")
        return zygote

    async def _watch_image_zygote(self, entry: _ImageEntry, zygote: ImageZygote) -> None:
        """An image zygote that dies (killed, out of memory) is replaced when next needed."""
        code = await zygote.spawned.wait()
        zygote.spawned.release()  # again after a stop: harmless
        if entry.zygote is zygote:
            log.warning("zygote=%s event=image_zygote_exited code=%s", zygote.id, code)
            entry.zygote = None

    async def _stop_image(self, entry: _ImageEntry) -> None:
        if entry.starting is not None:
            entry.starting.cancel()
            with contextlib.suppress(BaseException):
                await entry.starting
        zygote, entry.zygote = entry.zygote, None
        if zygote is not None:
            await zygote.stop()

    # -- the rest ---------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every zygote (the backend has stopped the containers first)."""
        self._closed = True
        for entry in list(self._functions.values()):
            self._cancel_expiry(entry)
            if entry.starting is not None:
                entry.starting.cancel()
        stops = []
        for entry in self._functions.values():
            if entry.zygote is not None:
                stops.append(entry.zygote.stop())
                entry.zygote = None
        await asyncio.gather(*stops, return_exceptions=True)
        await asyncio.gather(*(self._stop_image(e) for e in self._images.values()), return_exceptions=True)
        self._functions.clear()
        self._images.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


#: Run inside a zygote's sandbox: what `namespaces.isolate` needs first (a user namespace with root
#: mapped, and a mount namespace), or exit naming the error.
_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000) != 0:
    sys.exit("unshare: " + os.strerror(ctypes.get_errno()))
fd = os.open("/proc/self/uid_map", os.O_WRONLY)
os.write(fd, b"0 0 1")
"""


@functools.cache
def probe_forks(bwrap: str) -> tuple[bool, str]:
    """Whether a fork in a zygote's sandbox can enter namespaces of its own (it needs user namespaces
    inside user namespaces, and Linux ≥ 5.12's CAP_SETFCAP rule for mapping root), else why not."""
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]
    argv += ["--unshare-user", "--cap-drop", "ALL", "--cap-add", "CAP_SETFCAP", "--"]
    try:
        result = subprocess.run(
            [*argv, sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"the probe could not run: {exc}"
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    return True, ""


async def _join_cgroups(forked: Forked, limits: Applied) -> None:
    """Move a running container into its cgroups (off the event loop: the kernel takes its time)."""
    for procs in limits.limits.cgroup_procs:
        try:
            await asyncio.to_thread(Path(procs).write_text, str(forked.host_pid))
        except ProcessLookupError:
            return  # it has exited already
        except OSError as exc:
            log.warning("container=%s event=cgroup_failed error=%r", forked.id, exc)


def sandbox_key(request: ContainerRequest, placement: Placement) -> Key:
    """Which image zygote (and so which sandbox) a function's forks share: one per placement and
    function, with its secrets. Functions never share a sandbox: they would see each other's processes
    (and their secrets, in /proc) and share a network namespace."""
    env = json.dumps(sorted(request.env.items())).encode()
    secrets_digest = hashlib.sha256(env).hexdigest()
    return (*placement.key, request.app_name, request.function.tag, secrets_digest)


def expiry_delay(window_s: float, *, keep: bool, containers: int, has_zygote: bool) -> float | None:
    """When a function zygote goes: None while it must stay (`min_containers` > 0, containers of the
    function alive) or there is none; else in this many seconds (0: now)."""
    if keep or containers > 0 or not has_zygote:
        return None
    return max(0.0, window_s)


def _plan(placement: Placement, *, network: bool) -> Isolation | None:
    """What a fork makes its own (see `namespaces`); nothing where there is no sandbox."""
    if placement.needs is None:
        return None
    return Isolation(tuple(namespaces.private_dirs(HOME, placement.workdir)), network)


def _to_server_log(zygote_id: str, stream: str) -> Callable[[str], None]:
    return lambda line: log.info("zygote=%s %s: %s", zygote_id, stream, line)


def _to_function_log(entry: _FunctionEntry, zygote_id: str, stream: Stream) -> Callable[[str], None]:
    return lambda line: entry.log(zygote_id, stream, line)


def _ms(stamps: dict[str, float], end: str, *starts: str) -> float:
    """Milliseconds from the first of `starts` present in `stamps` to `end` (0 if either is missing)."""
    if end not in stamps:
        return 0.0
    for start in starts:
        if start in stamps:
            return max(0.0, (stamps[end] - stamps[start]) * 1000)
    return 0.0


def startup_breakdown(via: str, launched: float, stamps: dict[str, float]) -> str:
    """`key=value` fields of a container's startup, in ms (the line the cold-start bench reads).

    fork: launch → the child runs (for a spawned worker: → it has imported the serving stack);
    isolate: its namespaces, cgroup and network; import: the user's module (0 when forked from a
    function zygote); enter: `@enter` hooks; build: the app; serve: uvicorn's startup.
    """
    begun = stamps.get("forked", stamps.get("received", launched))
    placed = stamps.get("placed", stamps.get("isolated", begun))
    imported = stamps.get("imported", placed)
    entered = stamps.get("entered", imported)
    built = stamps.get("built", entered)
    ready = stamps.get("ready", built)
    parts = {
        "total": ready - launched,
        "fork": begun - launched,
        "isolate": placed - begun,
        "import": imported - placed,
        "enter": entered - imported,
        "build": built - entered,
        "serve": ready - built,
    }
    fields = " ".join(f"{name}_ms={max(0.0, value) * 1000:.1f}" for name, value in parts.items())
    return f"via={via} {fields}"
