"""The scoped control API containers reach: one unix socket per app, serving an allowlist of routes.

A container may look up and call functions (of its own app, and of deployed apps of the workspace)
and use Dicts, Queues and Volumes; nothing else of the control API (deploys, tokens, secrets, app
stop, containers, logs, server stop...) answers it: those get 403.

Which app a request comes from is decided by the socket it arrived on, never by what it sends: the
server makes one socket per app (`ContainerAPIs.socket_for`) and only that app's containers see it
(its directory is bound read-only at `/cove/api` in their sandboxes; `COVE_CONTAINER_API` names it).
Routes behind it find the app in `request.state.container_app` (an `AppScope`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from cove._control.records import AppKind
from cove._error_body import error_body
from cove.exception import AuthError

log = logging.getLogger("cove.container_api")

#: The socket's file name, in a directory of its own per app.
SOCKET_NAME = "control.sock"
#: Route prefixes served whole (the `objects` routes: every method, every sub-path).
OBJECT_PREFIXES = ("/v1/dicts", "/v1/queues", "/v1/volumes")


@dataclass(frozen=True)
class AppScope:
    """The app a container belongs to."""

    kind: AppKind
    name: str


def refusal(app: AppScope, method: str, path: str, query_string: str) -> str | None:
    """Why a container of `app` may not send this request; None if it may (pure).

    Allowed: every route under `OBJECT_PREFIXES`; the function lookup and call routes when they
    name a deployed app, or `app` itself when it is ephemeral; fetching a call's result by its id.
    """
    segments = path.split("/")
    if "" in segments[1:] or "." in segments or ".." in segments or "\\" in path:
        return f"the path {path!r} is not a normal route path"
    if any(path == p or path.startswith(p + "/") for p in OBJECT_PREFIXES):
        return None
    pairs = parse_qsl(query_string, keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs):
        return "a query parameter is repeated"
    if method == "GET" and len(segments) == 5 and segments[:3] == ["", "v1", "functions"]:
        return _target_refusal(app, segments[3], query.get("kind", "deployed"))
    if method == "POST" and path in ("/v1/calls", "/v1/calls/stream"):
        return _target_refusal(app, query.get("app", ""), query.get("kind", "deployed"))
    if method == "GET" and len(segments) == 4 and segments[:3] == ["", "v1", "calls"]:
        return None  # a call id is itself the capability (96 random bits), as with FunctionCall.from_id
    return (
        f"{method} {path} is not available to containers; a container may call functions and use "
        "Dicts, Queues and Volumes only"
    )


def _target_refusal(app: AppScope, target: str, kind: str) -> str | None:
    if kind == "deployed":
        return None
    if kind == "ephemeral" and app.kind == "ephemeral" and target == app.name:
        return None
    return (
        f"a container of app {app.name!r} ({app.kind}) may call its own app and deployed apps, "
        f"not the {kind} app {target!r}"
    )


class ScopedAPI:
    """ASGI middleware in front of the control API: the allowlist of `refusal` for one app."""

    def __init__(self, owner: ContainerAPIs, app: AppScope) -> None:
        self._owner = owner
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        reason = refusal(
            self._app, scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")
        )
        if reason is not None:
            log.warning(
                "app=%s kind=%s event=container_api_refused method=%s path=%r",
                self._app.name,
                self._app.kind,
                scope["method"],
                scope["path"],
            )
            body = json.dumps(error_body(AuthError(f"cove: {reason}."))).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        state = dict(scope.get("state") or {})
        state["container_app"] = self._app
        api = self._owner.api
        assert api is not None, "ContainerAPIs.api is set before the server accepts requests"
        await api({**scope, "state": state}, receive, send)


@dataclass(eq=False)
class _Listener:
    directory: Path
    server: uvicorn.Server
    task: asyncio.Task[None]


class ContainerAPIs:
    """The scoped sockets of running apps, each served by a uvicorn server of its own on this loop.

    `api` (the control API's ASGI app) is set once it is built; sockets may be made before (apps
    restored at start-up), since nothing connects until their containers run.
    """

    def __init__(self, directory: Path) -> None:
        self.api: ASGIApp | None = None
        self._directory = directory
        self._listeners: dict[AppScope, _Listener] = {}

    def socket_for(self, kind: AppKind, name: str) -> str:
        """The host path of app `name`'s scoped socket, listening from now on (made on first use)."""
        app = AppScope(kind, name)
        listener = self._listeners.get(app)
        if listener is None or listener.task.done():
            listener = self._listeners[app] = self._listen(app)
        return str(listener.directory / SOCKET_NAME)

    def _listen(self, app: AppScope) -> _Listener:
        # Short and fixed per app: the path must fit in sun_path, and a restarted server makes the same.
        digest = hashlib.sha256(f"{app.kind}/{app.name}".encode()).hexdigest()[:8]
        directory = self._directory / f"api-{digest}"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        config = uvicorn.Config(
            ScopedAPI(self, app), loop="none", lifespan="off", log_config=None, access_log=False
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(_serve(server, sock))
        log.info("app=%s kind=%s event=container_api socket=%s", app.name, app.kind, path)
        return _Listener(directory, server, task)

    async def forget(self, kind: AppKind, name: str) -> None:
        """The app stopped: stop serving its socket and remove it."""
        listener = self._listeners.pop(AppScope(kind, name), None)
        if listener is not None:
            await self._stop(listener)

    async def close(self) -> None:
        listeners, self._listeners = list(self._listeners.values()), {}
        await asyncio.gather(*(self._stop(listener) for listener in listeners))

    @staticmethod
    async def _stop(listener: _Listener) -> None:
        listener.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.task, timeout=5)
        if not listener.task.done():
            listener.task.cancel()
        shutil.rmtree(listener.directory, ignore_errors=True)


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    config = server.config
    if not config.loaded:
        config.load()
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
        await server.main_loop()
        await server.shutdown(sockets=[sock])
    finally:
        sock.close()


__all__ = ["OBJECT_PREFIXES", "SOCKET_NAME", "AppScope", "ContainerAPIs", "ScopedAPI", "refusal"]
