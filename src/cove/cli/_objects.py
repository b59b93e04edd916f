"""What the `cove dict`, `cove queue` and `cove volume` groups share: connecting, listing, errors."""

from __future__ import annotations

import functools
import json
import queue
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._client import ControlClient, ensure_server
from cove.config import Settings

P = ParamSpec("P")
R = TypeVar("R")


def connect() -> ControlClient:
    """The server of COVE_HOME (started in the background if none runs), or COVE_SERVER_URL's."""
    return ensure_server(Settings.from_env())


def cove_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print a Cove error (not found, invalid path, a full Queue...) as one line and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (exception.Error, queue.Full, queue.Empty) as exc:
            render.error(str(exc))
            raise SystemExit(1) from None

    return wrapper


def list_objects(plural: str, title: str, as_json: bool) -> None:
    client = connect()
    objects: list[dict[str, Any]] = client.request("GET", f"/v1/{plural}")["objects"]
    if as_json:
        render.out.print_json(json.dumps(objects))
        return
    rows = [(o["name"], o["id"], render.timestamp(o["created_at"])) for o in objects]
    render.table(f"{title}s", ("Name", "Id", "Created at"), rows)


def create_object(plural: str, title: str, name: str) -> None:
    connect().request("POST", f"/v1/{plural}", json={"name": name})
    render.success(f"Created {title} '{name}'.")


def confirm_delete(title: str, name: str, yes: bool) -> None:
    if not yes:
        click.confirm(f"Are you sure you want to irrevocably delete the {title} '{name}'?", abort=True)


def show(value: object) -> str:
    """A value as the CLI prints it: strings as they are, anything else as its repr."""
    return value if isinstance(value, str) else repr(value)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
yes_option = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")

__all__ = [
    "confirm_delete",
    "connect",
    "cove_errors",
    "create_object",
    "json_option",
    "list_objects",
    "show",
    "yes_option",
]
