"""`cove secret`: create, list and delete named secrets (values are never printed)."""

from __future__ import annotations

import json

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ensure_server
from cove.config import Settings
from cove.secret import parse_dotenv


@click.group()
def secret() -> None:
    """Manage secrets that functions receive as environment variables."""


@secret.command("create")
@click.argument("name")
@click.argument("keyvalues", nargs=-1, metavar="KEY=VALUE...")
@click.option(
    "--from-dotenv",
    "dotenv_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read keys from a .env file.",
)
@click.option(
    "--from-json",
    "json_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read keys from a JSON object file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing secret.")
def create(
    name: str, keyvalues: tuple[str, ...], dotenv_path: str | None, json_path: str | None, force: bool
) -> None:
    """Create secret NAME from KEY=VALUE pairs and/or files."""
    values: dict[str, str] = {}
    if dotenv_path:
        with open(dotenv_path, encoding="utf-8") as file:
            values.update(parse_dotenv(file.read()))
    if json_path:
        with open(json_path, encoding="utf-8") as file:
            data = json.load(file)
        if not isinstance(data, dict):
            raise click.BadParameter(
                "the JSON file must hold one object of KEY: VALUE", param_hint="--from-json"
            )
        values.update({str(k): str(v) for k, v in data.items()})
    for item in keyvalues:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item.split('=')[0]!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        values[key] = value
    if not values:
        raise click.UsageError("No keys given. Example: cove secret create my-token AUTH_TOKEN=s3cr3t")
    client = ensure_server(Settings.from_env())
    try:
        client.request("POST", "/v1/secrets", json={"name": name, "values": values, "force": force})
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    keys = ", ".join(f"'{k}'" for k in values)
    render.success(f"Created a new secret '{name}' with the key(s) {keys}")
    render.info("Use it in your app:")
    render.out.print(f'    @app.function(secrets=[cove.Secret.from_name("{name}")])', markup=False)


@secret.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_secrets(as_json: bool) -> None:
    """List secrets: names, keys and creation dates (never values)."""
    client = ensure_server(Settings.from_env())
    secrets = client.request("GET", "/v1/secrets")["secrets"]
    if as_json:
        render.out.print_json(json.dumps(secrets))
        return
    rows = [(s["name"], ", ".join(s["keys"]), render.timestamp(s["created_at"])) for s in secrets]
    render.table("Secrets", ("Name", "Keys", "Created at"), rows)


@secret.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete secret NAME."""
    if not yes:
        click.confirm(f"Are you sure you want to irrevocably delete the secret '{name}'?", abort=True)
    client = ensure_server(Settings.from_env())
    try:
        client.request("DELETE", f"/v1/secrets/{name}")
    except exception.Error as exc:
        render.error(str(exc))
        raise SystemExit(1) from None
    render.success(f"Deleted secret '{name}'.")
