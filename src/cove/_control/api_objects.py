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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cove import exception
from cove._control import volumes as vol
from cove._control.api_errors import Handler, S, ServiceHandler, Translate, bind
from cove._control.dicts import DictStore
from cove._control.objects import ObjectInfo, ObjectKind, ObjectRegistry
from cove._control.queues import DEFAULT_PARTITION_TTL_S, QueueStore, check_partition
from cove._control.store import Store

#: Longest a single request waits for a Queue item (or room); clients ask again after it.
MAX_WAIT_S = 50.0
#: Largest JSON body (base64 pickles) of one Dict/Queue request.
MAX_JSON_BYTES = 64 * 1024 * 1024

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


@dataclass(frozen=True)
class _OfKind:
    """The routes every kind of object has (list, create, lookup, delete) work on one kind."""

    service: ObjectService
    kind: ObjectKind


def _deleted(exc: Exception) -> exception.Error:
    return exception.NotFoundError("The object was deleted during this request.")


#: Guarded as every API route; an object deleted while a request waited is a 404.
_FOREIGN: Mapping[type[Exception], Translate] = MappingProxyType({sqlite3.IntegrityError: _deleted})


def _bind(handler: ServiceHandler[S], services: S) -> Handler:
    return bind(handler, services, foreign=_FOREIGN)


