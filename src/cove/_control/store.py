"""Durable state in SQLite: apps, their versions, API tokens, Dicts and Queues. The server is the one writer.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[i]` upgrades version i to i+1 and runs
once, in a transaction, when a server opens an older database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cove._control.storage import StorageError, corrupt_database, is_disk_full, no_space, writing
from cove._spec import AppSpec, app_spec_from_dict, spec_to_dict
from cove.exception import NotFoundError

AppKind = Literal["ephemeral", "deployed"]
TokenKind = Literal["api", "proxy"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: apps, versions, tokens.
    """
    CREATE TABLE apps (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        current_version INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        stopped_at REAL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE versions (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        number INTEGER NOT NULL,
        spec TEXT NOT NULL,
        module_file TEXT NOT NULL,
        source_dir TEXT NOT NULL,
        tag TEXT NOT NULL DEFAULT '',
        deployed_by TEXT NOT NULL DEFAULT '',
        rollback_of INTEGER,
        created_at REAL NOT NULL,
        PRIMARY KEY (kind, name, number)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 1 -> 2: named and ephemeral objects (Dict, Queue, Volume), Dict entries, Queue items.
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT,
        ephemeral INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX objects_by_name ON objects (kind, name) WHERE name IS NOT NULL;
    CREATE TABLE dict_entries (
        object_id TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (object_id, key)
    );
    CREATE TABLE queue_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        partition TEXT NOT NULL,
        value BLOB NOT NULL
    );
    CREATE INDEX queue_items_by_partition ON queue_items (object_id, partition, seq);
    CREATE TABLE queue_partitions (
        object_id TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        partition TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (object_id, partition)
    );
    """,
)


@dataclass(frozen=True)
class StoredApp:
    kind: AppKind
    name: str
    state: str
    current_version: int
    created_at: float
    stopped_at: float | None


@dataclass(frozen=True)
class StoredVersion:
    kind: AppKind
    name: str
    number: int
    spec: AppSpec
    module_file: str
    source_dir: str
    tag: str
    deployed_by: str
    rollback_of: int | None
    created_at: float


@dataclass(frozen=True)
class TokenInfo:
    id: str
    kind: TokenKind
    created_at: float
    revoked_at: float | None


class Store:
    """The server's SQLite database (WAL mode; file mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        try:
            with writing(path):
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                if fresh:
                    os.chmod(path, 0o600)
                self._db.row_factory = sqlite3.Row
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                self._db.execute("SELECT COUNT(*) FROM apps").fetchone()
        except sqlite3.DatabaseError as exc:
            raise corrupt_database(path, exc) from None
        self._inode = os.stat(path).st_ino
        #: Called with a token's id once it is revoked: caches of valid tokens (the gateway's
        #: proxy-auth cache) drop it then, so revoking takes effect at once (issue 12).
        self.revoke_listeners: list[Callable[[str], None]] = []

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Run one statement; a full disk, a damaged or a deleted database file is a `StorageError`."""
        try:
            alive = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            alive = False
        if not alive:
            raise StorageError(
                f"the Cove database {self.path} was deleted or replaced while the server ran, so what it "
                "records now would be lost. Restart the server (`cove server stop`, then any `cove` "
                "command); apps deployed before must then be deployed again."
            )
        try:
            return self._db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc):
                raise no_space(self.path, exc) from None
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise corrupt_database(self.path, exc) from None

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already (disk full)
            self._db.execute("ROLLBACK")

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        for index in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[index]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {index + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the object stores (`objects`, `dicts`, `queues`) that share this file."""
        return self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any error: a state change is all or nothing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- apps and versions ---------------------------------------------------------------------

    def add_version(
        self,
        kind: AppKind,
        name: str,
        spec: AppSpec,
        module_file: str,
        source_dir: str,
        *,
        tag: str = "",
        deployed_by: str = "",
        rollback_of: int | None = None,
        number: int | None = None,
    ) -> int:
        """Record a new version and make it the app's current one, in one transaction (a crash
        leaves either the old or the new version current); returns its number (`number`, if
        given, must be `next_version`)."""
        now = time.time()
        self._execute("BEGIN IMMEDIATE")
        try:
            if number is None:
                number = self.next_version(kind, name)
            self._execute(
                "INSERT INTO versions (kind, name, number, spec, module_file, source_dir, tag, deployed_by,"
                " rollback_of, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    name,
                    number,
                    json.dumps(spec_to_dict(spec)),
                    module_file,
                    source_dir,
                    tag,
                    deployed_by,
                    rollback_of,
                    now,
                ),
            )
            self._execute(
                "INSERT INTO apps (kind, name, state, current_version, created_at)"
                " VALUES (?, ?, 'running', ?, ?)"
                " ON CONFLICT (kind, name) DO UPDATE SET state = 'running',"
                " current_version = excluded.current_version, stopped_at = NULL",
                (kind, name, number, now),
            )
            self._execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return number

    def next_version(self, kind: AppKind, name: str) -> int:
        """The number the next version of an app will get."""
        row = self._execute(
            "SELECT MAX(number) FROM versions WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return int(row[0] or 0) + 1

    def set_stopped(self, kind: AppKind, name: str) -> None:
        self._execute(
            "UPDATE apps SET state = 'stopped', stopped_at = ? WHERE kind = ? AND name = ?",
            (time.time(), kind, name),
        )

    def stop_all(self, kind: AppKind) -> list[str]:
        """Mark every running app of `kind` stopped (ephemeral apps do not outlive their server)."""
        names = [
            r["name"]
            for r in self._execute("SELECT name FROM apps WHERE kind = ? AND state = 'running'", (kind,))
        ]
        self._execute(
            "UPDATE apps SET state = 'stopped', stopped_at = ? WHERE kind = ? AND state = 'running'",
            (time.time(), kind),
        )
        return names

    def apps(self) -> list[StoredApp]:
        rows = self._execute("SELECT * FROM apps ORDER BY created_at").fetchall()
        return [
            StoredApp(
                r["kind"], r["name"], r["state"], r["current_version"], r["created_at"], r["stopped_at"]
            )
            for r in rows
        ]

    def created_at(self, kind: AppKind, name: str) -> float | None:
        """When the app was first published (kept across versions, stops and server restarts)."""
        row = self._db.execute(
            "SELECT created_at FROM apps WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        return None if row is None else float(row["created_at"])

    def version(self, kind: AppKind, name: str, number: int) -> StoredVersion:
        row = self._execute(
            "SELECT * FROM versions WHERE kind = ? AND name = ? AND number = ?", (kind, name, number)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"App {name!r} has no version v{number}. See `cove app history {name}`.")
        return _version(row)

    def versions(self, kind: AppKind, name: str) -> list[StoredVersion]:
        rows = self._execute(
            "SELECT * FROM versions WHERE kind = ? AND name = ? ORDER BY number", (kind, name)
        ).fetchall()
        return [_version(r) for r in rows]

    # -- tokens ----------------------------------------------------------------------------------

    def create_token(self, kind: TokenKind) -> tuple[str, str]:
        """A new token: returns (id, secret). Only the secret's SHA-256 is stored."""
        prefix_id, prefix_secret = ("wk-", "ws-") if kind == "proxy" else ("ak-", "as-")
        token_id = prefix_id + secrets.token_hex(8)
        secret = prefix_secret + secrets.token_urlsafe(24)
        self._execute(
            "INSERT INTO tokens (id, kind, secret_sha256, created_at) VALUES (?, ?, ?, ?)",
            (token_id, kind, _sha256(secret), time.time()),
        )
        return token_id, secret

    def check_token(self, token_id: str, secret: str, kind: TokenKind) -> bool:
        row = self._execute(
            "SELECT secret_sha256 FROM tokens WHERE id = ? AND kind = ? AND revoked_at IS NULL",
            (token_id, kind),
        ).fetchone()
        return row is not None and secrets.compare_digest(row["secret_sha256"], _sha256(secret))

    def tokens(self) -> list[TokenInfo]:
        rows = self._execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [TokenInfo(r["id"], r["kind"], r["created_at"], r["revoked_at"]) for r in rows]

    def revoke_token(self, token_id: str) -> None:
        cursor = self._execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), token_id)
        )
        if cursor.rowcount == 0:
            raise NotFoundError(f"Token {token_id!r} not found (or already revoked). See `cove token list`.")
        for listener in self.revoke_listeners:
            listener(token_id)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _version(row: sqlite3.Row) -> StoredVersion:
    raw: dict[str, Any] = json.loads(row["spec"])
    return StoredVersion(
        kind=row["kind"],
        name=row["name"],
        number=row["number"],
        spec=app_spec_from_dict(raw),
        module_file=row["module_file"],
        source_dir=row["source_dir"],
        tag=row["tag"],
        deployed_by=row["deployed_by"],
        rollback_of=row["rollback_of"],
        created_at=row["created_at"],
    )
