"""Container images as immutable recipes: each builder call returns a new `Image` with one more step.

```python
image = (
    cove.Image.debian_slim(python_version="3.11")
    .apt_install("ffmpeg")
    .pip_install("fastapi[standard]", "boto3")
    .add_local_python_source("shared")
)
```

Nothing is built here: the recipe (an `ImageSpec`) travels in the manifest, and its hash names the
built image on the server. Only `add_local_*` look at the local disk, to resolve absolute paths.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from cove._spec import ImageSpec, ImageStep, ImageStepKind
from cove.exception import InvalidError
from cove.functions import is_local
from cove.secret import Secret

_PYTHON_VERSION_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,2})?$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LOCAL_KINDS = ("add_local_file", "add_local_dir", "add_local_python_source")
_SUPPORTED = (
    "Cove builds images from Image.debian_slim() plus pip_install / uv_pip_install / apt_install / "
    "run_commands / env / workdir / add_local_*"
)

Args = list[tuple[str, Any]]
PathLike = str | os.PathLike[str]


def _local_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _flatten(method: str, items: Sequence[str | Sequence[str]]) -> tuple[str, ...]:
    """`pip_install("a", ["b", "c"])` → ("a", "b", "c"), keeping order."""
    out: list[str] = []
    for item in items:
        values = (
            [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else [item]
        )
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise InvalidError(f"Image.{method}() expects strings (or lists of strings), got {value!r}.")
            out.append(value)
    return tuple(out)


def _env_pairs(method: str, env: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise InvalidError(f"Image.{method}(env=...) must be a dict of str to str, got {type(env).__name__}.")
    pairs: list[tuple[str, str]] = []
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise InvalidError(
                f"Image.{method}(): environment variable names must be non-empty str, got {key!r}."
            )
        if not isinstance(value, str):
            # The value may be sensitive: name its type only.
            raise InvalidError(
                f"Image.{method}(): the value of {key!r} must be a str, got {type(value).__name__}."
            )
        pairs.append((key, value))
    return tuple(pairs)


def _build_options(
    method: str,
    *,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[Secret] | None = None,
    gpu: str | None = None,
) -> Args:
    args: Args = []
    pairs = _env_pairs(method, env)
    if pairs:
        args.append(("env", pairs))
    if secrets:
        names: list[str] = []
        for secret in secrets:
            if not isinstance(secret, Secret):
                raise InvalidError(f"Image.{method}(secrets=...) takes cove.Secret objects, got {secret!r}.")
            if secret.name is None:
                raise InvalidError(
                    f"Image.{method}(secrets=...) accepts named secrets only (cove.Secret.from_name); "
                    "pass plain build variables with env={...}."
                )
            names.append(secret.name)
        args.append(("secrets", tuple(names)))
    if gpu is not None:
        if not isinstance(gpu, str):
            raise InvalidError(f"Image.{method}(gpu=...) must be a string such as 'A10G', got {gpu!r}.")
        args.append(("gpu", gpu))
    return args


def _pip_options(
    method: str,
    *,
    find_links: str | None,
    index_url: str | None,
    extra_index_url: str | None,
    pre: bool,
    extra_options: str,
) -> Args:
    args: Args = []
    for key, value in (
        ("find_links", find_links),
        ("index_url", index_url),
        ("extra_index_url", extra_index_url),
    ):
        if value is not None:
            if not isinstance(value, str):
                raise InvalidError(f"Image.{method}({key}=...) must be a str, got {value!r}.")
            args.append((key, value))
    if pre:
        args.append(("pre", True))
    if extra_options:
        args.append(("extra_options", str(extra_options)))
    return args


def _absolute(path: PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _remote_path(method: str, remote_path: PathLike, local_name: str | None = None) -> str:
    text = os.fspath(remote_path)
    if not PurePosixPath(text).is_absolute():
        raise InvalidError(
            f"Image.{method}(): remote_path must be an absolute path in the container, such as "
            f"'/root/{local_name or 'data'}'; got {text!r}."
        )
    if local_name is not None and text.endswith("/"):
        return text + local_name
    return text


def _module_path(name: str) -> str:
    """Where a module's source lives, found without importing it (parents of dotted names excepted)."""
    if not _MODULE_RE.match(name):
        raise InvalidError(
            f"Image.add_local_python_source() takes module names such as 'mypkg', got {name!r}."
        )
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise InvalidError(
            f"Module {top!r} was not found locally. Make sure it is importable from here "
            "(run from its parent directory or add it to PYTHONPATH), "
            f"then retry add_local_python_source({name!r})."
        )
    if spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        base = Path(spec.origin)
    else:
        raise InvalidError(f"Module {top!r} is built into Python; there is no source to add.")
    if not rest:
        return str(base.resolve())
    candidate = base.joinpath(*rest.split("."))
    for path in (candidate, candidate.with_suffix(".py")):
        if path.exists():
            return str(path.resolve())
    raise InvalidError(f"Module {name!r} was not found under {str(base)!r}.")


