"""Image builds: a recipe's steps become cached layers, and a built image is a directory reused by
every function and app with the same recipe.

Cache layout (`COVE_IMAGE_CACHE`, default `COVE_HOME/images`):

    layers/<key>/              one layer: venv/ (a relocatable virtualenv), rootfs/ (images with
                               apt_install/run_commands), files/ (copy=True files), layer.json
    rootfs-<suite>-<hash>/     the Debian base root filesystem (debootstrap, minbase), built once
    logs/<key>.log             the last build log of an image (secret values replaced by ***)
    locks/                     flock files: one build of a key at a time, across processes

A layer's key hashes its parent's key and its step, including the contents of the files the step
reads (requirements files, pyproject.toml, copy=True sources), so an edit to one rebuilds from there.
`env`/`workdir` steps only enter the keys of the layers after them. The first layer ("base") is a
virtualenv on a local interpreter of the requested version, with the worker's own packages
(FastAPI, uvicorn, ...) at the server's versions; the user's steps come after it, so a version the
user pins wins.

Every build step runs package code (an sdist's setup.py, a build backend, an apt maintainer script)
in a bubblewrap sandbox: `uv` for a virtualenv-only image in one that shows it the host's system
directories, the interpreter, the virtualenv being built and uv's cache, but never COVE_HOME (see
`build_sandbox`); apt_install/run_commands inside the image's root filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import functools
import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove._bundle import IGNORED_DIRS, IGNORED_SUFFIXES, move_step_paths, resolve_in_bundle
from cove._control import build_sandbox
from cove._control.build_sandbox import VenvBuild
from cove._control.secrets import SecretStore
from cove._runtime.backend import CONTAINER_HOME, ImageLayout
from cove._runtime.backends.local import sandbox
from cove._runtime.backends.local.isolation import _host_system, probe_bwrap
from cove._runtime.backends.local.sandbox import Bind, BuildNeeds
from cove._runtime.tether import tethered
from cove._spec import AppSpec, ImageSpec, ImageStep, SecretRef, spec_to_dict
from cove.config import SandboxSetting
from cove.exception import ImageBuildError, InvalidError

log = logging.getLogger("cove.images")

Event = dict[str, Any]
Emit = Callable[[Event], None]

#: What the worker imports, installed into every image at the server's versions.
WORKER_PACKAGES = (
    *("fastapi", "uvicorn[standard]", "a2wsgi", "cloudpickle", "uvloop", "httptools", "httpx"),
    # What Modal's client brings into its containers and Modal apps import without installing.
    *("aiohttp", "typer", "toml", "typing_extensions"),
)
#: The oldest Python the worker (the `cove` package bound into each container) runs on.
MIN_PYTHON = (3, 11)
SUITE = "bookworm"
#: Libraries a locally built CPython links against, which Debian's minbase lacks.
ROOTFS_INCLUDE = (
    "ca-certificates",
    "libbsd0",
    "libexpat1",
    "libffi8",
    "libgdbm6",
    "libgssapi-krb5-2",
    "libncursesw6",
    "libnsl2",
    "libreadline8",
    "libsqlite3-0",
    "libssl3",
    "libuuid1",
)
_LAYER_FORMAT = "cove-layer-2"
#: uv never downloads a Python, and compiles bytecode: a container's virtualenv is read-only, so a
#: module without its .pyc would be compiled again at every container start.
_UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "UV_COMPILE_BYTECODE": "1"}
_TAIL_LINES = 15
_ACTION_KINDS = frozenset(
    {
        "pip_install",
        "uv_pip_install",
        "pip_install_from_requirements",
        "pip_install_from_pyproject",
        "apt_install",
        "run_commands",
        "add_local_file",
        "add_local_dir",
        "add_local_python_source",
    }
)
_ROOTFS_KINDS = frozenset({"apt_install", "run_commands"})


# -- interpreters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """A local CPython an image's virtualenv is built on."""

    executable: str
    version: str  # "3.11.7"
    prefix: str
    stdlib: str

    def binds(self, rootfs: bool) -> tuple[str, ...]:
        """Host paths the interpreter needs inside a container (at the same place)."""
        if self.prefix != "/usr":
            return (self.prefix,)
        return (self.executable, self.stdlib) if rootfs else ()


