"""Dict, Queue and Volume against a real server: from separate client processes (Modal-style scripts),
through the `cove dict/queue/volume` CLI, mounted into a real sandboxed container, and across a restart.

One server serves the module; every client is a fresh `python -c` process that talks to it over the
unix socket of its COVE_HOME.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CoveEnv, _processes_with_env

pytestmark = pytest.mark.integration

PRELUDE = """
import asyncio
import json
import queue

import cove as modal  # the client side of a Modal script, unchanged but for this line

def emit(value):
    print(json.dumps(value))
"""

VOLUME_APP = """
import os

import modal

app = modal.App("volapp")
vol = modal.Volume.from_name("app-data", create_if_missing=True)


@app.function(volumes={"/data": vol})
def write(name: str, text: str) -> list[str]:
    os.makedirs("/data/out", exist_ok=True)
    with open(f"/data/out/{name}", "w") as f:
        f.write(text)
    # A container may leave anything in its Volume, a symlink to the host's files included.
    if not os.path.lexists("/data/escape"):
        os.symlink("/etc", "/data/escape")
    vol.commit()  # cheap here: the mount is the Volume's own directory
    vol.reload()
    return sorted(os.listdir("/data/out"))


@app.function(volumes={"/data": vol})
def read(name: str) -> str:
    with open(f"/data/{name}") as f:
        return f.read()
"""


@pytest.fixture(scope="module")
def cove() -> Iterator[CoveEnv]:
    """A private COVE_HOME whose server the first CLI command starts; stopped (and swept) at the end."""
    home = Path(tempfile.mkdtemp(prefix="cove-"))
    env = CoveEnv(home)
    (home / "client").mkdir()
    try:
        env.run("dict", "list")  # starts the server
        yield env
    finally:
        with contextlib.suppress(Exception):
            env.run("server", "stop", check=False, timeout=60)
        for pid in _processes_with_env("COVE_HOME", str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def client(cove: CoveEnv, code: str, *, check: bool = True) -> Any:
    """Run `code` in a new Python process; return what it passed to `emit(...)` (its last output line)."""
    process = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=cove.env,
        cwd=cove.home / "client",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if not check:
        return process
    assert process.returncode == 0, f"client failed:\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return json.loads(process.stdout.splitlines()[-1])


def start_client(cove: CoveEnv, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=cove.env,
        cwd=cove.home / "client",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- Dict ----------------------------------------------------------------------------------------


def test_dict_is_shared_between_client_processes_with_blocking_and_aio_forms(cove: CoveEnv) -> None:
    """One process writes with item syntax and `put`; another reads with `.aio` forms and iterators."""
    client(
        cove,
        """
        d = modal.Dict.from_name("shared", create_if_missing=True)
        d["a"] = 1
        d[("t", 2)] = {"nested": [1, 2]}
        assert d.put("b", 2) is True
        assert d.put("b", 99, skip_if_exists=True) is False
        d.update({"c": 3}, e=5)
        emit(True)
        """,
    )
    out = client(
        cove,
        """
        async def main():
            d = modal.Dict.from_name("shared")
            missing = await d.get.aio("nope", "default")
            popped = await d.pop.aio("e")
            try:
                d.pop("e")
                pop_again = "no KeyError"
            except KeyError:
                pop_again = "KeyError"
            keys = [k async for k in d.keys.aio()]
            return {
                "a": d["a"], "t": d[("t", 2)], "b": await d.get.aio("b"), "missing": missing,
                "contains": [await d.contains.aio("c"), "zz" in d], "len": [len(d), await d.len.aio()],
                "popped": popped, "pop_again": pop_again, "keys": [str(k) for k in keys],
                "items": sorted(str(i) for i in d.items()),
            }
        emit(asyncio.run(main()))
        """,
    )
    assert out["a"] == 1 and out["t"] == {"nested": [1, 2]} and out["b"] == 2
    assert out["missing"] == "default" and out["contains"] == [True, False]
    assert out["len"] == [4, 4] and out["popped"] == 5 and out["pop_again"] == "KeyError"
    assert out["keys"] == ["a", "('t', 2)", "b", "c"]
    cleared = client(
        cove,
        """
        d = modal.Dict.from_name("shared")
        try:
            d["gone"]
        except KeyError as exc:
            missing = repr(exc)
        d.clear()
        emit([missing, len(d)])
        """,
    )
    assert cleared == ["KeyError('gone')", 0]


def test_dict_names_ephemeral_dicts_and_delete(cove: CoveEnv) -> None:
    """A missing name is Modal's NotFoundError; an ephemeral Dict is gone after its block; delete works."""
    out = client(
        cove,
        """
        errors = []
        try:
            modal.Dict.from_name("never-made")["x"]
        except modal.exception.NotFoundError as exc:
            errors.append(str(exc))
        try:
            modal.Dict.from_name("bad name!")
        except modal.exception.InvalidError as exc:
            errors.append(str(exc))
        with modal.Dict.ephemeral() as tmp:
            tmp["k"] = "v"
            inside = tmp["k"]
            object_id = tmp.object_id
        after = None
        try:
            tmp["k"]
        except modal.exception.NotFoundError:
            after = "gone"

        async def ephemeral_aio():
            async with modal.Dict.ephemeral() as d:
                await d.put.aio(1, 2)
                return await d.get.aio(1)

        made = modal.Dict.from_name("to-delete", create_if_missing=True)
        made["x"] = 1
        modal.Dict.delete("to-delete")
        modal.Dict.delete("to-delete", allow_missing=True)
        try:
            modal.Dict.from_name("to-delete")["x"]
            deleted = "still there"
        except modal.exception.NotFoundError:
            deleted = "deleted"
        emit([errors, inside, object_id, after, asyncio.run(ephemeral_aio()), deleted])
        """,
    )
    errors, inside, object_id, after, aio_value, deleted = out
    assert "Dict 'never-made' not found" in errors[0] and "create_if_missing=True" in errors[0]
    assert "Invalid Dict name 'bad name!'" in errors[1]
    assert inside == "v" and object_id.startswith("di-") and after == "gone"
    assert aio_value == 2 and deleted == "deleted"
    names = [d["name"] for d in json.loads(cove.run("dict", "list", "--json").stdout)]
    assert "shared" in names and "to-delete" not in names and None not in names


