"""Cove errors on the wire: the control API's JSON error body, written by the server, read by every client.

An error answer is `{"error": <name of a cove.exception class>, "message": <text>}` with an HTTP
status of 400 or more. `error_body` writes it; `decode_error` turns any error answer (that body, or
a foreign one such as a proxy's HTML page) back into the `cove.exception` class it names, so the CLI
(`cove.cli._client`) and the client library (`cove._client`) raise the same exception for the same
answer. Server-side classes that are not in `cove.exception` (e.g. `StorageError`) arrive as
`cove.Error` with their message.
"""

from __future__ import annotations

import json
from typing import Any

from cove import exception

#: How much of a foreign (non-Cove) error body is quoted in the message.
_QUOTED_CHARS = 500


def error_class(name: str, default: type[exception.Error] = exception.Error) -> type[exception.Error]:
    """The `cove.exception` class called `name` (`ImageBuildError` for its alias `BuildError`),
    or `default` when there is none."""
    cls = getattr(exception, name, None) if name in exception.__all__ else None
    if isinstance(cls, type) and issubclass(cls, exception.Error):
        return cls
    return default


def error_body(exc: exception.Error) -> dict[str, str]:
    """The JSON body the control API answers `exc` with."""
    return {"error": type(exc).__name__, "message": str(exc)}


def decode_error(status: int, content: bytes, content_type: str = "application/json") -> exception.Error:
    """The exception an error answer (`status` >= 400) stands for."""
    body: Any = None
    if content_type.split(";")[0].strip() == "application/json":
        try:
            body = json.loads(content)
        except ValueError:
            body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return error_class(str(body.get("error", "")))(body["message"])
    if status == 401:
        return exception.AuthError(
            "The Cove server refused the token (401). Create one with `cove token create` on the server "
            "and set COVE_TOKEN."
        )
    text = content.decode("utf-8", "replace").strip()[:_QUOTED_CHARS]
    return exception.Error(f"The Cove server answered {status}: {text or '(no body)'}")


__all__ = ["decode_error", "error_body", "error_class"]
