"""The pure parts of `.remote()`: input and result encoding, re-raising remote errors, the container's call
handler run in-process, result bookkeeping on the server, and the client's eager checks (no server)."""

from __future__ import annotations

import asyncio
import pickle
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

import cove
from cove import _payload
from cove._client import ControlPlane
from cove._container.invoke import call_app, remote_traceback
from cove._control.calls import CallRegistry
from cove._gateway.upstream import UpstreamError
from cove._spec import FunctionSpec
from cove.exception import (
    ConnectionError,
    ExecutionError,
    FunctionTimeoutError,
    InvalidError,
    NotFoundError,
    OutputExpiredError,
    RemoteError,
)
from cove.functions import UserCode, current_function_call_id, current_input_id


def _failure(exc: BaseException) -> bytes:
    try:
        raise exc
    except BaseException as raised:
        return _payload.encode_exception(raised, traceback_text=remote_traceback(raised))


# -- encoding -----------------------------------------------------------------------------------


def test_an_input_round_trips_with_lambdas_travelling_by_value() -> None:
    data = _payload.encode_input((1, lambda x: x + 1), {"k": [1, 2]}, params={"size": 3}, method="predict")
    decoded = _payload.decode_input(data, call_id="fc-1")
    assert decoded.args[0] == 1 and decoded.args[1](1) == 2
    assert decoded.kwargs == {"k": [1, 2]}
    assert decoded.params == {"size": 3}
    assert (decoded.method, decoded.call_id) == ("predict", "fc-1")


def test_arguments_that_cannot_be_pickled_raise_invalid_error_naming_the_fix() -> None:
    with pytest.raises(InvalidError, match=r"could not be pickled.*cloudpickle"):
        _payload.encode_input((threading.Lock(),), {})


def test_a_value_round_trips() -> None:
    assert _payload.decode_result(_payload.encode_value({"a": (1, 2)}), call_id="fc-1") == {"a": (1, 2)}


def test_a_return_value_that_cannot_be_pickled_becomes_a_failure_that_says_so() -> None:
    data = _payload.encode_value(threading.Lock())
    with pytest.raises(ExecutionError, match=r"returned a lock that could not be pickled.*Return plain data"):
        _payload.decode_result(data, call_id="fc-1")


def test_a_result_that_does_not_unpickle_here_raises_execution_error() -> None:
    with pytest.raises(ExecutionError, match="could not be unpickled"):
        _payload.decode_result(b"not a pickle", call_id="fc-1")


# -- re-raising -----------------------------------------------------------------------------------


def test_a_remote_exception_reraises_as_its_own_type_with_the_remote_traceback_as_a_note() -> None:
    data = _failure(ValueError("bad input"))
    with pytest.raises(ValueError) as info:
        _payload.decode_result(data, call_id="fc-42")
    assert str(info.value) == "bad input"
    printed = "".join(traceback.format_exception(info.value))
    assert "Remote traceback (fc-42):" in printed
    assert "raise exc" in printed  # the remote frame's source line
    assert "ValueError: bad input" in printed


def test_an_exception_that_does_not_unpickle_becomes_remote_error_with_type_message_and_traceback() -> None:
    result = pickle.loads(_failure(KeyError("k")))
    result["exc"] = b"garbage"
    with pytest.raises(RemoteError) as info:
        _payload.decode_result(pickle.dumps(result), call_id="fc-7")
    message = str(info.value)
    assert message.startswith("KeyError: 'k'")
    assert "Remote traceback (fc-7):" in message and "raise exc" in message


def test_platform_errors_reraise_as_the_named_cove_exception() -> None:
    data = _payload.encode_platform_error("FunctionTimeoutError", "f timed out after 1 s")
    with pytest.raises(FunctionTimeoutError, match="timed out after 1 s"):
        _payload.decode_result(data, call_id="fc-1")


def test_platform_errors_must_name_a_cove_exception() -> None:
    with pytest.raises(ValueError, match=r"not a class of cove.exception"):
        _payload.encode_platform_error("ValueError", "nope")


# -- the container's call handler, in-process --------------------------------------------------------


def _handler(call: Any, spec: FunctionSpec | None = None) -> Any:
    import types

    return call_app(
        UserCode(call=call), spec or FunctionSpec(tag="f", module_attr="f"), types.ModuleType("m")
    )


def _run(handler: Any, args: tuple[Any, ...], **input_kwargs: Any) -> Any:
    body = _payload.encode_input(args, {}, **input_kwargs)
    data = asyncio.run(handler.run(body, "fc-abc", "in-def"))
    return _payload.decode_result(data, call_id="fc-abc")


def test_sync_functions_run_in_a_worker_thread_and_see_their_call_ids() -> None:
    def f(x: int) -> tuple[int, str, str | None, str | None]:
        return x * 2, threading.current_thread().name, current_function_call_id(), current_input_id()

    value, thread, call_id, input_id = _run(_handler(f), (21,))
    assert value == 42
    assert thread != threading.main_thread().name
    assert (call_id, input_id) == ("fc-abc", "in-def")


