"""`cove.Dict`: a persistent key-value store kept by the server, shared by every process and container.

```python
d = cove.Dict.from_name("my-dict", create_if_missing=True)
d["key"] = "value"
assert d["key"] == "value" and "key" in d
await d.put.aio("other", 1)            # every method has an async twin at .aio

with cove.Dict.ephemeral() as tmp:     # nameless; deleted when the block ends
    tmp[1] = 2
```

Keys and values are pickled with cloudpickle, as on Modal; the server compares keys by their pickle,
so use primitive keys (str, int, tuples of them). Named Dicts live in the server's database and
survive restarts; entries do not expire.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
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
    run,
)
from cove.exception import InvalidError

#: Pickle protocol of keys: fixed, so one key pickles to the same bytes in every process.
_KEY_PROTOCOL = 5


def _key(key: Any) -> str:
    try:
        return base64.b64encode(cloudpickle.dumps(key, protocol=_KEY_PROTOCOL)).decode()
    except Exception as exc:
        raise InvalidError(
            f"The Dict key {key!r} could not be pickled ({type(exc).__name__}: {exc})."
        ) from exc


def _value(value: Any) -> str:
    try:
        return base64.b64encode(cloudpickle.dumps(value)).decode()
    except Exception as exc:
        raise InvalidError(
            f"The Dict value of type {type(value).__name__} could not be pickled "
            f"({type(exc).__name__}: {exc})."
        ) from exc


def _load(text: str) -> Any:
    return cloudpickle.loads(base64.b64decode(text))


class Dict(ServerObject):
    """A distributed dictionary (Modal's `modal.Dict`). Get one with `Dict.from_name` or `Dict.ephemeral`."""

    _plural = "dicts"
    _title = "Dict"

    # -- operations: each is a generator of calls (see cove._object) -------------------------------

    def _get(self, key: Any, default: Any = None) -> Op[Any]:
        oid = yield from self._resolve()
        answer = yield Call("POST", self._path(oid, "get"), {"key": _key(key)})
        return _load(answer["value"]) if answer["found"] else default

    def _getitem(self, key: Any) -> Op[Any]:
        oid = yield from self._resolve()
        answer = yield Call("POST", self._path(oid, "get"), {"key": _key(key)})
        if not answer["found"]:
            raise KeyError(key)
        return _load(answer["value"])

    def _contains(self, key: Any) -> Op[bool]:
        oid = yield from self._resolve()
        answer = yield Call("POST", self._path(oid, "contains"), {"key": _key(key)})
        return bool(answer["found"])

    def _put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> Op[bool]:
        oid = yield from self._resolve()
        body = {"key": _key(key), "value": _value(value), "skip_if_exists": bool(skip_if_exists)}
        answer = yield Call("POST", self._path(oid, "put"), body)
        return bool(answer["written"])

    def _update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> Op[None]:
        pairs = dict(other or {})
        pairs.update(kwargs)
        oid = yield from self._resolve()
        items = [[_key(k), _value(v)] for k, v in pairs.items()]
        yield Call("POST", self._path(oid, "update"), {"items": items})
        return None

    def _pop(self, key: Any) -> Op[Any]:
        oid = yield from self._resolve()
        answer = yield Call("POST", self._path(oid, "pop"), {"key": _key(key)})
        if not answer["found"]:
            raise KeyError(key)
        return _load(answer["value"])

    def _delitem(self, key: Any) -> Op[None]:
        yield from self._pop(key)
        return None

    def _len(self) -> Op[int]:
        oid = yield from self._resolve()
        answer = yield Call("GET", self._path(oid, "len"))
        return int(answer["len"])

    def _clear(self) -> Op[None]:
        oid = yield from self._resolve()
        yield Call("POST", self._path(oid, "clear"), {})
        return None

    def _entries(self, which: str) -> IterOp[Any]:
        oid = yield from self._resolve()
        after = 0
        while True:
            answer = yield Call("GET", self._path(oid, "items"), params={"after": str(after)})
            for key, value in answer["items"]:
                if which == "keys":
                    yield Item(_load(key))
                elif which == "values":
                    yield Item(_load(value))
                else:
                    yield Item((_load(key), _load(value)))
            if answer["next"] is None:
                return
            after = int(answer["next"])

    def _keys(self) -> IterOp[Any]:
        return self._entries("keys")

    def _values(self) -> IterOp[Any]:
        return self._entries("values")

    def _items(self) -> IterOp[tuple[Any, Any]]:
        return self._entries("items")

    # -- Modal's methods, blocking with `.aio` ------------------------------------------------------

    @property
    def get(self) -> Method[..., Any]:
        """`d.get(key, default=None)`: the value, or `default` if the key is absent."""
        return Method(self._get)

    @property
    def contains(self) -> Method[[Any], bool]:
        """`d.contains(key)`: True if the key is present (`key in d`)."""
        return Method(self._contains)

    @property
    def put(self) -> Method[..., bool]:
        """`d.put(key, value, *, skip_if_exists=False)`: store a value; False if skipped."""
        return Method(self._put)

    @property
    def update(self) -> Method[..., None]:
        """`d.update(other=None, /, **kwargs)`: store many values in one atomic step."""
        return Method(self._update)

    @property
    def pop(self) -> Method[[Any], Any]:
        """`d.pop(key)`: remove and return a value; KeyError if absent."""
        return Method(self._pop)

    @property
    def len(self) -> Method[[], int]:
        """`d.len()`: the number of entries."""
        return Method(self._len)

    @property
    def clear(self) -> Method[[], None]:
        """`d.clear()`: remove every entry."""
        return Method(self._clear)

    @property
    def keys(self) -> IterMethod[[], Any]:
        """`d.keys()`: an iterator of the keys (`async for k in d.keys.aio()`)."""
        return IterMethod(self._keys)

    @property
    def values(self) -> IterMethod[[], Any]:
        """`d.values()`: an iterator of the values."""
        return IterMethod(self._values)

    @property
    def items(self) -> IterMethod[[], tuple[Any, Any]]:
        """`d.items()`: an iterator of (key, value) pairs."""
        return IterMethod(self._items)

    def __getitem__(self, key: Any) -> Any:
        return run(self._getitem(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        run(self._put(key, value))

    def __delitem__(self, key: Any) -> None:
        run(self._delitem(key))

    def __contains__(self, key: Any) -> bool:
        return run(self._contains(key))

    def __len__(self) -> int:
        return run(self._len())

    def __iter__(self) -> Iterator[Any]:
        return self.keys()


__all__ = ["Dict"]
