"""Cold starts from zygotes: which process a container comes from, which hooks run where, failures.

Each test runs with zygotes (the default) and with `COVE_ZYGOTE=0`, where every container is a
fresh worker process. The endpoints report what the process knows: the pid that imported the module,
and the runs of `@enter(snap=True)` and `@enter()` with the pid each ran in. Pids are those of the
sandbox's PID namespace; a container forked from a function zygote sees the zygote's pid for the
import and the snap hook, and its own for `@enter()`. The server log names how each container
started (`event=started via=function|image|process`).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

HOOKS_APP = """
import os
import uuid

import cove

IMPORTED_BY = os.getpid()
SNAPS = []
ENTERS = []

app = cove.App("zyg")


@app.cls(scaledown_window=2, enable_memory_snapshot=True)
class Counter:
    @cove.enter(snap=True)
    def snapshot(self):
        SNAPS.append([os.getpid(), uuid.uuid4().hex])

    @cove.enter()
    def boot(self):
        ENTERS.append([os.getpid(), uuid.uuid4().hex])

    @cove.fastapi_endpoint()
    def hooks(self):
        return {
            "version": "VERSION",
            "pid": os.getpid(),
            "container": os.environ["COVE_CONTAINER_ID"],
            "imported_by": IMPORTED_BY,
            "snaps": SNAPS,
            "enters": ENTERS,
        }


@app.function(scaledown_window=2)
@cove.asgi_app()
def web():
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/")
    def root():
        return {"pid": os.getpid(), "imported_by": IMPORTED_BY, "container": os.environ["COVE_CONTAINER_ID"]}

    return api
"""

SCRATCH_APP = """
import os
import time

import cove

app = cove.App("scratch")


@app.function(min_containers=2, max_containers=2)
@cove.fastapi_endpoint()
def scratch(name: str):
    for directory in ("/tmp", os.getcwd()):
        with open(os.path.join(directory, name), "w") as file:
            file.write(name)
    time.sleep(1.0)  # so that two requests at once need both containers
    return {
        "container": os.environ["COVE_CONTAINER_ID"],
        "tmp": sorted(os.listdir("/tmp")),
        "cwd": sorted(n for n in os.listdir(os.getcwd()) if n.startswith("mark-")),
    }
"""

BROKEN_IMPORT = """
import cove

app = cove.App("broken-import")

if not cove.is_local():  # imports on the developer's machine, fails in every container
    raise RuntimeError("DATABASE_URL is not set")


@app.function()
@cove.fastapi_endpoint()
def hello():
    return "unreachable"
"""


@pytest.fixture(params=["zygote", "no-zygote"])
def mode(request: pytest.FixtureRequest, cove_env: CoveEnv) -> Iterator[str]:
    """Both paths: zygotes on (the default) and COVE_ZYGOTE=0."""
    cove_env.env["COVE_ZYGOTE"] = "1" if request.param == "zygote" else "0"
    yield str(request.param)


def _deploy(cove: CoveEnv, path: Path, source: str) -> dict[str, str]:
    path.write_text(source)
    urls = URL_RE.findall(cove.run("deploy", str(path), timeout=300).stdout)
    return {url.split("--", 1)[1].split(".localhost")[0]: url for url in urls}


def _containers(cove: CoveEnv, app: str, function: str) -> list[str]:
    listing = json.loads(cove.run("container", "list", "--app", app, "--json").stdout)
    return [c["id"] for c in listing if c["function"] == function]


def _wait_scaled_to_zero(cove: CoveEnv, app: str, function: str) -> None:
    deadline = time.monotonic() + 30
    while _containers(cove, app, function):
        assert time.monotonic() < deadline, f"{function} never scaled to zero"
        time.sleep(0.25)


def _started_via(cove: CoveEnv, container_id: str) -> str:
    """How the server says it started the container: function, image (zygote) or process."""
    text = (cove.home / "server.log").read_text()
    match = re.search(rf"container={container_id} event=started via=(\w+)", text)
    assert match is not None, f"no startup line for {container_id} in the server log:\n{text[-3000:]}"
    return match.group(1)


def test_first_request_after_scale_to_zero_and_hook_counts(
    tmp_path: Path, cove_env: CoveEnv, mode: str
) -> None:
    """Scale from zero twice. With zygotes, both containers are forks of one function zygote: the
    module was imported and the snap hook ran once, in the zygote (same pid and token for both),
    while `@enter()` ran once in each container. Without, each container did all of it itself."""
    urls = _deploy(cove_env, tmp_path / "zyg.py", HOOKS_APP)
    url = urls["zyg-counter-hooks"]
    first = host_request("GET", url).json()
    _wait_scaled_to_zero(cove_env, "zyg", "Counter.hooks")
    second = host_request("GET", url).json()
    assert first["container"] != second["container"]
    for seen in (first, second):
        assert len(seen["snaps"]) == 1 and len(seen["enters"]) == 1
        assert seen["enters"][0][0] == seen["pid"]  # @enter() ran in the container itself
    if mode == "zygote":
        assert [_started_via(cove_env, s["container"]) for s in (first, second)] == ["function", "function"]
        assert first["snaps"] == second["snaps"]  # one run of the snap hook, in the zygote
        zygote_pid = first["snaps"][0][0]
        assert zygote_pid == first["imported_by"] == second["imported_by"]
        assert zygote_pid not in (first["pid"], second["pid"])  # the zygote serves no request
    else:
        assert [_started_via(cove_env, s["container"]) for s in (first, second)] == ["process", "process"]
        assert first["snaps"][0][1] != second["snaps"][0][1]
        for seen in (first, second):
            assert seen["snaps"][0][0] == seen["imported_by"] == seen["pid"]
    assert first["enters"][0][1] != second["enters"][0][1]


def test_without_a_function_zygote_the_image_zygote_serves(tmp_path: Path, cove_env: CoveEnv) -> None:
    """COVE_ZYGOTE_WINDOW=0: the function zygote goes with the last container, so the first request
    after scale to zero forks from the image zygote: the container imports the module and runs both
    hooks itself. An asgi_app starts the same way."""
    cove_env.env["COVE_ZYGOTE_WINDOW"] = "0"
    urls = _deploy(cove_env, tmp_path / "zyg.py", HOOKS_APP)
    for tag, function in (("zyg-counter-hooks", "Counter.hooks"), ("zyg-web", "web")):
        host_request("GET", urls[tag]).raise_for_status()
        _wait_scaled_to_zero(cove_env, "zyg", function)
        response = host_request("GET", urls[tag])
        assert response.status_code == 200
        seen = response.json()
        assert _started_via(cove_env, seen["container"]) == "image"
        assert seen["imported_by"] == seen["pid"]
        if "snaps" in seen:
            assert seen["snaps"][0][0] == seen["enters"][0][0] == seen["pid"]


def test_asgi_app_scales_from_zero_through_the_function_zygote(
    tmp_path: Path, cove_env: CoveEnv, mode: str
) -> None:
    """An asgi_app's factory runs in each container; its module comes from the zygote when there is one."""
    urls = _deploy(cove_env, tmp_path / "zyg.py", HOOKS_APP)
    host_request("GET", urls["zyg-web"]).raise_for_status()
    _wait_scaled_to_zero(cove_env, "zyg", "web")
    response = host_request("GET", urls["zyg-web"])
    assert response.status_code == 200
    seen = response.json()
    if mode == "zygote":
        assert _started_via(cove_env, seen["container"]) == "function"
        assert seen["imported_by"] != seen["pid"]
    else:
        assert _started_via(cove_env, seen["container"]) == "process"
        assert seen["imported_by"] == seen["pid"]


