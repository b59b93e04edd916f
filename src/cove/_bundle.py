"""Source bundles: what `cove deploy` uploads, so a deployed version never depends on the user's disk.

Layout of the tar.gz:
    src/...             the app file's directory (on the container's sys.path) or, for an app
                        loaded with -m, its top-level package (`src/pkg/...`), plus the packages
                        named by `add_local_python_source` that live elsewhere
    mounts/<abs path>   files and directories of non-copy `add_local_file` / `add_local_dir`
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from cove._spec import AppSpec
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


def make_bundle(
    spec: AppSpec, module_file: str, *, source_dir: str | None = None, package_dir: str | None = None
) -> bytes:
    """A deterministic tar.gz of the app's sources (same files, same bytes → same bundle hash).

    `source_dir` (default: the file's directory) becomes `src/`; with `package_dir` (a top-level
    package inside it, `cove deploy -m pkg.mod`) only that package is shipped, as Modal mounts it.
    """
    root = Path(source_dir) if source_dir is not None else Path(module_file).parent
    shipped = Path(package_dir) if package_dir is not None else root
    entries: dict[str, Path] = {}
    for path in _walk(shipped):
        entries[f"src/{path.relative_to(root)}"] = path
    for fn in spec.functions:
        for step in fn.image.steps:
            if step.kind == "add_local_python_source":
                for local in step.arg("paths", ()):
                    if not local:
                        continue
                    local_path = Path(local)
                    if local_path.is_dir():
                        for path in _walk(local_path, tuple(step.arg("ignore", ()))):
                            entries.setdefault(f"src/{local_path.name}/{path.relative_to(local_path)}", path)
                    else:
                        entries.setdefault(f"src/{local_path.name}", local_path)
            elif step.kind in ("add_local_file", "add_local_dir") and not step.arg("copy", False):
                local_path = Path(step.arg("local_path"))
                remote = str(step.arg("remote_path")).lstrip("/")
                if local_path.is_dir():
                    for path in _walk(local_path, tuple(step.arg("ignore", ()))):
                        entries[f"mounts/{remote}/{path.relative_to(local_path)}"] = path
                elif local_path.is_file():
                    entries[f"mounts/{remote}"] = local_path
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w") as tar:
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
