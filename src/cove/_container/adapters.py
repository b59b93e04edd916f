"""Adapters: turn a user's web function into one ASGI application the container serves."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cove._spec import WebSpec
from cove.exception import InvalidError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Modal caps WebSocket messages at 2 MiB (reference §4.2).
WS_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


class ClientAddressMiddleware:
    """Set `scope["client"]` to the address in the gateway's `X-Forwarded-For`.

    Only the gateway can reach a container's socket, and it always replaces the header with the
    peer it saw, so the value is trusted as is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    scope["client"] = (value.decode("latin-1").split(",")[-1].strip(), 0)
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip()
                    if proto in ("http", "https"):
                        scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        await self.app(scope, receive, send)


def fastapi_app(call: Callable[..., Any], web: WebSpec) -> ASGIApp:
    """Modal's wrapper: a FastAPI app with `call` at `/` for its method, CORS open, docs opt-in."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    app = FastAPI(
        openapi_url="/openapi.json" if web.docs else None,
        docs_url="/docs" if web.docs else None,
        redoc_url="/redoc" if web.docs else None,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_api_route("/", call, methods=[web.method.upper()])
    return app


def asgi_from_factory(call: Callable[[], Any]) -> ASGIApp:
    """Call an `@asgi_app` factory once; it must return an ASGI callable."""
    app = call()
    if not callable(app):
        raise InvalidError(
            f"@asgi_app function {_name(call)} returned {type(app).__name__}, not an ASGI app. "
            "Return the app object itself, e.g. `return web_app`."
        )
    return app  # type: ignore[no-any-return]


def wsgi_from_factory(call: Callable[[], Any]) -> ASGIApp:
    """Call a `@wsgi_app` factory once and bridge it with a2wsgi, as Modal does."""
    from a2wsgi import WSGIMiddleware

    wsgi = call()
    if not callable(wsgi):
        raise InvalidError(
            f"@wsgi_app function {_name(call)} returned {type(wsgi).__name__}, not a WSGI app. "
            "Return the app object itself, e.g. `return flask_app`."
        )
    bridge: ASGIApp = WSGIMiddleware(wsgi, workers=10000, send_queue_size=1)  # type: ignore[assignment]
    return bridge


async def wait_for_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> None:
    """Poll a TCP connect every 10 ms until the user's server accepts, as Modal's runtime does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Waited too long for port {port} to start accepting connections. Make sure the web "
                    "server is bound to 0.0.0.0 (rather than localhost or 127.0.0.1), or adjust "
                    "startup_timeout."
                ) from None
            await asyncio.sleep(0.01)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


async def relay_unix_to_tcp(listener: socket.socket, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """Serve `listener` by piping every connection's bytes to `host:port` and back.

    A byte relay keeps whatever the user's server speaks (HTTP/1.1, WebSocket upgrades, SSE)
    intact; the gateway has already added `X-Forwarded-For`.
    """

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
        finally:
            up_w.close()
            client_w.close()

    return await asyncio.start_unix_server(handle, sock=listener)


def _name(call: Callable[..., Any]) -> str:
    return getattr(call, "__qualname__", None) or repr(call)
