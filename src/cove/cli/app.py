"""`cove app`: list, stop, logs, history and rollback of apps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ControlClient, ensure_server
from cove.config import Settings


def _client() -> ControlClient:
    return ensure_server(Settings.from_env())


def _fail(exc: exception.Error) -> None:
    render.error(str(exc))
    raise SystemExit(1)


@click.group()
def app() -> None:
    """Manage deployed and ephemeral apps."""


def listed(apps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The apps `cove app list` shows: one row per name, unless a deployed app and a `cove serve` of
    the same name both run. A running app hides a stopped one of its name; among stopped ones the
    deployed app wins. Order: by creation time, as the server lists them."""
    chosen: dict[str, list[dict[str, Any]]] = {}
    for app in apps:
        rows = chosen.setdefault(app["name"], [])
        running = [r for r in rows if r["state"] != "stopped"]
        if app["state"] != "stopped":
            chosen[app["name"]] = [*running, app]
        elif not running and not any(r["kind"] == "deployed" for r in rows):
            chosen[app["name"]] = [app]
    order = {id(app): index for index, app in enumerate(apps)}
    return sorted((app for rows in chosen.values() for app in rows), key=lambda a: order[id(a)])


@app.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts (every app, stopped ones too).")
def list_apps(as_json: bool) -> None:
    """List apps: state (deployed, ephemeral, stopped), containers, version, first deploy time."""
    apps = _client().request("GET", "/v1/apps")["apps"]
    if as_json:
        render.out.print_json(json.dumps(apps))
        return
    rows = [
        (a["name"], a["state"], str(a["containers"]), f"v{a['version']}", render.timestamp(a["created_at"]))
        for a in listed(apps)
    ]
    render.table("Apps", ("Name", "State", "Containers", "Version", "Created at"), rows)


@app.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def stop(name: str, yes: bool) -> None:
    """Stop app NAME: its containers stop, its WebSockets close with 1001 and its URLs answer 404."""
    client = _client()
    try:
        current = client.request("GET", f"/v1/apps/{name}")
        if current["state"] == "stopped":
            render.info(f"App {name} is already stopped.")
            return
        if not yes:
            count = current["containers"]
            what = (
                f"This will immediately terminate {count} running containers."
                if count
                else ("No containers are currently running.")
            )
            click.confirm(f"Are you sure you want to stop app '{name}'? {what}", abort=True)
        client.request("POST", f"/v1/apps/{name}/stop", params={"kind": current["kind"]})
    except exception.Error as exc:
        _fail(exc)
    render.success(f"App {name} stopped.")


@app.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "-n", "--tail", type=click.IntRange(min=0), default=100, show_default=True, help="Lines of history."
)
def logs(name: str, follow: bool, tail: int) -> None:
    """Print the stdout/stderr of NAME's containers, each line with its container id."""
    client = _client()
    try:
        if follow:
            for record in client.stream_lines(
                "GET", f"/v1/apps/{name}/logs", params={"tail": tail, "follow": 1}
            ):
                render.log_record(record)
            return
        text = client.request("GET", f"/v1/apps/{name}/logs", params={"tail": tail})
    except exception.Error as exc:
        _fail(exc)
    for record in text["lines"]:
        render.log_record(record)


@app.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def history(name: str, as_json: bool) -> None:
    """The versions of app NAME, newest last."""
    try:
        versions = _client().request("GET", f"/v1/apps/{name}/history")["versions"]
    except exception.Error as exc:
        _fail(exc)
    if as_json:
        render.out.print_json(json.dumps(versions))
        return
    rows = [
        (
            f"v{v['version']}",
            render.timestamp(v["created_at"]),
            v["deployed_by"],
            v["tag"],
            f"rollback to v{v['rollback_of']}" if v["rollback_of"] else "",
        )
        for v in versions
    ]
    render.table(f"History of {name}", ("Version", "Time deployed", "Deployed by", "Tag", "Note"), rows)


@app.command()
@click.argument("name")
@click.argument("version", required=False)
def rollback(name: str, version: str | None) -> None:
    """Serve an earlier VERSION of NAME again (default: the one before the current), as a new version."""
    number: int | None = None
    if version is not None:
        text = version[1:] if version.lower().startswith("v") else version
        if not text.isdigit():
            raise click.BadParameter(f"{version!r} is not a version such as v3", param_hint="VERSION")
        number = int(text)
    try:
        result = _client().request("POST", f"/v1/apps/{name}/rollback", json={"version": number})
    except exception.Error as exc:
        _fail(exc)
    render.success(f"App {name} rolled back: now serving v{result['version']}.")
