"""The gateway's pure policy pieces: token bucket, proxy tokens, trusted proxies, limits, the
WebSocket frame scanner, and the header rules that strip credentials and client claims."""

from __future__ import annotations

import base64
import logging
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cove._gateway import Limits
from cove._gateway.auth import ProxyAuth, credentials, is_proxy_bearer
from cove._gateway.clientip import TrustedProxies, forwarded_lines, forwarded_proto, parse_address
from cove._gateway.messages import scan_request_headers, scan_response_headers
from cove._gateway.ratelimit import TokenBucket, retry_after
from cove._gateway.websocket import FrameScanner, close_frame


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- TokenBucket


def test_bucket_starts_full_and_grants_exactly_its_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(200, 5, clock=clock)
    assert bucket.capacity == 1000
    assert all(bucket.take() == 0.0 for _ in range(1000))
    assert bucket.take() == pytest.approx(1 / 200)


def test_refused_requests_take_nothing() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 0.1, clock=clock)  # capacity 1
    assert bucket.take() == 0.0
    waits = [bucket.take() for _ in range(5)]
    assert waits == [pytest.approx(0.1)] * 5
    clock.now += 0.1
    assert bucket.take() == 0.0


def test_tokens_refill_linearly_up_to_the_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(4, 1, clock=clock)  # capacity 4
    for _ in range(4):
        bucket.take()
    clock.now += 0.5
    assert bucket.available() == pytest.approx(2)
    clock.now += 3600
    assert bucket.available() == 4
    assert [bucket.take() for _ in range(5)][-1] == pytest.approx(0.25)


def test_wait_reports_the_time_to_the_next_whole_token() -> None:
    clock = Clock()
    bucket = TokenBucket(2, 1, clock=clock)
    bucket.take()
    bucket.take()
    clock.now += 0.2  # 0.4 of a token
    assert bucket.take() == pytest.approx(0.3)


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(1, 1, clock=clock)
    bucket.take()
    clock.now -= 50
    assert bucket.take() == pytest.approx(1.0)
    clock.now += 50.5  # back where it was, plus half a second
    assert bucket.take() == pytest.approx(0.5)


def test_capacity_is_at_least_one_token() -> None:
    bucket = TokenBucket(0.1, 1, clock=Clock())
    assert bucket.capacity == 1
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(10)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "5"])
def test_bucket_rejects_bad_settings(bad: object) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        TokenBucket(bad, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="burst_s"):
        TokenBucket(1, bad)  # type: ignore[arg-type]


@given(st.lists(st.floats(min_value=0, max_value=2), max_size=200))
@settings(max_examples=200, deadline=None)
def test_bucket_never_grants_more_than_capacity_plus_refill(gaps: list[float]) -> None:
    """Over any run, grants <= capacity + rate * elapsed; and every refusal names a positive wait."""
    clock = Clock(0.0)
    bucket = TokenBucket(3, 2, clock=clock)
    granted = 0
    for gap in gaps:
        clock.now += gap
        wait = bucket.take()
        if wait == 0.0:
            granted += 1
        else:
            assert 0 < wait <= 1 / 3 + 1e-9
    assert granted <= bucket.capacity + 3 * clock.now + 1e-6


