"""Class members: what `@app.cls` finds on a class (`ClassMembers`) and what a container runs (`UserCode`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cove._partial import Flags, PartialFunction
from cove.exception import InvalidError

NO_DEFAULT: Any = object()


_PARAMETER_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "bytes": bytes}


@dataclass(frozen=True)
class _Parameter:
    default: Any
    init: bool


def parameter(*, default: Any = NO_DEFAULT, init: bool = True) -> Any:
    """Declare a class parameter: `name: str = cove.parameter(default="base")` (str, int, bool, bytes).

    `init=False` keeps it out of the constructor (it always takes its default).
    """
    if not isinstance(init, bool):
        raise InvalidError(f"cove.parameter(init=...) must be True or False, got {init!r}.")
    if not init and default is NO_DEFAULT:
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
    if param.default is not NO_DEFAULT and not isinstance(param.default, resolved):
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


__all__ = ["NO_DEFAULT", "ClassMembers", "UserCode", "parameter"]
