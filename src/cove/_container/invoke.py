"""The container's call handler: an ASGI app that runs pickled `.remote()` inputs and answers pickled results.

The server POSTs each input of a non-web function to `/__cove__/call` on the container's unix socket:

    POST /__cove__/call   content-type: application/x-cove-pickle
                          x-cove-call-id: fc-...   x-cove-input-id: in-...
    body  cloudpickle({"args": (...), "kwargs": {...}, "params": {...}, "method": "name" | None})
    200   cloudpickle({"ok": True, "value": ...})
          | {"ok": False, "exc": <pickled exception | None>, "type", "message", "traceback"}

A generator function answers a stream of frames instead, one per item as it is yielded, then a done
(or error) frame (see `cove._payload.encode_frame`).

Sync functions run in a worker thread, async ones on the event loop; `cove.current_function_call_id()`
and `cove.current_input_id()` name the input while it runs. A class method called with parameters
(`Model(size=3).predict.remote()`) runs on an instance made once per distinct parameter set, with its
`@enter` hooks run first and its `@exit` hooks at shutdown; without parameters it runs on the instance
the entrypoint made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import os
import threading
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from cove._payload import (
    CALL_ID_HEADER,
    CALL_PATH,
    CONTENT_TYPE,
    FRAME_DONE,
    FRAME_ERROR,
    FRAME_ITEM,
    FRAMES_CONTENT_TYPE,
    INPUT_ID_HEADER,
    CallInput,
    decode_input,
    encode_exception,
    encode_frame,
    encode_value,
)
from cove._spec import FunctionSpec
from cove.exception import InvalidError
from cove.functions import UserCode, _current_ids, _set_current_ids, load_user_code

#: How long the @exit hooks of all parameterized instances may take at shutdown.
_EXIT_TIMEOUT_S = 30.0

#: Frames of these files are Cove's or the event loop's, not the user's: left out of remote tracebacks.
_INTERNAL_PREFIXES = (
    os.path.dirname(asyncio.__file__) + os.sep,
    os.path.dirname(concurrent.futures.__file__) + os.sep,
    threading.__file__,
    __file__,
)


def call_app(user: UserCode, spec: FunctionSpec, module: ModuleType) -> ASGIApp:
    """The ASGI app serving `spec`'s calls; `user` is what `load_user_code(module, spec)` returned."""
    return _CallHandler(user, spec, module)


def remote_traceback(exc: BaseException) -> str:
    """The traceback of `exc` as text, starting at the user's first frame (chained causes included)."""
    report = traceback.TracebackException.from_exception(exc)
    stack = list(report.stack)
    while len(stack) > 1 and stack[0].filename.startswith(_INTERNAL_PREFIXES):
        stack.pop(0)
    report.stack = traceback.StackSummary.from_list(stack)
    return "".join(report.format())


