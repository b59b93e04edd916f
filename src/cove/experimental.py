"""`modal.experimental`: the experimental decorators Cove implements (`http_server`)."""

from __future__ import annotations

from cove.endpoints import http_server

__all__ = ["http_server"]
