"""The scoped control API's allowlist: what a container of an app may ask the control plane."""

from __future__ import annotations

import pytest

from cove._control.container_api import AppScope, refusal

SERVED = AppScope("ephemeral", "shop")
DEPLOYED = AppScope("deployed", "shop")


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/functions/shop/square", "kind=ephemeral"),
        ("GET", "/v1/functions/other/square", ""),
        ("POST", "/v1/calls", "app=shop&function=square&kind=ephemeral&wait=50"),
        ("POST", "/v1/calls", "app=other&function=square&wait=0"),
        ("POST", "/v1/calls/stream", "app=shop&function=count&kind=ephemeral"),
        ("GET", "/v1/calls/fc-0123", "timeout=50"),
        ("PUT", "/v1/dicts/cache/items/a", ""),
        ("POST", "/v1/queues/jobs", ""),
        ("DELETE", "/v1/volumes", ""),
    ],
)
def test_calls_and_objects_are_allowed(method: str, path: str, query: str) -> None:
    assert refusal(SERVED, method, path, query) is None


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/v1/tokens", ""),
        ("GET", "/v1/tokens", ""),
        ("GET", "/v1/secrets", ""),
        ("POST", "/v1/secrets", ""),
        ("PUT", "/v1/apps/deployed/shop", ""),
        ("POST", "/v1/apps/shop/stop", ""),
        ("GET", "/v1/apps/shop/logs", ""),
        ("GET", "/v1/containers", ""),
        ("POST", "/v1/server/stop", ""),
        ("POST", "/v1/bundles", ""),
        ("GET", "/v1/health", ""),
        ("GET", "/v1/dicts/../secrets", ""),
        ("GET", "/v1/dictsx", ""),
        ("GET", "/v1//dicts", ""),
        ("POST", "/v1/calls", "app=other&function=f&kind=ephemeral"),  # another served app
        ("POST", "/v1/calls", "app=shop&kind=deployed&kind=ephemeral&function=f"),  # ambiguous
        ("GET", "/v1/calls/fc-1/extra", ""),
        ("DELETE", "/v1/calls/fc-1", ""),
    ],
)
def test_everything_else_is_refused_with_a_reason(method: str, path: str, query: str) -> None:
    assert refusal(SERVED, method, path, query)


def test_a_deployed_apps_container_cannot_call_a_served_app_of_the_same_name() -> None:
    query = "app=shop&function=f&kind=ephemeral"
    assert refusal(DEPLOYED, "POST", "/v1/calls", query)
    assert refusal(DEPLOYED, "POST", "/v1/calls", "app=shop&function=f") is None
