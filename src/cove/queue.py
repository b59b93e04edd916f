"""`cove.Queue`: a FIFO queue kept by the server, with independent partitions, shared by every process.

```python
q = cove.Queue.from_name("jobs", create_if_missing=True)
q.put({"n": 1})
q.put(2, partition="user-7", partition_ttl=60)
job = q.get(timeout=5)                 # raises queue.Empty after 5 s with nothing
items = await q.get_many.aio(10, block=False)

with cove.Queue.ephemeral() as tmp:
    tmp.put_many([1, 2, 3])
```

Modal's documented limits hold: 5,000 items per partition (a put into a full partition blocks, then
raises `queue.Full`), 1 MiB per pickled item, 100,000 partitions, partition keys of 1 to 64 bytes,
and a partition is cleared `partition_ttl` seconds (default and most 24 h) after its last put.
A blocking `get` waits on the server (a long poll), not by polling. Named Queues live in the server's
database and survive its restart; ephemeral ones do not.
"""

from __future__ import annotations

import base64
import queue as stdlib_queue
import time
from collections.abc import Iterable
from typing import Any

import cloudpickle

from cove._object import (
    Call,
    Item,
    IterMethod,
    IterOp,
    Method,
    Op,
    ServerObject,
)
from cove.exception import InvalidError

#: Longest single wait the server grants (it caps waits at 50 s); longer waits ask again.
_POLL_S = 50.0
#: Read timeout beyond the wait itself, for the server to answer.
_SLACK_S = 30.0
_DEFAULT_TTL_S = 24 * 3600


def _encode(value: Any) -> str:
    try:
        return base64.b64encode(cloudpickle.dumps(value)).decode()
    except Exception as exc:
        raise InvalidError(
            f"A Queue item of type {type(value).__name__} could not be pickled ({type(exc).__name__}: {exc})."
        ) from exc


def _decode(text: str) -> Any:
    return cloudpickle.loads(base64.b64decode(text))


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
    ):
        raise InvalidError(f"timeout must be seconds >= 0 or None, got {timeout!r}.")
    return None if timeout is None else float(timeout)


def _check_partition(partition: str | None) -> None:
    if partition is not None and (not isinstance(partition, str) or not 1 <= len(partition.encode()) <= 64):
        raise InvalidError(
            f"Queue partition key {partition!r} must be a str of 1 to 64 bytes (or None for the default "
            "partition)."
        )


def _waits(block: bool, timeout: float | None) -> Iterable[float]:
    """The wait of each request of one blocking operation: `timeout` split into server-sized polls."""
    if not block:
        yield 0.0
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
        yield min(_POLL_S, left)
        if deadline is not None and time.monotonic() >= deadline:
            return


