"""`cove run FILE[::NAME] [--arg value ...]`: run a local entrypoint (or one function) with the app up.

As Modal's `modal run`: the file is imported here, an ephemeral app runs its functions in containers
for the length of the run, and the target runs:
- a `@app.local_entrypoint()` runs in this process (its `.remote()` calls reach the containers);
- a plain `@app.function` (or `Cls.method`) runs remotely, once, with the arguments given.
Arguments are options made from the target's signature: `--name value`, `--flag/--no-flag` for a
bool, parameters without a default are required. The app stops when the target returns, or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import os
import signal
import sys
import traceback
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._load import AppRef

#: Parameter annotations `cove run` turns into options, and the click type of each.
_CLICK_TYPES: dict[object, click.ParamType[Any]] = {
    str: click.STRING,
    int: click.INT,
    float: click.FLOAT,
    bool: click.BOOL,
    datetime.datetime: click.DateTime(),
}


@dataclass(frozen=True)
class RunTarget:
    """`FILE[::NAME]`: the app reference (the same as serve/deploy take) and the name in it, if any.

    NAME is a local entrypoint, a function, `Cls.method`, or any of those after `app_var.`."""

    ref: AppRef
    name: str | None

    @classmethod
    def parse(cls, text: str, *, module: bool = False) -> RunTarget:
        source, sep, name = text.partition("::")
        ref = AppRef.parse(source, module=module)
        if sep and not all(part.isidentifier() for part in name.split(".")):
            raise exception.InvalidError(
                f"{name!r} is not a function name; use FILE::function, FILE::Cls.method or "
                "FILE::app.function."
            )
        return cls(ref, name if sep else None)


@dataclass(frozen=True)
class Chosen:
    """What to run: a local entrypoint (`local=True`) or a function to call remotely."""

    app: Any
    label: str
    signature_of: Callable[..., Any]
    local: bool
    target: Any  # a LocalEntrypoint, a Function, or a method of a local class instance


def _import(ref: AppRef) -> types.ModuleType:
    from cove._container.entrypoint import import_user_module
    from cove._container.loader import RefError, import_module, user_traceback
    from cove._modal_compat import install as install_modal_compat

    install_modal_compat()
    try:
        if ref.module is not None:
            return import_module(ref.module, ref.root or os.getcwd())[0]
        assert ref.file is not None
        return import_user_module(ref.file, os.path.dirname(ref.file))
    except RefError as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    except BaseException as exc:
        render.user_error(user_traceback(exc, str(ref.file or ref.module)))
        raise SystemExit(1) from None


def choose(module: types.ModuleType, name: str | None) -> Chosen:
    """The target `name` names in `module` (see `RunTarget`), or the only runnable one (Modal's rule:
    the only local entrypoint, else the only function)."""
    from cove.app import App
    from cove.functions import Cls, Function

    apps = {var: value for var, value in vars(module).items() if isinstance(value, App)}
    if not apps:
        raise exception.InvalidError(
            f"{module.__file__} defines no cove.App. Add `app = cove.App()` and a function to run."
        )
    if name is not None and "." in name and name.partition(".")[0] in apps:
        var, _, name = name.partition(".")
        apps = {var: apps[var]}
    candidates: dict[str, Chosen] = {}
    for app in apps.values():
        for tag, entrypoint in app.registered_entrypoints.items():
            candidates[tag] = Chosen(app, tag, entrypoint.raw_f, True, entrypoint)
    entrypoints = dict(candidates)
    for app in apps.values():
        for tag, obj in app._registry.items():
            if isinstance(obj, Function) and not obj.spec.is_web:
                candidates.setdefault(tag, Chosen(app, tag, obj.get_raw_f(), False, obj))
            elif isinstance(obj, Cls):
                for spec in obj.specs:
                    if spec.web is None and spec.method_name is not None:
                        method = obj._members.methods[spec.method_name].raw_f
                        chosen = Chosen(app, spec.tag, method, False, (obj, spec.method_name))
                        candidates.setdefault(spec.tag, chosen)
    if name is not None:
        if name in candidates:
            return candidates[name]
        raise exception.NotFoundError(
            f"{module.__file__} has no local entrypoint or function {name!r}. "
            f"It has: {', '.join(sorted(candidates)) or 'none'}."
        )
    if len(entrypoints) == 1:
        return next(iter(entrypoints.values()))
    if not entrypoints and len(candidates) == 1:
        return next(iter(candidates.values()))
    listed = ", ".join(f"{module.__file__}::{tag}" for tag in sorted(entrypoints or candidates))
    raise exception.InvalidError(
        f"{module.__file__} has {'several' if (entrypoints or candidates) else 'no'} things to run"
        + (
            f"; choose one: {listed}."
            if listed
            else ": add an @app.local_entrypoint() or an @app.function()."
        )
    )


def options_for(function: Callable[..., Any], label: str) -> list[click.Parameter]:
    """Click options for the parameters of `function`: `--name value`, `--flag/--no-flag` for bools."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {}
    params: list[click.Parameter] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise exception.InvalidError(
                f"{label} takes *{param.name}; `cove run` passes options by name. "
                "Declare each parameter (e.g. `def main(n: int, name: str = 'x')`)."
            )
        annotation = _unwrap_optional(hints.get(param.name, str))
        click_type = _CLICK_TYPES.get(annotation)
        if click_type is None:
            raise exception.InvalidError(
                f"Parameter {param.name!r} of {label} has type {annotation!r}; `cove run` takes "
                "str, int, float, bool and datetime.datetime parameters."
            )
        dashed = param.name.replace("_", "-")
        if annotation is bool:
            declarations = [f"--{dashed}/--no-{dashed}", param.name]
        else:
            declarations = [f"--{dashed}", param.name]
        if param.default is inspect.Parameter.empty:
            params.append(click.Option(declarations, type=click_type, required=True))
        else:
            params.append(
                click.Option(declarations, type=click_type, default=param.default, show_default=True)
            )
    return params


