"""The gateway's per-function figures: fixed-size rings, quantiles, and their Prometheus exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cove._dashboard.exposition import render
from cove._gateway.metrics import (
    ABORTED,
    BUCKETS,
    MINUTES,
    SECONDS,
    GatewayMetrics,
    RouteMetrics,
    quantile,
    status_class,
)
from cove._gateway.routing import Route

T0 = 1_000_000.0  # monotonic and wall clocks agree: clock_offset_s=0


def _figures() -> RouteMetrics:
    return RouteMetrics("shop", "price", clock_offset_s=0.0)


def test_observe_counts_status_classes_latency_and_the_current_second() -> None:
    m = _figures()
    m.observe(200, T0, T0 + 0.003)
    m.observe(404, T0, T0 + 0.2)
    m.observe(ABORTED, T0, T0 + 0.5)
    assert m.status_totals == [0, 1, 0, 1, 0, 1]
    assert m.requests_total == 3
    assert sum(m.latency_buckets) == 3
    series = m.series(now_s=T0)
    assert series.requests[-1] == 3
    assert sum(series.status[-1]) == 3


def test_memory_is_fixed_however_many_requests_arrive() -> None:
    """Two hours of traffic later, every ring has the length it was allocated with."""
    m = _figures()
    for second in range(0, 7200, 3):
        m.observe(200, T0 + second, T0 + second + 0.01)
    assert len(m.sec_count) == SECONDS
    assert len(m.min_hist) == MINUTES * BUCKETS
    assert m.requests_total == 2400
    # Only the last hour is in the series: one request every 3 s.
    assert sum(m.series(now_s=T0 + 7199).requests) == 1200


def test_old_slots_age_out_when_reused() -> None:
    m = _figures()
    m.observe(500, T0, T0)
    later = T0 + SECONDS  # the same slot, an hour on
    m.observe(200, later, later)
    series = m.series(now_s=later)
    assert sum(series.requests) == 1
    assert [sum(row) for row in series.status][-1] == 1
    assert series.status[-1][1] == 1  # the 2xx of now, not the old 5xx
    assert m.status_totals[4] == 1  # counters keep everything


def test_queue_samples_keep_the_deepest_of_each_second() -> None:
    m = _figures()
    for depth in (3, 9, 2):
        m.sample_queue(depth, now_s=T0)
    assert m.series(now_s=T0).queue_depth[-1] == 9


def test_cold_starts_are_counted_with_their_durations() -> None:
    m = _figures()
    m.cold_start(1.5)
    m.cold_start(0.5)
    assert (m.cold_starts, m.cold_start_seconds_sum) == (2, 2.0)
    series = m.series()
    assert series.cold_starts[-1] == 2
    assert series.cold_start_avg_s[-1] == 1.0


def test_quantiles_interpolate_inside_buckets() -> None:
    hist = [0] * BUCKETS
    assert quantile(hist, 0.5) is None
    hist[6] = 100  # (0.05, 0.1]
    p50 = quantile(hist, 0.5)
    assert p50 is not None and 0.05 < p50 <= 0.1
    hist[-1] = 1  # one beyond the last bound
    p999 = quantile(hist, 0.999)
    assert p999 is not None and p999 >= 0.1


def test_status_class_of_odd_statuses() -> None:
    assert [status_class(s) for s in (101, 200, 303, 429, 504, 0, 999)] == [0, 1, 2, 3, 4, 5, 4]


def test_tracking_keeps_figures_across_route_tables_and_skips_unnamed_routes() -> None:
    metrics = GatewayMetrics()
    metrics.track({"a.localhost": Route("shop", "price", None), "dashboard.localhost": Route("", "d", None)})
    first = metrics.lookup("shop", "price")
    assert first is not None and metrics.lookup("", "d") is None
    metrics.track({"a.localhost": Route("shop", "price", None)})
    assert metrics.lookup("shop", "price") is first
    metrics.track({})
    assert metrics.lookup("shop", "price") is None


def test_exposition_parses_with_the_prometheus_parser() -> None:
    m = RouteMetrics('we"ird', "price\\x", clock_offset_s=0.0)
    for _ in range(5):
        m.observe(200, T0, T0 + 0.02)
    m.observe(503, T0, T0 + 1.0)
    m.cold_start(2.0)
    families = {
        f.name: f for f in text_string_to_metric_families(render([m], {('we"ird', "price\\x"): (1, 2, 3)}))
    }
    requests = {s.labels["code"]: s.value for s in families["cove_http_requests"].samples}
    assert requests["2xx"] == 5 and requests["5xx"] == 1
    assert all(s.labels["app"] == 'we"ird' for s in families["cove_http_requests"].samples)
    hist = families["cove_http_request_duration_seconds"].samples
    count = next(s.value for s in hist if s.name.endswith("_count"))
    inf = next(s.value for s in hist if s.labels.get("le") == "+Inf")
    assert count == inf == 6
    assert families["cove_cold_starts"].samples[0].value == 1
    assert families["cove_queue_depth"].samples[0].value == 3
