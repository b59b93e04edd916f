"""`cove.Volume`: a persistent directory kept by the server and mounted read-write into containers.

```python
vol = cove.Volume.from_name("models", create_if_missing=True)

@app.function(volumes={"/data": vol})
def train():
    with open("/data/weights.bin", "wb") as f: ...
    vol.commit()

with vol.batch_upload() as batch:           # from any process
    batch.put_file("local.txt", "/remote.txt")
print([e.path for e in vol.listdir("/")])
data = b"".join(vol.read_file("remote.txt"))
```

A Volume is the directory `COVE_HOME/volumes/<id>` on the server's machine. Every container of a
function that mounts it sees that same directory, so a write is visible to every other container at
once: `commit()` and `reload()` have nothing to flush or fetch. They stay cheap and only check that
the Volume exists (inside a container that mounts it, not even that), so Modal code that calls them
keeps working. Paths are relative to the Volume's root; `..` and symlinks are refused.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cove import config
from cove._object import (
    Call,
    Ephemeral,
    Item,
    IterMethod,
    IterOp,
    Method,
    Op,
    ServerObject,
    run,
)
from cove.exception import InvalidError

_CHUNK_BYTES = 1024 * 1024
#: Read timeout of file transfers (one request carries a whole file).
_TRANSFER_TIMEOUT_S = 600.0


class FileEntryType(enum.IntEnum):
    """Modal's kinds of Volume entries."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5


_TYPES = {"file": FileEntryType.FILE, "directory": FileEntryType.DIRECTORY, "symlink": FileEntryType.SYMLINK}


@dataclass(frozen=True)
class FileEntry:
    """One file or directory of a Volume (`path` is relative to the Volume's root)."""

    path: str
    type: FileEntryType
    mtime: float
    size: int


def _entry(raw: dict[str, Any]) -> FileEntry:
    return FileEntry(
        path=str(raw["path"]),
        type=_TYPES.get(str(raw["type"]), FileEntryType.UNSPECIFIED),
        mtime=float(raw["mtime"]),
        size=int(raw["size"]),
    )


def _mounted_here(name: str | None) -> bool:
    """True inside a container that mounts the Volume called `name` (the server says which)."""
    if name is None:
        return False
    try:
        mounts = json.loads(config.env("COVE_VOLUME_MOUNTS") or "{}")
    except ValueError:
        return False
    return isinstance(mounts, dict) and name in mounts