def test_async_functions_run_on_the_event_loop_and_see_their_call_ids() -> None:
    async def f(x: int) -> tuple[int, str, str | None]:
        return x + 1, threading.current_thread().name, current_function_call_id()

    assert _run(_handler(f), (1,)) == (2, threading.main_thread().name, "fc-abc")
    assert current_function_call_id() is None  # reset after the call


def test_the_remote_traceback_starts_at_the_users_frame() -> None:
    def user_function() -> None:
        raise RuntimeError("inside")

    handler = _handler(user_function)
    data = asyncio.run(handler.run(_payload.encode_input((), {}), "fc-1", "in-1"))
    text = pickle.loads(data)["traceback"]
    assert text.splitlines()[1].strip().endswith("in user_function")
    assert "asyncio" not in text and "invoke.py" not in text


def test_a_function_refuses_class_parameters() -> None:
    with pytest.raises(InvalidError, match="is a function, not a class method"):
        _run(_handler(lambda: 1), (), params={"size": 1})


def test_a_call_for_another_method_is_refused() -> None:
    spec = FunctionSpec(tag="Model.a", module_attr="Model", method_name="a")
    with pytest.raises(InvalidError, match=r"serves 'Model.a', not method 'b'"):
        _run(_handler(lambda: 1, spec), (), method="b")


# -- result bookkeeping on the server -----------------------------------------------------------------


class _RefusingPool:
    """A pool whose every acquire fails at once, so calls finish immediately."""

    spec = FunctionSpec(tag="f", module_attr="f")

    async def acquire(self) -> Any:
        raise UpstreamError(
            503, "cove: f failed to start: ImportError: no module x (details: cove app logs)\n"
        )


class _Registry:
    def function_pool(self, app_name: str, tag: str, kind: str = "deployed") -> tuple[Any, Any]:
        if tag != "f":
            raise NotFoundError(f"no {tag}")
        return object(), _RefusingPool()


def test_results_beyond_the_limit_expire_oldest_first_and_unknown_ids_are_not_found() -> None:
    async def scenario() -> None:
        calls = CallRegistry(_Registry(), max_calls=2)  # type: ignore[arg-type]
        first = calls.spawn("app", "f", b"")
        data = await calls.result(first, timeout_s=30)
        assert data is not None
        with pytest.raises(ExecutionError, match=r"could not run .*ImportError: no module x"):
            _payload.decode_result(data, call_id=first)
        second = calls.spawn("app", "f", b"")
        await calls.result(second, timeout_s=30)
        calls.spawn("app", "f", b"")  # the third pushes the first out
        with pytest.raises(OutputExpiredError, match="expired"):
            await calls.result(first, timeout_s=0)
        assert await calls.result(second, timeout_s=0) is not None
        with pytest.raises(NotFoundError, match="not found"):
            await calls.result("fc-unknown", timeout_s=0)
        await calls.close()
        with pytest.raises(InvalidError, match="shutting down"):
            calls.spawn("app", "f", b"")

    asyncio.run(scenario())


# -- the client's eager checks ------------------------------------------------------------------------


def test_from_name_with_a_dot_raises_invalid_error_pointing_to_cls() -> None:
    with pytest.raises(InvalidError, match=r"cove.Cls.from_name\('shop', 'Model'\)\(\).predict.remote"):
        cove.Function.from_name("shop", "Model.predict")


def test_from_name_is_lazy_and_a_missing_server_names_how_to_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVE_HOME", str(tmp_path))
    monkeypatch.delenv("COVE_SERVER_URL", raising=False)
    monkeypatch.setattr("cove._client._default", None)
    f = cove.Function.from_name("shop", "square")  # no I/O yet
    assert repr(f) == "cove.Function.from_name('shop', 'square')"
    with pytest.raises(ConnectionError, match="Start it with `cove server`"):
        f.remote(2)
    monkeypatch.setattr("cove._client._default", None)


def test_class_parameters_must_be_str_int_bool_or_bytes() -> None:
    model = cove.Cls.from_name("shop", "Model")
    with pytest.raises(InvalidError, match=r"Model.size must be a str, int, bool or bytes, got list"):
        model(size=[1])


def test_function_call_from_id_needs_an_fc_id() -> None:
    assert cove.FunctionCall.from_id("fc-123").object_id == "fc-123"
    with pytest.raises(InvalidError, match="starting with 'fc-'"):
        cove.FunctionCall.from_id("ta-123")


def test_a_server_url_sends_the_token_as_a_bearer_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVE_SERVER_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("COVE_TOKEN", "tk-1.secret")
    control = ControlPlane.from_env()
    assert control.url == "http://127.0.0.1:9"
    assert control._client_kwargs()["headers"] == {"Authorization": "Bearer tk-1.secret"}
    with pytest.raises(ConnectionError, match="Check COVE_SERVER_URL"):
        control.request("GET", "/v1/health")
    control.close()
