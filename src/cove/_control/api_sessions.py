"""The control API's routes for sticky sessions of `@modal.sessioned()` servers (Modal 1.5).

    POST   /v1/servers/{app}/{tag}/sessions          body {"idle_timeout": S}
                                                    -> 200 {"token", "container_id", "idle_timeout"}
    DELETE /v1/servers/{app}/{tag}/sessions/{token}  -> 200 {"terminated": true|false}

A start waits (up to the server's startup timeout plus a minute) for a ready container when none
is. Tokens are secrets: they are returned once and never logged.
"""

from __future__ import annotations

import json
import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cove import exception
from cove._control.api_errors import bind
from cove._control.apps import AppRegistry

#: Modal's default `idle_timeout` of a session, and the longest Cove accepts (a day).
DEFAULT_IDLE_TIMEOUT_S = 600.0
MAX_IDLE_TIMEOUT_S = 24 * 3600.0
#: Added to a server's startup timeout for how long a session start waits for a container.
_START_MARGIN_S = 60.0


async def start(registry: AppRegistry, request: Request) -> Response:
    app_name, tag = request.path_params["app"], request.path_params["tag"]
    body = await request.body()
    options = json.loads(body) if body else {}
    idle = options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT_S)
    if (
        isinstance(idle, bool)
        or not isinstance(idle, (int, float))
        or not math.isfinite(idle)
        or not 0 < idle <= MAX_IDLE_TIMEOUT_S
    ):
        raise exception.InvalidError(
            "sessions.start(idle_timeout=...) must be a number of seconds in "
            f"(0, {MAX_IDLE_TIMEOUT_S:.0f}], got {idle!r}."
        )
    _, pool = registry.function_pool(app_name, tag)
    web = pool.spec.web
    wait_s = (web.startup_timeout_s if web is not None else 30.0) + _START_MARGIN_S
    token, container_id = await pool.start_session(float(idle), wait_s)
    return JSONResponse({"token": token, "container_id": container_id, "idle_timeout": float(idle)})


async def terminate(registry: AppRegistry, request: Request) -> Response:
    app_name, tag = request.path_params["app"], request.path_params["tag"]
    _, pool = registry.function_pool(app_name, tag)
    return JSONResponse({"terminated": pool.terminate_session(request.path_params["token"])})


def session_routes(registry: AppRegistry) -> list[Route]:
    """Routes to add to the control API's Starlette app."""
    return [
        Route("/v1/servers/{app}/{tag}/sessions", bind(start, registry), methods=["POST"]),
        Route("/v1/servers/{app}/{tag}/sessions/{token}", bind(terminate, registry), methods=["DELETE"]),
    ]


__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "session_routes"]
