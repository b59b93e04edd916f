"""Routing rules, the pure header helpers and the long-request (303) helpers of the gateway."""

from __future__ import annotations

import pytest

from cove._gateway import Gateway, Lease, Route, UpstreamError, host_key
from cove._gateway.longpoll import (
    CallResult,
    CallStore,
    Running,
    call_id_of,
    error_result,
    new_call_id,
    redirect_location,
    render_result,
    see_other,
    without_content_length,
)
from cove._gateway.messages import error_response, scan_request_headers, scan_response_headers
from cove._gateway.routing import MISSING_HOST, Refusal, RouteTable, resolve


class _NoUpstream:
    async def acquire(self) -> Lease:
        raise UpstreamError(503, "cove: never used")


UP = _NoUpstream()
SHOP = Route("shop", "square", UP)
STOPPED = Route("blog", "index", None)
ROUTES = {"alice--shop-square.localhost": SHOP, "alice--blog-index.localhost": STOPPED}


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("alice--shop-square.localhost", "alice--shop-square.localhost"),
        (b"Alice--Shop-Square.LOCALHOST", "alice--shop-square.localhost"),
        ("alice--shop-square.localhost:8000", "alice--shop-square.localhost"),
        ("alice--shop-square.localhost.", "alice--shop-square.localhost"),
        ("alice--shop-square.localhost.:8000", "alice--shop-square.localhost"),
        ("alice--shop-square.localhost:", "alice--shop-square.localhost"),
        ("  example.com  ", "example.com"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("host:notaport", "host:notaport"),
        (b"host:\xb2", "host:\xb2"),  # a superscript digit is not a port
        ("", ""),
    ],
)
def test_host_key_normalises_case_port_and_trailing_dot(header: str | bytes, key: str) -> None:
    assert host_key(header) == key


def test_host_key_is_idempotent() -> None:
    for header in ("A.Localhost.:1", "[::1]:2", "x"):
        assert host_key(host_key(header)) == host_key(header)


def test_resolve_finds_a_route_by_any_spelling_of_its_host() -> None:
    assert resolve(ROUTES, b"ALICE--shop-square.localhost.:8000") is SHOP


def test_resolve_refuses_a_missing_or_empty_host_with_400() -> None:
    assert resolve(ROUTES, None) == MISSING_HOST == Refusal(400, "cove: missing Host header")
    assert resolve(ROUTES, b"") == MISSING_HOST


def test_resolve_refuses_an_unknown_host_with_404_naming_it() -> None:
    assert resolve(ROUTES, b"Bob--Shop.localhost:8000") == Refusal(
        404, "cove: no endpoint at bob--shop.localhost"
    )


def test_resolve_refuses_a_stopped_app_with_404() -> None:
    assert resolve(ROUTES, b"alice--blog-index.localhost") == Refusal(404, "cove: app blog is stopped")


def test_route_table_normalises_its_keys_and_copies_the_mapping() -> None:
    routes = {"Alice--Shop-Square.localhost.": SHOP}
    table = RouteTable(routes)
    routes.clear()
    assert table.resolve(b"alice--shop-square.localhost") is SHOP
    assert len(table) == 1


def test_route_table_answers_the_same_from_its_memo() -> None:
    table = RouteTable(ROUTES)
    for _ in range(2):
        assert table.resolve(b"alice--shop-square.localhost:1") is SHOP
        assert table.resolve(b"nobody.localhost") == Refusal(404, "cove: no endpoint at nobody.localhost")
        assert table.resolve(None) == MISSING_HOST


def test_route_defaults() -> None:
    route = Route("shop", "square", None)
    assert route.timeout_s == 300.0
    assert route.requires_proxy_auth is False


def test_request_headers_keep_end_to_end_ones_in_order() -> None:
    head = scan_request_headers(
        [(b"Host", b"a.localhost"), (b"Accept", b"*/*"), (b"Content-Length", b"12"), (b"X-Id", b"7")]
    )
    assert head.header_lines == b"Host: a.localhost\r\nAccept: */*\r\nContent-Length: 12\r\nX-Id: 7\r\n"
    assert (head.host, head.host_count, head.content_length) == (b"a.localhost", 1, 12)
    assert head.transfer_encoding is None
    assert head.expect is None


