"""Calling functions of running apps: lookups, `.remote`, `.remote_gen`, `.spawn`, `.map`, `FunctionCall`.

`cove.Function.from_name(app, name)` and `cove.Cls.from_name(app, name)` wrap a `RemoteTarget` from
here, and so do an app's own functions while it runs (in its containers, `cove run`,
`app.run()`). Every operation has a blocking form and an async twin at `.aio`, as Modal's synchronicity
wrappers do: `f.remote(1)` / `await f.remote.aio(1)`, `call.get()` / `await call.get.aio()`.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar

from cove._client import ControlPlane, Reply, control_plane
from cove._payload import (
    CALL_ID_HEADER,
    CONTENT_TYPE,
    FRAME_DONE,
    FRAME_ITEM,
    FrameReader,
    decode_result,
    encode_input,
)
from cove.exception import ExecutionError, InvalidError

P = ParamSpec("P")
R = TypeVar("R")

#: Longest single wait for a result; a longer `.get()` polls again (the server caps waits at 50 s too).
_POLL_S = 50.0
#: Read timeout beyond the wait itself, for the server to answer.
_SLACK_S = 30.0
#: Class parameters are limited to these types (Modal's rule).
_PARAMETER_TYPES = (str, int, bool, bytes)


class Dual(Generic[P, R]):
    """A blocking callable with its async twin at `.aio`."""

    __slots__ = ("_sync", "aio")

    def __init__(self, sync: Callable[P, R], aio: Callable[P, Awaitable[R]]) -> None:
        self._sync = sync
        self.aio = aio

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._sync(*args, **kwargs)


class GenMethod:
    """`f.remote_gen(...)`: a blocking iterator of a generator's items, with an async one at `.aio`."""

    __slots__ = ("_sync", "aio")

    def __init__(self, sync: Callable[..., Iterator[Any]], aio: Callable[..., AsyncIterator[Any]]) -> None:
        self._sync = sync
        self.aio = aio

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._sync(*args, **kwargs)


@dataclass(frozen=True)
class FunctionInfo:
    """What the server says about a deployed function."""

    app: str
    tag: str
    is_web: bool
    web_url: str | None
    is_generator: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FunctionInfo:
        return cls(
            app=str(body["app"]),
            tag=str(body["tag"]),
            is_web=bool(body["is_web"]),
            web_url=body.get("web_url"),
            is_generator=bool(body.get("is_generator")),
        )


def check_function_name(app_name: object, name: object) -> None:
    """Validate `Function.from_name` arguments eagerly (the lookup itself is lazy)."""
    _check_app_name(app_name, "Function")
    if not isinstance(name, str) or not name:
        raise InvalidError(f"Function.from_name(app_name, name): name must be a non-empty str, got {name!r}.")
    if "." in name:
        cls_name, _, method = name.partition(".")
        raise InvalidError(
            f"Invalid Function name {name!r}: names with '.' are class methods. Look the class up "
            f"instead: cove.Cls.from_name({app_name!r}, {cls_name!r})().{method}.remote(...)."
        )


def check_cls_name(app_name: object, name: object) -> None:
    _check_app_name(app_name, "Cls")
    if not isinstance(name, str) or not name or "." in name:
        raise InvalidError(f"Cls.from_name(app_name, name): name must be a class name, got {name!r}.")


def _check_app_name(app_name: object, what: str) -> None:
    if not isinstance(app_name, str) or not app_name:
        raise InvalidError(
            f"{what}.from_name(app_name, name): app_name must be a non-empty str, got {app_name!r}."
        )


