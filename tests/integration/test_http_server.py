"""HTTP servers (Modal 1.5 `@app.server`, `modal.experimental.http_server`) under a real `cove deploy`.

The apps are written as for Modal (`import modal`): an `@modal.enter()` method starts a plain
`http.server` on port 8000 that answers with its container id and pid. Each container has its own
network namespace, so every container binds the same port; the tests need bubblewrap.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cove._runtime.backends.local.isolation import probe_bwrap
from tests.integration.conftest import EXAMPLES, URL_RE, CoveEnv, ServeProcess, host_request

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(probe_bwrap()[0] is None, reason=f"no sandbox here: {probe_bwrap()[1]}"),
]

#: The user's server: any process listening on the port would do; this one says who answered.
SERVER = """
import http.server, json, os, time, urllib.parse

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        time.sleep(float(query.get("sleep", ["0"])[0]))
        body = json.dumps({
            "container": os.environ["MODAL_TASK_ID"],
            "pid": os.getpid(),
            "session": self.headers.get("Modal-Session-ID"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""

STICKY_APP = f"""
import subprocess
import sys

import modal

app = modal.App("sticky")

SERVER = {SERVER!r}


@app.server(port=8000, unauthenticated=True, target_concurrency=1, min_containers=1, startup_timeout=30)
class Api:
    @modal.enter()
    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER])

    @modal.exit()
    def stop(self):
        self.proc.terminate()
"""

EDGE_APP = f"""
import subprocess
import sys

import modal
import modal.experimental

app = modal.App("edge")

SERVER = {SERVER!r}


@app.cls(max_containers=1, scaledown_window=60)
@modal.experimental.http_server(port=8000, proxy_regions=["us-east"], exit_grace_period=20)
@modal.concurrent(max_inputs=1)
class Flash:
    @modal.enter()
    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER])


@app.server(port=8000)
class Private:
    @modal.enter()
    def start(self):
        subprocess.Popen([sys.executable, "-c", SERVER])
"""


SESSIONED_APP = f"""
import subprocess
import sys

import modal

app = modal.App("rooms")

SERVER = {SERVER!r}


@app.server(port=8000, unauthenticated=True, scaledown_window=2)
@modal.sessioned()
class Room:
    @modal.enter()
    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER])
"""


def _client(cove: CoveEnv, code: str) -> object:
    """Run `code` in a fresh Python process against the test's server; it prints one JSON value."""
    found = subprocess.run(
        [sys.executable, "-c", "import json, cove\n" + code], env=cove.env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)


def _deploy(cove: CoveEnv, path: Path) -> list[str]:
    result = cove.run("deploy", str(path), timeout=300)
    return URL_RE.findall(result.stdout)


def _containers(cove: CoveEnv) -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads(cove.run("container", "list", "--json").stdout)
    return items


def _until(condition: Callable[[], object], what: str, timeout_s: float = 90) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _get(url: str, session: str | None = None, sleep_s: float = 0) -> httpx.Response:
    headers = {"Modal-Session-ID": session} if session is not None else {}
    return host_request("GET", f"{url}/?sleep={sleep_s}", headers=headers, timeout=60)


def _served_ok(url: str) -> httpx.Response | None:
    answer = _get(url)
    return answer if answer.status_code == 200 else None


def test_sessions_stick_to_containers_spread_when_scaled_and_move_when_theirs_goes(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """Concurrency above `target_concurrency` adds a container (the burst itself is served, not
    queued); each Modal-Session-ID then keeps to one container, sessions spread over both, and a
    session whose container is stopped moves to a live one and stays there."""
    (tmp_path / "sticky.py").write_text(STICKY_APP)
    deployed = cove_env.run("deploy", str(tmp_path / "sticky.py"), timeout=300).stdout
    assert "Created server Api" in deployed
    (url,) = URL_RE.findall(deployed)
    assert url.startswith("http://test--sticky-api.localhost:")
    lookup = "import cove; print(cove.Server.from_name('sticky', 'Api').get_url())"
    found = subprocess.run([sys.executable, "-c", lookup], env=cove_env.env, capture_output=True, text=True)
    assert found.stdout.strip() == url, found.stderr
    _until(lambda: _served_ok(url), "the first container to serve")

    # Two requests at once on one target_concurrency=1 container: both served, a second container starts.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        burst = list(pool.map(lambda s: _get(url, s, sleep_s=1.5), ["burst-a", "burst-b"]))
    assert [b.status_code for b in burst] == [200, 200], [b.text for b in burst]
    _until(lambda: sum(c["state"] == "ready" for c in _containers(cove_env)) == 2, "a second ready container")

    sessions = [f"session-{n}" for n in range(20)]
    homes: dict[str, str] = {}
    for session in sessions:
        answers = [_get(url, session) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        bodies = [a.json() for a in answers]
        assert {b["session"] for b in bodies} == {session}  # the header reaches the user's server
        assert len({(b["container"], b["pid"]) for b in bodies}) == 1, (session, bodies)
        homes[session] = bodies[0]["container"]
    assert len(set(homes.values())) == 2, homes  # 20 sessions over 2 containers: both get some

    moved = sessions[0]
    gone = homes[moved]
    cove_env.run("container", "stop", gone)
    answers = [_get(url, moved) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    new_homes = {a.json()["container"] for a in answers}
    assert len(new_homes) == 1 and gone not in new_homes, (gone, new_homes)
    still = next(s for s in sessions if homes[s] != gone)
    assert _get(url, still).json()["container"] == homes[still]  # other sessions did not move


def test_cold_server_answers_503_then_serves_and_refuses_beyond_max_concurrency(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """No queue: while cold, 503 with Retry-After (and a container starts); once warm, a request
    beyond the container's max concurrency at max_containers is refused with 429, not queued.
    `@app.server` requires proxy auth unless `unauthenticated=True`. A long request is not turned
    into a 303 (that belongs to web functions). Stopping the app gives the request in flight its
    `exit_grace_period` to finish."""
    (tmp_path / "edge.py").write_text(EDGE_APP)
    cove_env.env["COVE_HTTP_TIMEOUT"] = "2"  # web functions would answer the 6 s request with a 303
    urls = _deploy(cove_env, tmp_path / "edge.py")
    flash = next(u for u in urls if "edge-flash" in u)
    private = next(u for u in urls if "edge-private" in u)
    # The deploy proved each server starts (one container each, issue 12); stop them to see it cold.
    for container in _containers(cove_env):
        cove_env.run("container", "stop", str(container["id"]))
    _until(lambda: not _containers(cove_env), "the deploy's containers to stop")

    cold = _get(flash)
    assert cold.status_code == 503, cold.text
    assert cold.headers["Retry-After"] == "1"
    assert cold.text.startswith("cove: Flash has no ready container yet"), cold.text
    first = _until(lambda: _served_ok(flash), "the cold start the 503 began")
    assert isinstance(first, httpx.Response)

    denied = _get(private)
    assert denied.status_code == 401, denied.text

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_get, flash, None, 6.0)
        _until(lambda: any(c["in_flight"] == 1 for c in _containers(cove_env)), "the slow request in flight")
        refused = _get(flash)
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "max_concurrency=1" in refused.text
        # exit_grace_period: stopping the app lets the request in flight finish.
        assert not slow.done()
        cove_env.run("app", "stop", "edge", "--yes")
        finished = slow.result()
        assert finished.status_code == 200, finished.text


def test_the_example_serves_under_cove_serve_with_a_dev_url(serve: Callable[..., ServeProcess]) -> None:
    """`cove serve examples/http_server.py`: the server answers on its -dev URL once a container is
    ready (503 before), and one session's requests reach one container."""
    proc = serve(str(EXAMPLES / "http_server.py"))
    (url,) = proc.urls(1)
    assert url.startswith("http://test--http-server-echo-dev.localhost:")
    _until(lambda: _served_ok(url), "the example's server to answer")
    bodies = [_get(url, "alice").json() for _ in range(3)]
    assert {b["session"] for b in bodies} == {"alice"}
    assert len({b["container"] for b in bodies}) == 1


START_SESSION = """
session = cove.Server.from_name("rooms", "Room").sessions.start(idle_timeout=600)
print(json.dumps([session.token, session.container_id]))
"""


def test_sticky_sessions_pin_requests_keep_their_container_and_end_cleanly(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """@modal.sessioned(): no token, 401; a started session's requests reach its container, which
    outlives its scaledown_window while the session lives; a terminated session answers 404 and its
    container then scales down; a session whose container was stopped answers 410."""
    (tmp_path / "rooms.py").write_text(SESSIONED_APP)
    (url,) = _deploy(cove_env, tmp_path / "rooms.py")
    assert _get(url).status_code == 401

    token, container = _client(cove_env, START_SESSION)  # type: ignore[misc]
    auth = {"Modal-Authorization": f"Bearer {token}"}
    bodies = [host_request("GET", url, headers=auth).json() for _ in range(3)]
    assert {b["container"] for b in bodies} == {container}

    time.sleep(4)  # twice the scaledown_window: an idle container without a session would be gone
    assert [c["id"] for c in _containers(cove_env)] == [container]
    assert host_request("GET", url, headers=auth).json()["container"] == container

    assert _client(
        cove_env, f"print(json.dumps(cove.Server.from_name('rooms', 'Room').sessions.terminate({token!r})))"
    )
    ended = host_request("GET", url, headers=auth)
    assert ended.status_code == 404, ended.text
    _until(lambda: not _containers(cove_env), "the container to scale down once its session ended")

    token, container = _client(cove_env, START_SESSION)  # type: ignore[misc]
    cove_env.run("container", "stop", container)
    gone = host_request("GET", url, headers={"Modal-Authorization": f"Bearer {token}"})
    assert gone.status_code == 410, gone.text
    assert "start a new session" in gone.text
