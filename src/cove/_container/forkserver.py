"""A zygote from inside: a warm worker that forks function zygotes and containers when asked.

An *image zygote* is a worker (see `entrypoint`) told to become one: it has imported the serving
stack and nothing of the user's. Forked from it, a *function zygote* imports the user's module and
runs the `@enter(snap=True)` hooks, then forks containers in turn. A container forked from either
runs what its zygote has not (import, snap hooks), then the `@enter` hooks, builds the app and
serves it on the listening socket the server handed over.

Protocol on a zygote's control channel (JSON lines; the file descriptors a message names, `fds`,
ride along with it as SCM_RIGHTS):

    server -> zygote  `Fork` (id, role, start, plan, hold, sent), with "fds": 3 | 4 descriptors:
                      channel, stdout, stderr[, listener]
                    | `Reap` (pid)   the server has read child pid's exit status
                      (`cove._messages`: frozen dataclasses, one JSON line each)
    zygote -> server  {"event": "forked", "id", "pid": n}   n: the child's pid in the zygote's PID namespace

A zygote leaves its exited children as zombies until the server says `reap` (or a minute has passed):
the server reads their exit status from /proc meanwhile. On the child's own channel, a function
zygote says `ready` or `failed` once and then speaks this protocol as a zygote; a container speaks
the entrypoint's, after `{"event": "isolated"}` and waiting for `Go` (data_bytes) when
`hold` is set (the server puts it in its cgroup and network first).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import resource
import socket
import sys
import threading
import time
import traceback
from typing import Any

from cove._container import entrypoint, warmup
from cove._container.entrypoint import Loaded
from cove._messages import Fork, Go, Reap, Start, UnknownMessage, decode
from cove._runtime.backends.local import namespaces

#: How often an idle zygote looks for children the server never asked it to reap.
_SWEEP_S = 10.0
#: A zombie older than this is reaped without the server's word (the server missed its exit).
_REAP_AFTER_S = 60.0
_PR_SET_NAME = 15


class _Conduit:
    """A zygote's end of its control channel: JSON lines with the file descriptors they carry."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(_SWEEP_S)
        self._buffer = b""
        self._fds: collections.deque[int] = collections.deque()

    def receive(self) -> tuple[dict[str, Any], list[int]] | None:
        """The next message and its descriptors; None at end of stream. Raises TimeoutError when
        nothing arrived for a while (what was read so far is kept)."""
        while b"\n" not in self._buffer:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 16)
            self._fds.extend(fds)
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        count = int(message.get("fds", 0))  # `decode` leaves it out
        return message, [self._fds.popleft() for _ in range(min(count, len(self._fds)))]

    def send(self, **message: Any) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def close_inherited(self) -> None:
        """In a forked child: drop the zygote's channel and descriptors meant for other children."""
        # Not sock.close(): a file made from the socket (the worker's `Channel`) would keep it open.
        os.close(self.sock.detach())
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())


def run_image_zygote(channel: entrypoint.Channel) -> int:
    """Serve as an image zygote until the server closes the channel."""
    import uvloop  # noqa: F401  (imported once here rather than in every fork)

    # `python -m` ran the entrypoint as __main__; this is its importable twin, warmed for the forks.
    entrypoint.server_class()
    try:
        warmup.serve_throwaway_apps()
    except Exception:  # an optimisation only
        traceback.print_exc()
    _warn_about_threads("the image zygote's warm-up")
    channel.send(event="ready")
    return _serve_forks(_Conduit(channel.socket), None)


def _serve_forks(conduit: _Conduit, loaded: Loaded | None) -> int:
    """Fork on request until end of stream. `loaded`: the user's code, in a function zygote."""
    children: dict[int, float | None] = {}  # pid -> when first seen exited
    while True:
        try:
            item = conduit.receive()
        except TimeoutError:
            _sweep(children)
            continue
        if item is None:
            return 0
        data, fds = item
        try:
            message = decode(data)
        except UnknownMessage as exc:
            print(f"cove: zygote: {exc}; ignored", file=sys.stderr, flush=True)
            message = None
        if isinstance(message, Fork):
            _fork(message, fds, conduit, loaded, children)
            continue
        if isinstance(message, Reap):
            _reap(message.pid, children)
        for fd in fds:
            os.close(fd)


