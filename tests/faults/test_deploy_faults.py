"""Deploys under faults: a version whose containers cannot start never goes live (issue 12, item 4)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, cove_command, host_request

pytestmark = pytest.mark.integration

SHOP = """
import cove

app = cove.App("shop")

if not cove.is_local() and BROKEN:  # imports on the developer's machine, fails in the container
    raise RuntimeError("half-written edit")


@app.function()
@cove.fastapi_endpoint()
def price():
    return {"price": PRICE}


PRICE = 1
"""


def _write(path: Path, price: int, *, broken: bool = False) -> None:
    path.write_text(SHOP.replace("PRICE = 1", f"PRICE = {price}").replace("BROKEN", str(broken)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fixed_port_env(cove_env: CoveEnv) -> CoveEnv:
    cove_env.env["COVE_PORT"] = str(_free_port())
    return cove_env


def test_a_redeploy_that_fails_at_import_does_not_go_live(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """v2 raising at import in its container: the CLI fails naming the error and its traceback,
    v1 keeps serving, and the history has no v2."""
    cove = fixed_port_env
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = URL_RE.findall(cove.run("deploy", str(app_file)).stdout)
    _write(app_file, 2, broken=True)
    broken = cove.run("deploy", str(app_file), check=False)
    assert broken.returncode == 1, broken.stdout
    assert "App deployed" not in broken.stdout
    assert "did not go live: function price failed to start: RuntimeError: half-written edit" in broken.stderr
    assert "v1 keeps serving" in broken.stderr
    assert "Traceback" in broken.stderr
    assert host_request("GET", url).json() == {"price": 1}
    history = json.loads(cove.run("app", "history", "shop", "--json").stdout)
    assert [v["version"] for v in history] == [1]
    _write(app_file, 3)
    fixed = cove.run("deploy", str(app_file))
    assert "(version v2)" in fixed.stdout
    assert host_request("GET", url).json() == {"price": 3}


def test_a_first_deploy_that_fails_at_import_leaves_no_app(tmp_path: Path, cove_env: CoveEnv) -> None:
    """A broken first deploy fails clearly and leaves nothing behind: no app, no URL."""
    app_file = tmp_path / "shop.py"
    _write(app_file, 1, broken=True)
    broken = cove_env.run("deploy", str(app_file), check=False)
    assert broken.returncode == 1
    assert "RuntimeError: half-written edit" in broken.stderr
    assert "Nothing was deployed" in broken.stderr
    assert json.loads(cove_env.run("app", "list", "--json").stdout) == []


SLOW = """
import time

import cove

app = cove.App("shop")

if not cove.is_local():  # the new version's containers take their time to import
    time.sleep(60)


@app.function()
@cove.fastapi_endpoint()
def price():
    return {"price": 2}
"""


def test_a_server_killed_during_a_deploy_leaves_the_old_version_live_and_says_so(
    tmp_path: Path, fixed_port_env: CoveEnv
) -> None:
    """SIGKILL of the server while v2's containers start: the CLI says the connection was lost and,
    having started the server again, that v1 is live; v1 serves and the history has no v2."""
    cove = fixed_port_env
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = URL_RE.findall(cove.run("deploy", str(app_file)).stdout)
    pid = int(json.loads((cove.home / "server.json").read_text())["pid"])
    app_file.write_text(SLOW)
    deploy = subprocess.Popen(
        [*cove_command(), "deploy", str(app_file)],
        env=cove.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _starts(cove) < 2:  # v1's container, then v2's (importing, slowly)
            assert time.monotonic() < deadline and deploy.poll() is None
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = deploy.communicate(timeout=120)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.communicate()
    assert deploy.returncode == 1, stdout + stderr
    assert "Lost the connection to the Cove server during the deploy" in stderr
    assert "before the new version went live: v1 of shop is live now" in stderr
    assert host_request("GET", url).json() == {"price": 1}
    history = json.loads(cove.run("app", "history", "shop", "--json").stdout)
    assert [v["version"] for v in history] == [1]


def _starts(cove: CoveEnv) -> int:
    logs = cove.run("app", "logs", "shop", "--tail", "200").stdout
    return logs.count("starting container for price")
