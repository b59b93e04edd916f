"""Modal apps that run unchanged: `app.image = ...`, options Cove ignores, Modal's own dependencies,
and the messages for what Modal removed (Stub, Mount) or Cove lacks — through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import URL_RE, CoveEnv, host_request

pytestmark = pytest.mark.integration

APP = """
import aiohttp  # Modal's client brings it: Modal apps import it without installing it
import modal

app = modal.App("compat-six")
app.image = modal.Image.debian_slim().env({"FLAVOUR": "from app.image"})


@app.function(gpu="A10G")
@modal.fastapi_endpoint()
def flavour():
    import os

    return {"flavour": os.environ.get("FLAVOUR"), "aiohttp": aiohttp.__version__}


@app.function(gpu="T4", region="us-east")
@modal.fastapi_endpoint()
def other():
    return {"ok": True}
"""


def test_app_image_ignored_options_and_modal_dependencies(tmp_path: Path, cove_env: CoveEnv) -> None:
    """`app.image = ...` is the image the functions run in; gpu= and region= are each warned about
    once (by name); a file importing aiohttp at top level loads, locally and in its containers."""
    app_file = tmp_path / "six.py"
    app_file.write_text(APP)
    result = cove_env.run("deploy", str(app_file))
    assert result.stderr.count("IgnoredOptionWarning") == 2, result.stderr
    assert "@app.function(gpu='A10G') is accepted for Modal compatibility but has no effect" in result.stderr
    assert "@app.function(region='us-east')" in result.stderr
    assert "gpu='T4'" not in result.stderr, "each option is warned about once"
    urls = URL_RE.findall(result.stdout)
    (flavour,) = [u for u in urls if "-flavour." in u]
    body = host_request("GET", flavour).json()
    assert body["flavour"] == "from app.image"
    assert body["aiohttp"].startswith("3.")


OLD_OR_MISSING = {
    "Stub": (
        "import modal\nstub = modal.Stub('old')\n",
        "DeprecationError: Deprecated on 2024-05-13: modal.Stub has been renamed to modal.App",
    ),
    "Mount": (
        "import modal\nmount = modal.Mount.from_local_dir('.', remote_path='/root/x')\n",
        "modal.Mount was removed in Modal 1.0. Use Image.add_local_dir",
    ),
    "unknown": ("import modal\nmodal.Nonsense\n", "has no attribute 'Nonsense'. Cove provides: App, "),
}


def test_removed_and_missing_modal_names_are_explained(tmp_path: Path, cove_env: CoveEnv) -> None:
    """modal.Stub and modal.Mount fail with Modal's deprecation naming the replacement; an unknown
    name lists what Cove provides (a Modal name Cove lacks: tests/unit/test_public_api.py)."""
    for case, (source, message) in OLD_OR_MISSING.items():
        app_file = tmp_path / f"old_{case.replace('-', '_').lower()}.py"
        app_file.write_text(source)
        result = cove_env.run("deploy", str(app_file), check=False)
        assert result.returncode == 1, case
        assert message in result.stderr, f"{case}: {result.stderr}"
