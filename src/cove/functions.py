"""Functions and classes registered on an App, and how a container finds the user's code again.

`@app.function` returns a `Function`; `@app.cls` returns a `Cls`. Both keep the user's callable so
it can run locally (`f.local(...)`, `f(...)`, `Model().predict.local(...)`), and carry the frozen
`FunctionSpec`s the platform runs. Inside a container, `load_user_code(module, spec)` turns a spec
back into something callable plus the class's lifecycle hooks.

`Function.from_name(app, name)` and `Cls.from_name(app, name)` reach functions of a deployed app
from any process: `.remote()`, `.spawn()`, `.map()` (see `cove._remote`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NoReturn, ParamSpec, TypeVar, cast

from cove import _remote, config
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
from cove.endpoints import Flags, PartialFunction
from cove.exception import ExecutionError, InvalidError, NotFoundError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: Attribute names of Modal's remote-invocation API. Web functions refuse them (Modal's rule).
_REMOTE_METHODS = frozenset({"remote", "remote_gen", "spawn", "map", "starmap", "for_each", "spawn_map"})

_current_ids: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "cove_current_ids", default=(None, None)
)


def is_local() -> bool:
    """True on the developer's machine; False inside a Cove container (`COVE_IS_REMOTE=1`)."""
    return config.env("COVE_IS_REMOTE") != "1"


def current_function_call_id() -> str | None:
    """The id of the function call being served in this context; None outside a container."""
    return _current_ids.get()[0]


def current_input_id() -> str | None:
    """The id of the input being served in this context; None outside a container."""
    return _current_ids.get()[1]


def _set_current_ids(function_call_id: str | None, input_id: str | None) -> contextvars.Token[Any]:
    """Used by the container runtime around each input; reset with `_current_ids.reset(token)`."""
    return _current_ids.set((function_call_id, input_id))


def _refuse_remote(tag: str, web: bool, name: str, local_hint: str) -> NoReturn:
    if web:
        raise InvalidError(
            f"A webhook function cannot be invoked for remote execution with .{name}. "
            f"Invoke this function via its web url or call it locally: {local_hint}.local()"
        )
    raise _not_running(tag, name, local_hint)


def _not_running(tag: str, name: str, local_hint: str) -> ExecutionError:
    return ExecutionError(
        f"Function {tag!r} has not been hydrated with the metadata it needs to run on Cove, because the "
        f"App it is defined on is not running. Run it with `cove run FILE::{tag.split('.')[0]}`, inside "
        "`with app.run():`, or from a function of the app while it is served or deployed; or call the "
        f"deployed one with cove.Function.from_name(app_name, {tag!r}).{name}(...) "
        f"(or run it here with {local_hint}.local())."
    )


class _NotRunning(RemoteTarget):
    """The target of a function whose app is not running: any call raises Modal's "not hydrated" error
    (getting `.remote` itself does not, as on Modal)."""

    def __init__(self, tag: str, how: str, local_hint: str) -> None:
        super().__init__("", tag)
        self._error = (tag, how, local_hint)

    def info(self) -> _remote.FunctionInfo:
        raise _not_running(*self._error)

    async def ainfo(self) -> _remote.FunctionInfo:
        raise _not_running(*self._error)


def _running_target(
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
            _refuse_remote(self._spec.tag, True, how, self._spec.tag)
        return _running_target(self._app, self._spec.tag) or _NotRunning(self._spec.tag, how, self._spec.tag)

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
        running = _running_target(self._app, self._spec.tag)
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
        if name in _REMOTE_METHODS and spec is not None and spec.is_web:
            _refuse_remote(spec.tag, True, name, spec.tag)
        if name == "spawn_map":
            raise AttributeError(
                "cove.Function has no .spawn_map yet; spawn each input with .spawn(...) instead."
            )
        raise AttributeError(f"'cove.Function' object has no attribute {name!r}")

    def __repr__(self) -> str:
        if self._target is not None:
            return repr(self._target)
        return f"cove.Function({self._spec.tag!r})"


_NO_DEFAULT: Any = object()
_PARAMETER_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "bytes": bytes}


@dataclass(frozen=True)
class _Parameter:
    default: Any
    init: bool


def parameter(*, default: Any = _NO_DEFAULT, init: bool = True) -> Any:
    """Declare a class parameter: `name: str = cove.parameter(default="base")` (str, int, bool, bytes).

    `init=False` keeps it out of the constructor (it always takes its default).
    """
    if not isinstance(init, bool):
        raise InvalidError(f"cove.parameter(init=...) must be True or False, got {init!r}.")
    if not init and default is _NO_DEFAULT:
        raise InvalidError(
            "cove.parameter(init=False) needs a default, e.g. cove.parameter(default=0, init=False)."
        )
    return _Parameter(default=default, init=init)


