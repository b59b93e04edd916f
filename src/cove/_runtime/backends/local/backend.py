"""The local backend: containers are worker processes on this machine, forked from warm zygotes.

With bubblewrap (see `sandbox` and `isolation`), workers run in their own namespaces on their image;
without it, on the image's interpreter as plain processes. By default a container is a fork of a
zygote that has already imported the serving stack and the user's module (see `zygote`), inside the
right sandbox. With `COVE_ZYGOTE=0` each container is a worker process of its own, started when it
is needed (`spawner`): the path for code that cannot be forked, and the baseline zygotes beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any, Protocol

from cove._messages import Start
from cove._runtime.backend import (
    Capabilities,
    ContainerRequest,
    LogSink,
    StartupError,
    Stream,
    app_env,
    socket_dir,
)
from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.isolation import Host, Placement, place
from cove._runtime.backends.local.limits import Applied, Limiter, owner_of, pids_refused
from cove._runtime.backends.local.spawner import Spawner
from cove._runtime.backends.local.zygote import Zygotes, probe_forks, startup_breakdown
from cove._spec import spec_to_dict
from cove.config import SandboxSetting, Settings

log = logging.getLogger("cove.runtime")

#: Default of COVE_ZYGOTE_WINDOW: how long a function zygote outlives the function's last container.
DEFAULT_ZYGOTE_WINDOW_S = Settings.zygote_window_s  # COVE_ZYGOTE_WINDOW's default (config.py)
#: How often `exit_code` looks for a dying process's exit status.
_EXIT_POLL_S = 0.002


def new_container_id() -> str:
    return "ta-" + secrets.token_hex(6)


class Worker(Protocol):
    """The process a container runs as: spawned for it (`spawner.Spawned`) or forked (`zygote.Forked`)."""

    via: str
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    limits: Applied

    @property
    def signal_pid(self) -> int: ...

    def exit_code_now(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...

    async def started(self) -> dict[str, Any] | None: ...

    def release(self) -> None: ...


class LocalContainer:
    """A worker process serving one function on a unix socket."""

    def __init__(
        self, container_id: str, address: str, log_sink: LogSink, *, max_pids: int | None = None
    ) -> None:
        self._id = container_id
        self._max_pids = max_pids
        self._address = address
        self._log = log_sink
        self._launched = time.monotonic()
        self._worker: Worker | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def id(self) -> str:
        return self._id

    @property
    def address(self) -> str:
        return self._address

    @property
    def returncode(self) -> int | None:
        """The exit code, as soon as the process has ended, even before asyncio has reaped it.

        Linux shows a zombie's wait status in /proc/<pid>/stat (field 52, Linux ≥ 3.5); a forked
        container stays a zombie until the server has read that (its zygote reaps it when told).
        """
        if self._exited.done():
            return self._exited.result()
        return None if self._worker is None else self._worker.exit_code_now()

    async def exit_code(self, within_s: float) -> int | None:
        # The kernel closes a dying process's sockets just before it becomes a zombie: look again
        # every few ms, yielding the loop in between.
        deadline = time.monotonic() + within_s
        while True:
            code = self.returncode
            if code is not None or time.monotonic() >= deadline:
                return code
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), _EXIT_POLL_S)

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float = 30.0) -> None:
        worker = self._worker
        if worker is None or self._exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.signal_pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait_exit(), timeout=grace_s)
        except TimeoutError:
            log.warning("container=%s event=kill reason=grace_period_expired grace_s=%s", self._id, grace_s)
            worker.kill()
            await self.wait_exit()

    def _attach(self, worker: Worker) -> None:
        self._worker = worker
        self._spawn(self._pump(worker.stdout, "stdout"))
        self._spawn(self._pump(worker.stderr, "stderr"))
        self._spawn(self._control(worker))
        self._spawn(self._watch_exit(worker))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, stream: asyncio.StreamReader, name: Stream) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: pass it on in pieces
                line = await stream.read(65536)
            if not line:
                return
            self._log(self._id, name, line.decode("utf-8", "replace").rstrip("\n"))

    async def _control(self, worker: Worker) -> None:
        try:
            event = await worker.started() or {}
        except (ConnectionError, OSError, ValueError) as exc:
            if not self._ready.done():
                self._ready.set_exception(StartupError(f"startup failed: {exc}"))
            return
        if event.get("event") == "ready":
            log.info(
                "container=%s event=started %s",
                self._id,
                startup_breakdown(worker.via, self._launched, event.get("stamps") or {}),
            )
            if not self._ready.done():
                self._ready.set_result(None)
        else:
            reason = event.get("reason") or await self._exit_reason()
            if not self._ready.done():
                self._ready.set_exception(StartupError(reason))

    async def _exit_reason(self) -> str:
        code = await self.wait_exit()
        return f"container exited during startup (code {code})"

    async def _watch_exit(self, worker: Worker) -> None:
        code = await worker.wait()
        refused = pids_refused(worker.limits)  # before release removes its cgroup
        worker.release()
        if refused:
            self._log(
                self._id,
                "system",
                f"cove: the container hit its process limit: {refused} fork(s) failed (EAGAIN) at "
                f"{self._max_pids} processes and threads; raise COVE_MAX_PIDS on the server if it needs more",
            )
        self._log(self._id, "system", f"container exited with code {code}")
        if not self._ready.done():
            self._ready.set_exception(StartupError(f"container exited during startup (code {code})"))
        if not self._exited.done():
            self._exited.set_result(code)

    def _fail(self, exc: BaseException) -> None:
        if not self._ready.done():
            self._ready.set_exception(StartupError(f"could not start a worker process: {exc}"))
        if not self._exited.done():
            self._exited.set_result(-1)


class LocalBackend:
    """Starts containers as worker processes, in a bubblewrap sandbox where this host allows it.

    With `zygote` (the default) a container is forked from a zygote kept per image placement and per
    function version (`zygote.Zygotes`); without, it is a fresh worker process.
    """

    #: Images built on this machine; containers on this machine (Volumes, scoped socket).
    capabilities = Capabilities(image_layouts=frozenset({"built"}), host_paths=True)

    def __init__(
        self,
        home: Path,
        *,
        sandbox_setting: SandboxSetting = "auto",
        zygote: bool = True,
        zygote_window_s: float = DEFAULT_ZYGOTE_WINDOW_S,
        max_pids: int = 0,
    ) -> None:
        self._sockets = socket_dir(home)
        self._host = Host(sandbox_setting, self._sockets)
        # Its cgroups are named after COVE_HOME: a restart removes those a killed server left.
        self._limiter = Limiter(owner=owner_of(home), max_pids=max_pids)
        self._spawner = Spawner(self._host, self._limiter, self._sockets)
        if zygote and self._host.bwrap is not None:
            forks_ok, why = probe_forks(self._host.bwrap)
            if not forks_ok:
                zygote = False
                log.warning("event=zygotes_unavailable reason=%r: each container starts a new process", why)
        self._zygotes = (
            Zygotes(self._spawner, self._limiter, self._host, self._sockets, window_s=zygote_window_s)
            if zygote
            else None
        )
        self._containers: dict[str, LocalContainer] = {}

    @property
    def sandboxed(self) -> bool:
        """True when containers run under bubblewrap."""
        return self._host.bwrap is not None

    async def start(self) -> None:
        """Nothing to start ahead: zygotes are made per placement, once a version asks (`prepare`)."""

    def prepare(self, request: ContainerRequest) -> None:
        if self._zygotes is not None:
            self._zygotes.prepare(request, place(self._host, request))

    def release(self, request: ContainerRequest) -> None:
        if self._zygotes is not None:
            self._zygotes.release(request)

    def launch(self, request: ContainerRequest, log_sink: LogSink) -> LocalContainer:
        placement = place(self._host, request)
        container_id = new_container_id()
        zygotes = self._zygotes
        # Made by the server where no container can write (see `spawner`), for forks and workers alike.
        address = self._spawner.address(container_id)
        container = LocalContainer(container_id, address, log_sink, max_pids=self._limiter.max_pids)
        self._containers[container_id] = container
        message = Start(
            container_id=container_id,
            function=spec_to_dict(request.function),
            module_file=placement.module_file,
            source_dir=placement.source_dir,
            workdir=placement.workdir,
            env={**request.env, **app_env(request, _inner_api_socket(placement, request))},
        )

        async def begin() -> None:
            if zygotes is not None:
                forked = await zygotes.fork_container(request, container_id, address, message, log_sink)
                container._attach(forked)
                return
            spawned = await self._spawner.spawn(placement, container_id)
            spawned.start_message = dataclasses.replace(message, listen_fd=spawned.listen_fd)
            container._attach(spawned)

        task = asyncio.ensure_future(begin())

        def forget(_: asyncio.Future[int]) -> None:
            self._containers.pop(container_id, None)

        container._exited.add_done_callback(forget)
        task.add_done_callback(lambda t: _fail_if_error(t, container))
        return container

    async def close(self) -> None:
        await asyncio.gather(*(c.stop(grace_s=10) for c in list(self._containers.values())))
        if self._zygotes is not None:
            await self._zygotes.close()
        await self._host.close()
        await self._limiter.close()


def _inner_api_socket(placement: Placement, request: ContainerRequest) -> str | None:
    """The app's scoped control socket as the container sees it: bound at `/cove/api` in a sandbox."""
    if request.api_socket is None:
        return None
    if placement.needs is None:
        return request.api_socket
    return f"{sandbox.API_DIR}/{os.path.basename(request.api_socket)}"


def _fail_if_error(task: asyncio.Task[None], container: LocalContainer) -> None:
    if task.cancelled():  # its zygote was stopped while it waited (the version went away)
        container._fail(StartupError("the version was stopped"))
    elif (exc := task.exception()) is not None:
        container._fail(exc)