# -- Queue ---------------------------------------------------------------------------------------


def test_queue_fifo_partitions_len_clear_and_iterate(cove: CoveEnv) -> None:
    """Items come out in order per partition; partitions are independent; iterate reads in place."""
    out = client(
        cove,
        """
        q = modal.Queue.from_name("jobs", create_if_missing=True)
        q.put("a")
        q.put_many(["b", "c"])
        q.put(1, partition="p1")
        q.put(2, partition="p2", partition_ttl=60)
        lens = [q.len(), q.len(partition="p1"), q.len(total=True)]
        peeked = list(q.iterate())
        first = q.get()
        rest = q.get_many(10)
        empty = q.get(block=False)
        none_many = q.get_many(3, block=False)
        p1 = q.get(partition="p1")
        q.clear(partition="p2")
        after_clear = q.len(total=True)
        emit([lens, peeked, first, rest, empty, none_many, p1, after_clear])
        """,
    )
    assert out == [[3, 1, 5], ["a", "b", "c"], "a", ["b", "c"], None, [], 1, 0]


def test_blocking_get_waits_for_a_put_from_another_process(cove: CoveEnv) -> None:
    """A blocking `get` (sync and `.aio`) long-polls until another process puts; a timeout raises
    `queue.Empty`, as Modal does."""
    consumer = start_client(
        cove,
        """
        q = modal.Queue.from_name("handoff", create_if_missing=True)
        print("waiting", flush=True)
        first = q.get(timeout=90)
        second = asyncio.run(q.get.aio(timeout=90, partition="side"))
        emit([first, second])
        """,
    )
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "waiting"
        client(
            cove,
            """
            q = modal.Queue.from_name("handoff")
            q.put({"job": 1})
            asyncio.run(q.put.aio("side-item", partition="side"))
            emit(True)
            """,
        )
        stdout, stderr = consumer.communicate(timeout=90)
        assert consumer.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[-1]) == [{"job": 1}, "side-item"]
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.communicate()
    out = client(
        cove,
        """
        q = modal.Queue.from_name("handoff")
        results = []
        try:
            q.get(timeout=0.5)
        except queue.Empty as exc:
            results.append("Empty: " + str(exc))
        try:
            asyncio.run(q.get_many.aio(2, timeout=0.5))
        except queue.Empty:
            results.append("Empty")
        emit(results)
        """,
    )
    assert out[0].startswith("Empty: ") and "0.5 s" in out[0] and out[1] == "Empty"


