"""Warm spares on Ray: a container scaled from zero is a fork of a zygote actor's function zygote; a
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
from tests.integration.ray.conftest import ServerProcess
from tests.integration.ray.test_ray_backend import containers, deploy, wait_until

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
