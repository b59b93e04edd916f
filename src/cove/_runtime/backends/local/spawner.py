"""Spawning worker processes: on the image's interpreter, inside a bubblewrap sandbox where it runs.

A worker (`python -m cove._container.entrypoint`) imports the serving stack, then waits on its control
socket for its first message: a `start` (it serves one container) or `zygote` (it forks them, see
`zygote`). `Spawner.spawn` returns it once the process (and, sandboxed, its namespaces and network)
exists; the caller sends the message.

A container's HTTP socket is made here, by the server, in the socket directory no container can see
or write (`socket_dir`), and handed to the worker as a listening file descriptor (`listen_fd` in the
start message). The gateway connects to that path; a container cannot replace it with a link to the
server's control socket, or with a socket of its own that relays elsewhere (issue 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from cove._messages import Start, encode
from cove._runtime.backend import StartupError
from cove._runtime.backends.local import procfs, sandbox
from cove._runtime.backends.local.isolation import Host, Network, Placement, attach_network
from cove._runtime.backends.local.limits import Applied, Limiter

log = logging.getLogger("cove.runtime")


def listen(address: str) -> socket.socket:
    """A listening unix socket at `address` (replacing a stale one), for a container to serve on."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    try:
        listener.bind(address)
        listener.listen(2048)
    except BaseException:
        listener.close()
        raise
    return listener


def exit_code(code: int, sandboxed: bool) -> int:
    """bwrap reports a command killed by signal N as 128+N; show it as -N, as for a plain process."""
    if sandboxed and 128 < code <= 128 + 64:
        return -(code - 128)
    return code


class Spawned:
    """A worker process this server started, with what it owns on the host (run dir, cgroup, network).

    The server signals the worker itself (`signal_pid`): sandboxed, that is the only child of the
    sandbox's init, since neither bwrap nor its init forwards signals.
    """

    via = "process"

    def __init__(
        self,
        worker_id: str,
        process: asyncio.subprocess.Process,
        channel: socket.socket,
        *,
        address: str,
        cleanup: list[Path],
        limits: Applied,
        limiter: Limiter,
    ) -> None:
        self.id = worker_id
        self.process = process
        self.channel = channel
        self.address = address
        self.sandboxed = False
        self.init_pid = process.pid  # sandboxed: the sandbox's init (bwrap's --info-fd child-pid)
        self.cleanup = cleanup
        self.limits = limits
        self.limiter = limiter
        self.network: Network | None = None
        self.start_message: Start | None = None
        self.listen_fd: int | None = None  # the worker's number of the listener it inherited
        assert process.stdout is not None and process.stderr is not None
        self.stdout: asyncio.StreamReader = process.stdout
        self.stderr: asyncio.StreamReader = process.stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def signal_pid(self) -> int:
        if self.sandboxed:
            return procfs.only_child(self.init_pid) or self.process.pid
        return self.process.pid

    def exit_code_now(self) -> int | None:
        """The exit code if the process has exited (a zombie not yet reaped), without waiting."""
        status = procfs.zombie_status(self.process.pid)
        return None if status is None else exit_code(status, self.sandboxed)

    async def wait(self) -> int:
        return exit_code(await self.process.wait(), self.sandboxed)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def started(self) -> dict[str, Any] | None:
        """Send the `start` message (set by the caller) and return the worker's first event."""
        reader, writer = await asyncio.open_connection(sock=self.channel)
        try:
            assert self.start_message is not None, "the caller sets the start message"
            writer.write(json.dumps(encode(self.start_message)).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            event: dict[str, Any] = json.loads(line) if line else {}
            return event or None
        finally:
            writer.close()

    def release(self) -> None:
        """Remove what the worker owned on the host, once its process has exited."""
        if self.network is not None:
            self.network.stop()
        self.limiter.release(self.limits)
        for path in self.cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def discard(self) -> None:
        """Stop a worker that is not needed (closing its channel makes it exit); kill it if it lingers."""
        self.channel.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=5)
        except TimeoutError:
            self.kill()
            await self.process.wait()
        finally:
            self.release()


