"""The control API's routes for the client library: look up a function, start a call, fetch its result.

    GET  /v1/functions/{app}/{tag}          -> 200 JSON metadata (is_web, web_url, kind, class_name...)
    POST /v1/calls?app=A&function=T&wait=S  body: the pickled input (application/x-cove-pickle)
                                            -> 200 pickled result (header x-cove-call-id) if it finished
                                               within S seconds, else 202 {"call_id", "status": "pending"}
    GET  /v1/calls/{id}?timeout=S           -> 200 pickled result | 202 {"call_id", "status": "pending"}
    POST /v1/calls/stream?app=A&function=T  a generator function's `.remote_gen`: 200 and a stream of
                                            frames, one per item as it is yielded (`cove._payload`)

`kind=ephemeral` (default `deployed`) on the lookup and call routes names the app `cove serve` or
`cove run` runs under that name instead of the deployed one.

Waits are capped at `MAX_WAIT_S`, so a long `.get()` is a loop of long polls. Errors are JSON
`{"error": <cove.exception class name>, "message"}` as everywhere in the control API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cove import exception
from cove._control.api_errors import bind
from cove._control.apps import AppRegistry
from cove._control.calls import CallRegistry
from cove._control.records import AppKind, AppState
from cove._payload import CALL_ID_HEADER, CONTENT_TYPE, FRAMES_CONTENT_TYPE

#: Longest a single request waits for a result; clients poll again after it.
MAX_WAIT_S = 50.0
#: Largest pickled input accepted (arguments travel in one request body).
MAX_INPUT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class CallServices:
    """What the call routes work with: the apps (for lookups) and the running calls."""

    registry: AppRegistry
    calls: CallRegistry


async def get_function(api: CallServices, request: Request) -> Response:
    app_name, tag = request.path_params["app"], request.path_params["tag"]
    return JSONResponse(function_metadata(api.registry, app_name, tag, app_kind(request)))


async def post_call(api: CallServices, request: Request) -> Response:
    wait_s = _seconds(request.query_params.get("wait", "0"), "wait")
    app_name, tag, kind, body = await _read_input(api.registry, request)
    call_id = api.calls.spawn(app_name, tag, body, kind)
    return await _answer(api.calls, call_id, wait_s)


async def post_stream(api: CallServices, request: Request) -> Response:
    app_name, tag, kind, body = await _read_input(api.registry, request)
    frames = api.calls.stream(app_name, tag, body, kind)
    return StreamingResponse(frames, media_type=FRAMES_CONTENT_TYPE)


async def get_call(api: CallServices, request: Request) -> Response:
    timeout_s = _seconds(request.query_params.get("timeout", "0"), "timeout")
    return await _answer(api.calls, request.path_params["call_id"], timeout_s)


def call_routes(registry: AppRegistry, calls: CallRegistry) -> list[Route]:
    """Routes to add to the control API's Starlette app."""
    api = CallServices(registry, calls)
    return [
        Route("/v1/functions/{app}/{tag}", bind(get_function, api), methods=["GET"]),
        Route("/v1/calls", bind(post_call, api), methods=["POST"]),
        Route("/v1/calls/stream", bind(post_stream, api), methods=["POST"]),
        Route("/v1/calls/{call_id}", bind(get_call, api), methods=["GET"]),
    ]


async def _read_input(registry: AppRegistry, request: Request) -> tuple[str, str, AppKind, bytes]:
    app_name = request.query_params["app"]
    tag = request.query_params["function"]
    kind = app_kind(request)
    length = request.headers.get("content-length")
    if length is not None and int(length) > MAX_INPUT_BYTES:
        raise exception.InvalidError(
            f"The pickled arguments are {int(length)} bytes, over the {MAX_INPUT_BYTES} byte limit. "
            "Pass large data by reference (a path or URL) instead."
        )
    function_metadata(registry, app_name, tag, kind)  # Modal's lookup error for unknown names
    return app_name, tag, kind, await request.body()


def app_kind(request: Request) -> AppKind:
    """The `kind=` of a call: `deployed` (the default) or `ephemeral`."""
    kind = request.query_params.get("kind", "deployed")
    if kind not in ("deployed", "ephemeral"):
        raise exception.InvalidError(f"kind= must be 'deployed' or 'ephemeral', got {kind!r}.")
    return cast(AppKind, kind)


def function_metadata(
    registry: AppRegistry, app_name: str, tag: str, kind: AppKind = "deployed"
) -> dict[str, Any]:
    """What a client needs to call function `tag` (or `Class.method`) of app `app_name`."""
    try:
        record, pool = registry.function_pool(app_name, tag, kind)
    except exception.NotFoundError as exc:
        cls_name, dot, method = tag.partition(".")
        what = f"Cls {cls_name!r} (method {method!r})" if dot else f"Function {tag!r}"
        tags = _running_tags(registry, app_name, kind)  # None: the app itself is not running
        if tags is not None and dot:  # the app runs, the method is not in it
            methods = [t.partition(".")[2] for t in tags if t.startswith(cls_name + ".")]
            hint = f"it has no such class method. Methods of {cls_name}: {', '.join(methods) or 'none'}."
        elif tags is not None:  # the app runs, the function is not in it
            deployed = ", ".join(t for t in tags if "." not in t) or "none"
            hint = f"it has no such function. Its functions: {deployed}."
        elif kind == "deployed":
            hint = f"{exc} Function.from_name reaches deployed apps only (`cove deploy FILE`)."
        else:
            hint = str(exc)
        raise exception.NotFoundError(f"Lookup failed for {what} from the {app_name!r} app: {hint}") from None
    spec = pool.spec
    version = record.current
    url = None
    if version is not None:
        url = next((e.url for e in version.endpoints if e.tag == tag), None)
    return {
        "app": app_name,
        "kind": kind,
        "tag": tag,
        "version": version.number if version else 0,
        "is_web": spec.web is not None,
        "web_url": url,
        "web_kind": spec.web.kind if spec.web else None,
        "class_name": spec.module_attr if spec.method_name else None,
        "method_name": spec.method_name,
        "is_generator": spec.is_generator,
        "timeout_s": spec.timeout_s,
    }


def _running_tags(registry: AppRegistry, app_name: str, kind: AppKind) -> list[str] | None:
    """The function tags of app `app_name` if it is running, else None."""
    try:
        record = registry.get(app_name, kind)
    except exception.NotFoundError:
        return None
    if record.state is AppState.STOPPED or record.current is None:
        return None
    return [f.tag for f in record.current.spec.functions]


async def _answer(calls: CallRegistry, call_id: str, wait_s: float) -> Response:
    result = await calls.result(call_id, min(wait_s, MAX_WAIT_S))
    if result is None:
        return JSONResponse({"call_id": call_id, "status": "pending"}, status_code=202)
    return Response(result, media_type=CONTENT_TYPE, headers={CALL_ID_HEADER: call_id})


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise exception.InvalidError(f"{name}= must be a number of seconds >= 0, got {text!r}.")
    return value


__all__ = ["MAX_WAIT_S", "CallServices", "app_kind", "call_routes", "function_metadata"]
