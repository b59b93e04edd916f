"""`cove token`: API tokens for remote clients, and proxy tokens for endpoints that require them."""

from __future__ import annotations

import json

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ensure_server
from cove.config import Settings


@click.group()
def token() -> None:
    """Create, list and revoke tokens (secrets are shown once, stored hashed)."""


@token.command()
@click.option(
    "--proxy", is_flag=True, help="A workspace proxy token (wk-…/ws-…) for requires_proxy_auth endpoints."
)
def create(proxy: bool) -> None:
    """Create a token and print it once."""
    result = ensure_server(Settings.from_env()).request(
        "POST", "/v1/tokens", json={"kind": "proxy" if proxy else "api"}
    )
    render.success(f"Created token {result['id']}. Its secret is shown only now:")
    if proxy:
        render.out.print(f"  Modal-Key: {result['id']}\n  Modal-Secret: {result['secret']}", markup=False)
        render.out.print(f"  or  Authorization: Bearer {result['id']}.{result['secret']}", markup=False)
    else:
        render.out.print(f"  COVE_TOKEN={result['id']}.{result['secret']}", markup=False)


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_tokens(as_json: bool) -> None:
    """List tokens (ids and dates only)."""
    tokens = ensure_server(Settings.from_env()).request("GET", "/v1/tokens")["tokens"]
    if as_json:
        render.out.print_json(json.dumps(tokens))
        return
    rows = [
        (t["id"], t["kind"], render.timestamp(t["created_at"]), "revoked" if t["revoked_at"] else "active")
        for t in tokens
    ]
    render.table("Tokens", ("Id", "Kind", "Created at", "State"), rows)


@token.command()
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke token TOKEN_ID: requests with it are refused from now on."""
    try:
        ensure_server(Settings.from_env()).request("DELETE", f"/v1/tokens/{token_id}")
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    render.success(f"Revoked token {token_id}.")
