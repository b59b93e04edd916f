"""Each setting's default is written once, in `config.ENVIRONMENT`; everything else derives from it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cove import config
from cove._control import logs
from cove._gateway import policy, ratelimit
from cove._runtime import pool
from cove._runtime.backends.local import backend
from cove.config import ENVIRONMENT, Settings


def test_settings_of_an_empty_environment_are_the_fields_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`Settings.from_env()` with no COVE_* variable set and `Settings(...)`'s defaults agree."""
    for name in list(os.environ):
        if name.startswith("COVE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings.from_env()
    with_defaults = [f for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING]
    assert with_defaults, "Settings has defaulted fields"
    for field in with_defaults:
        assert getattr(settings, field.name) == field.default, field.name
    assert (settings.home, settings.port, settings.host) == (tmp_path / ".cove", 8000, "127.0.0.1")


def test_a_field_default_follows_its_table_entry() -> None:
    """The numbers are read from the table, not written again (e.g. the 150 s HTTP limit)."""
    assert Settings.http_timeout_s == float(config.default("COVE_HTTP_TIMEOUT")) == 150.0
    assert Settings.rate_limit_rps == float(config.default("COVE_RATE_LIMIT_RPS")) == 200.0
    with pytest.raises(KeyError, match="COVE_TOKEN has no default"):
        config.default("COVE_TOKEN")
    assert set(ENVIRONMENT) >= {"COVE_HTTP_TIMEOUT", "COVE_RATE_LIMIT_RPS", "COVE_QUEUE_LIMIT"}


def test_the_parts_that_default_a_setting_use_configs_default() -> None:
    """Pools, the rate limiter, gateway limits, zygotes and log rotation default to the settings' values."""
    assert Settings.queue_limit == pool.DEFAULT_MAX_QUEUE
    assert (
        Settings.rate_limit_rps,
        Settings.rate_limit_burst_s,
    ) == (ratelimit.DEFAULT_RATE_PER_S, ratelimit.DEFAULT_BURST_S)
    limits = policy.Limits()
    assert (limits.max_body_bytes, limits.idle_timeout_s, limits.max_connections) == (
        Settings.max_body_bytes,
        Settings.keepalive_timeout_s,
        Settings.max_connections,
    )
    assert Settings.zygote_window_s == backend.DEFAULT_ZYGOTE_WINDOW_S
    assert Settings.log_max_bytes == logs.DEFAULT_MAX_BYTES
