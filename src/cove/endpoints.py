"""Partial functions: what the decorators below `@app.function`/`@app.cls` record.

`@fastapi_endpoint`, `@asgi_app`, `@wsgi_app`, `@web_server`, `@concurrent`, `@method`, `@batched`,
`@enter` and `@exit` each wrap the user's callable in a `PartialFunction` that carries flags and
parameters. Stacking merges them (the order among these decorators does not matter). `@app.function`
or `@app.cls`, applied outermost, consumes the result and turns it into a `FunctionSpec`.

Every check here runs at decoration time and raises `cove.exception.InvalidError` with the fix.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, ParamSpec, TypeVar, cast

from cove._labels import validate_user_label
from cove._spec import WebKind, WebSpec
from cove.exception import InvalidError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_STREAMING_HINT = (
    "Webhooks cannot be generators. If you want a streaming response, return a "
    "`fastapi.responses.StreamingResponse` wrapping the generator instead "
    "(see https://modal.com/docs/guide/streaming-endpoints)."
)
_HTTP_METHOD_RE = re.compile(r"^[A-Za-z]+$")
_HOSTNAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class Flags(enum.IntFlag):
    """What a partial function is for. Interfaces and lifecycle hooks exclude each other."""

    NONE = 0
    CALLABLE = enum.auto()  # @method / @batched: called through the callable interface
    WEB = enum.auto()  # one of the web decorators
    ENTER_PRE_SNAPSHOT = enum.auto()  # @enter(snap=True)
    ENTER_POST_SNAPSHOT = enum.auto()  # @enter()
    EXIT = enum.auto()  # @exit()
    BATCHED = enum.auto()
    CONCURRENT = enum.auto()
    SESSIONED = enum.auto()  # @sessioned() on an @app.server class

    @classmethod
    def lifecycle(cls) -> Flags:
        return cls.ENTER_PRE_SNAPSHOT | cls.ENTER_POST_SNAPSHOT | cls.EXIT


@dataclass(frozen=True, eq=False)
class PartialFunction(Generic[P, R]):
    """A user callable plus what Cove's decorators recorded about it; consumed by `@app.function`.

    Calling it calls the wrapped function, and on an instance it binds like a method, so class code
    can call `self.other_method(...)` locally and in containers.
    """

    raw_f: Callable[P, R]
    flags: Flags = Flags.NONE
    web: WebSpec | None = None
    is_generator: bool | None = None
    max_inputs: int | None = None
    target_inputs: int | None = None
    batch_max_size: int | None = None
    batch_wait_ms: int | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.raw_f(*args, **kwargs)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return types.MethodType(self.raw_f, obj)

    def __repr__(self) -> str:
        return f"cove.PartialFunction({_name(self.raw_f)!r}, flags={self.flags!r})"


def _name(obj: object) -> str:
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj))


def _reject_positional(decorator: str, arg: object, *, str_keyword: str | None = None) -> None:
    """Modal's decorators are keyword-only and must be called; explain the two common slips."""
    if arg is None:
        return
    if isinstance(arg, str) and str_keyword is not None:
        raise InvalidError(
            f"Positional arguments are not allowed in @cove.{decorator}(), got {arg!r}. "
            f'Use `@cove.{decorator}({str_keyword}="{arg}")`.'
        )
    if callable(arg):
        raise InvalidError(
            f"@cove.{decorator} was applied to {_name(arg)!r} without calling it. "
            f"Did you forget parentheses? Use `@cove.{decorator}()`."
        )
    raise InvalidError(
        f"Positional arguments are not allowed in @cove.{decorator}(), got {arg!r}. Pass options by keyword."
    )


def _unwrap(
    decorator: str, target: object, *, allow_class: bool = False
) -> tuple[Any, PartialFunction[..., Any]]:
    """The raw callable under `target` and the partial function recorded so far (empty if none)."""
    app_decorator = getattr(type(target), "_cove_app_decorator", None)
    if app_decorator is not None:
        raise InvalidError(
            f"Cannot stack @cove.{decorator} on top of {app_decorator}. "
            "Hint: swap the order of the decorators."
        )
    if isinstance(target, PartialFunction):
        return target.raw_f, target
    if inspect.isclass(target) and not allow_class:
        raise InvalidError(
            f"@cove.{decorator} cannot decorate a class ({target.__qualname__!r}). "
            "Hint: consider applying it to a method instead."
        )
    if not callable(target):
        raise InvalidError(f"@cove.{decorator} decorates a function, got {type(target).__name__} {target!r}.")
    return target, PartialFunction(target)


def _is_generator(raw_f: object) -> bool:
    return inspect.isgeneratorfunction(raw_f) or inspect.isasyncgenfunction(raw_f)


