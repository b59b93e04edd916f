"""What Dict, Queue and Volume share: a server object found by name (lazily) or made ephemeral, and
methods that run blocking or, at `.aio`, awaited — from one definition each.

An operation is written once, as a generator that yields the `Call`s it needs and receives each
answer back; `run` drives it with the blocking client, `arun` with the async one. So `d.get(k)` and
`await d.get.aio(k)` cannot drift apart, and a long poll (a Queue `get` past the server's 50 s cap)
is just a loop inside the generator.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, Self, TypeVar

from cove._client import control_plane
from cove.exception import InvalidError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
ObjectT = TypeVar("ObjectT", bound="ServerObject")

Plural = Literal["dicts", "queues", "volumes"]
#: Modal's rule for object names (the server checks it too).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Call:
    """One request to the control plane; the answer sent back is its JSON (or bytes with `raw`)."""

    method: str
    path: str
    body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    raw: bool = False
    read_timeout_s: float = _READ_TIMEOUT_S


@dataclass(frozen=True)
class Item(Generic[T]):
    """A value an iterating operation hands to its caller."""

    value: T


Op = Generator[Call, Any, R]
IterOp = Generator["Call | Item[T]", Any, None]


def _send(call: Call) -> Any:
    content, content_type = _content(call)
    reply = control_plane().request(
        call.method,
        call.path,
        params=call.params or None,
        content=content,
        content_type=content_type,
        read_timeout_s=call.read_timeout_s,
    )
    return reply.content if call.raw else reply.json()


async def _asend(call: Call) -> Any:
    content, content_type = _content(call)
    reply = await control_plane().arequest(
        call.method,
        call.path,
        params=call.params or None,
        content=content,
        content_type=content_type,
        read_timeout_s=call.read_timeout_s,
    )
    return reply.content if call.raw else reply.json()


def _content(call: Call) -> tuple[bytes | None, str | None]:
    if call.content is not None:
        return call.content, "application/octet-stream"
    if call.body is not None:
        return json.dumps(call.body).encode(), "application/json"
    return None, None


def run(op: Op[R]) -> R:
    """Drive an operation with blocking requests."""
    try:
        call = next(op)
        while True:
            call = op.send(_send(call))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def arun(op: Op[R]) -> R:
    """Drive an operation with async requests."""
    try:
        call = next(op)
        while True:
            call = op.send(await _asend(call))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def iterate(op: IterOp[T]) -> Iterator[T]:
    """Drive an iterating operation with blocking requests, yielding its items."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Item):
                yield step.value
                step = next(op)
            else:
                step = op.send(_send(step))
    except StopIteration:
        return


async def aiterate(op: IterOp[T]) -> AsyncIterator[T]:
    """Drive an iterating operation with async requests, yielding its items."""
    try:
        step = next(op)
        while True:
            if isinstance(step, Item):
                yield step.value
                step = next(op)
            else:
                step = op.send(await _asend(step))
    except StopIteration:
        return


class Method(Generic[P, R]):
    """A blocking method with its async twin at `.aio` (Modal's `obj.method.aio(...)`)."""

    __slots__ = ("_build",)

    def __init__(self, build: Callable[P, Op[R]]) -> None:
        self._build = build

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return run(self._build(*args, **kwargs))

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await arun(self._build(*args, **kwargs))


class IterMethod(Generic[P, T]):
    """A method returning an iterator; `.aio` returns an async iterator."""

    __slots__ = ("_build",)

    def __init__(self, build: Callable[P, IterOp[T]]) -> None:
        self._build = build

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return iterate(self._build(*args, **kwargs))

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
        return aiterate(self._build(*args, **kwargs))


def check_name(title: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidError(
            f"Invalid {title} name {name!r}: use 1 to 64 letters, digits, '-', '_' or '.', starting with "
            "a letter or digit."
        )
    return name


class ServerObject:
    """A Dict, Queue or Volume on the server: by name (looked up on first use) or by id (ephemeral)."""

    _plural: Plural
    _title: str

    def __init__(
        self, *, name: str | None = None, create_if_missing: bool = False, object_id: str | None = None
    ):
        self._name = name
        self._create_if_missing = create_if_missing
        self._id = object_id

    # -- Modal's constructors, the same for Dict, Queue and Volume (`cls._title` names the kind) ----

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        environment_name: str | None = None,
        create_if_missing: bool = False,
        client: object = None,
    ) -> Self:
        """The object called `name` (looked up on first use; created then if `create_if_missing`)."""
        return cls(name=check_name(cls._title, name), create_if_missing=create_if_missing)

    @classmethod
    def ephemeral(cls, client: object = None, environment_name: str | None = None) -> Ephemeral[Self]:
        """A nameless object for the duration of a `with` (or `async with`) block, deleted after it."""
        return Ephemeral(cls)

    @classmethod
    def delete(
        cls,
        name: str,
        *,
        allow_missing: bool = False,
        environment_name: str | None = None,
        client: object = None,
    ) -> None:
        """Delete the object called `name` and everything in it."""
        check_name(cls._title, name)
        params = {"allow_missing": "1"} if allow_missing else {}
        run(_once(Call("DELETE", f"/v1/{cls._plural}/named/{name}", params=params)))

    @property
    def name(self) -> str | None:
        """The object's name; None for an ephemeral one."""
        return self._name

    @property
    def object_id(self) -> str:
        """The server's id of the object (looks it up by name on first use)."""
        return run(self._resolve())

    def _resolve(self) -> Op[str]:
        if self._id is None:
            body = {"name": self._name, "create_if_missing": self._create_if_missing}
            answer = yield Call("POST", f"/v1/{self._plural}/lookup", body)
            self._id = str(answer["id"])
        return self._id

    def _path(self, object_id: str, op: str) -> str:
        return f"/v1/{self._plural}/{object_id}/{op}"

    def __repr__(self) -> str:
        if self._name is not None:
            return f"cove.{self._title}.from_name({self._name!r})"
        return f"cove.{self._title}(ephemeral {self._id})"


class Ephemeral(Generic[ObjectT]):
    """`with cove.Dict.ephemeral() as d:` (or `async with`): a nameless object deleted on exit."""

    def __init__(self, cls: type[ObjectT]) -> None:
        self._cls = cls
        self._obj: ObjectT | None = None

    def _create(self, answer: Any) -> ObjectT:
        self._obj = self._cls.__new__(self._cls)
        ServerObject.__init__(self._obj, object_id=str(answer["id"]))
        return self._obj

    def _call(self) -> Call:
        return Call("POST", f"/v1/{self._cls._plural}/ephemeral", {})

    def _delete(self) -> Call | None:
        if self._obj is None or self._obj._id is None:
            return None
        return Call("DELETE", f"/v1/{self._cls._plural}/{self._obj._id}")

    def __enter__(self) -> ObjectT:
        return self._create(_send(self._call()))

    def __exit__(self, *exc: object) -> None:
        call = self._delete()
        if call is not None:
            _send(call)

    async def __aenter__(self) -> ObjectT:
        return self._create(await _asend(self._call()))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        call = self._delete()
        if call is not None:
            await _asend(call)


def _once(call: Call) -> Op[None]:
    yield call
    return None


__all__ = [
    "Call",
    "Ephemeral",
    "Item",
    "IterMethod",
    "IterOp",
    "Method",
    "Op",
    "ServerObject",
    "aiterate",
    "arun",
    "check_name",
    "iterate",
    "run",
]