def test_queue_limits_are_modals_with_clear_errors(cove: CoveEnv) -> None:
    """5,000 items per partition (then `queue.Full`), 1 MiB per item, 64-byte partition keys."""
    out = client(
        cove,
        """
        errors = []
        with modal.Queue.ephemeral() as q:
            q.put_many(list(range(5000)))
            try:
                q.put("one too many", block=False)
            except queue.Full as exc:
                errors.append(str(exc))
            try:
                q.put("still full", timeout=0.2)
            except queue.Full:
                errors.append("Full after timeout")
            q.put("other partitions have room", partition="p")
            try:
                q.put(b"x" * (1024 * 1024 + 1))
            except modal.exception.InvalidError as exc:
                errors.append(str(exc))
            try:
                q.put(1, partition="k" * 65)
            except modal.exception.InvalidError as exc:
                errors.append(str(exc))
            got = q.get_many(5000)
            q.put("room again", block=False)
        emit([errors, len(got), got[:3]])
        """,
    )
    errors, count, head = out
    assert "full (5,000 items)" in errors[0]
    assert errors[1] == "Full after timeout"
    assert "1 MiB" in errors[2] and "limit" in errors[2]
    assert "1 to 64 bytes" in errors[3]
    assert count == 5000 and head == [0, 1, 2]


# -- CLI -----------------------------------------------------------------------------------------


def test_dict_and_queue_cli(cove: CoveEnv) -> None:
    """`cove dict create/put/get/items/clear/delete`, `cove queue create/put/len/peek/clear/delete`."""
    cove.run("dict", "create", "cli-dict")
    assert "already exists" in cove.run("dict", "create", "cli-dict", check=False).stderr
    cove.run("dict", "put", "cli-dict", "greeting", "hello")
    assert cove.run("dict", "get", "cli-dict", "greeting").stdout.strip() == "hello"
    missing = cove.run("dict", "get", "cli-dict", "nope", check=False)
    assert missing.returncode == 1 and "'nope' is not in Dict 'cli-dict'" in missing.stderr
    assert json.loads(cove.run("dict", "items", "cli-dict", "--json").stdout) == [["greeting", "hello"]]
    cove.run("dict", "clear", "cli-dict", "--yes")
    cove.run("dict", "delete", "cli-dict", "--yes")
    gone = cove.run("dict", "get", "cli-dict", "greeting", check=False)
    assert gone.returncode == 1 and "Dict 'cli-dict' not found" in gone.stderr

    cove.run("queue", "create", "cli-queue")
    cove.run("queue", "put", "cli-queue", "x", "y")
    cove.run("queue", "put", "cli-queue", "z", "--partition", "p")
    assert cove.run("queue", "len", "cli-queue", "--total").stdout.strip() == "3"
    assert json.loads(cove.run("queue", "peek", "cli-queue", "5", "--json").stdout) == ["x", "y"]
    assert client(cove, 'emit(modal.Queue.from_name("cli-queue").get_many(5))') == ["x", "y"]
    cove.run("queue", "clear", "cli-queue", "--all", "--yes")
    assert cove.run("queue", "len", "cli-queue", "--total").stdout.strip() == "0"
    assert "cli-queue" in cove.run("queue", "list").stdout
    cove.run("queue", "delete", "cli-queue", "--yes")
    assert "cli-queue" not in cove.run("queue", "list").stdout


# -- Volume --------------------------------------------------------------------------------------


