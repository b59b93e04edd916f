"""`/metrics`: the gateway's per-function figures in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

from collections.abc import Iterable

from cove._gateway.metrics import LATENCY_BOUNDS_S, STATUS_CLASSES, RouteMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(routes: Iterable[RouteMetrics], gauges: dict[tuple[str, str], tuple[int, int, int]]) -> str:
    """The exposition of `routes`; `gauges[(app, function)]` is (containers, in flight, queued)."""
    routes = sorted(routes, key=lambda r: (r.app, r.function))
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    family("cove_http_requests_total", "counter", "Requests forwarded to a function, by response class.")
    for r in routes:
        for code, count in zip(STATUS_CLASSES, r.status_totals, strict=True):
            out.append(f"cove_http_requests_total{{{_labels(r)},code={_q(code)}}} {count}")
    family("cove_http_request_duration_seconds", "histogram", "Time from request head to response end.")
    for r in routes:
        cumulative = 0
        for bound, count in zip((*LATENCY_BOUNDS_S, None), r.latency_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound is None else repr(float(bound))
            out.append(f"cove_http_request_duration_seconds_bucket{{{_labels(r)},le={_q(le)}}} {cumulative}")
        out.append(f"cove_http_request_duration_seconds_sum{{{_labels(r)}}} {r.latency_sum_s!r}")
        out.append(f"cove_http_request_duration_seconds_count{{{_labels(r)}}} {cumulative}")
    family("cove_cold_starts_total", "counter", "Containers started for a function that became ready.")
    for r in routes:
        out.append(f"cove_cold_starts_total{{{_labels(r)}}} {r.cold_starts}")
    family("cove_cold_start_duration_seconds", "summary", "Time from launch to ready of those containers.")
    for r in routes:
        out.append(f"cove_cold_start_duration_seconds_sum{{{_labels(r)}}} {r.cold_start_seconds_sum!r}")
        out.append(f"cove_cold_start_duration_seconds_count{{{_labels(r)}}} {r.cold_starts}")
    for index, (name, help_text) in enumerate(
        (
            ("cove_containers", "Containers starting or ready."),
            ("cove_in_flight_requests", "Requests being served by containers."),
            ("cove_queue_depth", "Requests waiting for a container."),
        )
    ):
        family(name, "gauge", help_text)
        for r in routes:
            value = gauges.get((r.app, r.function), (0, 0, 0))[index]
            out.append(f"{name}{{{_labels(r)}}} {value}")
    return "\n".join(out) + "\n"


def _labels(r: RouteMetrics) -> str:
    return f"app={_q(r.app)},function={_q(r.function)}"


def _q(value: str) -> str:
    """A label value, quoted and escaped as the text format requires."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{escaped}"'
