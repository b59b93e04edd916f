"""Traffic figures per function, in fixed-size rings: what the dashboard charts and `/metrics` exports.

Memory is bounded by the number of functions, never by traffic: every figure lives in a list
allocated once. A request costs one clock read, a bucket search over a short tuple and a few
integer increments (`RouteMetrics.observe`).

Time series cover the last hour. Request counts have one slot per second (`SECONDS` slots);
latency histograms, status classes and cold starts have one slot per minute (`MINUTES` slots),
enough for p50/p99 over time. A slot remembers which second (minute) it holds and is zeroed when
it is reused, so a quiet function's old figures age out without a timer.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

SECONDS: Final = 3600
MINUTES: Final = 60

#: Upper bounds (seconds) of the latency histogram's buckets; the last bucket is +Inf.
LATENCY_BOUNDS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    150.0,
)
BUCKETS: Final = len(LATENCY_BOUNDS_S) + 1
#: Response classes counted: 1xx..5xx, then requests whose client left before the answer.
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx", "aborted")
ABORTED: Final = 0  # the status `observe` is given for a request whose client went away

#: Which function a route's requests count for; the dashboard's own host has no entry.
RouteKey = tuple[str, str]


class Routed(Protocol):
    """What `GatewayMetrics.track` needs of a `routing.Route`."""

    @property
    def app_name(self) -> str: ...
    @property
    def function_tag(self) -> str: ...


def status_class(status: int) -> int:
    """Index into `STATUS_CLASSES` of an HTTP status (0: the client went away first)."""
    if status == ABORTED:
        return 5
    return min(max(status // 100, 1), 5) - 1


class RouteMetrics:
    """The figures of one function (all versions of it), kept in preallocated rings."""

    __slots__ = (
        "_offset",
        "app",
        "cold_start_seconds_sum",
        "cold_starts",
        "function",
        "latency_buckets",
        "latency_sum_s",
        "min_cold",
        "min_cold_s",
        "min_hist",
        "min_stamp",
        "min_status",
        "queue_sec",
        "sec_count",
        "sec_stamp",
        "status_totals",
    )

    def __init__(self, app: str, function: str, *, clock_offset_s: float | None = None) -> None:
        self.app = app
        self.function = function
        # Rings are indexed by wall-clock second; latencies are measured on the monotonic clock.
        self._offset = time.time() - time.monotonic() if clock_offset_s is None else clock_offset_s
        self.sec_count = [0] * SECONDS
        self.sec_stamp = [-1] * SECONDS
        self.queue_sec = [0] * SECONDS  # the deepest queue sampled in that second
        self.min_stamp = [-1] * MINUTES
        self.min_hist = [0] * (MINUTES * BUCKETS)
        self.min_status = [0] * (MINUTES * len(STATUS_CLASSES))
        self.min_cold = [0] * MINUTES
        self.min_cold_s = [0.0] * MINUTES
        # Cumulative since the server started (Prometheus counters).
        self.status_totals = [0] * len(STATUS_CLASSES)
        self.latency_buckets = [0] * BUCKETS
        self.latency_sum_s = 0.0
        self.cold_starts = 0
        self.cold_start_seconds_sum = 0.0

    def __repr__(self) -> str:
        return f"<cove RouteMetrics {self.app}/{self.function} requests={sum(self.status_totals)}>"

    # -- writers (event loop only)

    def observe(self, status: int, started: float, now: float | None = None) -> None:
        """One request finished with `status` (`ABORTED` if the client left); `started` and `now`
        are `time.monotonic()` readings."""
        if now is None:
            now = time.monotonic()
        latency = now - started
        second = int(now + self._offset)
        i = second % SECONDS
        if self.sec_stamp[i] != second:
            self.sec_stamp[i] = second
            self.sec_count[i] = 0
            self.queue_sec[i] = 0
        self.sec_count[i] += 1
        m = self._minute(second // 60)
        bucket = bisect_left(LATENCY_BOUNDS_S, latency)
        self.min_hist[m * BUCKETS + bucket] += 1
        self.latency_buckets[bucket] += 1
        self.latency_sum_s += latency
        c = status_class(status)
        self.min_status[m * len(STATUS_CLASSES) + c] += 1
        self.status_totals[c] += 1

    def cold_start(self, duration_s: float) -> None:
        """A container of this function became ready `duration_s` after it was launched."""
        m = self._minute(int(time.time()) // 60)
        self.min_cold[m] += 1
        self.min_cold_s[m] += duration_s
        self.cold_starts += 1
        self.cold_start_seconds_sum += duration_s

    def sample_queue(self, depth: int, now_s: float | None = None) -> None:
        """Record the queue depth seen now (the second keeps its deepest sample)."""
        second = int(time.time() if now_s is None else now_s)
        i = second % SECONDS
        if self.sec_stamp[i] != second:
            self.sec_stamp[i] = second
            self.sec_count[i] = 0
            self.queue_sec[i] = 0
        if depth > self.queue_sec[i]:
            self.queue_sec[i] = depth

    def _minute(self, minute: int) -> int:
        m = minute % MINUTES
        if self.min_stamp[m] != minute:
            self.min_stamp[m] = minute
            b, s = m * BUCKETS, m * len(STATUS_CLASSES)
            self.min_hist[b : b + BUCKETS] = _ZERO_BUCKETS
            self.min_status[s : s + len(STATUS_CLASSES)] = _ZERO_STATUS
            self.min_cold[m] = 0
            self.min_cold_s[m] = 0.0
        return m

    # -- readers (allocate freely: they run per dashboard view, not per request)

    @property
    def requests_total(self) -> int:
        return sum(self.status_totals)

    def series(self, now_s: float | None = None, seconds: int = SECONDS) -> Series:
        """The last `seconds` seconds and the last hour's minutes, oldest first."""
        now = int(time.time() if now_s is None else now_s)
        seconds = max(1, min(seconds, SECONDS))
        sec_t, rps, queue = [], [], []
        for second in range(now - seconds + 1, now + 1):
            i = second % SECONDS
            fresh = self.sec_stamp[i] == second
            sec_t.append(second)
            rps.append(self.sec_count[i] if fresh else 0)
            queue.append(self.queue_sec[i] if fresh else 0)
        minute_now = now // 60
        min_t: list[int] = []
        p50: list[float | None] = []
        p99: list[float | None] = []
        status: list[list[int]] = []
        cold: list[int] = []
        cold_avg: list[float | None] = []
        width = len(STATUS_CLASSES)
        for minute in range(minute_now - MINUTES + 1, minute_now + 1):
            m = minute % MINUTES
            fresh = self.min_stamp[m] == minute
            hist = self.min_hist[m * BUCKETS : (m + 1) * BUCKETS] if fresh else [0] * BUCKETS
            min_t.append(minute * 60)
            p50.append(quantile(hist, 0.5))
            p99.append(quantile(hist, 0.99))
            status.append(self.min_status[m * width : (m + 1) * width] if fresh else [0] * width)
            n = self.min_cold[m] if fresh else 0
            cold.append(n)
            cold_avg.append(self.min_cold_s[m] / n if n else None)
        return Series(sec_t, rps, queue, min_t, p50, p99, status, cold, cold_avg)


