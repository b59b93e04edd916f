"""`App`: a named group of functions and classes, and the manifest Cove deploys from it.

```python
app = cove.App("shop", image=cove.Image.debian_slim().pip_install("boto3"))

@app.function(max_containers=4)
@cove.fastapi_endpoint(method="POST")
def square(item: dict):
    return {"square": item["x"] ** 2}
```

Decorating only records: `app._manifest()` returns the `AppSpec` that `cove serve`/`cove deploy`
send to the control plane.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast

from cove._cls import Cls
from cove._function import Function
from cove._members import ClassMembers
from cove._options import (
    DEFAULT_TIMEOUT_S,
    FunctionOptions,
    check_image,
    check_secrets,
    check_volumes,
    options_given,
    parse_options,
)
from cove._partial import STREAMING_HINT, Flags, is_generator_function, positive_int
from cove._registration import check_max_inputs, check_scope, check_server_class, reject_positional, unwrap
from cove._spec import AppSpec, FunctionSpec
from cove.endpoints import HTTP_SERVER_STARTUP_S, http_server_spec
from cove.exception import InvalidError
from cove.image import Image
from cove.secret import Secret
from cove.server import Server, server_spec

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_APP_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_APP_ID_RE = re.compile(r"^ap-[A-Za-z0-9]{22}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_app_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not _APP_NAME_RE.match(name) or _APP_ID_RE.match(name):
        raise InvalidError(
            f"Invalid App name {name!r}: use up to 64 letters, digits, '-', '_' or '.', e.g. App('shop-api')."
        )
    return name


def _check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidError(f"App(tags=...) must be a dict of str to str, got {type(tags).__name__}.")
    for key, value in tags.items():
        for part in (key, value):
            if not isinstance(part, str) or not _TAG_RE.match(part):
                raise InvalidError(
                    "App(tags=...): keys and values must be 1-63 letters, digits, '-', '_' or '.', "
                    f"got {part!r}."
                )
    return dict(tags)


class App:
    """A group of functions and classes deployed together under one name.

    `image`, `secrets` and `volumes` are defaults for every function (app secrets come first; a
    function's own `volumes` entry for the same path wins).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        image: Image | None = None,
        secrets: Sequence[Secret] = (),
        tags: Mapping[str, str] | None = None,
        include_source: bool = True,
        volumes: Mapping[str, object] | None = None,
    ) -> None:
        self._name = _check_app_name(name)
        self._image = check_image("App", image)
        self._secrets = check_secrets("App", secrets)
        self._tags = _check_tags(tags)
        if not isinstance(include_source, bool):
            raise InvalidError(f"App(include_source=...) must be True or False, got {include_source!r}.")
        self._include_source = include_source
        check_volumes("App", volumes)
        self._volumes: dict[str, object] = dict(volumes or {})
        self._registry: dict[str, Function[Any, Any] | Cls[Any] | Server[Any]] = {}
        self._local_entrypoints: dict[str, LocalEntrypoint[..., Any]] = {}
        # (name, kind) while the app runs from this process (`app.run()`, `cove run`).
        self._running: tuple[str, Literal["ephemeral", "deployed"]] | None = None

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def image(self) -> Image | None:
        """The default image of the app's functions (`App(image=...)` or `app.image = ...`)."""
        return self._image

    @image.setter
    def image(self, value: Image | None) -> None:
        # Modal's `app.image = image`: like App(image=...), it applies to the functions decorated
        # after this line (the image is chosen when a decorator runs, in Cove as in Modal).
        if value is not None and not isinstance(value, Image):
            raise InvalidError(
                f"app.image must be a cove.Image such as Image.debian_slim().pip_install(...), got {value!r}."
            )
        if self._registry:
            warnings.warn(
                f"app.image was set after {', '.join(sorted(self._registry))} had been decorated; they keep "
                "the image they were given. Set app.image before the first @app.function().",
                stacklevel=2,
            )
        self._image = value

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @property
    def include_source(self) -> bool:
        return self._include_source

    @property
    def registered_functions(self) -> dict[str, Function[Any, Any]]:
        return {tag: obj for tag, obj in self._registry.items() if isinstance(obj, Function)}

    @property
    def registered_classes(self) -> dict[str, Cls[Any]]:
        return {tag: obj for tag, obj in self._registry.items() if isinstance(obj, Cls)}

    @property
    def registered_servers(self) -> dict[str, Server[Any]]:
        return {tag: obj for tag, obj in self._registry.items() if isinstance(obj, Server)}

    @property
    def registered_web_endpoints(self) -> list[str]:
        """Tags of the web functions and web methods, e.g. `["square", "Model.predict"]`."""
        return [spec.tag for spec in self._specs() if spec.web is not None]

    def _specs(self) -> list[FunctionSpec]:
        specs: list[FunctionSpec] = []
        for obj in self._registry.values():
            specs.extend([obj.spec] if isinstance(obj, Function) else obj.specs)
        return specs

    def _manifest(self) -> AppSpec:
        """The AppSpec of everything declared so far, in declaration order."""
        return AppSpec(name=self._name, functions=tuple(self._specs()))

    def _register(self, tag: str, obj: Function[Any, Any] | Cls[Any] | Server[Any]) -> None:
        if tag in self._registry:
            warnings.warn(
                f"{self!r} already has a function named {tag!r}; the new definition replaces it. "
                "Give one of them another name (e.g. @app.function(name=...)) if both are needed.",
                stacklevel=3,
            )
        self._registry[tag] = obj

    def _options(self, where: str, arguments: Mapping[str, object]) -> FunctionOptions:
        """The options of one decorator call (its `locals()`), with this app's image, secrets and volumes
        as defaults: the one path `@app.function`, `@app.cls` and `@app.server` share."""
        return parse_options(
            where,
            app_image=self._image,
            app_secrets=self._secrets,
            app_volumes=self._volumes,
            stacklevel=4,
            **options_given(arguments),
        )

    def __repr__(self) -> str:
        return f"cove.App({self._name!r})" if self._name is not None else "cove.App()"

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint[..., Any]]:
        """The `@app.local_entrypoint()` functions, by name."""
        return dict(self._local_entrypoints)

    def local_entrypoint(
        self, _warn_parentheses_missing: object = None, *, name: str | None = None
    ) -> Callable[[Callable[P, R]], LocalEntrypoint[P, R]]:
        """Register a function `cove run FILE` runs on this machine while the app runs (Modal's rule).

        Its parameters become command-line options: `def main(n: int, fast: bool = False)` is run
        as `cove run app.py --n 3 --fast`.
        """
        reject_positional("@app.local_entrypoint", _warn_parentheses_missing)
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise InvalidError(f"@app.local_entrypoint(name=...) must be an identifier, got {name!r}.")

        def wrapper(raw_f: Callable[P, R]) -> LocalEntrypoint[P, R]:
            if not callable(raw_f) or inspect.isclass(raw_f):
                raise InvalidError(
                    f"@app.local_entrypoint() decorates a function, got {type(raw_f).__name__} {raw_f!r}."
                )
            entrypoint = LocalEntrypoint(raw_f, self)
            tag = name or raw_f.__name__
            if tag in self._local_entrypoints:
                warnings.warn(
                    f"{self!r} already has a local entrypoint named {tag!r}; the new one replaces it.",
                    stacklevel=2,
                )
            self._local_entrypoints[tag] = entrypoint
            return entrypoint

        return wrapper

    @contextlib.contextmanager
    def run(
        self,
        *,
        name: str | None = None,
        client: object = None,
        detach: bool = False,
        interactive: bool = False,
        environment_name: str | None = None,
        show_progress: bool = True,
    ) -> Iterator[App]:
        """Run the app as an ephemeral app for the block: `with app.run(): f.remote(1)`.

        Its functions run in containers and their `.remote()` calls reach them; container logs
        stream to this terminal; the app stops when the block ends (or on Ctrl-C). `detach` is
        accepted and has no effect: the app always stops with the block.
        """
        from cove import _runner

        with _runner.run(self, name=name, show_objects=show_progress):
            yield self

    def deploy(
        self,
        *,
        name: str | None = None,
        environment_name: str | None = None,
        tag: str = "",
        client: object = None,
        strategy: str = "rolling",
    ) -> App:
        """Deploy the app from this process, as `cove deploy` does (a new version of `name`)."""
        from cove import _runner

        _runner.deploy(self, name=name, tag=tag)
        return self

    def function(
        self,
        _warn_parentheses_missing: object = None,
        *,
        image: Image | None = None,
        schedule: object = None,
        env: Mapping[str, str | None] | None = None,
        secrets: Sequence[Secret] = (),
        gpu: str | Sequence[str] | None = None,
        serialized: bool = False,
        network_file_systems: Mapping[str, object] | None = None,
        volumes: Mapping[str, object] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: float | None = None,
        proxy: object = None,
        retries: object = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        startup_timeout: float | None = None,
        name: str | None = None,
        is_generator: bool | None = None,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        routing_region: str | None = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        max_inputs: int | None = None,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: Mapping[str, object] | None = None,
        # Pre-1.0 spellings, mapped with a DeprecationError warning:
        keep_warm: int | None = None,
        concurrency_limit: int | None = None,
        container_idle_timeout: float | None = None,
        allow_concurrent_inputs: int | None = None,
    ) -> Callable[[Callable[P, R]], Function[P, R]]:
        """Register a function (outermost decorator; web and `@concurrent` decorators go below it).

        Placement options (`cloud`, `region`, `routing_region`, `nonpreemptible`, `i6pn`), `ephemeral_disk`,
        `restrict_modal_access`, `experimental_options` and, on the local backend, `gpu` are accepted
        with a warning (once per option) and have no effect. `enable_memory_snapshot` needs no warning:
        Cove's warm zygotes always run the module import and `@enter(snap=True)` hooks once per image.
        """
        reject_positional("@app.function", _warn_parentheses_missing)
        if schedule is not None:
            raise InvalidError(
                "@app.function(schedule=...) is not supported by Cove yet. Trigger the function from an "
                "external scheduler (cron, systemd timer) calling a web endpoint instead."
            )
        if name is not None and (not isinstance(name, str) or not _FUNCTION_NAME_RE.match(name)):
            raise InvalidError(
                f"@app.function(name=...) must be 1-64 letters, digits, '_' or '-' (no '.'), got {name!r}."
            )
        opts = self._options("@app.function", locals())

        def wrapper(target: Callable[P, R]) -> Function[P, R]:
            raw_f, partial = unwrap("@app.function", target)
            if inspect.isclass(raw_f):
                raise InvalidError(
                    f"@app.function() cannot decorate a class ({raw_f.__qualname__!r}); "
                    "use @app.cls() for classes."
                )
            fname = raw_f.__qualname__
            if partial.flags & Flags.lifecycle():
                raise InvalidError(
                    "@cove.enter/@cove.exit only apply to methods of an @app.cls() class; "
                    f"{fname!r} is a function."
                )
            if partial.flags & Flags.CALLABLE and not partial.flags & Flags.BATCHED:
                raise InvalidError(
                    "@cove.method() only applies to methods of an @app.cls() class; "
                    f"remove it from {fname!r}."
                )
            check_max_inputs("@app.function", fname, partial)
            check_scope("@app.function", raw_f, opts.serialized)
            generator = is_generator if is_generator is not None else is_generator_function(raw_f)
            if partial.web is not None and generator:
                raise InvalidError(f"{fname!r} is a generator. {STREAMING_HINT}")
            tag = name or raw_f.__name__
            spec = opts.spec(
                "@app.function",
                tag=tag,
                module_attr=raw_f.__name__,
                method_name=None,
                web=partial.web,
                is_generator=generator,
                max_inputs=partial.max_inputs,
                target_inputs=partial.target_inputs,
            )
            function = Function(cast(Callable[P, R], raw_f), spec, app=self)
            self._register(tag, function)
            return function

        return wrapper

    def cls(
        self,
        _warn_parentheses_missing: object = None,
        *,
        image: Image | None = None,
        env: Mapping[str, str | None] | None = None,
        secrets: Sequence[Secret] = (),
        gpu: str | Sequence[str] | None = None,
        serialized: bool = False,
        network_file_systems: Mapping[str, object] | None = None,
        volumes: Mapping[str, object] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: float | None = None,
        proxy: object = None,
        retries: object = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        startup_timeout: float | None = None,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        routing_region: str | None = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        max_inputs: int | None = None,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: Mapping[str, object] | None = None,
        keep_warm: int | None = None,
        concurrency_limit: int | None = None,
        container_idle_timeout: float | None = None,
        allow_concurrent_inputs: int | None = None,
    ) -> Callable[[Callable[P, T]], Cls[T]]:
        """Register a class: its web methods and `@cove.method`s share the class's containers.

        Put `@cove.concurrent(...)` on the class (below this decorator), `@cove.enter()`/`@cove.exit()`
        on setup and teardown methods, and web decorators or `@cove.method()` on the other methods.
        """
        reject_positional("@app.cls", _warn_parentheses_missing)
        opts = self._options("@app.cls", locals())

        def wrapper(target: Callable[P, T]) -> Cls[T]:
            user_cls, partial = unwrap("@app.cls", target)
            if not inspect.isclass(user_cls):
                raise InvalidError(
                    f"@app.cls() decorates a class; {getattr(user_cls, '__qualname__', user_cls)!r} "
                    "is not one. Use @app.function() for functions."
                )
            check_scope("@app.cls", user_cls, opts.serialized)
            members = ClassMembers.inspect(user_cls)
            cls_name = user_cls.__name__
            if partial.web is not None:  # modal.experimental.http_server: the class is one server
                check_server_class("modal.experimental.http_server", cls_name, members)
                if partial.flags & Flags.SESSIONED:
                    raise InvalidError(
                        f"@modal.sessioned() can only be applied to a Server: use @app.server() on "
                        f"{cls_name!r} instead of @app.cls() with modal.experimental.http_server."
                    )
                cap, aim = partial.max_inputs, partial.target_inputs
                spec = server_spec(opts, "@app.cls", cls_name, partial.web, cap=cap, target=aim)
                server_cls: Cls[T] = Cls(cast(type[T], user_cls), members, (spec,))
                self._register(cls_name, server_cls)
                return server_cls
            check_max_inputs("@app.cls", cls_name, partial)
            specs = tuple(
                opts.spec(
                    "@app.cls",
                    tag=f"{cls_name}.{method_name}",
                    module_attr=cls_name,
                    method_name=method_name,
                    web=pf.web,
                    is_generator=(
                        pf.is_generator if pf.is_generator is not None else is_generator_function(pf.raw_f)
                    ),
                    max_inputs=partial.max_inputs,
                    target_inputs=partial.target_inputs,
                )
                for method_name, pf in members.methods.items()
            )
            registered: Cls[T] = Cls(cast(type[T], user_cls), members, specs, app=self)
            self._register(cls_name, registered)
            return registered

        return wrapper

    def server(
        self,
        _warn_parentheses_missing: object = None,
        *,
        port: int = 8000,
        startup_timeout: float = HTTP_SERVER_STARTUP_S,
        exit_grace_period: float = 0,
        target_concurrency: int | None = None,
        max_concurrency: int | None = None,
        unauthenticated: bool = False,
        h2_enabled: bool = False,
        routing_region: str | None = None,
        proxy_regions: Sequence[str] | None = None,
        routing_regions: Sequence[str] | None = None,
        label: str | None = None,
        image: Image | None = None,
        env: Mapping[str, str | None] | None = None,
        secrets: Sequence[Secret] = (),
        gpu: str | Sequence[str] | None = None,
        serialized: bool = False,
        volumes: Mapping[str, object] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: float | None = None,
        proxy: object = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: Mapping[str, object] | None = None,
    ) -> Callable[[Callable[P, T]], Server[T]]:
        """Register a class whose `@cove.enter()` method starts an HTTP server on `port` (Modal 1.5).

        Its URL is `{workspace}--{app}-{class}[-dev].localhost`, like a web function named after the
        class. Requests are not queued: `503` (with `Retry-After`) while no container is ready, which
        also starts one; `429` when every container serves `max_concurrency` requests. Containers are
        added to keep about `target_concurrency` requests on each (default: `max_concurrency`, else 1).
        The `Modal-Session-ID` header keeps a client on one container while that container lives.
        Proxy auth is on unless `unauthenticated=True`, as on Modal. Region and protocol options
        (`routing_region`, `proxy_regions`, `h2_enabled`, ...) are accepted and have no effect here.
        """
        where = "@app.server"
        reject_positional(where, _warn_parentheses_missing)
        if not isinstance(unauthenticated, bool):
            raise InvalidError(
                f"{where}(unauthenticated=...) must be True or False, got {unauthenticated!r}."
            )
        web = http_server_spec(
            where,
            port=port,
            startup_timeout=startup_timeout,
            exit_grace_period=exit_grace_period,
            requires_proxy_auth=not unauthenticated,
            label=label,
        )
        target = (
            None
            if target_concurrency is None
            else positive_int("server", "target_concurrency", target_concurrency)
        )
        cap = None if max_concurrency is None else positive_int("server", "max_concurrency", max_concurrency)
        if target is not None and cap is not None and target > cap:
            raise InvalidError(
                f"{where}(target_concurrency={target}) cannot be greater than max_concurrency={cap}."
            )
        # `startup_timeout` here is the server's (in `web`), not a function's container start limit.
        opts = self._options(where, {**locals(), "startup_timeout": None})

        def wrapper(target_cls: Callable[P, T]) -> Server[T]:
            user_cls, partial = unwrap(where, target_cls)
            if not inspect.isclass(user_cls):
                raise InvalidError(
                    f"{where}() decorates a class whose @cove.enter() method starts the server; "
                    f"{getattr(user_cls, '__qualname__', user_cls)!r} is not a class."
                )
            name = user_cls.__name__
            if partial.flags & Flags.CONCURRENT:
                raise InvalidError(
                    f"Server class {name} cannot be decorated with `@modal.concurrent()`. "
                    "Please use `target_concurrency` param instead."
                )
            if partial.web is not None:
                raise InvalidError(
                    f"Server class {name} cannot have @modal.experimental.http_server(); "
                    f"{where}() already makes it an HTTP server. Remove the inner decorator."
                )
            check_scope(where, user_cls, opts.serialized)
            members = ClassMembers.inspect(user_cls)
            check_server_class(where, name, members)
            sessioned = replace(web, sessioned=bool(partial.flags & Flags.SESSIONED))
            spec = server_spec(opts, where, name, sessioned, cap=cap, target=target)
            server: Server[T] = Server(cast(type[T], user_cls), members, spec)
            self._register(name, server)
            return server

        return wrapper

    _experimental_server = server


class LocalEntrypoint(Generic[P, R]):
    """A function registered with `@app.local_entrypoint()`: `cove run` calls it here, with the app running.

    Calling it directly runs it too (without starting the app).
    """

    def __init__(self, raw_f: Callable[P, R], app: App) -> None:
        self.raw_f = raw_f
        self.app = app
        functools.update_wrapper(self, raw_f)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.raw_f(*args, **kwargs)

    def __repr__(self) -> str:
        return f"cove.LocalEntrypoint({self.raw_f.__name__!r})"


__all__ = ["App", "LocalEntrypoint"]
