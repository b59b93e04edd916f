"""The contents of Queues in SQLite, and the waits of blocking `get`/`put` on the server's event loop.

A Queue is a set of FIFO partitions (the default one has the key ""). Modal's documented limits hold:
at most 5,000 items per partition, 1 MiB per item, 100,000 partitions per Queue, partition keys of 1 to
64 bytes, and a partition is dropped `partition_ttl` seconds (default 24 h) after its last put.

A blocking `get` (or a `put` into a full partition) is a long poll: the request waits on an
`asyncio.Event` that the next put (or get) sets, never polling the database and never blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable

from cove import exception
from cove._control.store import Store

MAX_PARTITION_ITEMS = 5000
MAX_ITEM_BYTES = 1024 * 1024
MAX_PARTITIONS = 100_000
MAX_PARTITION_KEY_BYTES = 64
DEFAULT_PARTITION_TTL_S = 24 * 3600.0
#: Items per page of `iterate()`.
PAGE_SIZE = 100


def check_partition(partition: str | None) -> str:
    """The stored key of a partition ("" for the default), or `InvalidError`."""
    if partition is None:
        return ""
    size = len(partition.encode())
    if not 1 <= size <= MAX_PARTITION_KEY_BYTES:
        raise exception.InvalidError(
            f"Queue partition key {partition!r} is {size} bytes: it must be 1 to {MAX_PARTITION_KEY_BYTES} "
            "bytes (or None for the default partition)."
        )
    return partition


class _Waiters:
    """One `asyncio.Event` per (queue, partition) that the next change sets and replaces."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self.closed = False

    def notify(self, object_id: str, partition: str | None = None) -> None:
        keys = [k for k in self._events if k[0] == object_id and (partition is None or k[1] == partition)]
        for key in keys:
            self._events.pop(key).set()

    def notify_all(self) -> None:
        for event in self._events.values():
            event.set()
        self._events.clear()

    async def wait(self, object_id: str, partition: str, timeout_s: float) -> None:
        if self.closed or timeout_s <= 0:
            return
        event = self._events.setdefault((object_id, partition), asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)