class Spawner:
    """Starts workers for placements, plain or sandboxed, with their cpu/memory limits applied."""

    def __init__(self, host: Host, limiter: Limiter, sockets: Path) -> None:
        self._host = host
        self._limiter = limiter
        self._sockets = sockets

    def address(self, worker_id: str) -> str:
        """Where a container's HTTP socket is, on the host: made by the server in a directory no
        container sees (never in a container's own run dir, which the container can write)."""
        return str(self._sockets / f"{worker_id}.sock")

    async def spawn(self, placement: Placement, worker_id: str, *, zygote: bool = False) -> Spawned:
        """Start a worker. A container's worker inherits its listening socket (`Spawned.listen_fd`).
        A zygote gets no listener and only the process cap (its forks get their own limits), and
        keeps CAP_SETFCAP in its sandbox, so that its forks may map root in user namespaces of
        their own (`namespaces`)."""
        parent, child = socket.socketpair()
        listener = None if zygote else listen(self.address(worker_id))
        # subprocess keeps the numbers of `pass_fds`: the worker finds its listener at this one.
        listen_fd = None if listener is None else listener.fileno()
        try:
            if placement.needs is None:
                spawned = await self._spawn_plain(placement, worker_id, parent, child, listener, zygote)
            else:
                spawned = await self._spawn_sandboxed(placement, worker_id, parent, child, listener, zygote)
        except BaseException:
            parent.close()
            if listener is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.address(worker_id))
            raise
        finally:
            child.close()
            if listener is not None:
                listener.close()  # the worker has its own copy
        spawned.listen_fd = listen_fd
        return spawned

    def _limits(self, placement: Placement, worker_id: str, zygote: bool) -> Applied:
        if zygote:
            # Only the process cap: it bounds the whole sandbox (zygotes, and a container forked
            # there until it is in its own cgroup); the forks get their cpu/memory limits.
            return self._limiter.apply(worker_id, None, None)
        return self._limiter.apply(worker_id, placement.cpu, placement.memory_mib)

    async def _spawn_plain(
        self,
        placement: Placement,
        worker_id: str,
        parent: socket.socket,
        child: socket.socket,
        listener: socket.socket | None,
        zygote: bool,
    ) -> Spawned:
        env = dict(placement.plain_env)
        env["COVE_CONTROL_FD"] = str(child.fileno())
        env["PYTHONUNBUFFERED"] = "1"
        limits = self._limits(placement, worker_id, zygote)
        argv = sandbox.with_limits([placement.python, "-m", "cove._container.entrypoint"], limits.limits)
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=_fds(child, listener),
            env=env,
            # Own session: a Ctrl-C at the server's terminal must not reach containers directly;
            # the server stops them in order.
            start_new_session=True,
        )
        address = self.address(worker_id)
        return Spawned(
            worker_id,
            process,
            parent,
            address=address,
            cleanup=[Path(address)],
            limits=limits,
            limiter=self._limiter,
        )

    async def _spawn_sandboxed(
        self,
        placement: Placement,
        worker_id: str,
        parent: socket.socket,
        child: socket.socket,
        listener: socket.socket | None,
        zygote: bool,
    ) -> Spawned:
        assert placement.needs is not None and self._host.bwrap is not None
        run_dir = self._sockets / worker_id
        run_dir.mkdir(mode=0o700, exist_ok=True)
        limits = self._limits(placement, worker_id, zygote)
        info_read, info_write = os.pipe()
        needs = dataclasses.replace(
            placement.needs,
            run_dir=str(run_dir),
            control_fd=child.fileno(),
            info_fd=info_write,
            limits=limits.limits,
        )
        argv = sandbox.container_argv(needs, bwrap=self._host.bwrap)
        if zygote:
            argv = keep_setfcap(argv)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(*_fds(child, listener), info_write),
                start_new_session=True,
            )
        except BaseException:
            os.close(info_read)
            self._limiter.release(limits)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        finally:
            os.close(info_write)
        spawned = Spawned(
            worker_id,
            process,
            parent,
            address=self.address(worker_id),
            cleanup=[run_dir, Path(self.address(worker_id))],
            limits=limits,
            limiter=self._limiter,
        )
        try:
            info = await asyncio.to_thread(_read_info, info_read)
            if info is None:
                code = await process.wait()
                stderr = (await process.stderr.read()).decode("utf-8", "replace") if process.stderr else ""
                raise StartupError(f"the sandbox did not start (code {code}): {stderr.strip()[-300:]}")
            spawned.init_pid = int(info["child-pid"])
            spawned.sandboxed = True
            if needs.network == "outbound" and self._host.network_tool is not None:
                spawned.network = await attach_network(self._host, spawned.init_pid)
        except BaseException:
            await spawned.discard()
            raise
        return spawned


def _fds(child: socket.socket, listener: socket.socket | None) -> tuple[int, ...]:
    return (child.fileno(),) if listener is None else (child.fileno(), listener.fileno())


def keep_setfcap(argv: list[str]) -> list[str]:
    """A container's bwrap argv that keeps CAP_SETFCAP (only) in the sandbox, for a zygote."""
    for index in range(len(argv) - 1):
        if argv[index] == "--cap-drop" and argv[index + 1] == "ALL":
            return [*argv[: index + 2], "--cap-add", "CAP_SETFCAP", *argv[index + 2 :]]
    raise ValueError("the sandbox argv drops no capabilities; refusing to add one")


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
