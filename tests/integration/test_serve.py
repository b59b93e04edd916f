"""`cove serve` as a user lives it: URLs, live reload, a bad edit, Ctrl-C, a second serve, bad input.

The tests share one server (each stops what it serves), but for those that check what happens
before any server runs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, CoveEnv, Serve, host_request

pytestmark = pytest.mark.integration

APP_V1 = """
import cove

app = cove.App("reload-demo")


@app.function()
@cove.fastapi_endpoint()
def greet(name: str = "world"):
    return {"greeting": "hello " + name}
"""


def _write(path: Path, text: str) -> None:
    # Write then rename, as editors do, so the watcher never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for_body(url: str, expected: object, timeout: float = 20.0) -> float:
    """Poll until the endpoint answers `expected`; return the seconds it took (never asserted)."""
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        response = host_request("GET", url)
        last = (response.status_code, response.text)
        if response.status_code == 200 and response.json() == expected:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{url} never answered {expected!r}; last answer {last!r}")


def test_edit_is_served_and_bad_edit_keeps_last_good(tmp_path: Path, shared_serve: Serve) -> None:
    """Saving an edit reloads the app at the same URL; a syntax error is reported and v1 keeps serving."""
    app_file = tmp_path / "reload_demo.py"
    app_file.write_text(APP_V1)
    proc = shared_serve(str(app_file))
    (url,) = proc.urls(1)
    proc.wait_for("Serving")
    assert host_request("GET", url).json() == {"greeting": "hello world"}

    _write(app_file, APP_V1.replace('"hello "', '"bonjour "'))
    took = _wait_for_body(url, {"greeting": "bonjour world"})
    print(f"edit served {took * 1000:.0f} ms after saving")
    proc.wait_for(r"App updated to v2")

    _write(app_file, APP_V1.replace("def greet(", "def greet(:"))
    proc.wait_for(r"SyntaxError")
    proc.wait_for(r"last good version keeps serving")
    assert host_request("GET", url).json() == {"greeting": "bonjour world"}

    _write(app_file, APP_V1.replace('"hello "', '"hola "'))
    _wait_for_body(url, {"greeting": "hola world"})


def test_ctrl_c_stops_the_app_and_exits_zero(shared_serve: Serve) -> None:
    """Ctrl-C stops the ephemeral app: its URL answers 404 naming the app; the exit code is 0."""
    proc = shared_serve(str(EXAMPLES / "square.py"))
    (url,) = proc.urls(1)
    assert host_request("GET", url + "/?x=3").json() == {"square": 9}
    assert proc.interrupt() == 0
    response = host_request("GET", url + "/?x=3")
    assert response.status_code == 404
    assert response.text == "cove: app square is stopped\n"


def test_container_logs_stream_to_serve(tmp_path: Path, shared_serve: Serve) -> None:
    """What the function prints shows up in `cove serve`'s output with the container id."""
    app_file = tmp_path / "printer.py"
    app_file.write_text(
        "import cove\napp = cove.App()\n\n@app.function()\n@cove.fastapi_endpoint()\n"
        "def shout(word: str):\n    print('heard', word)\n    return word\n"
    )
    proc = shared_serve(str(app_file))
    (url,) = proc.urls(1)
    assert host_request("GET", url + "/?word=marmalade").json() == "marmalade"
    proc.wait_for(r"ta-[0-9a-f]+ heard marmalade")


def test_second_serve_takes_over_the_urls(tmp_path: Path, shared_serve: Serve) -> None:
    """A second `cove serve` of the same app gets the same URL; the first one steps aside and exits 0."""
    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_dir.mkdir()
    second_dir.mkdir()
    # An app name of its own: the reload test's app counts versions on the same server.
    app = APP_V1.replace('"reload-demo"', '"takeover-demo"')
    (first_dir / "shared.py").write_text(app)
    (second_dir / "shared.py").write_text(app.replace('"hello "', '"second "'))
    first = shared_serve(str(first_dir / "shared.py"))
    (url_one,) = first.urls(1)
    assert host_request("GET", url_one).json() == {"greeting": "hello world"}
    second = shared_serve(str(second_dir / "shared.py"))
    (url_two,) = second.urls(1)
    assert url_two == url_one
    assert host_request("GET", url_two).json() == {"greeting": "second world"}
    first.wait_for("took over")
    assert first.process.wait(timeout=30) == 0
    assert host_request("GET", url_two).json() == {"greeting": "second world"}


def test_unknown_host_is_404_naming_it(shared_serve: Serve) -> None:
    """A Host that routes nowhere gets the platform's 404."""
    proc = shared_serve(str(EXAMPLES / "hello.py"))
    (url,) = proc.urls(1)
    bad = url.replace("hello-f", "nothing-here")
    response = host_request("GET", bad)
    assert response.status_code == 404
    assert response.text.startswith("cove: no endpoint at test--nothing-here-dev.localhost")


def test_misused_decorator_fails_with_the_fix(tmp_path: Path, cove_env: CoveEnv) -> None:
    """A decorator without parentheses stops `cove serve` with exit 1 and a message naming the fix."""
    app_file = tmp_path / "oops.py"
    app_file.write_text(
        "import cove\napp = cove.App()\n\n@app.function()\n@cove.fastapi_endpoint\ndef f():\n    return 1\n"
    )
    result = cove_env.run("serve", str(app_file), check=False)
    assert result.returncode == 1
    assert "Did you forget parentheses?" in result.stderr


def test_missing_file_is_a_usage_error(cove_env: CoveEnv) -> None:
    """A path that does not exist is exit code 2 with the path in the message; no server is started."""
    result = cove_env.run("serve", "no/such/app.py", check=False)
    assert result.returncode == 2
    assert "File not found: no/such/app.py" in result.stderr
    assert not (cove_env.home / "server.sock").exists()


def test_missing_secret_fails_with_its_name(tmp_path: Path, shared_cove: CoveEnv) -> None:
    """Serving a function whose secret does not exist fails with the secret's name and how to create it."""
    shutil.copy(EXAMPLES / "bearer_auth.py", tmp_path / "bearer_auth.py")
    result = shared_cove.run("serve", str(tmp_path / "bearer_auth.py"), check=False)
    assert result.returncode == 1
    assert "Secret 'my-web-auth-token' not found" in result.stderr
    assert "cove secret create my-web-auth-token" in result.stderr