@dataclass
class UserCode:
    """What the container entrypoint runs: the callable and, for classes, the bound lifecycle hooks."""

    call: Callable[..., Any]  # the plain function, or the method bound to a fresh instance
    enter_snap: list[Callable[[], Any]] = field(default_factory=list)  # @enter(snap=True), definition order
    enter: list[Callable[[], Any]] = field(default_factory=list)  # @enter()
    exit: list[Callable[[], Any]] = field(default_factory=list)  # @exit()


@dataclass(frozen=True, eq=False)
class ClassMembers:
    """What `@app.cls` found on a class, in definition order (base classes first)."""

    parameters: Mapping[str, tuple[_Parameter, type]]
    methods: Mapping[str, PartialFunction[..., Any]]  # web methods and @method/@batched methods
    enter_snap: tuple[str, ...]
    enter: tuple[str, ...]
    exit: tuple[str, ...]
    hooks: Mapping[str, PartialFunction[..., Any]]

    @classmethod
    def inspect(cls, user_cls: type) -> ClassMembers:
        """Collect and validate the decorated members of `user_cls`."""
        name = user_cls.__qualname__
        for klass in user_cls.__mro__[:-1]:
            if "__init__" in vars(klass):
                raise InvalidError(
                    f"Class {name!r} defines __init__; @app.cls classes are created by Cove "
                    "without arguments. Declare inputs as `name: str = cove.parameter(default=...)` "
                    "and move setup into an @cove.enter() method."
                )
        members: dict[str, Any] = {}
        for klass in reversed(user_cls.__mro__[:-1]):
            members.update(vars(klass))
        annotations: dict[str, Any] = {}
        for klass in reversed(user_cls.__mro__[:-1]):
            annotations.update(inspect.get_annotations(klass))

        parameters: dict[str, tuple[_Parameter, type]] = {}
        methods: dict[str, PartialFunction[..., Any]] = {}
        hooks: dict[str, PartialFunction[..., Any]] = {}
        enter_snap: list[str] = []
        enter: list[str] = []
        exit_: list[str] = []
        for attr, value in members.items():
            if isinstance(value, _Parameter):
                parameters[attr] = (value, _parameter_type(name, attr, annotations.get(attr), value))
            if not isinstance(value, PartialFunction):
                continue
            if value.flags & Flags.CONCURRENT:
                raise InvalidError(
                    "The @cove.concurrent decorator cannot be used on methods; decorate the class "
                    f"instead ({name}.{attr} is a method)."
                )
            if value.flags & (Flags.WEB | Flags.CALLABLE):
                methods[attr] = value
            if value.flags & Flags.lifecycle():
                _check_hook_signature(name, attr, value)
                hooks[attr] = value
                if value.flags & Flags.ENTER_PRE_SNAPSHOT:
                    enter_snap.append(attr)
                if value.flags & Flags.ENTER_POST_SNAPSHOT:
                    enter.append(attr)
                if value.flags & Flags.EXIT:
                    exit_.append(attr)
        batched = [attr for attr, pf in methods.items() if pf.flags & Flags.BATCHED]
        if batched and len(methods) > 1:
            raise InvalidError(
                f"Class {name!r} has a @cove.batched method ({batched[0]}) besides other methods "
                f"({', '.join(m for m in methods if m != batched[0])}). A class with a batched method "
                "can have no other @method or web methods; move them to another class."
            )
        return cls(parameters, methods, tuple(enter_snap), tuple(enter), tuple(exit_), hooks)


def _parameter_type(cls_name: str, attr: str, annotation: object, param: _Parameter) -> type:
    if annotation is None:
        raise InvalidError(
            f"Parameter {cls_name}.{attr} needs a type annotation, e.g. `{attr}: str = cove.parameter()`."
        )
    resolved = _PARAMETER_TYPES.get(annotation) if isinstance(annotation, str) else annotation
    if resolved not in _PARAMETER_TYPES.values() or not isinstance(resolved, type):
        raise InvalidError(
            f"Parameter {cls_name}.{attr} has type {annotation!r}; "
            "class parameters may be str, int, bool or bytes."
        )
    if param.default is not _NO_DEFAULT and not isinstance(param.default, resolved):
        raise InvalidError(
            f"Default of parameter {cls_name}.{attr} must be a {resolved.__name__}, "
            f"got {type(param.default).__name__}."
        )
    return resolved


def _check_hook_signature(cls_name: str, attr: str, hook: PartialFunction[..., Any]) -> None:
    try:
        params = list(inspect.signature(hook.raw_f).parameters.values())
    except (TypeError, ValueError):
        return
    kinds = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )
    extra = [p.name for p in params[1:] if p.default is inspect.Parameter.empty and p.kind in kinds]
    if not params or extra:
        raise InvalidError(
            f"Lifecycle method {cls_name}.{attr} must take only `self` (Cove calls it with no arguments)."
        )


