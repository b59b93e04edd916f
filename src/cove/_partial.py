"""`PartialFunction`: a user callable plus what the decorators below `@app.function`/`@app.cls` recorded.

`@fastapi_endpoint`, `@asgi_app`, `@wsgi_app`, `@web_server`, `@concurrent`, `@method`, `@batched`,
`@enter` and `@exit` each wrap the user's callable in a `PartialFunction` that carries flags and
parameters. Stacking merges them (the order among these decorators does not matter). `@app.function`
or `@app.cls`, applied outermost, consumes the result and turns it into a `FunctionSpec`.

Every check runs at decoration time and raises `cove.exception.InvalidError` with the fix; the ones
all these decorators share are here.
"""

from __future__ import annotations

import enum
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from cove._spec import WebSpec
from cove.exception import InvalidError

P = ParamSpec("P")
R = TypeVar("R")

STREAMING_HINT = (
    "Webhooks cannot be generators. If you want a streaming response, return a "
    "`fastapi.responses.StreamingResponse` wrapping the generator instead "
    "(see https://modal.com/docs/guide/streaming-endpoints)."
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
        return f"cove.PartialFunction({name_of(self.raw_f)!r}, flags={self.flags!r})"


def name_of(obj: object) -> str:
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj))


def reject_positional(decorator: str, arg: object, *, str_keyword: str | None = None) -> None:
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
            f"@cove.{decorator} was applied to {name_of(arg)!r} without calling it. "
            f"Did you forget parentheses? Use `@cove.{decorator}()`."
        )
    raise InvalidError(
        f"Positional arguments are not allowed in @cove.{decorator}(), got {arg!r}. Pass options by keyword."
    )


def unwrap(
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


def is_generator_function(raw_f: object) -> bool:
    return inspect.isgeneratorfunction(raw_f) or inspect.isasyncgenfunction(raw_f)


def required_params(raw_f: Callable[..., Any]) -> list[str]:
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


def check_bool(decorator: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidError(f"@cove.{decorator}({name}=...) must be True or False, got {value!r}.")
    return value


def positive_int(decorator: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidError(f"@cove.{decorator}({name}=...) must be a positive integer, got {value!r}.")
    return value


__all__ = [
    "STREAMING_HINT",
    "Flags",
    "PartialFunction",
    "check_bool",
    "is_generator_function",
    "name_of",
    "positive_int",
    "reject_positional",
    "required_params",
    "unwrap",
]