@pytest.mark.parametrize(("wait", "header"), [(0.0001, "1"), (1.0, "1"), (1.0001, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert retry_after(wait) == header


# -- proxy tokens

ID = b"wk-abc"
SECRET = b"ws-xyz"


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([(b"modal-key", ID), (b"modal-secret", SECRET)], ("wk-abc", "ws-xyz")),
        ([(b"authorization", b"Bearer wk-abc.ws-xyz")], ("wk-abc", "ws-xyz")),
        ([(b"authorization", b"bearer   wk-abc.ws-xyz ")], ("wk-abc", "ws-xyz")),
        ([(b"proxy-authorization", b"Basic " + base64.b64encode(b"wk-abc:ws-xyz"))], ("wk-abc", "ws-xyz")),
        ([(b"modal-key", ID)], None),
        ([(b"modal-secret", SECRET)], None),
        ([(b"authorization", b"Bearer wk-abc")], None),
        ([(b"authorization", b"Bearer wk-abc.nope")], None),
        ([(b"modal-key", b"ak-abc"), (b"modal-secret", SECRET)], None),  # an API token is not a proxy token
        ([(b"proxy-authorization", b"Basic !!!")], None),
        ([(b"proxy-authorization", b"Digest " + base64.b64encode(b"wk-abc:ws-xyz"))], None),
        ([(b"proxy-authorization", b"Basic " + base64.b64encode(b"wk-abc"))], None),
        ([(b"modal-key", b"wk-" + b"a" * 600), (b"modal-secret", SECRET)], None),
        ([(b"modal-key", "wk-é".encode()), (b"modal-secret", SECRET)], None),
        # Modal-Key/Modal-Secret win over a bearer token
        (
            [(b"authorization", b"Bearer wk-1.ws-1"), (b"modal-key", ID), (b"modal-secret", SECRET)],
            ("wk-abc", "ws-xyz"),
        ),
    ],
)
def test_credentials_are_read_from_each_form(
    found: list[tuple[bytes, bytes]], expected: tuple[str, str] | None
) -> None:
    assert credentials(found) == expected


def test_only_bearer_proxy_tokens_count_as_proxy_authorization() -> None:
    assert is_proxy_bearer(b"Bearer wk-1.ws-2")
    assert is_proxy_bearer(b"BEARER  wk-1.ws-2")
    assert not is_proxy_bearer(b"Bearer eyJhbGciOi")
    assert not is_proxy_bearer(b"Basic d2stMTp3cy0y")


class CountingVerifier:
    def __init__(self, valid: set[tuple[str, str]]) -> None:
        self.valid = valid
        self.calls: list[tuple[str, str]] = []

    def __call__(self, token_id: str, secret: str) -> bool:
        self.calls.append((token_id, secret))
        return (token_id, secret) in self.valid


def found(token_id: bytes = ID, secret: bytes = SECRET) -> list[tuple[bytes, bytes]]:
    return [(b"modal-key", token_id), (b"modal-secret", secret)]


def test_valid_tokens_are_remembered_for_ttl_then_checked_again() -> None:
    clock = Clock()
    verify = CountingVerifier({("wk-abc", "ws-xyz")})
    auth = ProxyAuth(verify, ttl_s=10, clock=clock)
    assert all(auth.check(found()) for _ in range(5))
    assert len(verify.calls) == 1
    clock.now += 10
    assert auth.check(found())
    assert len(verify.calls) == 2


def test_invalid_tokens_are_not_remembered() -> None:
    verify = CountingVerifier(set())
    auth = ProxyAuth(verify, clock=Clock())
    assert not auth.check(found())
    verify.valid.add(("wk-abc", "ws-xyz"))  # created meanwhile: works at once
    assert auth.check(found())
    assert len(verify.calls) == 2


def test_a_wrong_secret_for_a_remembered_id_is_refused() -> None:
    verify = CountingVerifier({("wk-abc", "ws-xyz")})
    auth = ProxyAuth(verify, clock=Clock())
    assert auth.check(found())
    assert not auth.check(found(secret=b"ws-guess"))


def test_remembered_tokens_are_bounded_oldest_first() -> None:
    valid = {(f"wk-{i}", "ws-s") for i in range(3)}
    verify = CountingVerifier(valid)
    auth = ProxyAuth(verify, max_entries=2, clock=Clock())
    for i in range(3):
        assert auth.check(found(f"wk-{i}".encode(), b"ws-s"))
    assert auth.check(found(b"wk-2", b"ws-s")) and auth.check(found(b"wk-1", b"ws-s"))
    assert len(verify.calls) == 3
    assert auth.check(found(b"wk-0", b"ws-s"))  # forgotten: looked up again
    assert len(verify.calls) == 4


def test_no_credentials_never_reach_the_verifier() -> None:
    verify = CountingVerifier(set())
    auth = ProxyAuth(verify)
    assert not auth.check(None)
    assert not auth.check([])
    assert not auth.check([(b"modal-key", ID)])
    assert verify.calls == []


def test_a_failing_verifier_refuses_and_logs_without_the_secret(caplog: pytest.LogCaptureFixture) -> None:
    def broken(token_id: str, secret: str) -> bool:
        raise RuntimeError("database is locked")

    auth = ProxyAuth(broken)
    with caplog.at_level(logging.ERROR, logger="cove.gateway"):
        assert not auth.check(found())
    assert "wk-abc" in caplog.text
    assert "ws-xyz" not in caplog.text


def test_forget_drops_remembered_tokens_and_ttl_zero_remembers_nothing() -> None:
    verify = CountingVerifier({("wk-abc", "ws-xyz")})
    auth = ProxyAuth(verify, clock=Clock())
    auth.check(found())
    auth.forget()
    auth.check(found())
    assert len(verify.calls) == 2
    never = ProxyAuth(verify, ttl_s=0)
    never.check(found())
    never.check(found())
    assert len(verify.calls) == 4


# -- trusted proxies


@pytest.mark.parametrize(
    ("peer", "chain", "client"),
    [
        ("8.8.8.8", b"1.2.3.4", "8.8.8.8"),  # untrusted peer: its claim is ignored
        ("10.0.0.1", None, "10.0.0.1"),  # trusted peer without a claim
        ("10.0.0.1", b"1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", b"6.6.6.6, 1.2.3.4, 10.0.0.2", "1.2.3.4"),
        ("10.0.0.1", b"10.0.0.3,10.0.0.2", "10.0.0.3"),  # all trusted: the left-most
        ("10.0.0.1", b"1.2.3.4, unknown", "10.0.0.1"),  # garbage ends the walk at the last trusted hop
        ("10.0.0.1", b"unknown, 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", b"1.2.3.4:5678", "1.2.3.4"),
        ("10.0.0.1", b"[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", b"2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", b"1.2.3.4", "1.2.3.4"),  # an IPv4-mapped peer on a dual-stack socket
    ],
)
def test_the_client_is_the_right_most_untrusted_address(peer: str, chain: bytes | None, client: str) -> None:
    assert TrustedProxies(["10.0.0.0/8"]).client(peer, chain) == client


def test_trusted_proxies_parse_addresses_and_networks() -> None:
    proxies = TrustedProxies([" 10.0.0.0/8", "", "::1", "192.168.1.7"])
    assert proxies
    assert proxies.trusts("::1") and proxies.trusts("10.9.9.9") and proxies.trusts("192.168.1.7")
    assert not proxies.trusts("192.168.1.8") and not proxies.trusts("unknown") and not proxies.trusts(None)
    assert not TrustedProxies([])
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or CIDR network"):
        TrustedProxies(["10.0.0.0/33"])


def test_chains_are_memoised_and_the_memo_is_bounded() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(5000):
        assert proxies.client("10.0.0.1", f"1.2.{i // 256}.{i % 256}".encode()) == f"1.2.{i // 256}.{i % 256}"
    assert len(proxies._memo) <= 4096


def test_forwarded_lines_and_proto() -> None:
    assert forwarded_lines("1.2.3.4", b"https") == b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n"
    assert forwarded_proto(None) == b"http"
    assert forwarded_proto(b" HTTPS ") == b"https"
    assert forwarded_proto(b"https, http") == b"http"
    assert parse_address("[::1") is None


# -- limits


def test_limits_defaults() -> None:
    limits = Limits()
    assert limits.max_body_bytes == 4 * 1024**3
    assert (limits.header_timeout_s, limits.idle_timeout_s, limits.max_connections) == (10.0, 75.0, 10_000)
    assert limits.max_ws_message_bytes == 2 * 1024 * 1024


@pytest.mark.parametrize(
    "bad",
    [
        {"max_body_bytes": 0},
        {"max_head_bytes": 1.5},
        {"header_timeout_s": 0},
        {"idle_timeout_s": float("inf")},
    ],
)
def test_limits_reject_bad_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=f"Limits.{next(iter(bad))} must be"):
        Limits(**bad)  # type: ignore[arg-type]


