"""The web decorators: `@fastapi_endpoint`, `@asgi_app`, `@wsgi_app`, `@web_server`, `http_server`.

Each records a `WebSpec` on a `PartialFunction` (see `cove._partial`) that `@app.function` or
`@app.cls`, applied outermost, turns into a `FunctionSpec`. Every check runs at decoration time and
raises `cove.exception.InvalidError` with the fix. The other decorators below `@app.function`
(`@concurrent`, `@method`, `@batched`, `@enter`, `@exit`, `@sessioned`) live in `cove._modifiers`
and are importable from here too, as they always were.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import ParamSpec, TypeVar, cast

from cove._labels import validate_user_label
from cove._modifiers import batched, concurrent, enter, exit, method, sessioned
from cove._partial import (
    STREAMING_HINT,
    Flags,
    PartialFunction,
    check_bool,
    is_generator_function,
    name_of,
    reject_positional,
    required_params,
    unwrap,
)
from cove._spec import WebKind, WebSpec
from cove.exception import InvalidError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_HTTP_METHOD_RE = re.compile(r"^[A-Za-z]+$")
_HOSTNAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def _parse_label(decorator: str, label: object) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidError(f"@cove.{decorator}(label=...) must be a string such as 'my-api', got {label!r}.")
    return validate_user_label(label)


def _parse_custom_domains(decorator: str, value: Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        raise InvalidError(
            f"custom_domains must be a list of host names, not the string {value!r}. "
            f"Use @cove.{decorator}(custom_domains=[{value!r}])."
        )
    domains: list[str] = []
    for domain in value:
        if not isinstance(domain, str):
            raise InvalidError(f"custom_domains entries must be host names (str), got {domain!r}.")
        host = domain.strip().rstrip(".").lower()
        if not _HOSTNAME_RE.match(host):
            raise InvalidError(
                f"Invalid custom domain {domain!r}: give a host name such as 'api.example.com' "
                "(no scheme, port or path)."
            )
        domains.append(host)
    return tuple(domains)


def _web_wrapper(decorator: str, web: WebSpec) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    factory_kind = {"asgi_app": "ASGI app", "wsgi_app": "WSGI app", "web_server": "Web server"}.get(web.kind)

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = unwrap(decorator, target)
        name = name_of(raw_f)
        if partial.flags & Flags.CALLABLE:
            raise InvalidError(
                f"Callable decorators cannot be combined with web interface decorators on {name!r}: "
                f"remove @cove.method/@cove.batched or @cove.{decorator}."
            )
        if partial.flags & Flags.lifecycle():
            raise InvalidError(
                f"Lifecycle decorators (@cove.enter/@cove.exit) cannot be combined with @cove.{decorator} "
                f"on {name!r}. Use a separate method for each."
            )
        if partial.web is not None:
            raise InvalidError(
                f"Cannot set `web` twice on {name!r}: it is already a @cove.{partial.web.kind}. "
                "A function serves one web interface; remove one of the decorators."
            )
        if is_generator_function(raw_f):
            raise InvalidError(f"{name!r} is a generator. {STREAMING_HINT}")
        if factory_kind is not None:
            if inspect.iscoroutinefunction(raw_f):
                raise InvalidError(
                    f"{factory_kind} function {name!r} is an async function. Only sync Python functions "
                    "are supported: make it a plain `def` that returns the app (or starts the server)."
                )
            required = required_params(raw_f)
            if required:
                raise InvalidError(
                    f"{factory_kind} function {name!r} can't have parameters (it has {', '.join(required)}): "
                    "Cove calls it once per container with no arguments. Remove the parameters."
                )
        return cast("PartialFunction[P, R]", replace(partial, flags=partial.flags | Flags.WEB, web=web))

    return wrapper


def fastapi_endpoint(
    _warn_parentheses_missing: object = None,
    *,
    method: str = "GET",
    label: str | None = None,
    docs: bool = False,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Serve a function as a one-route FastAPI app at `/` (query, JSON body and responses as FastAPI).

    ```python
    @app.function()
    @cove.fastapi_endpoint(method="POST")
    def square(item: dict):
        return {"square": item["x"] ** 2}
    ```
    """
    return _fastapi_like(
        "fastapi_endpoint",
        _warn_parentheses_missing,
        method,
        label,
        docs,
        custom_domains,
        requires_proxy_auth,
    )


