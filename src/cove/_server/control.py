"""The control API's listeners: its unix socket (file mode 0600 is the local auth) and, when asked,
TCP with tokens; each a uvicorn server on the server's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from cove._control.auth import TokenAuthMiddleware
from cove._control.store import Store

log = logging.getLogger("cove.server")

#: How long stopping waits for each listener's open requests.
_STOP_TIMEOUT_S = 5


class ControlListeners:
    """Serves the control API on its unix socket and optionally on TCP; stops both in `close`."""

    def __init__(self) -> None:
        self._servers: list[uvicorn.Server] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, api: ASGIApp, sock_path: Path, store: Store, listen: tuple[str, int] | None) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        # The socket's file mode is the local auth: only the server's user may talk to it.
        os.chmod(sock_path, 0o600)
        listener.listen(128)
        self._serve(api, listener)
        if listen is not None:
            tcp = socket.create_server(listen, reuse_port=False)
            self._serve(TokenAuthMiddleware(api, store), tcp)
            log.info("event=listening api=http://%s:%d auth=token", listen[0], tcp.getsockname()[1])

    def stop_accepting(self) -> None:
        """First rung of the ladder: no new control requests."""
        for server in self._servers:
            server.should_exit = True

    async def close(self) -> None:
        """Wait (bounded) for the listeners to finish their open requests."""
        self.stop_accepting()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=_STOP_TIMEOUT_S)

    def _serve(self, app: ASGIApp, listener: socket.socket) -> None:
        config = uvicorn.Config(app, loop="none", lifespan="off", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        self._servers.append(server)
        self._tasks.append(asyncio.ensure_future(_serve(server, listener)))


async def _serve(server: uvicorn.Server, listener: socket.socket) -> None:
    config = server.config
    if not config.loaded:
        config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[listener])
    await server.main_loop()
    await server.shutdown(sockets=[listener])
