"""`Function`: a function registered with `@app.function()`, or one of a deployed app found by name.

It keeps the user's callable so it can run locally (`f.local(...)`, `f(...)`), and carries the frozen
`FunctionSpec` the platform runs. Its remote API (`.remote()`, `.spawn()`, `.map()`, ...) reaches the
app where it runs now (`app.run()`, `cove run`, or the app's own containers) or the deployed app it
was looked up in (see `cove._remote`); without either, a call raises Modal's "not hydrated" error.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar, Generic, NoReturn, ParamSpec, TypeVar, cast

from cove import _remote, config
from cove._context import is_local
from cove._remote import (
    Dual,
    ForEachMethod,
    FunctionCall,
    GenMethod,
    MapMethod,
    RemoteTarget,
    StarmapMethod,
)
from cove._spec import FunctionSpec
from cove.exception import ExecutionError, InvalidError

P = ParamSpec("P")
R = TypeVar("R")

#: Attribute names of Modal's remote-invocation API. Web functions refuse them (Modal's rule).
REMOTE_METHODS = frozenset({"remote", "remote_gen", "spawn", "map", "starmap", "for_each", "spawn_map"})


def refuse_remote(tag: str, web: bool, name: str, local_hint: str) -> NoReturn:
    if web:
        raise InvalidError(
            f"A webhook function cannot be invoked for remote execution with .{name}. "
            f"Invoke this function via its web url or call it locally: {local_hint}.local()"
        )
    raise not_running(tag, name, local_hint)


def not_running(tag: str, name: str, local_hint: str) -> ExecutionError:
    return ExecutionError(
        f"Function {tag!r} has not been hydrated with the metadata it needs to run on Cove, because the "
        f"App it is defined on is not running. Run it with `cove run FILE::{tag.split('.')[0]}`, inside "
        "`with app.run():`, or from a function of the app while it is served or deployed; or call the "
        f"deployed one with cove.Function.from_name(app_name, {tag!r}).{name}(...) "
        f"(or run it here with {local_hint}.local())."
    )


class NotRunning(RemoteTarget):
    """The target of a function whose app is not running: any call raises Modal's "not hydrated" error
    (getting `.remote` itself does not, as on Modal)."""

    def __init__(self, tag: str, how: str, local_hint: str) -> None:
        super().__init__("", tag)
        self._error = (tag, how, local_hint)

    def info(self) -> _remote.FunctionInfo:
        raise not_running(*self._error)

    async def ainfo(self) -> _remote.FunctionInfo:
        raise not_running(*self._error)


def running_target(
    app: Any, tag: str, *, params: dict[str, Any] | None = None, method: str | None = None
) -> RemoteTarget | None:
    """The function `tag` of `app` where the app runs now, or None when it is not running.

    An app runs inside `app.run()` / `cove run` (its `_running` is set) and, in its own containers, as
    the app the server names in `COVE_APP_NAME`/`COVE_APP_KIND`.
    """
    running: tuple[str, _remote.AppKind] | None = getattr(app, "_running", None)
    if running is None and not is_local():
        name, kind = config.env("COVE_APP_NAME"), config.env("COVE_APP_KIND")
        if name and kind in ("deployed", "ephemeral"):
            running = (name, cast("_remote.AppKind", kind))
    if running is None:
        return None
    return RemoteTarget(running[0], tag, params=params, method=method, kind=running[1])


class Function(Generic[P, R]):
    """A function registered with `@app.function()`. Calling it (or `.local`) runs it in-process.

    `Function.from_name(app, name)` gives one of a deployed app instead, to call with `.remote()`.
    """

    _cove_app_decorator: ClassVar[str] = "@app.function"
    _target: RemoteTarget | None = None  # set for functions looked up by name
    _app: Any = None  # the App it was registered on (for calls while that app runs)

    def __init__(self, raw_f: Callable[P, R], spec: FunctionSpec, app: Any = None) -> None:
        self._raw_f = raw_f
        self._spec = spec
        self._app = app
        functools.update_wrapper(self, raw_f)

    @classmethod
    def from_name(
        cls,
        app_name: str,
        name: str,
        *,
        version: int | None = None,
        environment_name: str | None = None,
        client: object = None,
    ) -> Function[..., Any]:
        """The function `name` of the deployed app `app_name`; looked up on first use (Modal's rule)."""
        _remote.check_function_name(app_name, name)
        return cls._from_target(RemoteTarget(app_name, name))

    @classmethod
    def _from_target(cls, target: RemoteTarget) -> Function[..., Any]:
        function: Function[..., Any] = cls.__new__(cls)
        function._target = target
        return function

    def _remote(self, how: str) -> RemoteTarget:
        if self._target is not None:
            return self._target
        if self._spec.is_web:
            refuse_remote(self._spec.tag, True, how, self._spec.tag)
        return running_target(self._app, self._spec.tag) or NotRunning(self._spec.tag, how, self._spec.tag)

    @property
    def spec(self) -> FunctionSpec:
        if self._target is not None:
            raise InvalidError(f"{self!r} was looked up by name; its spec lives on the server.")
        return self._spec

    @property
    def tag(self) -> str:
        return self._target.tag if self._target is not None else self._spec.tag

    def get_raw_f(self) -> Callable[P, R]:
        if self._target is not None:
            raise InvalidError(f"{self!r} was looked up by name; its code is not in this process.")
        return self._raw_f

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process (an async function returns its coroutine)."""
        return self.get_raw_f()(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.get_raw_f()(*args, **kwargs)

    @property
    def remote(self) -> Dual[P, R]:
        """`f.remote(*args, **kwargs)` runs it in a container and returns its result (`.aio` to await)."""
        target = self._remote("remote")

        def call(*args: Any, **kwargs: Any) -> Any:
            return target.remote(args, kwargs)

        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await target.aremote(args, kwargs)

        return cast("Dual[P, R]", Dual(call, acall))

    @property
    def spawn(self) -> Dual[P, FunctionCall[R]]:
        """`f.spawn(*args, **kwargs)` starts a call and returns its `FunctionCall` at once."""
        target = self._remote("spawn")

        def call(*args: Any, **kwargs: Any) -> FunctionCall[Any]:
            return target.spawn(args, kwargs)

        async def acall(*args: Any, **kwargs: Any) -> FunctionCall[Any]:
            return await target.aspawn(args, kwargs)

        return cast("Dual[P, FunctionCall[R]]", Dual(call, acall))

    @property
    def remote_gen(self) -> GenMethod:
        """`f.remote_gen(*args, **kwargs)` runs a generator function in a container and yields its items
        as they are produced (`async for item in f.remote_gen.aio(...)`)."""
        target = self._remote("remote_gen")

        def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
            return target.remote_gen(args, kwargs)

        def acall(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            return target.aremote_gen(args, kwargs)

        return GenMethod(call, acall)

    @property
    def map(self) -> MapMethod:
        """`f.map(*iterables, kwargs={}, return_exceptions=False)` yields results in input order."""
        return MapMethod(self._remote("map"))

    @property
    def starmap(self) -> StarmapMethod:
        """`f.starmap([(a, b), ...], kwargs={}, return_exceptions=False)`: `map` with argument tuples."""
        return StarmapMethod(self._remote("starmap"))

    @property
    def for_each(self) -> ForEachMethod:
        """`f.for_each(*iterables, kwargs={}, ignore_exceptions=False)`: `map` for its side effects."""
        return ForEachMethod(self._remote("for_each"))

    def get_web_url(self) -> str | None:
        """The URL of a web function of a deployed app; None for other functions."""
        if self._target is not None:
            return self._target.web_url()
        if not self._spec.is_web:
            return None
        running = running_target(self._app, self._spec.tag)
        if running is not None:
            return running.web_url()
        raise InvalidError(
            f"The URL of {self!r} is known once it is served: use the URL `cove serve`/`cove deploy` "
            f"printed, or cove.Function.from_name(app_name, {self._spec.tag!r}).get_web_url()."
        )

    def hydrate(self, client: object = None) -> Function[P, R]:
        """Look the function up now instead of on first use (raises `NotFoundError` if it is missing)."""
        if self._target is not None:
            self._target.info()
        return self

    def __getattr__(self, name: str) -> NoReturn:
        spec = self.__dict__.get("_spec")
        if name in REMOTE_METHODS and spec is not None and spec.is_web:
            refuse_remote(spec.tag, True, name, spec.tag)
        if name == "spawn_map":
            raise AttributeError(
                "cove.Function has no .spawn_map yet; spawn each input with .spawn(...) instead."
            )
        raise AttributeError(f"'cove.Function' object has no attribute {name!r}")

    def __repr__(self) -> str:
        if self._target is not None:
            return repr(self._target)
        return f"cove.Function({self._spec.tag!r})"


__all__ = ["REMOTE_METHODS", "Function", "NotRunning", "refuse_remote", "running_target"]
