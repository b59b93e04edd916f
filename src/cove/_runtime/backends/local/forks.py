"""Forked processes and the zygotes that fork them, as the server sees them (see `zygote`).

`Wire` is the server's end of a control socket. A `Zygote` asks its process to fork (`forkserver` is
the other side) and learns each child's pid from its `forked` event; `Forked` is such a child: a
container, or a function zygote before it becomes one. The server watches a child with a pidfd,
reads its exit status while it is a zombie, and then tells its zygote to reap it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from cove._messages import Fork, Isolation, Reap, Start, encode
from cove._runtime.backend import StartupError
from cove._runtime.backends.local import procfs
from cove._runtime.backends.local.limits import Applied
from cove._runtime.backends.local.sandbox import Limits
from cove._runtime.backends.local.spawner import Spawned

_STOP_GRACE_S = 5.0
#: A zygote answers a fork at once; this long without an answer means it is stuck or gone.
_FORK_TIMEOUT_S = 30.0


class Wire:
    """The server's end of a control socket: JSON lines in, JSON lines (with descriptors) out."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._buffer = b""
        self._sending = asyncio.Lock()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other end has closed."""
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            try:
                data = await loop.sock_recv(self.sock, 65536)
            except OSError:
                return None
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            return None
        return message

    async def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps({**message, "fds": len(fds)}).encode() + b"\n"
        loop = asyncio.get_running_loop()
        async with self._sending:
            while True:
                try:
                    sent = socket.send_fds(self.sock, [data], list(fds))
                    break
                except BlockingIOError:
                    writable = loop.create_future()
                    loop.add_writer(self.sock.fileno(), writable.set_result, None)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(self.sock.fileno())
            if sent < len(data):
                await loop.sock_sendall(self.sock, data[sent:])

    def close(self) -> None:
        """Close this end (a `receive` still waiting keeps it open until cancelled: uvloop's rule)."""
        self.sock.close()


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport


class Forked:
    """A process a zygote forked (a container, or a function zygote), as the server sees it."""

    sandboxed = False  # exit codes are the process's own wait status

    def __init__(
        self,
        forked_id: str,
        parent: Zygote,
        wire: Wire,
        pipes: tuple[tuple[asyncio.StreamReader, asyncio.BaseTransport], ...],
        *,
        via: str,
        cleanup: Callable[[], None] = lambda: None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.id = forked_id
        self.via = via
        self.parent = parent
        self.wire = wire
        self.stdout, self.stderr = pipes[0][0], pipes[1][0]
        self._transports = [transport for _, transport in pipes]
        self._cleanup = cleanup
        self.limits = Applied(Limits())  # its cgroups, set by whoever placed it there
        self.joining: asyncio.Future[None] | None = None  # it being moved into them, while it starts
        self.host_pid = 0
        self.ns_pid = 0
        self.located: asyncio.Future[int] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.pending: dict[str, Any] | None = None  # an event read early (while holding the child)
        self.first_event: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._pidfd: int | None = None

    def on_forked(self, ns_pid: int) -> None:
        """The zygote forked it as `ns_pid`: find it on the host and watch for its exit."""
        host_pid = procfs.child_with_ns_pid(self.parent.host_pid, ns_pid)
        if host_pid is None:
            self.fail(f"the forked process {ns_pid} of zygote {self.parent.id} was not found")
            return
        self.ns_pid, self.host_pid = ns_pid, host_pid
        try:
            self._pidfd = os.pidfd_open(host_pid)
        except OSError as exc:
            self.fail(f"cannot watch process {host_pid}: {exc}")
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)
        if not self.located.done():
            self.located.set_result(host_pid)

    def fail(self, reason: str) -> None:
        if not self.located.done():
            self.located.set_exception(StartupError(reason))
        if not self.exited.done():
            self.exited.set_result(-1)

    def _on_exit(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        code = procfs.zombie_status(self.host_pid)
        # Whatever it started in its session goes with it (a sandbox's PID namespace would do this).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.host_pid, signal.SIGKILL)
        self.parent.reap(self.ns_pid)
        if not self.exited.done():
            self.exited.set_result(-1 if code is None else code)

    # -- what LocalContainer asks of a worker ----------------------------------------------------

    @property
    def pid(self) -> int:
        return self.host_pid

    @property
    def signal_pid(self) -> int:
        return self.host_pid

    def exit_code_now(self) -> int | None:
        if self.exited.done():
            return self.exited.result()
        return procfs.zombie_status(self.host_pid) if self.host_pid else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        if self.host_pid and not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.host_pid, signal.SIGKILL)

    async def started(self) -> dict[str, Any] | None:
        """The child's first word on its channel that is not `isolated`: `ready` or `failed`."""
        event, self.pending = self.pending, None
        while event is None or event.get("event") not in ("ready", "failed"):
            event = await self.wire.receive()
            if event is None:
                break
        if self.joining is not None and event is not None and event.get("event") == "ready":
            await self.joining  # no request before it is in its cgroups
        if not self.first_event.done():
            self.first_event.set_result(event)
        return event

    def release(self, *, cleanup: bool = True) -> None:
        """Close the server's ends (channel, output pipes) and remove what the process owned."""
        self.wire.close()
        for transport in self._transports:
            transport.close()
        if cleanup:
            self._cleanup()


class Zygote:
    """A process that forks on request: an image zygote (spawned) or a function zygote (forked)."""

    def __init__(self, zygote_id: str, level: str, wire: Wire, host_pid: int) -> None:
        self.id = zygote_id
        self.level = level  # "image" | "function"
        self.wire = wire
        self.host_pid = host_pid
        self.children: dict[str, Forked] = {}
        self.gone = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._events = asyncio.ensure_future(self._read_events())

    async def _read_events(self) -> None:
        while (event := await self.wire.receive()) is not None:
            child = self.children.get(str(event.get("id")))
            if event.get("event") == "forked" and child is not None:
                child.on_forked(int(event["pid"]))
        self.gone.set()
        for child in list(self.children.values()):
            child.fail(f"zygote {self.id} exited")

    @property
    def alive(self) -> bool:
        return not self.gone.is_set()

    def reap(self, ns_pid: int) -> None:
        if self.alive:
            self._spawn(self._send_quietly(encode(Reap(ns_pid))))

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            await self.wire.send(message)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def fork(
        self,
        forked_id: str,
        role: Literal["function", "container"],
        start: Start,
        *,
        plan: Isolation | None,
        hold: bool = False,
        listener: socket.socket | None = None,
        cleanup: Callable[[], None] = lambda: None,
    ) -> Forked:
        """Ask for a fork; return it once the zygote says it exists (raises `StartupError` if not)."""
        if not self.alive:
            raise StartupError(f"zygote {self.id} has exited")
        ours, theirs = socket.socketpair()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        fds = [theirs.fileno(), out_write, err_write]
        if listener is not None:
            fds.append(listener.fileno())
        try:
            pipes = (await _pipe_reader(out_read), await _pipe_reader(err_read))
            forked = Forked(forked_id, self, Wire(ours), pipes, via=self.level, cleanup=cleanup)
            self.children[forked_id] = forked
            forked.exited.add_done_callback(lambda _: self.children.pop(forked_id, None))
            message = Fork(forked_id, role, start, plan=plan, hold=hold, sent=time.monotonic())
            try:
                await self.wire.send(encode(message), fds)
            except OSError as exc:
                forked.fail(f"zygote {self.id} is gone: {exc}")
        finally:
            theirs.close()
            os.close(out_write)
            os.close(err_write)
        try:
            try:
                await asyncio.wait_for(asyncio.shield(forked.located), timeout=_FORK_TIMEOUT_S)
            except TimeoutError:
                forked.fail(f"zygote {self.id} did not fork within {_FORK_TIMEOUT_S:.0f} s")
                await forked.located
        except BaseException:
            forked.release(cleanup=False)  # the caller cleans up what it made for the fork
            raise
        return forked

    async def stop(self) -> None:
        """End of stream tells the zygote to exit; its own process is stopped by the subclass."""
        # The pending receive first: while it waits, the event loop holds the socket open.
        self._events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._events
        self.wire.close()
        for task in list(self._tasks):
            task.cancel()


class ImageZygote(Zygote):
    """An image zygote: a spawned worker (see `spawner`) serving as a zygote."""

    def __init__(self, spawned: Spawned, wire: Wire, host_pid: int) -> None:
        super().__init__(spawned.id, "image", wire, host_pid)
        self.spawned = spawned

    async def stop(self) -> None:
        await super().stop()
        try:
            await asyncio.wait_for(self.spawned.process.wait(), timeout=_STOP_GRACE_S)
        except TimeoutError:
            self.spawned.kill()
            await self.spawned.process.wait()
        self.spawned.release()


class FunctionZygote(Zygote):
    """A function zygote: forked from an image zygote, with the user's module imported."""

    def __init__(self, forked: Forked) -> None:
        super().__init__(forked.id, "function", forked.wire, forked.host_pid)
        self.forked = forked

    async def stop(self) -> None:
        await super().stop()
        try:
            await asyncio.wait_for(self.forked.wait(), timeout=_STOP_GRACE_S)
        except TimeoutError:
            self.forked.kill()
            await self.forked.wait()
        self.forked.release()


async def pump(stream: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the limit: pass it on in pieces
            line = await stream.read(65536)
        if not line:
            return
        emit(line.decode("utf-8", "replace").rstrip("\n"))


async def finish(forked: Forked) -> None:
    try:
        await asyncio.wait_for(forked.wait(), timeout=_STOP_GRACE_S)
    except TimeoutError:
        forked.kill()
        await forked.wait()
    forked.release()
