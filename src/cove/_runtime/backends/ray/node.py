"""What runs on a Ray node for one container: the worker process, a TCP relay to it, its event stream.

`ContainerActor` is the Ray actor of one container. It starts the same worker as the local backend
(`python -m cove._container.entrypoint`, at once, so the serving stack is imported while the server
is still connecting), unpacks the app's sources (a bundle as `cove deploy` makes them, sent with the
start message) in a private directory, asks the worker to serve on a unix socket there, and relays
TCP connections on the node's address to that socket. Output, readiness and exit reach the server
as JSON lines on a second TCP connection, the *event stream*:

    {"stream": "stdout" | "stderr", "line": "..."}
    {"event": "ready", "address": "tcp://10.0.0.7:41234"}
    {"event": "failed", "reason": "..."}
    {"event": "exit", "code": 0}            always last; the stream ends after it

A stream that ends without `exit` means the actor's process died (with its node, typically): the
kernel closed its sockets, so the server learns of it as fast as the gateway's own connections do,
without waiting for Ray's node health checks.

The actor's methods run in Ray's threads; all of the container's I/O runs on one uvloop loop in a
thread of its own, which the methods hand coroutines to.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cove._bundle import extract_bundle
from cove._messages import Start, UnknownMessage, decode, encode

T = TypeVar("T")

#: Lines kept for the server while its event connection is not there yet (or gone).
_BACKLOG_LINES = 10_000
#: How long the output pipes may stay open after the worker exited (a child it left holds them).
_PIPE_DRAIN_S = 2.0


class ContainerActor:
    """One container on a Ray node. `RayBackend` wraps this class with `ray.remote` and its options."""

    def __init__(self, container_id: str) -> None:
        import ray
        import uvloop

        self._host = ray.util.get_node_ip_address()
        self._node_id = ray.get_runtime_context().get_node_id()
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"cove-{container_id}", daemon=True
        )
        self._thread.start()
        self._container = self._call(Supervisor.open(container_id, self._host))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def endpoints(self) -> dict[str, Any]:
        """Where the server reaches this container's event stream, and which node it is on."""
        return {
            "host": self._host,
            "events_port": self._container.events_port,
            "node_id": self._node_id,
            "pid": os.getpid(),
        }

    def start(self, message: dict[str, Any], sources: bytes) -> None:
        """Unpack the app's sources and hand the worker its `start` message (`module_file` relative
        to the sources); readiness is reported on the event stream."""
        source_dir = self._container.unpack(sources)
        self._call(self._container.start(message, source_dir))

    def wait_exit(self) -> int:
        """Return the worker's exit code once it has exited (Ray raises instead if the actor dies)."""
        return self._call(self._container.wait_exit())

    def stop(self, grace_s: float) -> int:
        """SIGTERM the worker (it drains and runs @exit), SIGKILL it after `grace_s`; its exit code."""
        return self._call(self._container.stop(grace_s))


