"""`cove volume`: create, list, browse, upload to, download from and delete Volumes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath

import click

from cove import exception
from cove.cli import _render as render
from cove.cli._objects import (
    add_object_commands,
    connect,
    cove_errors,
    json_option,
)
from cove.volume import FileEntryType, Volume


@click.group("volume")
def volume_group() -> None:
    """Read and edit cove.Volume volumes."""


add_object_commands(
    volume_group,
    Volume,
    "files",
    created_hint='Use it in your app: @app.function(volumes={{"/data": cove.Volume.from_name("{name}")}})',
)


@volume_group.command("ls")
@click.argument("name")
@click.argument("path", default="/")
@json_option
@cove_errors
def ls(name: str, path: str, as_json: bool) -> None:
    """List the files and directories under PATH (default /) in Volume NAME."""
    connect()
    entries = Volume.from_name(name).listdir(path)
    if as_json:
        rows = [
            {"path": e.path, "type": e.type.name.lower(), "mtime": e.mtime, "size": e.size} for e in entries
        ]
        render.out.print_json(json.dumps(rows))
        return
    table = [
        (
            e.path + ("/" if e.type == FileEntryType.DIRECTORY else ""),
            e.type.name.lower(),
            render.timestamp(e.mtime),
            str(e.size),
        )
        for e in entries
    ]
    render.table(
        f"Directory listing of '{path}' in '{name}'", ("Filename", "Type", "Modified", "Size"), table
    )


@volume_group.command("put")
@click.argument("name")
@click.argument("local_path", type=click.Path(exists=True))
@click.argument("remote_path", default="/")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@cove_errors
def put(name: str, local_path: str, remote_path: str, force: bool) -> None:
    """Upload LOCAL_PATH (a file or directory) to REMOTE_PATH (default /) in Volume NAME."""
    connect()
    local = Path(local_path)
    volume = Volume.from_name(name)
    with volume.batch_upload(force=force) as batch:
        if local.is_dir():
            batch.put_directory(local, remote_path)
        else:
            target = f"{remote_path.rstrip('/')}/{local.name}" if remote_path.endswith("/") else remote_path
            batch.put_file(local, target)
    render.success(f"Uploaded {local_path} to {remote_path} in Volume '{name}'.")


@volume_group.command("get")
@click.argument("name")
@click.argument("remote_path")
@click.argument("local_destination", default=".")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing local files.")
@cove_errors
def get(name: str, remote_path: str, local_destination: str, force: bool) -> None:
    """Download REMOTE_PATH (a file, or a directory recursively) from Volume NAME to LOCAL_DESTINATION
    (default: the current directory; '-' writes a file to standard output)."""
    connect()
    volume = Volume.from_name(name)
    if local_destination == "-":
        for chunk in volume.read_file(remote_path):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    entries = volume.listdir(remote_path, recursive=True)
    remote = PurePosixPath("/" + remote_path.strip("/"))
    single = (
        len(entries) == 1
        and entries[0].type == FileEntryType.FILE
        and PurePosixPath("/" + entries[0].path) == remote
    )
    destination = Path(local_destination)
    files = [e for e in entries if e.type == FileEntryType.FILE]
    for entry in files:
        path = PurePosixPath("/" + entry.path)
        if single:
            target = destination / remote.name if destination.is_dir() else destination
        else:
            target = (
                destination / remote.name / path.relative_to(remote)
                if remote.name
                else destination / path.relative_to(remote)
            )
        if target.exists() and not force:
            raise exception.AlreadyExistsError(
                f"{target} already exists locally. Pass --force to overwrite it."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as file:
            volume.read_file_into_fileobj(str(path), file)
    render.success(f"Downloaded {len(files)} file(s) from Volume '{name}' to {os.fspath(destination)}.")


@volume_group.command("rm")
@click.argument("name")
@click.argument("remote_path")
@click.option("-r", "--recursive", is_flag=True, help="Remove a directory and everything in it.")
@cove_errors
def rm(name: str, remote_path: str, recursive: bool) -> None:
    """Remove REMOTE_PATH from Volume NAME."""
    connect()
    Volume.from_name(name).remove_file(remote_path, recursive=recursive)
    render.success(f"Removed {remote_path} from Volume '{name}'.")


@volume_group.command("cp")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Copy directories recursively.")
@cove_errors
def cp(name: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Copy SOURCE... to DESTINATION (the last path) within Volume NAME."""
    if len(paths) < 2:
        raise click.UsageError("Give at least one source and a destination: cove volume cp NAME SRC... DST")
    connect()
    Volume.from_name(name).copy_files(list(paths[:-1]), paths[-1], recursive=recursive)
    render.success(f"Copied {', '.join(paths[:-1])} to {paths[-1]} in Volume '{name}'.")
