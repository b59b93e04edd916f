"""Faults at the gateway and its pools against a real server (issue 12): nothing escapes, nothing hangs.

One server with one app serves the whole module. A function that never yields runs past its
`timeout`; the client gets its 504 (or `FunctionTimeoutError`), the container is killed, and the
next request is served by a new one. A revoked proxy token is refused at once, although valid
tokens are cached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, _processes_with_env, host_request

pytestmark = pytest.mark.integration

APP = """
import os
import time

import cove

app = cove.App("faults")


@app.function(timeout=1, max_containers=1)
@cove.fastapi_endpoint()
async def spin(forever: bool = False):
    while forever:  # never yields: nothing but killing its container ends it
        pass
    return {"container": os.environ["COVE_CONTAINER_ID"], "pid": os.getpid()}


@app.function(timeout=1, max_containers=1)
def spin_call(forever: bool) -> str:
    while forever:
        pass
    return os.environ["COVE_CONTAINER_ID"]


@app.function(timeout=3, max_containers=1)
@cove.concurrent(max_inputs=2)
@cove.fastapi_endpoint()
def pair(seconds: float = 60):
    time.sleep(seconds)


@app.function()
@cove.fastapi_endpoint(method="POST")
def upload(item: dict):
    return item


@app.function()
@cove.fastapi_endpoint(requires_proxy_auth=True)
def guarded():
    return "secret stuff"
"""


@dataclass(frozen=True)
class Deployed:
    cove: CoveEnv
    urls: dict[str, str]


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    """A server with the `faults` app deployed; every process it started is gone afterwards."""
    home = Path(tempfile.mkdtemp(prefix="cove-"))
    cove = CoveEnv(home)
    cove.env["COVE_BODY_TIMEOUT_S"] = "0.5"
    app_file = home / "faults.py"
    app_file.write_text(APP)
    try:
        result = cove.run("deploy", str(app_file))
        found = URL_RE.findall(result.stdout)
        urls = {url.split("--faults-", 1)[1].split(".localhost")[0]: url for url in found}
        yield Deployed(cove, urls)
    finally:
        with contextlib.suppress(Exception):
            cove.run("server", "stop", check=False, timeout=60)
        for pid in _processes_with_env("COVE_HOME", str(home)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


def containers(deployed: Deployed, function: str) -> set[str]:
    """Ids of the containers `cove container list` shows for `function`, in any state."""
    listing = json.loads(deployed.cove.run("container", "list", "--json").stdout)
    return {c["id"] for c in listing if c["function"] == function}


def wait_until_gone(deployed: Deployed, function: str, container_id: str) -> None:
    deadline = time.monotonic() + 30
    while container_id in containers(deployed, function):
        assert time.monotonic() < deadline, f"container {container_id} still listed after its timeout"
        time.sleep(0.2)


def test_a_web_function_past_its_timeout_is_504_and_its_container_is_replaced(deployed: Deployed) -> None:
    """The 504 ends the input: the container that ran it is killed, later requests get a new one
    (before: it spun at 100% CPU and every later request to it got 504 too)."""
    url = deployed.urls["spin"]
    first = host_request("GET", url)
    assert first.status_code == 200, first.text
    before = first.json()["container"]
    assert containers(deployed, "spin") == {before}
    timed_out = host_request("GET", url + "/?forever=true")
    assert timed_out.status_code == 504
    assert timed_out.text == "cove: function timed out after 1 s\n"
    after = host_request("GET", url)
    assert after.status_code == 200, after.text
    assert after.json()["container"] != before
    wait_until_gone(deployed, "spin", before)


def test_a_timeout_under_concurrent_fails_the_other_inputs_of_its_container(deployed: Deployed) -> None:
    """As on Modal, the container of a timed-out input is ended, with the other inputs it ran:
    the second request, sent 1.5 s after the first (its own timeout is 1.5 s further off), gets 502
    when the first one's timeout kills the container they share."""
    url = deployed.urls["pair"]
    assert host_request("GET", url + "/?seconds=0").status_code == 200  # warm: no cold start below
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(host_request, "GET", url)
        time.sleep(1.5)  # spacing, not readiness: the two timeouts fall 1.5 s apart
        second = pool.submit(host_request, "GET", url)
        assert first.result().status_code == 504
        other = second.result()
    assert other.status_code == 502, other.text
    assert other.text.startswith("cove: container ")  # "exited (code -9)", or "closed the connection"


CALL = """
import json, os
import cove
from cove.exception import FunctionTimeoutError

spin = cove.Function.from_name("faults", "spin_call")
first = spin.remote(False)
try:
    spin.remote(True)
    raised = None
except FunctionTimeoutError as exc:
    raised = str(exc)
print(json.dumps([first, raised, spin.remote(False)]))
"""


def test_a_remote_call_past_its_timeout_raises_and_its_container_is_replaced(deployed: Deployed) -> None:
    """`.remote()` past the timeout raises FunctionTimeoutError; the next call runs in a new container."""
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CALL)],
        env=deployed.cove.env,
        cwd=deployed.cove.home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    first, raised, after = json.loads(process.stdout.splitlines()[-1])
    assert raised is not None and "timed out after 1 s" in raised
    assert after != first
    assert after in containers(deployed, "spin_call")
    wait_until_gone(deployed, "spin_call", first)


def test_posts_whose_bodies_stall_get_408_and_free_their_containers(deployed: Deployed) -> None:
    """Bodies that stop after one byte (before: each held a container forever) get 408 once they
    stall for COVE_BODY_TIMEOUT_S, and leave no request in flight."""
    url = deployed.urls["upload"]
    host = url.split("//", 1)[1]
    port = int(host.rsplit(":", 1)[1])
    head = (
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    answers = []
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30)) for _ in range(3)
        ]
        for sock in socks:
            sock.sendall(head.encode())
        for sock in socks:
            answers.append(b"".join(iter(lambda sock=sock: sock.recv(65536), b"")))
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers
    listing = json.loads(deployed.cove.run("container", "list", "--json").stdout)
    assert all(c["in_flight"] == 0 for c in listing if c["function"] == "upload"), listing
    assert host_request("POST", url, json={"x": 1}).json() == {"x": 1}


def test_a_revoked_proxy_token_is_refused_at_once(deployed: Deployed) -> None:
    """Valid proxy tokens are cached by the gateway; revoking one drops it from the cache at once."""
    created = deployed.cove.run("token", "create", "--proxy").stdout
    bearer = created.split("Authorization: Bearer ", 1)[1].split()[0]
    token_id = bearer.split(".", 1)[0]
    url = deployed.urls["guarded"]
    headers = {"Authorization": f"Bearer {bearer}"}
    assert host_request("GET", url, headers=headers).status_code == 200
    assert host_request("GET", url, headers=headers).status_code == 200  # now from the cache
    deployed.cove.run("token", "revoke", token_id)
    refused = host_request("GET", url, headers=headers)
    assert refused.status_code == 401
