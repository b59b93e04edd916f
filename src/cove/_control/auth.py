"""Token auth for the control API over TCP (the unix socket's file mode is the local auth)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cove._control.store import Store
from cove._error_body import error_body
from cove.exception import AuthError

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def parse_bearer(value: str) -> tuple[str, str] | None:
    """`Bearer <id>.<secret>` → (id, secret); anything else → None."""
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token_id, dot, secret = credentials.strip().partition(".")
    if not dot or not token_id or not secret:
        return None
    return token_id, secret


class TokenAuthMiddleware:
    """Require an API token created with `cove token create`; mark the request as remote."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        credentials = parse_bearer(header)
        if credentials is None or not self.store.check_token(*credentials, kind="api"):
            refusal = AuthError(
                "Missing or invalid token. Create one on the server with `cove token create` "
                "and set COVE_TOKEN=<id>.<secret> on the client."
            )
            body = json.dumps(error_body(refusal)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope["cove.remote"] = True
        await self.app(scope, receive, send)
