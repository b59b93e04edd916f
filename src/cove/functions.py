"""Functions and classes registered on an App, and how a container finds the user's code again.

`@app.function` returns a `Function`; `@app.cls` returns a `Cls`. Both keep the user's callable so
it can run locally (`f.local(...)`, `f(...)`, `Model().predict.local(...)`), and carry the frozen
`FunctionSpec`s the platform runs. Inside a container, `load_user_code(module, spec)` turns a spec
back into something callable plus the class's lifecycle hooks.

`Function.from_name(app, name)` and `Cls.from_name(app, name)` reach functions of a deployed app
from any process: `.remote()`, `.spawn()`, `.map()` (see `cove._remote`).

This module is the public path of these names (Modal's `modal.functions`); they are defined in
`cove._function`, `cove._cls`, `cove._members` and `cove._context`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from cove._cls import Cls
from cove._context import _current_ids as _current_ids
from cove._context import _set_current_ids as _set_current_ids
from cove._context import current_function_call_id, current_input_id, is_local
from cove._function import Function
from cove._members import ClassMembers, UserCode, parameter
from cove._remote import FunctionCall
from cove._spec import FunctionSpec
from cove.exception import NotFoundError


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
    "ClassMembers",
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