def test_function_writes_to_a_mounted_volume_that_the_cli_then_sees(cove: CoveEnv) -> None:
    """`volumes={"/data": vol}` mounts the Volume read-write in the sandbox; `cove volume ls/get` see
    what the container wrote; a file put with the CLI is read by the next call."""
    app_dir = cove.home / "app"
    app_dir.mkdir()
    (app_dir / "volapp.py").write_text(VOLUME_APP)
    cove.run("deploy", str(app_dir / "volapp.py"), timeout=300)
    listing = client(
        cove, 'emit(modal.Function.from_name("volapp", "write").remote("a.txt", "from the container"))'
    )
    assert listing == ["a.txt"]

    entries = json.loads(cove.run("volume", "ls", "app-data", "/out", "--json").stdout)
    assert [(e["path"], e["type"], e["size"]) for e in entries] == [("out/a.txt", "file", 18)]
    assert cove.run("volume", "get", "app-data", "/out/a.txt", "-").stdout == "from the container"
    local = cove.home / "client" / "downloaded"
    cove.run("volume", "get", "app-data", "/out", str(local))
    assert (local / "out" / "a.txt").read_text() == "from the container"
    assert "app-data" in cove.run("volume", "list").stdout

    upload = cove.home / "client" / "note.txt"
    upload.write_text("from the CLI")
    cove.run("volume", "put", "app-data", str(upload), "/notes/")
    assert (
        client(cove, 'emit(modal.Function.from_name("volapp", "read").remote("notes/note.txt"))')
        == "from the CLI"
    )
    again = cove.run("volume", "put", "app-data", str(upload), "/notes/note.txt", check=False)
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr
    cove.run("volume", "put", "app-data", str(upload), "/notes/note.txt", "--force")

    # The symlink the container made points at the host's /etc: nothing follows it.
    for args in (
        ("volume", "get", "app-data", "/escape/hostname", "-"),
        ("volume", "ls", "app-data", "/escape/ssl"),
        ("volume", "put", "app-data", str(upload), "/escape/planted"),
        ("volume", "rm", "app-data", "/escape/hostname"),
        ("volume", "cp", "app-data", "/escape/hostname", "/copied"),
    ):
        refused = cove.run(*args, check=False)
        assert refused.returncode == 1, args
        assert "does not follow symlinks" in refused.stderr, (args, refused.stderr)
    assert not Path("/etc/planted").exists() and Path("/etc/hostname").exists()
    link = json.loads(cove.run("volume", "ls", "app-data", "/escape", "--json").stdout)
    assert [(e["path"], e["type"]) for e in link] == [("escape", "symlink")]  # the link itself

    cove.run("volume", "cp", "app-data", "/out/a.txt", "/copy.txt")
    cove.run("volume", "rm", "app-data", "/out", "-r")
    top = {e["path"] for e in json.loads(cove.run("volume", "ls", "app-data", "--json").stdout)}
    assert top == {"copy.txt", "escape", "notes"}
    cove.run("app", "stop", "volapp", "--yes")
    cove.run("volume", "delete", "app-data", "--yes")
    assert "app-data" not in cove.run("volume", "list").stdout


