"""The dashboard's `PoolObserver`: each container's cold start, counted in its function's figures."""

from __future__ import annotations

from cove._gateway.metrics import GatewayMetrics

#: Cold starts held per function until its figures exist; a pool nobody routes to keeps only a few.
_HELD_PER_FUNCTION = 16


class ColdStarts:
    """Counts cold starts in the gateway's per-function figures (`RouteMetrics.cold_start`).

    Figures exist for functions the routing table names, and a deploy starts its first containers
    before its routes go live: their cold starts are held until the next `routes_changed()`, then
    counted, or dropped if no route names the function (a function without a URL has no figures).
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._held: dict[tuple[str, str], list[float]] = {}

    def container_ready(self, app: str, tag: str, startup_s: float) -> None:
        figures = self._metrics.lookup(app, tag)
        if figures is not None:
            figures.cold_start(startup_s)
            return
        held = self._held.setdefault((app, tag), [])
        if len(held) < _HELD_PER_FUNCTION:
            held.append(startup_s)

    def routes_changed(self) -> None:
        """The gateway serves a new routing table: count what was held for its functions."""
        held, self._held = self._held, {}
        for (app, tag), durations in held.items():
            figures = self._metrics.lookup(app, tag)
            for startup_s in durations if figures is not None else ():
                figures.cold_start(startup_s)  # type: ignore[union-attr]
