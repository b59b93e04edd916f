"""Loader: import a user's file in a fresh process and report its App's manifest.

`cove serve` and `cove deploy` never import user code in their own process: each load is a new
interpreter, so a reload sees the edited code and a crash in user code cannot take the CLI down.
The process starts warm (FastAPI and Pydantic imported) and waits on stdin for one request:
    {"file": "/abs/app.py", "app_var": "app" | null}
and answers on its original stdout with one JSON line (the user's prints go to stderr):
    {"ok": true, "spec": {...}, "app_var": "app", "module_file": "...", "source_dir": "..."}
    {"ok": false, "error": "<traceback or message>"}
"""

from __future__ import annotations

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


def find_app(module: ModuleType, app_var: str | None) -> tuple[str, Any]:
    """The App to serve: `FILE::name`, else the variable `app`, else the only App in the file."""
    from cove.app import App

    if app_var is not None:
        value = getattr(module, app_var, None)
        if not isinstance(value, App):
            found = value is not None
            raise LookupError(
                f"{module.__file__} has {'no App' if not found else 'a non-App object'} named {app_var!r}. "
                + _apps_hint(module)
            )
        return app_var, value
    value = getattr(module, "app", None)
    if isinstance(value, App):
        return "app", value
    apps = [(name, obj) for name, obj in vars(module).items() if isinstance(obj, App)]
    if len(apps) == 1:
        return apps[0]
    if not apps:
        raise LookupError(
            f"{module.__file__} defines no cove.App. "
            "Add `app = cove.App()` and decorate functions with `@app.function()`."
        )
    raise LookupError(f"{module.__file__} defines several Apps. " + _apps_hint(module))


def _apps_hint(module: ModuleType) -> str:
    from cove.app import App

    names = [name for name, obj in vars(module).items() if isinstance(obj, App)]
    if not names:
        return "It defines no cove.App."
    return "Choose one with FILE::NAME, e.g. " + ", ".join(f"{module.__file__}::{n}" for n in names) + "."


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


def load(file: str, app_var: str | None) -> dict[str, Any]:
    from cove._modal_compat import install as install_modal_compat
    from cove._runtime.entrypoint import import_user_module

    module_file = os.path.abspath(file)
    source_dir = os.path.dirname(module_file)
    install_modal_compat()
    try:
        module = import_user_module(module_file, source_dir)
        var, app = find_app(module, app_var)
        spec = app._manifest()
    except BaseException as exc:  # user code may raise anything, SystemExit included
        return {"ok": False, "error": user_traceback(exc, module_file)}
    from cove._spec import spec_to_dict

    return {
        "ok": True,
        "spec": spec_to_dict(spec),
        "app_var": var,
        "module_file": module_file,
        "source_dir": source_dir,
    }


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
    result = load(request["file"], request.get("app_var"))
    answer.write(json.dumps(result) + "\n")
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
