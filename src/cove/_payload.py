"""The pickled messages of one function call: the input a client sends and the result it gets back.

Shared by the three parties of a `.remote()` call, so they cannot drift apart:

    client     encode_input(args, kwargs, params, method)        -> bytes  (POST /v1/calls)
    container  decode_input(bytes) -> CallInput;  encode_value(v) | encode_exception(exc, tb) -> bytes
    server     encode_platform_error("FunctionTimeoutError", message) -> bytes   (never unpickles user data)
    client     decode_result(bytes, call_id=...) -> value, or raises

A generator function (`.remote_gen`) answers a stream of frames instead (`encode_frame`): one per
item it yields, each a result as above, then a done or error frame.

Results are a pickled dict of builtins. A failure carries the exception pickled *again* inside it, so
an exception class the client cannot import still leaves the type name, message and remote traceback
readable (it becomes `cove.exception.RemoteError`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from cove import exception

CONTENT_TYPE = "application/x-cove-pickle"
#: Where a container of a non-web function takes calls (served by `cove._container.invoke`).
CALL_PATH = "/__cove__/call"
#: Headers with which the server names the call and input to the container (it never unpickles inputs).
CALL_ID_HEADER = "x-cove-call-id"
INPUT_ID_HEADER = "x-cove-input-id"
#: Content type of a generator's stream of results: frames, see `encode_frame`.
FRAMES_CONTENT_TYPE = "application/x-cove-frames"
#: Frame kinds: one item the generator yielded, its normal end, or its failure (the last frame).
FRAME_ITEM, FRAME_DONE, FRAME_ERROR = b"i", b"d", b"e"
_FRAME_HEADER = 9  # kind (1 byte) + length (8 bytes, big-endian)


@dataclass(frozen=True)
class CallInput:
    """One input of a function call, as the container receives it."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # class parameters: `Model(**params)`
    method: str | None = None  # the method of a class, None for a function
    call_id: str | None = None


def encode_input(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    params: dict[str, Any] | None = None,
    method: str | None = None,
) -> bytes:
    """Pickle one input with cloudpickle (lambdas and local classes travel by value)."""
    message = {"args": tuple(args), "kwargs": dict(kwargs), "params": dict(params or {}), "method": method}
    try:
        return bytes(cloudpickle.dumps(message))
    except Exception as exc:
        raise exception.InvalidError(
            f"The arguments could not be pickled for the remote call ({type(exc).__name__}: {exc}). "
            "Pass values cloudpickle can serialize (plain data, importable classes)."
        ) from exc


def decode_input(data: bytes, *, call_id: str | None = None) -> CallInput:
    """Unpickle an input (container side); a malformed one raises `InvalidError`."""
    message = pickle.loads(data)
    if not isinstance(message, dict):
        raise exception.InvalidError(f"a call input must be a pickled dict, got {type(message).__name__}")
    args, kwargs, params = message.get("args", ()), message.get("kwargs", {}), message.get("params", {})
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict) or not isinstance(params, dict):
        raise exception.InvalidError("a call input needs a tuple of args and dicts of kwargs and params")
    return CallInput(
        args=tuple(args),
        kwargs=kwargs,
        params=params,
        method=message.get("method"),
        call_id=call_id or message.get("call_id"),
    )


def encode_value(value: Any) -> bytes:
    """The result of a call that returned `value`; a value that cannot be pickled becomes a failure."""
    try:
        return bytes(cloudpickle.dumps({"ok": True, "value": value}))
    except Exception as exc:
        error = exception.ExecutionError(
            f"The function returned a {type(value).__name__} that could not be pickled "
            f"({type(exc).__name__}: {exc}). Return plain data or objects of importable classes."
        )
        return encode_exception(error, traceback_text="")


def encode_exception(exc: BaseException, *, traceback_text: str) -> bytes:
    """The result of a call that raised `exc`, with the remote traceback as text."""
    try:
        pickled: bytes | None = bytes(cloudpickle.dumps(exc))
    except Exception:
        pickled = None  # the type name, message and traceback still reach the client
    return pickle.dumps(
        {
            "ok": False,
            "exc": pickled,
            "type": type(exc).__qualname__,
            "message": str(exc),
            "traceback": traceback_text,
        }
    )