def _reap(pid: int, children: dict[int, float | None]) -> None:
    children.pop(pid, None)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _sweep(children: dict[int, float | None]) -> None:
    now = time.monotonic()
    for pid, since in list(children.items()):
        if since is None:
            try:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                children.pop(pid, None)
                continue
            if exited is not None:
                children[pid] = now
        elif now - since > _REAP_AFTER_S:
            _reap(pid, children)


def _fork(
    message: Fork,
    fds: list[int],
    conduit: _Conduit,
    loaded: Loaded | None,
    children: dict[int, float | None],
) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            conduit.close_inherited()
            code = _child(message, fds, loaded, parent)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    children[pid] = None
    conduit.send(event="forked", id=message.id, pid=pid)


def _child(message: Fork, fds: list[int], loaded: Loaded | None, parent: int) -> int:
    """The forked process: its own output, session and namespaces, then a function zygote or a container."""
    stamps = {"sent": message.sent, "forked": time.monotonic()}
    channel_fd, stdout_fd, stderr_fd, *rest = fds
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    os.close(stdout_fd)
    os.close(stderr_fd)
    os.setsid()  # its own process group: the server ends whatever it started when it exits
    entrypoint.die_with_parent(parent)
    _set_name(message.id)
    channel = entrypoint.Channel(channel_fd)
    role = message.role
    plan = message.plan
    try:
        if plan is not None:
            namespaces.isolate(
                namespaces.Plan(plan.private_dirs, plan.network), keep_setfcap=role == "function"
            )
        stamps["isolated"] = time.monotonic()
        if message.hold:
            channel.send(event="isolated")
            received = channel.receive()
            go = decode(received) if received is not None else None
            if not isinstance(go, Go):
                return 1
            if go.data_bytes:
                resource.setrlimit(resource.RLIMIT_DATA, (go.data_bytes, go.data_bytes))
            stamps["placed"] = time.monotonic()
    except BaseException as exc:
        return entrypoint.report_failure(channel, exc)
    start = message.start
    if role == "function":
        return _function_zygote(start, channel, stamps)
    listener = socket.socket(fileno=rest[0])
    return _container(start, channel, listener, loaded, stamps)


def _function_zygote(start: Start, channel: entrypoint.Channel, stamps: dict[str, float]) -> int:
    """Import the user's module and run the snap hooks once; then fork containers from here."""
    import uvloop

    entrypoint.enter_container(start)
    try:
        loaded = entrypoint.load(start)
        stamps["imported"] = time.monotonic()
        # A loop of its own, closed before any fork: containers run theirs (an event loop must not
        # cross a fork).
        uvloop.run(entrypoint.run_hooks(loaded.user.enter_snap))
    except BaseException as exc:
        return entrypoint.report_failure(channel, exc)
    stamps["entered"] = time.monotonic()
    _warn_about_threads()
    channel.send(event="ready", stamps=stamps)
    return _serve_forks(_Conduit(channel.socket), loaded)


def _container(
    start: Start,
    channel: entrypoint.Channel,
    listener: socket.socket,
    loaded: Loaded | None,
    stamps: dict[str, float],
) -> int:
    import uvloop

    entrypoint.enter_container(start)  # after isolation: the working directory is its own now
    snap = loaded is None
    if loaded is None:
        try:
            loaded = entrypoint.load(start)
        except BaseException as exc:
            return entrypoint.report_failure(channel, exc)
    stamps["imported"] = time.monotonic()
    return int(uvloop.run(entrypoint.serve(loaded, listener, channel, snap=snap, stamps=stamps)))


def _warn_about_threads(started_by: str = "import or @enter(snap=True)") -> None:
    """Only the forking thread goes on in a fork: say so when a zygote has others."""
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        print(
            f"cove: warning: threads started by {started_by} ({', '.join(others)}) do not exist in "
            "the containers forked from this zygote. Start them in an @enter() hook.",
            file=sys.stderr,
            flush=True,
        )


def _set_name(name: str) -> None:
    """Show the container id as the process name (`ps`, /proc/<pid>/comm; 15 bytes at most)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
