"""Fault tests start the real thing too: they share the integration fixtures."""

from tests.integration.conftest import cove_env, serve  # noqa: F401 - fixtures re-exported