_ZERO_BUCKETS: Final = [0] * BUCKETS
_ZERO_STATUS: Final = [0] * len(STATUS_CLASSES)


@dataclass(frozen=True)
class Series:
    """A function's charts: per second (requests, queue depth) and per minute (the rest)."""

    seconds: list[int]  # epoch seconds
    requests: list[int]
    queue_depth: list[int]
    minutes: list[int]  # epoch seconds at each minute's start
    p50_s: list[float | None]
    p99_s: list[float | None]
    status: list[list[int]]  # per minute, counts in STATUS_CLASSES order
    cold_starts: list[int]
    cold_start_avg_s: list[float | None]


def quantile(hist: list[int], q: float) -> float | None:
    """The `q` quantile of a latency histogram, interpolated inside its bucket (None: empty).

    >>> quantile([0, 4] + [0] * (BUCKETS - 2), 0.5)
    0.00175
    """
    total = sum(hist)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_S[i - 1] if i > 0 else 0.0
            high = LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else low * 2
            return low + (high - low) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_S[-1]


class GatewayMetrics:
    """Every function's `RouteMetrics`, found by (app, function); kept across redeploys."""

    def __init__(self) -> None:
        self._by_key: dict[RouteKey, RouteMetrics] = {}

    def track(self, routes: Mapping[str, Routed] | Iterable[Routed]) -> None:
        """Have figures for these routes' functions (routes with an empty app name are not counted);
        functions no route names any more are forgotten."""
        found = routes.values() if isinstance(routes, Mapping) else routes
        keep: dict[RouteKey, RouteMetrics] = {}
        for route in found:
            if not route.app_name:
                continue
            key = (route.app_name, route.function_tag)
            if key not in keep:
                keep[key] = self._by_key.get(key) or RouteMetrics(*key)
        self._by_key = keep

    def lookup(self, app: str, function: str) -> RouteMetrics | None:
        return self._by_key.get((app, function))

    def all(self) -> list[RouteMetrics]:
        return list(self._by_key.values())
