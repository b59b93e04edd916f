"""Loading a user's app from the CLI: FILE[::app] references and a warm loader process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from cove._spec import AppSpec, app_spec_from_dict
from cove.exception import InvalidError


@dataclass(frozen=True)
class AppRef:
    """`path/to/file.py[::app_var]` as given on the command line."""

    file: str
    app_var: str | None

    @classmethod
    def parse(cls, text: str) -> AppRef:
        file, sep, var = text.partition("::")
        if not file.endswith(".py"):
            raise InvalidError(
                f"{text!r} is not a Python file reference. Pass a file such as app.py or app.py::app."
            )
        path = os.path.abspath(file)
        if not os.path.isfile(path):
            raise InvalidError(f"File not found: {file}")
        if sep and not var.isidentifier():
            raise InvalidError(f"{var!r} is not a variable name; use FILE::app_variable.")
        return cls(path, var if sep else None)


@dataclass(frozen=True)
class Loaded:
    """A successfully loaded app."""

    spec: AppSpec
    spec_json: dict[str, Any]
    app_var: str
    module_file: str
    source_dir: str


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
            [sys.executable, "-m", "cove._runtime.loader"],
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
            process.stdin.write(json.dumps({"file": ref.file, "app_var": ref.app_var}) + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
        finally:
            process.stdin.close()
            process.wait()
            process.stdout.close()
            self.prepare()  # the next load starts warm
        if not line:
            raise LoadError(
                f"The loader for {ref.file} exited (code {process.returncode}) without an answer."
            )
        result = json.loads(line)
        if not result["ok"]:
            raise LoadError(result["error"])
        return Loaded(
            spec=app_spec_from_dict(result["spec"]),
            spec_json=result["spec"],
            app_var=result["app_var"],
            module_file=result["module_file"],
            source_dir=result["source_dir"],
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