class _CallHandler:
    """Runs one function's inputs; owns the per-parameter instances of a class and their exit hooks."""

    def __init__(self, user: UserCode, spec: FunctionSpec, module: ModuleType) -> None:
        self._user = user
        self._spec = spec
        self._module = module
        self._instances: dict[tuple[tuple[str, Any], ...], UserCode] = {}
        self._locks: dict[tuple[tuple[str, Any], ...], asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # nothing else is spoken here; the server closes what it does not accept
        if scope["path"] != CALL_PATH or scope["method"] != "POST":
            await _respond(send, 404, b"cove: this container serves POST /__cove__/call only\n", "text/plain")
            return
        body = await _read_body(receive)
        if body is None:
            return  # the server went away (its call timed out or it stopped)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        call_id, input_id = headers.get(CALL_ID_HEADER), headers.get(INPUT_ID_HEADER)
        if self._spec.is_generator:
            await self.stream(body, call_id, input_id, receive, send)
            return
        result = await self.run(body, call_id, input_id)
        await _respond(send, 200, result, CONTENT_TYPE)

    async def stream(
        self, body: bytes, call_id: str | None, input_id: str | None, receive: Receive, send: Send
    ) -> None:
        """Run one input of a generator function, sending a frame per item as it is yielded.

        When the caller goes away (it stopped iterating, or the server cut the call), the generator
        is closed at its next `yield` instead of running on for nobody.
        """
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", FRAMES_CONTENT_TYPE.encode())],
            }
        )
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_wait_disconnect(receive, gone))

        async def frame(kind: bytes, data: bytes = b"") -> None:
            if gone.is_set():
                return
            try:
                message = {"type": "http.response.body", "body": encode_frame(kind, data), "more_body": True}
                await send(message)
            except OSError:  # the caller went away while we sent
                gone.set()

        token = None
        produced: Any = None
        try:
            call_input = decode_input(body, call_id=call_id)
            function = await self._callable(call_input)
            token = _set_current_ids(call_input.call_id, input_id)
            produced = function(*call_input.args, **call_input.kwargs)
            if inspect.isasyncgen(produced):
                async for item in produced:
                    if gone.is_set():
                        break
                    await frame(FRAME_ITEM, encode_value(item))
            elif inspect.isgenerator(produced):
                done = object()
                while not gone.is_set():
                    item = await asyncio.to_thread(next, produced, done)
                    if item is done:
                        break
                    await frame(FRAME_ITEM, encode_value(item))
            else:
                raise InvalidError(
                    f"{self._spec.tag!r} was declared a generator but returned a {type(produced).__name__}; "
                    "use `yield` in it, or declare it with is_generator=False."
                )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await frame(FRAME_ERROR, encode_exception(exc, traceback_text=remote_traceback(exc)))
        else:
            await frame(FRAME_DONE)
        finally:
            watcher.cancel()
            if token is not None:
                _current_ids.reset(token)
            if gone.is_set():
                await _close_generator(produced)
        if not gone.is_set():
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def run(self, body: bytes, call_id: str | None, input_id: str | None) -> bytes:
        """Run one pickled input; return the pickled result (user exceptions included)."""
        try:
            call_input = decode_input(body, call_id=call_id)
            function = await self._callable(call_input)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return encode_exception(exc, traceback_text=remote_traceback(exc))
        token = _set_current_ids(call_input.call_id, input_id)
        try:
            if inspect.iscoroutinefunction(function):
                value = await function(*call_input.args, **call_input.kwargs)
            else:
                # asyncio.to_thread copies this context, so the thread sees the ids set above.
                value = await asyncio.to_thread(function, *call_input.args, **call_input.kwargs)
                if inspect.isawaitable(value):
                    value = await value
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return encode_exception(exc, traceback_text=remote_traceback(exc))
        finally:
            _current_ids.reset(token)
        return encode_value(value)

    async def _callable(self, call_input: CallInput) -> Callable[..., Any]:
        spec = self._spec
        if call_input.method is not None and call_input.method != spec.method_name:
            raise InvalidError(
                f"This container serves {spec.tag!r}, not method {call_input.method!r}; "
                "the call reached the wrong function."
            )
        if spec.method_name is None:
            if call_input.params:
                raise InvalidError(f"{spec.tag!r} is a function, not a class method: it takes no parameters.")
            return self._user.call
        if not call_input.params:
            return self._user.call
        try:
            key = tuple(sorted(call_input.params.items()))
            hash(key)
        except TypeError:
            raise InvalidError(
                f"Parameters of {spec.module_attr} must be str, int, bool or bytes, got "
                f"{ {k: type(v).__name__ for k, v in call_input.params.items()} }."
            ) from None
        user = self._instances.get(key)
        if user is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                user = self._instances.get(key)
                if user is None:
                    user = load_user_code(self._module, spec, call_input.params)
                    await _run_hooks([*user.enter_snap, *user.enter])
                    self._instances[key] = user
        return user.call

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._exit_instances()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _exit_instances(self) -> None:
        instances, self._instances = list(self._instances.values()), {}
        hooks = [hook for user in instances for hook in user.exit]
        try:
            await asyncio.wait_for(_run_hooks(hooks), timeout=_EXIT_TIMEOUT_S)
        except Exception:
            traceback.print_exc()


async def _run_hooks(hooks: list[Callable[[], Any]]) -> None:
    """Run lifecycle hooks in order: async ones on the loop, sync ones in a thread."""
    for hook in hooks:
        if inspect.iscoroutinefunction(hook):
            await hook()
            continue
        result = await asyncio.to_thread(hook)
        if inspect.isawaitable(result):
            await result


async def _wait_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _close_generator(produced: Any) -> None:
    """Close a generator its caller abandoned (runs its `finally` blocks)."""
    try:
        if inspect.isasyncgen(produced):
            await produced.aclose()
        elif inspect.isgenerator(produced):
            await asyncio.to_thread(produced.close)
    except Exception:
        traceback.print_exc()


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["call_app", "remote_traceback"]