# -- WebSocket frames


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def feed_all(scanner: FrameScanner, data: bytes, step: int) -> bytes:
    return b"".join(scanner.feed(data[i : i + step]) for i in range(0, len(data), step))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_frames_of_every_length_encoding_pass_whole_however_they_are_split(size: int, step: int) -> None:
    data = frame(2, b"x" * size) + frame(9, b"ping") + frame(1, b"t")
    scanner = FrameScanner(1 << 20)
    assert feed_all(scanner, data, step) == data
    assert scanner.at_boundary and not scanner.halted


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 9, 10]), st.binary(max_size=300), st.booleans()),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=64),
)
@settings(max_examples=200, deadline=None)
def test_scanner_output_is_its_input_when_under_the_limit(
    frames: list[tuple[int, bytes, bool]], step: int
) -> None:
    data = b"".join(frame(op, payload, masked=masked) for op, payload, masked in frames)
    scanner = FrameScanner(1000)
    assert feed_all(scanner, data, step) == data
    assert scanner.at_boundary


def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_stops_at_its_header() -> None:
    scanner = FrameScanner(10)
    ok = frame(2, b"a" * 10)
    assert scanner.feed(ok) == ok
    too_big = frame(2, b"b" * 11)
    assert scanner.feed(ok + too_big + ok) == ok
    assert scanner.too_big and scanner.halted
    assert scanner.feed(ok) == b""


def test_fragments_add_up_and_control_frames_do_not_count() -> None:
    scanner = FrameScanner(10)
    first = frame(1, b"a" * 4, fin=False)
    ping = frame(9, b"p" * 100)
    middle = frame(0, b"b" * 6, fin=False)
    last = frame(0, b"c", fin=True)
    assert scanner.feed(first + ping + middle) == first + ping + middle
    assert scanner.feed(last) == b""
    assert scanner.too_big