def encode_platform_error(error: str, message: str) -> bytes:
    """A failure raised by Cove itself (timeout, container exit), re-raised as `cove.exception.<error>`."""
    if not _is_cove_error(error):
        raise ValueError(f"{error!r} is not a class of cove.exception")
    return pickle.dumps(
        {"ok": False, "exc": None, "type": error, "message": message, "traceback": "", "platform": True}
    )


def _is_cove_error(name: str) -> bool:
    cls = getattr(exception, name, None)
    return isinstance(cls, type) and issubclass(cls, exception.Error)


def encode_frame(kind: bytes, data: bytes = b"") -> bytes:
    """One frame of a generator's stream: `kind` (FRAME_ITEM/DONE/ERROR), length, then a result's bytes.

    The server relays frames without unpickling them: the kind byte tells it whether the stream
    ended properly (a stream cut short gets an error frame of the server's own).
    """
    return kind + len(data).to_bytes(8, "big") + data


class FrameReader:
    """Splits a byte stream into frames: `feed(chunk)` returns the (kind, data) completed by `chunk`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += chunk
        frames: list[tuple[bytes, bytes]] = []
        while len(self._buffer) >= _FRAME_HEADER:
            size = int.from_bytes(self._buffer[1:_FRAME_HEADER], "big")
            if len(self._buffer) < _FRAME_HEADER + size:
                break
            kind = bytes(self._buffer[:1])
            frames.append((kind, bytes(self._buffer[_FRAME_HEADER : _FRAME_HEADER + size])))
            del self._buffer[: _FRAME_HEADER + size]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame."""
        return len(self._buffer)


def decode_result(data: bytes, *, call_id: str) -> Any:
    """The value of a finished call, or raise its exception here.

    A remote exception is re-raised as its own type when it unpickles (else `RemoteError`), with the
    remote traceback attached as a note, so it prints under the local traceback as Modal shows it.
    """
    try:
        result = pickle.loads(data)
    except Exception as exc:
        raise exception.ExecutionError(
            f"The result of {call_id} could not be unpickled here ({type(exc).__name__}: {exc}). "
            "Return values whose classes are importable in this process too (e.g. plain data)."
        ) from exc
    if not isinstance(result, dict) or "ok" not in result:
        raise exception.ExecutionError(f"The result of {call_id} is malformed: {type(result).__name__}")
    if result["ok"]:
        return result.get("value")
    raise remote_exception(result, call_id=call_id)


def remote_exception(result: dict[str, Any], *, call_id: str) -> BaseException:
    """The exception to raise for a failed result (see `decode_result`)."""
    type_name = str(result.get("type") or "Exception")
    message = str(result.get("message") or "")
    traceback_text = str(result.get("traceback") or "")
    if result.get("platform") and _is_cove_error(type_name):
        error_cls: type[exception.Error] = getattr(exception, type_name)
        return error_cls(message)
    exc: BaseException | None = None
    if result.get("exc") is not None:
        try:
            loaded = pickle.loads(result["exc"])
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        text = f"{type_name}: {message}" if message else type_name
        if traceback_text:
            text += f"\n\nRemote traceback ({call_id}):\n{traceback_text.rstrip()}"
        return exception.RemoteError(text)
    if traceback_text:
        exc.add_note(f"\nRemote traceback ({call_id}):\n{traceback_text.rstrip()}")
    return exc


__all__ = [
    "CALL_ID_HEADER",
    "CALL_PATH",
    "CONTENT_TYPE",
    "FRAMES_CONTENT_TYPE",
    "FRAME_DONE",
    "FRAME_ERROR",
    "FRAME_ITEM",
    "INPUT_ID_HEADER",
    "CallInput",
    "FrameReader",
    "decode_input",
    "decode_result",
    "encode_exception",
    "encode_frame",
    "encode_input",
    "encode_platform_error",
    "encode_value",
    "remote_exception",
]
