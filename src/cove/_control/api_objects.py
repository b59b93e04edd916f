"""The control API's routes for Dicts, Queues and Volumes: all under /v1/dicts, /v1/queues, /v1/volumes.

Containers reach these routes too (through their scoped endpoint), so nothing here touches any other
part of the API. Keys and values are the client's pickles, base64 in JSON; the server never unpickles.

    GET    /v1/{kind}                      named objects            POST /v1/{kind}   {"name"}: create
    POST   /v1/{kind}/lookup               {"name", "create_if_missing"} -> {"id", "name"}
    POST   /v1/{kind}/ephemeral            -> {"id"}
    DELETE /v1/{kind}/named/{name}         ?allow_missing=1         DELETE /v1/{kind}/{id}
    POST   /v1/dicts/{id}/{get|contains|put|update|pop|clear}      GET /v1/dicts/{id}/{len|items}
    POST   /v1/queues/{id}/{put|get|clear}                         GET /v1/queues/{id}/{len|items|partitions}
    GET    /v1/volumes/{id}/ls?path=&recursive=   GET|PUT /v1/volumes/{id}/file?path=
    POST   /v1/volumes/{id}/{rm|cp|commit|reload}

A blocking Queue `get`/`put` waits at most `MAX_WAIT_S` per request (clients ask again), on the event
loop without blocking it. Volume file work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cove import exception
from cove._control import volumes as vol
from cove._control.api import error_response
from cove._control.dicts import DictStore
from cove._control.objects import ObjectInfo, ObjectKind, ObjectRegistry
from cove._control.queues import DEFAULT_PARTITION_TTL_S, QueueStore, check_partition
from cove._control.store import Store

#: Longest a single request waits for a Queue item (or room); clients ask again after it.
MAX_WAIT_S = 50.0
#: Largest JSON body (base64 pickles) of one Dict/Queue request.
MAX_JSON_BYTES = 64 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]
_PLURAL: dict[ObjectKind, str] = {"dict": "dicts", "queue": "queues", "volume": "volumes"}


class ObjectService:
    """The stores behind the routes, owned by the server (which closes it on shutdown)."""

    def __init__(self, store: Store, volumes_root: Path) -> None:
        self.registry = ObjectRegistry(store)
        self.dicts = DictStore(store)
        self.queues = QueueStore(store)
        self.volumes_root = volumes_root

    def start(self) -> None:
        """Drop what the last server's ephemeral objects left behind."""
        for info in self.registry.drop_ephemeral():
            if info.kind == "volume":
                vol.remove_dir(self.volumes_root, info.id)

    def close(self) -> None:
        self.queues.close()

    def volume_path(self, name: str, create_if_missing: bool) -> Path:
        """The host directory of Volume `name` (for mounting it into containers)."""
        info = self.registry.lookup("volume", name, create_if_missing=create_if_missing)
        return vol.create_dir(self.volumes_root, info.id)

    async def delete(self, info: ObjectInfo) -> None:
        self.registry.delete(info)
        if info.kind == "queue":
            self.queues.forget(info.id)
        if info.kind == "volume":
            await asyncio.to_thread(vol.remove_dir, self.volumes_root, info.id)