class Volume(ServerObject):
    """A persistent, shared directory (Modal's `modal.Volume`). Get one with `from_name` or `ephemeral`."""

    _plural = "volumes"
    _title = "Volume"

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        environment_name: str | None = None,
        create_if_missing: bool = False,
        version: int | None = None,
        client: object = None,
    ) -> Volume:
        """The Volume called `name` (looked up on first use, or when a function mounting it deploys;
        created then if `create_if_missing`)."""
        return super().from_name(name, create_if_missing=create_if_missing)

    @classmethod
    def ephemeral(
        cls, client: object = None, environment_name: str | None = None, version: int | None = None
    ) -> Ephemeral[Volume]:
        """A nameless Volume for the duration of a `with` (or `async with`) block (not mountable)."""
        return super().ephemeral()

    @property
    def create_if_missing(self) -> bool:
        return self._create_if_missing

    # -- operations (see cove._object) --------------------------------------------------------------

    def _sync(self, what: str) -> Op[None]:
        if _mounted_here(self._name):
            return None  # the mount is the Volume's own directory: nothing to flush or fetch
        oid = yield from self._resolve()
        yield Call("POST", self._path(oid, what), {})
        return None

    def _commit(self) -> Op[None]:
        return self._sync("commit")

    def _reload(self) -> Op[None]:
        return self._sync("reload")

    def _listdir(self, path: str, *, recursive: bool = False) -> Op[list[FileEntry]]:
        oid = yield from self._resolve()
        params = {"path": path, "recursive": "1" if recursive else "0"}
        answer = yield Call("GET", self._path(oid, "ls"), params=params)
        return [_entry(e) for e in answer["entries"]]

    def _iterdir(self, path: str, *, recursive: bool = True) -> IterOp[FileEntry]:
        entries = yield from self._listdir(path, recursive=recursive)
        for entry in entries:
            yield Item(entry)

    def _read_file(self, path: str) -> IterOp[bytes]:
        oid = yield from self._resolve()
        data = yield Call(
            "GET",
            self._path(oid, "file"),
            params={"path": path},
            raw=True,
            read_timeout_s=_TRANSFER_TIMEOUT_S,
        )
        for start in range(0, len(data), _CHUNK_BYTES):
            yield Item(bytes(data[start : start + _CHUNK_BYTES]))

    def _read_file_into_fileobj(self, path: str, fileobj: IO[bytes]) -> Op[int]:
        oid = yield from self._resolve()
        data = yield Call(
            "GET",
            self._path(oid, "file"),
            params={"path": path},
            raw=True,
            read_timeout_s=_TRANSFER_TIMEOUT_S,
        )
        fileobj.write(data)
        return len(data)

    def _remove_file(self, path: str, recursive: bool = False) -> Op[None]:
        oid = yield from self._resolve()
        yield Call("POST", self._path(oid, "rm"), {"path": path, "recursive": recursive})
        return None

    def _copy_files(self, src_paths: list[str], dst_path: str, recursive: bool = False) -> Op[None]:
        if isinstance(src_paths, str):
            raise InvalidError(f"copy_files takes a list of source paths, e.g. [{src_paths!r}].")
        oid = yield from self._resolve()
        body = {"sources": list(src_paths), "destination": dst_path, "recursive": recursive}
        yield Call("POST", self._path(oid, "cp"), body)
        return None

    def _upload(self, data: bytes, remote_path: str, force: bool) -> Op[None]:
        oid = yield from self._resolve()
        params = {"path": remote_path, "force": "1" if force else "0"}
        yield Call(
            "PUT", self._path(oid, "file"), params=params, content=data, read_timeout_s=_TRANSFER_TIMEOUT_S
        )
        return None

    # -- Modal's methods, blocking with `.aio` ------------------------------------------------------

    @property
    def commit(self) -> Method[[], None]:
        """`vol.commit()`: make this container's writes visible to others (immediate on one machine)."""
        return Method(self._commit)

    @property
    def reload(self) -> Method[[], None]:
        """`vol.reload()`: see other containers' committed writes (immediate on one machine)."""
        return Method(self._reload)

    @property
    def listdir(self) -> Method[..., list[FileEntry]]:
        """`vol.listdir(path, recursive=False)`: the entries under a directory (or a file's own)."""
        return Method(self._listdir)

    @property
    def iterdir(self) -> IterMethod[..., FileEntry]:
        """`vol.iterdir(path, recursive=True)`: an iterator of entries."""
        return IterMethod(self._iterdir)

    @property
    def read_file(self) -> IterMethod[[str], bytes]:
        """`vol.read_file(path)`: the file's bytes, in chunks."""
        return IterMethod(self._read_file)

    @property
    def read_file_into_fileobj(self) -> Method[[str, IO[bytes]], int]:
        """`vol.read_file_into_fileobj(path, fileobj)`: write the file into `fileobj`; its size."""
        return Method(self._read_file_into_fileobj)

    @property
    def remove_file(self) -> Method[..., None]:
        """`vol.remove_file(path, recursive=False)`."""
        return Method(self._remove_file)

    @property
    def copy_files(self) -> Method[..., None]:
        """`vol.copy_files(src_paths, dst_path, recursive=False)`: copy within the Volume."""
        return Method(self._copy_files)

    def batch_upload(self, force: bool = False) -> VolumeUploadContextManager:
        """`with vol.batch_upload() as batch: batch.put_file(local, remote)`: upload on exit; an existing
        remote file is an error unless `force=True`."""
        return VolumeUploadContextManager(self, force)


class VolumeUploadContextManager:
    """Files and directories to upload to a Volume when the `with` (or `async with`) block ends."""

    def __init__(self, volume: Volume, force: bool) -> None:
        self._volume = volume
        self._force = force
        self._files: list[tuple[str | Path | IO[bytes], str]] = []

    def put_file(
        self, local_file: str | Path | IO[bytes], remote_path: str | Path, mode: int | None = None
    ) -> None:
        remote = str(remote_path)
        if remote.endswith("/"):
            raise InvalidError(f"put_file needs a file path, not a directory: {remote!r}.")
        self._files.append((local_file, remote))

    def put_directory(self, local_path: str | Path, remote_path: str | Path, recursive: bool = True) -> None:
        local = Path(local_path)
        if not local.is_dir():
            raise InvalidError(f"put_directory: {local} is not a directory.")
        pattern = "**/*" if recursive else "*"
        for path in sorted(local.glob(pattern)):
            if path.is_file():
                self._files.append(
                    (path, f"{str(remote_path).rstrip('/')}/{path.relative_to(local).as_posix()}")
                )

    def _ops(self) -> Iterator[Op[None]]:
        for local, remote in self._files:
            data = Path(local).read_bytes() if isinstance(local, (str, Path)) else local.read()
            yield self._volume._upload(data, remote, self._force)

    def __enter__(self) -> VolumeUploadContextManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            for op in self._ops():
                run(op)

    async def __aenter__(self) -> VolumeUploadContextManager:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from cove._object import arun

        if exc_type is None:
            for op in self._ops():
                await arun(op)


__all__ = ["FileEntry", "FileEntryType", "Volume", "VolumeUploadContextManager"]
