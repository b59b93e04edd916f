"""The control plane's HTTP API (JSON over a unix socket), used by the CLI and the client library.

Each handler is a module-level `handler(api, request)` taking the server's services (`ApiServices`)
explicitly; `build_api` binds them into routes, each `guarded` (`cove._control.api_errors`). The
routes of calls, sessions and objects live in `api_calls`, `api_sessions` and `api_objects`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cove import exception
from cove._control.api_errors import bind
from cove._control.apps import AppRegistry
from cove._control.bundles import BundleStore
from cove._control.images import ImageBuilder
from cove._control.logs import LogHub
from cove._control.records import AppKind, AppRecord, AppState, Source
from cove._control.secrets import SecretStore
from cove._control.store import Store
from cove._error_body import error_body
from cove._spec import app_spec_from_dict

API_VERSION = "1"


@dataclass(frozen=True)
class ApiServices:
    """What the control API's handlers work with, owned by the server process."""

    registry: AppRegistry
    logs: LogHub
    secrets: SecretStore
    store: Store
    bundles: BundleStore
    health: Callable[[], dict[str, Any]]
    request_stop: Callable[[], None]
    images: ImageBuilder | None = None
    #: Builds and app stops that outlive their request.
    background: set[asyncio.Task[Any]] = field(default_factory=set)


def app_json(record: AppRecord) -> dict[str, Any]:
    version = record.current
    return {
        "name": record.name,
        "kind": record.kind,
        "state": "stopped" if record.state is AppState.STOPPED else record.kind,
        "version": version.number if version else 0,
        "containers": record.container_count(),
        "created_at": record.created_at,
        "updated_at": version.created_at if version else record.created_at,
        "endpoints": [asdict(e) for e in version.endpoints] if version else [],
        "functions": [f.tag for f in version.spec.functions if f.web is None] if version else [],
    }


async def get_health(api: ApiServices, request: Request) -> Response:
    return JSONResponse({"api_version": API_VERSION, "pid": os.getpid(), **api.health()})


async def list_apps(api: ApiServices, request: Request) -> Response:
    return JSONResponse({"apps": [app_json(r) for r in api.registry.apps()]})


async def put_app(api: ApiServices, request: Request) -> Response:
    kind: AppKind = "deployed" if request.path_params["kind"] == "deployed" else "ephemeral"
    body = await request.json()
    spec = app_spec_from_dict(body["spec"])
    if "bundle_id" in body:
        source = api.bundles.source(body["bundle_id"], body["module_path"])
    elif request.scope.get("cove.remote"):
        # Paths on the server's disk are for local clients only.
        raise exception.InvalidError("Remote clients must upload a source bundle (bundle_id).")
    else:
        source = Source(module_file=body["source"]["module_file"], source_dir=body["source"]["source_dir"])
    record = await api.registry.publish(
        request.path_params["name"],
        spec,
        source,
        kind=kind,
        session=body.get("session"),
        tag=str(body.get("tag") or ""),
    )
    return JSONResponse(app_json(record))


async def build_images(api: ApiServices, request: Request) -> Response:
    """Build the images of an app manifest, streaming NDJSON build events; the last line is
    {"event": "done"} or {"event": "error", "error": <cove exception name>, "message": ...}.

    A client that goes away does not stop the build: the image still lands in the cache.
    """
    body = await request.json()
    spec = app_spec_from_dict(body["spec"])
    force = bool(body.get("force"))
    root = None
    if "bundle_id" in body:
        root = api.bundles.root(str(body["bundle_id"]))
    elif request.scope.get("cove.remote"):
        # The steps' paths would name files on the server's disk: for local clients only.
        raise exception.InvalidError("Remote clients must upload a source bundle (bundle_id).")
    events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def build() -> None:
        try:
            if api.images is not None:
                await api.images.build_app(spec, events.put_nowait, force=force, root=root)
            events.put_nowait({"event": "done"})
        except exception.Error as exc:
            events.put_nowait({"event": "error", **error_body(exc)})
        except Exception as exc:  # a bug must still end the stream with a readable line
            message = f"image build failed: {exc!r}"
            events.put_nowait({"event": "error", "error": "ImageBuildError", "message": message})
        finally:
            events.put_nowait(None)

    task = asyncio.ensure_future(build())
    api.background.add(task)
    task.add_done_callback(api.background.discard)

    async def stream() -> AsyncIterator[bytes]:
        while (event := await events.get()) is not None:
            yield (json.dumps(event) + "\n").encode()

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def post_bundle(api: ApiServices, request: Request) -> Response:
    data = await request.body()
    return JSONResponse({"bundle_id": api.bundles.save(data)})


