"""Loader: import a user's file in a fresh process and report its App's manifest.

`cove serve` and `cove deploy` never import user code in their own process: each load is a new
interpreter, so a reload sees the edited code and a crash in user code cannot take the CLI down.
The process starts warm (FastAPI and Pydantic imported) and waits on stdin for one request:
    {"file": "/abs/app.py", "app_var": "app" | null}                       a file (`cove serve app.py`)
    {"module": "pkg.mod", "root": "/abs/cwd", "app_var": "app" | null}     a module (`cove serve -m pkg.mod`)
and answers on its original stdout with one JSON line (the user's prints go to stderr):
    {"ok": true, "spec": {...}, "app_var": "app", "module_file": "...", "source_dir": "...",
     "module_name": "pkg.mod", "package_dir": "/abs/cwd/pkg" | null, "function": "tag" | null}
    {"ok": false, "error": "<traceback or message>"}
`app_var` may name a Function or Cls instead of an App: its App is loaded and `function` is its tag.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
import warnings
from types import ModuleType
from typing import Any


def _warm_imports() -> None:
    import fastapi  # noqa: F401
    import pydantic  # noqa: F401
    import starlette.responses  # noqa: F401

    import cove  # noqa: F401


class RefError(LookupError):
    """The reference names no usable App (or no module); the message says what to pass instead."""


def find_app(module: ModuleType, app_var: str | None) -> tuple[str, Any]:
    """The App to serve: `REF::name`, else the variable `app`, else the only App in the module."""
    var, app, _ = select(module, app_var)
    return var, app


def select(module: ModuleType, name: str | None) -> tuple[str, Any, str | None]:
    """(App variable, App, function tag or None) for `REF::name`: `name` may be an App, or a
    Function or Cls registered with one of the module's Apps (Modal's `file.py::function`)."""
    from cove.app import App
    from cove.functions import Cls, Function

    if name is None:
        return (*_default_app(module), None)
    value = getattr(module, name, None)
    if isinstance(value, App):
        return name, value, None
    if isinstance(value, (Function, Cls)):
        for var, app in vars(module).items():
            if isinstance(app, App):
                for tag, obj in app._registry.items():
                    if obj is value:
                        return var, app, tag
        raise RefError(
            f"{module.__file__}: {name!r} is not registered with an App of this module. "
            "Decorate it with @app.function() (or @app.cls()) of an App defined in the same module."
        )
    raise RefError(
        f"{module.__file__} has {'no App' if value is None else 'a non-App object'} named {name!r}. "
        + _apps_hint(module)
    )


def _default_app(module: ModuleType) -> tuple[str, Any]:
    from cove.app import App

    value = getattr(module, "app", None)
    if isinstance(value, App):
        return "app", value
    apps = [(name, obj) for name, obj in vars(module).items() if isinstance(obj, App)]
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise RefError(
            f"{module.__file__} defines no cove.App. "
            "Add `app = cove.App()` and decorate functions with `@app.function()`."
        )
    raise RefError(f"{module.__file__} defines several Apps. " + _apps_hint(module))


def _apps_hint(module: ModuleType) -> str:
    from cove.app import App

    names = [name for name, obj in vars(module).items() if isinstance(obj, App)]
    if not names:
        return "It defines no cove.App."
    ref = module.__name__ if "." in module.__name__ else module.__file__
    return "Choose one with REF::NAME, e.g. " + ", ".join(f"{ref}::{n}" for n in names) + "."


def user_traceback(exc: BaseException, module_file: str) -> str:
    """The traceback a user needs: their own frames, not the loader's."""
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    frames = traceback.extract_tb(exc.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    start = 0
    for index, frame in enumerate(frames):
        if not frame.filename.startswith(here) and "importlib" not in frame.filename:
            start = index
            break
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(frames[start:])
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def load(
    file: str | None, app_var: str | None, module_name: str | None = None, root: str | None = None
) -> dict[str, Any]:
    """Import a file (or, with `module_name`, a module from `root`) and describe its App."""
    from cove._container.entrypoint import import_user_module
    from cove._modal_compat import install as install_modal_compat

    install_modal_compat()
    where = file or module_name or "?"
    try:
        if module_name is not None:
            module, source_dir, package_dir = import_module(module_name, root or os.getcwd())
            module_file = str(module.__file__)
        else:
            assert file is not None
            module_file = os.path.abspath(file)
            source_dir, package_dir = os.path.dirname(module_file), None
            module = import_user_module(module_file, source_dir)
        var, app, function = select(module, app_var)
        spec = app._manifest()
    except RefError as exc:
        return {"ok": False, "error": str(exc)}
    except BaseException as exc:  # user code may raise anything, SystemExit included
        return {"ok": False, "error": user_traceback(exc, where)}
    from cove._spec import spec_to_dict

    return {
        "ok": True,
        "spec": spec_to_dict(spec),
        "app_var": var,
        "module_file": module_file,
        "source_dir": source_dir,
        "module_name": module.__name__,
        "package_dir": package_dir,
        "function": function,
    }


def import_module(name: str, root: str) -> tuple[ModuleType, str, str | None]:
    """Import `name` as `python -m` does from `root`: (module, the sys.path entry it came from,
    the top-level package's directory, or None for a top-level module)."""
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise RefError(
                f"No module named {exc.name!r} (looked in {root} and the installed packages). "
                f"Run the command from the directory that contains the package {name.split('.')[0]!r}, "
                "or pass the file path without -m."
            ) from None
        raise
    module_file = getattr(module, "__file__", None)
    if not module_file:
        raise RefError(f"{name!r} is a namespace package with no code; name one of its modules.")
    parts = name.split(".")
    depth = len(parts) if os.path.basename(module_file) == "__init__.py" else len(parts) - 1
    source_dir = os.path.dirname(os.path.abspath(module_file))
    for _ in range(depth):
        source_dir = os.path.dirname(source_dir)
    is_package = depth > 0
    return module, source_dir, os.path.join(source_dir, parts[0]) if is_package else None


def main() -> int:
    # Keep the real stdout for our answer; anything the user's module prints goes to stderr.
    answer = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _warm_imports()
    warnings.simplefilter("default", DeprecationWarning)
    line = sys.stdin.readline()
    if not line:
        return 0  # a spare loader that was not needed
    request = json.loads(line)
    result = load(request.get("file"), request.get("app_var"), request.get("module"), request.get("root"))
    answer.write(json.dumps(result) + "\n")
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
