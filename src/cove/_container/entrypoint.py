"""Container entrypoint: import the user's code in container mode and serve it on a unix socket.

Run as `python -m cove._container.entrypoint`. The process starts *warm*: it imports the serving stack
(uvicorn, FastAPI, Starlette, Pydantic, a2wsgi) first, then blocks on its control channel (the socket
at file descriptor `COVE_CONTROL_FD`) for its first message:

    supervisor -> worker  `Start`         serve that function, once: on the listening socket it
                                          inherited (local backend), or one it makes at the path
                                          `socket` (Ray nodes)
                        | `BecomeZygote`  become an image zygote (`forkserver`)
                          (`cove._messages`: frozen dataclasses, one JSON line each)
    worker -> supervisor  {"event": "ready", "stamps": {...}} | {"event": "failed", "reason": "..."}

`stamps` are `time.monotonic()` readings of the startup's phases (one clock for every process of
the machine), for the server's log. The pieces (`enter_container`, `load`, `serve`) are shared with
containers forked from a zygote, which run them in a different order (see `forkserver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cove._messages import BecomeZygote, Start, UnknownMessage, decode

if TYPE_CHECKING:
    from cove._spec import FunctionSpec
    from cove.functions import UserCode

CONTROL_FD_ENV = "COVE_CONTROL_FD"


def _warm_imports() -> None:
    """Import the serving stack before any function is known (the cost a cold start avoids)."""
    import a2wsgi  # noqa: F401
    import anyio._backends._asyncio  # noqa: F401  (what a sync endpoint's first call would import)
    import fastapi
    import fastapi.middleware.cors  # noqa: F401
    import pydantic  # noqa: F401
    import uvicorn
    import uvicorn.lifespan.on
    import uvicorn.protocols.http.httptools_impl
    import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    import uvloop  # noqa: F401

    import cove
    import cove._container.adapters
    import cove._container.invoke  # noqa: F401


class Channel:
    """The worker's end of the control socket."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._file = self._sock.makefile("rb")

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def receive(self) -> dict[str, Any] | None:
        line = self._file.readline()
        return json.loads(line) if line else None

    def send(self, **message: Any) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(json.dumps(message).encode() + b"\n")


