"""Admission: whether the gateway forwards a request, refuses it, or answers a 303 poll.

Everything the gateway refuses before it touches a container is decided here, by pure functions
of the request, the routing table and the `Policy` (whose token bucket and proxy-token verifier
are injected, clock included), so each refusal is unit-tested without a socket.

`admit` decides a parsed request head, in this order: what the gateway cannot proxy (CONNECT
501, several Host headers 400, Transfer-Encoding in HTTP/1.0 400 or other than chunked 501, an
expectation other than 100-continue 417, a target that is neither a path nor a URL naming the
Host 400), a poll for a long request's result (`Poll`; only by GET), then the route (unknown host
or stopped app 404, no Host 400), proxy auth for endpoints that require it (401), the declared
body size (413), and last the workspace rate limit (429 with `Retry-After`), so that neither
unknown hosts nor refused requests use up the workspace's tokens.

The connection refuses what cannot become a request at all while it parses (`connection.py`):
too many connections (503), a target or head over the limits (414, 431), an HTTP version other
than 1.0/1.1 (505), a head or body too slow (408), bytes llhttp rejects (400). Their answers are
built here too, so every refusal's wording lives in one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cove._gateway.auth import CHALLENGE, UNAUTHORIZED
from cove._gateway.longpoll import CALL_PARAM, call_id_of
from cove._gateway.messages import RequestHead
from cove._gateway.policy import Limits, Policy
from cove._gateway.ratelimit import retry_after
from cove._gateway.routing import Refusal, Route, RouteTable, host_key

__all__ = [
    "RATE_LIMITED",
    "Poll",
    "Refusal",
    "admit",
    "body_stalled",
    "head_timed_out",
    "malformed",
    "origin_form",
    "refuse_connection",
    "refuse_head",
    "refuse_target",
    "refuse_version",
]

RATE_LIMITED: Final = "cove: rate limit exceeded"

_CONNECT: Final = Refusal(
    501, "cove: CONNECT is not supported; the gateway is not a forward proxy", close=True
)
_HOSTS: Final = Refusal(400, "cove: more than one Host header", close=True)
_TE_HTTP_10: Final = Refusal(
    400, "cove: malformed request (Transfer-Encoding in an HTTP/1.0 request)", close=True
)
_TARGET: Final = Refusal(
    400, "cove: malformed request (the target must be a path, or a URL naming the Host)", close=True
)
_POLL_METHOD: Final = Refusal(400, "cove: bad redirect method")
_SCHEMES: Final = (b"http", b"https", b"ws", b"wss")


@dataclass(frozen=True, slots=True)
class Poll:
    """A GET for the result of a call answered with 303 (`longpoll.py`), whichever its host."""

    call_id: str


def admit(
    head: RequestHead,
    routes: RouteTable,
    policy: Policy,
    *,
    method: bytes,
    target: bytes,
    http_10: bool = False,
    upgrade: bool = False,
    received: int = 0,
) -> Route | Poll | Refusal:
    """What to do with a request whose head was parsed and whose turn on its connection came.

    `received` is how many body bytes arrived while it waited its turn (a chunked body has no
    declared length). A `Route` takes a token from `policy.bucket`; nothing else changes state.
    """
    if upgrade and method == b"CONNECT":
        return _CONNECT
    if head.host_count > 1:  # RFC 9112 §3.2; which one would the container believe?
        return _HOSTS
    encoding = head.transfer_encoding
    if encoding is not None:
        if http_10:  # RFC 9112 §6.1: faulty framing; answer and close
            return _TE_HTTP_10
        if encoding != b"chunked":
            return Refusal(
                501, f"cove: transfer-encoding {encoding.decode('latin-1')} not supported; send chunked"
            )
    if head.expect is not None and head.expect != b"100-continue":
        return Refusal(417, f"cove: expectation {head.expect.decode('latin-1')} not supported")
    if target[:1] != b"/":
        origin = origin_form(method, target, head.host)
        if origin is None:
            return _TARGET
        target = origin
    if CALL_PARAM in target:
        call_id = call_id_of(target)
        if call_id is not None:
            return Poll(call_id) if method == b"GET" else _POLL_METHOD
    found = routes.resolve(head.host)
    if isinstance(found, Refusal):
        return found
    if found.upstream is None:  # resolve() never returns such a route; keeps the type checker honest
        return Refusal(404, f"cove: app {found.app_name} is stopped")
    if found.requires_proxy_auth:
        auth = policy.proxy_auth
        if auth is None or not auth.check(head.credentials):
            return Refusal(401, UNAUTHORIZED, CHALLENGE)
    limit = policy.limits.max_body_bytes
    if (head.content_length or 0) > limit or received > limit:
        return Refusal(413, f"cove: request body larger than {limit} bytes")
    bucket = policy.bucket
    if bucket is not None:
        wait_s = bucket.take()
        if wait_s:
            return Refusal(429, RATE_LIMITED, (("Retry-After", retry_after(wait_s)),))
    return found


def origin_form(method: bytes, target: bytes, host: bytes | None) -> bytes | None:
    """The target to forward for one that is not a path, or None if the gateway refuses it.

    `*` passes for OPTIONS. RFC 9112 §3.2.2: with an absolute-form target the Host header is to be
    ignored; the gateway routes on Host, so it only accepts an absolute URL naming that same host
    (and forwards its path): anything else would let the URL and the Host disagree.

    >>> origin_form(b"GET", b"http://a.localhost:8000/x?y=1", b"a.localhost")
    b'/x?y=1'
    >>> origin_form(b"GET", b"http://b.localhost/x", b"a.localhost") is None
    True
    """
    if target == b"*" and method == b"OPTIONS":
        return target
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in _SCHEMES:
        cut = min(i for i in (rest.find(b"/"), rest.find(b"?"), len(rest)) if i >= 0)
        authority, tail = rest[:cut], rest[cut:]
        if host is not None and authority and host_key(authority) == host_key(host):
            return tail if tail[:1] == b"/" else b"/" + tail
    return None


# -- what the connection refuses while parsing, before there is a request to admit


def refuse_connection(open_count: int, limits: Limits) -> Refusal | None:
    """A connection accepted when `open_count` are open (it included): 503 past the limit."""
    if open_count <= limits.max_connections:
        return None
    message = f"cove: too many open connections (limit {limits.max_connections}); retry shortly"
    return Refusal(503, message, (("Retry-After", "1"),), close=True)


def refuse_target(length: int, limits: Limits) -> Refusal | None:
    """A request target of `length` bytes so far: 414 past the limit."""
    limit = limits.max_request_line_bytes
    if length <= limit:
        return None
    return Refusal(414, f"cove: request target longer than {limit} bytes", close=True)


def refuse_head(size: int, limits: Limits) -> Refusal | None:
    """A request head of `size` bytes so far: 431 past the limit."""
    if size <= limits.max_head_bytes:
        return None
    return Refusal(431, f"cove: request head larger than {limits.max_head_bytes} bytes", close=True)


def refuse_version(version: str) -> Refusal | None:
    """HTTP/1.0 and 1.1 are served; any other version is 505."""
    if version == "1.1" or version == "1.0":
        return None
    return Refusal(505, f"cove: HTTP/{version} is not supported; send HTTP/1.1", close=True)


def head_timed_out(limits: Limits) -> Refusal:
    """A request head not complete `header_timeout_s` after its first byte (slowloris)."""
    return Refusal(408, f"cove: request head not received within {limits.header_timeout_s:g} s", close=True)


def body_stalled(limits: Limits) -> Refusal:
    """A request body with no byte for `body_timeout_s` while the gateway was reading it."""
    return Refusal(408, f"cove: request body stalled for {limits.body_timeout_s:g} s", close=True)


def malformed(reason: str) -> Refusal:
    """Bytes that are not an HTTP/1.1 request (llhttp's `reason`): 400."""
    return Refusal(400, f"cove: malformed request ({reason})", close=True)
