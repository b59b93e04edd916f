"""The files of Volumes: one directory per Volume under `COVE_HOME/volumes/<id>`, reached safely.

Containers write to a Volume directly (it is bind-mounted read-write), so a Volume may hold anything a
container made, symlinks to `/etc/shadow` included. Every path a client sends is therefore resolved
component by component from the Volume's directory with `O_NOFOLLOW` (`openat`-style, through
`dir_fd`): `..` is refused, and a symlink anywhere on the path is refused rather than followed, so no
request reads, writes or deletes anything outside the Volume's directory. Uploads land in a temporary
file that is renamed into place, so a reader sees the old file or the new one, never half of it.

These functions block on the disk: the API runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cove import exception

EntryType = Literal["file", "directory", "symlink", "other"]
_CHUNK_BYTES = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    """One file or directory of a Volume, with its path relative to the Volume's root."""

    path: str
    type: EntryType
    mtime: float
    size: int


def volume_dir(volumes_root: Path, object_id: str) -> Path:
    return volumes_root / object_id


def create_dir(volumes_root: Path, object_id: str) -> Path:
    path = volume_dir(volumes_root, object_id)
    path.mkdir(parents=True, exist_ok=True, mode=0o755)
    return path


def remove_dir(volumes_root: Path, object_id: str) -> None:
    shutil.rmtree(volume_dir(volumes_root, object_id), ignore_errors=True)


def split(path: str) -> list[str]:
    """The components of a Volume path ("/a/b", "a/b" and "a//b/" alike); `..` is refused."""
    if not isinstance(path, str) or "\0" in path:
        raise exception.InvalidError(f"Invalid Volume path {path!r}.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise exception.InvalidError(
            f"Volume path {path!r} contains '..': paths are relative to the Volume's root and may not "
            "leave it."
        )
    return parts