def _unsupported(what: str) -> NoReturn:
    raise InvalidError(f"{what} is not supported by Cove yet. {_SUPPORTED}.")


@dataclass(frozen=True, repr=False)
class Image:
    """An immutable image recipe. Start from `Image.debian_slim()` and chain builder methods."""

    _spec: ImageSpec = field(default_factory=ImageSpec)

    # -- constructors ---------------------------------------------------------------------------

    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """Debian slim with Python `python_version` ("3.11"; default: this interpreter's version)."""
        if isinstance(python_version, float):
            raise TypeError(
                "The `python_version` argument should be a string, not a float: "
                f"use python_version='{python_version}'."
            )
        if python_version is None:
            python_version = _local_python_version()
        if not isinstance(python_version, str) or not _PYTHON_VERSION_RE.match(python_version):
            raise InvalidError(f"python_version must look like '3.11', got {python_version!r}.")
        step = ImageStep("debian_slim", (("python_version", python_version),), force_build=bool(force_build))
        return Image(ImageSpec((step,)))

    @staticmethod
    def from_registry(*args: Any, **kwargs: Any) -> Image:
        """Not supported yet: Cove builds from `Image.debian_slim()`."""
        _unsupported("Image.from_registry()")

    @staticmethod
    def from_dockerfile(*args: Any, **kwargs: Any) -> Image:
        """Not supported yet: Cove builds from `Image.debian_slim()`."""
        _unsupported("Image.from_dockerfile()")

    @staticmethod
    def micromamba(*args: Any, **kwargs: Any) -> Image:
        """Not supported yet: Cove builds from `Image.debian_slim()`."""
        _unsupported("Image.micromamba()")

    @staticmethod
    def from_aws_ecr(*args: Any, **kwargs: Any) -> Image:
        """Not supported yet: Cove builds from `Image.debian_slim()`."""
        _unsupported("Image.from_aws_ecr()")

    @staticmethod
    def from_gcp_artifact_registry(*args: Any, **kwargs: Any) -> Image:
        """Not supported yet: Cove builds from `Image.debian_slim()`."""
        _unsupported("Image.from_gcp_artifact_registry()")

    # -- steps ----------------------------------------------------------------------------------

    def _add(self, kind: ImageStepKind, args: Args, *, force_build: bool = False) -> Image:
        is_mount = kind in _LOCAL_KINDS and not dict(args).get("copy", False)
        if not is_mount:
            for step in self._spec.steps:
                if step.kind in _LOCAL_KINDS and not step.arg("copy", False):
                    raise InvalidError(
                        f"An image tried to run a build step ({kind}) after using `image.{step.kind}` "
                        "to include local files. Run `image.add_local_*` commands last in your image "
                        "build to avoid rebuilding images with every local file change. Or use "
                        "`copy=True` on the add_local_* command."
                    )
        step = ImageStep(kind, tuple(args), force_build=bool(force_build))
        return Image(ImageSpec((*self._spec.steps, step)))

    def pip_install(
        self,
        *packages: str | Sequence[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
    ) -> Image:
        """Install packages with pip, e.g. `.pip_install("fastapi[standard]", "boto3==1.34.0")`."""
        pkgs = _flatten("pip_install", packages)
        if not pkgs:
            return self
        args: Args = [("packages", pkgs)]
        args += _pip_options(
            "pip_install",
            find_links=find_links,
            index_url=index_url,
            extra_index_url=extra_index_url,
            pre=pre,
            extra_options=extra_options,
        )
        args += _build_options("pip_install", env=env, secrets=secrets, gpu=gpu)
        return self._add("pip_install", args, force_build=force_build)

    def uv_pip_install(
        self,
        *packages: str | Sequence[str],
        requirements: Sequence[PathLike] | None = None,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        uv_version: str | None = None,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
    ) -> Image:
        """Install packages (and/or requirements files) with uv."""
        pkgs = _flatten("uv_pip_install", packages)
        if isinstance(requirements, (str, os.PathLike)):
            raise InvalidError(
                "Image.uv_pip_install(requirements=...) takes a list of paths, e.g. ['requirements.txt']."
            )
        reqs = tuple(_absolute(path) for path in requirements or ())
        if not pkgs and not reqs:
            return self
        args: Args = [("packages", pkgs)]
        if reqs:
            args.append(("requirements", reqs))
        args += _pip_options(
            "uv_pip_install",
            find_links=find_links,
            index_url=index_url,
            extra_index_url=extra_index_url,
            pre=pre,
            extra_options=extra_options,
        )
        if uv_version is not None:
            args.append(("uv_version", str(uv_version)))
        args += _build_options("uv_pip_install", env=env, secrets=secrets, gpu=gpu)
        return self._add("uv_pip_install", args, force_build=force_build)

    def pip_install_from_requirements(
        self,
        requirements_txt: PathLike,
        find_links: str | None = None,
        *,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
    ) -> Image:
        """Install a requirements file (its absolute path is recorded; the server reads it)."""
        args: Args = [("path", _absolute(requirements_txt))]
        args += _pip_options(
            "pip_install_from_requirements",
            find_links=find_links,
            index_url=index_url,
            extra_index_url=extra_index_url,
            pre=pre,
            extra_options=extra_options,
        )
        args += _build_options("pip_install_from_requirements", env=env, secrets=secrets, gpu=gpu)
        return self._add("pip_install_from_requirements", args, force_build=force_build)

    def pip_install_from_pyproject(
        self,
        pyproject_toml: PathLike,
        optional_dependencies: Sequence[str] = (),
        *,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
    ) -> Image:
        """Install the dependencies of a pyproject.toml (plus the named optional groups)."""
        args: Args = [("path", _absolute(pyproject_toml))]
        extras = _flatten("pip_install_from_pyproject", [list(optional_dependencies)])
        if extras:
            args.append(("optional_dependencies", extras))
        args += _pip_options(
            "pip_install_from_pyproject",
            find_links=find_links,
            index_url=index_url,
            extra_index_url=extra_index_url,
            pre=pre,
            extra_options=extra_options,
        )
        args += _build_options("pip_install_from_pyproject", env=env, secrets=secrets, gpu=gpu)
        return self._add("pip_install_from_pyproject", args, force_build=force_build)

    def apt_install(
        self,
        *packages: str | Sequence[str],
        force_build: bool = False,
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
    ) -> Image:
        """Install Debian packages, e.g. `.apt_install("ffmpeg", "git")`."""
        pkgs = _flatten("apt_install", packages)
        if not pkgs:
            return self
        args: Args = [("packages", pkgs), *_build_options("apt_install", env=env, secrets=secrets, gpu=gpu)]
        return self._add("apt_install", args, force_build=force_build)

    def run_commands(
        self,
        *commands: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        secrets: Sequence[Secret] | None = None,
        gpu: str | None = None,
        volumes: Mapping[str, Any] | None = None,
        force_build: bool = False,
    ) -> Image:
        """Run shell commands in the image, each as its own `sh -c`."""
        if volumes:
            raise InvalidError(
                "Image.run_commands(volumes=...) is not supported: Volumes are mounted into "
                "functions (@app.function(volumes=...)), not into image builds."
            )
        cmds = _flatten("run_commands", commands)
        if not cmds:
            return self
        args: Args = [("commands", cmds), *_build_options("run_commands", env=env, secrets=secrets, gpu=gpu)]
        return self._add("run_commands", args, force_build=force_build)

    def env(self, vars: Mapping[str, str]) -> Image:
        """Set environment variables in the image (values are never shown in reprs)."""
        pairs = _env_pairs("env", vars)
        if not pairs:
            return self
        return self._add("env", [("vars", pairs)])

    def workdir(self, path: str | PurePosixPath) -> Image:
        """Set the working directory for later steps and for the container."""
        text = str(path)
        if not text:
            raise InvalidError("Image.workdir() needs a path such as '/root/app'.")
        return self._add("workdir", [("path", text)])

    def add_local_file(self, local_path: PathLike, remote_path: PathLike, *, copy: bool = False) -> Image:
        """Make a local file available at `remote_path` (mounted at start; `copy=True` bakes it in)."""
        local = _absolute(local_path)
        if is_local() and not os.path.isfile(local):
            raise InvalidError(f"Image.add_local_file(): {os.fspath(local_path)!r} ({local}) is not a file.")
        remote = _remote_path("add_local_file", remote_path, os.path.basename(local))
        args: Args = [("local_path", local), ("remote_path", remote)]
        if copy:
            args.append(("copy", True))
        return self._add("add_local_file", args)

    def add_local_dir(
        self,
        local_path: PathLike,
        remote_path: PathLike,
        *,
        copy: bool = False,
        ignore: Sequence[str] = (),
    ) -> Image:
        """Make a local directory available at `remote_path`; `ignore` takes glob patterns."""
        local = _absolute(local_path)
        if is_local() and not os.path.isdir(local):
            raise InvalidError(
                f"Image.add_local_dir(): {os.fspath(local_path)!r} ({local}) is not a directory."
            )
        remote = _remote_path("add_local_dir", remote_path)
        args: Args = [("local_path", local), ("remote_path", remote)]
        if copy:
            args.append(("copy", True))
        patterns = _ignore_patterns("add_local_dir", ignore)
        if patterns:
            args.append(("ignore", patterns))
        return self._add("add_local_dir", args)

    def add_local_python_source(self, *modules: str, copy: bool = False, ignore: Sequence[str] = ()) -> Image:
        """Make local Python packages/modules importable in the container, e.g. `("shared",)`."""
        names = _flatten("add_local_python_source", modules)
        if not names:
            raise InvalidError("Image.add_local_python_source() needs module names, e.g. ('mypkg',).")
        paths: list[str] = []
        for name in names:
            try:
                paths.append(_module_path(name))
            except InvalidError:
                if is_local():
                    raise
                paths.append("")  # inside a container the source is already mounted
        args: Args = [("modules", names), ("paths", tuple(paths))]
        if copy:
            args.append(("copy", True))
        patterns = _ignore_patterns("add_local_python_source", ignore)
        if patterns:
            args.append(("ignore", patterns))
        return self._add("add_local_python_source", args)

    # -- not supported (yet) ----------------------------------------------------------------------

    def dockerfile_commands(self, *args: Any, **kwargs: Any) -> Image:
        """Not supported yet: use run_commands / apt_install / env / workdir."""
        _unsupported("Image.dockerfile_commands()")

    def run_function(self, *args: Any, **kwargs: Any) -> Image:
        """Not supported yet: use run_commands."""
        _unsupported("Image.run_function()")

    def uv_sync(self, *args: Any, **kwargs: Any) -> Image:
        """Not supported yet: use uv_pip_install / pip_install_from_pyproject."""
        _unsupported("Image.uv_sync()")

    def copy_local_file(self, *args: Any, **kwargs: Any) -> Image:
        """Removed in Modal 1.0: use add_local_file(..., copy=True)."""
        _unsupported("Image.copy_local_file() (use add_local_file(..., copy=True))")

    def copy_local_dir(self, *args: Any, **kwargs: Any) -> Image:
        """Removed in Modal 1.0: use add_local_dir(..., copy=True)."""
        _unsupported("Image.copy_local_dir() (use add_local_dir(..., copy=True))")

    # -- helpers --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """`with image.imports(): import torch` — on your machine a missing package is ignored.

        Inside a container, where the image provides the package, an ImportError propagates.
        """
        try:
            yield
        except ImportError:
            if not is_local():
                raise

    def __repr__(self) -> str:
        if not self._spec.steps:
            return "cove.Image()"
        return "cove.Image." + ".".join(_step_repr(step) for step in self._spec.steps)


def _ignore_patterns(method: str, ignore: Sequence[str] | Callable[..., Any]) -> tuple[str, ...]:
    if isinstance(ignore, str):
        raise InvalidError(
            f"Image.{method}(ignore=...) takes a list of glob patterns: use ignore=[{ignore!r}]."
        )
    if callable(ignore):
        raise InvalidError(
            f"Image.{method}(ignore=...) takes a list of glob patterns such as ['*.pyc', '.git/']; "
            "callables are not supported by Cove."
        )
    patterns = tuple(ignore)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise InvalidError(
                f"Image.{method}(ignore=...) patterns must be non-empty strings, got {pattern!r}."
            )
    return patterns


def _step_repr(step: ImageStep) -> str:
    """A readable call for one step; env values are never shown."""
    kind = step.kind
    if kind == "debian_slim":
        shown = f"python_version={step.arg('python_version')!r}"
    elif kind in ("pip_install", "uv_pip_install", "apt_install"):
        shown = ", ".join(repr(p) for p in step.arg("packages", ()))
    elif kind == "run_commands":
        shown = ", ".join(repr(c) for c in step.arg("commands", ()))
    elif kind in ("pip_install_from_requirements", "pip_install_from_pyproject", "workdir"):
        shown = repr(step.arg("path"))
    elif kind == "env":
        shown = ", ".join(f"{key}=<hidden>" for key, _ in step.arg("vars", ()))
    elif kind == "add_local_python_source":
        shown = ", ".join(repr(m) for m in step.arg("modules", ()))
    else:
        shown = f"{step.arg('local_path')!r}, {step.arg('remote_path')!r}"
    return f"{kind}({shown})"


__all__ = ["Image"]
