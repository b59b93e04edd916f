"""The public surface of `cove`: Modal's names, nothing more, and a sorted `__all__`."""

from __future__ import annotations

import importlib
import types

import cove

EXPECTED = [
    "App",
    "Cls",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "Image",
    "Queue",
    "Secret",
    "Server",
    "Volume",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "current_input_id",
    "enter",
    "exception",
    "exit",
    "experimental",
    "fastapi_endpoint",
    "is_local",
    "method",
    "parameter",
    "sessioned",
    "web_endpoint",
    "web_server",
    "wsgi_app",
]


def test_all_is_exact_and_sorted() -> None:
    assert cove.__all__ == EXPECTED
    assert cove.__all__ == sorted(cove.__all__)


def test_every_exported_name_resolves() -> None:
    for name in cove.__all__:
        assert getattr(cove, name) is not None, name


def test_exception_is_the_module_and_error_is_its_root() -> None:
    assert isinstance(cove.exception, types.ModuleType)
    assert cove.Error is cove.exception.Error
    assert issubclass(cove.exception.InvalidError, cove.Error)


def test_functions_is_importable_as_a_module_for_the_old_modal_path() -> None:
    functions = importlib.import_module("cove.functions")
    assert functions.Function is cove.Function
    assert functions.Cls is cove.Cls
    assert functions.FunctionCall is cove.FunctionCall


def test_module_docstring_teaches_the_minimal_example() -> None:
    doc = cove.__doc__ or ""
    for line in ('app = cove.App("shop")', "@app.function()", '@cove.fastapi_endpoint(method="POST")'):
        assert line in doc