@contextlib.contextmanager
def _directory(root: Path, parts: list[str], *, create: bool = False, what: str = "") -> Iterator[int]:
    """An fd of the directory `parts` inside `root`, never following a symlink on the way."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for index, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _path_error(exc, "/".join(parts[: index + 1]), what) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _path_error(exc: OSError, path: str, what: str) -> exception.Error:
    shown = "/" + path
    if exc.errno == errno.ENOENT:
        return exception.NotFoundError(f"No such file or directory in the Volume: {shown}{what}.")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return exception.InvalidError(
            f"{shown} in the Volume is a symlink or a file, not a directory{what}: Cove does not follow "
            "symlinks inside Volumes."
        )
    return exception.InvalidError(f"{shown} in the Volume: {exc.strerror}{what}.")


def _entry(path: str, st: os.stat_result) -> Entry:
    if stat.S_ISDIR(st.st_mode):
        kind: EntryType = "directory"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return Entry(path=path, type=kind, mtime=st.st_mtime, size=st.st_size if kind == "file" else 0)


def listdir(root: Path, path: str, *, recursive: bool = False) -> list[Entry]:
    """The entries under `path` (a directory), or the entry of `path` itself if it is a file."""
    parts = split(path)
    if parts:
        with _directory(root, parts[:-1]) as parent:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                shown = "/" + "/".join(parts)
                raise exception.NotFoundError(f"No such file or directory in the Volume: {shown}.") from None
            if not stat.S_ISDIR(st.st_mode):
                return [_entry("/".join(parts), st)]
    found: list[Entry] = []
    with _directory(root, parts) as fd:
        _walk(fd, "/".join(parts), recursive, found)
    return found


def _walk(fd: int, prefix: str, recursive: bool, found: list[Entry]) -> None:
    for name in sorted(os.listdir(fd)):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        rel = f"{prefix}/{name}" if prefix else name
        found.append(_entry(rel, st))
        if recursive and stat.S_ISDIR(st.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _walk(child, rel, recursive, found)
            finally:
                os.close(child)


def open_file(root: Path, path: str) -> int:
    """A read-only fd of the regular file at `path` (the caller closes it)."""
    parts = split(path)
    if not parts:
        raise exception.InvalidError("'/' is the Volume's root directory, not a file.")
    with _directory(root, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise exception.InvalidError(
                    f"/{'/'.join(parts)} in the Volume is a symlink: Cove does not follow symlinks "
                    "inside Volumes."
                ) from None
            raise _path_error(exc, "/".join(parts), "") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise exception.InvalidError(f"/{'/'.join(parts)} in the Volume is a directory, not a file.")
    return fd


def read_chunk(fd: int) -> bytes:
    return os.read(fd, _CHUNK_BYTES)


class Upload:
    """A file being written into a Volume: chunks go to a temporary file, `commit` renames it in place."""

    def __init__(self, root: Path, path: str, *, force: bool) -> None:
        parts = split(path)
        if not parts:
            raise exception.InvalidError("Give a file path inside the Volume, not its root '/'.")
        self.path = "/" + "/".join(parts)
        self._name = parts[-1]
        with _directory(root, parts[:-1], create=True, what=f" (uploading {self.path})") as parent:
            self._dir = os.dup(parent)
        try:
            st = os.stat(self._name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.close(self._dir)
            raise exception.InvalidError(
                f"{self.path} is a directory in the Volume; cannot write a file there."
            )
        if st is not None and not force:
            os.close(self._dir)
            raise exception.AlreadyExistsError(
                f"{self.path} already exists in the Volume. Pass force=True (`cove volume put --force`) "
                "to overwrite it."
            )
        self._tmp = f".cove-upload-{secrets.token_hex(8)}"
        self._fd = os.open(
            self._tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=self._dir,
        )

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        os.close(self._fd)
        os.rename(self._tmp, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        os.close(self._dir)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self._tmp, dir_fd=self._dir)
        with contextlib.suppress(OSError):
            os.close(self._dir)


def remove(root: Path, path: str, *, recursive: bool) -> None:
    parts = split(path)
    if not parts:
        raise exception.InvalidError("Cannot remove the Volume's root; delete the Volume instead.")
    with _directory(root, parts[:-1]) as parent:
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            shown = "/" + "/".join(parts)
            raise exception.NotFoundError(f"No such file or directory in the Volume: {shown}.") from None
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise exception.InvalidError(
                    f"/{'/'.join(parts)} is a directory: pass recursive=True (`cove volume rm -r`) "
                    "to remove it."
                )
            shutil.rmtree(parts[-1], dir_fd=parent)  # fd-based: does not follow symlinks out
        else:
            os.unlink(parts[-1], dir_fd=parent)


def copy(root: Path, sources: list[str], destination: str, *, recursive: bool) -> None:
    """Copy files (or, with `recursive`, directories) within one Volume, as `cp` does."""
    if not sources:
        raise exception.InvalidError("copy_files needs at least one source path.")
    dst_parts = split(destination)
    into_dir = len(sources) > 1 or destination.endswith("/") or _is_dir(root, dst_parts)
    for source in sources:
        src_parts = split(source)
        if not src_parts:
            raise exception.InvalidError("Cannot copy the Volume's root; name the files to copy.")
        if not recursive and _is_dir(root, src_parts):
            raise exception.InvalidError(
                f"/{'/'.join(src_parts)} is a directory: pass recursive=True (`cove volume cp -r`)."
            )
        target = [*dst_parts, src_parts[-1]] if into_dir else dst_parts
        found = listdir(root, source, recursive=True)
        if len(found) == 1 and found[0].type == "symlink" and found[0].path == "/".join(src_parts):
            raise exception.InvalidError(
                f"/{found[0].path} in the Volume is a symlink: Cove does not follow symlinks inside Volumes."
            )
        for entry in found:  # symlinks inside a copied directory are skipped, never followed
            rel = entry.path.split("/")[len(src_parts) :]
            if entry.type != "file":
                continue
            fd = open_file(root, entry.path)
            upload = Upload(root, "/".join([*target, *rel]), force=True)
            try:
                while chunk := read_chunk(fd):
                    upload.write(chunk)
                upload.commit()
            except BaseException:
                upload.abort()
                raise
            finally:
                os.close(fd)


def _is_dir(root: Path, parts: list[str]) -> bool:
    if not parts:
        return True
    try:
        with _directory(root, parts):
            return True
    except exception.Error:
        return False


__all__ = [
    "Entry",
    "Upload",
    "copy",
    "create_dir",
    "listdir",
    "open_file",
    "read_chunk",
    "remove",
    "remove_dir",
    "split",
    "volume_dir",
]
