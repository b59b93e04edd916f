"""Admission without sockets: what the gateway forwards, refuses (and how), or treats as a poll.

`admit` and the connection-level refusals are pure functions of the request head, the routing
table and the `Policy`; the token bucket and the proxy-token verifier get injected clocks and
answers. The wire is covered by tests/integration/test_gateway_admission.py.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest

from cove._gateway import Lease, Limits, Route, UpstreamError
from cove._gateway.admission import (
    RATE_LIMITED,
    Poll,
    Refusal,
    admit,
    body_stalled,
    head_timed_out,
    malformed,
    origin_form,
    refuse_connection,
    refuse_head,
    refuse_target,
    refuse_version,
)
from cove._gateway.auth import CHALLENGE, UNAUTHORIZED, ProxyAuth
from cove._gateway.messages import RequestHead, scan_request_headers
from cove._gateway.policy import Policy
from cove._gateway.ratelimit import TokenBucket
from cove._gateway.routing import RouteTable

HOST = "alice--shop-square.localhost"
SECURE = "alice--shop-secret.localhost"
STOPPED = "alice--blog-index.localhost"
TOKEN = ("wk-0123456789abcdef", "ws-correct-horse")


class _NoUpstream:
    async def acquire(self) -> Lease:
        raise UpstreamError(503, "cove: never used")


SHOP = Route("shop", "square", _NoUpstream())
ROUTES = RouteTable(
    {
        HOST: SHOP,
        SECURE: Route("shop", "secret", _NoUpstream(), requires_proxy_auth=True),
        STOPPED: Route("blog", "index", None),
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def head(*headers: tuple[str, str], host: str | None = HOST) -> RequestHead:
    found = [(b"Host", host.encode())] if host is not None else []
    return scan_request_headers(found + [(name.encode(), value.encode()) for name, value in headers])


def decide(
    request_head: RequestHead,
    policy: Policy | None = None,
    *,
    method: bytes = b"GET",
    target: bytes = b"/",
    http_10: bool = False,
    upgrade: bool = False,
    received: int = 0,
) -> Route | Poll | Refusal:
    return admit(
        request_head,
        ROUTES,
        policy or Policy(limits=Limits()),
        method=method,
        target=target,
        http_10=http_10,
        upgrade=upgrade,
        received=received,
    )


def refused(found: Route | Poll | Refusal) -> Refusal:
    assert isinstance(found, Refusal), found
    assert found.message.startswith("cove: ")
    return found


# -- forwarded


def test_a_plain_request_to_a_known_host_is_routed() -> None:
    assert decide(head()) is SHOP


@pytest.mark.parametrize("host", [HOST.upper(), HOST + ":8000", HOST + "."])
def test_the_host_is_matched_however_it_is_spelt(host: str) -> None:
    assert decide(head(host=host)) is SHOP


def test_a_declared_body_within_the_limit_is_routed() -> None:
    policy = Policy(limits=Limits(max_body_bytes=10))
    assert decide(head(("Content-Length", "10")), policy, method=b"POST") is SHOP


def test_a_chunked_http_11_request_is_routed() -> None:
    assert decide(head(("Transfer-Encoding", "chunked")), method=b"POST") is SHOP


def test_expect_100_continue_is_routed() -> None:
    assert decide(head(("Expect", "100-continue")), method=b"POST") is SHOP


def test_a_websocket_upgrade_is_routed() -> None:
    found = decide(head(("Upgrade", "websocket"), ("Connection", "Upgrade")), upgrade=True)
    assert found is SHOP


# -- 404 and 400 from routing


def test_an_unknown_host_is_404_naming_it() -> None:
    found = refused(decide(head(host="nobody.localhost")))
    assert (found.status, found.message, found.close) == (404, "cove: no endpoint at nobody.localhost", False)


def test_a_stopped_app_is_404_naming_the_app() -> None:
    found = refused(decide(head(host=STOPPED)))
    assert (found.status, found.message) == (404, "cove: app blog is stopped")


def test_a_request_without_host_is_400() -> None:
    assert refused(decide(head(host=None))).status == 400


def test_two_host_headers_are_400_and_close() -> None:
    found = refused(decide(head(("Host", "other.localhost"))))
    assert (found.status, found.close) == (400, True)
    assert "more than one Host" in found.message


# -- what the gateway cannot proxy


def test_connect_is_501_and_closes() -> None:
    found = refused(decide(head(), method=b"CONNECT", target=b"example.com:443", upgrade=True))
    assert (found.status, found.close) == (501, True)
    assert "CONNECT is not supported" in found.message


def test_transfer_encoding_in_http_10_is_400_and_closes() -> None:
    found = refused(decide(head(("Transfer-Encoding", "chunked")), method=b"POST", http_10=True))
    assert (found.status, found.close) == (400, True)
    assert "HTTP/1.0" in found.message


def test_a_transfer_encoding_other_than_chunked_is_501_naming_it() -> None:
    found = refused(decide(head(("Transfer-Encoding", "gzip, chunked")), method=b"POST"))
    assert found.status == 501
    assert "gzip, chunked" in found.message


def test_an_unknown_expectation_is_417_naming_it() -> None:
    found = refused(decide(head(("Expect", "teapot")), method=b"POST"))
    assert (found.status, found.message) == (417, "cove: expectation teapot not supported")


def test_the_framing_is_checked_before_the_route() -> None:
    found = refused(decide(head(("Expect", "teapot"), host="nobody.localhost")))
    assert found.status == 417


# -- request targets


def test_an_absolute_url_naming_the_host_is_routed() -> None:
    assert decide(head(), target=f"http://{HOST}:8000/x?y=1".encode()) is SHOP


def test_an_absolute_url_naming_another_host_is_400_and_closes() -> None:
    found = refused(decide(head(), target=b"http://elsewhere.localhost/x"))
    assert (found.status, found.close) == (400, True)


@pytest.mark.parametrize("target", [b"x", b"ftp://" + HOST.encode() + b"/", b"*", b"http:///x"])
def test_a_target_that_is_neither_a_path_nor_a_url_naming_the_host_is_400(target: bytes) -> None:
    assert refused(decide(head(), target=target)).status == 400


def test_options_star_is_routed() -> None:
    assert decide(head(), method=b"OPTIONS", target=b"*") is SHOP


@pytest.mark.parametrize(
    ("target", "origin"),
    [
        (b"http://h.localhost/a?b=1", b"/a?b=1"),
        (b"HTTP://H.localhost:80?q", b"/?q"),
        (b"wss://h.localhost", b"/"),
        (b"*", b"*"),
    ],
)
def test_origin_form_forwards_the_path_of_an_absolute_url(target: bytes, origin: bytes) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    assert origin_form(method, target, b"h.localhost") == origin


def test_origin_form_refuses_a_url_without_a_host_header() -> None:
    assert origin_form(b"GET", b"http://h.localhost/", None) is None
    assert origin_form(b"GET", b"*", b"h.localhost") is None  # `*` is for OPTIONS only


# -- polls for long requests


def test_a_get_naming_a_call_id_is_a_poll_whatever_its_host() -> None:
    target = b"/run?x=1&__cove_function_call_id=fc-ab12"
    assert decide(head(host="nobody.localhost"), target=target) == Poll("fc-ab12")


def test_a_poll_by_another_method_is_400() -> None:
    found = refused(decide(head(), method=b"POST", target=b"/?__cove_function_call_id=fc-1"))
    assert (found.status, found.message, found.close) == (400, "cove: bad redirect method", False)


def test_a_poll_through_an_absolute_url_is_a_poll() -> None:
    target = f"http://{HOST}/?__cove_function_call_id=fc-9".encode()
    assert decide(head(), target=target) == Poll("fc-9")


def test_the_call_parameter_without_a_value_in_the_query_is_routed() -> None:
    assert decide(head(), target=b"/__cove_function_call_id") is SHOP


# -- proxy auth (401)


def _auth(verdict: bool = True) -> tuple[Policy, list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []

    def verify(token_id: str, secret: str) -> bool:
        asked.append((token_id, secret))
        return verdict and (token_id, secret) == TOKEN

    return Policy(limits=Limits(), proxy_auth=ProxyAuth(verify, clock=Clock())), asked


@pytest.mark.parametrize(
    "credentials",
    [
        (("Modal-Key", TOKEN[0]), ("Modal-Secret", TOKEN[1])),
        (("Authorization", f"Bearer {TOKEN[0]}.{TOKEN[1]}"),),
        (("Proxy-Authorization", "Basic " + base64.b64encode(":".join(TOKEN).encode()).decode()),),
    ],
)
def test_a_valid_proxy_token_is_routed_in_each_of_its_forms(credentials: Sequence[tuple[str, str]]) -> None:
    policy, asked = _auth()
    found = decide(head(*credentials, host=SECURE), policy)
    assert isinstance(found, Route) and found.function_tag == "secret"
    assert asked == [TOKEN]


def test_no_credentials_is_401_with_a_challenge() -> None:
    policy, asked = _auth()
    found = refused(decide(head(host=SECURE), policy))
    assert (found.status, found.message, found.headers) == (401, UNAUTHORIZED, CHALLENGE)
    assert asked == []


def test_a_wrong_secret_is_401() -> None:
    policy, _ = _auth()
    found = decide(head(("Modal-Key", TOKEN[0]), ("Modal-Secret", "ws-wrong"), host=SECURE), policy)
    assert refused(found).status == 401


def test_an_endpoint_requiring_auth_refuses_everyone_without_a_verifier() -> None:
    found = decide(head(("Modal-Key", TOKEN[0]), ("Modal-Secret", TOKEN[1]), host=SECURE))
    assert refused(found).status == 401


def test_an_open_endpoint_ignores_proxy_credentials() -> None:
    policy, asked = _auth(verdict=False)
    assert decide(head(("Modal-Key", TOKEN[0]), ("Modal-Secret", "ws-wrong")), policy) is SHOP
    assert asked == []


def test_an_unknown_host_is_404_before_credentials_are_checked() -> None:
    policy, asked = _auth()
    assert refused(decide(head(host="nobody.localhost"), policy)).status == 404
    assert asked == []


# -- body size (413)


def test_a_declared_body_over_the_limit_is_413_naming_it() -> None:
    policy = Policy(limits=Limits(max_body_bytes=10))
    found = refused(decide(head(("Content-Length", "11")), policy, method=b"POST"))
    assert (found.status, found.message) == (413, "cove: request body larger than 10 bytes")


def test_a_chunked_body_that_grew_over_the_limit_while_queued_is_413() -> None:
    policy = Policy(limits=Limits(max_body_bytes=10))
    found = decide(head(("Transfer-Encoding", "chunked")), policy, method=b"POST", received=11)
    assert refused(found).status == 413


def test_auth_is_checked_before_the_body_size() -> None:
    policy = Policy(limits=Limits(max_body_bytes=10), proxy_auth=ProxyAuth(lambda i, s: False))
    found = decide(head(("Content-Length", "11"), host=SECURE), policy, method=b"POST")
    assert refused(found).status == 401


# -- the workspace rate limit (429)


def _limited(rate_per_s: float = 2.0, burst_s: float = 1.0) -> tuple[Policy, Clock]:
    clock = Clock()
    return Policy(
        limits=Limits(max_body_bytes=10), bucket=TokenBucket(rate_per_s, burst_s, clock=clock)
    ), clock


def test_the_burst_passes_then_429_with_retry_after_then_tokens_refill() -> None:
    policy, clock = _limited()
    assert decide(head(), policy) is SHOP
    assert decide(head(), policy) is SHOP
    found = refused(decide(head(), policy))
    assert (found.status, found.message, found.headers, found.close) == (
        429,
        RATE_LIMITED,
        (("Retry-After", "1"),),
        False,
    )
    clock.now = 0.5
    assert decide(head(), policy) is SHOP


def test_retry_after_rounds_the_wait_up_to_whole_seconds() -> None:
    policy, _ = _limited(rate_per_s=0.25, burst_s=4.0)  # one token, refilled in 4 s
    assert decide(head(), policy) is SHOP
    assert refused(decide(head(), policy)).headers == (("Retry-After", "4"),)


@pytest.mark.parametrize(
    ("request_head", "method", "target"),
    [
        (head(host="nobody.localhost"), b"GET", b"/"),  # 404
        (head(host=STOPPED), b"GET", b"/"),  # 404
        (head(host=SECURE), b"GET", b"/"),  # 401
        (head(("Content-Length", "11")), b"POST", b"/"),  # 413
        (head(("Expect", "teapot")), b"POST", b"/"),  # 417
        (head(), b"GET", b"/?__cove_function_call_id=fc-1"),  # a poll
    ],
)
def test_requests_refused_or_polling_take_no_token(
    request_head: RequestHead, method: bytes, target: bytes
) -> None:
    policy, _ = _limited(rate_per_s=1.0, burst_s=1.0)  # one token
    assert decide(request_head, policy, method=method, target=target) is not SHOP
    assert decide(head(), policy) is SHOP  # the token is still there


# -- what the connection refuses while parsing


def test_connections_past_the_limit_are_503_with_retry_after() -> None:
    limits = Limits(max_connections=2)
    assert refuse_connection(2, limits) is None
    found = refuse_connection(3, limits)
    assert found == Refusal(
        503, "cove: too many open connections (limit 2); retry shortly", (("Retry-After", "1"),), close=True
    )


def test_a_target_over_the_limit_is_414() -> None:
    limits = Limits(max_request_line_bytes=8)
    assert refuse_target(8, limits) is None
    assert refuse_target(9, limits) == Refusal(414, "cove: request target longer than 8 bytes", close=True)


def test_a_head_over_the_limit_is_431() -> None:
    limits = Limits(max_head_bytes=100)
    assert refuse_head(100, limits) is None
    assert refuse_head(101, limits) == Refusal(431, "cove: request head larger than 100 bytes", close=True)


@pytest.mark.parametrize(("version", "status"), [("1.1", None), ("1.0", None), ("0.9", 505), ("2.0", 505)])
def test_only_http_10_and_11_are_served(version: str, status: int | None) -> None:
    found = refuse_version(version)
    assert (found.status if found else None) == status
    if found is not None:
        assert found.close and f"HTTP/{version}" in found.message


def test_timeouts_and_malformed_bytes_are_answered_and_closed() -> None:
    limits = Limits(header_timeout_s=2.5, body_timeout_s=3)
    assert head_timed_out(limits) == Refusal(408, "cove: request head not received within 2.5 s", close=True)
    assert body_stalled(limits) == Refusal(408, "cove: request body stalled for 3 s", close=True)
    assert malformed("Invalid method") == Refusal(400, "cove: malformed request (Invalid method)", close=True)
