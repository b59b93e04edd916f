"""A deployed manifest's local paths resolve inside its uploaded bundle only, never on the server's
disk: a token holder cannot read COVE_HOME/secrets through an image step (issue 12, item 2)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cove._bundle import make_bundle
from cove._spec import AppSpec
from cove.cli._load import AppRef, WarmLoader
from tests.integration.conftest import URL_RE, CoveEnv, cove_command, host_request

pytestmark = pytest.mark.integration

APP = """
import os

import cove

image = cove.Image.debian_slim(){steps}
app = cove.App("{name}", image=image)


@app.function()
@cove.fastapi_endpoint()
def look():
    found = {{}}
    for path in ("/data", "/mounted"):
        if os.path.isdir(path):
            found[path] = sorted(os.listdir(path))
    if os.path.isfile("/mounted.txt"):
        found["/mounted.txt"] = open("/mounted.txt").read()
    return found
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Remote:
    """A server with its API on TCP, and an API token for it."""

    def __init__(self, cove: CoveEnv, port: int, token: str) -> None:
        self.cove = cove
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@pytest.fixture
def remote(cove_env: CoveEnv) -> Iterator[Remote]:
    port = _free_port()
    server = subprocess.Popen(
        [*cove_command(), "server", "--listen", f"127.0.0.1:{port}"],
        env=cove_env.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cove_env.home / "server.json").exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        out = cove_env.run("token", "create").stdout
        line = next(text for text in out.splitlines() if "COVE_TOKEN=" in text)
        cove_env.run("secret", "create", "db", "PASSWORD=hunter2")
        handle = Remote(cove_env, port, line.split("COVE_TOKEN=", 1)[1].strip())
        yield handle
        handle.http.close()
    finally:
        server.terminate()
        server.wait(timeout=60)


def _manifest(app_file: Path) -> dict[str, object]:
    """The manifest the SDK makes of `app_file` (absolute local paths, as before relocation)."""
    loader = WarmLoader()
    try:
        return loader.load(AppRef.parse(str(app_file))).spec_json
    finally:
        loader.close()


def _upload_sources_only(remote: Remote, app_file: Path) -> str:
    bundle = make_bundle(AppSpec(None, ()), str(app_file))
    response = remote.http.post("/v1/bundles", content=bundle)
    response.raise_for_status()
    return str(response.json()["bundle_id"])


def _set_path(spec: dict[str, object], kind: str, name: str, value: object) -> dict[str, object]:
    for fn in spec["functions"]:  # type: ignore[attr-defined]
        for step in fn["image"]["steps"]:
            if step["kind"] == kind:
                step["args"] = [[k, value if k == name else v] for k, v in step["args"]]
    return spec


def test_a_manifest_naming_server_paths_is_refused(tmp_path: Path, remote: Remote) -> None:
    """A hand-made manifest whose image steps name the server's own files (absolute, `..`, copy or
    mount, requirements) is refused naming the path; nothing of COVE_HOME/secrets is served."""
    secrets = remote.cove.home / "secrets"
    app_file = tmp_path / "leak.py"
    cases = {
        "copy": (
            f'.add_local_dir({str(secrets)!r}, "/data", copy=True)',
            "add_local_dir",
            "local_path",
            None,
        ),
        "mount": (f'.add_local_dir({str(secrets)!r}, "/mounted")', "add_local_dir", "local_path", None),
        "dotdot": (
            f'.add_local_dir({str(secrets)!r}, "/data", copy=True)',
            "add_local_dir",
            "local_path",
            "files/../../../secrets",
        ),
        "requirements": (
            f".pip_install_from_requirements({str(secrets / 'db.json')!r})",
            "pip_install_from_requirements",
            "path",
            None,
        ),
    }
    for label, (steps, kind, arg, forced) in cases.items():
        app_file.write_text(APP.format(steps=steps, name=f"leak-{label}"))
        spec = _manifest(app_file)
        if forced is not None:
            spec = _set_path(spec, kind, arg, forced)
        bundle_id = _upload_sources_only(remote, app_file)
        response = remote.http.put(
            f"/v1/apps/deployed/leak-{label}",
            json={"spec": spec, "bundle_id": bundle_id, "module_path": "leak.py"},
        )
        assert response.status_code == 400, (label, response.text)
        assert "is not inside the uploaded source bundle" in response.json()["message"], label
        if label == "mount":
            continue  # mounts are not read by a build
        # Building the images of such a manifest is refused the same way.
        with remote.http.stream(
            "POST", "/v1/images/build", json={"spec": spec, "bundle_id": bundle_id}
        ) as build:
            body = "" if build.is_success else build.read().decode()
            lines = [json.loads(line) for line in build.iter_lines() if line.strip()] if not body else []
        assert (lines and lines[-1]["event"] == "error" and "not inside" in lines[-1]["message"]) or (
            "not inside" in body
        ), (label, lines, body)
    # Without a bundle, a remote client may not have its manifest's paths read at all.
    response = remote.http.post("/v1/images/build", json={"spec": spec})
    assert response.status_code == 400
    assert "must upload a source bundle" in response.json()["message"]
    listing = remote.http.get("/v1/apps").json()["apps"]
    assert listing == []


def test_a_bundle_with_a_symlink_out_of_it_is_refused(remote: Remote) -> None:
    """A bundle whose tar holds a link leading out of it is refused as a whole."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("src/app.py")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
        link = tarfile.TarInfo("files/x/secrets")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../secrets"
        tar.addfile(link)
    response = remote.http.post("/v1/bundles", content=buffer.getvalue())
    assert response.status_code == 400
    assert "not a valid tar.gz" in response.json()["message"]


def test_remote_deploy_ships_what_its_image_steps_read(tmp_path: Path, remote: Remote) -> None:
    """Through the real CLI on TCP: a copied directory, a mounted directory and a mounted file that
    live outside the app's folder reach the container from the bundle the CLI uploaded."""
    outside = tmp_path / "outside"
    (outside / "copied").mkdir(parents=True)
    (outside / "copied" / "a.txt").write_text("a")
    (outside / "mounted").mkdir()
    (outside / "mounted" / "b.txt").write_text("b")
    (outside / "note.txt").write_text("from the client")
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    app_file = app_dir / "shipped.py"
    steps = (
        f'.add_local_dir({str(outside / "copied")!r}, "/data", copy=True)'
        f'.add_local_dir({str(outside / "mounted")!r}, "/mounted")'
        f'.add_local_file({str(outside / "note.txt")!r}, "/mounted.txt")'
    )
    app_file.write_text(APP.format(steps=steps, name="shipped"))
    client_env = dict(
        remote.cove.env,
        COVE_SERVER_URL=remote.url,
        COVE_TOKEN=remote.token,
        COVE_HOME=str(tmp_path / "client-home"),
    )
    deployed = subprocess.run(
        [*cove_command(), "deploy", str(app_file)],
        env=client_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stderr
    (url,) = URL_RE.findall(deployed.stdout)
    assert host_request("GET", url).json() == {
        "/data": ["a.txt"],
        "/mounted": ["b.txt"],
        "/mounted.txt": "from the client",
    }
