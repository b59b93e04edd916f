"""The local backend: containers are worker processes on this machine, started from warm spares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cove._runtime.backend import ContainerRequest, LogSink, StartupError, Stream
from cove._spec import spec_to_dict

log = logging.getLogger("cove.runtime")

#: Unix socket paths are limited to 107 bytes (sun_path); keep ours well below.
_MAX_SOCKET_DIR = 80


def new_container_id() -> str:
    return "ta-" + secrets.token_hex(6)


def socket_dir(home: Path) -> Path:
    """A directory for container sockets: under COVE_HOME when the path is short enough."""
    candidate = home / "run"
    if len(str(candidate)) > _MAX_SOCKET_DIR:
        candidate = Path(tempfile.gettempdir()) / f"cove-{os.getuid()}-{abs(hash(str(home))) % 10**8}"
    candidate.mkdir(parents=True, exist_ok=True, mode=0o700)
    return candidate


class _Spare:
    """A worker process that has imported the serving stack and waits for its `start` message."""

    def __init__(self, process: asyncio.subprocess.Process, channel: socket.socket) -> None:
        self.process = process
        self.channel = channel


class LocalContainer:
    """A worker process serving one function on a unix socket."""

    def __init__(self, container_id: str, address: str, log_sink: LogSink) -> None:
        self._id = container_id
        self._address = address
        self._log = log_sink
        self._process: asyncio.subprocess.Process | None = None
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

        The gateway asks right after a container's connection broke; a process killed mid-request
        is a zombie by then (or within a moment), and Linux shows a zombie's wait status in
        /proc/<pid>/stat (field 52, Linux ≥ 3.5).
        """
        if self._exited.done():
            return self._exited.result()
        if self._process is None:
            return None
        deadline = time.monotonic() + 0.05
        while True:
            status = _zombie_status(self._process.pid)
            if status is not None or time.monotonic() >= deadline:
                return status
            time.sleep(0.002)  # the kernel closes a dying process's sockets just before it becomes a zombie

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float = 30.0) -> None:
        process = self._process
        if process is None or self._exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait_exit(), timeout=grace_s)
        except TimeoutError:
            log.warning("container=%s event=kill reason=grace_period_expired grace_s=%s", self._id, grace_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await self.wait_exit()

    def _attach(self, spare: _Spare, start_message: dict[str, Any]) -> None:
        self._process = spare.process
        assert spare.process.stdout is not None and spare.process.stderr is not None
        self._spawn(self._pump(spare.process.stdout, "stdout"))
        self._spawn(self._pump(spare.process.stderr, "stderr"))
        self._spawn(self._control(spare.channel, start_message))
        self._spawn(self._watch_exit(spare.process))

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

    async def _control(self, channel: socket.socket, start_message: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=channel)
        try:
            writer.write(json.dumps(start_message).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            event = json.loads(line) if line else {}
            if event.get("event") == "ready":
                if not self._ready.done():
                    self._ready.set_result(None)
            elif not self._ready.done():
                reason = event.get("reason") or await self._exit_reason()
                self._ready.set_exception(StartupError(reason))
        except (ConnectionError, OSError, ValueError) as exc:
            if not self._ready.done():
                self._ready.set_exception(StartupError(f"startup failed: {exc}"))
        finally:
            writer.close()
            del loop

    async def _exit_reason(self) -> str:
        code = await self.wait_exit()
        return f"container exited during startup (code {code})"

    async def _watch_exit(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        self._log(self._id, "system", f"container exited with code {code}")
        if not self._ready.done():
            self._ready.set_exception(StartupError(f"container exited during startup (code {code})"))
        if not self._exited.done():
            self._exited.set_result(code)


class LocalBackend:
    """Starts containers as worker processes on the server's interpreter.

    One spare worker is kept started and warm (framework imports done), so a cold start only pays
    for the user's module, its `@enter` hooks and the app build.
    """

    def __init__(self, home: Path, *, spares: int = 1) -> None:
        self._sockets = socket_dir(home)
        self._want_spares = spares
        self._spares: list[_Spare] = []
        self._filling: asyncio.Task[None] | None = None
        self._containers: dict[str, LocalContainer] = {}
        self._closed = False

    async def start(self) -> None:
        self._refill()

    def launch(self, request: ContainerRequest, log_sink: LogSink) -> LocalContainer:
        container_id = new_container_id()
        address = str(self._sockets / f"{container_id}.sock")
        container = LocalContainer(container_id, address, log_sink)
        self._containers[container_id] = container
        message = {
            "op": "start",
            "container_id": container_id,
            "function": spec_to_dict(request.function),
            "module_file": request.module_file,
            "source_dir": request.source_dir,
            "socket": address,
            "env": dict(request.env),
        }

        async def begin() -> None:
            spare = self._spares.pop(0) if self._spares else await self._spawn_spare()
            self._refill()
            container._attach(spare, message)

        task = asyncio.ensure_future(begin())

        def forget(_: asyncio.Future[int]) -> None:
            self._containers.pop(container_id, None)

        container._exited.add_done_callback(forget)
        task.add_done_callback(lambda t: _fail_if_error(t, container))
        return container

    def _refill(self) -> None:
        if self._closed or (self._filling is not None and not self._filling.done()):
            return

        async def fill() -> None:
            while not self._closed and len(self._spares) < self._want_spares:
                spare = await self._spawn_spare()
                if self._closed:
                    await _discard(spare)
                    return
                self._spares.append(spare)

        self._filling = asyncio.ensure_future(fill())

    async def _spawn_spare(self) -> _Spare:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["COVE_CONTROL_FD"] = str(child.fileno())
        env["PYTHONUNBUFFERED"] = "1"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cove._runtime.entrypoint",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(child.fileno(),),
            env=env,
            # Own session: a Ctrl-C at the server's terminal must not reach containers directly;
            # the server stops them in order.
            start_new_session=True,
        )
        child.close()
        return _Spare(process, parent)

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(BaseException):
                await self._filling
        spares, self._spares = self._spares, []
        await asyncio.gather(*(_discard(s) for s in spares))
        await asyncio.gather(*(c.stop(grace_s=10) for c in list(self._containers.values())))


def _zombie_status(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] != b"Z" or len(fields) < 50:
        return None
    status = int(fields[49])  # field 52 overall; the first two (pid, comm) were cut off
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _fail_if_error(task: asyncio.Task[None], container: LocalContainer) -> None:
    if task.cancelled() or task.exception() is None:
        return
    exc = task.exception()
    if not container._ready.done():
        container._ready.set_exception(StartupError(f"could not start a worker process: {exc}"))
    if not container._exited.done():
        container._exited.set_result(-1)


async def _discard(spare: _Spare) -> None:
    """A spare that is not needed: closing its channel makes it exit; kill it if it does not."""
    spare.channel.close()
    try:
        await asyncio.wait_for(spare.process.wait(), timeout=5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            spare.process.kill()
        await spare.process.wait()
