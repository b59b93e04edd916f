"""Container isolation under bubblewrap: what a container can see, its own ports, and its network.

Skipped where bubblewrap cannot run (the server then logs a warning and uses plain processes).
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}"),
]

SPY_APP = """
import os

import cove

app = cove.App("spy")


def _look(path):
    try:
        if os.path.isdir(path):
            return {"exists": True, "entries": sorted(os.listdir(path))}
        with open(path, "rb") as file:
            return {"exists": True, "bytes": len(file.read())}
    except OSError as exc:
        return {"exists": False, "error": type(exc).__name__}


@app.function(secrets=[cove.Secret.from_name("spy-secret")])
@cove.fastapi_endpoint()
def look(path: str):
    return _look(path)


@app.function()
@cove.fastapi_endpoint()
def environment():
    return sorted(os.environ)
"""

OTHER_APP = """
import cove

app = cove.App("other", secrets=[cove.Secret.from_name("other-secret")])


@app.function()
@cove.fastapi_endpoint()
def hello():
    return "other"
"""


def _deploy(cove: CoveEnv, path: Path) -> list[str]:
    result = cove.run("deploy", str(path), timeout=300)
    return URL_RE.findall(result.stdout)


@pytest.fixture
def home_marker() -> Iterator[Path]:
    """A file in the host's home directory, which no container may see."""
    path = Path.home() / f".cove-isolation-{uuid.uuid4().hex[:8]}"
    path.write_text("host only")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_a_container_cannot_read_cove_home_other_apps_or_their_secrets_or_the_hosts_home(
    tmp_path: Path, cove_env: CoveEnv, home_marker: Path
) -> None:
    """COVE_HOME (secrets, bundles, database), another app's source and the host's home do not exist
    inside a container; another function's secrets are not in its environment."""
    cove_env.run("secret", "create", "spy-secret", "SPY_KEY=spy-value")
    cove_env.run("secret", "create", "other-secret", "OTHER_KEY=other-value")
    (tmp_path / "other").mkdir()
    (tmp_path / "spy").mkdir()
    (tmp_path / "other" / "other.py").write_text(OTHER_APP)
    (tmp_path / "spy" / "spy.py").write_text(SPY_APP)
    _deploy(cove_env, tmp_path / "other" / "other.py")
    urls = _deploy(cove_env, tmp_path / "spy" / "spy.py")
    look = next(u for u in urls if "-look" in u)
    environment = next(u for u in urls if "-environment" in u)

    secret_files = sorted((cove_env.home / "secrets").iterdir())
    bundles = sorted((cove_env.home / "bundles").iterdir())
    assert secret_files and len(bundles) == 2
    for path in (
        cove_env.home,
        cove_env.home / "cove.db",
        *secret_files,
        *bundles,
        tmp_path / "other" / "other.py",
        home_marker,
    ):
        seen = host_request("GET", look, params={"path": str(path)}).json()
        assert seen["exists"] is False, (path, seen)
    home = host_request("GET", look, params={"path": "/root"}).json()
    assert home_marker.name not in home.get("entries", [])
    assert "spy.py" in home["entries"]  # its own source, read-only in its private home
    assert host_request("GET", look, params={"path": "/etc/shadow"}).json()["exists"] is False
    names = host_request("GET", environment).json()
    assert "SPY_KEY" not in names and "OTHER_KEY" not in names and "COVE_HOME" not in names


SIDE_BY_SIDE_APP = """
import os
import subprocess
import sys

import cove

app = cove.App("twins")

SERVER = '''
import http.server, os, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(1.0)
        body = os.environ["COVE_CONTAINER_ID"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
'''


@app.function(min_containers=2, max_containers=2)
@cove.concurrent(max_inputs=1)
@cove.web_server(8000, startup_timeout=30)
def twin():
    subprocess.Popen([sys.executable, "-c", SERVER])
"""


def test_two_web_server_containers_both_bind_port_8000(tmp_path: Path, cove_env: CoveEnv) -> None:
    """Each container has its own network namespace: two of one @web_server(8000) serve side by side."""
    (tmp_path / "twins.py").write_text(SIDE_BY_SIDE_APP)
    (url,) = _deploy(cove_env, tmp_path / "twins.py")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: host_request("GET", url, timeout=60), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert len({a.text for a in answers}) == 2, [a.text for a in answers]
    listing = json.loads(cove_env.run("app", "list", "--json").stdout)
    assert listing[0]["containers"] == 2


NETWORK_APP = """
import socket

import cove

app = cove.App("net")


def _try(host, port):
    try:
        socket.create_connection((host, port), timeout=10).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__ + ":" + str(exc.errno)


@app.function(block_network=True)
@cove.fastapi_endpoint()
def blocked(ip: str, gateway: int):
    return {
        "interfaces": [name for _, name in socket.if_nameindex()],
        "by_name": _try("pypi.org", 443),
        "by_ip": _try(ip, 443),
        "host_loopback": _try("127.0.0.1", gateway),
    }


@app.function()
@cove.fastapi_endpoint()
def open_(gateway: int):
    return {"by_name": _try("pypi.org", 443), "host_loopback": _try("127.0.0.1", gateway)}
"""


def test_block_network_cannot_open_an_outbound_socket(tmp_path: Path, cove_env: CoveEnv) -> None:
    """block_network=True: only loopback, no name resolution, no route anywhere. The default has
    outbound access (pypi.org, the one remote host these tests touch), yet neither reaches the
    services on the host's 127.0.0.1, such as the gateway."""
    (tmp_path / "net.py").write_text(NETWORK_APP)
    urls = _deploy(cove_env, tmp_path / "net.py")
    blocked = next(u for u in urls if "-blocked" in u)
    opened = next(u for u in urls if "-open" in u)
    port = int(blocked.rsplit(":", 1)[1])
    pypi_ip = socket.getaddrinfo("pypi.org", 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    result = host_request("GET", blocked, params={"ip": pypi_ip, "gateway": port}).json()
    assert result["interfaces"] == ["lo"]
    assert result["by_name"].startswith("gaierror")
    assert result["by_ip"].startswith("OSError:101")  # ENETUNREACH: nothing left the container
    assert result["host_loopback"].startswith("ConnectionRefusedError")
    default = host_request("GET", opened, params={"gateway": port}).json()
    assert default["by_name"] == "connected"
    assert default["host_loopback"].startswith("ConnectionRefusedError")
