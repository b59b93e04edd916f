"""Source bundles: what `cove deploy` uploads, so a deployed version never depends on the user's disk.

Layout of the tar.gz:
    src/...             the app file's directory (on the container's sys.path) or, for an app
                        loaded with -m, its top-level package (`src/pkg/...`), plus the packages
                        named by `add_local_python_source` that live elsewhere
    mounts/<abs path>   files and directories of non-copy `add_local_file` / `add_local_dir`
    files/<id>/<name>   everything else an image step reads: copy=True files and directories,
                        requirements files, pyproject.toml (`<id>` hashes the path on the user's disk)

`relocate(spec)` rewrites the manifest's local paths to these bundle-relative ones: the server reads
local files of a deployed app only from its bundle (`resolve_in_bundle`), never from its own disk.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cove._spec import AppSpec, ImageStep
from cove.exception import InvalidError

#: Directories never worth shipping.
IGNORED_DIRS = frozenset(
    {
        ".git",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".cove",
    }
)
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", "~")
MAX_BUNDLE_BYTES = 256 * 1024 * 1024


def _walk(root: Path, ignore: tuple[str, ...] = ()) -> Iterator[Path]:
    """Regular files under `root` worth shipping: sockets, FIFOs and devices (a COVE_HOME inside
    the app's folder has a server socket) and tool directories are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in IGNORED_DIRS and not (Path(dirpath) / d / "server.sock").exists()
        )
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if not path.is_file():
                continue
            relative = str(path.relative_to(root))
            if filename.endswith(IGNORED_SUFFIXES):
                continue
            if any(fnmatch.fnmatch(relative, pattern) for pattern in ignore):
                continue
            yield path


def _shipped(local: str) -> str:
    """Where a file or directory an image step reads lives in the bundle."""
    return f"files/{hashlib.sha256(local.encode()).hexdigest()[:16]}/{os.path.basename(local) or 'root'}"


def move_step_paths(step: ImageStep, move: Callable[[str, str], str]) -> ImageStep:
    """`step` with each local path it names replaced by `move(where, path)` (see `map_step_paths`)."""
    kind = step.kind
    changes: dict[str, Any] = {}
    if kind in ("pip_install_from_requirements", "pip_install_from_pyproject"):
        changes["path"] = move("file", str(step.arg("path")))
    elif kind == "uv_pip_install" and step.arg("requirements"):
        changes["requirements"] = tuple(move("file", str(r)) for r in step.arg("requirements"))
    elif kind == "add_local_python_source":
        changes["paths"] = tuple(move("source", str(p)) if p else p for p in step.arg("paths", ()))
    elif kind in ("add_local_file", "add_local_dir"):
        where = "copy" if step.arg("copy", False) else "mount:" + str(step.arg("remote_path"))
        changes["local_path"] = move(where, str(step.arg("local_path")))
    if not changes:
        return step
    return replace(step, args=tuple((k, changes.get(k, v)) for k, v in step.args))


def map_step_paths(spec: AppSpec, move: Callable[[str, str], str]) -> AppSpec:
    """`spec` with every local path of every image step passed through `move(where, path)`;
    `where` is "file", "source", "copy" or "mount:<remote path>"."""
    functions = []
    for fn in spec.functions:
        steps = tuple(move_step_paths(step, move) for step in fn.image.steps)
        functions.append(replace(fn, image=replace(fn.image, steps=steps)))
    return replace(spec, functions=tuple(functions))


def _bundle_path(where: str, local: str) -> str:
    if where == "source":
        return f"src/{Path(local).name}"
    if where.startswith("mount:"):
        return "mounts/" + where.removeprefix("mount:").lstrip("/")
    return _shipped(local)


def relocate(spec: AppSpec) -> AppSpec:
    """The manifest as deployed: every local path an image step names points into the bundle that
    `make_bundle(spec, ...)` makes (paths relative to the bundle's root)."""
    return map_step_paths(spec, _bundle_path)


def resolve_in_bundle(root: Path, path: str, what: str) -> Path:
    """The file or directory `path` (relative, as `relocate` wrote it) of the bundle unpacked at
    `root`; a path that is absolute or leads out of it (`..`, a symlink) is refused."""
    base = root.resolve()
    target = (base / path).resolve() if path and not os.path.isabs(path) else None
    if target is None or (target != base and base not in target.parents):
        raise InvalidError(
            f"{what}: {path!r} is not inside the uploaded source bundle. A deployed app's image steps "
            "read local files only from the bundle `cove deploy` uploads with them; deploy with a "
            "current `cove deploy`, and keep the files its steps name on the deploying machine."
        )
    if not target.exists():
        raise InvalidError(f"{what}: {path!r} is missing from the uploaded source bundle.")
    return target


def make_bundle(
    spec: AppSpec, module_file: str, *, source_dir: str | None = None, package_dir: str | None = None
) -> bytes:
    """A deterministic tar.gz of the app's sources and of every local file its image steps read
    (same files, same bytes → same bundle hash); see `relocate` for the manifest that goes with it.

    `source_dir` (default: the file's directory) becomes `src/`; with `package_dir` (a top-level
    package inside it, `cove deploy -m pkg.mod`) only that package is shipped, as Modal mounts it.
    """
    root = Path(source_dir) if source_dir is not None else Path(module_file).parent
    shipped = Path(package_dir) if package_dir is not None else root
    entries: dict[str, Path] = {}
    directories: set[str] = set()  # shipped even when empty, so the step finds them
    for path in _walk(shipped):
        entries[f"src/{path.relative_to(root)}"] = path
    for fn in spec.functions:
        for step in fn.image.steps:
            ignore = tuple(step.arg("ignore", ()))

            def add_step(where: str, local: str, ignore: tuple[str, ...] = ignore) -> str:
                local_path = Path(local)
                name = _bundle_path(where, local)
                if local_path.is_dir():
                    directories.add(name)
                    for path in _walk(local_path, ignore):
                        entries.setdefault(f"{name}/{path.relative_to(local_path)}", path)
                elif local_path.is_file():
                    entries.setdefault(name, local_path)
                return name

            move_step_paths(step, add_step)
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(directories):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name in sorted(entries):
            path = entries[name]
            data = path.read_bytes()
            total += len(data)
            if total > MAX_BUNDLE_BYTES:
                raise InvalidError(
                    f"The sources of this app are larger than {MAX_BUNDLE_BYTES // 2**20} MiB "
                    f"(at {path}). Move data out of the app's directory, or mount it with "
                    "Image.add_local_dir(..., ignore=[...])."
                )
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.mtime = 0  # deterministic
            tar.addfile(info, io.BytesIO(data))
    # gzip outside tarfile so the header's mtime is fixed too: same sources, same bytes.
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def bundle_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_bundle(data: bytes, destination: Path) -> None:
    """Unpack a bundle safely (no absolute paths, no `..`, no links out of `destination`)."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(destination, filter="data")
