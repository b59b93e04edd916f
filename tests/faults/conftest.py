"""The integration fixtures (a private COVE_HOME, its server, `cove serve`), shared with these tests."""

from tests.integration.conftest import cove_env, serve, shared_cove, shared_serve

__all__ = ["cove_env", "serve", "shared_cove", "shared_serve"]
