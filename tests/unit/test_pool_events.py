"""What leaves a function pool, typed: cold starts reach the dashboard's figures through its
`PoolObserver`, a refusal carries its kind (a full queue is a limit reached, not a failure), and
the registry's routes reach the gateway without passing through the dashboard."""

from __future__ import annotations

import asyncio

import pytest

from cove import exception
from cove._control.calls import _refused
from cove._dashboard.coldstarts import ColdStarts
from cove._gateway.metrics import GatewayMetrics
from cove._gateway.routing import Route
from cove._gateway.upstream import UpstreamError
from cove._payload import decode_result
from cove._runtime.backend import ContainerHandle
from cove._runtime.pool import FunctionPool
from cove._server.routes import RoutePublisher
from cove._spec import FunctionSpec


def _never_launched() -> ContainerHandle:
    raise AssertionError("no container is started by these tests")


def test_a_full_queue_is_refused_with_the_queue_full_kind() -> None:
    pool = FunctionPool(FunctionSpec(tag="f", module_attr="f"), _never_launched, max_queue=0)

    async def acquire() -> None:
        await pool.acquire()

    with pytest.raises(UpstreamError) as refused:
        asyncio.run(acquire())
    assert (refused.value.status, refused.value.kind) == (503, "queue_full")
    assert refused.value.message.startswith("cove: queue full for f")


def test_a_call_refused_for_a_full_queue_raises_resource_exhausted() -> None:
    refusal = UpstreamError(503, "cove: queue full for f (8 waiting)", kind="queue_full")
    with pytest.raises(exception.ResourceExhaustedError, match=r"could not run fc-1: queue full for f"):
        decode_result(_refused("Function 'f' of app 'a'", "fc-1", refusal), call_id="fc-1")


def test_a_call_refused_for_any_other_reason_raises_execution_error_whatever_its_text() -> None:
    # The kind decides, not the words: a startup failure that mentions "queue full" is still one.
    refusal = UpstreamError(503, "cove: f failed to start: queue full of junk (details: cove app logs)")
    with pytest.raises(exception.ExecutionError) as raised:
        decode_result(_refused("Function 'f' of app 'a'", "fc-2", refusal), call_id="fc-2")
    assert not isinstance(raised.value, exception.ResourceExhaustedError)


def test_cold_starts_count_in_the_figures_of_a_routed_function() -> None:
    metrics = GatewayMetrics()
    metrics.track({"h": Route("shop", "square", None)})
    cold = ColdStarts(metrics)
    cold.container_ready("shop", "square", 0.25)
    figures = metrics.lookup("shop", "square")
    assert figures is not None
    assert (figures.cold_starts, figures.cold_start_seconds_sum) == (1, 0.25)


def test_cold_starts_before_the_routes_go_live_are_counted_once_they_do() -> None:
    metrics = GatewayMetrics()
    cold = ColdStarts(metrics)
    cold.container_ready("shop", "square", 1.5)  # a deploy's first container, before its route swap
    cold.container_ready("shop", "batch", 2.0)  # a function without a URL: no figures, ever
    metrics.track({"h": Route("shop", "square", None)})
    cold.routes_changed()
    figures = metrics.lookup("shop", "square")
    assert figures is not None and figures.cold_starts == 1
    cold.routes_changed()  # what was held is counted once, and the unrouted start is gone
    assert figures.cold_starts == 1
    assert metrics.lookup("shop", "batch") is None


def test_the_registrys_routes_reach_the_gateway_with_the_servers_own_hosts_then_followers_hear() -> None:
    tables: list[dict[str, Route]] = []
    heard: list[int] = []
    dashboard = Route("", "dashboard", None)
    publisher = RoutePublisher(
        lambda table: tables.append(dict(table)),
        {"dashboard.localhost": dashboard},
        on_change=(lambda: heard.append(len(tables)),),
    )
    shop = Route("shop", "square", None)
    publisher.publish({"ws--shop-square.localhost": shop, "dashboard.localhost": shop})
    assert tables == [{"ws--shop-square.localhost": shop, "dashboard.localhost": dashboard}]
    assert heard == [1]  # told after the swap, so held cold starts find their figures
