"""The autoscaling policy, as a pure function of pool state and an injected clock."""

from __future__ import annotations

import pytest

from cove._runtime.autoscaler import ContainerView, Decision, ScalingPolicy, decide, desired_containers
from cove._spec import FunctionSpec


def ready(cid: str, in_flight: int = 0, idle_since: float = 0.0) -> ContainerView:
    return ContainerView(cid, "ready", in_flight, idle_since)


def starting(cid: str) -> ContainerView:
    return ContainerView(cid, "starting")


def test_scale_from_zero_starts_one_at_once() -> None:
    assert decide(0.0, [], queued=1, policy=ScalingPolicy()) == Decision(start=1)


def test_nothing_to_do_without_demand_or_minimum() -> None:
    assert decide(0.0, [], queued=0, policy=ScalingPolicy()) == Decision()


def test_burst_starts_as_many_as_the_queue_needs_up_to_the_cap() -> None:
    policy = ScalingPolicy(max_containers=8)
    assert decide(0.0, [], queued=200, policy=policy) == Decision(start=8)
    assert decide(0.0, [], queued=5, policy=policy) == Decision(start=5)


def test_starting_containers_count_against_demand() -> None:
    policy = ScalingPolicy(max_containers=8)
    views = [starting("a"), starting("b")]
    assert decide(0.0, views, queued=3, policy=policy) == Decision(start=1)
    assert decide(0.0, views, queued=2, policy=policy) == Decision()


def test_target_inputs_packs_requests_per_container() -> None:
    policy = ScalingPolicy(target_inputs=4)
    assert decide(0.0, [], queued=4, policy=policy) == Decision(start=1)
    assert decide(0.0, [], queued=5, policy=policy) == Decision(start=2)
    assert decide(0.0, [ready("a", in_flight=4)], queued=1, policy=policy) == Decision(start=1)


def test_at_the_cap_requests_queue_instead_of_starting_more() -> None:
    policy = ScalingPolicy(max_containers=2)
    views = [ready("a", in_flight=1), ready("b", in_flight=1)]
    assert decide(0.0, views, queued=10, policy=policy) == Decision()


def test_min_containers_are_started_and_never_stopped() -> None:
    policy = ScalingPolicy(min_containers=2, scaledown_window_s=2)
    assert decide(0.0, [], queued=0, policy=policy) == Decision(start=2)
    views = [ready("a", idle_since=0.0), ready("b", idle_since=0.0)]
    assert decide(1000.0, views, queued=0, policy=policy) == Decision()


def test_buffer_containers_only_while_active() -> None:
    policy = ScalingPolicy(buffer_containers=2, scaledown_window_s=2)
    assert decide(0.0, [], queued=1, policy=policy) == Decision(start=3)
    assert decide(0.0, [], queued=0, policy=policy) == Decision()
    views = [ready("a", in_flight=1), ready("b", idle_since=0.0), ready("c", idle_since=0.0)]
    assert decide(100.0, views, queued=0, policy=policy) == Decision()


def test_idle_containers_stop_only_after_the_scaledown_window() -> None:
    policy = ScalingPolicy(scaledown_window_s=60)
    views = [ready("a", idle_since=100.0)]
    assert decide(159.9, views, queued=0, policy=policy) == Decision()
    assert decide(160.0, views, queued=0, policy=policy) == Decision(stop=("a",))


def test_busy_containers_are_never_stopped() -> None:
    policy = ScalingPolicy(scaledown_window_s=2)
    views = [ready("a", in_flight=1, idle_since=0.0), ready("b", idle_since=0.0)]
    # demand 1 needs one container; only the idle one may go
    assert decide(100.0, views, queued=0, policy=policy) == Decision(stop=("b",))


def test_scale_down_stops_the_longest_idle_first_and_only_the_surplus() -> None:
    policy = ScalingPolicy(scaledown_window_s=10, target_inputs=1)
    views = [ready("new", idle_since=50.0), ready("old", idle_since=10.0), ready("mid", idle_since=30.0)]
    assert decide(100.0, views, queued=0, policy=policy) == Decision(stop=("old", "mid", "new"))
    assert decide(100.0, views, queued=1, policy=policy) == Decision(stop=("old", "mid"))


def test_starting_containers_are_not_stopped() -> None:
    policy = ScalingPolicy(scaledown_window_s=2)
    assert decide(100.0, [starting("a")], queued=0, policy=policy) == Decision()


@pytest.mark.parametrize(
    ("in_flight", "queued", "expected"),
    [(0, 0, 1), (1, 0, 1), (3, 0, 1), (3, 2, 2), (20, 20, 4)],
)
def test_desired_containers_combines_all_options(in_flight: int, queued: int, expected: int) -> None:
    policy = ScalingPolicy(min_containers=1, max_containers=4, target_inputs=4)
    assert desired_containers(in_flight, queued, policy) == expected


def test_policy_reads_the_function_spec() -> None:
    spec = FunctionSpec(
        tag="f",
        module_attr="f",
        min_containers=1,
        max_containers=3,
        buffer_containers=1,
        scaledown_window_s=5,
        max_inputs=8,
        target_inputs=6,
    )
    assert ScalingPolicy.of(spec) == ScalingPolicy(1, 3, 1, 6, 5)
    assert ScalingPolicy.of(FunctionSpec(tag="g", module_attr="g", max_inputs=4)).target_inputs == 4
