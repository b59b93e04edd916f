"""`cove deploy` and the app commands, against a real server that is killed and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import URL_RE, CoveEnv, cove_command, host_request

pytestmark = pytest.mark.integration

SHOP = """
import time

import cove

app = cove.App("shop")


@app.function()
@cove.concurrent(max_inputs=8)
@cove.fastapi_endpoint()
def price(item: str = "tea"):
    time.sleep(0.01)
    print("priced", item, flush=True)
    return {"item": item, "price": PRICE}


PRICE = 1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fixed_port_env(cove_env: CoveEnv) -> CoveEnv:
    """A server on a fixed port: URLs must stay the same across restarts."""
    cove_env.env["COVE_PORT"] = str(_free_port())
    return cove_env


def _deploy(cove: CoveEnv, path: Path, *args: str) -> list[str]:
    result = cove.run("deploy", str(path), *args)
    assert "App deployed in " in result.stdout
    return URL_RE.findall(result.stdout)


def _write(path: Path, price: int) -> None:
    path.write_text(SHOP.replace("PRICE = 1", f"PRICE = {price}"))


def _server_pid(cove: CoveEnv) -> int:
    return int(json.loads((cove.home / "server.json").read_text())["pid"])


def test_deploy_prints_urls_and_serves(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """Deploy prints one URL per endpoint without `-dev`, and the URL serves the deployed code."""
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = _deploy(fixed_port_env, app_file)
    assert url.startswith("http://test--shop-price.localhost:")
    assert host_request("GET", url + "/?item=jam").json() == {"item": "jam", "price": 1}
    # The deployed version runs from its uploaded bundle, not from the user's file.
    app_file.write_text("this is no longer python (")
    assert host_request("GET", url + "/?item=jam").json() == {"item": "jam", "price": 1}


def test_redeploy_under_load_has_no_errors(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """A redeploy while requests stream in: every request gets a 2xx, and the new code takes over."""
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = _deploy(fixed_port_env, app_file)
    host = url.split("//")[1]
    port = int(host.rsplit(":", 1)[1])
    statuses: list[int] = []
    prices: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(5000):  # bounded: the loop ends after the redeploy or 5000 requests
                if stop.is_set():
                    return
                response = client.get(f"http://127.0.0.1:{port}/?item=x", headers={"Host": host})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    prices.append(response.json()["price"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(statuses) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        _write(app_file, 2)
        _deploy(fixed_port_env, app_file)
        deadline = time.monotonic() + 30
        while (not prices or prices[-1] != 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        count = len(statuses)
        while len(statuses) < count + 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert len(statuses) > 100, f"only {len(statuses)} requests were made"
    assert set(statuses) == {200}, f"non-2xx during redeploy: {sorted(set(statuses))}"
    assert prices[-1] == 2
    assert 1 in prices


def test_server_sigkill_then_restart_serves_same_urls(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """SIGKILL the server: its containers go with it; the next start serves deployed apps at the same URLs
    and marks apps of dead `cove serve`s stopped."""
    app_file = tmp_path / "shop.py"
    _write(app_file, 3)
    (url,) = _deploy(fixed_port_env, app_file)
    assert host_request("GET", url).json()["price"] == 3
    os.kill(_server_pid(fixed_port_env), signal.SIGKILL)
    with pytest.raises(httpx.ConnectError):
        host_request("GET", url)
    listing = json.loads(fixed_port_env.run("app", "list", "--json").stdout)  # starts the server again
    assert [(a["name"], a["state"], a["version"]) for a in listing] == [("shop", "deployed", 1)]
    assert host_request("GET", url).json()["price"] == 3


def test_stop_rollback_history_and_logs(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """stop → 404 naming the app; rollback serves the previous code as a new version; history lists
    all versions; logs show what containers printed with their ids."""
    cove = fixed_port_env
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = _deploy(cove, app_file, "--tag", "first")
    _write(app_file, 2)
    _deploy(cove, app_file)
    assert host_request("GET", url + "/?item=scone").json()["price"] == 2

    logs = cove.run("app", "logs", "shop", "--tail", "50").stdout
    assert any(line.startswith("ta-") and "priced scone" in line for line in logs.splitlines())

    cove.run("app", "stop", "shop", "-y")
    stopped = host_request("GET", url)
    assert stopped.status_code == 404
    assert stopped.text == "cove: app shop is stopped\n"
    assert json.loads(cove.run("app", "list", "--json").stdout)[0]["state"] == "stopped"

    result = cove.run("app", "rollback", "shop", "v1")
    assert "now serving v3" in result.stdout
    assert host_request("GET", url).json()["price"] == 1

    history = json.loads(cove.run("app", "history", "shop", "--json").stdout)
    assert [(v["version"], v["tag"], v["rollback_of"]) for v in history] == [
        (1, "first", None),
        (2, "", None),
        (3, "first", 1),
    ]


def test_unknown_app_and_missing_name_fail_clearly(tmp_path: Path, cove_env: CoveEnv) -> None:
    """App commands on an unknown app exit 1 naming it; deploying an unnamed App says how to name it."""
    for args in (("stop", "ghost", "-y"), ("logs", "ghost"), ("history", "ghost"), ("rollback", "ghost")):
        result = cove_env.run("app", *args, check=False)
        assert result.returncode == 1, args
        assert "App 'ghost' not found" in result.stderr
    unnamed = tmp_path / "unnamed.py"
    unnamed.write_text(SHOP.replace('cove.App("shop")', "cove.App()"))
    result = cove_env.run("deploy", str(unnamed), check=False)
    assert result.returncode == 1
    assert "supply an explicit deployment name" in result.stderr
    assert "--name" in result.stderr
    named = cove_env.run("deploy", str(unnamed), "--name", "named-on-cli")
    assert "--named-on-cli-price.localhost:" in named.stdout


def test_failed_deploy_changes_nothing(tmp_path: Path, fixed_port_env: CoveEnv) -> None:
    """An import error or a missing secret fails the deploy with the reason; v1 keeps serving."""
    cove = fixed_port_env
    app_file = tmp_path / "shop.py"
    _write(app_file, 1)
    (url,) = _deploy(cove, app_file)
    app_file.write_text(SHOP + "\nraise RuntimeError('half-written edit')\n")
    broken = cove.run("deploy", str(app_file), check=False)
    assert broken.returncode == 1
    assert "RuntimeError: half-written edit" in broken.stderr
    app_file.write_text(
        SHOP.replace("@app.function()", '@app.function(secrets=[cove.Secret.from_name("absent")])')
    )
    missing = cove.run("deploy", str(app_file), check=False)
    assert missing.returncode == 1
    assert "Secret 'absent' not found" in missing.stderr
    assert host_request("GET", url).json()["price"] == 1
    history = json.loads(cove.run("app", "history", "shop", "--json").stdout)
    assert [v["version"] for v in history] == [1]


def test_remote_deploy_over_tcp_needs_a_token(tmp_path: Path, cove_env: CoveEnv) -> None:
    """`cove server --listen` serves the API on TCP: without a token 401; with one, deploy works."""
    api_port = _free_port()
    server = subprocess.Popen(
        [*cove_command(), "server", "--listen", f"127.0.0.1:{api_port}"],
        env=cove_env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cove_env.home / "server.json").exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        token_line = next(
            line for line in cove_env.run("token", "create").stdout.splitlines() if "COVE_TOKEN=" in line
        )
        token = token_line.split("COVE_TOKEN=", 1)[1].strip()
        remote = dict(
            cove_env.env, COVE_SERVER_URL=f"http://127.0.0.1:{api_port}", COVE_HOME=str(tmp_path / "h")
        )
        app_file = tmp_path / "shop.py"
        _write(app_file, 7)
        denied = subprocess.run(
            [*cove_command(), "deploy", str(app_file)],
            env=dict(remote, COVE_TOKEN="ak-nope.as-nope"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert denied.returncode == 1
        assert "Missing or invalid token" in denied.stderr
        ok = subprocess.run(
            [*cove_command(), "deploy", str(app_file)],
            env=dict(remote, COVE_TOKEN=token),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        (url,) = URL_RE.findall(ok.stdout)
        assert host_request("GET", url).json()["price"] == 7
    finally:
        server.terminate()
        server.wait(timeout=60)
