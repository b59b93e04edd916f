"""Warm spares on Ray: a container scaled from zero is a fork of a zygote actor's function zygote; each
node the version runs on gets one spare (never two), so a container scaled out to either node is a
fork; a spare goes when its node has held none of the version's containers for the zygote window; a
zygote actor that dies takes only its forks; no process a container started outlives it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import CoveEnv, host_request
from tests.integration.ray.conftest import HEAD_IP, NODE2_IP, RayCluster, ServerProcess
from tests.integration.ray.test_ray_backend import containers, deploy, placements, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.ray]

WHO_APP = """
import os

import cove

app = cove.App("who")


@app.function(max_containers=1, scaledown_window=2)
@cove.fastapi_endpoint()
def who():
    return {"container": os.environ["COVE_CONTAINER_ID"], "pid": os.getpid(), "ppid": os.getppid()}
"""

CHILD_APP = """
import os
import subprocess
import sys

import cove

app = cove.App("child")


@app.function(max_containers=1, scaledown_window=2)
@cove.web_server({port}, startup_timeout=30)
def files():
    child = subprocess.Popen([sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"])
    with open({pids!r}, "a") as file:
        file.write(f"{{child.pid}}\\n")
"""

PAIR_APP = """
import os

import cove

app = cove.App("pair")


@app.function(min_containers=2, max_containers=2)
@cove.fastapi_endpoint()
def pair():
    return {"container": os.environ["COVE_CONTAINER_ID"]}
"""

_PAIR_READY = re.compile(r"function=pair zygote=(zy-[0-9a-f]+) event=ray_zygote_ready .* host=([\d.]+)")
_FORKED = re.compile(r"(ta-[0-9a-f]+) placed on Ray node [0-9a-f]+ \(([\d.]+)\), forked by zygote (zy-\w+)")
_READY = re.compile(r"function=who zygote=(zy-[0-9a-f]+) event=ray_zygote_ready .* pid=(\d+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _scaled_to_zero(cove_env: CoveEnv, app: str) -> None:
    wait_until(lambda: not containers(cove_env, app), f"{app} scaled to zero")


def _zygotes(server: ServerProcess) -> list[tuple[str, int]]:
    return [(zid, int(pid)) for zid, pid in _READY.findall(server.output())]


@pytest.mark.parametrize("backend", ["ray"])
def test_a_container_scaled_from_zero_is_a_fork_of_the_function_zygote_on_its_node(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """Once the version's zygote actor is ready, the next container is forked by its function zygote
    (its parent process carries the zygote's id as its name) and says so in the app's logs."""
    urls = deploy(cove_env, tmp_path, "who", WHO_APP)
    wait_until(lambda: _zygotes(server), "a zygote actor ready")
    zygote_id, _ = _zygotes(server)[0]
    _scaled_to_zero(cove_env, "who")

    answer = host_request("GET", urls["who"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    with open(f"/proc/{body['ppid']}/comm") as file:
        assert file.read().strip() == zygote_id[:15]
    logs = cove_env.run("app", "logs", "who").stdout
    assert f"{body['container']} placed on Ray node" in logs
    assert f"forked by zygote {zygote_id}" in logs


@pytest.mark.parametrize("backend", ["ray"])
def test_a_dying_zygote_actor_takes_its_forks_and_the_next_request_starts_a_new_container(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """SIGKILL the zygote actor while its fork serves: the fork's process goes too (no orphan), the
    pool forgets it as lost, the next request is served by a new container, and a new zygote actor
    is made for later scale-ups."""
    urls = deploy(cove_env, tmp_path, "who", WHO_APP)
    wait_until(lambda: _zygotes(server), "a zygote actor ready")
    zygote_id, actor_pid = _zygotes(server)[0]
    _scaled_to_zero(cove_env, "who")
    forked = host_request("GET", urls["who"]).json()

    os.kill(actor_pid, signal.SIGKILL)
    for leftover in Path(tempfile.gettempdir()).glob(f"cove-ray-{zygote_id}-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # the killed actor's directory (docs/ray.md)
    wait_until(
        lambda: not _alive(forked["pid"]) and not _alive(forked["ppid"]), "the fork and its zygote gone"
    )
    wait_until(lambda: forked["container"] not in {c["id"] for c in containers(cove_env, "who")}, "forgotten")
    again = host_request("GET", urls["who"], timeout=120)
    assert again.status_code == 200, again.text
    assert again.json()["container"] != forked["container"]
    assert f"{forked['container']} container lost" in cove_env.run("app", "logs", "who").stdout
    wait_until(lambda: len(_zygotes(server)) >= 2, "a new zygote actor ready")


@pytest.mark.parametrize("backend", ["ray"])
def test_no_process_a_container_started_outlives_it(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """A web_server's `http.server` child goes with its container, whether the container was an actor
    (the deploy's first one) or a fork (scaled from zero later), on scale-down and on `app stop`."""
    pids = tmp_path / "children.txt"
    urls = deploy(cove_env, tmp_path, "child", CHILD_APP.format(port=_free_port(), pids=str(pids)))
    assert host_request("GET", urls["files"] + "/").status_code == 200
    _scaled_to_zero(cove_env, "child")
    first = int(pids.read_text().split()[0])
    wait_until(lambda: not _alive(first), "the actor's child gone")

    deadline = time.monotonic() + 120
    while "forked by zygote" not in cove_env.run("app", "logs", "child").stdout:
        assert time.monotonic() < deadline, "no container was forked"
        _scaled_to_zero(cove_env, "child")
        assert host_request("GET", urls["files"] + "/").status_code == 200
    cove_env.run("app", "stop", "child", "--yes")
    children = [int(pid) for pid in pids.read_text().split()]
    assert len(children) >= 2
    wait_until(lambda: not any(_alive(pid) for pid in children), "every child gone")


@pytest.mark.parametrize("backend", ["ray"])
def test_each_node_in_use_gets_one_spare_and_a_container_scaled_out_to_either_node_is_a_fork(
    backend: str, server: ServerProcess, cove_env: CoveEnv, tmp_path: Path
) -> None:
    """Two containers (actors, spread) land on the two nodes, and each node gets a zygote actor of the
    version. A container stopped on the second node is replaced there by a fork of that node's spare,
    then one on the head by a fork of the head's; after those scale-ups the version still has exactly
    one spare per node."""
    deploy(cove_env, tmp_path, "pair", PAIR_APP)
    wait_until(lambda: len(placements(cove_env, "pair")) >= 2, "both containers placed")
    assert sorted(placements(cove_env, "pair").values()) == [HEAD_IP, NODE2_IP]
    wait_until(lambda: len(_PAIR_READY.findall(server.output())) >= 2, "a zygote actor on each node")
    spares = dict((host, zid) for zid, host in _PAIR_READY.findall(server.output()))
    assert sorted(spares) == [HEAD_IP, NODE2_IP]

    for ip in (NODE2_IP, HEAD_IP):
        placed = placements(cove_env, "pair")
        victim = next(c["id"] for c in containers(cove_env, "pair") if placed.get(str(c["id"])) == ip)
        cove_env.run("container", "stop", str(victim))

        def replaced(ip: str = ip, victim: object = victim) -> bool:
            listed = {str(c["id"]) for c in containers(cove_env, "pair")}
            return victim not in listed and len(listed) == 2 and set(placements(cove_env, "pair")) >= listed

        wait_until(replaced, f"the container on {ip} replaced")
        new = next(c for c in {str(c["id"]) for c in containers(cove_env, "pair")} if c not in placed)
        logs = cove_env.run("app", "logs", "pair").stdout
        forks = {cid: (host, zid) for cid, host, zid in _FORKED.findall(logs)}
        assert forks.get(new) == (ip, spares[ip]), logs

    ready = _PAIR_READY.findall(server.output())
    assert sorted(host for _, host in ready) == [HEAD_IP, NODE2_IP], ready


def test_a_spare_goes_when_its_node_has_held_none_of_the_version_for_the_zygote_window(
    cove_env: CoveEnv, tmp_path: Path, ray_cluster: RayCluster
) -> None:
    """With COVE_ZYGOTE_WINDOW=3, the spare made when the container landed is shut down 3 s after the
    version scaled to zero (its actor process exits), and the next container is an actor again."""
    cove_env.env["RAY_USAGE_STATS_ENABLED"] = "0"
    cove_env.env["COVE_ZYGOTE_WINDOW"] = "3"
    server = ServerProcess(cove_env, ["--backend", "ray", "--ray-address", ray_cluster.address])
    try:
        urls = deploy(cove_env, tmp_path, "who", WHO_APP)
        wait_until(lambda: _zygotes(server), "a zygote actor ready")
        zygote_id, actor_pid = _zygotes(server)[0]
        _scaled_to_zero(cove_env, "who")
        wait_until(lambda: f"zygote={zygote_id} event=ray_zygote_idle" in server.output(), "the spare idle")
        wait_until(lambda: not _alive(actor_pid), "the zygote actor gone")

        answer = host_request("GET", urls["who"], timeout=120)
        assert answer.status_code == 200, answer.text
        logs = cove_env.run("app", "logs", "who").stdout
        placed = [line for line in logs.splitlines() if "placed on" in line]
        mine = [line for line in placed if f"{answer.json()['container']} placed on Ray node" in line]
        assert len(mine) == 1 and "forked by zygote" not in mine[0], placed
    finally:
        server.stop()
