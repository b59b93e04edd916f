"""`cove container`: list and stop the containers of running apps."""

from __future__ import annotations

import json

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ensure_server
from cove.config import Settings


@click.group()
def container() -> None:
    """Show and stop containers."""


@container.command("list")
@click.option("--app", "app_name", help="Only the containers of this app.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_containers(app_name: str | None, as_json: bool) -> None:
    """List live containers: id, app, function, state, requests in flight and served."""
    params = {"app": app_name} if app_name else {}
    try:
        client = ensure_server(Settings.from_env())
        items = client.request("GET", "/v1/containers", params=params)["containers"]
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    if as_json:
        render.out.print_json(json.dumps(items))
        return
    rows = [
        (
            c["id"],
            c["app"],
            c["function"],
            c["state"],
            str(c["in_flight"]),
            str(c["served"]),
            f"{c['uptime_s']:.0f}s",
        )
        for c in items
    ]
    columns = ("Container ID", "App", "Function", "State", "In flight", "Served", "Up")
    render.table("Containers", columns, rows)


@container.command()
@click.argument("container_id")
def stop(container_id: str) -> None:
    """Stop CONTAINER_ID after its in-flight requests; the pool starts a replacement if needed."""
    try:
        ensure_server(Settings.from_env()).request("DELETE", f"/v1/containers/{container_id}")
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    render.success(f"Container {container_id} stopped.")
