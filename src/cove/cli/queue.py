"""`cove queue`: list, create, inspect, feed and delete Queues (values given here are strings)."""

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
from cove.queue import Queue

partition_option = click.option(
    "-p", "--partition", default=None, help="Partition key (default partition if unset)."
)


@click.group("queue")
def queue_group() -> None:
    """Manage cove.Queue objects and inspect their contents."""


@queue_group.command("list")
@json_option
@cove_errors
def list_queues(as_json: bool) -> None:
    """List named Queues."""
    list_objects("queues", "Queue", as_json)


@queue_group.command("create")
@click.argument("name")
@cove_errors
def create(name: str) -> None:
    """Create an empty Queue NAME."""
    create_object("queues", "Queue", name)


@queue_group.command("len")
@click.argument("name")
@partition_option
@click.option("-t", "--total", is_flag=True, help="Count the items of every partition.")
@cove_errors
def length(name: str, partition: str | None, total: bool) -> None:
    """Print the number of items in a partition of Queue NAME (or in all of them, --total)."""
    connect()
    render.out.print(str(Queue.from_name(name).len(partition=partition, total=total)))


@queue_group.command("put")
@click.argument("name")
@click.argument("values", nargs=-1, required=True)
@partition_option
@cove_errors
def put(name: str, values: tuple[str, ...], partition: str | None) -> None:
    """Append VALUES (strings) to Queue NAME."""
    connect()
    Queue.from_name(name).put_many(list(values), block=False, partition=partition)
    render.success(f"Put {len(values)} item(s) into Queue '{name}'.")


@queue_group.command("peek")
@click.argument("name")
@click.argument("n", type=int, default=1)
@partition_option
@json_option
@cove_errors
def peek(name: str, n: int, partition: str | None, as_json: bool) -> None:
    """Print the next N items of Queue NAME without taking them."""
    connect()
    found: list[str] = []
    for value in Queue.from_name(name).iterate(partition=partition):
        if len(found) >= n:
            break
        found.append(show(value))
    if as_json:
        render.out.print_json(json.dumps(found))
        return
    for value in found:
        render.out.print(value, markup=False)


@queue_group.command("clear")
@click.argument("name")
@partition_option
@click.option("-a", "--all", "clear_all", is_flag=True, help="Clear every partition.")
@yes_option
@cove_errors
def clear(name: str, partition: str | None, clear_all: bool, yes: bool) -> None:
    """Drop the items of a partition of Queue NAME (or of all of them, --all)."""
    if not yes:
        click.confirm(
            f"Are you sure you want to irrevocably delete the contents of Queue '{name}'?", abort=True
        )
    connect()
    Queue.from_name(name).clear(partition=partition, all=clear_all)
    render.success(f"Cleared Queue '{name}'.")


@queue_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Do not fail if the Queue does not exist.")
@yes_option
@cove_errors
def delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete Queue NAME and all its items."""
    confirm_delete("Queue", name, yes)
    connect()
    Queue.delete(name, allow_missing=allow_missing)
    render.success(f"Deleted Queue '{name}'.")
