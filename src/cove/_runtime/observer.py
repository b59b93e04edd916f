"""What watches function pools: the `PoolObserver` a pool tells of its events as they happen."""

from __future__ import annotations

from typing import Protocol


class PoolObserver(Protocol):
    """Told of the events of every pool it is registered with (the server registers the dashboard's
    figures with each pool the app registry makes). Called on the event loop: must not block; an
    exception it raises is logged by the pool and goes no further."""

    def container_ready(self, app: str, tag: str, startup_s: float) -> None:
        """A container of function `tag` of app `app` became ready `startup_s` after its launch
        (its cold start)."""
        ...
