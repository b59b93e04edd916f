"""Who may read the dashboard and who may act on it (`cove._dashboard.access`)."""

from __future__ import annotations

from starlette.requests import Request

from cove._dashboard.access import Access

SECRET = b"k" * 32


def _request(client: str, **headers: str) -> Request:
    raw = [(b"host", b"dashboard.localhost:8000"), (b"x-forwarded-for", client.encode())]
    raw += [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""})


def _access() -> Access:
    return Access(lambda token_id, secret: (token_id, secret) == ("tk-1", "s3cret"), SECRET)


def test_loopback_clients_read_others_need_an_api_token() -> None:
    access = _access()
    assert access.can_read(_request("127.0.0.1"))
    assert access.can_read(_request("::1"))
    assert not access.can_read(_request("192.0.2.7"))
    assert access.can_read(_request("192.0.2.7", authorization="Bearer tk-1.s3cret"))
    assert not access.can_read(_request("192.0.2.7", authorization="Bearer tk-1.wrong"))


def test_actions_from_loopback_need_the_csrf_token_and_the_dashboards_own_origin() -> None:
    access = _access()
    token = access.csrf_token
    assert access.can_act(_request("127.0.0.1"), None) == "csrf"
    assert access.can_act(_request("127.0.0.1"), "0" * 64) == "csrf"
    assert access.can_act(_request("127.0.0.1"), token) == "ok"  # a client that sends no Origin
    own = "http://dashboard.localhost:8000"
    assert access.can_act(_request("127.0.0.1", origin=own, sec_fetch_site="same-origin"), token) == "ok"
    evil = _request("127.0.0.1", origin="http://evil--x.localhost:8000", sec_fetch_site="same-site")
    assert access.can_act(evil, token) == "csrf"
    assert access.can_act(_request("127.0.0.1", sec_fetch_site="cross-site"), token) == "csrf"


def test_actions_from_elsewhere_need_an_api_token() -> None:
    access = _access()
    assert access.can_act(_request("192.0.2.7"), access.csrf_token) == "forbidden"
    assert access.can_act(_request("192.0.2.7", authorization="Bearer tk-1.s3cret"), None) == "ok"


def test_csrf_tokens_differ_between_server_processes() -> None:
    assert Access(lambda i, s: False).csrf_token != Access(lambda i, s: False).csrf_token
