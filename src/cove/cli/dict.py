"""`cove dict`: list, create, inspect, edit and delete Dicts (keys and values given here are strings)."""

from __future__ import annotations

import json

import click

from cove.cli import _render as render
from cove.cli._objects import (
    add_object_commands,
    confirm_clear,
    connect,
    cove_errors,
    json_option,
    show,
    yes_option,
)
from cove.dict import Dict


@click.group("dict")
def dict_group() -> None:
    """Manage cove.Dict objects and inspect their contents."""


add_object_commands(dict_group, Dict, "entries")


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
    confirm_clear("Dict", name, yes)
    connect()
    Dict.from_name(name).clear()
    render.success(f"Cleared Dict '{name}'.")
