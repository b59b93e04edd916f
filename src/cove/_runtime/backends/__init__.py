"""Runtime backends, by name: where a container runs.

`local` runs bubblewrap-sandboxed processes on this machine; `ray` runs actors on a Ray cluster.
Each name maps to a factory that imports its backend only when called, so a server on the local
backend never imports Ray. What a backend can run is its `Backend.capabilities`, not its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cove._runtime.backend import Backend
from cove.config import BackendName, Settings


def _local(settings: Settings) -> Backend:
    from cove._runtime.backends.local.backend import LocalBackend

    return LocalBackend(
        settings.home,
        sandbox_setting=settings.sandbox,
        zygote=settings.zygote,
        zygote_window_s=settings.zygote_window_s,
        max_pids=settings.max_pids,
    )


def _ray(settings: Settings) -> Backend:
    from cove._runtime.backends.ray.backend import RayBackend

    return RayBackend(settings.home, address=settings.ray_address, zygote_window_s=settings.zygote_window_s)


#: Backend name -> factory. A new backend adds its line here and its name to `config.BackendName`.
BACKENDS: Mapping[str, Callable[[Settings], Backend]] = {"local": _local, "ray": _ray}


def make_backend(settings: Settings) -> Backend:
    """The backend `settings.backend` names (config has checked the name against `BackendName`)."""
    name: BackendName = settings.backend
    return BACKENDS[name](settings)