class EventStream:
    """The JSON lines for the server: kept in a bounded backlog until its connection is there."""

    def __init__(self) -> None:
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=_BACKLOG_LINES)
        self._writer: asyncio.StreamWriter | None = None
        self._ended = False

    def attach(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # one reader only: the server that started this container
            writer.close()
            return
        self._writer = writer
        writer.write(b"".join(self._backlog))
        self._backlog.clear()
        if self._ended:
            writer.close()

    async def emit(self, **event: Any) -> None:
        line = json.dumps(event).encode() + b"\n"
        writer = self._writer
        if writer is None or writer.is_closing():
            self._backlog.append(line)
            return
        writer.write(line)
        with contextlib.suppress(ConnectionError):
            await writer.drain()  # a slow server slows the worker's output, as a full pipe would

    async def end(self) -> None:
        self._ended = True
        if self._writer is not None:
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()
            self._writer.close()


class Supervisor:
    """The worker process of one container, on this node's event loop."""

    def __init__(
        self,
        container_id: str,
        host: str,
        rundir: str,
        process: asyncio.subprocess.Process,
        channel: socket.socket,
    ) -> None:
        self._id = container_id
        self._host = host
        self._rundir = rundir
        self._socket_path = os.path.join(rundir, "http.sock")
        self._process = process
        self._channel = channel
        self.events = EventStream()
        self._events_server: asyncio.Server | None = None
        self._relay: asyncio.Server | None = None
        self._ready = False
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, container_id: str, host: str) -> Supervisor:
        rundir = tempfile.mkdtemp(prefix=f"cove-ray-{container_id}-")  # 0700; short for a socket path
        parent, child = socket.socketpair()
        env = dict(os.environ, COVE_CONTROL_FD=str(child.fileno()), PYTHONUNBUFFERED="1")
        process = await asyncio.create_subprocess_exec(
            sys.executable,  # the runtime_env's interpreter: the image's packages are importable
            "-m",
            "cove._container.entrypoint",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(child.fileno(),),
            env=env,
            start_new_session=True,
        )
        child.close()
        supervisor = cls(container_id, host, rundir, process, parent)
        try:
            await supervisor._listen()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            shutil.rmtree(rundir, ignore_errors=True)
            raise
        return supervisor

    async def _listen(self) -> None:
        self._events_server = await asyncio.start_server(self._attach, self._host, 0)
        self._relay = await asyncio.get_running_loop().create_server(
            lambda: _Downstream(self._socket_path), self._host, 0, start_serving=False, backlog=2048
        )
        self._spawn(self._watch())

    @property
    def events_port(self) -> int:
        assert self._events_server is not None
        return int(self._events_server.sockets[0].getsockname()[1])

    def unpack(self, sources: bytes) -> str:
        """Unpack a source bundle (safely: no links or paths out of it); return its `src` directory."""
        extract_bundle(sources, Path(self._rundir))
        return os.path.join(self._rundir, "src")

    async def start(self, message: dict[str, Any], source_dir: str) -> None:
        """Send the worker its `start` message, naming the unpacked sources."""
        start = decode(message)
        if not isinstance(start, Start):
            raise UnknownMessage(f"a Ray container starts with a start message, not {start.op!r}")
        module_file = os.path.join(source_dir, start.module_file)
        start = dataclasses.replace(
            start, socket=self._socket_path, source_dir=source_dir, module_file=module_file
        )
        self._spawn(self._control(encode(start)))

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, grace_s: float) -> int:
        if not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
        return await asyncio.shield(self._exited)

    async def _attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.events.attach(writer)

    async def _control(self, message: dict[str, Any]) -> None:
        reader, writer = await asyncio.open_connection(sock=self._channel)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
            event = json.loads(line) if line else {}
        except (ConnectionError, OSError, ValueError) as exc:
            event = {"event": "failed", "reason": f"startup failed: {exc}"}
        if event.get("event") == "ready" and self._relay is not None:
            await self._relay.start_serving()
            self._ready = True
            port = self._relay.sockets[0].getsockname()[1]
            await self.events.emit(event="ready", address=f"tcp://{_url_host(self._host)}:{port}")
        elif event.get("reason"):
            await self.events.emit(event="failed", reason=event["reason"])
        # else: the worker died before answering; _watch reports the exit code.

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: pass it on in pieces
                line = await stream.read(65536)
            if not line:
                return
            await self.events.emit(stream=name, line=line.decode("utf-8", "replace").rstrip("\n"))

    async def _watch(self) -> None:
        pumps = [
            asyncio.ensure_future(self._pump(self._process.stdout, "stdout")),
            asyncio.ensure_future(self._pump(self._process.stderr, "stderr")),
        ]
        code = await self._process.wait()
        # What the worker started in its session (a web_server's `http.server`) goes with it: it
        # would hold the node's resources, and the output pipes, after its container is gone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        await asyncio.wait(pumps, timeout=_PIPE_DRAIN_S)
        for pump in pumps:
            pump.cancel()
        for server in (self._relay, self._events_server):
            if server is not None:
                server.close()
        self._channel.close()
        # Before the exit event: once the server has it, it may kill this actor at any moment.
        shutil.rmtree(self._rundir, ignore_errors=True)
        if not self._ready:
            await self.events.emit(event="failed", reason=f"container exited during startup (code {code})")
        await self.events.emit(event="exit", code=code)
        await self.events.end()
        self._exited.set_result(code)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives, its peer sends; backpressure crosses over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer.transport if self.peer is not None else None
        if peer is None or not peer.can_write_eof() or self.peer is None or self.peer.eof:
            return None  # nothing flows either way any more: close (and the peer with us)
        peer.write_eof()
        return True  # half-closed: the other direction may still carry the response

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None:
            if exc is None:
                peer.close()
            else:
                peer.abort()  # a reset stays a reset, so the gateway answers 502 rather than waiting

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Downstream(_Half):
    """The gateway's TCP connection: what arrives before the worker's socket is connected waits."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self._socket_path = socket_path
        self._connecting: asyncio.Task[None] | None = None
        self._early: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            # uvloop starts reading after connection_made, so pausing there does not hold this back.
            self._early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.peer is None:
            self.eof = True  # passed on once connected
            return True
        return super().eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.pause_reading()  # type: ignore[union-attr]
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        upstream = _Half()
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: upstream, self._socket_path)
        except OSError:
            if self.transport is not None:
                self.transport.abort()
            return
        upstream.peer, self.peer = self, upstream
        if self.transport is None or self.transport.is_closing():
            if upstream.transport is not None:
                upstream.transport.close()
            return
        if upstream.transport is not None:
            upstream.transport.write(b"".join(self._early))
            if self.eof:
                upstream.transport.write_eof()
        self._early.clear()
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is None and self._connecting is not None:
            self._connecting.cancel()
        super().connection_lost(exc)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