_QUERY = (
    "import json, os, platform, sys, sysconfig; print(json.dumps({'version': platform.python_version(), "
    "'executable': os.path.realpath(sys.executable), 'prefix': sys.base_prefix, "
    "'stdlib': sysconfig.get_path('stdlib')}))"
)


def _candidates() -> list[str]:
    found = [os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3")))
    for directory in ("/usr/local/bin", "/usr/bin", *os.environ.get("PATH", "").split(os.pathsep)):
        found += sorted(glob.glob(os.path.join(directory, "python3.[0-9]*")))
    unique: dict[str, None] = {}
    for path in found:
        real = os.path.realpath(path)
        if os.path.basename(real).replace(".", "").replace("python", "").isdigit() and os.access(
            real, os.X_OK
        ):
            unique.setdefault(real, None)
    return list(unique)


@functools.cache
def local_interpreters() -> tuple[Interpreter, ...]:
    """Every CPython found on this machine (the server's own first), each asked for its version."""
    found: list[Interpreter] = []
    for path in _candidates():
        try:
            result = subprocess.run([path, "-I", "-c", _QUERY], capture_output=True, text=True, timeout=10)
            info = json.loads(result.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        found.append(Interpreter(info["executable"], info["version"], info["prefix"], info["stdlib"]))
    unique = {i.executable: i for i in found}
    return tuple(unique.values())


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def find_interpreter(version: str) -> Interpreter:
    """The local interpreter for `Image.debian_slim(python_version=version)`: the server's own if it
    matches, else the newest matching patch release."""
    known = local_interpreters()
    matches = [i for i in known if i.version == version or i.version.startswith(version + ".")]
    usable = [i for i in matches if _version_tuple(i.version)[:2] >= MIN_PYTHON]
    if usable:
        return max(usable, key=lambda i: (i is known[0], _version_tuple(i.version)))
    versions = sorted({i.version for i in known}, key=_version_tuple)
    supported = [v for v in versions if _version_tuple(v)[:2] >= MIN_PYTHON]
    if matches:
        raise ImageBuildError(
            f"Image.debian_slim(python_version={version!r}): Cove's container runtime needs Python "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer. Pythons on this machine it can use: "
            f"{', '.join(supported) or 'none'}."
        )
    raise ImageBuildError(
        f"Image.debian_slim(python_version={version!r}): no Python {version} was found on this machine "
        f"(looked at the server's interpreter, pyenv, /usr/local/bin, /usr/bin and PATH). Available: "
        f"{', '.join(supported) or 'none'}"
        + (f" (too old for Cove: {', '.join(v for v in versions if v not in supported)})" if versions else "")
        + f". Install Python {version} (e.g. `pyenv install {version}`) or choose an available version."
    )


# -- plans -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One step that produces files (the base virtualenv, an install, a copy...)."""

    key: str
    title: str
    step: ImageStep | None  # None: the base layer
    needs_rootfs: bool
    force: bool
    packages: tuple[str, ...] = ()  # resolved from a pyproject.toml
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # the image's env at this step
    workdir: str | None = None


@dataclass(frozen=True)
class Plan:
    """A recipe resolved on this machine: its interpreter, layers, and the image's env and workdir."""

    interpreter: Interpreter
    layers: tuple[Layer, ...]
    env: tuple[tuple[str, str], ...] = field(repr=False)
    workdir: str | None
    files: tuple[tuple[str, str], ...]  # (path under files/, container path)
    rootfs_key: str | None

    @property
    def key(self) -> str:
        return self.layers[-1].key


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _digest_path(path: Path, ignore: tuple[str, ...]) -> str:
    """A digest of a file's or directory's contents (names, modes, bytes)."""
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return digest.hexdigest()
    if not path.is_dir():
        raise ImageBuildError(f"{path} does not exist on the server; the image cannot be built.")
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames):
            file = Path(dirpath) / name
            relative = str(file.relative_to(path))
            if name.endswith(IGNORED_SUFFIXES) or any(fnmatch.fnmatch(relative, p) for p in ignore):
                continue
            digest.update(relative.encode() + b"\0" + oct(file.stat().st_mode).encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _read_file(path: str, step: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"Image.{step}(): cannot read {path} on the server: {exc.strerror}.") from None


def _pyproject_packages(path: str, groups: Iterable[str]) -> tuple[str, ...]:
    try:
        data = tomllib.loads(_read_file(path, "pip_install_from_pyproject").decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ImageBuildError(
            f"Image.pip_install_from_pyproject(): {path} is not valid TOML: {exc}"
        ) from None
    project = data.get("project") or {}
    packages = list(project.get("dependencies") or [])
    optional = project.get("optional-dependencies") or {}
    for group in groups:
        if group not in optional:
            raise ImageBuildError(
                f"Image.pip_install_from_pyproject(): {path} has no optional-dependencies group {group!r} "
                f"(it has: {', '.join(sorted(optional)) or 'none'})."
            )
        packages += list(optional[group])
    return tuple(str(p) for p in packages)


def _title(step: ImageStep) -> str:
    kind = step.kind
    if kind in ("pip_install", "uv_pip_install", "apt_install"):
        items = [*step.arg("packages", ()), *(f"-r {r}" for r in step.arg("requirements", ()))]
        return f"{kind} {' '.join(items)}"
    if kind == "run_commands":
        return "run_commands " + " && ".join(step.arg("commands", ()))
    if kind in ("pip_install_from_requirements", "pip_install_from_pyproject"):
        return f"{kind} {step.arg('path')}"
    if kind == "add_local_python_source":
        return f"{kind} {', '.join(step.arg('modules', ()))} (copy)"
    return f"{kind} {step.arg('local_path')} -> {step.arg('remote_path')} (copy)"


def _copy_targets(step: ImageStep) -> list[tuple[str, str]]:
    """(host path, container path) of a copy=True step."""
    if step.kind == "add_local_python_source":
        return [(p, f"{CONTAINER_HOME}/{os.path.basename(p)}") for p in step.arg("paths", ()) if p]
    return [(str(step.arg("local_path")), str(step.arg("remote_path")))]


def worker_requirements() -> tuple[str, ...]:
    """The worker's packages pinned to the versions the server runs (so both speak the same APIs)."""
    pins = []
    for requirement in WORKER_PACKAGES:
        name = requirement.split("[")[0]
        try:
            pins.append(f"{requirement}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(requirement)
    return tuple(pins)


def rootfs_key(mirror: str) -> str:
    return _hash("rootfs", SUITE, "minbase", ROOTFS_INCLUDE, mirror)


def _localize(step: ImageStep, root: Path | None) -> ImageStep:
    """`step` with its local paths resolved inside the bundle at `root` (a deployed app: refused
    if they lead out of it), or as they are (`root` None: `cove serve` on the server's machine)."""
    if root is None:
        return step
    what = f"Image.{step.kind}()"
    _refuse_server_paths(step, what)
    return move_step_paths(step, lambda where, path: str(resolve_in_bundle(root, path, what)))


#: uv options that read a file or directory named on the command line.
_PATH_OPTIONS = frozenset(
    {"-r", "-c", "-e", "-f", "--requirement", "--constraint", "--override", "--editable", "--find-links"}
    | {"--build-constraint", "--config-file"}
)


def _refuse_server_paths(step: ImageStep, what: str) -> None:
    """A deployed step's pip options may name URLs, never paths on the server's disk."""
    for name in ("index_url", "extra_index_url", "find_links"):
        value = step.arg(name)
        if value and not str(value).startswith(("http://", "https://")):
            raise InvalidError(
                f"{what}: {name}={value!r} is not an http(s) URL. A deployed image reads local files "
                "only from its uploaded bundle; serve the packages over HTTP, or ship them with "
                "add_local_dir(..., copy=True)."
            )
    for option in shlex.split(str(step.arg("extra_options") or "")):
        flag = option.split("=", 1)[0]
        if flag in _PATH_OPTIONS or (flag.startswith(("-r", "-c", "-e", "-f")) and not flag.startswith("--")):
            raise InvalidError(
                f"{what}: extra_options {option!r} would read a file on the server. A deployed image "
                "reads local files only from its uploaded bundle: use pip_install_from_requirements() "
                "or uv_pip_install(requirements=[...]), which ship the files."
            )


def make_plan(
    spec: ImageSpec,
    *,
    mirror: str,
    force: bool = False,
    step_force: bool = True,
    root: Path | None = None,
) -> Plan:
    """Resolve a recipe: find its interpreter, read the files its steps name, key every layer.

    `force` rebuilds every layer; `step_force` honours the steps' own `force_build=True` (a
    publish right after the CLI's build turns it off, so the image is not built twice). With `root`
    (a deployed app's unpacked bundle) the steps' paths are relative to it and may not leave it;
    layer keys hash those relative paths, so a new bundle with the same files reuses the layers.
    """
    version = spec.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = find_interpreter(version)
    key = _hash(_LAYER_FORMAT, "base", interpreter.executable, interpreter.version, worker_requirements())
    layers = [Layer(key, f"base: Python {interpreter.version} + Cove worker packages", None, False, force)]
    env: dict[str, str] = {}
    workdir: str | None = None
    files: list[tuple[str, str]] = []
    base_rootfs: str | None = None
    forced = force
    for step in spec.steps:
        if step.kind == "debian_slim":
            forced = forced or (step_force and step.force_build)
            continue
        if step.kind == "env":
            env.update(dict(step.arg("vars", ())))
            key = _hash(key, "env", sorted(env.items()))
            continue
        if step.kind == "workdir":
            workdir = str(step.arg("path"))
            key = _hash(key, "workdir", workdir)
            continue
        if step.kind not in _ACTION_KINDS:
            continue
        if step.kind.startswith("add_local") and not step.arg("copy", False):
            continue  # mounted at container start, not built
        keyed, step = step, _localize(step, root)
        forced = forced or (step_force and step.force_build)
        extra: list[Any] = []
        packages: tuple[str, ...] = ()
        if step.kind in _ROOTFS_KINDS and base_rootfs is None:
            base_rootfs = rootfs_key(mirror)
            extra.append(base_rootfs)
        if step.kind == "pip_install_from_requirements":
            extra.append(hashlib.sha256(_read_file(step.arg("path"), step.kind)).hexdigest())
        elif step.kind == "uv_pip_install":
            extra += [
                hashlib.sha256(_read_file(r, step.kind)).hexdigest() for r in step.arg("requirements", ())
            ]
        elif step.kind == "pip_install_from_pyproject":
            packages = _pyproject_packages(step.arg("path"), step.arg("optional_dependencies", ()))
            extra.append(packages)
        elif step.kind.startswith("add_local"):
            ignore = tuple(step.arg("ignore", ()))
            for local, remote in _copy_targets(step):
                extra.append((remote, _digest_path(Path(local), ignore)))
                files.append((remote.lstrip("/"), remote))
        key = _hash(key, spec_to_dict(keyed), extra)
        layers.append(
            Layer(
                key,
                _title(keyed),
                step,
                needs_rootfs=base_rootfs is not None,
                force=forced,
                packages=packages,
                env=tuple(sorted(env.items())),
                workdir=workdir,
            )
        )
    return Plan(
        interpreter=interpreter,
        layers=tuple(layers),
        env=tuple(sorted(env.items())),
        workdir=workdir,
        files=tuple(files),
        rootfs_key=base_rootfs,
    )


# -- building --------------------------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, code: int, tail: list[str]) -> None:
        super().__init__(code)
        self.code = code
        self.tail = tail


class _Output:
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


async def _run(argv: list[str], output: _Output, *, env: Mapping[str, str], cwd: str | None = None) -> None:
    """Run one build command, streaming its output; raise `_StepFailed` with the last lines on failure."""
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
            tail = [*tail[-(_TAIL_LINES - 1) :], text]
        code = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise
    if code != 0:
        raise _StepFailed(code, tail)


def _copy_tree(source: Path, destination: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)


def _uv() -> str:
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
def _uv_cache_dir() -> str:
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    result = subprocess.run([_uv(), "cache", "dir"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def _pip_args(step: ImageStep, packages: tuple[str, ...], requirements: tuple[str, ...]) -> list[str]:
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


class ImageBuilder:
    """Builds images on this machine and finds built ones; one build per key at a time."""

    def __init__(
        self,
        cache: Path,
        secrets: SecretStore,
        *,
        mirror: str,
        home: Path | None = None,
        sandbox_setting: SandboxSetting = "auto",
    ) -> None:
        self.cache = cache
        self._secrets = secrets
        self._mirror = mirror
        self._home = home  # COVE_HOME: never visible to a build step
        self._sandbox_setting = sandbox_setting
        self._warned_unsandboxed = False
        self._locks: dict[str, asyncio.Lock] = {}
        for sub in ("layers", "logs", "locks"):
            (cache / sub).mkdir(parents=True, exist_ok=True)

    # -- public ------------------------------------------------------------------------------------

    def plan(
        self, spec: ImageSpec, *, force: bool = False, step_force: bool = True, root: Path | None = None
    ) -> Plan:
        return make_plan(spec, mirror=self._mirror, force=force, step_force=step_force, root=root)

    def built(self, plan: Plan) -> ImageLayout | None:
        """The image of `plan` if it is already built (and nothing forces a rebuild)."""
        if any(layer.force for layer in plan.layers):
            return None
        return self._layout(plan)

    async def build_app(
        self,
        spec: AppSpec,
        emit: Emit | None = None,
        *,
        force: bool = False,
        step_force: bool = True,
        root: Path | None = None,
    ) -> dict[ImageSpec, ImageLayout]:
        """Build every image an app's functions need (each recipe once); `root`: see `make_plan`."""
        layouts: dict[ImageSpec, ImageLayout] = {}
        for fn in spec.functions:
            if fn.image not in layouts:
                layouts[fn.image] = await self.build(
                    fn.image, emit, force=force, step_force=step_force, root=root
                )
        return layouts

    async def build(
        self,
        spec: ImageSpec,
        emit: Emit | None = None,
        *,
        force: bool = False,
        step_force: bool = True,
        root: Path | None = None,
    ) -> ImageLayout:
        """Build `spec` (only the layers not cached) and return the image; raise `ImageBuildError`."""
        emit = emit or (lambda event: None)
        plan = await asyncio.to_thread(self.plan, spec, force=force, step_force=step_force, root=root)
        ready = self.built(plan)
        if ready is not None:
            emit({"event": "image", "image": plan.key[:12], "cached": True, "layers": len(plan.layers)})
            return ready
        lock = self._locks.setdefault(plan.key, asyncio.Lock())
        async with lock, self._file_lock(plan.key):
            ready = self.built(plan)
            if ready is None:
                await self._build(plan, emit)
                ready = self._layout(plan)
                assert ready is not None
            else:
                emit({"event": "image", "image": plan.key[:12], "cached": True, "layers": len(plan.layers)})
        return ready

    # -- internals ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _file_lock(self, key: str) -> Any:
        path = self.cache / "locks" / f"{key}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _layer_dir(self, key: str) -> Path:
        return self.cache / "layers" / key

    def _layout(self, plan: Plan) -> ImageLayout | None:
        directory = self._layer_dir(plan.key)
        try:
            meta = json.loads((directory / "layer.json").read_text())
        except (OSError, ValueError):
            return None
        rootfs = directory / "rootfs"
        has_rootfs = rootfs.is_dir()
        return ImageLayout(
            key=plan.key,
            build_id=str(meta.get("build_id", "")),
            venv=str(directory / "venv"),
            interpreter=plan.interpreter.binds(has_rootfs),
            rootfs=str(rootfs) if has_rootfs else None,
            files=tuple((str(directory / "files" / rel), target) for rel, target in plan.files),
            env=plan.env,
            workdir=plan.workdir,
        )

    async def _build(self, plan: Plan, emit: Emit) -> None:
        started = time.monotonic()
        image = plan.key[:12]
        output = _Output(self.cache / "logs" / f"{plan.key}.log", emit, image)
        try:
            output.event(
                {"event": "image", "cached": False, "layers": len(plan.layers), "log": str(output.path)}
            )
            # The newest layer already built (and not forced) is where this build starts.
            start = 0
            for index, layer in enumerate(plan.layers):
                if layer.force or not (self._layer_dir(layer.key) / "layer.json").is_file():
                    break
                start = index + 1
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=self.cache / "layers"))
            try:
                if start > 0:
                    await asyncio.to_thread(
                        _copy_tree_contents, self._layer_dir(plan.layers[start - 1].key), work
                    )
                total = len(plan.layers)
                for index in range(start, total):
                    layer = plan.layers[index]
                    output.event({"event": "step", "index": index + 1, "total": total, "title": layer.title})
                    try:
                        await self._apply(plan, layer, work, output)
                    except _StepFailed as failed:
                        raise ImageBuildError(
                            f"Image build failed at step {index + 1}/{total} ({output.mask(layer.title)}) "
                            f"with exit code {failed.code}. Last lines of its output:\n"
                            + "\n".join(f"  {line}" for line in failed.tail)
                            + f"\nFull build log: {output.path}"
                        ) from None
                    meta = {"format": _LAYER_FORMAT, "key": layer.key, "build_id": os.urandom(8).hex()}
                    (work / "layer.json").write_text(json.dumps(meta))
                    await asyncio.to_thread(self._publish_layer, work, layer.key, index == total - 1)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            seconds = time.monotonic() - started
            output.event({"event": "built", "seconds": round(seconds, 2)})
            log.info("event=image_built image=%s layers=%d seconds=%.2f", plan.key, len(plan.layers), seconds)
        finally:
            output.close()

    def _publish_layer(self, work: Path, key: str, last: bool) -> None:
        """Make `work` (as it is now) the layer `key`: the last one moves there, earlier ones are
        copied (the build goes on in `work`). A forced rebuild replaces the old directory; running
        containers keep the one they were started on."""
        target = self._layer_dir(key)
        if last:
            staging = work
        else:
            staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.cache / "layers"))
            _copy_tree_contents(work, staging)
        if target.exists():
            trash = target.with_name(f".trash-{key}-{os.urandom(4).hex()}")
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staging, target)

    async def _apply(self, plan: Plan, layer: Layer, work: Path, output: _Output) -> None:
        step = layer.step
        if step is None:
            await self._base(plan, work, output)
            return
        env = dict(layer.env)
        names = tuple(step.arg("secrets", ()))
        if names:
            secret_env = self._secrets.resolve([SecretRef(name=n) for n in names])
            output.hide(secret_env.values())
            env.update(secret_env)
        env.update(dict(step.arg("env", ())))
        if layer.needs_rootfs and not (work / "rootfs").is_dir():
            await self._add_rootfs(plan, work, output)
        kind = step.kind
        if kind.startswith("add_local"):
            await asyncio.to_thread(_copy_files, step, work / "files")
            return
        if kind == "apt_install":
            packages = " ".join(shlex.quote(p) for p in step.arg("packages", ()))
            install = f"apt-get install -y -q {packages}"
            script = f"{install} || (apt-get update -q && {install})"
            await self._in_rootfs(plan, layer, work, output, ["/bin/sh", "-c", script], env, workdir="/")
            return
        if kind == "run_commands":
            for command in step.arg("commands", ()):
                await self._in_rootfs(
                    plan, layer, work, output, ["/bin/sh", "-c", command], env, workdir=layer.workdir or "/"
                )
            return
        # pip_install, uv_pip_install, pip_install_from_requirements, pip_install_from_pyproject
        to_install: tuple[str, ...] = layer.packages or tuple(step.arg("packages", ()))
        requirements: tuple[str, ...] = tuple(step.arg("requirements", ()))
        if kind == "pip_install_from_requirements":
            requirements = (str(step.arg("path")),)
        if not to_install and not requirements:
            output.line("(nothing to install)")
            return
        args = _pip_args(step, to_install, requirements)
        await self._pip(plan, layer, work, output, args, env, requirements)

    async def _base(self, plan: Plan, work: Path, output: _Output) -> None:
        venv = Path(os.path.realpath(work / "venv"))
        venv.mkdir(exist_ok=True)  # bound into the build sandbox, so it exists before uv fills it
        await self._uv_in_venv(
            ["venv", "--relocatable", "--seed", "--python", plan.interpreter.executable, str(venv)],
            plan,
            venv,
            output,
            {},
        )
        install = ["pip", "install", "--python", f"{venv}/bin/python", *worker_requirements()]
        await self._uv_in_venv(install, plan, venv, output, {})

    def _host_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVE_")}
        env.update(_UV_ENV)
        env["UV_CACHE_DIR"] = _uv_cache_dir()
        env.update(extra or {})
        return env

    async def _pip(
        self,
        plan: Plan,
        layer: Layer,
        work: Path,
        output: _Output,
        args: list[str],
        env: dict[str, str],
        requirements: tuple[str, ...],
    ) -> None:
        if not (work / "rootfs").is_dir():
            venv = Path(os.path.realpath(work / "venv"))
            reads = [
                *build_sandbox.requirement_reads(requirements, self._cove_home()),
                *_local_sources(layer.step),
            ]
            await self._uv_in_venv(
                ["pip", "install", "--python", f"{venv}/bin/python", *args], plan, venv, output, env, reads
            )
            return
        # After apt_install/run_commands, install inside the root filesystem, so builds from source
        # find the headers and libraries those steps installed.
        cache = _uv_cache_dir()
        Path(cache).mkdir(parents=True, exist_ok=True)
        binds = [Bind(_uv(), "/cove/bin/uv"), Bind(cache, cache, writable=True)]
        reads = build_sandbox.requirement_reads(requirements, self._cove_home())
        binds += [Bind(path, path) for path in reads]
        command = ["/cove/bin/uv", "pip", "install", "--python", f"{sandbox.VENV}/bin/python", *args]
        env = {**env, **_UV_ENV, "UV_CACHE_DIR": cache}
        await self._in_rootfs(plan, layer, work, output, command, env, workdir="/", extra=binds)

    def _cove_home(self) -> str | None:
        return str(self._home) if self._home is not None else None

    def _build_bwrap(self) -> str | None:
        """bwrap for build steps, or None (COVE_SANDBOX=off, or unusable here: warned once)."""
        bwrap: str | None = None
        reason = "COVE_SANDBOX=off"
        if self._sandbox_setting != "off":
            bwrap, reason = probe_bwrap()
        if bwrap is None and not self._warned_unsandboxed:
            self._warned_unsandboxed = True
            log.warning(
                "event=build_unsandboxed reason=%r: image builds run uv, and the build code of the "
                "packages they install, as the server's user on the host, without a sandbox",
                reason,
            )
        return bwrap

    async def _uv_in_venv(
        self,
        args: list[str],
        plan: Plan,
        venv: Path,
        output: _Output,
        env: Mapping[str, str],
        reads: Iterable[str] = (),
    ) -> None:
        """Run `uv *args` on the virtualenv `venv` of a venv-only image. uv runs package code (an
        sdist's setup.py, a PEP 517 backend), so it runs in a bubblewrap sandbox (see
        `build_sandbox`), unless none is available."""
        bwrap = self._build_bwrap()
        if bwrap is None:
            await _run([_uv(), *args], output, env=self._host_env(env))
            return
        cache = os.path.realpath(_uv_cache_dir())
        Path(cache).mkdir(parents=True, exist_ok=True)
        user_config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "uv"
        build = VenvBuild(
            command=(os.path.realpath(_uv()), *args),
            venv=str(venv),
            cache=cache,
            interpreter=plan.interpreter.binds(False),
            reads=tuple(reads),
            env=tuple({**_UV_ENV, **env}.items()),
            cove_home=self._cove_home(),
            user_config=str(user_config) if user_config.is_dir() else None,
        )
        exists = build_sandbox.optional_paths(build, os.environ)
        argv = build_sandbox.venv_build_argv(
            build, bwrap=bwrap, host=_host_system(), environ=os.environ, exists=exists
        )
        await _run(argv, output, env=self._host_env())

    async def _in_rootfs(
        self,
        plan: Plan,
        layer: Layer,
        work: Path,
        output: _Output,
        command: list[str],
        env: dict[str, str],
        *,
        workdir: str,
        extra: list[Bind] | None = None,
    ) -> None:
        bwrap, reason = probe_bwrap()
        if bwrap is None:
            raise ImageBuildError(
                f"Image step {layer.title!r} runs inside the image's root filesystem, which needs "
                f"bubblewrap: {reason}."
            )
        rootfs = work / "rootfs"
        (rootfs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        binds = [Bind(path, path) for path in plan.interpreter.binds(True)]
        binds.append(Bind(str(work / "venv"), sandbox.VENV, writable=True))
        binds += [
            Bind(str(work / "files" / rel), target)
            for rel, target in plan.files
            if (work / "files" / rel).exists()
        ]
        binds += extra or []
        argv = sandbox.build_argv(
            BuildNeeds(
                command=tuple(command),
                rootfs=str(rootfs),
                binds=tuple(binds),
                workdir=workdir,
                env=tuple(env.items()),
                host_is_root=os.geteuid() == 0,
            ),
            bwrap=bwrap,
        )
        await _run(argv, output, env=self._host_env())

    async def _add_rootfs(self, plan: Plan, work: Path, output: _Output) -> None:
        assert plan.rootfs_key is not None
        base = self.cache / f"rootfs-{SUITE}-{plan.rootfs_key[:16]}"
        if not (base / ".cove-complete").is_file():
            async with self._file_lock(f"rootfs-{plan.rootfs_key}"):
                if not (base / ".cove-complete").is_file():
                    await self._debootstrap(base, output)
        output.line(f"copying the Debian {SUITE} root filesystem")
        await asyncio.to_thread(_copy_tree, base, work / "rootfs")
        (work / "rootfs" / ".cove-complete").unlink(missing_ok=True)

    async def _debootstrap(self, base: Path, output: _Output) -> None:
        tool = shutil.which("debootstrap") or next(
            (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None
        )
        if tool is None:
            raise ImageBuildError(
                "apt_install/run_commands need a Debian root filesystem, built with debootstrap, which is "
                "not installed. Install it with `apt-get install debootstrap` (as root) and deploy again."
            )
        if os.geteuid() != 0:
            raise ImageBuildError(
                "apt_install/run_commands need a Debian root filesystem, and debootstrap must run as root. "
                "Run the Cove server as root, or use only pip_install/uv_pip_install steps."
            )
        output.event({"event": "step", "index": 0, "total": 0, "title": f"debootstrap {SUITE} (once)"})
        staging = base.with_name(base.name + f".tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            await _run(
                [
                    tool,
                    "--variant=minbase",
                    f"--include={','.join(ROOTFS_INCLUDE)}",
                    SUITE,
                    str(staging),
                    self._mirror,
                ],
                output,
                env=self._host_env(),
            )
        except _StepFailed as failed:
            shutil.rmtree(staging, ignore_errors=True)
            raise ImageBuildError(
                f"debootstrap of Debian {SUITE} from {self._mirror} failed with exit code {failed.code}. "
                "Last lines:\n" + "\n".join(f"  {line}" for line in failed.tail)
            ) from None
        for path in ("cove/venv", "cove/sdk/cove", "cove/run", "cove/bin"):
            (staging / path).mkdir(parents=True, exist_ok=True)
        (staging / "cove/bin/uv").touch()
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
        (staging / ".cove-complete").write_text(SUITE)
        os.rename(staging, base)


def _local_sources(step: ImageStep | None) -> list[str]:
    """Local directories a pip step's index options name (`cove serve` only: a deployed step's
    must be http(s) URLs), which a sandboxed uv must see."""
    names = ("index_url", "extra_index_url", "find_links")
    values = [str(step.arg(name) or "") for name in names] if step is not None else []
    return [path for value in values for path in build_sandbox.paths_in(value)]


def _copy_tree_contents(source: Path, destination: Path) -> None:
    for entry in source.iterdir():
        subprocess.run(["cp", "-a", "--reflink=auto", str(entry), str(destination / entry.name)], check=True)


def _copy_files(step: ImageStep, files: Path) -> None:
    ignore = tuple(step.arg("ignore", ()))
    for local, remote in _copy_targets(step):
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
