"""The names of Dicts, Queues and Volumes: create, look up, list and delete them, named or ephemeral.

Every object has an id (`di-…`, `qu-…`, `vo-…`) and, unless it is ephemeral, a name unique per kind.
Ephemeral objects live until their client closes them or the server restarts (they are dropped when
the next server opens the database), as Modal's do not outlive their app.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Literal

from cove import exception
from cove._control.store import Store

ObjectKind = Literal["dict", "queue", "volume"]
KINDS: tuple[ObjectKind, ...] = ("dict", "queue", "volume")

_PREFIX: dict[ObjectKind, str] = {"dict": "di-", "queue": "qu-", "volume": "vo-"}
_TITLE: dict[ObjectKind, str] = {"dict": "Dict", "queue": "Queue", "volume": "Volume"}
#: Modal's rule for object names: letters, digits, '-', '_', '.', at most 64 characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ObjectInfo:
    id: str
    kind: ObjectKind
    name: str | None
    ephemeral: bool
    created_at: float


def check_name(kind: ObjectKind, name: object) -> str:
    """`name` if it is a valid object name, else `InvalidError` naming the rule."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise exception.InvalidError(
            f"Invalid {_TITLE[kind]} name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name


class ObjectRegistry:
    """Rows of the `objects` table; the contents live in `dicts`, `queues` and `volumes`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def drop_ephemeral(self) -> list[ObjectInfo]:
        """Delete every ephemeral object (called at server start: they do not survive a restart)."""
        dropped = [self._info(r) for r in self._store.db.execute("SELECT * FROM objects WHERE ephemeral = 1")]
        with self._store.transaction() as db:
            db.execute("DELETE FROM objects WHERE ephemeral = 1")
        return dropped

    def lookup(self, kind: ObjectKind, name: str, *, create_if_missing: bool) -> ObjectInfo:
        check_name(kind, name)
        row = self._store.db.execute(
            "SELECT * FROM objects WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        if row is not None:
            return self._info(row)
        if not create_if_missing:
            title = _TITLE[kind]
            raise exception.NotFoundError(
                f"{title} {name!r} not found. Create it with cove.{title}.from_name({name!r}, "
                f"create_if_missing=True) or `cove {kind} create {name}`."
            )
        return self._insert(kind, name)

    def create(self, kind: ObjectKind, name: str) -> ObjectInfo:
        check_name(kind, name)
        if self._store.db.execute(
            "SELECT 1 FROM objects WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone():
            raise exception.AlreadyExistsError(f"{_TITLE[kind]} {name!r} already exists.")
        return self._insert(kind, name)

    def ephemeral(self, kind: ObjectKind) -> ObjectInfo:
        return self._insert(kind, None)

    def get(self, kind: ObjectKind, object_id: str) -> ObjectInfo:
        row = self._store.db.execute(
            "SELECT * FROM objects WHERE kind = ? AND id = ?", (kind, object_id)
        ).fetchone()
        if row is None:
            raise exception.NotFoundError(
                f"{_TITLE[kind]} {object_id} not found: it was deleted (or it was ephemeral and its "
                "server restarted)."
            )
        return self._info(row)

    def list(self, kind: ObjectKind) -> list[ObjectInfo]:
        rows = self._store.db.execute(
            "SELECT * FROM objects WHERE kind = ? AND name IS NOT NULL ORDER BY created_at", (kind,)
        )
        return [self._info(r) for r in rows]

    def delete(self, info: ObjectInfo) -> None:
        """Delete the object and, through the foreign keys, all its entries/items, in one transaction."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM objects WHERE id = ?", (info.id,))

    def _insert(self, kind: ObjectKind, name: str | None) -> ObjectInfo:
        info = ObjectInfo(
            id=_PREFIX[kind] + secrets.token_hex(10),
            kind=kind,
            name=name,
            ephemeral=name is None,
            created_at=time.time(),
        )
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO objects (id, kind, name, ephemeral, created_at) VALUES (?, ?, ?, ?, ?)",
                (info.id, kind, name, int(info.ephemeral), info.created_at),
            )
        return info

    @staticmethod
    def _info(row: sqlite3.Row) -> ObjectInfo:
        return ObjectInfo(
            id=row["id"],
            kind=row["kind"],
            name=row["name"],
            ephemeral=bool(row["ephemeral"]),
            created_at=float(row["created_at"]),
        )


__all__ = ["KINDS", "ObjectInfo", "ObjectKind", "ObjectRegistry", "check_name"]
