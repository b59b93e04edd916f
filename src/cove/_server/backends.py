"""The runtime backend the server starts containers with, as `settings.backend` names it."""

from __future__ import annotations

from cove._runtime.backend import Backend
from cove._runtime.backends.local.backend import LocalBackend
from cove.config import Settings


def make_backend(settings: Settings) -> Backend:
    """The runtime backend `settings.backend` names; Ray is imported only when it is asked for."""
    if settings.backend == "ray":
        from cove._runtime.backends.ray.backend import RayBackend

        return RayBackend(settings.home, address=settings.ray_address)
    return LocalBackend(
        settings.home,
        sandbox_setting=settings.sandbox,
        zygote=settings.zygote,
        zygote_window_s=settings.zygote_window_s,
        max_pids=settings.max_pids,
    )
