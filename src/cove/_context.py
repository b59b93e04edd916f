"""Where this process runs and which call it serves: `is_local()` and the current call's ids."""

from __future__ import annotations

import contextvars
from typing import Any

from cove import config

_current_ids: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "cove_current_ids", default=(None, None)
)


def is_local() -> bool:
    """True on the developer's machine; False inside a Cove container (`COVE_IS_REMOTE=1`)."""
    return config.env("COVE_IS_REMOTE") != "1"


def current_function_call_id() -> str | None:
    """The id of the function call being served in this context; None outside a container."""
    return _current_ids.get()[0]


def current_input_id() -> str | None:
    """The id of the input being served in this context; None outside a container."""
    return _current_ids.get()[1]


def _set_current_ids(function_call_id: str | None, input_id: str | None) -> contextvars.Token[Any]:
    """Used by the container runtime around each input; reset with `_current_ids.reset(token)`."""
    return _current_ids.set((function_call_id, input_id))


__all__ = ["current_function_call_id", "current_input_id", "is_local"]
