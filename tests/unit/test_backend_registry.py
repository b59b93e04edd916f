"""The backend registry maps every configurable backend name to a factory, and each backend states
what it can run (issue 14, item 3)."""

from __future__ import annotations

from typing import get_args

from cove._runtime.backends import BACKENDS
from cove._runtime.backends.local import backend as local
from cove._runtime.backends.ray import backend as ray
from cove.config import BackendName


def test_every_backend_name_has_a_factory() -> None:
    assert set(BACKENDS) == set(get_args(BackendName))


def test_local_containers_run_images_built_here_and_reach_host_paths() -> None:
    assert local.LocalBackend.capabilities.builds_images
    assert local.LocalBackend.capabilities.host_paths


def test_ray_installs_recipes_itself_and_reaches_no_host_paths() -> None:
    assert not ray.RayBackend.capabilities.builds_images
    assert not ray.RayBackend.capabilities.host_paths