async def app_history(api: ApiServices, request: Request) -> Response:
    versions = api.registry.history(request.path_params["name"])
    return JSONResponse(
        {
            "versions": [
                {
                    "version": v.number,
                    "created_at": v.created_at,
                    "tag": v.tag,
                    "deployed_by": v.deployed_by,
                    "rollback_of": v.rollback_of,
                }
                for v in versions
            ]
        }
    )


async def app_rollback(api: ApiServices, request: Request) -> Response:
    body = await request.json()
    number = body.get("version")
    record = await api.registry.rollback(request.path_params["name"], int(number) if number else None)
    return JSONResponse(app_json(record))


async def create_token(api: ApiServices, request: Request) -> Response:
    body = await request.json()
    kind: Literal["api", "proxy"] = "proxy" if body.get("kind") == "proxy" else "api"
    token_id, secret = api.store.create_token(kind)
    return JSONResponse({"id": token_id, "secret": secret, "kind": kind})


async def list_tokens(api: ApiServices, request: Request) -> Response:
    return JSONResponse({"tokens": [asdict(t) for t in api.store.tokens()]})


async def revoke_token(api: ApiServices, request: Request) -> Response:
    api.store.revoke_token(request.path_params["id"])
    return JSONResponse({"revoked": request.path_params["id"]})


async def stop_app(api: ApiServices, request: Request) -> Response:
    kind = request.query_params.get("kind") or None
    record = await api.registry.stop(request.path_params["name"], kind)  # type: ignore[arg-type]
    return JSONResponse(app_json(record))


async def get_app(api: ApiServices, request: Request) -> Response:
    kind = request.query_params.get("kind") or None
    return JSONResponse(app_json(api.registry.get(request.path_params["name"], kind)))  # type: ignore[arg-type]


async def attach(api: ApiServices, request: Request) -> Response:
    """Stream an ephemeral app's logs to its `cove serve`; when that client goes, stop the app."""
    name = request.path_params["name"]
    session = request.query_params["session"]
    record = api.registry.get(name, "ephemeral")
    if record.session != session:
        raise exception.InvalidError(f"session {session!r} does not own app {name!r}")

    async def stream() -> AsyncIterator[bytes]:
        since = float(request.query_params.get("since", "0")) or None
        follower = api.logs.follow(record.log_key, since=since)
        changed = asyncio.ensure_future(record.session_changed.wait())
        try:
            while True:
                next_line = asyncio.ensure_future(anext(follower))
                done, _ = await asyncio.wait({next_line, changed}, return_when=asyncio.FIRST_COMPLETED)
                if next_line in done:
                    try:
                        item = next_line.result()
                    except StopAsyncIteration:
                        item = None
                    if item is not None:
                        yield (json.dumps({"log": asdict(item)}) + "\n").encode()
                        continue
                else:
                    next_line.cancel()
                # The session changed (another `cove serve` took over) or the app stopped.
                event = "stopped" if record.state is AppState.STOPPED else "taken_over"
                yield (json.dumps({"event": event}) + "\n").encode()
                return
        finally:
            changed.cancel()
            await follower.aclose()
            if record.session == session and record.state is AppState.RUNNING:
                task = asyncio.ensure_future(api.registry.stop(name, "ephemeral"))
                api.background.add(task)
                task.add_done_callback(api.background.discard)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def app_logs(api: ApiServices, request: Request) -> Response:
    kind = request.query_params.get("kind") or None
    name = api.registry.get(request.path_params["name"], kind).log_key  # type: ignore[arg-type]
    tail = int(request.query_params.get("tail", "100"))
    follow = request.query_params.get("follow") in ("1", "true")
    if not follow:
        return JSONResponse({"lines": [asdict(r) for r in api.logs.recent(name, tail)]})

    async def stream() -> AsyncIterator[bytes]:
        async for record in api.logs.follow(name, tail):
            yield (json.dumps(asdict(record)) + "\n").encode()

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def list_secrets(api: ApiServices, request: Request) -> Response:
    return JSONResponse({"secrets": [asdict(s) for s in api.secrets.list()]})


