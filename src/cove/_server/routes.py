"""The gateway's routing table: the app registry's routes, plus the hosts the server itself serves."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cove._gateway.routing import Route

SetRoutes = Callable[[Mapping[str, Route]], None]


class RoutePublisher:
    """Hands each routing table the app registry publishes straight to the gateway (`set_routes`,
    e.g. `Gateway.set_routes`), with the server's own hosts (the dashboard's) added, then tells
    whoever follows route changes."""

    def __init__(
        self,
        set_routes: SetRoutes,
        own: Mapping[str, Route],
        on_change: tuple[Callable[[], None], ...] = (),
    ) -> None:
        self._set_routes = set_routes
        self._own = dict(own)
        self._on_change = on_change

    def publish(self, routes: Mapping[str, Route]) -> None:
        """Swap the gateway's table for `routes` (the server's own hosts win over an app's)."""
        self._set_routes({**routes, **self._own})
        for listener in self._on_change:
            listener()
