"""The contents of Dicts in SQLite: pickled keys and values, each change one short transaction.

The server never unpickles: keys are compared as the bytes the client pickled (so, as Modal advises,
use primitive keys, whose pickles are deterministic).
"""

from __future__ import annotations

from cove import exception
from cove._control.store import Store

#: Largest pickled key + value of one entry: Cove's limit, so that storing one stays a short step on
#: the server's event loop (Modal documents none; keep big data in a Volume).
MAX_ENTRY_BYTES = 16 * 1024 * 1024
#: Entries per page of `keys()`/`values()`/`items()`.
PAGE_SIZE = 1000


class DictStore:
    """Dict operations on ids the `ObjectRegistry` handed out (callers check the id exists)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, object_id: str, key: bytes) -> bytes | None:
        row = self._store.db.execute(
            "SELECT value FROM dict_entries WHERE object_id = ? AND key = ?", (object_id, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, object_id: str, key: bytes, value: bytes, *, skip_if_exists: bool) -> bool:
        """Store `value` under `key`; with `skip_if_exists`, only if the key is absent. True if written."""
        _check_size(key, value)
        verb = "INSERT OR IGNORE" if skip_if_exists else "INSERT OR REPLACE"
        with self._store.transaction() as db:
            cursor = db.execute(
                f"{verb} INTO dict_entries (object_id, key, value) VALUES (?, ?, ?)", (object_id, key, value)
            )
        return cursor.rowcount > 0

    def update(self, object_id: str, items: list[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            _check_size(key, value)
        with self._store.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO dict_entries (object_id, key, value) VALUES (?, ?, ?)",
                [(object_id, k, v) for k, v in items],
            )

    def pop(self, object_id: str, key: bytes) -> bytes | None:
        with self._store.transaction() as db:
            row = db.execute(
                "DELETE FROM dict_entries WHERE object_id = ? AND key = ? RETURNING value", (object_id, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def length(self, object_id: str) -> int:
        row = self._store.db.execute(
            "SELECT COUNT(*) FROM dict_entries WHERE object_id = ?", (object_id,)
        ).fetchone()
        return int(row[0])

    def clear(self, object_id: str) -> None:
        with self._store.transaction() as db:
            db.execute("DELETE FROM dict_entries WHERE object_id = ?", (object_id,))

    def page(self, object_id: str, after: int, limit: int = PAGE_SIZE) -> list[tuple[int, bytes, bytes]]:
        """Up to `limit` (rowid, key, value) in insertion order after rowid `after`."""
        rows = self._store.db.execute(
            "SELECT rowid, key, value FROM dict_entries WHERE object_id = ? AND rowid > ?"
            " ORDER BY rowid LIMIT ?",
            (object_id, after, limit),
        ).fetchall()
        return [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]


def _check_size(key: bytes, value: bytes) -> None:
    size = len(key) + len(value)
    if size > MAX_ENTRY_BYTES:
        raise exception.InvalidError(
            f"A Dict entry of {size} bytes (pickled key + value) is over the {MAX_ENTRY_BYTES} byte limit. "
            "Store large data in a cove.Volume and keep its path in the Dict."
        )


__all__ = ["MAX_ENTRY_BYTES", "PAGE_SIZE", "DictStore"]
