"""How the control API and the dashboard answer errors: one `guarded` wrapper, one status per Cove error.

A handler raises; it never builds an error answer itself. `guarded(handler)` turns a `cove.Error`
into the answer (the control API's JSON body of `cove._error_body` by default; the dashboard passes
its own page), a `KeyError`/`ValueError`/`TypeError` from reading a malformed request into an
`InvalidError("malformed request: ...")`, and the foreign errors a route names (`foreign=`) into the
Cove error they mean. Anything else is a bug and stays a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cove import exception
from cove._control.storage import StorageError
from cove._error_body import error_body

S = TypeVar("S")
Handler = Callable[[Request], Awaitable[Response]]
#: A handler that takes its services explicitly; `bind` gives it them.
ServiceHandler = Callable[[S, Request], Awaitable[Response]]
ErrorAnswer = Callable[[Request, exception.Error], Response]
Translate = Callable[[Exception], exception.Error]

#: The status of each error class (the first that matches); any other `cove.Error` is a 400.
STATUS: Mapping[type[exception.Error], int] = MappingProxyType(
    {
        exception.NotFoundError: 404,
        exception.AlreadyExistsError: 409,
        exception.InvalidError: 400,
        exception.AuthError: 401,
        exception.ResourceExhaustedError: 429,
        StorageError: 507,
    }
)
#: What reading a malformed request raises (a missing field, a bad number, a wrong type).
MALFORMED: tuple[type[Exception], ...] = (KeyError, ValueError, TypeError)
_NO_FOREIGN: Mapping[type[Exception], Translate] = MappingProxyType({})


def status_of(exc: exception.Error) -> int:
    """The HTTP status `exc` is answered with."""
    return next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)


def error_response(exc: exception.Error) -> JSONResponse:
    """The control API's answer to `exc`: its JSON error body with its status."""
    return JSONResponse(error_body(exc), status_code=status_of(exc))


def json_answer(request: Request, exc: exception.Error) -> Response:
    """`guarded`'s default answer: `error_response`."""
    return error_response(exc)


def malformed(exc: Exception) -> exception.InvalidError:
    """The error a request that could not be read is answered with."""
    return exception.InvalidError(f"malformed request: {exc!r}")


def guarded(
    handler: Handler,
    answer: ErrorAnswer = json_answer,
    *,
    foreign: Mapping[type[Exception], Translate] = _NO_FOREIGN,
) -> Handler:
    """`handler`, answering the errors it raises (see the module docstring)."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except exception.Error as exc:
            return answer(request, exc)
        except Exception as exc:
            translate = next((t for cls, t in foreign.items() if isinstance(exc, cls)), None)
            if translate is not None:
                return answer(request, translate(exc))
            if isinstance(exc, MALFORMED):
                return answer(request, malformed(exc))
            raise

    return wrapper


def bind(
    handler: ServiceHandler[S],
    services: S,
    answer: ErrorAnswer = json_answer,
    *,
    foreign: Mapping[type[Exception], Translate] = _NO_FOREIGN,
) -> Handler:
    """A module-level `handler(services, request)` as a guarded Starlette endpoint."""
    return guarded(partial(handler, services), answer, foreign=foreign)


__all__ = ["STATUS", "bind", "error_response", "guarded", "malformed", "status_of"]
