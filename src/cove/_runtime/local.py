"""The local backend: containers are worker processes on this machine, started from warm spares.

With bubblewrap (see `sandbox` and `isolation`), each worker runs in its own namespaces on its image;
without it, on the image's interpreter as a plain process. A spare is started for each distinct
placement a live version may launch (same image, source, mounts, network and limits), so it is
already inside the right sandbox when a request needs a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from cove._runtime import sandbox
from cove._runtime.backend import ContainerRequest, LogSink, StartupError, Stream
from cove._runtime.isolation import Host, Placement, attach_network, place, stop_network
from cove._runtime.limits import Applied, Limiter
from cove._spec import spec_to_dict
from cove.config import SandboxSetting

log = logging.getLogger("cove.runtime")

#: Unix socket paths are limited to 107 bytes (sun_path); keep ours well below.
_MAX_SOCKET_DIR = 80
#: Spares kept per placement.
_SPARES_PER_KEY = 1
Key = tuple[object, ...]


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

    def __init__(
        self,
        container_id: str,
        process: asyncio.subprocess.Process,
        channel: socket.socket,
        *,
        address: str,
        signal_pid: int,
        cleanup: list[Path],
        limits: Applied,
        limiter: Limiter,
        network_pid_file: Path | None,
    ) -> None:
        self.id = container_id
        self.process = process
        self.channel = channel
        self.address = address
        self.signal_pid = signal_pid  # plain: the worker; sandboxed: the sandbox's init (see stop)
        self.sandboxed = False
        self.cleanup = cleanup
        self.limits = limits
        self.limiter = limiter
        self.network_pid_file = network_pid_file

    def release(self) -> None:
        """Remove what the spare owned on the host, once its process has exited."""
        if self.network_pid_file is not None:
            stop_network(self.network_pid_file)
        self.limiter.release(self.limits)
        for path in self.cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


class LocalContainer:
    """A worker process serving one function on a unix socket."""

    def __init__(self, container_id: str, address: str, log_sink: LogSink) -> None:
        self._id = container_id
        self._address = address
        self._log = log_sink
        self._process: asyncio.subprocess.Process | None = None
        self._signal_pid: int | None = None
        self._sandboxed = False
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
                return None if status is None else _exit_code(status, self._sandboxed)
            time.sleep(0.002)  # the kernel closes a dying process's sockets just before it becomes a zombie

    async def wait_ready(self) -> None:
        await asyncio.shield(self._ready)

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float = 30.0) -> None:
        process = self._process
        if process is None or self._exited.done():
            return
        target = process.pid
        if self._sandboxed and self._signal_pid is not None:
            # The worker itself: neither bwrap nor its init forwards signals into the sandbox.
            target = _only_child(self._signal_pid) or process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.wait_exit(), timeout=grace_s)
        except TimeoutError:
            log.warning("container=%s event=kill reason=grace_period_expired grace_s=%s", self._id, grace_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await self.wait_exit()

    def _attach(self, spare: _Spare, start_message: dict[str, Any]) -> None:
        self._process = spare.process
        self._signal_pid = spare.signal_pid
        self._sandboxed = spare.sandboxed
        assert spare.process.stdout is not None and spare.process.stderr is not None
        self._spawn(self._pump(spare.process.stdout, "stdout"))
        self._spawn(self._pump(spare.process.stderr, "stderr"))
        self._spawn(self._control(spare.channel, start_message))
        self._spawn(self._watch_exit(spare))

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

    async def _watch_exit(self, spare: _Spare) -> None:
        code = _exit_code(await spare.process.wait(), self._sandboxed)
        spare.release()
        self._log(self._id, "system", f"container exited with code {code}")
        if not self._ready.done():
            self._ready.set_exception(StartupError(f"container exited during startup (code {code})"))
        if not self._exited.done():
            self._exited.set_result(code)


class LocalBackend:
    """Starts containers as worker processes, in a bubblewrap sandbox where this host allows it.

    One spare worker per live placement is kept started and warm (framework imports done, sandbox
    set up), so a cold start only pays for the user's module, its `@enter` hooks and the app build.
    """

    def __init__(
        self, home: Path, *, spares: int = _SPARES_PER_KEY, sandbox_setting: SandboxSetting = "auto"
    ) -> None:
        self._sockets = socket_dir(home)
        self._want_spares = spares
        self._host = Host(sandbox_setting, self._sockets)
        self._limiter = Limiter()
        self._spares: dict[Key, list[_Spare]] = {}
        self._wanted: dict[Key, int] = {}
        self._filling: dict[Key, asyncio.Task[None]] = {}
        self._placements: dict[Key, Placement] = {}
        self._prepared: dict[int, Key] = {}  # id(request) -> its key when prepared
        self._containers: dict[str, LocalContainer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def sandboxed(self) -> bool:
        """True when containers run under bubblewrap."""
        return self._host.bwrap is not None

    async def start(self) -> None:
        """Nothing to start ahead: spares are made per placement, once a version asks (`prepare`)."""

    def prepare(self, request: ContainerRequest) -> None:
        placement = place(self._host, request)
        # Remembered: the source's listing may change before release, and with it a fresh key.
        self._prepared[id(request)] = placement.key
        self._wanted[placement.key] = self._wanted.get(placement.key, 0) + 1
        self._placements[placement.key] = placement
        self._refill(placement.key)

    def release(self, request: ContainerRequest) -> None:
        key = self._prepared.pop(id(request), None)
        if key is None:
            return
        count = self._wanted.get(key, 0) - 1
        if count > 0:
            self._wanted[key] = count
            return
        self._wanted.pop(key, None)
        self._placements.pop(key, None)
        filling = self._filling.pop(key, None)
        if filling is not None:
            filling.cancel()
        for spare in self._spares.pop(key, []):
            self._spawn_task(_discard(spare))

    def launch(self, request: ContainerRequest, log_sink: LogSink) -> LocalContainer:
        placement = place(self._host, request)
        key = placement.key
        spares = self._spares.get(key)
        spare = spares.pop(0) if spares else None
        container_id = spare.id if spare is not None else new_container_id()
        address = spare.address if spare is not None else self._address(placement, container_id)
        container = LocalContainer(container_id, address, log_sink)
        self._containers[container_id] = container
        message = {
            "op": "start",
            "container_id": container_id,
            "function": spec_to_dict(request.function),
            "module_file": placement.module_file,
            "source_dir": placement.source_dir,
            "workdir": placement.workdir,
            "socket": self._inner_socket(placement, address),
            "env": dict(request.env),
        }

        async def begin() -> None:
            ready = spare if spare is not None else await self._spawn_spare(placement, container_id)
            self._refill(key)
            container._attach(ready, message)

        task = asyncio.ensure_future(begin())

        def forget(_: asyncio.Future[int]) -> None:
            self._containers.pop(container_id, None)

        container._exited.add_done_callback(forget)
        task.add_done_callback(lambda t: _fail_if_error(t, container))
        return container

    def _address(self, placement: Placement, container_id: str) -> str:
        if placement.needs is None:
            return str(self._sockets / f"{container_id}.sock")
        return str(self._sockets / container_id / "http.sock")

    @staticmethod
    def _inner_socket(placement: Placement, address: str) -> str:
        return address if placement.needs is None else sandbox.SOCKET

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refill(self, key: Key) -> None:
        if self._closed or key not in self._wanted:
            return
        filling = self._filling.get(key)
        if filling is not None and not filling.done():
            return

        async def fill() -> None:
            while (
                not self._closed
                and key in self._wanted
                and len(self._spares.get(key, [])) < self._want_spares
            ):
                placement = self._placements[key]
                try:
                    spare = await self._spawn_spare(placement, new_container_id())
                except Exception as exc:
                    log.warning("event=spare_failed error=%r", exc)
                    return
                if self._closed or key not in self._wanted:
                    await _discard(spare)
                    return
                self._spares.setdefault(key, []).append(spare)
                self._spawn_task(self._watch_spare(key, spare))

        self._filling[key] = asyncio.ensure_future(fill())

    async def _watch_spare(self, key: Key, spare: _Spare) -> None:
        """A spare that dies while waiting (killed, OOM) is dropped and replaced."""
        await spare.process.wait()
        spares = self._spares.get(key, [])
        if spare in spares:
            spares.remove(spare)
            spare.release()
            self._refill(key)

    async def _spawn_spare(self, placement: Placement, container_id: str) -> _Spare:
        parent, child = socket.socketpair()
        try:
            if placement.needs is None:
                return await self._spawn_plain(placement, container_id, parent, child)
            return await self._spawn_sandboxed(placement, container_id, parent, child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()

    async def _spawn_plain(
        self, placement: Placement, container_id: str, parent: socket.socket, child: socket.socket
    ) -> _Spare:
        env = dict(placement.plain_env)
        env["COVE_CONTROL_FD"] = str(child.fileno())
        env["PYTHONUNBUFFERED"] = "1"
        limits = self._limiter.apply(container_id, placement.cpu, placement.memory_mib)
        argv = sandbox.with_limits([placement.python, "-m", "cove._runtime.entrypoint"], limits.limits)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(child.fileno(),),
            env=env,
            # Own session: a Ctrl-C at the server's terminal must not reach containers directly;
            # the server stops them in order.
            start_new_session=True,
        )
        address = self._address(placement, container_id)
        return _Spare(
            container_id,
            process,
            parent,
            address=address,
            signal_pid=process.pid,
            cleanup=[Path(address)],
            limits=limits,
            limiter=self._limiter,
            network_pid_file=None,
        )

    async def _spawn_sandboxed(
        self, placement: Placement, container_id: str, parent: socket.socket, child: socket.socket
    ) -> _Spare:
        assert placement.needs is not None and self._host.bwrap is not None
        run_dir = self._sockets / container_id
        run_dir.mkdir(mode=0o700, exist_ok=True)
        limits = self._limiter.apply(container_id, placement.cpu, placement.memory_mib)
        info_read, info_write = os.pipe()
        needs = dataclasses.replace(
            placement.needs,
            run_dir=str(run_dir),
            control_fd=child.fileno(),
            info_fd=info_write,
            limits=limits.limits,
        )
        argv = sandbox.container_argv(needs, bwrap=self._host.bwrap)
        network_pid_file = self._sockets / f"{container_id}.net.pid"
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(child.fileno(), info_write),
                start_new_session=True,
            )
        except BaseException:
            os.close(info_read)
            self._limiter.release(limits)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            os.close(info_write)
        spare = _Spare(
            container_id,
            process,
            parent,
            address=str(run_dir / "http.sock"),
            signal_pid=process.pid,
            cleanup=[run_dir],
            limits=limits,
            limiter=self._limiter,
            network_pid_file=None,
        )
        try:
            info = await asyncio.to_thread(_read_info, info_read)
            if info is None:
                code = await process.wait()
                stderr = (await process.stderr.read()).decode("utf-8", "replace") if process.stderr else ""
                raise StartupError(f"the sandbox did not start (code {code}): {stderr.strip()[-300:]}")
            spare.signal_pid = int(info["child-pid"])
            spare.sandboxed = True
            if needs.network == "outbound" and self._host.network_tool is not None:
                spare.network_pid_file = network_pid_file
                await attach_network(self._host, spare.signal_pid, network_pid_file)
        except BaseException:
            await _discard(spare)
            raise
        return spare

    async def close(self) -> None:
        self._closed = True
        for task in self._filling.values():
            task.cancel()
        for task in self._filling.values():
            with contextlib.suppress(BaseException):
                await task
        spares = [s for group in self._spares.values() for s in group]
        self._spares.clear()
        await asyncio.gather(*(_discard(s) for s in spares))
        await asyncio.gather(*(c.stop(grace_s=10) for c in list(self._containers.values())))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._limiter.close()


def _read_info(fd: int) -> dict[str, Any] | None:
    """bwrap's --info-fd JSON (it names the sandboxed process's host PID), or None if bwrap failed."""
    data = b""
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
            with contextlib.suppress(ValueError):
                parsed = json.loads(data)
                if isinstance(parsed, dict) and "child-pid" in parsed:
                    return parsed
    finally:
        os.close(fd)
    return None


def _only_child(pid: int) -> int | None:
    """The first child of `pid` (the worker under a sandbox's init), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as file:
            children = file.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _exit_code(code: int, sandboxed: bool) -> int:
    """bwrap reports a command killed by signal N as 128+N; show it as -N, as for a plain process."""
    if sandboxed and 128 < code <= 128 + 64:
        return -(code - 128)
    return code


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
    finally:
        spare.release()
