"""The server's object stores on a real SQLite file: the schema migration, Dict and Queue semantics,
partition TTLs on an injected clock, and waits that a put (or a deletion) ends."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cove import exception
from cove._control.dicts import DictStore
from cove._control.objects import ObjectRegistry
from cove._control.queues import MAX_PARTITION_ITEMS, QueueStore
from cove._control.store import MIGRATIONS, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "cove.db")


def test_a_version_1_database_is_migrated_and_keeps_its_apps(tmp_path: Path) -> None:
    path = tmp_path / "cove.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO apps (kind, name, state, created_at) VALUES ('deployed', 'shop', 'running', 1)")
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS) == 2
    assert [a.name for a in store.apps()] == ["shop"]
    assert ObjectRegistry(store).list("dict") == []


def test_names_are_unique_per_kind_and_ephemeral_objects_are_dropped(store: Store) -> None:
    registry = ObjectRegistry(store)
    d = registry.lookup("dict", "x", create_if_missing=True)
    assert registry.lookup("dict", "x", create_if_missing=False) == d
    assert registry.lookup("queue", "x", create_if_missing=True).id.startswith("qu-")
    with pytest.raises(exception.AlreadyExistsError):
        registry.create("dict", "x")
    with pytest.raises(exception.NotFoundError, match="create_if_missing=True"):
        registry.lookup("volume", "x", create_if_missing=False)
    with pytest.raises(exception.InvalidError, match="Invalid Dict name"):
        registry.lookup("dict", "../x", create_if_missing=True)
    eph = registry.ephemeral("dict")
    DictStore(store).put(eph.id, b"k", b"v", skip_if_exists=False)
    assert [i.id for i in registry.drop_ephemeral()] == [eph.id]
    with pytest.raises(exception.NotFoundError):
        registry.get("dict", eph.id)
    assert store.db.execute("SELECT COUNT(*) FROM dict_entries").fetchone()[0] == 0  # cascaded


def test_dict_put_skip_if_exists_pop_and_pages(store: Store) -> None:
    oid = ObjectRegistry(store).lookup("dict", "d", create_if_missing=True).id
    dicts = DictStore(store)
    assert dicts.put(oid, b"a", b"1", skip_if_exists=False) is True
    assert dicts.put(oid, b"a", b"2", skip_if_exists=True) is False
    assert dicts.get(oid, b"a") == b"1"
    dicts.update(oid, [(b"k%d" % i, b"v") for i in range(2500)])
    assert dicts.length(oid) == 2501
    seen, after = [], 0
    while page := dicts.page(oid, after):
        seen += [k for _, k, _ in page]
        after = page[-1][0]
    assert len(seen) == 2501 and seen[0] == b"a"
    assert dicts.pop(oid, b"a") == b"1" and dicts.pop(oid, b"a") is None


def test_queue_partitions_expire_ttl_after_their_last_put(store: Store) -> None:
    clock = Clock()
    queues = QueueStore(store, clock=clock)
    oid = ObjectRegistry(store).lookup("queue", "q", create_if_missing=True).id

    async def scenario() -> None:
        assert await queues.put(oid, "p", [b"1"], ttl_s=10, wait_s=0)
        clock.now += 8
        assert await queues.put(oid, "p", [b"2"], ttl_s=10, wait_s=0)  # refreshes the TTL
        assert await queues.put(oid, "", [b"d"], ttl_s=100, wait_s=0)
        clock.now += 8
        assert queues.length(oid, "p") == 2
        clock.now += 3
        assert queues.length(oid, "p") == 0 and queues.length(oid, None) == 1
        assert queues.partitions(oid) == [("", 1)]

    asyncio.run(scenario())


def test_a_full_partition_refuses_then_accepts_once_drained(store: Store) -> None:
    queues = QueueStore(store)
    oid = ObjectRegistry(store).lookup("queue", "q", create_if_missing=True).id

    async def scenario() -> None:
        assert await queues.put(oid, "", [b"x"] * MAX_PARTITION_ITEMS, ttl_s=60, wait_s=0)
        assert not await queues.put(oid, "", [b"y"], ttl_s=60, wait_s=0)
        waiting = asyncio.ensure_future(queues.put(oid, "", [b"y"], ttl_s=60, wait_s=30))
        await asyncio.sleep(0)
        assert len(await queues.get(oid, "", 1, wait_s=0)) == 1
        assert await asyncio.wait_for(waiting, 10)
        with pytest.raises(exception.InvalidError, match="1 MiB"):
            await queues.put(oid, "other", [b"z" * (1024 * 1024 + 1)], ttl_s=60, wait_s=0)

    asyncio.run(scenario())


def test_a_waiting_get_is_ended_by_a_put_and_by_deletion(store: Store) -> None:
    registry = ObjectRegistry(store)
    queues = QueueStore(store)
    info = registry.lookup("queue", "q", create_if_missing=True)

    async def scenario() -> None:
        getter = asyncio.ensure_future(queues.get(info.id, "p", 5, wait_s=30))
        await asyncio.sleep(0)
        assert not getter.done()
        await queues.put(info.id, "other", [b"no"], ttl_s=60, wait_s=0)  # another partition
        await asyncio.sleep(0)
        assert not getter.done()
        await queues.put(info.id, "p", [b"a", b"b"], ttl_s=60, wait_s=0)
        assert await asyncio.wait_for(getter, 10) == [b"a", b"b"]

        getter = asyncio.ensure_future(queues.get(info.id, "p", 1, wait_s=30))
        await asyncio.sleep(0)
        registry.delete(info)
        queues.forget(info.id)
        with pytest.raises(exception.NotFoundError, match="deleted"):
            await asyncio.wait_for(getter, 10)

    asyncio.run(scenario())


def test_close_ends_every_wait_with_nothing(store: Store) -> None:
    queues = QueueStore(store)
    oid = ObjectRegistry(store).lookup("queue", "q", create_if_missing=True).id

    async def scenario() -> None:
        getter = asyncio.ensure_future(queues.get(oid, "", 1, wait_s=30))
        await asyncio.sleep(0)
        queues.close()
        assert await asyncio.wait_for(getter, 10) == []

    asyncio.run(scenario())