def object_routes(service: ObjectService) -> list[Route]:
    """Routes to add to the control API's Starlette app."""
    registry, dicts, queues = service.registry, service.dicts, service.queues
    routes: list[Route] = []

    for kind, plural in _PLURAL.items():
        routes += _common_routes(service, kind, plural)

    def dict_id(request: Request) -> str:
        return registry.get("dict", request.path_params["id"]).id

    def queue_id(request: Request) -> str:
        return registry.get("queue", request.path_params["id"]).id

    def volume_root(request: Request) -> Path:
        info = registry.get("volume", request.path_params["id"])
        return vol.create_dir(service.volumes_root, info.id)

    # -- Dict ------------------------------------------------------------------------------------

    async def dict_get(request: Request) -> Response:
        body = await _json(request)
        value = dicts.get(dict_id(request), _b64(body["key"]))
        return JSONResponse({"found": value is not None, "value": _text(value)})

    async def dict_contains(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse({"found": dicts.get(dict_id(request), _b64(body["key"])) is not None})

    async def dict_put(request: Request) -> Response:
        body = await _json(request)
        written = dicts.put(
            dict_id(request),
            _b64(body["key"]),
            _b64(body["value"]),
            skip_if_exists=bool(body.get("skip_if_exists")),
        )
        return JSONResponse({"written": written})

    async def dict_update(request: Request) -> Response:
        body = await _json(request)
        dicts.update(dict_id(request), [(_b64(k), _b64(v)) for k, v in body["items"]])
        return JSONResponse({})

    async def dict_pop(request: Request) -> Response:
        body = await _json(request)
        value = dicts.pop(dict_id(request), _b64(body["key"]))
        return JSONResponse({"found": value is not None, "value": _text(value)})

    async def dict_len(request: Request) -> Response:
        return JSONResponse({"len": dicts.length(dict_id(request))})

    async def dict_clear(request: Request) -> Response:
        dicts.clear(dict_id(request))
        return JSONResponse({})

    async def dict_items(request: Request) -> Response:
        after = int(request.query_params.get("after", "0"))
        rows = dicts.page(dict_id(request), after)
        return JSONResponse(
            {"items": [[_text(k), _text(v)] for _, k, v in rows], "next": rows[-1][0] if rows else None}
        )

    routes += [
        Route("/v1/dicts/{id}/get", _guarded(dict_get), methods=["POST"]),
        Route("/v1/dicts/{id}/contains", _guarded(dict_contains), methods=["POST"]),
        Route("/v1/dicts/{id}/put", _guarded(dict_put), methods=["POST"]),
        Route("/v1/dicts/{id}/update", _guarded(dict_update), methods=["POST"]),
        Route("/v1/dicts/{id}/pop", _guarded(dict_pop), methods=["POST"]),
        Route("/v1/dicts/{id}/len", _guarded(dict_len), methods=["GET"]),
        Route("/v1/dicts/{id}/clear", _guarded(dict_clear), methods=["POST"]),
        Route("/v1/dicts/{id}/items", _guarded(dict_items), methods=["GET"]),
    ]

    # -- Queue -----------------------------------------------------------------------------------

    async def queue_put(request: Request) -> Response:
        body = await _json(request)
        ttl_s = _seconds(body.get("partition_ttl", DEFAULT_PARTITION_TTL_S), "partition_ttl")
        if not 0 < ttl_s <= DEFAULT_PARTITION_TTL_S:
            raise exception.InvalidError(
                f"partition_ttl must be more than 0 and at most {DEFAULT_PARTITION_TTL_S:g} s (24 h), "
                f"got {ttl_s:g}."
            )
        put = await queues.put(
            queue_id(request),
            check_partition(body.get("partition")),
            [_b64(v) for v in body["values"]],
            ttl_s,
            min(_seconds(body.get("wait", 0), "wait"), MAX_WAIT_S),
        )
        return JSONResponse({"put": put})

    async def queue_get(request: Request) -> Response:
        body = await _json(request)
        n = int(body.get("n", 1))
        if n < 1:
            raise exception.InvalidError(f"n_values must be at least 1, got {n}.")
        values = await queues.get(
            queue_id(request),
            check_partition(body.get("partition")),
            n,
            min(_seconds(body.get("wait", 0), "wait"), MAX_WAIT_S),
        )
        return JSONResponse({"values": [_text(v) for v in values]})

    async def queue_len(request: Request) -> Response:
        total = request.query_params.get("total") in ("1", "true")
        partition = None if total else check_partition(request.query_params.get("partition") or None)
        return JSONResponse({"len": queues.length(queue_id(request), partition)})

    async def queue_clear(request: Request) -> Response:
        body = await _json(request)
        partition = None if body.get("all") else check_partition(body.get("partition"))
        queues.clear(queue_id(request), partition)
        return JSONResponse({})

    async def queue_items(request: Request) -> Response:
        rows = await queues.page(
            queue_id(request),
            check_partition(request.query_params.get("partition") or None),
            int(request.query_params.get("after", "0")),
            min(_seconds(request.query_params.get("wait", "0"), "wait"), MAX_WAIT_S),
        )
        return JSONResponse({"values": [_text(v) for _, v in rows], "next": rows[-1][0] if rows else None})

    async def queue_partitions(request: Request) -> Response:
        parts = queues.partitions(queue_id(request))
        return JSONResponse({"partitions": [{"partition": p or None, "len": n} for p, n in parts]})

    routes += [
        Route("/v1/queues/{id}/put", _guarded(queue_put), methods=["POST"]),
        Route("/v1/queues/{id}/get", _guarded(queue_get), methods=["POST"]),
        Route("/v1/queues/{id}/len", _guarded(queue_len), methods=["GET"]),
        Route("/v1/queues/{id}/clear", _guarded(queue_clear), methods=["POST"]),
        Route("/v1/queues/{id}/items", _guarded(queue_items), methods=["GET"]),
        Route("/v1/queues/{id}/partitions", _guarded(queue_partitions), methods=["GET"]),
    ]

    # -- Volume ----------------------------------------------------------------------------------

    async def volume_ls(request: Request) -> Response:
        root = volume_root(request)
        recursive = request.query_params.get("recursive") in ("1", "true")
        entries = await asyncio.to_thread(
            vol.listdir, root, request.query_params.get("path", "/"), recursive=recursive
        )
        return JSONResponse({"entries": [e.__dict__ for e in entries]})

    async def volume_read(request: Request) -> Response:
        root = volume_root(request)
        fd = await asyncio.to_thread(vol.open_file, root, request.query_params["path"])

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(vol.read_chunk, fd):
                    yield chunk
            finally:
                os.close(fd)

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def volume_write(request: Request) -> Response:
        root = volume_root(request)
        force = request.query_params.get("force") in ("1", "true")
        upload = await asyncio.to_thread(vol.Upload, root, request.query_params["path"], force=force)
        try:
            async for chunk in request.stream():
                upload.write(chunk)  # one chunk of a socket read: a short write
            await asyncio.to_thread(upload.commit)
        except BaseException:
            upload.abort()
            raise
        return JSONResponse({"path": upload.path})

    async def volume_rm(request: Request) -> Response:
        body = await _json(request)
        await asyncio.to_thread(
            vol.remove, volume_root(request), str(body["path"]), recursive=bool(body.get("recursive"))
        )
        return JSONResponse({})

    async def volume_cp(request: Request) -> Response:
        body = await _json(request)
        await asyncio.to_thread(
            vol.copy,
            volume_root(request),
            [str(s) for s in body["sources"]],
            str(body["destination"]),
            recursive=bool(body.get("recursive")),
        )
        return JSONResponse({})

    async def volume_sync(request: Request) -> Response:
        # One machine, one directory: writes are visible to every reader as soon as they are made,
        # so commit and reload only check that the Volume still exists.
        volume_root(request)
        return JSONResponse({})

    routes += [
        Route("/v1/volumes/{id}/ls", _guarded(volume_ls), methods=["GET"]),
        Route("/v1/volumes/{id}/file", _guarded(volume_read), methods=["GET"]),
        Route("/v1/volumes/{id}/file", _guarded(volume_write), methods=["PUT"]),
        Route("/v1/volumes/{id}/rm", _guarded(volume_rm), methods=["POST"]),
        Route("/v1/volumes/{id}/cp", _guarded(volume_cp), methods=["POST"]),
        Route("/v1/volumes/{id}/commit", _guarded(volume_sync), methods=["POST"]),
        Route("/v1/volumes/{id}/reload", _guarded(volume_sync), methods=["POST"]),
    ]
    return routes


def _common_routes(service: ObjectService, kind: ObjectKind, plural: str) -> list[Route]:
    registry = service.registry

    def describe(info: ObjectInfo) -> dict[str, Any]:
        return {"id": info.id, "name": info.name, "created_at": info.created_at}

    async def list_objects(request: Request) -> Response:
        return JSONResponse({"objects": [describe(i) for i in registry.list(kind)]})

    async def create(request: Request) -> Response:
        body = await _json(request)
        info = registry.create(kind, body["name"])
        if kind == "volume":
            vol.create_dir(service.volumes_root, info.id)
        return JSONResponse(describe(info))

    async def lookup(request: Request) -> Response:
        body = await _json(request)
        info = registry.lookup(kind, body["name"], create_if_missing=bool(body.get("create_if_missing")))
        return JSONResponse(describe(info))

    async def ephemeral(request: Request) -> Response:
        return JSONResponse(describe(registry.ephemeral(kind)))

    async def delete_named(request: Request) -> Response:
        allow_missing = request.query_params.get("allow_missing") in ("1", "true")
        try:
            info = registry.lookup(kind, request.path_params["name"], create_if_missing=False)
        except exception.NotFoundError:
            if allow_missing:
                return JSONResponse({"deleted": None})
            raise
        await service.delete(info)
        return JSONResponse({"deleted": info.id})

    async def delete_by_id(request: Request) -> Response:
        info = registry.get(kind, request.path_params["id"])
        await service.delete(info)
        return JSONResponse({"deleted": info.id})

    return [
        Route(f"/v1/{plural}", _guarded(list_objects), methods=["GET"]),
        Route(f"/v1/{plural}", _guarded(create), methods=["POST"]),
        Route(f"/v1/{plural}/lookup", _guarded(lookup), methods=["POST"]),
        Route(f"/v1/{plural}/ephemeral", _guarded(ephemeral), methods=["POST"]),
        Route(f"/v1/{plural}/named/{{name}}", _guarded(delete_named), methods=["DELETE"]),
        Route(f"/v1/{plural}/{{id}}", _guarded(delete_by_id), methods=["DELETE"]),
    ]


async def _json(request: Request) -> Any:
    """The JSON body, refused before it is read when it is over `MAX_JSON_BYTES`."""
    length = request.headers.get("content-length")
    if length is not None and int(length) > MAX_JSON_BYTES:
        raise exception.InvalidError(
            f"The request body is {int(length)} bytes, over the {MAX_JSON_BYTES} byte limit of one "
            "Dict/Queue request. Send fewer items at once (e.g. smaller update()/put_many() batches)."
        )
    return await request.json()


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise exception.InvalidError(f"expected a base64 string, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)


def _text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _seconds(value: object, name: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise exception.InvalidError(f"{name} must be a number of seconds >= 0, got {value!r}.")
    return seconds


def _guarded(handler: Handler) -> Handler:
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except exception.Error as exc:
            return error_response(exc)
        except sqlite3.IntegrityError:  # the object was deleted while this request waited
            return error_response(exception.NotFoundError("The object was deleted during this request."))
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse(
                {"error": "InvalidError", "message": f"malformed request: {exc!r}"}, status_code=400
            )

    return wrapper


__all__ = ["MAX_WAIT_S", "ObjectService", "object_routes"]
