"""The serving checks on both backends, and what only a cluster can show: placement over nodes and a
node dying under load. Run the Ray half alone with `pytest -m ray`."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request
from tests.integration.ray.conftest import HEAD_IP, NODE2_IP, RayCluster, ServerProcess

pytestmark = pytest.mark.integration

SERVING_APP = """
import os
import subprocess
import sys

from fastapi import FastAPI

import cove

app = cove.App("serving")
PORT = {port}


@app.function(secrets=[cove.Secret.from_dict({{"TOKEN": "s3cret"}})])
@cove.fastapi_endpoint()
def square(x: int):
    print(f"square of {{x}} asked", flush=True)
    return {{"square": x * x, "token": os.environ.get("TOKEN")}}


@app.function()
@cove.fastapi_endpoint(method="POST")
def echo(item: dict):
    return {{"item": item}}


@app.function()
@cove.asgi_app()
def api():
    web = FastAPI()

    @web.get("/hello/{{name}}")
    def hello(name: str):
        return {{"hello": name}}

    return web


@app.function()
@cove.wsgi_app()
def legacy():
    def web(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi says hi from " + environ["PATH_INFO"].encode()]

    return web


@app.function()
@cove.web_server(PORT, startup_timeout=30)
def files():
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.Popen([sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1", "-d", here])
"""

SCALING_APP = """
import os
import time

import cove

app = cove.App("scaling")


@app.function(max_containers=3, scaledown_window=2)
@cove.fastapi_endpoint()
def slow(seconds: float = 1.0):
    time.sleep(seconds)
    return {"container": os.environ["COVE_CONTAINER_ID"]}


@app.function(max_containers=1)
@cove.fastapi_endpoint()
def crash(die: bool = False):
    if die:
        os._exit(3)
    return {"container": os.environ["COVE_CONTAINER_ID"]}
"""

SPREAD_APP = """
import os
import time

import cove

app = cove.App("spread")


# flask is in the nodes' environment already: Ray's pip plugin clones it and finds it satisfied.
image = cove.Image.debian_slim().pip_install("flask").env({"STAGE": "test"})


@app.function(min_containers=2, max_containers=2, image=image)
@cove.fastapi_endpoint()
def where(sleep: float = 0.0):
    import flask

    time.sleep(sleep)
    return {
        "container": os.environ["COVE_CONTAINER_ID"],
        "stage": os.environ.get("STAGE"),
        "venv": flask.__file__.split("/site-packages/")[0],
    }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deploy(cove_env: CoveEnv, tmp_path: Path, name: str, source: str, version: int = 1) -> dict[str, str]:
    """Deploy `source` as `<name>.py` (from a directory of its own per version); return its endpoint
    URLs by function name."""
    directory = tmp_path / f"{name}-v{version}"
    directory.mkdir()
    (directory / f"{name}.py").write_text(source)
    (directory / "hello.txt").write_text("a file next to the app\n")
    output = cove_env.run("deploy", str(directory / f"{name}.py"), timeout=240).stdout
    urls = {}
    for url in URL_RE.findall(output):
        label = re.match(r"http://[a-z0-9]+--[a-z0-9]+-([a-z0-9-]+)\.localhost", url)
        assert label is not None, url
        urls[label.group(1)] = url
    return urls


def placements(cove_env: CoveEnv, app: str) -> dict[str, str]:
    """Container id -> node IP, from the `placed on Ray node ... (IP)` lines of `cove app logs`."""
    logs = cove_env.run("app", "logs", app).stdout
    return dict(re.findall(r"(ta-[0-9a-f]+) placed on Ray node [0-9a-f]+ \(([\d.]+)\)", logs))


def containers(cove_env: CoveEnv, app: str) -> list[dict[str, object]]:
    listed = json.loads(cove_env.run("container", "list", "--json").stdout)
    return [c for c in listed if c.get("app") == app]


def wait_until(check: object, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout_s:g} s")
        time.sleep(0.2)


def test_every_endpoint_kind_serves_with_secrets_and_logs(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """fastapi_endpoint (GET and POST), asgi_app, wsgi_app and web_server answer through the gateway;
    a secret reaches the container; what the function prints shows in `cove app logs`."""
    urls = deploy(cove_env, tmp_path, "serving", SERVING_APP.format(port=_free_port()))

    answer = host_request("GET", urls["square"] + "/?x=7")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"square": 49, "token": "s3cret"}
    answer = host_request("POST", urls["echo"], json={"a": [1, 2]})
    assert answer.json() == {"item": {"a": [1, 2]}}
    assert host_request("GET", urls["api"] + "/hello/ray").json() == {"hello": "ray"}
    assert host_request("GET", urls["legacy"] + "/page").text == "wsgi says hi from /page"
    answer = host_request("GET", urls["files"] + "/hello.txt")
    assert answer.status_code == 200 and answer.text == "a file next to the app\n"

    wait_until(lambda: "square of 7 asked" in cove_env.run("app", "logs", "serving").stdout, "logged")
    if backend == "ray":
        assert set(placements(cove_env, "serving").values()) <= {HEAD_IP, NODE2_IP}


def test_scales_out_drains_and_replaces_a_crashed_container(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """Six 1 s requests at once scale the function to the 3 containers the cap allows, and run on them
    (the rest queue; on Ray, the containers ready first may serve them all before an actor started
    elsewhere is up); a request in
    flight when a new version takes over completes on the old one; a container that dies answers
    its request 502 and the next request starts a new one."""
    urls = deploy(cove_env, tmp_path, "scaling", SCALING_APP)

    counts: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        burst = [pool.submit(host_request, "GET", urls["slow"]) for _ in range(6)]
        while not all(f.done() for f in burst) or not counts:
            counts.append(sum(1 for c in containers(cove_env, "scaling") if c["function"] == "slow"))
        answers = [f.result() for f in burst]
    assert [a.status_code for a in answers] == [200] * 6
    served = {a.json()["container"] for a in answers}
    assert max(counts) == 3
    if backend == "local":
        assert len(served) == 3
    else:  # forks (ready in ms) or the deploy's warm one may take every request before the rest are up
        assert len(served) <= 3

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(host_request, "GET", urls["slow"] + "/?seconds=4")
        wait_until(
            lambda: any(c["in_flight"] for c in containers(cove_env, "scaling") if c["function"] == "slow"),
            "in flight",
        )
        draining = {c["id"] for c in containers(cove_env, "scaling")}
        deploy(cove_env, tmp_path, "scaling", SCALING_APP, version=2)
        assert pending.result().status_code == 200
    wait_until(lambda: not draining & {c["id"] for c in containers(cove_env, "scaling")}, "drained")

    first = host_request("GET", urls["crash"]).json()["container"]
    died = host_request("GET", urls["crash"] + "/?die=true")
    assert died.status_code == 502, died.text
    assert "exited" in died.text or "closed the connection" in died.text
    again = host_request("GET", urls["crash"])
    assert again.status_code == 200
    assert again.json()["container"] != first
    logs = cove_env.run("app", "logs", "scaling").stdout
    assert f"{first} container exited with code 3" in logs


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["ray"])
def test_containers_spread_over_both_nodes(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """Two containers of one function land on the two nodes; the image's packages and env reach them
    through the actor's runtime_env; `cove container list` shows both."""
    urls = deploy(cove_env, tmp_path, "spread", SPREAD_APP)
    # The deploy waits for its first container only for a while (a runtime_env being built may take
    # longer under load): wait for both to be placed.
    wait_until(lambda: len(placements(cove_env, "spread")) >= 2, "both containers placed")

    assert sorted(placements(cove_env, "spread").values()) == [HEAD_IP, NODE2_IP]
    assert len(containers(cove_env, "spread")) == 2
    seen = set()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for answer in pool.map(lambda _: host_request("GET", urls["where"] + "/?sleep=0.3"), range(8)):
            assert answer.json()["stage"] == "test"
            assert "runtime_resources/pip" in answer.json()["venv"]  # the runtime_env's virtualenv
            seen.add(answer.json()["container"])
    assert seen == set(placements(cove_env, "spread"))


@pytest.mark.ray
@pytest.mark.parametrize("backend", ["ray"])
def test_a_dying_node_costs_only_its_in_flight_requests(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path, ray_cluster: RayCluster
) -> None:
    """Under steady load on two containers (one per node), the second node is killed outright: the
    one request in flight on it gets 502, every other request succeeds, and the pool replaces the
    container on the surviving node."""
    urls = deploy(cove_env, tmp_path, "spread", SPREAD_APP)
    wait_until(lambda: len(placements(cove_env, "spread")) >= 2, "both containers placed")
    placed = placements(cove_env, "spread")
    assert sorted(placed.values()) == [HEAD_IP, NODE2_IP]
    doomed = next(cid for cid, ip in placed.items() if ip == NODE2_IP)

    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            answer = host_request("GET", urls["where"] + "/?sleep=0.2", timeout=120)
            body = answer.json()["container"] if answer.status_code == 200 else answer.text
            results.append((time.monotonic(), answer.status_code, body))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(1 for _, _, body in results if body == doomed) >= 3, "serving on node 2")
        killed_at = time.monotonic()
        ray_cluster.kill_node2()
        wait_until(
            lambda: (
                len(placements(cove_env, "spread")) == 3
                and any(t > killed_at and s == 200 and b not in placed for t, s, b in results)
            ),
            "replaced on the head node",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
        ray_cluster.add_node2()  # for the tests after this one
        for leftover in Path(tempfile.gettempdir()).glob(f"cove-ray-{doomed}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # the dead node's disk, on this machine

    failures = [(status, body) for _, status, body in results if status != 200]
    # At most one request was in flight on the node (its container takes one at a time).
    assert len(failures) <= 1, failures
    assert all(status == 502 for status, _ in failures), failures
    replacement = set(placements(cove_env, "spread")) - set(placed)
    assert [placements(cove_env, "spread")[cid] for cid in replacement] == [HEAD_IP]
    logs = cove_env.run("app", "logs", "spread").stdout
    assert f"{doomed} container lost" in logs
    listed = {c["id"] for c in containers(cove_env, "spread")}
    assert doomed not in listed and len(listed) == 2
