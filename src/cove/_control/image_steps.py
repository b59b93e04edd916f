"""The commands and copies of an image build: output to its log and event stream (secrets masked),
uv, and the files copy=True steps bake in."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cove._bundle import IGNORED_DIRS, IGNORED_SUFFIXES
from cove._control import build_sandbox
from cove._control.image_plan import copy_targets
from cove._runtime.tether import tethered
from cove._spec import ImageStep
from cove.exception import ImageBuildError

Event = dict[str, Any]
Emit = Callable[[Event], None]

#: uv never downloads a Python, and compiles bytecode: a container's virtualenv is read-only, so a
#: module without its .pyc would be compiled again at every container start.
UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "UV_COMPILE_BYTECODE": "1"}
TAIL_LINES = 15


class StepFailed(Exception):
    def __init__(self, code: int, tail: list[str]) -> None:
        super().__init__(code)
        self.code = code
        self.tail = tail


class BuildOutput:
    """Where a build's output goes: the log file and the event stream, with secret values masked."""

    def __init__(self, log_path: Path, emit: Emit, image: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "w": the file is the log of the image's latest build, not of every attempt.
        self._file = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._emit = emit
        self._image = image
        self._secrets: list[str] = []
        self.path = log_path

    def hide(self, values: Iterable[str]) -> None:
        self._secrets = sorted({*self._secrets, *(v for v in values if v)}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    def line(self, text: str) -> str:
        text = self.mask(text)
        self._file.write(text + "\n")
        self._file.flush()
        self._emit({"event": "log", "image": self._image, "line": text})
        return text

    def event(self, event: Event) -> None:
        self._emit({"image": self._image, **event})

    def close(self) -> None:
        self._file.close()


async def run_step(
    argv: list[str], output: BuildOutput, *, env: Mapping[str, str], cwd: str | None = None
) -> None:
    """Run one build command, streaming its output; raise `StepFailed` with the last lines on failure."""
    shown = argv[argv.index("--") + 1 :] if "--" in argv else argv
    output.line("$ " + shlex.join(shown))
    process = await asyncio.create_subprocess_exec(
        *tethered(argv),  # a build outlives no server (issue 12)
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    tail: list[str] = []
    assert process.stdout is not None
    try:
        while True:
            try:
                raw = await process.stdout.readline()
            except ValueError:
                raw = await process.stdout.read(65536)
            if not raw:
                break
            text = output.line(raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r"))
            tail = [*tail[-(TAIL_LINES - 1) :], text]
        code = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise
    if code != 0:
        raise StepFailed(code, tail)


def copy_tree(source: Path, destination: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)


def uv_path() -> str:
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        path = shutil.which("uv")
        if path is None:
            raise ImageBuildError(
                "uv is not installed next to Cove; reinstall Cove (`pip install cove`)."
            ) from None
        return path


@functools.cache
def uv_cache_dir() -> str:
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    result = subprocess.run([uv_path(), "cache", "dir"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def pip_args(step: ImageStep, packages: tuple[str, ...], requirements: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for name, flag in (("index_url", "--index-url"), ("extra_index_url", "--extra-index-url")):
        if step.arg(name):
            args += [flag, str(step.arg(name))]
    if step.arg("find_links"):
        args += ["--find-links", str(step.arg("find_links"))]
    if step.arg("pre"):
        args += ["--prerelease", "allow"]
    if step.arg("extra_options"):
        args += shlex.split(str(step.arg("extra_options")))
    for requirement in requirements:
        args += ["-r", requirement]
    return [*args, *packages]


def local_sources(step: ImageStep | None) -> list[str]:
    """Local directories a pip step's index options name (`cove serve` only: a deployed step's
    must be http(s) URLs), which a sandboxed uv must see."""
    names = ("index_url", "extra_index_url", "find_links")
    values = [str(step.arg(name) or "") for name in names] if step is not None else []
    return [path for value in values for path in build_sandbox.paths_in(value)]


def copy_tree_contents(source: Path, destination: Path) -> None:
    for entry in source.iterdir():
        subprocess.run(["cp", "-a", "--reflink=auto", str(entry), str(destination / entry.name)], check=True)


def copy_files(step: ImageStep, files: Path) -> None:
    ignore = tuple(step.arg("ignore", ()))
    for local, remote in copy_targets(step):
        source = Path(local)
        target = files / remote.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_file():
            shutil.copy2(source, target)
            continue
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
            for name in filenames:
                file = Path(dirpath) / name
                relative = str(file.relative_to(source))
                if name.endswith(IGNORED_SUFFIXES) or any(fnmatch.fnmatch(relative, p) for p in ignore):
                    continue
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target / relative)
        target.mkdir(parents=True, exist_ok=True)