def check_parameters(cls_name: str, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if not isinstance(value, _PARAMETER_TYPES):
            raise InvalidError(
                f"Parameter {cls_name}.{key} must be a str, int, bool or bytes, got {type(value).__name__}."
            )


AppKind = Literal["deployed", "ephemeral"]


class RemoteTarget:
    """One function (or method of a class, with its parameters) of a running app, looked up on first use.

    `kind="deployed"` (what `from_name` reaches) or `"ephemeral"`: the app `cove serve`/`cove run`/
    `app.run()` runs, which its own functions call into.
    """

    def __init__(
        self,
        app_name: str,
        tag: str,
        *,
        params: dict[str, Any] | None = None,
        method: str | None = None,
        kind: AppKind = "deployed",
    ) -> None:
        self.app_name = app_name
        self.tag = tag
        self.params = dict(params or {})
        self.method = method
        self.kind = kind
        self._info: FunctionInfo | None = None

    def _control(self) -> ControlPlane:
        return control_plane()

    # -- lookup --------------------------------------------------------------------------------

    def info(self) -> FunctionInfo:
        if self._info is None:
            reply = self._control().request("GET", self._info_path(), params={"kind": self.kind})
            self._info = FunctionInfo.from_json(reply.json())
        return self._info

    async def ainfo(self) -> FunctionInfo:
        if self._info is None:
            reply = await self._control().arequest("GET", self._info_path(), params={"kind": self.kind})
            self._info = FunctionInfo.from_json(reply.json())
        return self._info

    def _info_path(self) -> str:
        return f"/v1/functions/{self.app_name}/{self.tag}"

    def _callable_info(self, info: FunctionInfo, how: str) -> None:
        if info.is_web:
            raise InvalidError(
                f"A webhook function cannot be invoked for remote execution with .{how}. "
                f"Invoke this function via its web url {info.web_url!r} instead (e.g. with httpx or curl)."
            )
        if info.is_generator and how != "remote_gen":
            raise InvalidError(
                f"A generator function cannot be called with `.{how}(...)`: {self.tag!r} yields its "
                "results. Use `.remote_gen(...)` instead."
            )
        if how == "remote_gen" and not info.is_generator:
            raise InvalidError(
                f"A non-generator function cannot be called with `.remote_gen(...)`: {self.tag!r} "
                "returns its result. Use `.remote(...)` instead."
            )

    # -- calls ---------------------------------------------------------------------------------

    def _post_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], wait_s: float) -> dict[str, Any]:
        return {
            "params": {"app": self.app_name, "function": self.tag, "kind": self.kind, "wait": f"{wait_s:g}"},
            "content": encode_input(args, kwargs, params=self.params, method=self.method),
            "content_type": CONTENT_TYPE,
            "read_timeout_s": wait_s + _SLACK_S,
        }

    def remote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._callable_info(self.info(), "remote")
        control = self._control()
        reply = control.request("POST", "/v1/calls", **self._post_args(args, kwargs, _POLL_S))
        call_id = _call_id(reply)
        data = reply.content if reply.status == 200 else _wait(control, call_id, None)
        return decode_result(data, call_id=call_id)

    async def aremote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._callable_info(await self.ainfo(), "remote")
        control = self._control()
        reply = await control.arequest("POST", "/v1/calls", **self._post_args(args, kwargs, _POLL_S))
        call_id = _call_id(reply)
        data = reply.content if reply.status == 200 else await _await(control, call_id, None)
        return decode_result(data, call_id=call_id)

    def spawn(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FunctionCall[Any]:
        self._callable_info(self.info(), "spawn")
        reply = self._control().request("POST", "/v1/calls", **self._post_args(args, kwargs, 0))
        return FunctionCall(_call_id(reply))

    async def aspawn(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> FunctionCall[Any]:
        self._callable_info(await self.ainfo(), "spawn")
        reply = await self._control().arequest("POST", "/v1/calls", **self._post_args(args, kwargs, 0))
        return FunctionCall(_call_id(reply))

    def _stream_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            "params": {"app": self.app_name, "function": self.tag, "kind": self.kind},
            "content": encode_input(args, kwargs, params=self.params, method=self.method),
            "content_type": CONTENT_TYPE,
        }

    def remote_gen(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        """The items of a generator function, each as soon as the container yields it."""
        self._callable_info(self.info(), "remote_gen")
        label = f"{self.tag}.remote_gen"
        with self._control().stream("POST", "/v1/calls/stream", **self._stream_args(args, kwargs)) as chunks:
            reader = FrameReader()
            for chunk in chunks:
                for kind, data in reader.feed(chunk):
                    if kind == FRAME_ITEM:
                        yield decode_result(data, call_id=label)
                    else:
                        _end_of_stream(kind, data, label)
                        return
        raise _cut_short(label)

    async def aremote_gen(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        self._callable_info(await self.ainfo(), "remote_gen")
        label = f"{self.tag}.remote_gen"
        control = self._control()
        async with control.astream("POST", "/v1/calls/stream", **self._stream_args(args, kwargs)) as chunks:
            reader = FrameReader()
            async for chunk in chunks:
                for kind, data in reader.feed(chunk):
                    if kind == FRAME_ITEM:
                        yield decode_result(data, call_id=label)
                    else:
                        _end_of_stream(kind, data, label)
                        return
        raise _cut_short(label)

    def map(
        self, inputs: Iterable[tuple[Any, ...]], kwargs: dict[str, Any], return_exceptions: bool
    ) -> Iterator[Any]:
        self._callable_info(self.info(), "map")
        calls = [self.spawn(args, kwargs) for args in inputs]
        for call in calls:
            try:
                yield call.get()
            except Exception as exc:
                if not return_exceptions:
                    raise
                yield exc

    async def amap(
        self, inputs: Iterable[tuple[Any, ...]], kwargs: dict[str, Any], return_exceptions: bool
    ) -> AsyncIterator[Any]:
        self._callable_info(await self.ainfo(), "map")
        calls = [await self.aspawn(args, kwargs) for args in inputs]
        for call in calls:
            try:
                yield await call.get.aio()
            except Exception as exc:
                if not return_exceptions:
                    raise
                yield exc

    def web_url(self) -> str | None:
        return self.info().web_url

    def __repr__(self) -> str:
        if self.kind == "ephemeral":
            return f"cove.Function({self.tag!r})"
        return f"cove.Function.from_name({self.app_name!r}, {self.tag!r})"


def _end_of_stream(kind: bytes, data: bytes, label: str) -> None:
    """A generator's last frame: return on its normal end, raise its exception on a failure."""
    if kind == FRAME_DONE:
        return
    decode_result(data, call_id=label)  # raises the remote exception
    raise ExecutionError(f"{label} ended with a malformed error frame.")


def _cut_short(label: str) -> ExecutionError:
    return ExecutionError(
        f"{label}: the stream of results ended before the generator finished (the server or the "
        "container went away). Call it again."
    )


class MapMethod:
    """`f.map(*iterables, kwargs={}, order_outputs=True, return_exceptions=False)`, with `.aio`.

    Every input is spawned first, then results are yielded in input order (`order_outputs=False` is
    accepted and also yields in order).
    """

    def __init__(self, target: RemoteTarget) -> None:
        self._target = target

    def __call__(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        return self._target.map(_zip(iterables), dict(kwargs or {}), return_exceptions)

    def aio(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        return self._target.amap(_zip(iterables), dict(kwargs or {}), return_exceptions)


class StarmapMethod:
    """`f.starmap(input_iterator, kwargs={}, order_outputs=True, return_exceptions=False)`, with `.aio`:
    like `map`, each input a tuple of positional arguments."""

    def __init__(self, target: RemoteTarget) -> None:
        self._target = target

    def __call__(
        self,
        input_iterator: Iterable[Sequence[Any]],
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        return self._target.map(_tuples(input_iterator), dict(kwargs or {}), return_exceptions)

    def aio(
        self,
        input_iterator: Iterable[Sequence[Any]],
        *,
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        return self._target.amap(_tuples(input_iterator), dict(kwargs or {}), return_exceptions)


class ForEachMethod:
    """`f.for_each(*iterables, kwargs={}, ignore_exceptions=False)`: map for the side effects only."""

    def __init__(self, target: RemoteTarget) -> None:
        self._target = target

    def __call__(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        for _ in self._target.map(_zip(iterables), dict(kwargs or {}), ignore_exceptions):
            pass

    async def aio(
        self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None, ignore_exceptions: bool = False
    ) -> None:
        async for _ in self._target.amap(_zip(iterables), dict(kwargs or {}), ignore_exceptions):
            pass


def _tuples(inputs: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    rows = [tuple(row) for row in inputs]
    return rows


def _zip(iterables: tuple[Iterable[Any], ...]) -> list[tuple[Any, ...]]:
    if not iterables:
        raise InvalidError("f.map(...) needs at least one iterable of inputs, e.g. f.map([1, 2, 3]).")
    return list(zip(*iterables, strict=False))


class FunctionCall(Generic[R]):
    """A spawned call: `.get(timeout=None)` waits for its result; `.object_id` names it (`fc-...`).

    `.get()` raises the builtin `TimeoutError` when the call has not finished within `timeout`
    (`timeout=0` polls). Results are kept by the server for 24 hours.
    """

    def __init__(self, call_id: str) -> None:
        self._id = call_id

    @property
    def object_id(self) -> str:
        return self._id

    @staticmethod
    def from_id(function_call_id: str, client: object = None) -> FunctionCall[Any]:
        """The call named `function_call_id` (from `.object_id`, perhaps of another process)."""
        if not isinstance(function_call_id, str) or not function_call_id.startswith("fc-"):
            raise InvalidError(
                f"FunctionCall.from_id needs an id starting with 'fc-' (a FunctionCall's .object_id), "
                f"got {function_call_id!r}."
            )
        return FunctionCall(function_call_id)

    @property
    def get(self) -> _GetMethod[R]:
        """`call.get(timeout=None)` / `await call.get.aio(timeout=None)`."""
        return _GetMethod(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionCall) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"cove.FunctionCall({self._id!r})"


class _GetMethod(Generic[R]):
    """`FunctionCall.get`: blocking, with `.aio` to await."""

    __slots__ = ("_id",)

    def __init__(self, call_id: str) -> None:
        self._id = call_id

    def __call__(self, timeout: float | None = None) -> R:
        data = _wait(control_plane(), self._id, _check_timeout(timeout))
        return decode_result(data, call_id=self._id)  # type: ignore[no-any-return]

    async def aio(self, timeout: float | None = None) -> R:
        data = await _await(control_plane(), self._id, _check_timeout(timeout))
        return decode_result(data, call_id=self._id)  # type: ignore[no-any-return]


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise InvalidError(f"FunctionCall.get(timeout=...) must be seconds >= 0 or None, got {timeout!r}.")
    return None if timeout is None else float(timeout)


def _call_id(reply: Reply) -> str:
    if reply.status == 200:
        return str(reply.headers[CALL_ID_HEADER])
    return str(reply.json()["call_id"])


def _poll_params(deadline: float | None) -> tuple[dict[str, str], float]:
    wait = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
    return {"timeout": f"{wait:.3f}"}, wait + _SLACK_S


def _not_ready(call_id: str, timeout: float) -> builtins.TimeoutError:
    when = "yet" if timeout == 0 else f"within {timeout:g} s"
    return builtins.TimeoutError(
        f"Function call {call_id} has not finished {when}. Call .get() again later, "
        "or .get() without timeout= to wait until it finishes."
    )


def _wait(control: ControlPlane, call_id: str, timeout: float | None) -> bytes:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        params, read_timeout_s = _poll_params(deadline)
        reply = control.request("GET", f"/v1/calls/{call_id}", params=params, read_timeout_s=read_timeout_s)
        if reply.status == 200:
            return reply.content
        if deadline is not None and timeout is not None and time.monotonic() >= deadline:
            raise _not_ready(call_id, timeout)


async def _await(control: ControlPlane, call_id: str, timeout: float | None) -> bytes:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        params, read_timeout_s = _poll_params(deadline)
        reply = await control.arequest(
            "GET", f"/v1/calls/{call_id}", params=params, read_timeout_s=read_timeout_s
        )
        if reply.status == 200:
            return reply.content
        if deadline is not None and timeout is not None and time.monotonic() >= deadline:
            raise _not_ready(call_id, timeout)


__all__ = [
    "AppKind",
    "Dual",
    "ForEachMethod",
    "FunctionCall",
    "FunctionInfo",
    "GenMethod",
    "MapMethod",
    "RemoteTarget",
    "StarmapMethod",
    "check_cls_name",
    "check_function_name",
    "check_parameters",
]
