"""The autoscaler: a pure function from a pool's state and the time to how many containers to start
and which idle ones to stop. No I/O, no clock of its own: the pool passes `now` in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cove._spec import FunctionSpec


@dataclass(frozen=True)
class ScalingPolicy:
    """The scaling options of one function (Modal's names, seconds in the unit-bearing ones)."""

    min_containers: int = 0
    max_containers: int | None = None
    buffer_containers: int = 0
    target_inputs: int = 1
    scaledown_window_s: float = 60.0

    @classmethod
    def of(cls, spec: FunctionSpec) -> ScalingPolicy:
        return cls(
            min_containers=spec.min_containers,
            max_containers=spec.max_containers,
            buffer_containers=spec.buffer_containers,
            target_inputs=max(1, spec.effective_target_inputs),
            scaledown_window_s=spec.scaledown_window_s,
        )


@dataclass(frozen=True)
class ContainerView:
    """What the autoscaler knows of one container."""

    id: str
    state: Literal["starting", "ready"]
    in_flight: int = 0
    idle_since: float = 0.0  # when in_flight last dropped to 0 (or when it became ready)


@dataclass(frozen=True)
class Decision:
    start: int = 0
    stop: tuple[str, ...] = ()


def desired_containers(in_flight: int, queued: int, policy: ScalingPolicy) -> int:
    """Containers wanted for this demand: `target_inputs` each, plus the buffer while there is demand,
    never below `min_containers` nor above `max_containers`."""
    demand = in_flight + queued
    wanted = math.ceil(demand / policy.target_inputs)
    if demand > 0:
        wanted += policy.buffer_containers
    wanted = max(wanted, policy.min_containers)
    if policy.max_containers is not None:
        wanted = min(wanted, policy.max_containers)
    return wanted


def decide(now: float, containers: Sequence[ContainerView], queued: int, policy: ScalingPolicy) -> Decision:
    """Start what demand needs at once (scale from zero is immediate; a burst starts as many as the
    queue needs, up to the cap); stop only containers idle for a whole `scaledown_window`, longest
    idle first, and only down to what demand still needs."""
    in_flight = sum(c.in_flight for c in containers)
    wanted = desired_containers(in_flight, queued, policy)
    live = len(containers)
    if wanted > live:
        return Decision(start=wanted - live)
    surplus = live - wanted
    if surplus <= 0:
        return Decision()
    idle = sorted(
        (c for c in containers if c.state == "ready" and c.in_flight == 0),
        key=lambda c: c.idle_since,
    )
    expired = [c.id for c in idle if now - c.idle_since >= policy.scaledown_window_s]
    return Decision(stop=tuple(expired[:surplus]))