class Cls(Generic[T]):
    """A class registered with `@app.cls()`. `Model(**params)` gives a local instance to call `.local` on.

    `Cls.from_name(app, name)` gives a class of a deployed app: `Model(**params).method.remote(...)`.
    """

    _cove_app_decorator: ClassVar[str] = "@app.cls"
    _remote_name: tuple[str, str] | None = None  # (app, class) for classes looked up by name
    _app: Any = None  # the App it was registered on (for calls while that app runs)

    def __init__(
        self, user_cls: type[T], members: ClassMembers, specs: tuple[FunctionSpec, ...], app: Any = None
    ) -> None:
        self._user_cls = user_cls
        self._members = members
        self._specs = specs
        self._app = app
        functools.update_wrapper(self, user_cls, updated=())

    @classmethod
    def from_name(
        cls,
        app_name: str,
        name: str,
        *,
        version: int | None = None,
        environment_name: str | None = None,
        client: object = None,
    ) -> Cls[Any]:
        """The class `name` of the deployed app `app_name`; its methods are looked up on first use."""
        _remote.check_cls_name(app_name, name)
        remote_cls: Cls[Any] = cls.__new__(cls)
        remote_cls._remote_name = (app_name, name)
        remote_cls._specs = ()
        return remote_cls

    @property
    def tag(self) -> str:
        return self._remote_name[1] if self._remote_name is not None else self._user_cls.__name__

    @property
    def specs(self) -> tuple[FunctionSpec, ...]:
        """One FunctionSpec per web method and `@method`, in definition order."""
        return self._specs

    def _spec(self, method_name: str) -> FunctionSpec:
        for spec in self._specs:
            if spec.method_name == method_name:
                return spec
        raise NotFoundError(
            f"Class {self.tag!r} has no @cove.method or web method {method_name!r}; "
            f"it has: {', '.join(s.method_name or '' for s in self._specs) or 'none'}."
        )

    def _new_instance(self, params: Mapping[str, Any]) -> T:
        declared = self._members.parameters
        settable = [n for n, (p, _) in declared.items() if p.init]
        unknown = sorted(set(params) - set(settable))
        if unknown:
            raise InvalidError(
                f"{self.tag}() got unexpected parameter(s) {', '.join(unknown)}; "
                f"declared parameters: {', '.join(settable) or 'none'}."
            )
        instance = self._user_cls()
        for name, (param, kind) in declared.items():
            if name in params:
                value = params[name]
            elif param.default is not _NO_DEFAULT:
                value = param.default
            else:
                raise InvalidError(
                    f"Missing parameter {name!r} of {self.tag}: pass {self.tag}({name}=...) "
                    "or declare a default with cove.parameter(default=...)."
                )
            if not isinstance(value, kind):
                raise InvalidError(
                    f"Parameter {self.tag}.{name} must be a {kind.__name__}, got {type(value).__name__}."
                )
            setattr(instance, name, value)
        return instance

    def _bound_hooks(self, instance: T) -> tuple[list[Callable[[], Any]], ...]:
        hooks = self._members.hooks

        def bind(names: tuple[str, ...]) -> list[Callable[[], Any]]:
            return [types.MethodType(hooks[n].raw_f, instance) for n in names]

        return bind(self._members.enter_snap), bind(self._members.enter), bind(self._members.exit)

    def _user_code(self, method_name: str, params: Mapping[str, Any] | None = None) -> UserCode:
        spec = self._spec(method_name)
        required = [n for n, (p, _) in self._members.parameters.items() if p.default is _NO_DEFAULT]
        if params is None and required and not spec.is_web:
            # No default instance exists; each call brings its parameters (`Model(x=...).m.remote()`).
            def needs_parameters(*args: Any, **kwargs: Any) -> NoReturn:
                raise InvalidError(
                    f"{self.tag} has parameters without defaults ({', '.join(required)}): call "
                    f"{self.tag}({required[0]}=...).{method_name}.remote(...)."
                )

            return UserCode(call=needs_parameters)
        instance = self._new_instance(params or {})
        enter_snap, enter, exit_ = self._bound_hooks(instance)
        call = types.MethodType(self._members.methods[method_name].raw_f, instance)
        return UserCode(call=call, enter_snap=enter_snap, enter=enter, exit=exit_)

    def __call__(self, *args: Any, **params: Any) -> Any:
        if args:
            raise InvalidError(f"{self.tag}() takes parameters by keyword only, e.g. {self.tag}(name=...).")
        if self._remote_name is not None:
            _remote.check_parameters(self.tag, params)
            return _RemoteObj(*self._remote_name, params)
        return _Obj(self, self._new_instance(params), params)

    def __repr__(self) -> str:
        if self._remote_name is not None:
            return f"cove.Cls.from_name{self._remote_name!r}"
        return f"cove.Cls({self.tag!r})"