async def create_secret(api: ApiServices, request: Request) -> Response:
    body = await request.json()
    values = {str(k): str(v) for k, v in body["values"].items()}
    info = api.secrets.create(body["name"], values, force=bool(body.get("force")))
    return JSONResponse(asdict(info))


async def delete_secret(api: ApiServices, request: Request) -> Response:
    api.secrets.delete(request.path_params["name"])
    return JSONResponse({"deleted": request.path_params["name"]})


async def list_containers(api: ApiServices, request: Request) -> Response:
    app_name = request.query_params.get("app") or None
    if app_name is not None:
        api.registry.get(app_name)
    items = [
        {
            "app": record.name,
            "kind": record.kind,
            "uptime_s": time.monotonic() - info.started_at,
            **asdict(info),
        }
        for record, info in api.registry.containers(app_name)
    ]
    return JSONResponse({"containers": items})


async def stop_container(api: ApiServices, request: Request) -> Response:
    await api.registry.stop_container(request.path_params["id"])
    return JSONResponse({"stopped": request.path_params["id"]})


async def stop_server(api: ApiServices, request: Request) -> Response:
    api.request_stop()
    return JSONResponse({"stopping": True})


def build_api(api: ApiServices, extra_routes: Sequence[Route] = ()) -> Starlette:
    """The Starlette app of the control plane: these routes, then `extra_routes`."""
    return Starlette(routes=[*routes(api), *extra_routes])


def routes(api: ApiServices) -> list[Route]:
    """The control API's own routes, bound to `api`."""
    return [
        Route("/v1/health", bind(get_health, api), methods=["GET"]),
        Route("/v1/apps", bind(list_apps, api), methods=["GET"]),
        Route("/v1/apps/{name}", bind(get_app, api), methods=["GET"]),
        Route("/v1/apps/{kind}/{name}", bind(put_app, api), methods=["PUT"]),
        Route("/v1/apps/{name}/stop", bind(stop_app, api), methods=["POST"]),
        Route("/v1/apps/{name}/attach", bind(attach, api), methods=["GET"]),
        Route("/v1/apps/{name}/logs", bind(app_logs, api), methods=["GET"]),
        Route("/v1/apps/{name}/history", bind(app_history, api), methods=["GET"]),
        Route("/v1/apps/{name}/rollback", bind(app_rollback, api), methods=["POST"]),
        Route("/v1/bundles", bind(post_bundle, api), methods=["POST"]),
        Route("/v1/images/build", bind(build_images, api), methods=["POST"]),
        Route("/v1/tokens", bind(create_token, api), methods=["POST"]),
        Route("/v1/tokens", bind(list_tokens, api), methods=["GET"]),
        Route("/v1/tokens/{id}", bind(revoke_token, api), methods=["DELETE"]),
        Route("/v1/secrets", bind(list_secrets, api), methods=["GET"]),
        Route("/v1/secrets", bind(create_secret, api), methods=["POST"]),
        Route("/v1/secrets/{name}", bind(delete_secret, api), methods=["DELETE"]),
        Route("/v1/containers", bind(list_containers, api), methods=["GET"]),
        Route("/v1/containers/{id}", bind(stop_container, api), methods=["DELETE"]),
        Route("/v1/server/stop", bind(stop_server, api), methods=["POST"]),
    ]
