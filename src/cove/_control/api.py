"""The control plane's HTTP API (JSON over a unix socket), used by the CLI and the client library."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cove import exception
from cove._control.apps import AppKind, AppRecord, AppRegistry, AppState, Source
from cove._control.bundles import BundleStore
from cove._control.images import ImageBuilder
from cove._control.logs import LogHub
from cove._control.secrets import SecretStore
from cove._control.storage import StorageError
from cove._control.store import Store
from cove._spec import app_spec_from_dict

API_VERSION = "1"

_STATUS = {
    exception.NotFoundError: 404,
    exception.AlreadyExistsError: 409,
    exception.InvalidError: 400,
    exception.AuthError: 401,
    exception.ResourceExhaustedError: 429,
    StorageError: 507,
}


def error_response(exc: exception.Error) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status_code=status)


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


def build_api(
    registry: AppRegistry,
    logs: LogHub,
    secrets: SecretStore,
    store: Store,
    bundles: BundleStore,
    health: Callable[[], dict[str, Any]],
    request_stop: Callable[[], None],
    extra_routes: Sequence[Route] = (),
    images: ImageBuilder | None = None,
) -> Starlette:
    """The Starlette app of the control plane. Every handler maps Cove errors to JSON errors."""
    background: set[asyncio.Task[Any]] = set()

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except exception.Error as exc:
                return error_response(exc)
            except (KeyError, ValueError, TypeError) as exc:
                return JSONResponse(
                    {"error": "InvalidError", "message": f"malformed request: {exc!r}"}, status_code=400
                )

        return wrapper

    async def get_health(request: Request) -> Response:
        return JSONResponse({"api_version": API_VERSION, "pid": os.getpid(), **health()})

    async def list_apps(request: Request) -> Response:
        return JSONResponse({"apps": [app_json(r) for r in registry.apps()]})

    async def put_app(request: Request) -> Response:
        kind: AppKind = "deployed" if request.path_params["kind"] == "deployed" else "ephemeral"
        body = await request.json()
        spec = app_spec_from_dict(body["spec"])
        if "bundle_id" in body:
            source = bundles.source(body["bundle_id"], body["module_path"])
        elif request.scope.get("cove.remote"):
            # Paths on the server's disk are for local clients only.
            raise exception.InvalidError("Remote clients must upload a source bundle (bundle_id).")
        else:
            source = Source(
                module_file=body["source"]["module_file"], source_dir=body["source"]["source_dir"]
            )
        record = await registry.publish(
            request.path_params["name"],
            spec,
            source,
            kind=kind,
            session=body.get("session"),
            tag=str(body.get("tag") or ""),
        )
        return JSONResponse(app_json(record))

    async def build_images(request: Request) -> Response:
        """Build the images of an app manifest, streaming NDJSON build events; the last line is
        {"event": "done"} or {"event": "error", "error": <cove exception name>, "message": ...}.

        A client that goes away does not stop the build: the image still lands in the cache.
        """
        body = await request.json()
        spec = app_spec_from_dict(body["spec"])
        force = bool(body.get("force"))
        root = None
        if "bundle_id" in body:
            root = bundles.root(str(body["bundle_id"]))
        elif request.scope.get("cove.remote"):
            # The steps' paths would name files on the server's disk: for local clients only.
            raise exception.InvalidError("Remote clients must upload a source bundle (bundle_id).")
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def build() -> None:
            try:
                if images is not None:
                    await images.build_app(spec, events.put_nowait, force=force, root=root)
                events.put_nowait({"event": "done"})
            except exception.Error as exc:
                events.put_nowait({"event": "error", "error": type(exc).__name__, "message": str(exc)})
            except Exception as exc:  # a bug must still end the stream with a readable line
                message = f"image build failed: {exc!r}"
                events.put_nowait({"event": "error", "error": "ImageBuildError", "message": message})
            finally:
                events.put_nowait(None)

        task = asyncio.ensure_future(build())
        background.add(task)
        task.add_done_callback(background.discard)

        async def stream() -> AsyncIterator[bytes]:
            while (event := await events.get()) is not None:
                yield (json.dumps(event) + "\n").encode()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def post_bundle(request: Request) -> Response:
        data = await request.body()
        return JSONResponse({"bundle_id": bundles.save(data)})

    async def app_history(request: Request) -> Response:
        versions = registry.history(request.path_params["name"])
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

    async def app_rollback(request: Request) -> Response:
        body = await request.json()
        number = body.get("version")
        record = await registry.rollback(request.path_params["name"], int(number) if number else None)
        return JSONResponse(app_json(record))

    async def create_token(request: Request) -> Response:
        body = await request.json()
        kind: Literal["api", "proxy"] = "proxy" if body.get("kind") == "proxy" else "api"
        token_id, secret = store.create_token(kind)
        return JSONResponse({"id": token_id, "secret": secret, "kind": kind})

    async def list_tokens(request: Request) -> Response:
        return JSONResponse({"tokens": [asdict(t) for t in store.tokens()]})

    async def revoke_token(request: Request) -> Response:
        store.revoke_token(request.path_params["id"])
        return JSONResponse({"revoked": request.path_params["id"]})

    async def stop_app(request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        record = await registry.stop(request.path_params["name"], kind)  # type: ignore[arg-type]
        return JSONResponse(app_json(record))

    async def get_app(request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        return JSONResponse(app_json(registry.get(request.path_params["name"], kind)))  # type: ignore[arg-type]

    async def attach(request: Request) -> Response:
        """Stream an ephemeral app's logs to its `cove serve`; when that client goes, stop the app."""
        name = request.path_params["name"]
        session = request.query_params["session"]
        record = registry.get(name, "ephemeral")
        if record.session != session:
            raise exception.InvalidError(f"session {session!r} does not own app {name!r}")

        async def stream() -> AsyncIterator[bytes]:
            since = float(request.query_params.get("since", "0")) or None
            follower = logs.follow(record.log_key, since=since)
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
                    task = asyncio.ensure_future(registry.stop(name, "ephemeral"))
                    background.add(task)
                    task.add_done_callback(background.discard)

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def app_logs(request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        name = registry.get(request.path_params["name"], kind).log_key  # type: ignore[arg-type]
        tail = int(request.query_params.get("tail", "100"))
        follow = request.query_params.get("follow") in ("1", "true")
        if not follow:
            return JSONResponse({"lines": [asdict(r) for r in logs.recent(name, tail)]})

        async def stream() -> AsyncIterator[bytes]:
            async for record in logs.follow(name, tail):
                yield (json.dumps(asdict(record)) + "\n").encode()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def list_secrets(request: Request) -> Response:
        return JSONResponse({"secrets": [asdict(s) for s in secrets.list()]})

    async def create_secret(request: Request) -> Response:
        body = await request.json()
        values = {str(k): str(v) for k, v in body["values"].items()}
        info = secrets.create(body["name"], values, force=bool(body.get("force")))
        return JSONResponse(asdict(info))

    async def delete_secret(request: Request) -> Response:
        secrets.delete(request.path_params["name"])
        return JSONResponse({"deleted": request.path_params["name"]})

    async def list_containers(request: Request) -> Response:
        app_name = request.query_params.get("app") or None
        if app_name is not None:
            registry.get(app_name)
        items = [
            {
                "app": record.name,
                "kind": record.kind,
                "uptime_s": time.monotonic() - info.started_at,
                **asdict(info),
            }
            for record, info in registry.containers(app_name)
        ]
        return JSONResponse({"containers": items})

    async def stop_container(request: Request) -> Response:
        await registry.stop_container(request.path_params["id"])
        return JSONResponse({"stopped": request.path_params["id"]})

    async def stop_server(request: Request) -> Response:
        request_stop()
        return JSONResponse({"stopping": True})

    routes = [
        Route("/v1/health", guarded(get_health), methods=["GET"]),
        Route("/v1/apps", guarded(list_apps), methods=["GET"]),
        Route("/v1/apps/{name}", guarded(get_app), methods=["GET"]),
        Route("/v1/apps/{kind}/{name}", guarded(put_app), methods=["PUT"]),
        Route("/v1/apps/{name}/stop", guarded(stop_app), methods=["POST"]),
        Route("/v1/apps/{name}/attach", guarded(attach), methods=["GET"]),
        Route("/v1/apps/{name}/logs", guarded(app_logs), methods=["GET"]),
        Route("/v1/apps/{name}/history", guarded(app_history), methods=["GET"]),
        Route("/v1/apps/{name}/rollback", guarded(app_rollback), methods=["POST"]),
        Route("/v1/bundles", guarded(post_bundle), methods=["POST"]),
        Route("/v1/images/build", guarded(build_images), methods=["POST"]),
        Route("/v1/tokens", guarded(create_token), methods=["POST"]),
        Route("/v1/tokens", guarded(list_tokens), methods=["GET"]),
        Route("/v1/tokens/{id}", guarded(revoke_token), methods=["DELETE"]),
        Route("/v1/secrets", guarded(list_secrets), methods=["GET"]),
        Route("/v1/secrets", guarded(create_secret), methods=["POST"]),
        Route("/v1/secrets/{name}", guarded(delete_secret), methods=["DELETE"]),
        Route("/v1/containers", guarded(list_containers), methods=["GET"]),
        Route("/v1/containers/{id}", guarded(stop_container), methods=["DELETE"]),
        Route("/v1/server/stop", guarded(stop_server), methods=["POST"]),
    ]
    return Starlette(routes=[*routes, *extra_routes])