class _RemoteObj:
    """An instance of a deployed class: `obj.method` is a `Function` to call with `.remote(...)`."""

    def __init__(self, app_name: str, cls_name: str, params: dict[str, Any]) -> None:
        self._app_name = app_name
        self._cls_name = cls_name
        self._params = params
        self._methods: dict[str, Function[..., Any]] = {}

    def __getattr__(self, name: str) -> Function[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._methods:
            tag = f"{self._cls_name}.{name}"
            target = RemoteTarget(self._app_name, tag, params=self._params, method=name)
            self._methods[name] = Function._from_target(target)
        return self._methods[name]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"cove.Cls.from_name({self._app_name!r}, {self._cls_name!r})({args})"


class _Obj:
    """A local instance of an `@app.cls` class; methods expose `.local(...)`, hooks run on first use."""

    def __init__(self, cls: Cls[Any], instance: object, params: dict[str, Any]) -> None:
        self._cls = cls
        self._instance = instance
        self._params = params
        self._entered = False

    def _enter(self) -> None:
        if self._entered:
            return
        self._entered = True
        enter_snap, enter, _ = self._cls._bound_hooks(self._instance)
        for hook in [*enter_snap, *enter]:
            result = hook()
            if inspect.isawaitable(result):
                asyncio.run(_await(result))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_cls" not in self.__dict__:
            raise AttributeError(name)
        if name in self._cls._members.methods:
            return _BoundMethod(self, name)
        return getattr(self._instance, name)

    def __repr__(self) -> str:
        return f"cove.Cls({self._cls.tag!r})()"


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _BoundMethod:
    """`Model().predict`: `.local(...)` runs the method on the local instance."""

    def __init__(self, obj: _Obj, name: str) -> None:
        self._obj = obj
        self._name = name
        self._spec = obj._cls._spec(name)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        self._obj._enter()
        raw_f = self._obj._cls._members.methods[self._name].raw_f
        return types.MethodType(raw_f, self._obj._instance)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        spec = self.__dict__.get("_spec")
        if name in _REMOTE_METHODS and spec is not None:
            cls_tag, _, method_name = spec.tag.partition(".")
            hint = f"{cls_tag}().{method_name}"
            if spec.is_web:
                _refuse_remote(spec.tag, True, name, hint)
            obj = self._obj
            target = _running_target(obj._cls._app, spec.tag, params=obj._params, method=self._name)
            return getattr(Function._from_target(target or _NotRunning(spec.tag, name, hint)), name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"cove.Function({self._spec.tag!r})"


def load_user_code(
    module: types.ModuleType, spec: FunctionSpec, params: Mapping[str, Any] | None = None
) -> UserCode:
    """Resolve `spec` against the imported user module (container side).

    A plain function comes back as is. For a class method, the class is instantiated with `params`
    (default: the parameter defaults), and the method and the lifecycle hooks are bound to that
    instance. A non-web method of a class with required parameters has no default instance: its
    `call` then says to pass them.
    """
    try:
        obj = getattr(module, spec.module_attr)
    except AttributeError:
        raise NotFoundError(
            f"Function {spec.tag!r} is not in module {module.__name__!r}: it has no attribute "
            f"{spec.module_attr!r}. Define it at module level (not inside a function or `if` block)."
        ) from None
    if spec.web is not None and spec.web.kind == "http_server":
        from cove.server import Server, server_user_code

        if isinstance(obj, Server):
            return obj._user_code()
        if isinstance(obj, Cls):
            return server_user_code(obj._user_cls, obj._members)
        raise NotFoundError(
            f"{module.__name__}.{spec.module_attr} is a {type(obj).__name__}, not a server class: "
            "decorate the class with @app.server()."
        )
    if spec.method_name is None:
        if not isinstance(obj, Function):
            raise NotFoundError(
                f"{module.__name__}.{spec.module_attr} is a {type(obj).__name__}, not a cove Function: "
                "decorate it with @app.function()."
            )
        return UserCode(call=obj.get_raw_f())
    if not isinstance(obj, Cls):
        raise NotFoundError(
            f"{module.__name__}.{spec.module_attr} is a {type(obj).__name__}, not a cove Cls: "
            "decorate the class with @app.cls()."
        )
    return obj._user_code(spec.method_name, params)


__all__ = [
    "Cls",
    "Function",
    "FunctionCall",
    "UserCode",
    "current_function_call_id",
    "current_input_id",
    "is_local",
    "load_user_code",
    "parameter",
]