def web_endpoint(
    _warn_parentheses_missing: object = None,
    *,
    method: str = "GET",
    label: str | None = None,
    docs: bool = False,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
    wait_for_response: bool = True,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Deprecated name of `fastapi_endpoint`; works the same and warns."""
    decorator = _fastapi_like(
        "web_endpoint", _warn_parentheses_missing, method, label, docs, custom_domains, requires_proxy_auth
    )
    if wait_for_response is not True:
        raise InvalidError(
            "@cove.web_endpoint(wait_for_response=False) is not supported (Modal removed it on 2025-03-03). "
            "Remove the argument; for long jobs, spawn the work and return a call id to poll."
        )
    warnings.warn(
        "`@web_endpoint` is deprecated (2025-03-05): it has been renamed to `@fastapi_endpoint`. "
        "Use `@cove.fastapi_endpoint(...)` (or `from modal import fastapi_endpoint`) instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return decorator


def _fastapi_like(
    decorator: str,
    positional: object,
    method: object,
    label: object,
    docs: object,
    custom_domains: Iterable[str] | None,
    requires_proxy_auth: object,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    reject_positional(decorator, positional, str_keyword="method")
    if not isinstance(method, str) or not _HTTP_METHOD_RE.match(method):
        raise InvalidError(
            f"@cove.{decorator}(method=...) must be one HTTP verb such as 'POST', got {method!r}. "
            "To serve several methods or paths, return your own FastAPI app from @cove.asgi_app()."
        )
    web = WebSpec(
        kind="fastapi_endpoint",
        method=method.upper(),
        label=_parse_label(decorator, label),
        docs=check_bool(decorator, "docs", docs),
        custom_domains=_parse_custom_domains(decorator, custom_domains),
        requires_proxy_auth=check_bool(decorator, "requires_proxy_auth", requires_proxy_auth),
    )
    return _web_wrapper(decorator, web)


def _app_factory(
    kind: WebKind,
    positional: object,
    label: object,
    custom_domains: Iterable[str] | None,
    requires_proxy_auth: object,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    reject_positional(kind, positional, str_keyword="label")
    web = WebSpec(
        kind=kind,
        label=_parse_label(kind, label),
        custom_domains=_parse_custom_domains(kind, custom_domains),
        requires_proxy_auth=check_bool(kind, "requires_proxy_auth", requires_proxy_auth),
    )
    return _web_wrapper(kind, web)


def asgi_app(
    _warn_parentheses_missing: object = None,
    *,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Serve the ASGI app (FastAPI, Starlette, ...) that a sync, argument-less function returns."""
    return _app_factory("asgi_app", _warn_parentheses_missing, label, custom_domains, requires_proxy_auth)


def wsgi_app(
    _warn_parentheses_missing: object = None,
    *,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Serve the WSGI app (Flask, Django, ...) that a sync, argument-less function returns."""
    return _app_factory("wsgi_app", _warn_parentheses_missing, label, custom_domains, requires_proxy_auth)


def web_server(
    port: int,
    *,
    startup_timeout: float = 5.0,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Relay requests to a server that the function starts on `port` (bound to 0.0.0.0)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidError(
            f"First argument of @web_server must be a local port, such as @web_server(8000). Got {port!r}."
        )
    if (
        isinstance(startup_timeout, bool)
        or not isinstance(startup_timeout, (int, float))
        or startup_timeout <= 0
    ):
        raise InvalidError(
            f"The `startup_timeout` argument of @web_server must be a positive number of seconds, "
            f"got {startup_timeout!r}."
        )
    web = WebSpec(
        kind="web_server",
        label=_parse_label("web_server", label),
        custom_domains=_parse_custom_domains("web_server", custom_domains),
        requires_proxy_auth=check_bool("web_server", "requires_proxy_auth", requires_proxy_auth),
        port=port,
        startup_timeout_s=float(startup_timeout),
    )
    return _web_wrapper("web_server", web)


def _check_port(decorator: str, port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidError(
            f"The `port` of @{decorator} must be a local port from 1 to 65535, such as "
            f"@{decorator}(port=8000). Got {port!r}."
        )
    return port


def _check_seconds(decorator: str, name: str, value: object, *, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        kind = "non-negative" if allow_zero else "positive"
        raise InvalidError(
            f"The `{name}` argument of @{decorator} must be a {kind} number of seconds, got {value!r}."
        )
    return float(value)


def http_server_spec(
    decorator: str,
    *,
    port: object,
    startup_timeout: object,
    exit_grace_period: object,
    requires_proxy_auth: bool,
    label: str | None = None,
) -> WebSpec:
    """The `WebSpec` of an HTTP server (`@app.server` or `modal.experimental.http_server`)."""
    return WebSpec(
        kind="http_server",
        label=_parse_label(decorator, label),
        requires_proxy_auth=requires_proxy_auth,
        port=_check_port(decorator, port),
        startup_timeout_s=_check_seconds(decorator, "startup_timeout", startup_timeout),
        exit_grace_period_s=_check_grace(decorator, exit_grace_period),
    )


#: Modal's default `startup_timeout` of an HTTP server (`@app.server`, `http_server`), in seconds.
HTTP_SERVER_STARTUP_S = 30

#: Modal's limit on `exit_grace_period`: one hour.
MAX_EXIT_GRACE_S = 3600.0


def _check_grace(decorator: str, value: object) -> float:
    grace = _check_seconds(decorator, "exit_grace_period", 0 if value is None else value, allow_zero=True)
    if grace > MAX_EXIT_GRACE_S:
        raise InvalidError(
            f"The `exit_grace_period` argument of @{decorator} must be at most "
            f"{MAX_EXIT_GRACE_S:.0f} seconds (one hour), got {value!r}."
        )
    return grace


def http_server(
    port: int | None = None,
    *,
    proxy_regions: Iterable[str] | None = None,
    startup_timeout: float = HTTP_SERVER_STARTUP_S,
    exit_grace_period: float | None = None,
    h2_enabled: bool = False,
) -> Callable[[type[T]], PartialFunction[..., T]]:
    """Serve the HTTP server that a class's `@enter` method starts on `port` (Modal's "flash" server).

    ```python
    @app.cls(min_containers=1)
    @modal.experimental.http_server(port=8000, proxy_regions=["us-east"])
    @modal.concurrent(target_inputs=8)
    class Server:
        @modal.enter()
        def start(self):
            self.proc = subprocess.Popen(["python", "-m", "http.server", "8000"])
    ```

    Requests go straight to a ready container, without a queue: `503` while none is ready (a cold
    start has begun; retry), and the `Modal-Session-ID` header keeps a client on one container.
    `proxy_regions` and `h2_enabled` are accepted and have no effect on one machine.
    """
    where = "modal.experimental.http_server"
    if port is None:
        raise InvalidError(f"@{where}() requires the port your server listens on, e.g. @{where}(port=8000).")
    web = http_server_spec(
        where,
        port=port,
        startup_timeout=startup_timeout,
        exit_grace_period=exit_grace_period,
        requires_proxy_auth=False,
    )
    _check_regions(where, proxy_regions)
    check_bool("http_server", "h2_enabled", h2_enabled)

    def wrapper(target: type[T]) -> PartialFunction[..., T]:
        raw, partial = unwrap("http_server", target, allow_class=True)
        if not inspect.isclass(raw):
            raise InvalidError(
                f"@{where}() decorates a class whose @modal.enter() method starts the server, "
                f"not {name_of(raw)!r}. Use @modal.web_server(port) on a function instead."
            )
        if partial.web is not None:
            raise InvalidError(f"Cannot apply @{where}() twice to {name_of(raw)!r}; keep one.")
        return cast("PartialFunction[..., T]", replace(partial, flags=partial.flags | Flags.WEB, web=web))

    return wrapper


def _check_regions(where: str, regions: object) -> None:
    if regions is None:
        return
    if isinstance(regions, str) or not isinstance(regions, Iterable):
        raise InvalidError(f"{where}(proxy_regions=...) must be a list of region names such as ['us-east'].")
    for region in regions:
        if not isinstance(region, str):
            raise InvalidError(
                f"{where}(proxy_regions=...) entries must be region names (str), got {region!r}."
            )


__all__ = [
    "Flags",
    "PartialFunction",
    "asgi_app",
    "batched",
    "concurrent",
    "enter",
    "exit",
    "fastapi_endpoint",
    "http_server",
    "method",
    "sessioned",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]