def test_request_headers_drop_hop_by_hop_and_client_claims_about_forwarding() -> None:
    head = scan_request_headers(
        [
            (b"Connection", b"keep-alive, X-Secret"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Sum"),
            (b"Upgrade", b"h2c"),
            (b"X-Secret", b"s"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"x-forwarded-proto", b"https"),
            (b"Forwarded", b"for=6.6.6.6"),
            (b"Expect", b"100-Continue"),
            (b"Transfer-Encoding", b"Chunked"),
            (b"Accept", b"*/*"),
        ]
    )
    assert head.header_lines == b"Accept: */*\r\n"
    assert head.expect == b"100-continue"
    assert head.transfer_encoding == b"chunked"


def test_request_headers_count_host_headers() -> None:
    head = scan_request_headers([(b"Host", b"a"), (b"host", b"b")])
    assert head.host_count == 2


def test_response_headers_drop_hop_by_hop_and_report_framing() -> None:
    head = scan_response_headers(
        [
            (b"content-type", b"text/plain"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
        ]
    )
    assert head.header_lines == b"content-type: text/plain\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"
    assert head.chunked is True
    assert head.has_content_length is False
    assert scan_response_headers([(b"Content-Length", b"3")]).has_content_length is True


def test_error_response_is_plain_text_ending_in_a_newline() -> None:
    data = error_response(404, "cove: no endpoint at x.localhost")
    assert data == (
        b"HTTP/1.1 404 Not Found\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 33\r\n"
        b"\r\n"
        b"cove: no endpoint at x.localhost\n"
    )


def test_error_response_closing_head_only_with_extra_headers() -> None:
    data = error_response(
        503, "cove: queue full", (("Retry-After", "1"), ("X-Bad", "a\r\nb")), keep_alive=False, head_only=True
    )
    assert data == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n"
        b"Retry-After: 1\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )


def test_error_response_tells_http_10_clients_it_keeps_the_connection() -> None:
    assert b"\r\nConnection: keep-alive\r\n" in error_response(400, "cove: x", http_10=True)


def test_upstream_error_carries_status_message_and_headers() -> None:
    exc = UpstreamError(503, "cove: queue full", (("Retry-After", "2"),))
    assert (exc.status, exc.message, exc.headers) == (503, "cove: queue full", (("Retry-After", "2"),))
    assert str(exc) == "503 cove: queue full"


# -- long requests (longpoll.py) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "location"),
    [
        (b"/run", b"/run?__cove_function_call_id=fc-1"),
        (b"/run?x=1&y=a%20b", b"/run?x=1&y=a%20b&__cove_function_call_id=fc-1"),
        (b"/run?", b"/run?__cove_function_call_id=fc-1"),
        (b"/run?x=1&", b"/run?x=1&__cove_function_call_id=fc-1"),
        (b"/", b"/?__cove_function_call_id=fc-1"),
    ],
)
def test_redirect_location_appends_the_call_id_to_the_query(target: bytes, location: bytes) -> None:
    assert redirect_location(target, "fc-1") == location
    assert call_id_of(location) == "fc-1"


@pytest.mark.parametrize(
    ("target", "call_id"),
    [
        (b"/run?__cove_function_call_id=fc-ab", "fc-ab"),
        (b"/run?x=1&__cove_function_call_id=fc-ab&y=2", "fc-ab"),
        (b"/run?__cove_function_call_id=", ""),
        (b"/run", None),
        (b"/__cove_function_call_id=fc-ab", None),  # in the path, not the query
        (b"/run?x=__cove_function_call_id=fc-ab", None),  # a value, not a name
        (b"/run?__cove_function_call_idx=fc-ab", None),
    ],
)
def test_call_id_is_read_from_the_query_only(target: bytes, call_id: str | None) -> None:
    assert call_id_of(target) == call_id


def test_call_ids_are_fc_and_128_random_bits() -> None:
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    for call_id in ids:
        assert call_id.startswith("fc-") and len(call_id) == 35
        int(call_id[3:], 16)


def test_see_other_has_the_location_and_an_empty_body() -> None:
    assert see_other(b"/a?__cove_function_call_id=fc-1") == (
        b"HTTP/1.1 303 See Other\r\nLocation: /a?__cove_function_call_id=fc-1\r\nContent-Length: 0\r\n\r\n"
    )
    assert see_other(b"/a", keep_alive=False).endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert see_other(b"/a", http_10=True).endswith(b"Connection: keep-alive\r\n\r\n")


def test_a_result_is_reframed_with_its_own_content_length() -> None:
    lines = without_content_length(b"Content-Type: text/plain\r\ncontent-length: 99\r\nX-A: 1\r\n")
    assert lines == b"Content-Type: text/plain\r\nX-A: 1\r\n"
    result = CallResult(201, b"Created", lines, b"hello")
    assert render_result(result) == (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert render_result(result, keep_alive=False).endswith(b"Connection: close\r\n\r\nhello")
    assert render_result(CallResult(204, b"No Content", b"", b"")) == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_an_error_result_is_the_error_response_the_gateway_would_send() -> None:
    result = error_result(504, "cove: function timed out after 1 s", (("Retry-After", "1"),))
    assert result == CallResult(
        504,
        b"Gateway Timeout",
        b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\n",
        b"cove: function timed out after 1 s\n",
    )
    sent = error_response(504, "cove: function timed out after 1 s", (("Retry-After", "1"),))
    assert sorted(render_result(result).split(b"\r\n")) == sorted(sent.split(b"\r\n"))  # same, reordered


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RESULT = CallResult(200, b"OK", b"", b"done")


def test_call_store_hands_the_result_to_waiters_then_keeps_it() -> None:
    store = CallStore(clock=_Clock())
    call_id = store.start()
    running = store.lookup(call_id)
    assert isinstance(running, Running)
    got: list[CallResult] = []
    left: list[CallResult] = []
    running.watchers += [got.append, left.append]
    running.unwatch(left.append)
    store.finish(call_id, RESULT)
    assert got == [RESULT] and left == []
    assert store.lookup(call_id) is RESULT
    assert store.lookup(call_id) is RESULT  # fetching does not consume it
    assert store.lookup("fc-unknown") is None
    assert (store.running_count, store.result_count) == (0, 1)


def test_call_store_keeps_results_for_the_ttl_after_completion() -> None:
    clock = _Clock()
    store = CallStore(ttl_s=600.0, clock=clock)
    call_id = store.start()
    clock.now += 10_000.0  # running calls never expire
    assert isinstance(store.lookup(call_id), Running)
    store.finish(call_id, RESULT)
    clock.now += 599.0
    assert store.lookup(call_id) is RESULT
    clock.now += 1.0
    assert store.lookup(call_id) is None
    assert store.result_count == 0


def test_call_store_drops_the_oldest_results_beyond_its_bound() -> None:
    store = CallStore(max_results=2, clock=_Clock())
    ids = [store.start() for _ in range(3)]
    for call_id in ids:
        store.finish(call_id, RESULT)
    assert [store.lookup(call_id) for call_id in ids] == [None, RESULT, RESULT]


def test_a_failing_watcher_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    store = CallStore(clock=_Clock())
    call_id = store.start()
    got: list[CallResult] = []

    def broken(result: CallResult) -> None:
        raise RuntimeError("boom")

    running = store.lookup(call_id)
    assert isinstance(running, Running)
    running.watchers += [broken, got.append]
    store.finish(call_id, RESULT)
    assert got == [RESULT]
    assert "gateway error answering a poll" in caplog.text


def test_gateway_http_timeout_is_150_s_and_settable() -> None:
    gateway = Gateway()
    assert gateway.http_timeout_s == 150.0
    gateway.http_timeout_s = 2
    assert gateway.http_timeout_s == 2.0
    gateway.set_http_timeout(0.25)
    assert Gateway(http_timeout_s=30).http_timeout_s == 30.0
    for bad in (0, -1.0, float("inf"), float("nan"), True, "150"):
        with pytest.raises(ValueError, match="http_timeout_s must be a positive finite number"):
            gateway.set_http_timeout(bad)  # type: ignore[arg-type]
    assert gateway.http_timeout_s == 0.25