def _unwrap_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _call(chosen: Chosen, kwargs: dict[str, Any]) -> None:
    from cove.functions import Function

    if chosen.local:
        result = chosen.target(**kwargs)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
        return
    if isinstance(chosen.target, Function):
        function = chosen.target
    else:
        cls, method = chosen.target
        function = getattr(cls(), method)
    if chosen.signature_of is not None and (
        inspect.isgeneratorfunction(chosen.signature_of) or inspect.isasyncgenfunction(chosen.signature_of)
    ):
        for _ in function.remote_gen(**kwargs):
            pass
        return
    function.remote(**kwargs)


def _raise_interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


async def _await(awaitable: Any) -> Any:
    return await awaitable


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "-m", "use_module", is_flag=True, help="Interpret FILE as a Python module (pkg.module) instead of a file."
)
@click.argument("func_ref", metavar="FILE[::NAME] | -m MODULE[::NAME]")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-n", "--name", "app_name", help="Name of the ephemeral app (default: App(name) or the file name)."
)
@click.option("-q", "--quiet", is_flag=True, help="Show no progress, only the app's output.")
def run(func_ref: str, args: tuple[str, ...], app_name: str | None, quiet: bool, use_module: bool) -> None:
    """Run a local entrypoint (or a function) of FILE with its app running, then stop the app.

    Options of cove run go before FILE; everything after it is the target's own arguments
    (`--n 3`, `--flag/--no-flag`). `FILE::NAME` chooses the entrypoint, function or `Cls.method`.
    """
    from cove import _runner

    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        target = RunTarget.parse(func_ref, module=use_module)
    except exception.InvalidError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE[::NAME]") from None
    module = _import(target.ref)
    try:
        chosen = choose(module, target.name)
        command = click.Command(chosen.label, params=options_for(chosen.signature_of, chosen.label))
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    with command.make_context(f"cove run {func_ref}", list(args)) as ctx:
        kwargs = dict(ctx.params)
    try:
        with _runner.run(chosen.app, name=app_name, show_objects=not quiet):
            _call(chosen, kwargs)
            if not quiet:
                render.info("Stopping app - local entrypoint completed.")
    except KeyboardInterrupt:
        render.info("Disconnecting from Cove - this stops the app.")
        render.success("App aborted.")
        raise SystemExit(130) from None
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
    if not quiet:
        render.success("App completed.")
    sys.stdout.flush()