class QueueStore:
    """Queue operations on ids the `ObjectRegistry` handed out (callers check the id exists)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._items = _Waiters()  # set when items arrive
        self._space = _Waiters()  # set when items leave

    def close(self) -> None:
        """End every wait now (server shutdown): blocked gets answer 'nothing yet' and clients retry."""
        for waiters in (self._items, self._space):
            waiters.closed = True
            waiters.notify_all()

    def forget(self, object_id: str) -> None:
        """Wake the waiters of a deleted queue (they then find it gone)."""
        self._items.notify(object_id)
        self._space.notify(object_id)

    # -- put ------------------------------------------------------------------------------------

    async def put(
        self, object_id: str, partition: str, values: list[bytes], ttl_s: float, wait_s: float
    ) -> bool:
        """Append `values` to the partition, waiting up to `wait_s` for room; False if still full."""
        for value in values:
            if len(value) > MAX_ITEM_BYTES:
                raise exception.InvalidError(
                    f"A Queue item of {len(value)} bytes (pickled) is over the {MAX_ITEM_BYTES} byte (1 MiB) "
                    "limit. Put large data in a cove.Volume and queue its path."
                )
        if len(values) > MAX_PARTITION_ITEMS:
            raise exception.InvalidError(
                f"put_many of {len(values)} items can never fit: a partition holds at most "
                f"{MAX_PARTITION_ITEMS} items. Put them in smaller batches."
            )
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            if self._try_put(object_id, partition, values, ttl_s):
                self._items.notify(object_id, partition)
                return True
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._space.closed:
                return False
            await self._space.wait(object_id, partition, remaining)
            self._check_alive(object_id)

    def _try_put(self, object_id: str, partition: str, values: list[bytes], ttl_s: float) -> bool:
        now = self._clock()
        with self._store.transaction() as db:
            self._expire(db, object_id, partition, now)
            count = int(
                db.execute(
                    "SELECT COUNT(*) FROM queue_items WHERE object_id = ? AND partition = ?",
                    (object_id, partition),
                ).fetchone()[0]
            )
            if count + len(values) > MAX_PARTITION_ITEMS:
                return False
            known = db.execute(
                "SELECT 1 FROM queue_partitions WHERE object_id = ? AND partition = ?", (object_id, partition)
            ).fetchone()
            if known is None:
                partitions = int(
                    db.execute(
                        "SELECT COUNT(*) FROM queue_partitions WHERE object_id = ?", (object_id,)
                    ).fetchone()[0]
                )
                if partitions >= MAX_PARTITIONS:
                    raise exception.ResourceExhaustedError(
                        f"The Queue has {partitions} partitions, the most one Queue may hold. "
                        "Clear unused partitions (queue.clear(partition=...)) or use another Queue."
                    )
            db.execute(
                "INSERT INTO queue_partitions (object_id, partition, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (object_id, partition) DO UPDATE SET expires_at = excluded.expires_at",
                (object_id, partition, now + ttl_s),
            )
            db.executemany(
                "INSERT INTO queue_items (object_id, partition, value) VALUES (?, ?, ?)",
                [(object_id, partition, v) for v in values],
            )
        return True

    # -- get ------------------------------------------------------------------------------------

    async def get(self, object_id: str, partition: str, n: int, wait_s: float) -> list[bytes]:
        """Take up to `n` items, waiting up to `wait_s` for at least one; [] if none came."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            taken = self._take(object_id, partition, n)
            if taken:
                self._space.notify(object_id, partition)
                return taken
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._items.closed:
                return []
            await self._items.wait(object_id, partition, remaining)
            self._check_alive(object_id)

    def _take(self, object_id: str, partition: str, n: int) -> list[bytes]:
        with self._store.transaction() as db:
            self._expire(db, object_id, partition, self._clock())
            rows = db.execute(
                "SELECT seq, value FROM queue_items WHERE object_id = ? AND partition = ?"
                " ORDER BY seq LIMIT ?",
                (object_id, partition, n),
            ).fetchall()
            if rows:
                db.execute(
                    "DELETE FROM queue_items WHERE object_id = ? AND partition = ? AND seq <= ?",
                    (object_id, partition, int(rows[-1][0])),
                )
        return [bytes(r[1]) for r in rows]

    # -- inspect and clear ----------------------------------------------------------------------

    def length(self, object_id: str, partition: str | None) -> int:
        """Items in one partition, or in all of them (`partition=None`)."""
        with self._store.transaction() as db:
            self._expire(db, object_id, partition, self._clock())
            if partition is None:
                row = db.execute("SELECT COUNT(*) FROM queue_items WHERE object_id = ?", (object_id,))
            else:
                row = db.execute(
                    "SELECT COUNT(*) FROM queue_items WHERE object_id = ? AND partition = ?",
                    (object_id, partition),
                )
            return int(row.fetchone()[0])

    def clear(self, object_id: str, partition: str | None) -> None:
        with self._store.transaction() as db:
            if partition is None:
                db.execute("DELETE FROM queue_items WHERE object_id = ?", (object_id,))
                db.execute("DELETE FROM queue_partitions WHERE object_id = ?", (object_id,))
            else:
                db.execute(
                    "DELETE FROM queue_items WHERE object_id = ? AND partition = ?", (object_id, partition)
                )
                db.execute(
                    "DELETE FROM queue_partitions WHERE object_id = ? AND partition = ?",
                    (object_id, partition),
                )
        self._space.notify(object_id, partition)

    async def page(
        self, object_id: str, partition: str, after: int, wait_s: float, limit: int = PAGE_SIZE
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` (seq, value) after `after`, without taking them; waits up to `wait_s` for one."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            with self._store.transaction() as db:
                self._expire(db, object_id, partition, self._clock())
                rows = db.execute(
                    "SELECT seq, value FROM queue_items WHERE object_id = ? AND partition = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (object_id, partition, after, limit),
                ).fetchall()
            remaining = deadline - asyncio.get_running_loop().time()
            if rows or remaining <= 0 or self._items.closed:
                return [(int(r[0]), bytes(r[1])) for r in rows]
            await self._items.wait(object_id, partition, remaining)
            self._check_alive(object_id)

    def _check_alive(self, object_id: str) -> None:
        """After a wait: the Queue may have been deleted meanwhile (its waiters were woken for that)."""
        if self._store.db.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is None:
            raise exception.NotFoundError(f"Queue {object_id} was deleted while this request waited on it.")

    def partitions(self, object_id: str) -> list[tuple[str, int]]:
        """(partition key, item count) of every live partition, for `cove queue peek`/`len`."""
        with self._store.transaction() as db:
            self._expire(db, object_id, None, self._clock())
            rows = db.execute(
                "SELECT p.partition, COUNT(i.seq) FROM queue_partitions p LEFT JOIN queue_items i"
                " ON i.object_id = p.object_id AND i.partition = p.partition"
                " WHERE p.object_id = ? GROUP BY p.partition ORDER BY p.partition",
                (object_id,),
            ).fetchall()
        return [(str(r[0]), int(r[1])) for r in rows]

    @staticmethod
    def _expire(db: sqlite3.Connection, object_id: str, partition: str | None, now: float) -> None:
        """Drop partitions (of this queue, or just `partition`) whose TTL passed since their last put."""
        where = "object_id = ? AND expires_at <= ?"
        params: tuple[object, ...] = (object_id, now)
        if partition is not None:
            where += " AND partition = ?"
            params += (partition,)
        expired = db.execute(f"SELECT partition FROM queue_partitions WHERE {where}", params).fetchall()
        for (key,) in expired:
            db.execute("DELETE FROM queue_items WHERE object_id = ? AND partition = ?", (object_id, key))
        if expired:
            db.execute(f"DELETE FROM queue_partitions WHERE {where}", params)


__all__ = [
    "DEFAULT_PARTITION_TTL_S",
    "MAX_ITEM_BYTES",
    "MAX_PARTITIONS",
    "MAX_PARTITION_ITEMS",
    "QueueStore",
    "check_partition",
]
