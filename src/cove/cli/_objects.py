"""What the `cove dict`, `cove queue` and `cove volume` groups share: connecting, errors, and the
`list`/`create`/`delete` commands and `clear` prompt that are the same for every kind of object."""

from __future__ import annotations

import functools
import json
import queue
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import click

from cove import exception
from cove._object import ServerObject
from cove.cli import _render as render
from cove.cli._client import ControlClient, ensure_server
from cove.config import Settings

P = ParamSpec("P")
R = TypeVar("R")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
yes_option = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")


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


def add_object_commands(
    group: click.Group, kind: type[ServerObject], contents: str, *, created_hint: str | None = None
) -> None:
    """Add `list`, `create NAME` and `delete NAME` for `kind` (Dict, Queue or Volume) to `group`.

    `contents` names what deleting an object also deletes ("entries"); `created_hint` is printed after
    a create, formatted with the object's `name`.
    """
    title, plural = kind._title, kind._plural

    @group.command("list", help=f"List named {title}s.")
    @json_option
    @cove_errors
    def list_objects(as_json: bool) -> None:
        objects: list[dict[str, Any]] = connect().request("GET", f"/v1/{plural}")["objects"]
        if as_json:
            render.out.print_json(json.dumps(objects))
            return
        rows = [(o["name"], o["id"], render.timestamp(o["created_at"])) for o in objects]
        render.table(f"{title}s", ("Name", "Id", "Created at"), rows)

    @group.command("create", help=f"Create an empty {title} NAME.")
    @click.argument("name")
    @cove_errors
    def create(name: str) -> None:
        connect().request("POST", f"/v1/{plural}", json={"name": name})
        render.success(f"Created {title} '{name}'.")
        if created_hint is not None:
            render.info(created_hint.format(name=name))

    @group.command("delete", help=f"Delete {title} NAME and all its {contents}.")
    @click.argument("name")
    @click.option("--allow-missing", is_flag=True, help=f"Do not fail if the {title} does not exist.")
    @yes_option
    @cove_errors
    def delete(name: str, allow_missing: bool, yes: bool) -> None:
        if not yes:
            click.confirm(f"Are you sure you want to irrevocably delete the {title} '{name}'?", abort=True)
        connect()
        kind.delete(name, allow_missing=allow_missing)
        render.success(f"Deleted {title} '{name}'.")


def confirm_clear(title: str, name: str, yes: bool) -> None:
    """Ask before `cove dict clear`/`cove queue clear` empties an object (unless `--yes`)."""
    if not yes:
        click.confirm(
            f"Are you sure you want to irrevocably delete the contents of {title} '{name}'?", abort=True
        )


def show(value: object) -> str:
    """A value as the CLI prints it: strings as they are, anything else as its repr."""
    return value if isinstance(value, str) else repr(value)


__all__ = [
    "add_object_commands",
    "confirm_clear",
    "connect",
    "cove_errors",
    "json_option",
    "show",
    "yes_option",
]
