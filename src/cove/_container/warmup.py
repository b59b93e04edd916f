"""An image zygote's warm-up: the first-use costs of FastAPI, Pydantic and anyio, paid once.

The first route a process adds and the first request it serves pay for lazily built machinery
(Pydantic's schema and validator generation, FastAPI's dependency analysis) and lazy imports
(anyio's asyncio backend on the first thread hop, FastAPI's ASGI lifespan parts): about 40 ms of a
fork's cold start. Serving throwaway apps in the zygote pays it once for every fork.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic

from cove._container import adapters
from cove._spec import WebSpec

Receive = Callable[[], Awaitable[dict[str, Any]]]


class _Item(pydantic.BaseModel):
    x: int
    name: str = ""


# A plain function runs in anyio's worker threads; they end with the event loop, before any fork.
def _read(x: int, q: str | None = None) -> dict[str, int]:
    return {"x": x}


async def _create(item: _Item) -> _Item:
    return item


async def _ignore(message: dict[str, Any]) -> None:
    pass


def _messages(*messages: dict[str, Any]) -> Receive:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


async def _request(app: Any, method: str, query: bytes, body: bytes) -> None:
    scope = {"type": "http", "method": method, "path": "/", "raw_path": b"/", "query_string": query}
    scope.update(headers=[(b"content-type", b"application/json")], http_version="1.1", scheme="http")
    scope.update(server=("zygote", 80), client=("zygote", 1), root_path="")
    await app(scope, _messages({"type": "http.request", "body": body, "more_body": False}), _ignore)


async def _lifespan(app: Any) -> None:
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, _messages({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}), _ignore)


async def _serve() -> None:
    reader = adapters.fastapi_app(_read, WebSpec("fastapi_endpoint"))
    writer = adapters.fastapi_app(_create, WebSpec("fastapi_endpoint", "POST"))
    await _lifespan(reader)
    await _request(reader, "GET", b"x=1", b"")
    await _request(writer, "POST", b"", b'{"x":1}')


def serve_throwaway_apps() -> None:
    """Build two FastAPI apps and serve each a request (and one its lifespan), on a loop of its own."""
    asyncio.run(_serve())
