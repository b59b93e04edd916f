"""Call modifiers: `@concurrent`, `@method`, `@batched`, `@enter`, `@exit`, `@sessioned`.

These say how a function or class is called; the web decorators are in `cove.endpoints`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import ParamSpec, TypeVar, cast

from cove._partial import (
    Flags,
    PartialFunction,
    check_bool,
    is_generator_function,
    name_of,
    positive_int,
    reject_positional,
    unwrap,
)
from cove.exception import InvalidError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


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
    reject_positional("sessioned", _warn_parentheses_missing)

    def wrapper(target: type[T]) -> PartialFunction[..., T]:
        raw, partial = unwrap("sessioned", target, allow_class=True)
        if not inspect.isclass(raw):
            raise InvalidError(
                f"@cove.sessioned() decorates a Server class (under @app.server()), not {name_of(raw)!r}."
            )
        return cast("PartialFunction[..., T]", replace(partial, flags=partial.flags | Flags.SESSIONED))

    return wrapper


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
    reject_positional("concurrent", _warn_parentheses_missing)
    if max_inputs is None and target_inputs is None:
        raise TypeError(
            "@cove.concurrent() missing required argument: max_inputs, e.g. @cove.concurrent(max_inputs=10)."
        )
    # `target_inputs` alone is how Modal's HTTP server examples size a server (no hard cap per
    # container); `@app.function`/`@app.cls` still require `max_inputs` for everything else.
    max_n = None if max_inputs is None else positive_int("concurrent", "max_inputs", max_inputs)
    target_n = None if target_inputs is None else positive_int("concurrent", "target_inputs", target_inputs)
    if target_n is not None and max_n is not None and target_n > max_n:
        raise InvalidError(
            f"`target_inputs` ({target_n}) cannot be greater than `max_inputs` ({max_n}) "
            "in @cove.concurrent()."
        )

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = unwrap("concurrent", target, allow_class=True)
        if partial.flags & Flags.CONCURRENT:
            raise InvalidError(
                f"Cannot set `max_inputs` twice on {name_of(raw_f)!r}: "
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
    reject_positional("method", _warn_parentheses_missing)
    if is_generator is not None:
        check_bool("method", "is_generator", is_generator)

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = unwrap("method", target)
        if partial.web is not None:
            raise InvalidError(
                f"Web endpoints on classes should not be wrapped by `@method` ({name_of(raw_f)!r}). "
                "Suggestion: remove the `@method` decorator."
            )
        if partial.flags & Flags.BATCHED:
            raise InvalidError(
                f"Batched function on classes should not be wrapped by `@method` ({name_of(raw_f)!r}). "
                "Suggestion: remove the `@method` decorator."
            )
        if partial.flags & Flags.lifecycle():
            raise InvalidError(
                f"Cannot use `@method` together with @cove.enter/@cove.exit on {name_of(raw_f)!r}. "
                "Use separate methods."
            )
        resolved = is_generator if is_generator is not None else is_generator_function(raw_f)
        return cast(
            "PartialFunction[P, R]",
            replace(partial, flags=partial.flags | Flags.CALLABLE, is_generator=resolved),
        )

    return wrapper


def batched(
    _warn_parentheses_missing: object = None, *, max_batch_size: int | None = None, wait_ms: int | None = None
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Gather single inputs into lists of up to `max_batch_size`, waiting at most `wait_ms`."""
    reject_positional("batched", _warn_parentheses_missing)
    if max_batch_size is None or wait_ms is None:
        raise TypeError(
            "@cove.batched() requires max_batch_size and wait_ms, "
            "e.g. @cove.batched(max_batch_size=8, wait_ms=100)."
        )
    size = positive_int("batched", "max_batch_size", max_batch_size)
    if size > 1000:
        raise InvalidError(f"@cove.batched(max_batch_size=...) must be at most 1000, got {size}.")
    if isinstance(wait_ms, bool) or not isinstance(wait_ms, int) or not 0 <= wait_ms <= 600_000:
        raise InvalidError(
            f"@cove.batched(wait_ms=...) must be an integer from 0 to 600000, got {wait_ms!r}."
        )

    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = unwrap("batched", target)
        if partial.web is not None:
            raise InvalidError(
                "Callable decorators cannot be combined with web interface decorators on "
                f"{name_of(raw_f)!r}: remove @cove.batched or the web decorator."
            )
        if partial.flags & Flags.lifecycle():
            raise InvalidError(
                f"Cannot use `@batched` together with @cove.enter/@cove.exit on {name_of(raw_f)!r}."
            )
        flags = partial.flags | Flags.CALLABLE | Flags.BATCHED
        return cast(
            "PartialFunction[P, R]", replace(partial, flags=flags, batch_max_size=size, batch_wait_ms=wait_ms)
        )

    return wrapper


def _lifecycle(decorator: str, flag: Flags) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    def wrapper(target: Callable[P, R]) -> PartialFunction[P, R]:
        raw_f, partial = unwrap(decorator, target)
        if partial.web is not None:
            raise InvalidError(
                "Lifecycle decorators (@cove.enter/@cove.exit) cannot be combined with "
                f"@cove.{partial.web.kind} on {name_of(raw_f)!r}. Use a separate method for each."
            )
        if partial.flags & Flags.CALLABLE:
            raise InvalidError(f"Cannot use `@{decorator}` decorator with `@method` on {name_of(raw_f)!r}.")
        return cast("PartialFunction[P, R]", replace(partial, flags=partial.flags | flag))

    return wrapper


def enter(
    _warn_parentheses_missing: object = None, *, snap: bool = False
) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Run this method once per container before it accepts inputs (`snap=True`: before snapshots)."""
    reject_positional("enter", _warn_parentheses_missing)
    snap = check_bool("enter", "snap", snap)
    return _lifecycle("enter", Flags.ENTER_PRE_SNAPSHOT if snap else Flags.ENTER_POST_SNAPSHOT)


def exit(_warn_parentheses_missing: object = None) -> Callable[[Callable[P, R]], PartialFunction[P, R]]:
    """Run this method once when the container shuts down."""
    reject_positional("exit", _warn_parentheses_missing)
    return _lifecycle("exit", Flags.EXIT)


__all__ = ["batched", "concurrent", "enter", "exit", "method", "sessioned"]
