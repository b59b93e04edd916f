"""Loading a user's app from the CLI: FILE[::NAME] or -m MODULE[::NAME], and a warm loader process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from cove._spec import AppSpec, app_spec_from_dict
from cove.exception import InvalidError

_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AppRef:
    """What the command line names: `path/to/file.py[::NAME]`, or with `-m`, `pkg.module[::NAME]`.

    NAME is a variable of the module holding an App, or a Function/Cls registered with one (its App
    is loaded). In module mode the module is imported as `pkg.module` from `root` (the current
    directory), as `python -m` would, so relative imports inside the package work.
    """

    file: str | None
    app_var: str | None
    module: str | None = None
    root: str | None = None

    @classmethod
    def parse(cls, text: str, *, module: bool = False) -> AppRef:
        target, sep, var = text.partition("::")
        if sep and not var.isidentifier():
            where = "MODULE::NAME" if module else "FILE::NAME"
            raise InvalidError(f"{var!r} is not a variable name; use {where}, e.g. {target}::app.")
        if module:
            if target.endswith(".py") or "/" in target or os.sep in target:
                raise InvalidError(
                    f"{target!r} is a file path, but -m takes a module name. Drop -m to use the file, "
                    f"or pass its dotted name, e.g. -m {_dotted_hint(target)}."
                )
            if not _MODULE_RE.match(target):
                raise InvalidError(f"{target!r} is not a Python module name such as pkg.module.")
            return cls(None, var if sep else None, module=target, root=os.getcwd())
        if not target.endswith(".py"):
            hint = f" For a module, use -m {target}." if _MODULE_RE.match(target) else ""
            raise InvalidError(
                f"{text!r} is not a Python file reference. Pass a file such as app.py or app.py::app.{hint}"
            )
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise InvalidError(f"File not found: {target}")
        return cls(path, var if sep else None)

    @property
    def default_name(self) -> str:
        """The app name when neither --name nor App(name) gives one: the file's or module's last part."""
        if self.module is not None:
            return self.module.rpartition(".")[2]
        assert self.file is not None
        return os.path.splitext(os.path.basename(self.file))[0]

    def __str__(self) -> str:
        target = f"-m {self.module}" if self.module is not None else str(self.file)
        return f"{target}::{self.app_var}" if self.app_var else target


def _dotted_hint(path: str) -> str:
    stem = path[:-3] if path.endswith(".py") else path
    return ".".join(part for part in stem.replace(os.sep, "/").split("/") if part not in ("", "."))


def app_ref_arguments(command: F) -> F:
    """The `APP_REF` argument and `-m` flag shared by the commands that load an app (serve, deploy,
    run): pass their values to `parse_app_ref`."""
    command = click.option(
        "-m",
        "use_module",
        is_flag=True,
        help="Interpret the argument as a Python module (pkg.module) instead of a file.",
    )(command)
    return click.argument("app_ref", metavar="FILE[::NAME] | -m MODULE[::NAME]")(command)


def parse_app_ref(app_ref: str, use_module: bool) -> AppRef:
    """`AppRef.parse` for a click command: a bad reference is a usage error (exit 2)."""
    try:
        return AppRef.parse(app_ref, module=use_module)
    except InvalidError as exc:
        raise click.BadParameter(str(exc), param_hint="APP_REF") from None


@dataclass(frozen=True)
class Loaded:
    """A successfully loaded app.

    `source_dir` is the directory on `sys.path` (the file's directory, or with -m the directory the
    package was imported from); `package_dir` is, with -m, the top-level package's directory, which
    is what is shipped and watched. `function` is the tag NAME selected when it named a function.
    """

    spec: AppSpec
    spec_json: dict[str, Any]
    app_var: str
    module_file: str
    source_dir: str
    module_name: str = ""
    package_dir: str | None = None
    function: str | None = None

    @property
    def watch_dir(self) -> str:
        """What `cove serve` watches: the package with -m, else the file's directory."""
        return self.package_dir or self.source_dir


class LoadError(Exception):
    """The user's file failed to import or has no usable App; `text` is what to show them."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class WarmLoader:
    """Keeps one loader process started in advance, so a reload skips interpreter + framework start-up."""

    def __init__(self) -> None:
        self._spare: subprocess.Popen[str] | None = None

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "cove._container.loader"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the user's prints and warnings reach the terminal
            text=True,
        )

    def prepare(self) -> None:
        if self._spare is None or self._spare.poll() is not None:
            self._spare = self._spawn()

    def load(self, ref: AppRef) -> Loaded:
        self.prepare()
        process, self._spare = self._spare, None
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            request = {"file": ref.file, "module": ref.module, "root": ref.root, "app_var": ref.app_var}
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        finally:
            process.stdin.close()
            process.wait()
            process.stdout.close()
            self.prepare()  # the next load starts warm
        if not line:
            raise LoadError(f"The loader for {ref} exited (code {process.returncode}) without an answer.")
        result = json.loads(line)
        if not result["ok"]:
            raise LoadError(result["error"])
        return Loaded(
            spec=app_spec_from_dict(result["spec"]),
            spec_json=result["spec"],
            app_var=result["app_var"],
            module_file=result["module_file"],
            source_dir=result["source_dir"],
            module_name=result.get("module_name", ""),
            package_dir=result.get("package_dir"),
            function=result.get("function"),
        )

    def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None and spare.poll() is None:
            assert spare.stdin is not None
            spare.stdin.close()
            try:
                spare.wait(timeout=5)
            except subprocess.TimeoutExpired:
                spare.kill()
                spare.wait()
            if spare.stdout is not None:
                spare.stdout.close()