def _required_params(raw_f: Callable[..., Any]) -> list[str]:
    """Parameters besides a leading `self` that a no-argument call would leave unbound."""
    try:
        params = list(inspect.signature(raw_f).parameters.values())
    except (TypeError, ValueError):
        return []
    if params and params[0].name == "self":
        params = params[1:]
    kinds = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def _check_bool(decorator: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidError(f"@cove.{decorator}({name}=...) must be True or False, got {value!r}.")
    return value


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
        raw_f, partial = _unwrap(decorator, target)
        name = _name(raw_f)
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
        if _is_generator(raw_f):
            raise InvalidError(f"{name!r} is a generator. {_STREAMING_HINT}")
        if factory_kind is not None:
            if inspect.iscoroutinefunction(raw_f):
                raise InvalidError(
                    f"{factory_kind} function {name!r} is an async function. Only sync Python functions "
                    "are supported: make it a plain `def` that returns the app (or starts the server)."
                )
            required = _required_params(raw_f)
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
    _reject_positional(decorator, positional, str_keyword="method")
    if not isinstance(method, str) or not _HTTP_METHOD_RE.match(method):
        raise InvalidError(
            f"@cove.{decorator}(method=...) must be one HTTP verb such as 'POST', got {method!r}. "
            "To serve several methods or paths, return your own FastAPI app from @cove.asgi_app()."
        )
    web = WebSpec(
        kind="fastapi_endpoint",
        method=method.upper(),
        label=_parse_label(decorator, label),
        docs=_check_bool(decorator, "docs", docs),
        custom_domains=_parse_custom_domains(decorator, custom_domains),
        requires_proxy_auth=_check_bool(decorator, "requires_proxy_auth", requires_proxy_auth),
    )
    return _web_wrapper(decorator, web)


def _app_factory(
    kind: WebKind,
    positional: object,
    label: object,
    custom_domains: Iterable[str] | None,
    requires_proxy_auth: object,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    _reject_positional(kind, positional, str_keyword="label")
    web = WebSpec(
        kind=kind,
        label=_parse_label(kind, label),
        custom_domains=_parse_custom_domains(kind, custom_domains),
        requires_proxy_auth=_check_bool(kind, "requires_proxy_auth", requires_proxy_auth),
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
        requires_proxy_auth=_check_bool("web_server", "requires_proxy_auth", requires_proxy_auth),
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
    startup_timeout: float = 30,
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
    _check_bool("http_server", "h2_enabled", h2_enabled)

    def wrapper(target: type[T]) -> PartialFunction[..., T]:
        raw, partial = _unwrap("http_server", target, allow_class=True)
        if not inspect.isclass(raw):
            raise InvalidError(
                f"@{where}() decorates a class whose @modal.enter() method starts the server, "
                f"not {_name(raw)!r}. Use @modal.web_server(port) on a function instead."
            )
        if partial.web is not None:
            raise InvalidError(f"Cannot apply @{where}() twice to {_name(raw)!r}; keep one.")
        return cast("PartialFunction[..., T]", replace(partial, flags=partial.flags | Flags.WEB, web=web))

    return wrapper


def sessioned(_warn_parentheses_missing: object = None) -> Callable[[type[T]], PartialFunction[..., T]]:
    """Sticky Sessions for an `@app.server()` class (Modal 1.5): every request carries a session token.

    ```python
    @app.server(port=8000)
    @cove.sessioned()
    class Room:
        @cove.enter()
        def start(self): ...

    session = cove.Server.from_name("rooms", "Room").sessions.start(idle_timeout=600)
    requests.get(url, headers={"Modal-Authorization": f"Bearer {session.token}"})
    ```

    All requests of a session reach the container it was started on, until it is terminated
    (`server.sessions.terminate(token)`) or has had no request in flight for `idle_timeout`
    seconds; that container is not scaled down while it holds a live session. Requests without a
    token are refused (401), as are unknown or ended ones (404) and those of a session whose
    container is gone (410: start a new session).
    """
    _reject_positional("sessioned", _warn_parentheses_missing)

    def wrapper(target: type[T]) -> PartialFunction[..., T]:
        raw, partial = _unwrap("sessioned", target, allow_class=True)
        if not inspect.isclass(raw):
            raise InvalidError(
                f"@cove.sessioned() decorates a Server class (under @app.server()), not {_name(raw)!r}."
            )
        return cast("PartialFunction[..., T]", replace(partial, flags=partial.flags | Flags.SESSIONED))

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


def _positive_int(decorator: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidError(f"@cove.{decorator}({name}=...) must be a positive integer, got {value!r}.")
    return value


def concurrent(
    _warn_parentheses_missing: object = None,
    *,
    max_inputs: int | None = None,
    target_inputs: int | None = None,
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Let one container handle up to `max_inputs` inputs at once (asyncio tasks or threads).

    The autoscaler aims at `target_inputs` per container (default `max_inputs`). Put it below
    `@app.function`, or on the class for `@app.cls`.
    """
    _reject_positional("concurrent", _warn_parentheses_missing)
    if max_inputs is None and target_inputs is None:
        raise TypeError(
            "@cove.concurrent() missing required argument: max_inputs, e.g. @cove.concurrent(max_inputs=10)."
        )
    # `target_inputs` alone is how Modal's HTTP server examples size a server (no hard cap per
    # container); `@app.function`/`@app.cls` still require `max_inputs` for everything else.
    max_n = None if max_inputs is None else _positive_int("concurrent", "max_inputs", max_inputs)
    target_n = None if target_inputs is None else _positive_int("concurrent", "target_inputs", target_inputs)
    if target_n is not None and max_n is not None and target_n > max_n:
        raise InvalidError(
            f"`target_inputs` ({target_n}) cannot be greater than `max_inputs` ({max_n}) "
            "in @cove.concurrent()."
        )

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = _unwrap("concurrent", target, allow_class=True)
        if partial.flags & Flags.CONCURRENT:
            raise InvalidError(
                f"Cannot set `max_inputs` twice on {_name(raw_f)!r}: "
                "@cove.concurrent was applied more than once. Keep one."
            )
        merged = replace(
            partial, flags=partial.flags | Flags.CONCURRENT, max_inputs=max_n, target_inputs=target_n
        )
        return cast("PartialFunction[P, R]", merged)

    return wrapper


def method(
    _warn_parentheses_missing: object = None, *, is_generator: bool | None = None
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Expose a method of an `@app.cls` class as a function of its own (callable interface)."""
    _reject_positional("method", _warn_parentheses_missing)
    if is_generator is not None:
        _check_bool("method", "is_generator", is_generator)

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = _unwrap("method", target)
        if partial.web is not None:
            raise InvalidError(
                f"Web endpoints on classes should not be wrapped by `@method` ({_name(raw_f)!r}). "
                "Suggestion: remove the `@method` decorator."
            )
        if partial.flags & Flags.BATCHED:
            raise InvalidError(
                f"Batched function on classes should not be wrapped by `@method` ({_name(raw_f)!r}). "
                "Suggestion: remove the `@method` decorator."
            )
        if partial.flags & Flags.lifecycle():
            raise InvalidError(
                f"Cannot use `@method` together with @cove.enter/@cove.exit on {_name(raw_f)!r}. "
                "Use separate methods."
            )
        resolved = is_generator if is_generator is not None else _is_generator(raw_f)
        return cast(
            "PartialFunction[P, R]",
            replace(partial, flags=partial.flags | Flags.CALLABLE, is_generator=resolved),
        )

    return wrapper


def batched(
    _warn_parentheses_missing: object = None, *, max_batch_size: int | None = None, wait_ms: int | None = None
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Gather single inputs into lists of up to `max_batch_size`, waiting at most `wait_ms`."""
    _reject_positional("batched", _warn_parentheses_missing)
    if max_batch_size is None or wait_ms is None:
        raise TypeError(
            "@cove.batched() requires max_batch_size and wait_ms, "
            "e.g. @cove.batched(max_batch_size=8, wait_ms=100)."
        )
    size = _positive_int("batched", "max_batch_size", max_batch_size)
    if size > 1000:
        raise InvalidError(f"@cove.batched(max_batch_size=...) must be at most 1000, got {size}.")
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or not 0 <= wait_ms <= 600_000:
        raise InvalidError(
            f"@cove.batched(wait_ms=...) must be an integer from 0 to 600000, got {wait_ms!r}."
        )

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = _unwrap("batched", target)
        if partial.web is not None:
            raise InvalidError(
                f"Callable decorators cannot be combined with web interface decorators on {_name(raw_f)!r}: "
                "remove @cove.batched or the web decorator."
            )
        if partial.flags & Flags.lifecycle():
            raise InvalidError(
                f"Cannot use `@batched` together with @cove.enter/@cove.exit on {_name(raw_f)!r}."
            )
        flags = partial.flags | Flags.CALLABLE | Flags.BATCHED
        return cast(
            "PartialFunction[P, R]", replace(partial, flags=flags, batch_max_size=size, batch_wait_ms=wait_ms)
        )

    return wrapper


def _lifecycle(decorator: str, flag: Flags) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = _unwrap(decorator, target)
        if partial.web is not None:
            raise InvalidError(
                "Lifecycle decorators (@cove.enter/@cove.exit) cannot be combined with "
                f"@cove.{partial.web.kind} on {_name(raw_f)!r}. Use a separate method for each."
            )
        if partial.flags & Flags.CALLABLE:
            raise InvalidError(f"Cannot use `@{decorator}` decorator with `@method` on {_name(raw_f)!r}.")
        return cast("PartialFunction[P, R]", replace(partial, flags=partial.flags | flag))

    return wrapper


def enter(
    _warn_parentheses_missing: object = None, *, snap: bool = False
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Run this method once per container before it accepts inputs (`snap=True`: before snapshots)."""
    _reject_positional("enter", _warn_parentheses_missing)
    snap = _check_bool("enter", "snap", snap)
    return _lifecycle("enter", Flags.ENTER_PRE_SNAPSHOT if snap else Flags.ENTER_POST_SNAPSHOT)


def exit(_warn_parentheses_missing: object = None) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Run this method once when the container shuts down."""
    _reject_positional("exit", _warn_parentheses_missing)
    return _lifecycle("exit", Flags.EXIT)


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