def test_a_new_message_starts_counting_afresh() -> None:
    scanner = FrameScanner(10)
    data = frame(2, b"a" * 8) + frame(1, b"b" * 8) + frame(2, b"c" * 10)
    assert scanner.feed(data) == data


def test_a_split_header_is_held_back_until_complete() -> None:
    scanner = FrameScanner(1 << 20)
    data = frame(2, b"z" * 70000)  # a 14-byte header
    assert scanner.feed(data[:5]) == b""
    assert not scanner.at_boundary or scanner._partial
    assert scanner.feed(data[5:]) == data


def test_stop_at_a_boundary_halts_at_once() -> None:
    scanner = FrameScanner(100)
    scanner.feed(frame(1, b"hi"))
    assert scanner.request_stop()
    assert scanner.feed(frame(1, b"more")) == b""


def test_stop_mid_frame_lets_the_frame_finish_then_halts() -> None:
    scanner = FrameScanner(100)
    data = frame(2, b"x" * 50)
    assert scanner.feed(data[:20]) == data[:20]
    assert not scanner.request_stop()
    after = frame(2, b"next")
    assert scanner.feed(data[20:] + after) == data[20:]
    assert scanner.halted


def test_a_client_close_frame_is_noticed() -> None:
    scanner = FrameScanner(100)
    closing = close_frame(1000, "bye", masked=True)
    assert scanner.feed(closing) == closing
    assert scanner.close_seen


def test_close_frames_carry_code_and_a_reason_cut_to_fit() -> None:
    assert close_frame(1009, "too big", masked=False) == b"\x88\x09\x03\xf1too big"
    masked = close_frame(1001, "x" * 200, masked=True)
    assert masked[0] == 0x88 and masked[1] == 0x80 | 125
    key, body = masked[2:6], masked[6:]
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    assert payload == b"\x03\xe9" + b"x" * 123


# -- headers that end at the gateway


def test_proxy_credentials_are_collected_and_stripped() -> None:
    head = scan_request_headers(
        [
            (b"Host", b"a"),
            (b"Modal-Key", b"wk-1"),
            (b"Modal-Secret", b"ws-2"),
            (b"Authorization", b"Bearer wk-1.ws-2"),
            (b"Proxy-Authorization", b"Basic eA=="),
            (b"Accept", b"*/*"),
        ]
    )
    assert head.header_lines == b"Host: a\r\nAccept: */*\r\n"
    assert head.credentials == [
        (b"modal-key", b"wk-1"),
        (b"modal-secret", b"ws-2"),
        (b"authorization", b"Bearer wk-1.ws-2"),
        (b"proxy-authorization", b"Basic eA=="),
    ]


def test_an_apps_own_authorization_is_forwarded() -> None:
    head = scan_request_headers([(b"Authorization", b"Bearer app"), (b"Connection", b"x-other")])
    assert head.header_lines == b"Authorization: Bearer app\r\n"
    assert head.credentials is None


def test_the_rare_path_also_strips_a_proxy_bearer() -> None:
    head = scan_request_headers(
        [(b"Authorization", b"Bearer wk-1.ws-2"), (b"Connection", b"x-other"), (b"X-Other", b"1")]
    )
    assert head.header_lines == b""


def test_client_claims_and_extensions_are_dropped_and_recorded() -> None:
    head = scan_request_headers(
        [
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"X_Forwarded_For", b"3.3.3.3"),
            (b"X-Forwarded_Proto", b"https"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Real-IP", b"4.4.4.4"),
            (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
            (b"Upgrade", b" WebSocket "),
            (b"Sec-WebSocket-Key", b"k"),
        ]
    )
    assert head.header_lines == b"Sec-WebSocket-Key: k\r\n"
    assert head.forwarded_for == b"1.1.1.1, 2.2.2.2"
    assert head.forwarded_proto == b"https"
    assert head.upgrade == b"websocket"


def test_connection_cannot_name_host_or_content_length() -> None:
    head = scan_request_headers(
        [
            (b"Host", b"a"),
            (b"Content-Length", b"3"),
            (b"Connection", b"host, content-length, x-gone"),
            (b"X-Gone", b"1"),
        ]
    )
    assert head.header_lines == b"Host: a\r\nContent-Length: 3\r\n"
    response = scan_response_headers(
        [(b"Content-Length", b"2"), (b"Connection", b"content-length"), (b"Proxy-Authenticate", b"Basic")]
    )
    assert response.header_lines == b"Content-Length: 2\r\n"