class Queue(ServerObject):
    """A distributed FIFO queue (Modal's `modal.Queue`). Get one with `from_name` or `ephemeral`."""

    _plural = "queues"
    _title = "Queue"

    # -- operations (see cove._object) --------------------------------------------------------------

    def _put_many(
        self,
        vs: list[Any],
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = _DEFAULT_TTL_S,
    ) -> Op[None]:
        timeout = _check_timeout(timeout)
        _check_partition(partition)
        values = [_encode(v) for v in vs]
        if not values:
            return None
        oid = yield from self._resolve()
        body = {"values": values, "partition": partition, "partition_ttl": partition_ttl}
        for wait in _waits(block, timeout):
            answer = yield Call(
                "POST", self._path(oid, "put"), {**body, "wait": wait}, read_timeout_s=wait + _SLACK_S
            )
            if answer["put"]:
                return None
        raise stdlib_queue.Full(
            f"Queue partition {partition or '(default)'} is full (5,000 items)"
            + (f" and stayed full for {timeout:g} s" if block and timeout is not None else "")
            + ". Consume items, or put into another partition."
        )

    def _put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = _DEFAULT_TTL_S,
    ) -> Op[None]:
        return self._put_many([v], block, timeout, partition=partition, partition_ttl=partition_ttl)

    def _take(self, n: int, block: bool, timeout: float | None, partition: str | None) -> Op[list[Any]]:
        timeout = _check_timeout(timeout)
        _check_partition(partition)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidError(f"n_values must be an integer >= 1, got {n!r}.")
        oid = yield from self._resolve()
        for wait in _waits(block, timeout):
            body = {"n": n, "partition": partition, "wait": wait}
            answer = yield Call("POST", self._path(oid, "get"), body, read_timeout_s=wait + _SLACK_S)
            if answer["values"]:
                return [_decode(v) for v in answer["values"]]
        if block:
            raise stdlib_queue.Empty(
                f"Queue partition {partition or '(default)'} stayed empty for {timeout:g} s "
                "(the timeout= of get)."
            )
        return []

    def _get(
        self, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Op[Any]:
        values = yield from self._take(1, block, timeout, partition)
        return values[0] if values else None

    def _get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Op[list[Any]]:
        return self._take(n_values, block, timeout, partition)

    def _len(self, *, partition: str | None = None, total: bool = False) -> Op[int]:
        _check_partition(partition)
        if partition is not None and total:
            raise InvalidError("Queue.len(): give partition= or total=True, not both.")
        oid = yield from self._resolve()
        params = {"total": "1"} if total else {"partition": partition or ""}
        answer = yield Call("GET", self._path(oid, "len"), params=params)
        return int(answer["len"])

    def _clear(self, *, partition: str | None = None, all: bool = False) -> Op[None]:
        _check_partition(partition)
        if partition is not None and all:
            raise InvalidError("Queue.clear(): give partition= or all=True, not both.")
        oid = yield from self._resolve()
        yield Call("POST", self._path(oid, "clear"), {"partition": partition, "all": all})
        return None

    def _iterate(self, *, partition: str | None = None, item_poll_timeout: float = 0.0) -> IterOp[Any]:
        """The items in order, left in the queue; with `item_poll_timeout`, wait that long for more."""
        _check_partition(partition)
        wait = _check_timeout(item_poll_timeout) or 0.0
        oid = yield from self._resolve()
        after = 0
        while True:
            params = {"partition": partition or "", "after": str(after), "wait": f"{min(wait, _POLL_S):g}"}
            answer = yield Call(
                "GET", self._path(oid, "items"), params=params, read_timeout_s=wait + _SLACK_S
            )
            for value in answer["values"]:
                yield Item(_decode(value))
            if answer["next"] is None:
                return
            after = int(answer["next"])

    # -- Modal's methods, blocking with `.aio` ------------------------------------------------------

    @property
    def put(self) -> Method[..., None]:
        """`q.put(v, block=True, timeout=None, *, partition=None, partition_ttl=86400)`."""
        return Method(self._put)

    @property
    def put_many(self) -> Method[..., None]:
        """`q.put_many(vs, block=True, timeout=None, *, partition=None, partition_ttl=86400)`."""
        return Method(self._put_many)

    @property
    def get(self) -> Method[..., Any]:
        """`q.get(block=True, timeout=None, *, partition=None)`: the next item; `queue.Empty` on timeout,
        None at once if `block=False` and the partition is empty."""
        return Method(self._get)

    @property
    def get_many(self) -> Method[..., list[Any]]:
        """`q.get_many(n_values, block=True, timeout=None, *, partition=None)`: up to n items, waiting
        for at least one when blocking."""
        return Method(self._get_many)

    @property
    def len(self) -> Method[..., int]:
        """`q.len(*, partition=None, total=False)`: items in a partition, or in all with `total=True`."""
        return Method(self._len)

    @property
    def clear(self) -> Method[..., None]:
        """`q.clear(*, partition=None, all=False)`: drop a partition's items, or every partition's."""
        return Method(self._clear)

    @property
    def iterate(self) -> IterMethod[..., Any]:
        """`q.iterate(*, partition=None, item_poll_timeout=0.0)`: read items in place, without taking them."""
        return IterMethod(self._iterate)


__all__ = ["Queue"]