def test_an_import_error_is_a_503_naming_it(tmp_path: Path, cove_env: CoveEnv, mode: str, serve) -> None:
    """A module that fails to import in the container: under `cove serve`, 503 with the exception's
    first line, the traceback in the app's logs (not in the response). (`cove deploy` refuses such
    a version: tests/faults/test_deploy_faults.py.)"""
    app_file = tmp_path / "broken_import.py"
    app_file.write_text(BROKEN_IMPORT)
    (url,) = serve(str(app_file)).urls(1)
    response = host_request("GET", url)
    assert response.status_code == 503
    assert response.text.startswith("cove: hello failed to start: RuntimeError: DATABASE_URL is not set")
    assert "Traceback" not in response.text
    deadline = time.monotonic() + 30
    while "Traceback" not in (logs := cove_env.run("app", "logs", "broken-import", "--tail", "200").stdout):
        assert time.monotonic() < deadline, logs
        time.sleep(0.25)
    assert "RuntimeError: DATABASE_URL is not set" in logs


def _zygote_ids(cove: CoveEnv) -> list[str]:
    text = (cove.home / "server.log").read_text()
    return re.findall(r"function=Counter\.hooks zygote=(zy-[0-9a-f]+) event=zygote_ready", text)


def _running(names: list[str]) -> set[str]:
    """Which of these process names (a zygote shows its id as its name) are running."""
    found = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name in names:
            found.add(name)
    return found


def test_an_edit_under_serve_replaces_the_function_zygote(tmp_path: Path, cove_env: CoveEnv, serve) -> None:
    """`cove serve` reloads an edit into a new function zygote (the new code, a new snap run); the old
    version's zygote exits once its containers are gone."""
    app_file = tmp_path / "zyg.py"
    app_file.write_text(HOOKS_APP.replace("VERSION", "one"))
    proc = serve(str(app_file))
    url = next(u for u in proc.urls(2) if "-hooks" in u)
    first = host_request("GET", url).json()
    assert first["version"] == "one"
    app_file.write_text(HOOKS_APP.replace("VERSION", "two"))
    deadline = time.monotonic() + 60
    while (second := host_request("GET", url).json())["version"] != "two":
        assert time.monotonic() < deadline, "the edit was never served"
        time.sleep(0.2)
    assert second["snaps"][0][1] != first["snaps"][0][1]
    assert _started_via(cove_env, second["container"]) == "function"
    old, new = _zygote_ids(cove_env)[:2]
    deadline = time.monotonic() + 30
    while old in _running([old, new]):
        assert time.monotonic() < deadline, "the old function zygote is still running"
        time.sleep(0.25)
    assert _running([old, new]) == {new}


@pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}")
def test_forks_of_one_zygote_do_not_share_tmp_or_their_working_directory(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """Two containers forked from one function zygote write a file each into /tmp and their working
    directory at the same time: each sees only its own."""

    (url,) = _deploy(cove_env, tmp_path / "scratch.py", SCRATCH_APP).values()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda n: host_request("GET", url, params={"name": n}), ["mark-a", "mark-b"]))
    seen = [a.json() for a in answers]
    assert len({s["container"] for s in seen}) == 2
    for name, view in zip(["mark-a", "mark-b"], seen, strict=True):
        assert [n for n in view["tmp"] if n.startswith("mark-")] == [name]
        assert view["cwd"] == [name]
        assert _started_via(cove_env, view["container"]) == "function"