def test_volume_client_methods_and_path_escapes(cove: CoveEnv) -> None:
    """batch_upload/listdir/read_file/copy_files/remove_file with `.aio`; `..` and symlinks planted in
    the Volume's directory cannot reach outside it."""
    outside = cove.home / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    out = client(
        cove,
        """
        import io
        vol = modal.Volume.from_name("client-vol", create_if_missing=True)
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"one"), "/dir/one.txt")
        async def main():
            async with vol.batch_upload(force=True) as batch:
                batch.put_file(io.BytesIO(b"two"), "dir/two.txt")
            entries = await vol.listdir.aio("/dir")
            data = b"".join([c async for c in vol.read_file.aio("dir/two.txt")])
            await vol.copy_files.aio(["dir/one.txt"], "copied.txt")
            await vol.commit.aio()
            await vol.reload.aio()
            return [e.path for e in entries], data.decode()
        listed, two = asyncio.run(main())
        vol.remove_file("dir/two.txt")
        after = sorted(e.path for e in vol.listdir("/", recursive=True))
        errors = []
        for bad in ["../outside/secret.txt", "dir/../../x", "/../../etc/passwd"]:
            try:
                b"".join(vol.read_file(bad))
            except modal.exception.InvalidError as exc:
                errors.append(str(exc))
        emit([listed, two, after, errors, vol.object_id])
        """,
    )
    listed, two, after, errors, object_id = out
    assert listed == ["dir/one.txt", "dir/two.txt"] and two == "two"
    assert after == ["copied.txt", "dir", "dir/one.txt"]
    assert len(errors) == 3 and all("'..'" in e for e in errors)

    # Symlinks planted directly in the Volume's directory (as a container could): refused, not followed.
    root = cove.home / "volumes" / object_id
    (root / "link-dir").symlink_to(outside)
    (root / "link-file").symlink_to(outside / "secret.txt")
    out = client(
        cove,
        """
        import io
        vol = modal.Volume.from_name("client-vol")
        errors = []
        attempts = [
            lambda: b"".join(vol.read_file("link-file")),
            lambda: b"".join(vol.read_file("link-dir/secret.txt")),
            lambda: vol.listdir("link-dir/anything"),
            lambda: vol.remove_file("link-dir/secret.txt"),
            lambda: vol.copy_files(["link-file"], "stolen.txt"),
            lambda: vol.copy_files(["dir/one.txt"], "link-dir/planted.txt"),
        ]
        for attempt in attempts:
            try:
                attempt()
                errors.append("allowed")
            except modal.exception.InvalidError as exc:
                errors.append(str(exc))
        with vol.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(b"replaced"), "link-file")  # replaces the link itself
        vol.remove_file("link-dir")  # removes the link, not the directory it points at
        link = [(e.path, e.type.name) for e in vol.listdir("link-file")]
        emit([errors, b"".join(vol.read_file("link-file")).decode(), link])
        """,
    )
    errors, replaced, link = out
    assert len(errors) == 6 and all("does not follow symlinks" in e for e in errors), errors
    assert replaced == "replaced" and link == [["link-file", "FILE"]]
    assert (outside / "secret.txt").read_text() == "host secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


# -- restart -------------------------------------------------------------------------------------


def test_named_objects_survive_a_server_restart_and_ephemeral_ones_do_not(cove: CoveEnv) -> None:
    """Named Dicts, Queues and Volumes keep their contents across `cove server stop` and a new server;
    an ephemeral object left behind by a client that died is gone."""
    ids = client(
        cove,
        """
        import os
        d = modal.Dict.from_name("durable-dict", create_if_missing=True)
        d["k"] = [1, 2, 3]
        q = modal.Queue.from_name("durable-queue", create_if_missing=True)
        q.put_many(["first", "second"])
        q.put("p", partition="part")
        vol = modal.Volume.from_name("durable-vol", create_if_missing=True)
        import io
        with vol.batch_upload(force=True) as batch:
            batch.put_file(io.BytesIO(b"kept"), "kept.txt")
        eph = modal.Dict.ephemeral().__enter__()  # never exited: the process dies holding it
        eph["x"] = 1
        emit([eph.object_id])
        """,
    )
    cove.run("server", "stop")
    cove.run("dict", "list")  # a new server, on the same COVE_HOME
    out = client(
        cove,
        """
        d = modal.Dict.from_name("durable-dict")
        q = modal.Queue.from_name("durable-queue")
        vol = modal.Volume.from_name("durable-vol")
        data = b"".join(vol.read_file("kept.txt")).decode()
        emit([d["k"], q.get_many(5), q.len(partition="part"), data])
        """,
    )
    assert out == [[1, 2, 3], ["first", "second"], 1, "kept"]
    gone = client(
        cove,
        f"""
        from cove._client import control_plane
        try:
            control_plane().request("GET", "/v1/dicts/{ids[0]}/len")
            emit("still there")
        except modal.exception.NotFoundError:
            emit("gone")
        """,
    )
    assert gone == "gone"
