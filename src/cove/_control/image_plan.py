"""An image recipe as cached layers: the interpreter it builds on, each layer's key and work.

A layer's key hashes its parent's key and its step, including the contents of the files the step
reads (requirements files, pyproject.toml, copy=True sources), so an edit to one rebuilds from there.
`env`/`workdir` steps only enter the keys of the layers after them. The first layer ("base") is a
virtualenv on a local interpreter of the requested version, with the worker's own packages
(FastAPI, uvicorn, ...) at the server's versions; the user's steps come after it, so a version the
user pins wins.
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import hashlib
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove._bundle import IGNORED_DIRS, IGNORED_SUFFIXES, move_step_paths, resolve_in_bundle
from cove._runtime.backend import CONTAINER_HOME
from cove._spec import ImageSpec, ImageStep, spec_to_dict
from cove.exception import ImageBuildError, InvalidError

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
LAYER_FORMAT = "cove-layer-2"
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


def copy_targets(step: ImageStep) -> list[tuple[str, str]]:
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
    key = _hash(LAYER_FORMAT, "base", interpreter.executable, interpreter.version, worker_requirements())
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
            for local, remote in copy_targets(step):
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
