"""Dict and Queue used from *inside* containers, through the scoped control-plane endpoint.

Containers reach /v1/dicts, /v1/queues and /v1/volumes over their app's scoped socket (named by
COVE_CONTAINER_API), and nothing else of the control plane.

A Volume mounted into a container needs no control-plane access at all; that is tested fully in
test_objects.py::test_function_writes_to_a_mounted_volume_that_the_cli_then_sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import CoveEnv
from tests.integration.test_objects import client
from tests.integration.test_objects import cove as cove  # the module's server fixture

pytestmark = pytest.mark.integration

APP = """
import modal

app = modal.App("objects-inside")
results = modal.Dict.from_name("inside-results", create_if_missing=True)
inbox = modal.Queue.from_name("inside-inbox", create_if_missing=True)
vol = modal.Volume.from_name("inside-vol", create_if_missing=True)


@app.function()
def produce(n: int) -> int:
    results["n"] = n
    results.put("squares", [i * i for i in range(n)])
    return results.get("n")


@app.function()
async def consume(timeout: float) -> object:
    item = await inbox.get.aio(timeout=timeout)
    await results.put.aio("consumed", item)
    await inbox.put.aio({"reply": item}, partition="replies")
    return item


@app.function()
def ephemeral_roundtrip() -> list[object]:
    with modal.Dict.ephemeral() as d, modal.Queue.ephemeral() as q:
        d["k"] = "v"
        q.put_many([1, 2])
        return [d["k"], q.get_many(5)]


@app.function()
def volume_via_api() -> list[str]:
    # Not mounted here: the client methods go through the scoped endpoint.
    import io

    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"from a container"), "/note.txt")
    vol.commit()
    return [e.path for e in vol.listdir("/")]


@app.function()
def outside_the_allowlist() -> str:
    from cove._client import control_plane

    try:
        control_plane().request("GET", "/v1/apps")
        return "allowed"
    except modal.exception.Error as exc:
        return str(exc)
"""


@pytest.fixture(scope="module")
def deployed(cove: CoveEnv) -> Iterator[CoveEnv]:
    app_dir = cove.home / "inside-app"
    app_dir.mkdir()
    (app_dir / "objects_inside.py").write_text(APP)
    cove.run("deploy", str(app_dir / "objects_inside.py"), timeout=300)
    try:
        yield cove
    finally:
        cove.run("app", "stop", "objects-inside", "--yes", check=False)


def test_a_container_writes_a_dict_that_a_client_reads(deployed: CoveEnv) -> None:
    out = client(
        deployed,
        """
        n = modal.Function.from_name("objects-inside", "produce").remote(4)
        d = modal.Dict.from_name("inside-results")
        emit([n, d["n"], d["squares"]])
        """,
    )
    assert out == [4, 4, [0, 1, 4, 9]]


def test_a_container_blocks_on_a_queue_until_a_client_puts(deployed: CoveEnv) -> None:
    out = client(
        deployed,
        """
        import time
        call = modal.Function.from_name("objects-inside", "consume").spawn(60)
        time.sleep(1)  # let the container block in get (the result does not depend on it)
        modal.Queue.from_name("inside-inbox").put({"job": 7})
        value = call.get(timeout=90)
        reply = modal.Queue.from_name("inside-inbox").get(timeout=30, partition="replies")
        emit([value, modal.Dict.from_name("inside-results")["consumed"], reply])
        """,
    )
    assert out == [{"job": 7}, {"job": 7}, {"reply": {"job": 7}}]


def test_ephemeral_objects_and_volume_methods_work_inside_a_container(deployed: CoveEnv) -> None:
    out = client(
        deployed,
        """
        ephemeral = modal.Function.from_name("objects-inside", "ephemeral_roundtrip").remote()
        listed = modal.Function.from_name("objects-inside", "volume_via_api").remote()
        data = b"".join(modal.Volume.from_name("inside-vol").read_file("note.txt")).decode()
        emit([ephemeral, listed, data])
        """,
    )
    assert out == [["v", [1, 2]], ["note.txt"], "from a container"]


def test_a_container_cannot_reach_routes_outside_the_allowlist(deployed: CoveEnv) -> None:
    message = client(
        deployed, 'emit(modal.Function.from_name("objects-inside", "outside_the_allowlist").remote())'
    )
    assert message != "allowed"
    assert "cove:" in message or "403" in message, message
