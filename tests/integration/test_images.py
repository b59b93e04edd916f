"""Images, built for real: packages the host lacks, cached rebuilds, apt, failing builds, build secrets,
and local mounts that `cove serve` reloads.

The session shares one image cache (see `image_cache.py`), so the base image and the Debian root
filesystem are built once per test session.
"""

from __future__ import annotations

import importlib.util
import re
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

HUMANIZE_APP = """
import cove

image = (
    cove.Image.debian_slim()
    .pip_install("humanize")
    .add_local_file({marker!r}, "/etc/cove-test-marker", copy=True)
)
app = cove.App("{name}", image=image)


@app.function()
@cove.fastapi_endpoint()
def size(n: int = 1234567):
    import humanize

    return {{"text": humanize.intcomma(n), "version": {version!r}, "from": humanize.__file__}}
"""


def _deploy(cove: CoveEnv, path: Path, *, timeout: float = 300) -> tuple[str, str]:
    """Deploy `path`; return (its URL, the CLI's whole output)."""
    result = cove.run("deploy", str(path), timeout=timeout)
    output = result.stdout + result.stderr
    match = URL_RE.search(output)
    assert match, output
    return match.group(1), output


def _cache(cove: CoveEnv) -> Path:
    return Path(cove.env.get("COVE_IMAGE_CACHE") or cove.home / "images")


def _layers(cove: CoveEnv) -> set[str]:
    layers = _cache(cove) / "layers"
    return {p.name for p in layers.iterdir() if not p.name.startswith(".")} if layers.is_dir() else set()


def _app(tmp_path: Path, text: str, name: str = "app.py") -> Path:
    directory = tmp_path / uuid.uuid4().hex[:8]
    directory.mkdir()
    path = directory / name
    path.write_text(text)
    return path


def test_a_package_the_host_lacks_is_importable_in_the_container_and_the_host_still_lacks_it(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """pip_install("humanize") lands in the image's virtualenv only; the server's stays untouched."""
    assert importlib.util.find_spec("humanize") is None, "the test needs a host without humanize"
    marker = tmp_path / "marker.txt"
    marker.write_text(uuid.uuid4().hex)
    path = _app(tmp_path, HUMANIZE_APP.format(marker=str(marker), name="human", version="v1"))
    url, output = _deploy(cove_env, path)
    assert "Building image" in output and "pip_install humanize" in output
    body = host_request("GET", url).json()
    assert body["text"] == "1,234,567"
    assert body["from"].startswith("/cove/venv/")
    assert importlib.util.find_spec("humanize") is None


def test_a_second_deploy_of_the_same_recipe_builds_nothing(tmp_path: Path, cove_env: CoveEnv) -> None:
    """Same recipe, new code: no layer is added, no build runs, and the new code serves."""
    marker = tmp_path / "marker.txt"
    marker.write_text(uuid.uuid4().hex)  # a recipe no earlier test built
    path = _app(tmp_path, HUMANIZE_APP.format(marker=str(marker), name="again", version="v1"))
    before = _layers(cove_env)
    url, first = _deploy(cove_env, path)
    assert "Building image" in first
    built = _layers(cove_env)
    assert len(built - before) >= 1
    path.write_text(HUMANIZE_APP.format(marker=str(marker), name="again", version="v2"))
    url_again, second = _deploy(cove_env, path)
    assert url_again == url
    assert "Building image" not in second
    assert _layers(cove_env) == built
    assert host_request("GET", url).json()["version"] == "v2"


APT_APP = """
import subprocess

import cove

image = (
    cove.Image.debian_slim()
    .apt_install("cowsay")
    .run_commands(
        "echo token-in-build=$BUILD_TOKEN > /opt/built.txt",
        secrets=[cove.Secret.from_name("build-token")],
    )
)
app = cove.App("moo", image=image)


@app.function()
@cove.fastapi_endpoint()
def moo():
    said = subprocess.run(["/usr/games/cowsay", "moo"], capture_output=True, text=True, check=True).stdout
    return {"said": said, "built": open("/opt/built.txt").read().strip()}
"""


@pytest.mark.timeout(900)
def test_apt_install_is_usable_in_the_container_and_build_secrets_stay_hidden(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """apt_install("cowsay") runs in the image's Debian root filesystem (debootstrap, once per cache);
    a build secret reaches its step but never the CLI output or the build log."""
    token = "tok-" + uuid.uuid4().hex
    cove_env.run("secret", "create", "build-token", f"BUILD_TOKEN={token}")
    path = _app(tmp_path, APT_APP)
    url, output = _deploy(cove_env, path, timeout=840)
    assert "apt_install cowsay" in output
    assert token not in output
    body = host_request("GET", url, timeout=120).json()
    assert "moo" in body["said"] and "<" in body["said"]
    assert body["built"] == f"token-in-build={token}"  # the step saw it
    for log in (_cache(cove_env) / "logs").iterdir():
        assert token not in log.read_text()


OK_APP = """
import cove

app = cove.App("keeper")


@app.function()
@cove.fastapi_endpoint()
def hello():
    return "v1"
"""

BROKEN_APP = """
import cove

app = cove.App("keeper", image=cove.Image.debian_slim().pip_install("no-such-package-xyz"))


@app.function()
@cove.fastapi_endpoint()
def hello():
    return "v2"
"""


def test_a_failing_pip_install_fails_the_deploy_readably_and_the_old_version_keeps_serving(
    tmp_path: Path, cove_env: CoveEnv
) -> None:
    """The error names the step, its exit code and the resolver's last lines; nothing changes."""
    path = _app(tmp_path, OK_APP)
    url, _ = _deploy(cove_env, path)
    assert host_request("GET", url).json() == "v1"
    path.write_text(BROKEN_APP)
    result = cove_env.run("deploy", str(path), check=False, timeout=300)
    assert result.returncode == 1
    error = result.stderr
    assert "Image build failed at step 2/2 (pip_install no-such-package-xyz) with exit code" in error
    assert "no-such-package-xyz" in error.split("Build log (kept in")[1]  # the resolver's output
    assert "Full build log:" in error
    assert "Traceback" not in error
    assert host_request("GET", url).json() == "v1"


MOUNT_APP = """
import cove

image = cove.Image.debian_slim().add_local_dir({data!r}, "/data", ignore=["*.tmp"])
app = cove.App("mounts", image=image)


@app.function()
@cove.fastapi_endpoint()
def read():
    try:
        open("/data/new.txt", "w").write("x")
        writable = True
    except OSError:
        writable = False
    return {{"text": open("/data/x.txt").read(), "writable": writable}}
"""


def test_a_mounted_dir_is_read_only_live_and_reloads_cove_serve(tmp_path: Path, serve) -> None:
    """add_local_dir is mounted, not baked: the container reads it, cannot write it, and an edit to
    it (outside the app's directory) redeploys `cove serve` with no image build."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("one")
    path = _app(tmp_path, MOUNT_APP.format(data=str(data)))
    proc = serve(str(path))
    (url,) = proc.urls(1)
    assert host_request("GET", url).json() == {"text": "one", "writable": False}
    assert not (data / "new.txt").exists()
    (data / "x.txt").write_text("two")
    proc.wait_for(r"App updated to v2", timeout=60)
    assert host_request("GET", url).json()["text"] == "two"
    assert not re.search(r"Building image", proc.text())
