"""`Cls`: a class registered with `@app.cls()`, or one of a deployed app found by name, and its instances."""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from cove import _remote
from cove._function import REMOTE_METHODS, Function, NotRunning, refuse_remote, running_target
from cove._members import NO_DEFAULT, ClassMembers, UserCode
from cove._remote import RemoteTarget
from cove._spec import FunctionSpec
from cove.exception import InvalidError, NotFoundError

T = TypeVar("T")


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
            elif param.default is not NO_DEFAULT:
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
        required = [n for n, (p, _) in self._members.parameters.items() if p.default is NO_DEFAULT]
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
        if name in REMOTE_METHODS and spec is not None:
            cls_tag, _, method_name = spec.tag.partition(".")
            hint = f"{cls_tag}().{method_name}"
            if spec.is_web:
                refuse_remote(spec.tag, True, name, hint)
            obj = self._obj
            target = running_target(obj._cls._app, spec.tag, params=obj._params, method=self._name)
            return getattr(Function._from_target(target or NotRunning(spec.tag, name, hint)), name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"cove.Function({self._spec.tag!r})"


__all__ = ["Cls"]
