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


def test_old_modal_names_fail_with_modal_s_replacement() -> None:
    """`modal.Stub`, `modal.Mount` and `modal.gpu.X()` raise Modal's deprecation naming the replacement."""
    import pytest

    from cove.exception import DeprecationError

    with pytest.raises(DeprecationError, match=r"modal\.Stub has been renamed to modal\.App"):
        cove.Stub  # noqa: B018
    with pytest.raises(
        DeprecationError, match=r"modal\.Mount was removed in Modal 1\.0\. Use Image\.add_local_dir"
    ):
        from cove import Mount  # noqa: F401
    with pytest.raises(DeprecationError, match=r"gpu='A100'"):
        cove.gpu.A100()  # type: ignore[attr-defined]


def test_missing_names_explain_what_cove_provides() -> None:
    """A Modal name Cove lacks keeps its message even through `from modal import X`; any other
    name is a plain AttributeError (so hasattr works) that lists Cove's names."""
    import pytest

    from cove.exception import InvalidError

    with pytest.raises(
        InvalidError, match=r"modal\.Sandbox is part of Modal's API that Cove does not provide"
    ):
        from cove import Sandbox  # noqa: F401
    with pytest.raises(AttributeError, match=r"no attribute 'Nope'\. Cove provides: App, Cls,"):
        cove.Nope  # noqa: B018
    assert not hasattr(cove, "__wrapped__")
    assert not hasattr(cove, "nope")
