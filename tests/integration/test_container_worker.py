"""The container worker's contract: docs, CORS, lifespan, @exit, custom domains, startup failures."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.integration.conftest import CoveEnv, Serve, host_request

pytestmark = pytest.mark.integration

MANY_KINDS = """
import contextlib
import os

from fastapi import FastAPI

import cove

app = cove.App("kinds")


@app.function()
@cove.fastapi_endpoint(docs=True, custom_domains=["api.example.test"])
def documented(x: int = 1):
    return {"x": x}


@app.function()
@cove.fastapi_endpoint(method="DELETE", label="remover")
def remove(item_id: int):
    return {"deleted": item_id}


@contextlib.asynccontextmanager
async def lifespan(web):
    web.state.started = "yes"
    yield
    print("lifespan shutdown ran", flush=True)


@app.function()
@cove.asgi_app()
def with_lifespan():
    web = FastAPI(lifespan=lifespan)

    @web.get("/")
    async def root():
        return {"started": web.state.started}

    return web


@app.cls()
class Greeter:
    @cove.exit()
    def bye(self):
        print("exit hook ran", flush=True)

    @cove.fastapi_endpoint()
    def hello(self):
        return "hello"


@app.function()
@cove.fastapi_endpoint()
def env_and_mode():
    return {"remote": not cove.is_local(), "container": os.environ.get("COVE_CONTAINER_ID", "")}
"""

BROKEN = """
import cove

app = cove.App("broken")


@app.cls()
class Flaky:
    @cove.enter()
    def boot(self):
        raise RuntimeError("model weights missing")

    @cove.fastapi_endpoint()
    def predict(self):
        return "unreachable"


@app.function()
@cove.web_server(PORT, startup_timeout=0.5)
def never_listens():
    pass
"""


def _urls_by_tag(proc, count: int) -> dict[str, str]:
    urls = proc.urls(count)
    return {url.split("--", 1)[1].split(".localhost")[0]: url for url in urls}


def test_endpoint_options_and_asgi_lifespan(tmp_path: Path, shared_serve: Serve) -> None:
    """docs=True serves /docs and /openapi.json; CORS is open; custom domains and labels route;
    any HTTP method works; an asgi_app's lifespan runs; the code knows it runs in a container."""
    app_file = tmp_path / "kinds.py"
    app_file.write_text(MANY_KINDS)
    proc = shared_serve(str(app_file))
    urls = _urls_by_tag(proc, 5)
    assert set(urls) == {
        "kinds-greeter-hello-dev",
        "kinds-documented-dev",
        "remover-dev",
        "kinds-with-lifespan-dev",
        "kinds-env-and-mode-dev",
    }
    documented = urls["kinds-documented-dev"]
    assert host_request("GET", documented + "/docs").status_code == 200
    assert host_request("GET", documented + "/openapi.json").json()["paths"]["/"]["get"]
    cors = host_request(
        "OPTIONS",
        documented,
        headers={"Origin": "https://site.example", "Access-Control-Request-Method": "GET"},
    )
    assert cors.status_code == 200
    assert cors.headers["access-control-allow-origin"] == "https://site.example"
    port = documented.rsplit(":", 1)[1]
    assert host_request("GET", f"http://api.example.test:{port}/?x=5").json() == {"x": 5}

    remover = urls["remover-dev"]
    assert host_request("DELETE", remover + "/?item_id=7").json() == {"deleted": 7}
    assert host_request("GET", remover + "/docs").status_code == 404

    assert host_request("GET", urls["kinds-with-lifespan-dev"]).json() == {"started": "yes"}
    mode = host_request("GET", urls["kinds-env-and-mode-dev"]).json()
    assert mode["remote"] is True
    assert mode["container"].startswith("ta-")


def test_exit_hooks_and_lifespan_shutdown_run_when_the_app_stops(
    tmp_path: Path, cove_env: CoveEnv, serve
) -> None:
    """Stopping the app runs an asgi_app's lifespan shutdown and a class's @exit in each container."""
    # Its own server: the log file it reads must hold no line of another test's `kinds` app.
    app_file = tmp_path / "kinds.py"
    app_file.write_text(MANY_KINDS)
    proc = serve(str(app_file))
    urls = _urls_by_tag(proc, 5)
    assert host_request("GET", urls["kinds-with-lifespan-dev"]).status_code == 200
    assert host_request("GET", urls["kinds-greeter-hello-dev"]).json() == "hello"
    assert proc.interrupt() == 0
    log_file = cove_env.home / "logs" / "kinds@serve.log"
    deadline = time.monotonic() + 30
    while not all(m in log_file.read_text() for m in ("lifespan shutdown ran", "exit hook ran")):
        assert time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_startup_failures_answer_503_with_the_reason(tmp_path: Path, shared_serve: Serve) -> None:
    """An @enter that raises, or a web_server that never opens its port, gives 503 naming why;
    the traceback goes to the logs, not to the client."""
    app_file = tmp_path / "broken.py"
    app_file.write_text(BROKEN.replace("PORT", str(_free_port())))
    proc = shared_serve(str(app_file))
    urls = _urls_by_tag(proc, 2)
    flaky = host_request("GET", urls["broken-flaky-predict-dev"])
    assert flaky.status_code == 503
    assert flaky.text.startswith("cove: Flaky.predict failed to start: ")
    assert "RuntimeError: model weights missing" in flaky.text
    assert "Traceback" not in flaky.text
    proc.wait_for(r"ta-[0-9a-f]+ .*RuntimeError: model weights missing")

    server = host_request("GET", urls["broken-never-listens-dev"])
    assert server.status_code == 503
    assert "Waited too long for port" in server.text
    assert "0.0.0.0" in server.text


def test_serve_timeout_stops_the_app(shared_cove: CoveEnv, tmp_path: Path) -> None:
    """`cove serve --timeout` serves, then stops the app and exits 0 on its own."""
    app_file = tmp_path / "brief.py"
    app_file.write_text(
        "import cove\napp = cove.App()\n\n"
        "@app.function()\n@cove.fastapi_endpoint()\ndef hi():\n    return 'hi'\n"
    )
    result = shared_cove.run("serve", "--timeout", "3", str(app_file), timeout=60)
    assert result.returncode == 0
    assert "App stopped." in result.stdout
    url = next(line.split()[-1] for line in result.stdout.splitlines() if "--brief-hi-dev" in line)
    assert host_request("GET", url).text == "cove: app brief is stopped\n"


def test_foreground_server_and_server_stop(cove_env: CoveEnv) -> None:
    """`cove server` runs in the foreground; `cove server stop` ends it and says so."""
    import subprocess

    from tests.integration.conftest import cove_command

    process = subprocess.Popen(
        [*cove_command(), "server"],
        env=cove_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cove_env.home / "server.json").exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again = cove_env.run("server", check=False, timeout=30)
        assert again.returncode == 1
        assert "already running" in again.stderr
        stopped = cove_env.run("server", "stop")
        assert "Server stopped." in stopped.stdout
        assert process.wait(timeout=30) == 0
        assert not (cove_env.home / "server.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
