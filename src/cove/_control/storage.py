"""Faults of the disk under COVE_HOME, as Cove errors: a full disk, a corrupt or deleted database.

Every state change either happens whole or not at all; when the disk refuses it, the caller gets a
`StorageError` naming the file and the fix instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from cove.exception import Error

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(Error):
    """The server could not write its state: the disk is full, or the database is damaged."""


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" from the OS or "database or disk is full" from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def no_space(path: Path, exc: BaseException) -> StorageError:
    return StorageError(
        f"no space left on the device holding {path} ({exc}); nothing was changed. "
        "Free some space there (`df -h` shows it) and run the command again."
    )


def corrupt_database(path: Path, exc: BaseException) -> StorageError:
    return StorageError(
        f"the Cove database {path} is damaged ({exc}). Stop the server (`cove server stop`), move the "
        f"file aside (`mv {path} {path}.broken`) and start again: apps must then be deployed again."
    )


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a full disk while writing `path` into a `StorageError` naming it."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        if is_disk_full(exc):
            raise no_space(path, exc) from exc
        raise
