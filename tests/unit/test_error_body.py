"""Errors on the wire: every `cove.exception` class survives the control API's JSON body, and one
`guarded` wrapper answers what handlers raise."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from cove import exception
from cove._control.api_errors import bind, error_response, guarded, status_of
from cove._control.storage import StorageError
from cove._error_body import decode_error, error_body, error_class

ERROR_CLASSES = sorted(
    {
        cls
        for name in exception.__all__
        if isinstance(cls := getattr(exception, name), type) and issubclass(cls, exception.Error)
    },
    key=lambda cls: cls.__name__,
)


def _answer(response: Response) -> exception.Error:
    """What a client makes of the server's answer."""
    return decode_error(response.status_code, bytes(response.body), response.headers["content-type"])


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_cove_error_class_round_trips_through_the_error_body(cls: type[exception.Error]) -> None:
    sent = cls(f"what happened to {cls.__name__}")
    response = error_response(sent)
    assert response.status_code >= 400
    got = _answer(response)
    assert type(got) is cls
    assert str(got) == str(sent)


def test_statuses_name_the_kind_of_error() -> None:
    assert status_of(exception.NotFoundError("x")) == 404
    assert status_of(exception.AlreadyExistsError("x")) == 409
    assert status_of(exception.AuthError("x")) == 401
    assert status_of(exception.ResourceExhaustedError("x")) == 429
    assert status_of(StorageError("x")) == 507
    assert status_of(exception.ExecutionError("x")) == 400


def test_a_server_side_class_outside_cove_exception_arrives_as_cove_error_with_its_message() -> None:
    got = _answer(error_response(StorageError("the disk is full")))
    assert type(got) is exception.Error
    assert str(got) == "the disk is full"


def test_the_build_error_alias_and_unknown_names_resolve_to_real_classes() -> None:
    assert error_class("BuildError") is exception.ImageBuildError
    assert error_class("Exception") is exception.Error  # a builtin name is not a Cove class
    assert error_class("NoSuchError", exception.ImageBuildError) is exception.ImageBuildError
    assert error_body(exception.InvalidError("bad")) == {"error": "InvalidError", "message": "bad"}


def test_foreign_error_answers_quote_the_status_and_body() -> None:
    got = decode_error(502, b"<html>Bad Gateway</html>", "text/html")
    assert type(got) is exception.Error
    assert str(got) == "The Cove server answered 502: <html>Bad Gateway</html>"
    assert str(decode_error(500, b"", "text/plain")) == "The Cove server answered 500: (no body)"
    not_cove = decode_error(400, json.dumps(["a", "list"]).encode(), "application/json")
    assert str(not_cove).startswith("The Cove server answered 400: ")


def test_a_bare_401_says_how_to_get_a_token() -> None:
    got = decode_error(401, b"Unauthorized", "text/plain")
    assert isinstance(got, exception.AuthError)
    assert "cove token create" in str(got)


def _request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""})


def _run(handler: object) -> Response:
    return asyncio.run(handler(_request()))  # type: ignore[operator]


async def _raises(exc: Exception) -> Response:
    raise exc


def test_guarded_answers_a_cove_error_with_its_json_body_and_status() -> None:
    response = _run(guarded(lambda request: _raises(exception.NotFoundError("App 'x' not found."))))
    assert response.status_code == 404
    assert json.loads(bytes(response.body)) == {"error": "NotFoundError", "message": "App 'x' not found."}


def test_guarded_answers_a_malformed_request_as_invalid() -> None:
    response = _run(guarded(lambda request: _raises(KeyError("spec"))))
    assert response.status_code == 400
    assert json.loads(bytes(response.body)) == {
        "error": "InvalidError",
        "message": "malformed request: KeyError('spec')",
    }


def test_guarded_translates_the_foreign_errors_a_route_names() -> None:
    foreign = {sqlite3.IntegrityError: lambda exc: exception.NotFoundError("deleted meanwhile")}
    response = _run(guarded(lambda request: _raises(sqlite3.IntegrityError("FK")), foreign=foreign))
    assert response.status_code == 404
    assert json.loads(bytes(response.body))["message"] == "deleted meanwhile"


def test_guarded_leaves_bugs_alone() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        _run(guarded(lambda request: _raises(RuntimeError("a bug"))))


def test_guarded_uses_the_answer_it_is_given() -> None:
    def page(request: Request, exc: exception.Error) -> Response:
        return PlainTextResponse(f"page: {exc}", status_code=status_of(exc))

    response = _run(guarded(lambda request: _raises(exception.InvalidError("no")), page))
    assert (response.status_code, bytes(response.body)) == (400, b"page: no")


def test_bind_hands_the_services_to_a_module_level_handler() -> None:
    async def handler(services: dict[str, int], request: Request) -> Response:
        return PlainTextResponse(str(services["n"] + 1))

    assert bytes(_run(bind(handler, {"n": 41})).body) == b"42"