def object_routes(objects: ObjectService) -> list[Route]:
    """Routes to add to the control API's Starlette app."""
    routes: list[Route] = []
    for kind, plural in _PLURAL.items():
        routes += _common_routes(_OfKind(objects, kind), plural)
    return [
        *routes,
        Route("/v1/dicts/{id}/get", _bind(dict_get, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/contains", _bind(dict_contains, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/put", _bind(dict_put, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/update", _bind(dict_update, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/pop", _bind(dict_pop, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/len", _bind(dict_len, objects), methods=["GET"]),
        Route("/v1/dicts/{id}/clear", _bind(dict_clear, objects), methods=["POST"]),
        Route("/v1/dicts/{id}/items", _bind(dict_items, objects), methods=["GET"]),
        Route("/v1/queues/{id}/put", _bind(queue_put, objects), methods=["POST"]),
        Route("/v1/queues/{id}/get", _bind(queue_get, objects), methods=["POST"]),
        Route("/v1/queues/{id}/len", _bind(queue_len, objects), methods=["GET"]),
        Route("/v1/queues/{id}/clear", _bind(queue_clear, objects), methods=["POST"]),
        Route("/v1/queues/{id}/items", _bind(queue_items, objects), methods=["GET"]),
        Route("/v1/queues/{id}/partitions", _bind(queue_partitions, objects), methods=["GET"]),
        Route("/v1/volumes/{id}/ls", _bind(volume_ls, objects), methods=["GET"]),
        Route("/v1/volumes/{id}/file", _bind(volume_read, objects), methods=["GET"]),
        Route("/v1/volumes/{id}/file", _bind(volume_write, objects), methods=["PUT"]),
        Route("/v1/volumes/{id}/rm", _bind(volume_rm, objects), methods=["POST"]),
        Route("/v1/volumes/{id}/cp", _bind(volume_cp, objects), methods=["POST"]),
        Route("/v1/volumes/{id}/commit", _bind(volume_sync, objects), methods=["POST"]),
        Route("/v1/volumes/{id}/reload", _bind(volume_sync, objects), methods=["POST"]),
    ]


def _dict_id(objects: ObjectService, request: Request) -> str:
    return objects.registry.get("dict", request.path_params["id"]).id


def _queue_id(objects: ObjectService, request: Request) -> str:
    return objects.registry.get("queue", request.path_params["id"]).id


def _volume_root(objects: ObjectService, request: Request) -> Path:
    info = objects.registry.get("volume", request.path_params["id"])
    return vol.create_dir(objects.volumes_root, info.id)


# -- Dict ------------------------------------------------------------------------------------


async def dict_get(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    value = objects.dicts.get(_dict_id(objects, request), _b64(body["key"]))
    return JSONResponse({"found": value is not None, "value": _text(value)})


async def dict_contains(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    return JSONResponse(
        {"found": objects.dicts.get(_dict_id(objects, request), _b64(body["key"])) is not None}
    )


async def dict_put(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    written = objects.dicts.put(
        _dict_id(objects, request),
        _b64(body["key"]),
        _b64(body["value"]),
        skip_if_exists=bool(body.get("skip_if_exists")),
    )
    return JSONResponse({"written": written})


async def dict_update(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    objects.dicts.update(_dict_id(objects, request), [(_b64(k), _b64(v)) for k, v in body["items"]])
    return JSONResponse({})


async def dict_pop(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    value = objects.dicts.pop(_dict_id(objects, request), _b64(body["key"]))
    return JSONResponse({"found": value is not None, "value": _text(value)})


async def dict_len(objects: ObjectService, request: Request) -> Response:
    return JSONResponse({"len": objects.dicts.length(_dict_id(objects, request))})


async def dict_clear(objects: ObjectService, request: Request) -> Response:
    objects.dicts.clear(_dict_id(objects, request))
    return JSONResponse({})


async def dict_items(objects: ObjectService, request: Request) -> Response:
    after = int(request.query_params.get("after", "0"))
    rows = objects.dicts.page(_dict_id(objects, request), after)
    return JSONResponse(
        {"items": [[_text(k), _text(v)] for _, k, v in rows], "next": rows[-1][0] if rows else None}
    )


# -- Queue -----------------------------------------------------------------------------------


async def queue_put(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    ttl_s = _seconds(body.get("partition_ttl", DEFAULT_PARTITION_TTL_S), "partition_ttl")
    if not 0 < ttl_s <= DEFAULT_PARTITION_TTL_S:
        raise exception.InvalidError(
            f"partition_ttl must be more than 0 and at most {DEFAULT_PARTITION_TTL_S:g} s (24 h), "
            f"got {ttl_s:g}."
        )
    put = await objects.queues.put(
        _queue_id(objects, request),
        check_partition(body.get("partition")),
        [_b64(v) for v in body["values"]],
        ttl_s,
        min(_seconds(body.get("wait", 0), "wait"), MAX_WAIT_S),
    )
    return JSONResponse({"put": put})


async def queue_get(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    n = int(body.get("n", 1))
    if n < 1:
        raise exception.InvalidError(f"n_values must be at least 1, got {n}.")
    values = await objects.queues.get(
        _queue_id(objects, request),
        check_partition(body.get("partition")),
        n,
        min(_seconds(body.get("wait", 0), "wait"), MAX_WAIT_S),
    )
    return JSONResponse({"values": [_text(v) for v in values]})


async def queue_len(objects: ObjectService, request: Request) -> Response:
    total = request.query_params.get("total") in ("1", "true")
    partition = None if total else check_partition(request.query_params.get("partition") or None)
    return JSONResponse({"len": objects.queues.length(_queue_id(objects, request), partition)})


async def queue_clear(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    partition = None if body.get("all") else check_partition(body.get("partition"))
    objects.queues.clear(_queue_id(objects, request), partition)
    return JSONResponse({})


async def queue_items(objects: ObjectService, request: Request) -> Response:
    rows = await objects.queues.page(
        _queue_id(objects, request),
        check_partition(request.query_params.get("partition") or None),
        int(request.query_params.get("after", "0")),
        min(_seconds(request.query_params.get("wait", "0"), "wait"), MAX_WAIT_S),
    )
    return JSONResponse({"values": [_text(v) for _, v in rows], "next": rows[-1][0] if rows else None})


async def queue_partitions(objects: ObjectService, request: Request) -> Response:
    parts = objects.queues.partitions(_queue_id(objects, request))
    return JSONResponse({"partitions": [{"partition": p or None, "len": n} for p, n in parts]})


# -- Volume ----------------------------------------------------------------------------------


async def volume_ls(objects: ObjectService, request: Request) -> Response:
    root = _volume_root(objects, request)
    recursive = request.query_params.get("recursive") in ("1", "true")
    entries = await asyncio.to_thread(
        vol.listdir, root, request.query_params.get("path", "/"), recursive=recursive
    )
    return JSONResponse({"entries": [e.__dict__ for e in entries]})


async def volume_read(objects: ObjectService, request: Request) -> Response:
    root = _volume_root(objects, request)
    fd = await asyncio.to_thread(vol.open_file, root, request.query_params["path"])

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(vol.read_chunk, fd):
                yield chunk
        finally:
            os.close(fd)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def volume_write(objects: ObjectService, request: Request) -> Response:
    root = _volume_root(objects, request)
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


async def volume_rm(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    await asyncio.to_thread(
        vol.remove, _volume_root(objects, request), str(body["path"]), recursive=bool(body.get("recursive"))
    )
    return JSONResponse({})


async def volume_cp(objects: ObjectService, request: Request) -> Response:
    body = await _json(request)
    await asyncio.to_thread(
        vol.copy,
        _volume_root(objects, request),
        [str(s) for s in body["sources"]],
        str(body["destination"]),
        recursive=bool(body.get("recursive")),
    )
    return JSONResponse({})


async def volume_sync(objects: ObjectService, request: Request) -> Response:
    # One machine, one directory: writes are visible to every reader as soon as they are made,
    # so commit and reload only check that the Volume still exists.
    _volume_root(objects, request)
    return JSONResponse({})


def _describe(info: ObjectInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "created_at": info.created_at}


async def list_objects(of: _OfKind, request: Request) -> Response:
    return JSONResponse({"objects": [_describe(i) for i in of.service.registry.list(of.kind)]})


async def create(of: _OfKind, request: Request) -> Response:
    body = await _json(request)
    info = of.service.registry.create(of.kind, body["name"])
    if of.kind == "volume":
        vol.create_dir(of.service.volumes_root, info.id)
    return JSONResponse(_describe(info))


async def lookup(of: _OfKind, request: Request) -> Response:
    body = await _json(request)
    info = of.service.registry.lookup(
        of.kind, body["name"], create_if_missing=bool(body.get("create_if_missing"))
    )
    return JSONResponse(_describe(info))


async def ephemeral(of: _OfKind, request: Request) -> Response:
    return JSONResponse(_describe(of.service.registry.ephemeral(of.kind)))


async def delete_named(of: _OfKind, request: Request) -> Response:
    allow_missing = request.query_params.get("allow_missing") in ("1", "true")
    try:
        info = of.service.registry.lookup(of.kind, request.path_params["name"], create_if_missing=False)
    except exception.NotFoundError:
        if allow_missing:
            return JSONResponse({"deleted": None})
        raise
    await of.service.delete(info)
    return JSONResponse({"deleted": info.id})


async def delete_by_id(of: _OfKind, request: Request) -> Response:
    info = of.service.registry.get(of.kind, request.path_params["id"])
    await of.service.delete(info)
    return JSONResponse({"deleted": info.id})


def _common_routes(of: _OfKind, plural: str) -> list[Route]:
    return [
        Route(f"/v1/{plural}", _bind(list_objects, of), methods=["GET"]),
        Route(f"/v1/{plural}", _bind(create, of), methods=["POST"]),
        Route(f"/v1/{plural}/lookup", _bind(lookup, of), methods=["POST"]),
        Route(f"/v1/{plural}/ephemeral", _bind(ephemeral, of), methods=["POST"]),
        Route(f"/v1/{plural}/named/{{name}}", _bind(delete_named, of), methods=["DELETE"]),
        Route(f"/v1/{plural}/{{id}}", _bind(delete_by_id, of), methods=["DELETE"]),
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


__all__ = ["MAX_WAIT_S", "ObjectService", "object_routes"]
