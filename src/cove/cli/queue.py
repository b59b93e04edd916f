"""`cove queue`: list, create, inspect, feed and delete Queues (values given here are strings)."""

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
from cove.queue import Queue

partition_option = click.option(
    "-p", "--partition", default=None, help="Partition key (default partition if unset)."
)


@click.group("queue")
def queue_group() -> None:
    """Manage cove.Queue objects and inspect their contents."""


add_object_commands(queue_group, Queue, "items")


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
    confirm_clear("Queue", name, yes)
    connect()
    Queue.from_name(name).clear(partition=partition, all=clear_all)
    render.success(f"Cleared Queue '{name}'.")
