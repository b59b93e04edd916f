"""Checks on what an App decorator is given, before the App registers it: scope, stacking, servers."""

from __future__ import annotations

import inspect
from typing import Any

from cove._members import ClassMembers
from cove._partial import Flags, PartialFunction
from cove.exception import InvalidError


def check_scope(where: str, obj: Any, serialized: bool) -> None:
    """Containers import user code by name, so it must live at module level (or be serialized)."""
    parts = obj.__qualname__.split(".")
    kind = "Class" if inspect.isclass(obj) else "Function"
    if len(parts) > 1 and parts[-2] != "<locals>" and not inspect.isclass(obj):
        raise InvalidError(
            f"{where}() cannot decorate a method ({obj.__qualname__!r}). "
            "Use @app.cls() on the class and @cove.method() or a web decorator on the method."
        )
    if "<locals>" in parts and not serialized:
        raise InvalidError(
            f"{kind} {obj.__qualname__!r} is defined inside a function, so a container cannot import it "
            f"by name. Move it to module level, or pass serialized=True to {where}()."
        )


def check_max_inputs(where: str, name: str, partial: PartialFunction[..., Any]) -> None:
    if partial.flags & Flags.SESSIONED:
        raise InvalidError(
            f"@modal.sessioned() can only be applied to a Server: use @app.server() on {name!r} "
            f"instead of {where}()."
        )
    if partial.flags & Flags.CONCURRENT and partial.max_inputs is None:
        raise InvalidError(
            f"@cove.concurrent on {name!r} needs max_inputs, e.g. @cove.concurrent(max_inputs=10"
            f"{f', target_inputs={partial.target_inputs}' if partial.target_inputs else ''}). "
            f"Only HTTP servers may give target_inputs alone ({where})."
        )


def check_server_class(where: str, cls_name: str, members: ClassMembers) -> None:
    if members.methods:
        names = ", ".join(members.methods)
        raise InvalidError(
            f"Server class {cls_name} ({where}) only serves HTTP from the server its @enter method starts; "
            f"remove the web or @method decorators from: {names}."
        )
    if not members.enter and not members.enter_snap:
        raise InvalidError(
            f"Server class {cls_name} ({where}) needs an @modal.enter() method that starts the server "
            "listening on its port, e.g. subprocess.Popen([...])."
        )


def reject_positional(where: str, arg: object) -> None:
    if arg is None:
        return
    if callable(arg):
        raise InvalidError(
            f"{where} was applied to {getattr(arg, '__qualname__', arg)!r} without calling it. "
            f"Did you forget parentheses? Use `{where}()`."
        )
    raise InvalidError(
        f"Positional arguments are not allowed in {where}(), got {arg!r}. "
        f"Pass options by keyword, e.g. {where}(image=image)."
    )


def unwrap(where: str, target: object) -> tuple[Any, PartialFunction[..., Any]]:
    app_decorator = getattr(type(target), "_cove_app_decorator", None)
    if app_decorator is not None:
        raise InvalidError(
            f"{target!r} is already decorated with {app_decorator}; apply {where}() only once."
        )
    if isinstance(target, PartialFunction):
        return target.raw_f, target
    if not callable(target):
        raise InvalidError(
            f"{where}() decorates a function or class, got {type(target).__name__} {target!r}."
        )
    return target, PartialFunction(target)


__all__ = ["check_max_inputs", "check_scope", "check_server_class", "reject_positional", "unwrap"]
