"""`cove dict`: list, create, inspect, edit and delete Dicts (keys and values given here are strings)."""

from __future__ import annotations

import json

import click

from cove.cli import _render as render
from cove.cli._objects import (
    confirm_delete,
    connect,
    cove_errors,
    create_object,
    json_option,
    list_objects,
    show,
    yes_option,
)
from cove.dict import Dict


@click.group("dict")
def dict_group() -> None:
    """Manage cove.Dict objects and inspect their contents."""


@dict_group.command("list")
@json_option
@cove_errors
def list_dicts(as_json: bool) -> None:
    """List named Dicts."""
    list_objects("dicts", "Dict", as_json)


@dict_group.command("create")
@click.argument("name")
@cove_errors
def create(name: str) -> None:
    """Create an empty Dict NAME."""
    create_object("dicts", "Dict", name)


@dict_group.command("get")
@click.argument("name")
@click.argument("key")
@cove_errors
def get(name: str, key: str) -> None:
    """Print the value of KEY (a string key) in Dict NAME."""
    connect()
    try:
        value = Dict.from_name(name)[key]
    except KeyError:
        render.error(f"Key {key!r} is not in Dict '{name}'.")
        raise SystemExit(1) from None
    render.out.print(show(value), markup=False)


@dict_group.command("put")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@cove_errors
def put(name: str, key: str, value: str) -> None:
    """Set KEY to VALUE (both strings) in Dict NAME."""
    connect()
    Dict.from_name(name)[key] = value
    render.success(f"Set {key!r} in Dict '{name}'.")


@dict_group.command("items")
@click.argument("name")
@click.argument("n", type=int, default=20)
@click.option("--all", "show_all", is_flag=True, help="Print every entry, not only the first N.")
@json_option
@cove_errors
def items(name: str, n: int, show_all: bool, as_json: bool) -> None:
    """Print the first N (default 20) entries of Dict NAME."""
    connect()
    rows: list[tuple[str, str]] = []
    for key, value in Dict.from_name(name).items():
        if not show_all and len(rows) >= n:
            break
        rows.append((show(key), show(value)))
    if as_json:
        render.out.print_json(json.dumps([list(r) for r in rows]))
        return
    render.table(f"Dict '{name}'", ("Key", "Value"), rows)


@dict_group.command("clear")
@click.argument("name")
@yes_option
@cove_errors
def clear(name: str, yes: bool) -> None:
    """Remove every entry of Dict NAME."""
    if not yes:
        click.confirm(
            f"Are you sure you want to irrevocably delete the contents of Dict '{name}'?", abort=True
        )
    connect()
    Dict.from_name(name).clear()
    render.success(f"Cleared Dict '{name}'.")


@dict_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Do not fail if the Dict does not exist.")
@yes_option
@cove_errors
def delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete Dict NAME and all its entries."""
    confirm_delete("Dict", name, yes)
    connect()
    Dict.delete(name, allow_missing=allow_missing)
    render.success(f"Deleted Dict '{name}'.")
