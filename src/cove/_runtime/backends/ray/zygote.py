"""A warm zygote on a Ray node: an actor that forks one function version's containers in milliseconds.

`ZygoteActor` is created per live function version (see `spares`), with the runtime_env and the
resources of one container of it: the *slot* its forks run in. It unpacks the app's sources once,
spawns an image zygote (`python -m cove._container.entrypoint` told to become one) and forks a
function zygote from it (the user's module imported, `@enter(snap=True)` hooks run), exactly as the
local backend does: the zygotes' side is `cove._container.forkserver`, the server's side of their
control sockets `cove._runtime.backends.local.forks`. A container is then a fork of the function
zygote, relayed and reported like an actor's container (`node`): a TCP relay on the node's address
to the fork's unix socket, and an event stream of its output, readiness and exit.

The methods that name a container (`open`, `wait_exit`, `stop`, `kill`) mirror
`ContainerActor`'s, so the server drives a fork as it drives an actor. When this actor dies, its
zygotes and their forks die with it (each asks Linux for a signal when its parent dies), every
event stream closes, and the server sees its forks lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cove._bundle import extract_bundle
from cove._messages import BecomeZygote, Start, UnknownMessage, decode, encode
from cove._runtime.backends.local.forks import Forked, Wire, Zygote, pump
from cove._runtime.backends.local.spawner import listen
from cove._runtime.backends.ray.node import EventStream, _Downstream, _url_host

T = TypeVar("T")

#: Output lines of the zygotes kept to explain a failed start.
_TAIL_LINES = 40
_STOP_GRACE_S = 5.0


class ZygoteActor:
    """The zygotes of one function version on one Ray node, and the containers forked from them."""

    def __init__(self, zygote_id: str) -> None:
        import ray
        import uvloop

        self._id = zygote_id
        self._host = ray.util.get_node_ip_address()
        self._node_id = ray.get_runtime_context().get_node_id()
        self._rundir = tempfile.mkdtemp(prefix=f"cove-ray-{zygote_id}-")  # 0700; short for socket paths
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"cove-{zygote_id}", daemon=True)
        self._thread.start()
        self._forks = self._call(_Forks.create(zygote_id, self._host, self._rundir))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def describe(self) -> dict[str, Any]:
        return {"host": self._host, "node_id": self._node_id, "pid": os.getpid()}

    def prepare(self, message: dict[str, Any], sources: bytes) -> dict[str, Any]:
        """Unpack the sources, start the image zygote and fork the function zygote (`message`: the
        function's start message, `module_file` relative to the sources). Raises, with the zygotes'
        last output, if the function zygote does not become ready."""
        extract_bundle(sources, Path(self._rundir))
        self._call(self._forks.prepare(message, os.path.join(self._rundir, "src")))
        return self.describe()

    def wait_closed(self) -> None:
        """Return once this actor shuts down (Ray raises instead when it dies): the server's watch."""
        self._call(self._forks.wait_closed())

    def shutdown(self) -> None:
        """Stop the forks and the zygotes, remove the private directory."""
        self._call(self._forks.close())
        shutil.rmtree(self._rundir, ignore_errors=True)

    # -- one container, as `ContainerActor` serves one ----------------------------------------------

    def open(self, container_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """Fork the container (`message`: its start message); where the server reaches its event
        stream (readiness comes there) and which node it is on."""
        port = self._call(self._forks.open(container_id))
        self._call(self._forks.start(container_id, message))
        return dict(self.describe(), events_port=port, zygote=self._id)

    def wait_exit(self, container_id: str) -> int:
        return self._call(self._forks.wait_exit(container_id))

    def stop(self, container_id: str, grace_s: float) -> int:
        """SIGTERM the fork (it drains and runs @exit), SIGKILL it after `grace_s`; its exit code."""
        return self._call(self._forks.stop(container_id, grace_s))

    def kill(self, container_id: str) -> None:
        self._call(self._forks.kill(container_id))


class _Forks:
    """The zygotes' processes and the forked containers, on the actor's event loop."""

    def __init__(self, zygote_id: str, host: str, rundir: str) -> None:
        self._id = zygote_id
        self._host = host
        self._rundir = rundir
        self._source_dir = ""
        self._image: asyncio.subprocess.Process | None = None
        self._zygotes: list[Zygote] = []
        self._function: Zygote | None = None
        self._containers: dict[str, _Fork] = {}
        self._codes: dict[str, int] = {}
        self._closed = asyncio.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def create(cls, zygote_id: str, host: str, rundir: str) -> _Forks:
        """Made on the loop it serves on."""
        return cls(zygote_id, host, rundir)

    async def prepare(self, message: dict[str, Any], source_dir: str) -> None:
        self._source_dir = source_dir
        ours, theirs = socket.socketpair()
        env = dict(os.environ, COVE_CONTROL_FD=str(theirs.fileno()), PYTHONUNBUFFERED="1")
        self._image = await asyncio.create_subprocess_exec(
            sys.executable,  # the runtime_env's interpreter: the image's packages are importable
            "-m",
            "cove._container.entrypoint",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=True,
        )
        theirs.close()
        for reader in (self._image.stdout, self._image.stderr):
            if reader is not None:
                self._spawn(pump(reader, self._keep))
        wire = Wire(ours)
        await wire.send(encode(BecomeZygote()))
        event = await wire.receive()
        if event is None or event.get("event") != "ready":
            raise RuntimeError(self._failure("the image zygote exited during startup"))
        image = Zygote(f"{self._id}-image", "image", wire, self._image.pid)
        self._zygotes.append(image)
        start = _start(message, source_dir, container_id=self._id)
        forked = await image.fork(self._id, "function", start, plan=None)
        self._spawn(pump(forked.stdout, self._keep))
        self._spawn(pump(forked.stderr, self._keep))
        ready = await forked.started()
        if ready is None or ready.get("event") != "ready":
            reason = (ready or {}).get("reason") or "it exited"
            raise RuntimeError(self._failure(f"the function zygote failed: {reason}"))
        self._function = Zygote(self._id, "function", forked.wire, forked.host_pid)
        self._zygotes.append(self._function)

    def _keep(self, line: str) -> None:
        self._tail.append(line)

    def _failure(self, what: str) -> str:
        return "\n".join([what, *self._tail])

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def open(self, container_id: str) -> int:
        fork = _Fork(container_id, self._host, os.path.join(self._rundir, f"{container_id}.sock"))
        await fork.listen()
        self._containers[container_id] = fork
        return fork.events_port

    async def start(self, container_id: str, message: dict[str, Any]) -> None:
        fork = self._containers[container_id]
        zygote = self._function
        if zygote is None or not zygote.alive:
            await fork.fail("the function zygote on this node is gone")
        else:
            self._spawn(self._run(fork, zygote, _start(message, self._source_dir)))

    async def _run(self, fork: _Fork, zygote: Zygote, start: Start) -> None:
        code = await fork.run(zygote, start)
        self._codes[fork.id] = code
        self._containers.pop(fork.id, None)

    async def wait_exit(self, container_id: str) -> int:
        fork = self._containers.get(container_id)
        if fork is None:
            return self._codes[container_id]
        return await asyncio.shield(fork.exited)

    async def stop(self, container_id: str, grace_s: float) -> int:
        fork = self._containers.get(container_id)
        if fork is None:
            return self._codes.get(container_id, -1)
        return await fork.stop(grace_s)

    async def kill(self, container_id: str) -> None:
        fork = self._containers.get(container_id)
        if fork is not None:
            fork.kill()

    async def close(self) -> None:
        await asyncio.gather(*(f.stop(_STOP_GRACE_S) for f in list(self._containers.values())))
        for zygote in reversed(self._zygotes):
            await zygote.stop()  # end of stream: the zygote exits
        if self._image is not None:
            try:
                await asyncio.wait_for(self._image.wait(), timeout=_STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._image.kill()
        self._closed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Fork:
    """One forked container: its relay, its event stream, its process."""

    def __init__(self, container_id: str, host: str, socket_path: str) -> None:
        self.id = container_id
        self._host = host
        self._socket_path = socket_path
        self.events = EventStream()
        self._events_server: asyncio.Server | None = None
        self._relay: asyncio.Server | None = None
        self._forked: Forked | None = None
        self._emits: set[asyncio.Future[None]] = set()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def listen(self) -> None:
        self._events_server = await asyncio.start_server(self._attach, self._host, 0)
        self._relay = await asyncio.get_running_loop().create_server(
            lambda: _Downstream(self._socket_path), self._host, 0, start_serving=False, backlog=2048
        )

    @property
    def events_port(self) -> int:
        assert self._events_server is not None
        return int(self._events_server.sockets[0].getsockname()[1])

    async def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.events.attach(writer)

    async def run(self, zygote: Zygote, start: Start) -> int:
        """Fork from `zygote`, report its output and readiness, and its exit code once it exits."""
        listener = listen(self._socket_path)
        try:
            self._forked = await zygote.fork(self.id, "container", start, plan=None, listener=listener)
        except Exception as exc:  # StartupError: the zygote is gone or stuck
            return await self.fail(f"could not fork the container: {exc}")
        finally:
            listener.close()
        forked = self._forked
        if self.exited.done():  # stopped while it was being forked
            forked.kill()
            await forked.wait()
            forked.release(cleanup=False)
            return self.exited.result()
        pumps = [
            asyncio.ensure_future(pump(forked.stdout, self._emitter("stdout"))),
            asyncio.ensure_future(pump(forked.stderr, self._emitter("stderr"))),
        ]
        event = await forked.started()
        ready = event is not None and event.get("event") == "ready" and self._relay is not None
        if ready and self._relay is not None:
            await self._relay.start_serving()
            port = self._relay.sockets[0].getsockname()[1]
            await self.events.emit(event="ready", address=f"tcp://{_url_host(self._host)}:{port}")
        # Exited: its process group was killed with it (what it started goes too: `Forked`).
        code = await forked.wait()
        await asyncio.wait(pumps, timeout=2.0)
        for task in pumps:
            task.cancel()
        forked.release(cleanup=False)
        reason = (event or {}).get("reason") or f"container exited during startup (code {code})"
        return await self._end(code, None if ready else str(reason))

    def _emitter(self, stream: str) -> Callable[[str], None]:
        def emit(line: str) -> None:
            task = asyncio.ensure_future(self.events.emit(stream=stream, line=line))
            self._emits.add(task)
            task.add_done_callback(self._emits.discard)

        return emit

    async def fail(self, reason: str) -> int:
        return await self._end(-1, reason)

    async def _end(self, code: int, failure: str | None) -> int:
        for server in (self._relay, self._events_server):
            if server is not None:
                server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket_path)
        if failure is not None:
            await self.events.emit(event="failed", reason=failure)
        await self.events.emit(event="exit", code=code)
        await self.events.end()
        if not self.exited.done():
            self.exited.set_result(code)
        return code

    async def stop(self, grace_s: float) -> int:
        forked = self._forked
        if forked is None:
            if not self.exited.done():
                await self.fail("container stopped before it was forked")
            return await asyncio.shield(self.exited)
        if not self.exited.done() and forked.host_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(forked.host_pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout=grace_s)
            except TimeoutError:
                forked.kill()
        return await asyncio.shield(self.exited)

    def kill(self) -> None:
        if self._forked is not None:
            self._forked.kill()


def _start(message: dict[str, Any], source_dir: str, **changes: Any) -> Start:
    """The server's start `message` for sources unpacked at `source_dir` on this node."""
    start = decode(message)
    if not isinstance(start, Start):
        raise UnknownMessage(f"expected a start message, not {start.op!r}")
    module_file = os.path.join(source_dir, start.module_file)
    return dataclasses.replace(start, source_dir=source_dir, module_file=module_file, **changes)
