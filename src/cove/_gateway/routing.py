"""Routing: which `Route` serves a Host header, decided by pure functions of the routing table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cove._gateway.upstream import Upstream

#: Distinct Host spellings remembered per table before the memo is reset; bounds memory when
#: clients send many spellings (case, ports) of the same names.
_MEMO_LIMIT = 4096


@dataclass(frozen=True)
class Route:
    """Where requests for one endpoint host go."""

    app_name: str
    function_tag: str
    upstream: Upstream | None  # None: the app is stopped
    timeout_s: float = 300.0  # no response head within it, counted from the lease -> 504
    requires_proxy_auth: bool = False  # recorded only; enforced by a later issue
    session_affinity: bool = False  # an HTTP server: `upstream` is a `SessionUpstream` (Modal-Session-ID)
    sessioned: bool = False  # with @modal.sessioned(): its key is the Modal-Authorization token instead


@dataclass(frozen=True)
class Refusal:
    """A request the gateway answers itself, before any container is touched (`admission.py`)."""

    status: int
    message: str  # starts with "cove: "
    headers: tuple[tuple[str, str], ...] = ()  # added to the answer, e.g. `Retry-After`
    close: bool = False  # the connection closes after the answer: its framing cannot be trusted


MISSING_HOST = Refusal(400, "cove: missing Host header")


def host_key(host_header: bytes | str) -> str:
    """The routing key of a Host header: lowercase, without `:port` and without a trailing dot.

    >>> host_key(b"Alice--Shop-Square.localhost.:8000")
    'alice--shop-square.localhost'
    """
    host = host_header.decode("latin-1") if isinstance(host_header, bytes) else host_header
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal, RFC 3986 §3.2.2: the port follows the bracket
        end = host.find("]")
        if end != -1:
            host = host[: end + 1]
    else:
        colon = host.rfind(":")
        if colon != -1:
            port = host[colon + 1 :]
            # An empty port is allowed (RFC 3986 §3.2.3); anything but ASCII digits is not a port.
            if not port or (port.isascii() and port.isdigit()):
                host = host[:colon]
    if host.endswith("."):
        host = host[:-1]
    return host


def resolve(routes: Mapping[str, Route], host: bytes | None) -> Route | Refusal:
    """The route for a request's Host header (None when absent), or why there is none.

    A returned `Route` always has an upstream; a stopped app is a `Refusal`.
    """
    if not host:
        return MISSING_HOST
    key = host_key(host)
    route = routes.get(key)
    if route is None:
        return Refusal(404, f"cove: no endpoint at {key}")
    if route.upstream is None:
        return Refusal(404, f"cove: app {route.app_name} is stopped")
    return route


class RouteTable:
    """An immutable routing table; `Gateway.set_routes` swaps whole tables.

    Lookups memoise the raw Host bytes of routable hosts, so the hot path is one dict lookup.
    Refusals are not memoised: their hosts are whatever clients make up.
    """

    __slots__ = ("_memo", "_routes")

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes: dict[str, Route] = {host_key(key): route for key, route in routes.items()}
        self._memo: dict[bytes, Route] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def resolve(self, host: bytes | None) -> Route | Refusal:
        """`resolve(routes, host)` on this table."""
        if host is not None:
            route = self._memo.get(host)
            if route is not None:
                return route
        found = resolve(self._routes, host)
        if isinstance(found, Route) and host is not None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[host] = found
        return found