def import_user_module(module_file: str, source_dir: str) -> ModuleType:
    """Import the user's code as Modal mounts it: a file directly in `source_dir` as a top-level
    module named after its stem; a file deeper down (`cove deploy -m pkg.mod`) by its dotted name,
    so the relative imports of its package work."""
    if source_dir not in sys.path:
        sys.path.insert(0, source_dir)
    relative = os.path.relpath(module_file, source_dir)
    parts = os.path.splitext(relative)[0].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if len(parts) > 1 or os.path.basename(module_file) == "__init__.py":
        return importlib.import_module(".".join(parts))
    name = parts[0]
    spec = importlib.util.spec_from_file_location(name, module_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {module_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


async def run_hooks(hooks: list[Callable[[], Any]]) -> None:
    for hook in hooks:
        result = hook()
        if inspect.isawaitable(result):
            await result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def enter_container(message: Start) -> None:
    """Become the container `message` names: its environment (secrets included), ids, working dir."""
    from cove._modal_compat import install as install_modal_compat

    os.environ.update(message.env)
    os.environ["COVE_IS_REMOTE"] = "1"
    os.environ["MODAL_IS_REMOTE"] = "1"
    os.environ["COVE_CONTAINER_ID"] = message.container_id
    os.environ["MODAL_TASK_ID"] = message.container_id
    os.chdir(message.workdir or message.source_dir)  # the image's workdir, if it sets one
    install_modal_compat()


@dataclass
class Loaded:
    """The user's code as a container runs it: its spec, module and callable with its hooks."""

    spec: FunctionSpec
    module: ModuleType
    user: UserCode


def load(message: Start) -> Loaded:
    """Import the user's module and find the function `message` names (raises what the import raises)."""
    from cove._spec import function_spec_from_dict
    from cove.functions import load_user_code

    spec = function_spec_from_dict(dict(message.function))
    module = import_user_module(message.module_file, message.source_dir)
    return Loaded(spec, module, load_user_code(module, spec))


def report_failure(channel: Channel, exc: BaseException) -> int:
    """A startup failure: the traceback to the logs, one line to the supervisor (the 503's reason)."""
    traceback.print_exc()
    channel.send(event="failed", reason=_one_line(exc))
    return 1


async def _serve(message: Start, channel: Channel) -> int:
    """A worker started for one container: load the user's code, then serve it on the listening socket
    the server made and passed down (`listen_fd`; the local backend: the gateway's path is never one
    the container can replace), or on a socket it binds at `socket` (a Ray node's private dir)."""
    stamps = {"received": time.monotonic()}
    enter_container(message)
    try:
        loaded = load(message)
    except BaseException as exc:
        return report_failure(channel, exc)
    stamps["imported"] = time.monotonic()
    if message.listen_fd is not None:
        listener = socket.socket(fileno=message.listen_fd)
        return await serve(loaded, listener, channel, snap=True, stamps=stamps)
    assert message.socket is not None, "a start message names a listen_fd or a socket"
    path = message.socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    listener.listen(2048)
    try:
        return await serve(loaded, listener, channel, snap=True, stamps=stamps)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def serve(
    loaded: Loaded, listener: socket.socket, channel: Channel, *, snap: bool, stamps: dict[str, float]
) -> int:
    """Run the `@enter` hooks (with `snap`, the `@enter(snap=True)` ones first), build the app and
    serve it on `listener` until SIGTERM; report readiness, with `stamps`, on `channel`."""
    import uvicorn

    from cove._container import adapters, invoke

    spec, user = loaded.spec, loaded.user
    web = spec.web  # None: a function called with .remote()/.spawn(), served by `invoke`
    try:
        if snap:
            await run_hooks(user.enter_snap)
        await run_hooks(user.enter)
    except BaseException as exc:
        return report_failure(channel, exc)
    stamps["entered"] = time.monotonic()

    def ready() -> None:
        stamps["ready"] = time.monotonic()
        channel.send(event="ready", stamps=stamps)

    stop = asyncio.Event()
    try:
        if web is not None and web.relays_port:  # web_server, or an http_server its @enter started
            return await _serve_web_server(
                user.call, web.port or 0, web.startup_timeout_s, listener, channel, stop, ready
            )
        try:
            if web is None:
                app = invoke.call_app(user, spec, loaded.module)
            elif web.kind == "fastapi_endpoint":
                app = adapters.fastapi_app(user.call, web)
            elif web.kind == "asgi_app":
                app = adapters.asgi_from_factory(user.call)
            else:
                app = adapters.wsgi_from_factory(user.call)
        except BaseException as exc:
            return report_failure(channel, exc)
        stamps["built"] = time.monotonic()
        config = uvicorn.Config(
            adapters.ClientAddressMiddleware(app),
            loop="none",
            http="httptools",
            ws="websockets-sansio",
            lifespan="auto",
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            ws_max_size=adapters.WS_MAX_MESSAGE_BYTES,
            ws_per_message_deflate=False,
            # The gateway pools connections; closing them after 5 s idle would only make it reconnect.
            timeout_keep_alive=3600,
            timeout_graceful_shutdown=30,
        )
        server = server_class()(config, on_ready=ready)
        await server.serve(sockets=[listener])
        if not server.started:
            channel.send(event="failed", reason="ASGI lifespan startup failed")
            return 1
        return 0
    finally:
        await _run_exit_hooks(user.exit)


async def _run_exit_hooks(hooks: list[Callable[[], Any]]) -> None:
    try:
        await asyncio.wait_for(run_hooks(hooks), timeout=30)
    except BaseException:
        traceback.print_exc()


async def _serve_web_server(
    call: Callable[[], Any],
    port: int,
    startup_timeout_s: float,
    listener: socket.socket,
    channel: Channel,
    stop: asyncio.Event,
    ready: Callable[[], None],
) -> int:
    """Call the function (a no-op for an http_server, whose @enter started the server), wait for
    `port`, then relay until SIGTERM. (An http_server's `exit_grace_period` is the pool's: it sends
    SIGTERM once the requests in flight are done, or the period is over.)"""
    from cove._container import adapters

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        result = call()
        if inspect.isawaitable(result):
            await result
        await adapters.wait_for_port(port, startup_timeout_s)
    except BaseException as exc:
        return report_failure(channel, exc)
    server = await adapters.relay_unix_to_tcp(listener, port)
    ready()
    await stop.wait()
    server.close()
    return 0


@functools.cache
def server_class() -> type:
    """uvicorn's Server as the container runs it (made once; needs uvicorn, imported warm)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, reporting readiness and leaving signals to a graceful stop."""

        def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
            super().__init__(config)
            self._on_ready = on_ready

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                self._on_ready()

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # uvicorn re-raises the signal after shutdown, which would kill us before @exit runs.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    return Server


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGTERM us when our parent dies (even by SIGKILL), so no container outlives the server.

    `parent`: the pid our parent had (a forked child knows it for sure; else read now)."""
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the server died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    fd_text = os.environ.pop(CONTROL_FD_ENV, None)
    if fd_text is None:
        print("cove: the container entrypoint is started by the Cove server, not by hand.", file=sys.stderr)
        return 2
    die_with_parent()
    channel = Channel(int(fd_text))
    _warm_imports()
    server_class()
    received = channel.receive()
    if received is None:
        return 0  # the supervisor discarded this worker
    message = decode(received)
    if isinstance(message, BecomeZygote):
        from cove._container import forkserver

        return forkserver.run_image_zygote(channel)
    if not isinstance(message, Start):
        raise UnknownMessage(f"a worker's first message is start or zygote, not {message.op!r}")
    import uvloop

    return uvloop.run(_serve(message, channel))


if __name__ == "__main__":
    sys.exit(main())
