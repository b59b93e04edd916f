"""Image builds run package code (an sdist's PEP 517 backend, a setup.py) in a sandbox: it sees no
COVE_HOME, no server socket, none of the server's environment, and cannot write the host's /tmp
(issue 12, "Nothing escapes").

The package is a real sdist served over HTTP on loopback, the way a deployer's chosen index serves
one. Its in-tree build backend probes the server's machine while uv builds it, and bakes what it saw
into the wheel (as the module `<package name>.REPORT`); the deployed function returns that report.
"""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

#: An in-tree PEP 517 backend (no build requirements: nothing to download) that probes the host.
BACKEND = """
import base64, hashlib, json, os, socket, zipfile

COVE_HOME = {home!r}
MARKER = {marker!r}
NAME = {name!r}


def _probe():
    seen = {{"secrets": {{}}, "env": {{}}}}
    seen["cove_home"] = sorted(os.listdir(COVE_HOME)) if os.path.isdir(COVE_HOME) else None
    try:
        for entry in os.listdir(os.path.join(COVE_HOME, "secrets")):
            with open(os.path.join(COVE_HOME, "secrets", entry)) as file:
                seen["secrets"][entry] = file.read()
    except OSError as exc:
        seen["secrets_error"] = type(exc).__name__
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(os.path.join(COVE_HOME, "server.sock"))
        seen["control_socket"] = "connected"
    except OSError as exc:
        seen["control_socket"] = type(exc).__name__
    finally:
        client.close()
    try:
        with open(MARKER, "w") as file:
            file.write("escaped")
        seen["marker_written"] = True
    except OSError:
        seen["marker_written"] = False
    seen["env"] = {{k: v for k, v in os.environ.items() if k.startswith("COVE_") or COVE_HOME in v}}
    seen["home_entries"] = sorted(os.listdir(os.path.expanduser("~")))
    return seen


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {{
        f"{{NAME}}.py": "REPORT = " + repr(json.dumps(_probe())) + "\\n",
        f"{{NAME}}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: 0.1\\n",
        f"{{NAME}}-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\\nGenerator: probe\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{{path}},sha256={{digest}},{{len(text.encode())}}")
    record.append(f"{{NAME}}-0.1.dist-info/RECORD,,")
    wheel = f"{{NAME}}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(f"{{NAME}}-0.1.dist-info/RECORD", "\\n".join(record) + "\\n")
    return wheel
"""

PYPROJECT = """
[build-system]
requires = []
build-backend = "probe_backend"
backend-path = ["."]

[project]
name = "{name}"
version = "0.1"
"""

APP = """
import importlib
import json

import cove

image = cove.Image.debian_slim(){steps}
app = cove.App("probe", image=image)


@app.function()
@cove.fastapi_endpoint()
def report():
    return json.loads(importlib.import_module({first!r}).REPORT)
"""


def _sdist(directory: Path, name: str, backend: str) -> str:
    """Write `{name}-0.1.tar.gz` into `directory`; return its file name."""
    filename = f"{name}-0.1.tar.gz"
    members = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        "pyproject.toml": PYPROJECT.format(name=name),
        "probe_backend.py": backend,
    }
    with tarfile.open(directory / filename, "w:gz") as archive:
        for path, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-0.1/{path}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return filename


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static package server on loopback: (its base URL, the directory it serves)."""
    directory = tmp_path / "index"
    directory.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", directory
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _deploy_probes(
    cove: CoveEnv, tmp_path: Path, index: tuple[str, Path], marker: Path, count: int = 1
) -> dict[str, Any]:
    """Deploy an app whose image installs `count` probe sdists (one step each); return what the
    first one's build saw."""
    base_url, directory = index
    names = [f"probe_{uuid.uuid4().hex[:10]}" for _ in range(count)]  # new: uv has no wheel cached
    steps = ""
    for name in names:
        backend = BACKEND.format(home=str(cove.home), marker=str(marker), name=name)
        steps += f".pip_install({f'{name} @ {base_url}/{_sdist(directory, name, backend)}'!r})"
    app = tmp_path / "app" / "probe.py"
    app.parent.mkdir()
    app.write_text(APP.format(steps=steps, first=names[0]))
    result = cove.run("deploy", str(app), timeout=300)
    match = URL_RE.search(result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    seen: dict[str, Any] = host_request("GET", match.group(1)).json()
    return seen


def test_a_package_build_sees_no_cove_home_no_control_socket_and_cannot_write_the_hosts_tmp(
    tmp_path: Path, cove_env: CoveEnv, index: tuple[str, Path]
) -> None:
    cove_env.run("secret", "create", "vault", "TOKEN=s3cr3t-build-probe")
    marker = Path("/tmp") / f"cove-build-escape-{uuid.uuid4().hex}"
    try:
        seen = _deploy_probes(cove_env, tmp_path, index, marker)
        assert (cove_env.home / "server.sock").exists() and any((cove_env.home / "secrets").iterdir())
        assert not marker.exists(), "the build wrote to the host's /tmp"
        assert seen["marker_written"] is True, seen  # it wrote to a /tmp of its own
        assert not seen["cove_home"], seen  # absent, or an empty directory masking it
        assert seen["secrets"] == {} and seen["secrets_error"] == "FileNotFoundError", seen
        assert seen["control_socket"] == "FileNotFoundError", seen
        assert seen["env"] == {}, seen
        # A private HOME, not the server user's: only the way to uv's cache and settings and to the
        # interpreter (pyenv's, say) are bound into it, never ~/.ssh, ~/.bashrc, ...
        assert set(seen["home_entries"]) <= {".cache", ".config", ".local", ".pyenv"}, seen
    finally:
        marker.unlink(missing_ok=True)


def test_with_cove_sandbox_off_builds_still_work_and_the_server_warns_once(
    tmp_path: Path, cove_env: CoveEnv, index: tuple[str, Path]
) -> None:
    """COVE_SANDBOX=off keeps the unsandboxed builds (the operator's choice), said once in the log."""
    cove_env.env["COVE_SANDBOX"] = "off"
    marker = Path("/tmp") / f"cove-build-escape-{uuid.uuid4().hex}"
    try:
        seen = _deploy_probes(cove_env, tmp_path, index, marker, count=2)
        assert seen["marker_written"] is True and marker.exists(), seen
        log = (cove_env.home / "server.log").read_text()
        assert log.count("event=build_unsandboxed") == 1, log
    finally:
        marker.unlink(missing_ok=True)
