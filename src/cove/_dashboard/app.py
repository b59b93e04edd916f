"""The dashboard's ASGI app: pages (server-rendered), live logs (SSE), chart data, actions, `/metrics`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cove import exception
from cove._control.api_errors import Handler, ServiceHandler, bind, status_of
from cove._control.apps import AppRegistry
from cove._control.logs import LogHub
from cove._control.records import AppKind, AppRecord, AppState
from cove._control.store import Store
from cove._dashboard import exposition
from cove._dashboard.access import CSRF_FIELD, Access
from cove._gateway.metrics import STATUS_CLASSES, GatewayMetrics, quantile

_HERE = Path(__file__).parent
#: Log lines sent first when a live view opens.
_LOG_BACKLOG = 200
#: Sent on every page: no framing, no foreign scripts, no sniffing (the pages hold a CSRF token).
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True)
class DashboardServices:
    """What the dashboard's handlers read and act on, and its templates."""

    registry: AppRegistry
    logs: LogHub
    store: Store
    metrics: GatewayMetrics
    access: Access
    templates: jinja2.Environment


def build_app(
    registry: AppRegistry, logs: LogHub, store: Store, metrics: GatewayMetrics, access: Access
) -> ASGIApp:
    """The Starlette app behind `dashboard.<base domain>`, wrapped in the access rules."""
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["when"] = _when
    templates.filters["ago"] = _ago
    d = DashboardServices(registry, logs, store, metrics, access, templates)
    routes = [
        Route("/", _shown(apps_page, d)),
        Route("/apps/{kind}/{name}", _shown(app_page, d)),
        Route("/apps/{kind}/{name}/stop", _action(stop_app, d), methods=["POST"]),
        Route("/apps/{kind}/{name}/rollback", _action(rollback_app, d), methods=["POST"]),
        Route("/apps/{kind}/{name}/traffic/{function}", _shown(traffic_page, d)),
        Route("/containers", _shown(containers_page, d)),
        Route("/containers/{container}/stop", _action(stop_container, d), methods=["POST"]),
        Route("/logs", _shown(logs_page, d)),
        Route("/logs/stream", _shown(log_stream, d)),
        Route("/api/traffic/{kind}/{name}/{function}", _shown(traffic_data, d)),
        Route("/metrics", _shown(metrics_text, d)),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return _Guard(Starlette(routes=routes), access)


def _page(
    d: DashboardServices, template: str, request: Request, status: int = 200, **context: Any
) -> HTMLResponse:
    html = d.templates.get_template(template).render(
        csrf_field=CSRF_FIELD, csrf_token=d.access.csrf_token, path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status)


def _shown(handler: ServiceHandler[DashboardServices], d: DashboardServices) -> Handler:
    """A page or a data view: a Cove error is answered with the error page."""

    def error_page(request: Request, exc: exception.Error) -> Response:
        title = "Not found" if isinstance(exc, exception.NotFoundError) else "Error"
        return _page(d, "error.html", request, title=title, message=str(exc), status=status_of(exc))

    return bind(handler, d, error_page)


def _action(handler: ServiceHandler[DashboardServices], d: DashboardServices) -> Handler:
    """A POST that changes something: token or CSRF check, Cove errors shown, then 303 back."""

    async def checked(d: DashboardServices, request: Request) -> Response:
        form = await _form(request)
        verdict = d.access.can_act(request, form.get(CSRF_FIELD))
        if verdict == "forbidden":
            return PlainTextResponse("cove: actions need an API token (cove token create)", 403)
        if verdict == "csrf":
            return PlainTextResponse(
                "cove: refused a cross-site or stale form; reload the dashboard page and retry", 403
            )
        return await handler(d, request)

    return bind(checked, d, _action_error)


def _action_error(request: Request, exc: exception.Error) -> Response:
    return PlainTextResponse(f"cove: {exc}", 404 if isinstance(exc, exception.NotFoundError) else 400)


# -- pages


async def apps_page(d: DashboardServices, request: Request) -> Response:
    rows = [_app_row(record, d.metrics) for record in _sorted(d.registry.apps())]
    return _page(d, "apps.html", request, title="Apps", apps=rows)


async def app_page(d: DashboardServices, request: Request) -> Response:
    record = _record(d.registry, request)
    history = [
        {
            "number": v.number,
            "tag": v.tag,
            "deployed_by": v.deployed_by,
            "rollback_of": v.rollback_of,
            "created_at": v.created_at,
            "current": v.number == record.versions,
        }
        for v in d.store.versions(record.kind, record.name)
    ]
    functions = _functions(record, d.metrics)
    return _page(
        d,
        "app.html",
        request,
        title=f"App {record.name}",
        app=_app_row(record, d.metrics),
        functions=functions,
        history=list(reversed(history)),
    )


async def containers_page(d: DashboardServices, request: Request) -> Response:
    rows = []
    for record, info in d.registry.containers(request.query_params.get("app") or None):
        rows.append(
            {
                "id": info.id,
                "app": record.name,
                "kind": record.kind,
                "function": info.function,
                "state": info.state,
                "started_at": time.time() - (time.monotonic() - info.started_at),
                "in_flight": info.in_flight,
                "served": info.served,
                "memory": _memory(info.id),
            }
        )
    return _page(d, "containers.html", request, title="Containers", containers=rows)


async def logs_page(d: DashboardServices, request: Request) -> Response:
    records = _sorted(d.registry.apps())
    chosen = _chosen_app(records, request)
    functions: list[str] = []
    containers: list[str] = []
    if chosen is not None and chosen.current is not None:
        functions = [f.tag for f in chosen.current.spec.functions]
        containers = sorted({r.container for r in d.logs.recent(chosen.log_key) if r.container != "-"})
    q = request.query_params
    selected = {"function": q.get("function", ""), "container": q.get("container", "")}
    stream_query = ""
    if chosen is not None:
        stream_query = urlencode({"app": chosen.name, "kind": chosen.kind, **selected})
    return _page(
        d,
        "logs.html",
        request,
        title="Logs",
        apps=records,
        chosen=chosen,
        functions=functions,
        containers=containers,
        selected=selected,
        stream_url=f"/logs/stream?{stream_query}" if stream_query else "",
    )


async def traffic_page(d: DashboardServices, request: Request) -> Response:
    record = _record(d.registry, request)
    tag = request.path_params["function"]
    if record.current is None or tag not in {f.tag for f in record.current.spec.functions}:
        raise exception.NotFoundError(f"App {record.name!r} has no function {tag!r}.")
    row = next(f for f in _functions(record, d.metrics) if f["tag"] == tag)
    return _page(
        d,
        "traffic.html",
        request,
        title=f"Traffic of {record.name} / {tag}",
        app=_app_row(record, d.metrics),
        function=row,
        data_url=f"/api/traffic/{record.kind}/{record.name}/{tag}",
    )


# -- data


async def traffic_data(d: DashboardServices, request: Request) -> Response:
    record = _record(d.registry, request)
    figures = d.metrics.lookup(record.name, request.path_params["function"])
    if figures is None:
        raise exception.NotFoundError("no traffic figures for this function (it has no URL)")
    series = figures.series()
    data = asdict(series)
    data["status_classes"] = list(STATUS_CLASSES)
    data["requests_total"] = figures.requests_total
    data["cold_starts_total"] = figures.cold_starts
    return JSONResponse(data)


async def log_stream(d: DashboardServices, request: Request) -> Response:
    q = request.query_params
    kind = q.get("kind") or None
    record = d.registry.get(q.get("app", ""), kind if kind in ("deployed", "ephemeral") else None)  # type: ignore[arg-type]
    function, container = q.get("function") or None, q.get("container") or None

    async def events() -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        async for item in d.logs.follow(record.log_key, tail=_LOG_BACKLOG):
            if function is not None and item.function not in (function, "-"):
                continue
            if container is not None and item.container != container:
                continue
            yield f"data: {item.to_json()}\n\n"
        yield "event: end\ndata: {}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})


async def metrics_text(d: DashboardServices, request: Request) -> Response:
    gauges: dict[tuple[str, str], tuple[int, int, int]] = {}
    for record in d.registry.apps():
        if record.current is None or record.state is AppState.STOPPED:
            continue
        for tag, pool in record.current.pools.items():
            infos = pool.containers()
            gauges[(record.name, tag)] = (
                pool.container_count,
                sum(i.in_flight for i in infos),
                pool.queued,
            )
    text = exposition.render(d.metrics.all(), gauges)
    return PlainTextResponse(text, media_type=exposition.CONTENT_TYPE)


# -- actions


async def stop_app(d: DashboardServices, request: Request) -> Response:
    record = _record(d.registry, request)
    await d.registry.stop(record.name, record.kind)
    return RedirectResponse(f"/apps/{record.kind}/{record.name}", 303)


async def rollback_app(d: DashboardServices, request: Request) -> Response:
    record = _record(d.registry, request)
    raw = (await _form(request)).get("version", "")
    number = int(raw) if raw.isdigit() else None
    await d.registry.rollback(record.name, number)
    return RedirectResponse(f"/apps/{record.kind}/{record.name}", 303)


async def stop_container(d: DashboardServices, request: Request) -> Response:
    await d.registry.stop_container(request.path_params["container"])
    return RedirectResponse("/containers", 303)


class _Guard:
    """Refuses readers the access rules do not allow; adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self._app = app
        self._access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if not self._access.can_read(Request(scope)):
            response = PlainTextResponse(
                "cove: the dashboard answers loopback clients; elsewhere send "
                "`Authorization: Bearer <token>` (cove token create)",
                403,
                headers=_SECURITY_HEADERS,
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_with_headers)


# -- view data (plain dicts for the templates)


async def _form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (the dashboard's forms post nothing else)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _sorted(records: list[AppRecord]) -> list[AppRecord]:
    return sorted(records, key=lambda r: (r.state is AppState.STOPPED, r.name, r.kind))


def _record(registry: AppRegistry, request: Request) -> AppRecord:
    kind = request.path_params["kind"]
    if kind not in ("deployed", "ephemeral"):
        raise exception.NotFoundError(f"No app kind {kind!r}: use deployed or ephemeral.")
    app_kind: AppKind = "deployed" if kind == "deployed" else "ephemeral"
    return registry.get(request.path_params["name"], app_kind)


def _chosen_app(records: list[AppRecord], request: Request) -> AppRecord | None:
    name, kind = request.query_params.get("app"), request.query_params.get("kind")
    for record in records:
        if record.name == name and (not kind or record.kind == kind):
            return record
    return records[0] if records and not name else None


def _app_row(record: AppRecord, metrics: GatewayMetrics) -> dict[str, Any]:
    version = record.current
    endpoints = version.endpoints if version is not None else ()
    requests = 0
    for endpoint in endpoints:
        figures = metrics.lookup(record.name, endpoint.tag)
        requests += figures.requests_total if figures is not None else 0
    return {
        "name": record.name,
        "kind": record.kind,
        "state": "stopped" if record.state is AppState.STOPPED else record.kind,
        "running": record.state is AppState.RUNNING,
        "version": version.number if version is not None else 0,
        "containers": record.container_count(),
        "deployed_at": version.created_at if version is not None else record.created_at,
        "urls": [e.url for e in endpoints],
        "requests": requests,
        "path": f"/apps/{record.kind}/{record.name}",
    }


def _functions(record: AppRecord, metrics: GatewayMetrics) -> list[dict[str, Any]]:
    version = record.current
    if version is None:
        return []
    endpoints = {e.tag: e for e in version.endpoints}
    rows = []
    for fn in version.spec.functions:
        endpoint = endpoints.get(fn.tag)
        figures = metrics.lookup(record.name, fn.tag)
        pool = version.pools.get(fn.tag)
        hist = figures.latency_buckets if figures is not None else []
        rows.append(
            {
                "tag": fn.tag,
                "url": endpoint.url if endpoint is not None else "",
                "kind": endpoint.kind if endpoint is not None else "function",
                "proxy_auth": endpoint.requires_proxy_auth if endpoint is not None else False,
                "min_containers": fn.min_containers,
                "max_containers": fn.max_containers,
                "buffer_containers": fn.buffer_containers,
                "max_inputs": fn.max_inputs,
                "target_inputs": fn.effective_target_inputs,
                "scaledown_window_s": fn.scaledown_window_s,
                "timeout_s": fn.timeout_s,
                "secrets": [getattr(s, "name", str(s)) for s in fn.secrets],  # names, never values
                "containers": pool.container_count if pool is not None else 0,
                "queued": pool.queued if pool is not None else 0,
                "requests": figures.requests_total if figures is not None else 0,
                "p50_ms": _ms(quantile(hist, 0.5)) if hist else None,
                "p99_ms": _ms(quantile(hist, 0.99)) if hist else None,
                "traffic_path": f"/apps/{record.kind}/{record.name}/traffic/{fn.tag}" if figures else "",
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _memory(container_id: str) -> int | None:
    """Bytes in use by a container that has a cgroup (containers with cpu=/memory= limits)."""
    for root in (Path("/sys/fs/cgroup/cove"), Path("/sys/fs/cgroup/memory/cove")):
        for name in ("memory.current", "memory.usage_in_bytes"):
            try:
                return int((root / container_id / name).read_text())
            except (OSError, ValueError):
                continue
    return None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _ago(epoch: float) -> str:
    seconds = max(0, int(time.time() - epoch))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"
